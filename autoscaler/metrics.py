"""The autoscaler's own metrics: Prometheus ``/metrics`` (and ``/healthz``) on
aiohttp, and optional CloudWatch custom metrics via ``PutMetricData``.

A signal that could not be read is exported as NaN, never as 0.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)

from autoscaler.types import Decision, Snapshot
from fleet import aws
from fleet.logging import get_logger

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef

log = get_logger("autoscaler.metrics")

DIRECTIONS = ("out", "in", "hold")
_DIRECTION_VALUE = {"out": 1.0, "in": -1.0, "hold": 0.0}


def _value(x: float | int | None) -> float:
    return math.nan if x is None else float(x)


class AutoscalerMetrics:
    """Gauges and counters in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.desired = Gauge("fleet_autoscaler_desired", "Capacity last asked for", registry=r)
        self.in_service = Gauge("fleet_autoscaler_in_service", "Instances in service", registry=r)
        self.pending = Gauge("fleet_autoscaler_pending", "Instances booting", registry=r)
        self.warm = Gauge(
            "fleet_autoscaler_warm_pool",
            "Instances ready in the warm pool (NaN: no warm pool)",
            registry=r,
        )
        self.warm_pool_size = Gauge(
            "fleet_autoscaler_warm_pool_size",
            "Warm-pool size last set by the autoscaler (NaN: not set)",
            registry=r,
        )
        self.warm_pool_size.set(float("nan"))
        self.backlog = Gauge(
            "fleet_autoscaler_backlog", "Requests waiting (NaN: unreadable)", registry=r
        )
        self.arrival_rate = Gauge(
            "fleet_autoscaler_arrival_rate",
            "Smoothed requests/s offered (NaN: unknown)",
            registry=r,
        )
        self.per_instance_rps = Gauge(
            "fleet_autoscaler_per_instance_rps",
            "Sustainable requests/s of one instance (NaN: unknown)",
            registry=r,
        )
        self.busy_fraction = Gauge(
            "fleet_autoscaler_busy_fraction", "Mean busy fraction of ready workers", registry=r
        )
        self.gpu_utilization = Gauge(
            "fleet_autoscaler_gpu_utilization", "Mean GPU utilization of ready workers", registry=r
        )
        self.saturation = Gauge(
            "fleet_autoscaler_saturation",
            "Mean busy fraction x batch fill of ready workers (NaN: unknown)",
            registry=r,
        )
        self.decisions = Counter(
            "fleet_autoscaler_decisions", "Decisions by direction", ["direction"], registry=r
        )
        for d in DIRECTIONS:
            self.decisions.labels(direction=d)
        self.errors = Counter(
            "fleet_autoscaler_errors", "Polls that failed, by stage", ["stage"], registry=r
        )
        self.last_poll = Gauge(
            "fleet_autoscaler_last_poll_timestamp_seconds", "When the last poll ended", registry=r
        )

    def observe(self, snapshot: Snapshot, decision: Decision) -> None:
        self.desired.set(decision.desired)
        self.in_service.set(snapshot.in_service)
        self.pending.set(snapshot.pending)
        self.warm.set(_value(snapshot.warm))
        self.backlog.set(_value(snapshot.backlog))
        self.arrival_rate.set(_value(snapshot.arrival_rate))
        self.per_instance_rps.set(_value(snapshot.per_instance_rps))
        self.busy_fraction.set(_value(snapshot.busy_fraction))
        self.gpu_utilization.set(_value(snapshot.gpu_utilization))
        self.saturation.set(_value(snapshot.saturation))
        self.decisions.labels(direction=decision.direction).inc()
        self.last_poll.set(time.time())

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """``GET /metrics`` and ``GET /healthz`` on aiohttp."""

    def __init__(self, metrics: AutoscalerMetrics, *, host: str, port: int) -> None:
        self.metrics = metrics
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self.healthy = True

    async def _metrics(self, _request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics.render())
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(
            text="ok\n" if self.healthy else "unhealthy\n", status=200 if self.healthy else 503
        )

    async def start(self) -> int:
        """Listen; returns the port (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        addresses = self._runner.addresses
        if addresses:
            self.port = int(addresses[0][1])
        log.info("metrics endpoint listening", url=f"http://{self.host}:{self.port}/metrics")
        return self.port

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


class CloudWatchPublisher:
    """``PutMetricData`` once per poll: backlog per instance, desired capacity,
    decision (+1 out, -1 in, 0 hold). Failures are logged, never fatal."""

    def __init__(
        self,
        namespace: str,
        *,
        region: str,
        endpoint_url: str | None = None,
        dimensions: dict[str, str] | None = None,
        client: CloudWatchClient | None = None,
    ) -> None:
        self.namespace = namespace
        self.dimensions = [{"Name": k, "Value": v} for k, v in (dimensions or {}).items()]
        if client is None:
            import boto3

            client = boto3.client(
                "cloudwatch",
                region_name=region,
                endpoint_url=endpoint_url,
                config=aws.client_config(max_attempts=2),
            )
        self.client = client
        self.failures = 0

    def data(self, snapshot: Snapshot, decision: Decision) -> list[MetricDatumTypeDef]:
        dims: Any = self.dimensions
        out: list[MetricDatumTypeDef] = [
            {
                "MetricName": "DesiredCapacity",
                "Value": float(decision.desired),
                "Unit": "Count",
                "Dimensions": dims,
            },
            {
                "MetricName": "ScalingDecision",
                "Value": _DIRECTION_VALUE[decision.direction],
                "Unit": "None",
                "Dimensions": dims,
            },
        ]
        if snapshot.backlog is not None:  # missing is not published, never as 0
            per = snapshot.backlog / max(snapshot.in_service, 1)
            out.append(
                {
                    "MetricName": "BacklogPerInstance",
                    "Value": per,
                    "Unit": "Count",
                    "Dimensions": dims,
                }
            )
        return out

    async def publish(self, snapshot: Snapshot, decision: Decision) -> bool:
        data = self.data(snapshot, decision)
        try:
            await asyncio.to_thread(
                self.client.put_metric_data, Namespace=self.namespace, MetricData=data
            )
        except Exception as exc:  # boto3/botocore raise many kinds; none may stop the loop
            self.failures += 1
            log.warning(
                "CloudWatch PutMetricData failed", error=repr(exc), namespace=self.namespace
            )
            return False
        return True


__all__ = ["AutoscalerMetrics", "CloudWatchPublisher", "MetricsServer"]
