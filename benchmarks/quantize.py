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
   ``run``, over all rounds and in each variant's best round (the least
   disturbed by other work on the machine), each with its ratio to FP32's;
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
    """rows/s of each model over all its rounds and in its best round (interleaved rounds)."""
    sessions = {name: session(data, threads) for name, data in models.items()}
    x = np.random.default_rng(0).standard_normal((batch, zoo.MLP_LAYERS[0]), dtype=np.float32)
    for s in sessions.values():  # warm up
        for _ in range(3):
            s.run(None, {"input": x})
    rounds: dict[str, list[tuple[int, float]]] = {name: [] for name in sessions}
    for _ in range(max(1, int(duration / (ROUND_S * len(sessions))))):
        for name, s in sessions.items():
            calls, busy = 0, 0.0
            end = time.perf_counter() + ROUND_S
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                busy += time.perf_counter() - t0
                calls += 1
            rounds[name].append((calls, busy))
    return {
        name: (
            batch * sum(c for c, _ in done) / sum(b for _, b in done),
            max(batch * c / b for c, b in done),
        )
        for name, done in rounds.items()
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
    print(
        "\nmlp throughput, rows/s: over all rounds, in the best round,"
        " and the ratios of each to FP32's"
    )
    print(f"{'variant':<14}" + "".join(f"{f'batch {b}':>34}" for b in batches))
    results = {b: throughput(models, b, args.duration, args.threads) for b in batches}
    for name in NAMES:
        cells = []
        for b in batches:
            (mean, best), (fp32_mean, fp32_best) = results[b][name], results[b]["FP32"]
            cells.append(
                f"{mean:>9,.0f} {best:>9,.0f} {mean / fp32_mean:>5.2f}x {best / fp32_best:>5.2f}x"
            )
        print(f"{name:<14}" + "".join(f"{c:>34}" for c in cells))
    print("\naccuracy (digits: 450 held-out rows; mlp: agreement with FP32 on 2,048 rows)")
    print(f"{'variant':<14}{'digits':>10}{'mlp':>10}{'mlp bytes':>14}")
    for name in NAMES:
        print(f"{name:<14}{digits_acc[name]:>10.4f}{agreement[name]:>10.4f}{sizes[name]:>14,}")


if __name__ == "__main__":
    main()
