"""Worker heartbeats: what each worker tells the autoscaler every few seconds.

Heartbeats are small and not tensor data, so they travel as JSON, validated
with pydantic at the edge.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.errors import DecodeError

WorkerState = Literal["starting", "ready", "draining", "stopped"]


class Heartbeat(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    worker_id: str
    host: str = ""
    instance_id: str | None = None  # the EC2 instance, where there is one
    state: WorkerState = "ready"
    models: list[str] = Field(default_factory=list)
    sent_at: float  # seconds since the epoch
    interval_s: float = 5.0
    throughput_rps: float = 0.0  # requests answered per second over the last interval
    busy_fraction: float = 0.0  # share of the interval spent running the model
    batch_fill: float = 0.0  # mean batch size / max batch size
    mean_batch_size: float = 0.0
    queue_wait_ms_p50: float = 0.0  # receipt to the start of the batch's run, per request
    inference_ms_p50: float = 0.0  # the model run, per batch
    reply_ms_p50: float = 0.0  # a batch's end to its replies published
    in_flight: int = 0  # requests received (queued and synchronous) and not yet answered
    requests_per_message: float = 1.0  # mean requests per broker message received (coalescing)
    gpu_utilization: float | None = None  # 0..1 from NVML; None without a GPU
    provider: str = ""  # the ONNX Runtime execution provider in use
    idle_reason: str | None = None  # e.g. no partitions assigned to this worker
    answered_total: int = 0
    errors_total: int = 0
    expired_total: int = 0
    # the synchronous path (the Open Inference Protocol over HTTP and gRPC),
    # which no broker counts: the autoscaler adds it to the queues' figures
    sync_in_flight: int = 0  # synchronous requests waiting or running now
    sync_arrived_total: int = 0  # synchronous requests that asked, refused ones included
    sync_rejected_total: int = 0  # of those, refused because the worker was full
    sync_queue_wait_ms_p50: float = 0.0  # arrival to the start of its batch, per request
    oip_port: int | None = None  # where it serves the OIP over HTTP on ``host``, if it does
    oip_grpc_port: int | None = None  # and over gRPC

    def encode(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, data: bytes) -> Heartbeat:
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise DecodeError(f"not a heartbeat: {exc.error_count()} invalid fields") from exc


__all__ = ["Heartbeat", "WorkerState"]
