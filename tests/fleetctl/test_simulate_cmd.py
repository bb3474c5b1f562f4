"""``fleet compare-policies`` and ``fleet simulate`` on short horizons."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from fleetctl.simulate_cmd import add_commands

pytestmark = pytest.mark.unit


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fleet")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_compare_policies_writes_table_and_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(["compare-policies", "--out", str(tmp_path), "--horizon", "900"])
    args.handler(args)
    doc = (tmp_path / "policies.md").read_text()
    for name in ("spiky", "diurnal", "triple", "ramp"):
        assert (tmp_path / "img" / f"{name}.png").stat().st_size > 10_000
        assert f"img/{name}.png" in doc
        for policy in ("default", "target-tracking", "keda", "static", "clairvoyant"):
            assert f"| {name} | {policy} |" in doc
    assert "ApproximateBacklogSizePerInstance" in doc
    assert doc.count("With foresight: the `clairvoyant` reference") == 4
    assert "over objective" in capsys.readouterr().out


def test_simulate_prints_table_and_writes_png(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parse(
        [
            "simulate",
            "--pattern",
            "triple",
            "--horizon",
            "600",
            "--policy",
            "default",
            "--policy",
            "static",
            "--policy",
            "clairvoyant",
            "--out",
            str(tmp_path),
        ]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "default" in out and "static" in out and "clairvoyant" in out
    assert (tmp_path / "simulate-triple.png").exists()


def test_every_option_has_help() -> None:
    parser = argparse.ArgumentParser(prog="fleet")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest}"


def test_an_unknown_policy_lists_the_known_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    from autoscaler.simulator.compare import ALL_KINDS

    args = parse(["simulate", "--policy", "bogus", "--horizon", "60"])
    assert args.handler(args) == 2
    err = capsys.readouterr().err
    assert "unknown policy kind 'bogus'" in err
    for kind in ALL_KINDS:
        assert kind in err


def test_a_registered_policy_is_simulated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from autoscaler.baselines import STATIC
    from autoscaler.registry import POLICIES, PolicySpec

    fixed = PolicySpec(name="fixed-two", config=STATIC.config, build=STATIC.build)
    with POLICIES.registered(fixed):
        args = parse(
            [
                *("simulate", "--pattern", "ramp", "--policy", "fixed-two", "--horizon", "120"),
                *("--out", str(tmp_path)),
            ]
        )
        assert args.handler(args) == 0
    assert "fixed-two" in capsys.readouterr().out
