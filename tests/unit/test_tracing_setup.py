"""How tracing is turned on: the standard OTEL_* environment, or in code."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fleet import tracing

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setattr(tracing, "_tracer", None)
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_off_unless_the_environment_names_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracing.from_environment("fleet-test") is False
    assert tracing.active() is None
    monkeypatch.setattr(tracing, "_configured", False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert tracing.from_environment("fleet-test") is False


def test_the_sdk_switch_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert tracing.from_environment("fleet-test") is False


def test_an_unknown_exporter_is_named_and_leaves_tracing_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin-over-carrier-pigeon")
    assert tracing.from_environment("fleet-test") is False
    assert tracing.active() is None


def test_the_otlp_exporter_is_built_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "svc")
    provider = tracing._provider("otlp", "fleet-test")
    try:
        assert provider.resource.attributes["service.name"] == "svc"
    finally:
        provider.shutdown()


def test_without_the_sdk_tracing_stays_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec

    def no_sdk(name: str, package: str | None = None) -> object:
        return None if name.startswith("opentelemetry.sdk") else real_find_spec(name, package)

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(importlib.util, "find_spec", no_sdk)
    assert tracing.from_environment("fleet-test") is False
    assert tracing.active() is None


def test_a_console_exporter_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)  # keep the global
    assert tracing.from_environment("fleet-test") is True
    assert tracing.active() is not None
