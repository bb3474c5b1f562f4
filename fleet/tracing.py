"""OpenTelemetry tracing through the broker. Off by default.

With tracing on, every request carries the W3C trace context of its call in
its headers (request frames of version 3, see :mod:`fleet.wire`), so one
trace holds, as parent and children::

    <the caller's current span, if any>
    └── fleet.infer MODEL            client: from the call to the answer
        ├── fleet.coalesce           client: waiting for the next publish
        ├── fleet.publish            client: until the broker confirmed
        ├── fleet.worker MODEL       worker: from receipt to the reply published
        │   ├── fleet.batch_wait
        │   ├── fleet.inference      (attribute fleet.batch_size)
        │   └── fleet.reply
        └── fleet.decode             client: decoding the reply

Turning it on:

* from the environment, by the standard variables: ``OTEL_TRACES_EXPORTER``
  (``otlp`` or ``console``; unset or ``none``: off), ``OTEL_EXPORTER_OTLP_*``
  for where spans go, ``OTEL_SERVICE_NAME``, ``OTEL_SDK_DISABLED``. The
  worker reads them at start, a :class:`producer.Client` when it connects.
  Needs the ``otel`` extra (``pip install 'inference-fleet[otel]'``).
* in code, with a tracer provider of your own: :func:`enable`.

Off, the request path pays one module attribute read per request; nothing
of OpenTelemetry is imported. Traced requests need workers of a build that
reads request frames of version 3.

Spans are made when a request's times are known (the worker after it
published the reply, the client when the reply arrived), with the measured
start and end times; times read from another host's wall clock are subject
to the clock skew between the two.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping
from typing import Any

from fleet.logging import get_logger

log = get_logger("fleet.tracing")

_tracer: Any | None = None  # an opentelemetry Tracer, when tracing is on
_configured = False


def active() -> Any | None:
    """The tracer when tracing is on, else ``None`` (cheap: the hot path asks)."""
    return _tracer


def enable(provider: Any | None = None) -> None:
    """Trace with ``provider`` (an OpenTelemetry ``TracerProvider``; default
    the global one)."""
    global _tracer
    from opentelemetry import trace

    source = provider if provider is not None else trace.get_tracer_provider()
    _tracer = source.get_tracer("fleet")


def disable() -> None:
    global _tracer
    _tracer = None


def from_environment(service: str) -> bool:
    """Turn tracing on if the ``OTEL_*`` environment asks for it (once per
    process); whether it is on. ``service`` names this process when
    ``OTEL_SERVICE_NAME`` does not."""
    global _configured
    if _configured or _tracer is not None:
        return _tracer is not None
    _configured = True
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    if exporter_name in ("", "none") or disabled:
        return False
    needed = ["opentelemetry.sdk.trace"]
    if exporter_name == "otlp":
        needed.append("opentelemetry.exporter.otlp.proto.http")
    missing = [name for name in needed if not _installed(name)]
    if missing:
        log.warning(
            "tracing asked for but OpenTelemetry is not installed: "
            "pip install 'inference-fleet[otel]'",
            missing=missing,
        )
        return False
    try:
        provider = _provider(exporter_name, service)
    except ValueError as exc:
        log.warning("tracing not started", error=str(exc))
        return False
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("tracing on", exporter=exporter_name)
    return True


def _installed(module: str) -> bool:
    """Whether ``module`` (and each package above it) can be imported."""
    parts = module.split(".")
    return all(
        importlib.util.find_spec(".".join(parts[: i + 1])) is not None for i in range(len(parts))
    )


def _provider(exporter_name: str, service: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    exporter: Any
    if exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={exporter_name!r}: fleet knows otlp and console")
    name = os.environ.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _ns(wall: float) -> int:
    return int(wall * 1e9)


def wall_of(mono: float) -> float:
    """The wall-clock time of an earlier :func:`time.monotonic` reading."""
    return time.time() - (time.monotonic() - mono)


# ---------------------------------------------------------------------- client side


def start_call(tracer: Any, model: str) -> tuple[Any, dict[str, str]]:
    """A call's span (child of the caller's current span) and the headers
    that carry its context to the worker."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    span = tracer.start_span(f"fleet.infer {model}", kind=trace.SpanKind.PRODUCER)
    span.set_attribute("fleet.model", model)
    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers, context=trace.set_span_in_context(span))
    return span, headers


def client_stages(tracer: Any, span: Any, marks: Mapping[str, tuple[float, float]]) -> None:
    """Children of a call's span: ``marks`` maps a stage to its (start, end)
    wall-clock times."""
    from opentelemetry import trace

    parent = trace.set_span_in_context(span)
    for stage, (start, end) in marks.items():
        child = tracer.start_span(f"fleet.{stage}", context=parent, start_time=_ns(start))
        child.end(end_time=_ns(max(start, end)))


def end_call(span: Any, error: BaseException | None) -> None:
    from opentelemetry.trace import Status, StatusCode

    if error is not None:
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.end()


# ---------------------------------------------------------------------- worker side


def worker_spans(
    tracer: Any,
    headers: Mapping[str, str],
    *,
    model: str,
    version: str,
    received: float,
    batch_wait: float,
    inference: float,
    published: float,
    batch_size: int,
    worker_id: str,
) -> None:
    """The worker's span of one request and its stages (wall-clock seconds),
    as a child of the context its headers carry."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(headers)
    span = tracer.start_span(
        f"fleet.worker {model}",
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        start_time=_ns(received),
        attributes={"fleet.model": model, "fleet.version": version, "fleet.worker": worker_id},
    )
    inside = trace.set_span_in_context(span)
    started = received + batch_wait
    ended = started + inference
    for stage, start, end in (
        ("batch_wait", received, started),
        ("inference", started, ended),
        ("reply", ended, max(ended, published)),
    ):
        child = tracer.start_span(f"fleet.{stage}", context=inside, start_time=_ns(start))
        if stage == "inference":
            child.set_attribute("fleet.batch_size", batch_size)
        child.end(end_time=_ns(end))
    span.end(end_time=_ns(max(ended, published)))


__all__ = [
    "active",
    "client_stages",
    "disable",
    "enable",
    "end_call",
    "from_environment",
    "start_call",
    "wall_of",
    "worker_spans",
]
