"""The Celery baseline: the same ONNX model behind a Celery task, RabbitMQ
broker and the ``rpc://`` result backend, Celery's defaults otherwise."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

app = Celery(
    "fleet_bench",
    broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
    backend="rpc://",
)
app.conf.task_default_queue = "fleet-bench-celery"
app.conf.worker_hijack_root_logger = False
app.conf.broker_connection_retry_on_startup = True

_session: Any = None


@app.task(name="bench.infer")
def infer(row: list[float]) -> list[float]:
    global _session
    import numpy as np
    import onnxruntime as ort

    if _session is None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        _session = ort.InferenceSession(
            os.environ["BENCH_MODEL"], opts, providers=["CPUExecutionProvider"]
        )
    x = np.asarray(row, dtype=np.float32)[None, :]
    (out,) = _session.run(None, {"input": x})
    return [float(v) for v in out[0]]
