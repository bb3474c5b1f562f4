"""Logging never fails the code that logs."""

from __future__ import annotations

import io
import sys

import pytest
import structlog

from fleet.logging import configure, get_logger

pytestmark = pytest.mark.unit


def test_a_stream_replaced_and_closed_after_configuring_is_not_written_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    try:
        configure(level="INFO")
        get_logger("test").info("to the first stream")
        first.close()  # e.g. a test's captured output, or a redirected stream, gone
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        get_logger("test").info("to the second stream")
        assert "to the second stream" in second.getvalue()
    finally:
        structlog.reset_defaults()


LIBRARY_LOGS = """
import logging
from fleet.logging import configure
configure(level="INFO", json=True)
try:
    raise ConnectionResetError(104, "Connection reset by peer")
except ConnectionResetError:
    logging.getLogger("aiormq.connection").warning("reader exited %s", "abnormally", exc_info=True)
logging.getLogger("aiokafka").debug("below the level")
logging.getLogger("aiokafka").error("fetch failed")
"""


def test_library_records_are_json_lines_too_tracebacks_included() -> None:
    """What the broker libraries log (through the standard library's logging)
    comes out as the same JSON lines as the fleet's own, a traceback inside
    its line, never as lines of plain text a log shipper cannot parse."""
    import json
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", LIBRARY_LOGS], capture_output=True, text=True, check=True
    )
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # each one JSON
    assert [(x["level"], x["logger"], x["event"]) for x in lines] == [
        ("warning", "aiormq.connection", "reader exited abnormally"),
        ("error", "aiokafka", "fetch failed"),
    ]
    assert "ConnectionResetError: [Errno 104] Connection reset by peer" in lines[0]["exception"]
    assert all("timestamp" in x for x in lines)
