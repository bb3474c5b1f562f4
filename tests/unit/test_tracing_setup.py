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
    import builtins

    real_import = builtins.__import__

    def no_sdk(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("opentelemetry.sdk"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setattr(builtins, "__import__", no_sdk)
    assert tracing.from_environment("fleet-test") is False
