"""The calls-per-request benchmark: its counter counts a process's calls
between two signals and no others, and its report's arithmetic."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import calls

pytestmark = pytest.mark.unit

# Calls f() exactly CALLS times once the counting has begun, then says
# "done"; it waits on built-ins only, so the Python calls counted are f's
# and the call of the last wait. It sees for itself that the counting has
# begun (a profile hook is set), so no f() is ever called before the first
# signal's handler has run, however late that runs; and the last wait says
# "done" from inside itself, with built-ins alone, so a second signal sent
# on that word finds the wait called already and no Python call left to
# come but the handler's (never counted).
MODULE = """
import os, sys, time

here = sys.argv[1]
ready, done, stop = (here + "/" + name for name in ("ready", "done", "stop"))


def f():
    return 1


def wait_for(path, announce):
    # built-ins only: the file exists once os.open returns, and a signal sent
    # on it may be handled at any point after; open() would run Python code
    # (the text encoder's) then, counted or not as the signal falls
    os.close(os.open(announce, os.O_CREAT | os.O_WRONLY))
    while True:
        try:
            os.stat(path)
            return
        except FileNotFoundError:
            time.sleep(0.01)


open(ready, "w").close()
while sys.getprofile() is None:
    time.sleep(0.01)
for _ in range({calls}):
    f()
wait_for(stop, done)
"""


def _wait_for(path: Path, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} never came"
        time.sleep(0.01)


def _count(tmp_path: Path, n: int) -> dict[str, int]:
    """The counts of MODULE calling f() ``n`` times between the two signals."""
    here = tmp_path / str(n)
    here.mkdir()
    (here / "counted_module.py").write_text(MODULE.format(calls=n))
    out = here / "counts.json"
    argv = calls.hooked(out, "counted_module", [str(here)])
    proc = subprocess.Popen(argv, cwd=here, env={"PYTHONPATH": str(here)})
    try:
        _wait_for(here / "ready")
        proc.send_signal(signal.SIGUSR2)  # start counting
        _wait_for(here / "done")
        proc.send_signal(signal.SIGUSR2)  # stop, and write the counts
        counts = calls.read_counts(out)
        (here / "stop").touch()
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    return counts


def test_the_counter_counts_the_calls_between_its_two_signals_and_no_others(
    tmp_path: Path,
) -> None:
    one, two = _count(tmp_path, 1000), _count(tmp_path, 2000)
    assert two["python"] - one["python"] == 1000, (one, two)  # exactly the extra f()s
    assert one["python"] == 1001, one  # f's and the last wait's
    assert one["builtin"] > 0  # the waits' os.stat and time.sleep


def test_the_report_takes_the_load_generators_calls_out_of_the_clients(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def run(worker: int, client: int) -> dict[str, object]:
        answered = 100
        return {
            "answered": answered,
            "worker": calls.per_request({"python": worker, "builtin": worker}, answered),
            "client": calls.per_request({"python": client, "builtin": client}, answered),
            "generator": calls.per_request({"python": 1000, "builtin": 2000}, 100),
        }

    baseline, this = run(40_000, 30_000), run(30_000, 30_000)
    assert calls.own(this, "client") == {"python": 290.0, "builtin": 280.0, "all": 570.0}
    calls.report("m over k", {"baseline": baseline, "this": this})
    out = capsys.readouterr().out
    assert "baseline: worker 400 / 400 / 800; client 290 / 280 / 570; both 1370" in out
    assert "this: worker 300 / 300 / 600; client 290 / 280 / 570; both 1170" in out
    assert "worker 0.75x, client 1.00x, both 0.85x" in out


@pytest.mark.parametrize("bad", [["--rate", "0"], ["--brokers", "nats"], ["--duration", "x"]])
def test_bad_options_are_refused_before_anything_starts(bad: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(Path(calls.__file__)), *bad], capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
