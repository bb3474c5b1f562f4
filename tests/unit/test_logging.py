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
