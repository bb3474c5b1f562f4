"""What one wake-up costs on this host: the CPU a process spends to wake for
a message and go back to waiting, with nothing else to do.

    .venv/bin/python benchmarks/wakeup_cost.py [--rate 150] [--seconds 3] [--rounds 3]

At everyday rates every request wakes the client and the worker several
times (a delivery, a publish's confirm, a reply: ``latency.py`` counts them),
and between requests the processes sleep, so each wake-up starts with caches
that other processes have used meanwhile. This measures that fixed cost
alone. A sender process writes 100 bytes ``--rate`` times a second over a
socket pair; the receiver does nothing with them, and its CPU time from the
first message to the last is divided by the times it woke to read. Two
receivers, alternated ``--rounds`` times, each a process of its own:

- ``epoll``: a loop on ``select.epoll`` and ``recv``: the least a Python
  process spends;
- ``asyncio``: an ``asyncio.Protocol`` on the default event loop: the least
  an asyncio service (the client, the worker) spends.

Each receiver first allocates and frees 1 MiB, as any process that has run a
while has done: that raises the C allocator's threshold for serving an
allocation with ``mmap``, and the loop's reads (a 256 KiB buffer each, shrunk
to what was read) come from the heap after it. A new process without it pays
an ``mmap`` and a ``munmap`` for every read (a worker and a client that have
served a while make neither, traced at 150 req/s), which here took an
asyncio wake-up from about 55 us to 70-130.

Prints each one's median over the rounds and asyncio's ratio to epoll.
Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import select
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

KINDS = ("epoll", "asyncio")
SIZE = 100  # bytes per message

SENDER = r"""
import socket, sys, time
fd, rate, seconds, size = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.socket(fileno=fd)
start, i = time.monotonic(), 0
while i < rate * seconds:
    due = start + i / rate
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    s.sendall(b"x" * size)
    i += 1
s.close()
"""


class _Counter(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.clock = Clock()

    def data_received(self, data: bytes) -> None:
        self.clock.woke(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Clock:
    """CPU time and voluntary context switches from the first message on."""

    def __init__(self) -> None:
        self.wakes = 0
        self.bytes = 0
        self.cpu0 = self.switches0 = 0.0

    def woke(self, n: int) -> None:
        if not self.wakes:
            self.cpu0, self.switches0 = time.process_time(), _switches()
        self.wakes += 1
        self.bytes += n

    def result(self, kind: str) -> dict[str, Any]:
        wakes = max(1, self.wakes - 1)  # the first one starts the clocks
        return {
            "kind": kind,
            "messages": self.bytes // SIZE,
            "wakes": self.wakes,
            "cpu_us": 1e6 * (time.process_time() - self.cpu0) / wakes,
            "switches": (_switches() - self.switches0) / wakes,
        }


def _switches() -> float:
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw)


def _receive_epoll(sock: socket.socket) -> Clock:
    clock = Clock()
    poller = select.epoll()
    poller.register(sock.fileno(), select.EPOLLIN)
    try:
        while True:
            poller.poll()
            data = sock.recv(65536)
            if not data:
                return clock
            clock.woke(len(data))
    finally:
        poller.close()


async def _receive_asyncio(sock: socket.socket) -> Clock:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    transport, protocol = await loop.connect_accepted_socket(lambda: _Counter(done), sock)
    try:
        await done
    finally:
        transport.close()
    return protocol.clock


def receive(kind: str, rate: float, seconds: float) -> dict[str, Any]:
    """Receive ``rate`` messages a second for ``seconds`` in this process,
    the ``kind`` way; its CPU and context switches per wake-up."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    block = bytes(1 << 20)  # the allocator as a process that has run a while has it
    del block
    mine, theirs = socket.socketpair()
    sender = subprocess.Popen(
        [sys.executable, "-c", SENDER, str(theirs.fileno()), str(rate), str(seconds), str(SIZE)],
        pass_fds=(theirs.fileno(),),
    )
    theirs.close()
    try:
        if kind == "epoll":
            clock = _receive_epoll(mine)
        else:
            clock = asyncio.run(_receive_asyncio(mine))
    finally:
        mine.close()
        sender.wait(timeout=seconds + 30)
    return clock.result(kind)


def measure(kind: str, rate: float, seconds: float) -> dict[str, Any]:
    """:func:`receive` in a new process (its CPU is the receiver's alone)."""
    script = str(Path(__file__).resolve())
    argv = [
        sys.executable,
        script,
        "--receive",
        kind,
        "--rate",
        str(rate),
        "--seconds",
        str(seconds),
    ]
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} receiver failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def compare(rate: float, seconds: float, rounds: int) -> dict[str, float]:
    """Each kind's median CPU microseconds per wake-up over ``rounds``
    alternated runs."""
    runs: dict[str, list[float]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            runs[kind].append(measure(kind, rate, seconds)["cpu_us"])
    return {k: statistics.median(v) for k, v in runs.items()}


def positive(text: str) -> float:
    """An option's positive number (argparse ``type``)."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """An option's whole number of at least ``minimum`` (argparse ``type``)."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number of at least {minimum}"
            )
        return value

    return whole


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rate", type=positive, default=150.0, help="messages per second")
    ap.add_argument("--seconds", type=positive, default=3.0, help="seconds per run")
    ap.add_argument(
        "--rounds", type=at_least(1), default=3, help="alternated runs of each receiver"
    )
    ap.add_argument("--receive", choices=KINDS, help=argparse.SUPPRESS)  # one run, as JSON
    args = ap.parse_args()
    if args.receive:
        print(json.dumps(receive(args.receive, args.rate, args.seconds)))
        return 0
    medians = compare(args.rate, args.seconds, args.rounds)
    print(
        f"one wake-up at {args.rate:g} messages/s, CPU per wake-up, median of {args.rounds}:"
        f" epoll {medians['epoll']:.1f} us, asyncio {medians['asyncio']:.1f} us"
        f" ({medians['asyncio'] / medians['epoll']:.2f}x epoll's)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
