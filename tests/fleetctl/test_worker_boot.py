"""``fleet worker`` started before its broker listens: SIGTERM while it waits."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from fleet.worker_command import worker_argv

PASSWORD = "s3cr3t-pw"


@pytest.mark.memory
def test_sigterm_while_waiting_for_the_broker_exits_zero_at_once(built_models: Path) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        argv = worker_argv(
            broker=f"amqp://fleet:{PASSWORD}@127.0.0.1:{port}/",
            models=built_models,
            worker_id="waits",
            extra=["--broker-retry-initial", "300", "--broker-retry-max", "300"],
        )
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            for line in proc.stdout:  # the first retry is logged before its 150-300 s sleep
                lines.append(line)
                if '"broker.unreachable"' in line:
                    break
            retry = json.loads(lines[-1])
            assert retry["attempt"] == 1 and retry["next_delay_s"] >= 150
            assert retry["broker"] == f"amqp://fleet:***@127.0.0.1:{port}/"
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=60)
            waited = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, "".join(lines) + rest
    assert waited < 60  # well before the 150 s sleep would have ended
    assert PASSWORD not in "".join(lines) + rest
