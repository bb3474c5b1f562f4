"""The broker's password never leaks: not on a started worker's command line,
not in a settings error or ``repr``, not in a connect failure's message or log
lines, not in a file ``fleet recommend`` writes."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import ValidationError

from autoscaler.actuators.local import LocalActuator
from autoscaler.config import load_config, parse_config
from autoscaler.simulator.profile import ServiceProfile
from fleet.errors import AuthenticationFailed, ConfigError, FleetError, Unavailable
from fleet.transport import connect
from fleet.worker_command import worker_launch
from fleetctl.demo import spawn_workers
from fleetctl.recommend import RampSettings, Recommendation, Step, config_toml
from tests.conftest import broker_url_for
from worker.settings import WorkerSettings

pytestmark = pytest.mark.unit

PASSWORD = "Zq7pW"
URL = f"amqp://fleet:{PASSWORD}@127.0.0.1:5672/"
SHORT = f"amqp://u:{PASSWORD}@h/"  # pydantic shortens a long input it echoes...
SHOWN = PASSWORD[:3]  # ...so no part of the password may show

# writes its argv and the broker it was given, then waits to be stopped
_SHOW = (
    "import json, os, sys, time\n"
    "print(json.dumps({'argv': sys.argv, 'broker': os.environ.get('FLEET_BROKER')}), flush=True)\n"
    "time.sleep(60)\n"
)


def _cmdline(pid: int) -> list[str]:
    """What ``ps`` shows every user: the process's command line."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def _written_line(path: Path) -> str | None:
    """The first line of ``path`` once it is whole, else ``None``."""
    text = path.read_text() if path.exists() else ""
    return text.splitlines()[0] if text.endswith("\n") else None


async def _first_line(path: Path, timeout: float = 10.0) -> str:
    end = time.monotonic() + timeout
    while (line := _written_line(path)) is None:
        if time.monotonic() > end:
            raise AssertionError(f"nothing written to {path} within {timeout}s")
        await asyncio.sleep(0.02)
    return line


# ---------------------------------------------------------------- argv


def test_a_worker_launch_keeps_the_broker_off_the_command_line() -> None:
    launch = worker_launch(broker=URL, models="m", worker_id="w1")
    assert not any(PASSWORD in arg for arg in launch.argv)
    assert "--broker" not in launch.argv
    assert launch.env == {"FLEET_BROKER": URL}
    assert PASSWORD not in repr(launch)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_the_local_actuator_passes_the_broker_in_the_environment(tmp_path: Path) -> None:
    act = LocalActuator(
        broker=URL,
        models_dir=tmp_path,
        command=[sys.executable, "-c", _SHOW],
        log_dir=tmp_path / "logs",
        grace_period_s=5,
    )
    try:
        await act.set_desired(1)
        worker = act.workers[0]
        line = await _first_line(tmp_path / "logs" / f"{worker.worker_id}.log")
        assert f'"broker": "{URL}"' in line  # the worker gets it
        cmdline = _cmdline(worker.pid)
        assert cmdline[-4:] == ["--worker-id", worker.worker_id, "--http-port", "0"]
        assert not any(PASSWORD in arg for arg in cmdline)  # nobody else sees it
    finally:
        await act.close()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
async def test_the_demo_passes_the_broker_in_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "out"
    script = _SHOW.replace("flush=True)", f"file=open({str(out)!r}, 'w'), flush=True)")
    (proc,) = await spawn_workers(URL, tmp_path, 1, command=[sys.executable, "-c", script])
    try:
        line = await _first_line(out)
        assert f'"broker": "{URL}"' in line
        assert not any(PASSWORD in arg for arg in _cmdline(proc.pid))
    finally:
        proc.kill()
        await proc.wait()


# ---------------------------------------------------------------- settings


def test_worker_settings_errors_and_repr_show_no_password() -> None:
    with pytest.raises(ValidationError) as missing_models:  # the whole input would be echoed
        WorkerSettings(broker=SHORT)
    with pytest.raises(ValidationError) as bad_port:
        WorkerSettings(broker=SHORT, models="m", http_port="eighty")
    for exc in (missing_models.value, bad_port.value):
        assert SHOWN not in str(exc) and SHOWN not in repr(exc)
    settings = WorkerSettings(broker=URL, models="m")
    assert settings.broker == URL
    assert PASSWORD not in repr(settings) and PASSWORD not in str(settings)
    assert "fleet:***@127.0.0.1" in repr(settings)


def test_worker_settings_take_the_password_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "broker-password"
    secret.write_text(PASSWORD + "\n", encoding="utf-8")
    monkeypatch.setenv("FLEET_BROKER_PASSWORD_FILE", str(secret))
    assert WorkerSettings(broker="amqp://fleet@127.0.0.1:5672/", models="m").broker == URL
    monkeypatch.setenv("FLEET_BROKER_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError, match="FLEET_BROKER_PASSWORD_FILE: cannot read"):
        WorkerSettings(broker="amqp://fleet@127.0.0.1:5672/", models="m")


def _autoscaler_toml(broker: str) -> dict[str, object]:
    return {"broker": broker, "models": ["m"], "actuator": {"kind": "dry-run"}}


def test_autoscaler_config_errors_and_repr_show_no_password() -> None:
    data = _autoscaler_toml(SHORT) | {"poll_interval_s": "soon", "metrics": {"port": -1}}
    with pytest.raises(ConfigError) as bad:
        parse_config(data)
    assert "poll_interval_s" in bad.value.message and SHOWN not in bad.value.message
    cfg = parse_config(_autoscaler_toml(URL))
    assert cfg.broker == URL
    assert PASSWORD not in repr(cfg) and PASSWORD not in str(cfg)


def test_autoscaler_config_takes_the_password_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEET_BROKER_PASSWORD", PASSWORD)
    assert parse_config(_autoscaler_toml("amqp://fleet@127.0.0.1:5672/")).broker == URL
    monkeypatch.delenv("FLEET_BROKER_PASSWORD")
    monkeypatch.setenv("FLEET_BROKER_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"broker: .*FLEET_BROKER_PASSWORD_FILE: cannot read"):
        parse_config(_autoscaler_toml("amqp://fleet@127.0.0.1:5672/"))


# ---------------------------------------------------------------- generated files


def _recommendation() -> Recommendation:
    profile = ServiceProfile(model="m", max_batch=1, batch_ms=((1, 2.0),), sustainable_rps=400.0)
    step = Step(
        offered_rps=100, throughput_rps=100, sent=100, answered=100, errors=0, p50_ms=1, p99_ms=2
    )
    return Recommendation(
        model="m",
        objective_ms=100,
        steps=(step,),
        sustainable_rps=400.0,
        knee_rps=100,
        stopped_because="test",
        profile=profile,
    )


def test_recommend_writes_no_password_and_the_autoscaler_reads_it_from_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = config_toml(_recommendation(), broker=URL, min_rps=1, peak_rps=10, growth_factor=1)
    assert PASSWORD not in text
    assert 'broker = "amqp://fleet@127.0.0.1:5672/"' in text
    assert "FLEET_BROKER_PASSWORD_FILE" in text  # the file says where the password comes from
    path = tmp_path / "autoscaler.toml"
    path.write_text(text, encoding="utf-8")
    secret = tmp_path / "broker-password"
    secret.write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("FLEET_BROKER_PASSWORD_FILE", str(secret))
    assert load_config(path).broker == URL
    assert PASSWORD not in repr(RampSettings(broker=URL, model="m"))


def test_recommend_takes_the_password_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fleetctl.recommend import _client

    monkeypatch.setenv("FLEET_BROKER_PASSWORD", PASSWORD)
    client = _client(RampSettings(broker="amqp://fleet@127.0.0.1:5672/", model="m"))
    assert client.url == URL  # not connected: nothing to close


# ---------------------------------------------------------------- connect failures


async def _connect_failure(
    url: str, error: type[FleetError] = Unavailable
) -> tuple[str, list[MutableMapping[str, Any]]]:
    transport = connect(url, publish_timeout=3.0)
    with structlog.testing.capture_logs() as logs, pytest.raises(error) as failed:
        await transport.connect()
    await transport.close()
    return failed.value.message, logs


async def test_a_connect_failure_shows_no_password() -> None:
    message, logs = await _connect_failure(f"amqp://fleet:{PASSWORD}@127.0.0.1:1/")
    assert "127.0.0.1:1" in message and PASSWORD not in message
    assert PASSWORD not in repr(logs)


@pytest.mark.rabbitmq
async def test_refused_credentials_show_no_password() -> None:
    real = broker_url_for("amqp").split("?", 1)[0]
    host = real.rpartition("@")[2]
    # refused credentials: not retried, and the password shown nowhere
    message, logs = await _connect_failure(f"amqp://fleet:{PASSWORD}@{host}", AuthenticationFailed)
    assert "ACCESS_REFUSED" in message and PASSWORD not in message
    assert PASSWORD not in repr(logs)


def test_fleet_worker_prints_no_password_for_bad_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetctl.cli import build_parser
    from fleetctl.worker_cmd import run_worker

    monkeypatch.setenv("FLEET_BROKER", SHORT)
    monkeypatch.delenv("FLEET_MODELS", raising=False)
    assert run_worker(build_parser().parse_args(["worker", "--max-held-bytes", "1"])) == 2
    out = capsys.readouterr()
    assert "max_held_bytes" in out.err and "models" in out.err  # missing: pydantic echoes all
    assert SHOWN not in out.err + out.out
