"""The short soak, once per broker: ``benchmarks/soak.py --minutes 1`` as a
subprocess must end with nothing lost, crossed or hung, and the worker's
memory flat. Each fault also has its own test (``tests/chaos``); the soak
mixes them under load, and the long runs of it are benchmarks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, broker_url_for

pytestmark = [pytest.mark.chaos, pytest.mark.exclusive]


@pytest.mark.parametrize(
    "broker",
    [
        pytest.param("amqp", marks=pytest.mark.rabbitmq),
        pytest.param("kafka", marks=pytest.mark.kafka),
    ],
)
@pytest.mark.timeout(360)
def test_one_minute_soak_loses_nothing(broker: str) -> None:
    url = broker_url_for(broker)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "soak.py"),
            "--broker",
            broker,
            "--minutes",
            "1",
            "--seed",
            "1",
            "--url",
            url,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(proc.stdout)  # the report: shown with -rA, or on failure
    tail = proc.stdout[-4000:] + "\n--- stderr ---\n" + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert "silently lost: 0" in proc.stdout and "crossed: 0" in proc.stdout, tail
