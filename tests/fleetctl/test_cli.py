"""The ``fleet`` command line."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleetctl.cli import build_parser


def _fleet(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleetctl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )


ROOT = Path(__file__).resolve().parents[2]
# a command line in a code block (``fleet worker ...``), after a prompt, or in backticks
DOCUMENTED = re.compile(r"(?:^\s*|`|\$ )fleet ((?:[a-z]+-)*[a-z]+)", re.M)


def _commands() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def _documented() -> set[str]:
    found: set[str] = set()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        found.update(DOCUMENTED.findall(path.read_text(encoding="utf-8")))
    return found


@pytest.mark.unit
def test_help_lists_every_documented_command() -> None:
    documented = _documented()
    assert {"demo", "worker", "models", "autoscaler", "simulate"} <= documented
    proc = _fleet("--help")
    assert proc.returncode == 0, proc.stderr
    listed = set(re.findall(r"^    ([a-z-]+)\s", proc.stdout, re.M))
    missing = documented - listed
    assert not missing, f"documented but not in 'fleet --help': {sorted(missing)}"
    assert listed == set(_commands())


@pytest.mark.unit
@pytest.mark.parametrize("command", _commands())
def test_every_command_has_help(command: str) -> None:
    parser = build_parser()
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([command, "--help"])
    assert exc.value.code == 0


@pytest.mark.unit
def test_worker_refuses_bad_settings_clearly() -> None:
    proc = _fleet("worker", "--broker", "http://nope", "--models", "m")
    assert proc.returncode == 2
    assert "broker" in proc.stderr and "must start with" in proc.stderr


@pytest.mark.unit
def test_worker_with_a_missing_repository_says_so(tmp_path: Path) -> None:
    proc = _fleet("worker", "--models", str(tmp_path / "absent"), "--http-port", "0")
    assert proc.returncode == 1
    assert "ConfigError" in proc.stderr and "absent" in proc.stderr


@pytest.mark.memory
def test_demo_runs_and_loses_nothing(tmp_path: Path, built_models: Path) -> None:
    proc = _fleet(
        "--log-level",
        "WARNING",
        "demo",
        "--models",
        str(built_models),
        "--duration",
        "2",
        "--concurrency",
        "32",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "summary:" in proc.stdout and "lost: 0" in proc.stdout
    assert "errors: none" in proc.stdout


@pytest.mark.unit
def test_models_build_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert _fleet("models", "build", str(a)).returncode == 0
    assert _fleet("models", "build", str(b)).returncode == 0
    for name in ("digits", "mlp"):
        assert (a / name / "1" / "model.onnx").read_bytes() == (
            b / name / "1" / "model.onnx"
        ).read_bytes()


@pytest.mark.unit
def test_worker_settings_read_the_broker_from_either_environment_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.settings import WorkerSettings

    monkeypatch.setenv("FLEET_BROKER_URL", "amqp://a/")  # the name the deploy files use
    assert WorkerSettings(models="m").broker == "amqp://a/"
    monkeypatch.delenv("FLEET_BROKER_URL")
    monkeypatch.setenv("FLEET_BROKER", "kafka://b:9092")
    assert WorkerSettings(models="m").broker == "kafka://b:9092"
    assert WorkerSettings(models="m", broker="memory://c").broker == "memory://c"


@pytest.mark.memory
@pytest.mark.parametrize("delay", [0.05, 0.4, 1.5])
def test_a_worker_stopped_while_it_boots_exits_cleanly(built_models: Path, delay: float) -> None:
    """SIGTERM at any moment of a worker's start (importing, loading, warming,
    serving) ends it with 0: a scale-in may pick a worker that is still booting.
    The moments counted start once the interpreter runs the command's first
    line, which installs the handler (before that, Python itself is starting
    and the signal's default action ends it); ``delay`` is from then."""
    import signal
    import time

    from fleet.worker_command import worker_argv

    argv = worker_argv(broker="memory://boot", models=built_models, worker_id="boot")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGTERM):
        assert time.monotonic() < end and proc.poll() is None, "no SIGTERM handler installed"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (its SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.unit
def test_every_worker_flag_is_a_worker_setting() -> None:
    """The worker command hands its parsed flags to WorkerSettings by name: a
    flag that names no setting would be dropped silently."""
    from worker.settings import WorkerSettings

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["worker"]._actions if a.dest != "help"}
    assert dests <= set(WorkerSettings.model_fields), dests - set(WorkerSettings.model_fields)


@pytest.mark.unit
def test_models_quantize_writes_the_next_version(tmp_path: Path, built_models: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(built_models / "digits" / "1", root / "digits" / "1")
    proc = _fleet(
        "--log-level", "WARNING", "models", "quantize", "--model", "digits",
        "--repository", str(root), "--mode", "static",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary, path = proc.stdout.strip().splitlines()
    assert summary.startswith("digits version 2: int8-static variant of version 1;")
    assert Path(path) == root / "digits" / "2" / "model.onnx"
    meta = json.loads((root / "digits" / "2" / "metadata.json").read_text())
    assert meta["variant"]["method"] == "int8-static"
    assert meta["variant"]["calibration_rows"] > 0


@pytest.mark.unit
def test_models_convert_and_the_gate_through_the_handlers(
    tmp_path: Path, built_models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fleetctl import variants_cmd
    from worker.variants import DEFAULT_MARGIN, AccuracyGateFailed

    root = tmp_path / "models"
    for name in ("digits", "mlp"):
        shutil.copytree(built_models / name / "1", root / name / "1")
    parser = build_parser()
    args = parser.parse_args(
        ["models", "convert", "--fp16", "--model", "digits", "--repository", str(root)]
    )
    assert args.margin == variants_cmd.DEFAULT_MARGIN == DEFAULT_MARGIN
    assert args.handler(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("digits version 2: fp16 variant of version 1;") for line in lines)
    # INT8 mlp agrees with FP32 mlp on most rows, not all: no margin, no variant
    args = parser.parse_args(
        ["models", "quantize", "--model", "mlp", "--repository", str(root), "--margin", "0"]
    )
    with pytest.raises(AccuracyGateFailed, match="nothing written") as exc:
        args.handler(args)
    # the mlp's weights are random: its labels are its FP32 version's own top-1 predictions
    assert exc.value.source_accuracy == 1.0 and 0.95 <= exc.value.accuracy < 1.0
    assert sorted(p.name for p in (root / "mlp").iterdir()) == ["1"]
    with pytest.raises(SystemExit):
        parser.parse_args(["models", "convert", "--model", "digits"])  # --fp16 is required
