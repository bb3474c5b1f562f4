"""A new version rolled out, and back, under load, with no restart.

    .venv/bin/python benchmarks/rollout.py [--broker URL] [--model digits] [--rate 200]
        [--watch-interval 5] [--before 10] [--after 10] [--rounds 3]

One worker (in this process) serves ``--model`` version 1 from a temporary
repository; a client sends open-loop Poisson arrivals (seeded) at ``--rate``
requests/s, without a version. Each round:

1. ``--before`` seconds of traffic on the version served;
2. the next version is written the recommended way (copied under a hidden
   name, then renamed), and traffic goes on until its first answer and
   ``--after`` seconds more;
3. it is removed again (the rollback) and traffic goes on until the worker
   has retired it and ``--after`` seconds more.

Prints, per round and over all rounds: the time from the write to the first
answer from the new version, and from the removal to the retirement; the
p50 and p99 of requests sent before the write, during the switch (from the
write to one second after the first new answer) and after it, with the
ratios to before (same run); and failed requests (there should be none).
The broker is memory:// unless ``--broker`` names one (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fleet.errors import FleetError  # noqa: E402
from fleet.transport.base import wait_until  # noqa: E402
from producer import Client  # noqa: E402
from worker import zoo  # noqa: E402
from worker.service import Worker  # noqa: E402
from worker.settings import WorkerSettings  # noqa: E402


@dataclass(frozen=True, slots=True)
class Call:
    sent: float
    done: float
    version: str
    ok: bool


class Load:
    """Open-loop Poisson arrivals until stopped; every call recorded."""

    def __init__(self, client: Client, model: str, x: np.ndarray, rate: float, seed: int) -> None:
        self.client, self.model, self.x, self.rate = client, model, x, rate
        self.rng = np.random.default_rng(seed)
        self.calls: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        i = 0
        next_at = loop.time()
        while not self._stop.is_set():
            next_at += float(self.rng.exponential(1 / self.rate))
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            i = (i + 1) % len(self.x)
            task = loop.create_task(self._one(self.x[i : i + 1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*self._tasks)

    async def _one(self, row: np.ndarray) -> None:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        try:
            reply = await self.client.infer_reply(self.model, {"input": row}, timeout=30)
            ok, version = reply.ok, reply.version
        except FleetError:
            ok, version = False, ""
        self.calls.append(Call(sent, loop.time(), version, ok))

    def stop(self) -> None:
        self._stop.set()

    def first(self, version: str, after: float) -> float | None:
        done = [c.done for c in self.calls if c.version == version and c.sent >= after]
        return min(done) if done else None

    def latencies(self, start: float, end: float) -> np.ndarray:
        return np.array(
            [(c.done - c.sent) * 1000 for c in self.calls if start <= c.sent < end and c.ok]
        )


def _pct(ms: np.ndarray, q: float) -> float:
    return float(np.percentile(ms, q)) if len(ms) else float("nan")


async def _round(
    worker: Worker, load: Load, repo: Path, model: str, args: argparse.Namespace
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.sleep(args.before)
    new = str(max(int(v) for v in worker.table.runtimes[model]) + 1)
    written = loop.time()
    hidden = repo / model / f".{new}"
    shutil.copytree(repo / model / "1", hidden)
    hidden.rename(repo / model / new)
    assert await wait_until(lambda: load.first(new, written) is not None, 120, interval=0.01)
    first = load.first(new, written)
    assert first is not None
    await asyncio.sleep(args.after)
    removed = loop.time()
    shutil.rmtree(repo / model / new)
    assert await wait_until(lambda: new not in worker.table.runtimes[model], 120, interval=0.01)
    retired = loop.time()
    await asyncio.sleep(args.after)
    return {
        "version": new,
        "to_first_answer_s": first - written,
        "to_retired_s": retired - removed,
        "before": load.latencies(start, written),
        "during": load.latencies(written, first + 1.0),
        "after": load.latencies(first + 1.0, removed),
        "rollback": load.latencies(removed, retired + 1.0),
    }


def _report(rounds: list[dict[str, object]], failed: int, total: int) -> None:
    print(f"\n{total} requests, {failed} failed")
    print(
        "round  new  write->first answer  removal->retired  phase     p50 ms  p99 ms  p99 vs before"
    )
    for n, r in enumerate([*rounds, _pooled(rounds)], 1):
        before = r["before"]
        assert isinstance(before, np.ndarray)
        label = str(n) if n <= len(rounds) else "all"
        head = (
            f"{label:>5}  {r['version']:>3}  {r['to_first_answer_s']:>17.2f}s"
            f"  {r['to_retired_s']:>15.2f}s"
        )
        for phase in ("before", "during", "after", "rollback"):
            ms = r[phase]
            assert isinstance(ms, np.ndarray)
            ratio = _pct(ms, 99) / _pct(before, 99)
            print(f"{head}  {phase:<8} {_pct(ms, 50):7.2f} {_pct(ms, 99):7.2f}  {ratio:12.2f}x")
            head = " " * len(head)


def _pooled(rounds: list[dict[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {"version": "-"}
    for key in ("to_first_answer_s", "to_retired_s"):
        out[key] = float(np.median([float(r[key]) for r in rounds]))  # type: ignore[arg-type]
    for phase in ("before", "during", "after", "rollback"):
        out[phase] = np.concatenate([r[phase] for r in rounds])  # type: ignore[misc]
    return out


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(tmp) / "built"
        zoo.build_all(built)
        repo = Path(tmp) / "repo"
        shutil.copytree(built / args.model / "1", repo / args.model / "1")
        settings = WorkerSettings(
            broker=args.broker,
            models=repo,
            http_port=None,
            watch_interval=args.watch_interval,
            worker_id="rollout-bench",
        )
        worker = Worker(settings)
        await worker.start()
        width = worker.table.runtimes[args.model]["1"].inputs[0].shape[-1]
        x = np.random.default_rng(1).standard_normal((512, width)).astype(np.float32)
        try:
            async with Client(args.broker) as client:
                load = Load(client, args.model, x, args.rate, seed=7)
                running = asyncio.get_running_loop().create_task(load.run())
                rounds = [
                    await _round(worker, load, repo, args.model, args) for _ in range(args.rounds)
                ]
                load.stop()
                await running
        finally:
            await worker.stop()
    failed = sum(not c.ok for c in load.calls)
    print(
        f"model {args.model}, {args.rate:g} req/s open loop,"
        f" watch interval {args.watch_interval:g}s, broker {args.broker.split('://')[0]}"
    )
    _report(rounds, failed, len(load.calls))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--broker", default="memory://rollout-bench")
    p.add_argument("--model", default="digits", choices=["digits", "mlp"])
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--watch-interval", type=float, default=5.0)
    p.add_argument("--before", type=float, default=10.0)
    p.add_argument("--after", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
