"""Tests running side by side on one set of servers.

Under ``pytest -n N`` (pytest-xdist) the tests share the one RabbitMQ, Kafka,
Redis and moto server. Names are per test (``unique_model``), so most tests
cannot see each other; but a test that restarts, pauses or alarms a server, or
listens on a fixed port, would break every test running beside it. Such a test
holds the servers alone (an exclusive lock) and the others hold them together
(a shared lock). A waiting exclusive test goes first: a test that wants the
shared lock waits behind it, so a steady stream of shared tests cannot starve
it. The lock is taken before pytest-timeout starts a test's clock, so waiting
for it never counts against the test's time limit.

Some tests share a broker-wide resource among themselves only: the
dead-letter queue, which every test that takes dead letters drains (taking
the others' too). ``@pytest.mark.shares("dead-letters")`` serializes those
tests with each other, while the rest run beside them; that lock is taken
after the servers' lock, always in this order, so no two tests wait on each
other in a cycle.

Without xdist nothing is locked: the tests run one after another anyway.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Fixtures that make a test disturb the servers every other test uses.
EXCLUSIVE_FIXTURES = frozenset({"restart_broker", "paused_kafka", "kafka_proxy"})
# Tiers whose tests use a shared server.
SERVER_TIERS = ("rabbitmq", "kafka", "aws", "tls", "jobs", "chaos", "faults")


def lock_mode(item: pytest.Item) -> int | None:
    """``LOCK_EX`` for a test that disturbs the shared servers, ``LOCK_SH`` for
    one that uses them, None for one that uses none."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("exclusive"):
        return fcntl.LOCK_EX
    callspec = getattr(item, "callspec", None)
    embedded = callspec is not None and callspec.params.get("broker_kind") == "memory"
    if fixtures & EXCLUSIVE_FIXTURES and not embedded:  # restarting memory:// disturbs no one
        return fcntl.LOCK_EX
    if any(item.get_closest_marker(tier) for tier in SERVER_TIERS):
        return fcntl.LOCK_SH
    return None


def shared_resources(item: pytest.Item) -> list[str]:
    """The names in the test's ``shares`` marks, sorted (the order they are taken in)."""
    return sorted({str(a) for mark in item.iter_markers("shares") for a in mark.args})


def in_parallel() -> bool:
    """Whether this is one of several xdist workers."""
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


@contextmanager
def holding(directory: Path, mode: int) -> Iterator[None]:
    """Hold the servers in ``mode`` (writer-preferring readers-writer lock
    over two files: a turnstile every taker passes, and the lock itself)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (
        (directory / "turnstile").open("a+") as turnstile,
        (directory / "servers").open("a+") as servers,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(servers, mode)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(servers, fcntl.LOCK_UN)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """One process at a time (for example building the shared test models)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
