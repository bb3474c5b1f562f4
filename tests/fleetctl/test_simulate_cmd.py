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
    from autoscaler.simulator.patterns import BUILTIN

    for name in BUILTIN:
        assert (tmp_path / "img" / f"{name}.png").stat().st_size > 10_000
        assert f"img/{name}.png" in doc
        for policy in ("default", "target-tracking", "keda", "static", "clairvoyant"):
            assert f"| {name} | {policy} |" in doc
    assert "ApproximateBacklogSizePerInstance" in doc
    assert doc.count("With foresight: the `clairvoyant` reference") == len(BUILTIN)
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


def _over_objective(out: str, policy: str) -> float:
    """The 'over objective' share of ``policy``'s row in the printed table."""
    for line in out.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[1] == policy:
            return float(cells[2].rstrip("%"))
    raise AssertionError(f"no row for {policy} in:\n{out}")


@pytest.mark.parametrize("kind", ["timestamps", "rates"])
def test_simulate_replays_a_csv_file_of_each_kind(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One file of request timestamps (epoch seconds, a header), one of
    ``seconds,rate`` rows: the same traffic, 120 s at 60 req/s then 60 s at
    240 req/s."""
    path = tmp_path / f"{kind}.csv"
    if kind == "timestamps":
        stamps = [1.7e9 + i / 60 for i in range(120 * 60)]
        stamps += [1.7e9 + 120 + i / 240 for i in range(60 * 240)]
        path.write_text("timestamp\n" + "\n".join(f"{t:.4f}" for t in stamps) + "\n")
    else:
        path.write_text("seconds,rate\n0,60\n120,240\n")
    args = parse(
        ["simulate", "--pattern", f"csv:{path}", "--policy", "static", "--out", str(tmp_path)]
    )
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert f"simulate-{kind}.png" in out
    assert (tmp_path / f"simulate-{kind}.png").exists()
    assert f"{kind} " in out  # the pattern's row
    from autoscaler.simulator.patterns import get_pattern

    pattern = get_pattern(f"csv:{path}")
    assert pattern.rates(60.0)[:3].round().tolist() == [60.0, 60.0, 240.0]
    if kind == "timestamps":
        assert pattern.timestamps is not None and len(pattern.timestamps) == 120 * 60 + 60 * 240


def test_warm_start_sizes_the_fleet_for_the_first_minute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From one instance the first minutes of triple (100 req/s) are late;
    from a fleet sized for them they are not."""
    common = ["--pattern", "triple", "--horizon", "300", "--policy", "default"]
    cold = parse(["simulate", *common, "--out", str(tmp_path)])
    assert cold.handler(cold) == 0
    cold_over = _over_objective(capsys.readouterr().out, "default")
    warm = parse(["simulate", *common, "--warm-start", "--out", str(tmp_path)])
    assert warm.handler(warm) == 0
    warm_over = _over_objective(capsys.readouterr().out, "default")
    assert cold_over > 10 * max(warm_over, 0.1)
