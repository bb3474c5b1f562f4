"""Test helpers: workers in this process or as subprocesses, and direct ONNX Runtime."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.worker_command import worker_argv
from worker.service import Worker, WorkerSettings


@contextlib.asynccontextmanager
async def running_worker(
    broker: str, models: Path, *, worker_id: str = "w1", **settings: Any
) -> AsyncIterator[Worker]:
    w = Worker(
        WorkerSettings(
            broker=broker, models=models, worker_id=worker_id, http_port=None, **settings
        )
    )
    await w.start()
    try:
        yield w
    finally:
        if w.state != "stopped":
            await w.stop()


class WorkerProcess:
    """``fleet worker`` as a subprocess; ``ready`` once it logged so."""

    def __init__(
        self,
        broker: str,
        models: Path,
        worker_id: str,
        *extra: str,
        command: Sequence[str] | None = None,
    ) -> None:
        self.argv = worker_argv(
            broker=broker,
            models=models,
            worker_id=worker_id,
            command=command,
            extra=["--heartbeat-interval", "0.5", *extra],
        )
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[dict[str, Any]] = []
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.get_running_loop().create_task(self._read())
        await asyncio.wait_for(self._ready.wait(), timeout)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": raw.decode(errors="replace").rstrip()}
            self.lines.append(line)
            if line.get("event") == "worker ready":
                self._ready.set()

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        rc = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return rc

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()


def direct_onnx(
    model_dir: Path, inputs: dict[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """Run the model with ONNX Runtime in this process, as the baseline."""
    import onnxruntime as ort

    path = sorted(model_dir.glob("*/model.onnx"))[-1]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs), strict=True))


def rows(width: int, n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)


def assert_digits_answers(
    got_labels: npt.ArrayLike, got_probabilities: npt.ArrayLike, want: dict[str, Any]
) -> None:
    """Outputs of the digits model equal ``want`` (ONNX Runtime on the same
    rows), up to float rounding. The worker batches rows differently from the
    reference run, and a different batch may sum in another order: so the
    probabilities are compared with a tolerance, and a label may differ only
    where the reference's top two probabilities are within that tolerance."""
    labels, probabilities = np.asarray(got_labels), np.asarray(got_probabilities)
    ref = np.asarray(want["probabilities"])
    np.testing.assert_allclose(probabilities, ref, rtol=1e-5, atol=1e-6)
    differ = np.flatnonzero(labels != np.asarray(want["label"]))
    if differ.size:
        margin = ref[differ].max(axis=1) - ref[differ, labels[differ]]
        assert (margin <= 1e-5).all(), f"rows {differ[:10].tolist()} answered with another label"
