"""``fleet autoscaler``: the command around the autoscaler's loop."""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from pathlib import Path

import pytest

from fleetctl.autoscaler_cmd import add_commands

pytestmark = pytest.mark.memory


async def test_once_prints_a_json_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "a.toml"
    cfg.write_text(
        f'broker = "memory://cli-{uuid.uuid4().hex[:6]}"\nmodels = ["m"]\n'
        '[policy]\nkind = "default"\n'
        '[actuator]\nkind = "dry-run"\ninitial_capacity = 2\n[metrics]\nenabled = false\n'
    )
    parser = argparse.ArgumentParser(prog="fleet")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["autoscaler", "--config", str(cfg), "--once", "--log-level", "ERROR"])
    rc = await asyncio.to_thread(args.handler, args)
    out, err = capsys.readouterr()
    assert rc == 0, err
    decision = json.loads(out.strip().splitlines()[-1])
    assert decision["direction"] in ("out", "in", "hold")
    assert decision["snapshot"]["backlog"] == 0
    assert decision["snapshot"]["in_service"] == 2


def test_the_log_format_chosen_on_the_command_line_holds(tmp_path: Path) -> None:
    """``fleet --log-format console autoscaler`` logs to a terminal as asked:
    the command's own logging set-up keeps the format."""
    import structlog

    from fleetctl.cli import build_parser

    args = build_parser().parse_args(
        ["--log-format", "console", "autoscaler", "--config", str(tmp_path / "none.toml")]
    )
    try:
        assert args.handler(args) != 0  # no such file: it stops after setting up its logs
        renderer = structlog.get_config()["processors"][-1]
        assert isinstance(renderer, structlog.dev.ConsoleRenderer)
    finally:
        structlog.reset_defaults()
