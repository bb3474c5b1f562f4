"""INT8 and FP16 variants against FP32: throughput on ``mlp``, accuracy on ``digits``, one run.

    .venv/bin/python benchmarks/quantize.py [--duration 12] [--threads N] [--batches 1,64]

Builds the demo models in memory (``worker.zoo``) and their variants with the
functions ``fleet models quantize`` and ``fleet models convert --fp16`` use
(``worker.variants``: INT8 dynamic, INT8 static calibrated on the model's own
data, FP16), then:

1. throughput: one raw ONNX Runtime CPU session per ``mlp`` variant, the same
   session options for each; ``--duration`` seconds per batch size, split into
   short rounds that visit the variants in turn (so a change in the machine's
   load falls on all of them alike); rows/s is rows over the time spent in
   ``run``, and each variant's ratio to FP32 is printed;
2. accuracy: ``digits`` held-out accuracy of each variant (the 450-row test
   split, true labels) and ``mlp`` top-1 agreement of each variant with FP32
   (2,048 standard-normal rows), the figures the accuracy gate compares.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker import variants, zoo  # noqa: E402

NAMES = ("FP32", "INT8 dynamic", "INT8 static", "FP16")
ROUND_S = 0.25


def build(model: Any, calibration: np.ndarray) -> dict[str, bytes]:
    """The source and its three variants, serialized."""
    makers: dict[str, Callable[[], Any]] = {
        "FP32": lambda: model,
        "INT8 dynamic": lambda: variants.int8_dynamic(model),
        "INT8 static": lambda: variants.int8_static(model, calibration),
        "FP16": lambda: variants.fp16(model),
    }
    return {name: makers[name]().SerializeToString() for name in NAMES}


def session(model: bytes, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def throughput(
    models: dict[str, bytes], batch: int, duration: float, threads: int
) -> dict[str, tuple[float, float]]:
    """rows/s and median ms per call of each model, measured in interleaved rounds."""
    sessions = {name: session(data, threads) for name, data in models.items()}
    x = np.random.default_rng(0).standard_normal((batch, zoo.MLP_LAYERS[0]), dtype=np.float32)
    for s in sessions.values():  # warm up
        for _ in range(3):
            s.run(None, {"input": x})
    calls: dict[str, list[float]] = {name: [] for name in sessions}
    rounds = max(1, int(duration / (ROUND_S * len(sessions))))
    for _ in range(rounds):
        for name, s in sessions.items():
            end = time.perf_counter() + ROUND_S
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                calls[name].append(time.perf_counter() - t0)
    return {
        name: (batch * len(lat) / sum(lat), float(np.median(lat)) * 1e3)
        for name, lat in calls.items()
    }


def accuracies() -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
    """digits held-out accuracy and mlp agreement with FP32, per variant; mlp sizes."""
    digits = variants.held_out("digits")
    digits_models = build(zoo.digits_model(zoo.train_digits()), digits.calibration)
    assert digits.labels is not None
    digits_acc = {
        name: float(np.mean(variants.predict(data, digits.inputs) == digits.labels))
        for name, data in digits_models.items()
    }
    mlp = variants.held_out("mlp")
    mlp_models = build(zoo.mlp_model(), mlp.calibration)
    reference = variants.predict(mlp_models["FP32"], mlp.inputs)
    agreement = {
        name: float(np.mean(variants.predict(data, mlp.inputs) == reference))
        for name, data in mlp_models.items()
    }
    return digits_acc, agreement, {name: len(data) for name, data in mlp_models.items()}


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per batch size")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batches", default="1,64", help="batch sizes, comma separated")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    print(f"onnxruntime {ort.__version__}, CPU, {args.threads} intra-op threads")
    digits_acc, agreement, sizes = accuracies()
    mlp = variants.held_out("mlp")
    models = build(zoo.mlp_model(), mlp.calibration)
    print("\nmlp throughput (rows/s, median ms per call, ratio to FP32 rows/s)")
    print(f"{'variant':<14}" + "".join(f"{f'batch {b}':>30}" for b in batches))
    results = {b: throughput(models, b, args.duration, args.threads) for b in batches}
    for name in NAMES:
        cells = []
        for b in batches:
            rps, ms = results[b][name]
            ratio = rps / results[b]["FP32"][0]
            cells.append(f"{rps:>12,.0f} {ms:>8.3f} ms {ratio:>5.2f}x")
        print(f"{name:<14}" + "".join(f"{c:>30}" for c in cells))
    print("\naccuracy (digits: 450 held-out rows; mlp: agreement with FP32 on 2,048 rows)")
    print(f"{'variant':<14}{'digits':>10}{'mlp':>10}{'mlp bytes':>14}")
    for name in NAMES:
        print(f"{name:<14}{digits_acc[name]:>10.4f}{agreement[name]:>10.4f}{sizes[name]:>14,}")


if __name__ == "__main__":
    main()
