"""What the wire format and tensor work cost per request, this build against another.

    .venv/bin/python benchmarks/codec.py [--baseline-ref HEAD~1] [--rows 64] [--rounds 3]

No broker and no model: each step of a request's round trip, timed over a
frame of ``--rows`` one-row requests shaped like ``digits`` (64 float32
inputs; replies of a label and 10 probabilities, with stage times):

- client: build the request and encode its body; join the frame;
- worker: decode the frame; the inputs as numpy; split the outputs into
  per-request replies; encode the reply frame;
- client: decode the reply frame; the outputs as numpy.

Each step's figure is the best of 15 repeats, in microseconds per request.
With ``--baseline-ref``, that revision is checked out in a temporary worktree
and both builds are measured in turn, ``--rounds`` times, each in a process of
its own; the best of each build's rounds is compared: the ratio is this build
over the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _cases(rows: int) -> dict[str, Any]:
    """The steps, each a function of no arguments (imports from this process's tree)."""
    import numpy as np

    from fleet import wire
    from fleet.contract import Reply, Timings
    from fleet.tensor import split_rows
    from producer.client import _request

    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((rows, 64)).astype(np.float32)
    ids = [f"{i:032x}" for i in range(rows)]

    def build() -> list[Any]:
        return [
            wire.encode_request_body(
                _request(
                    ids[i], "digits", None, {"input": inputs[i : i + 1]}, 5.0, "online", None, {}
                )
            )
            for i in range(rows)
        ]

    bodies = build()
    flags = wire.FLAG_STAGES
    frame = wire.encode_requests(bodies, "inbox", flags=flags)
    requests = wire.decode_requests(frame).items
    labels = np.arange(rows, dtype=np.int64)
    probabilities = rng.random((rows, 10)).astype(np.float32)
    timings = Timings(
        queue_ms=1.0, inference_ms=0.5, batch_size=rows, worker_id="w", received_at=1.0
    )

    def replies() -> list[Reply]:
        label = split_rows("label", labels, [1] * rows)
        probs = split_rows("probabilities", probabilities, [1] * rows)
        return [
            Reply(id=r.id, model="digits", version="1", outputs=(a, b), timings=timings)
            for r, a, b in zip(requests, label, probs, strict=True)
        ]

    answered = replies()
    reply_frame = wire.encode_replies(answered, stages=True)
    decoded = wire.decode_replies(reply_frame).items
    return {
        "client: build and encode": build,
        "client: join the frame": lambda: wire.encode_requests(
            bodies, "inbox", flags=wire.FLAG_STAGES
        ),
        "worker: decode": lambda: wire.decode_requests(frame),
        "worker: inputs as numpy": lambda: [t.to_numpy() for r in requests for t in r.inputs],
        "worker: split into replies": replies,
        "worker: encode replies": lambda: wire.encode_replies(answered, stages=True),
        "client: decode replies": lambda: wire.decode_replies(reply_frame),
        "client: outputs as numpy": lambda: [r.arrays() for r in decoded],
    }


def _measure(rows: int) -> dict[str, float]:
    out = {}
    for name, step in _cases(rows).items():
        best = min(timeit.repeat(step, number=50, repeat=15))
        out[name] = best / 50 / rows * 1e6
    return out


def _run(tree: Path, rows: int) -> dict[str, float]:
    """One measurement in a process of its own, importing from ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inner", "--rows", str(rows)]
    done = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def _report(this: dict[str, float], base: dict[str, float] | None) -> None:
    extra = f" {'baseline':>10s} {'ratio':>7s}" if base else ""
    print(f"{'step':28s} {'this us/req':>12s}{extra}")
    rows = {**this, "total": sum(this.values())}
    before = None if base is None else {**base, "total": sum(base.values())}
    for name, value in rows.items():
        line = f"{name:28s} {value:12.2f}"
        if before is not None:
            line += f" {before[name]:10.2f} {value / before[name]:6.2f}x"
        print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline-ref", help="git revision to compare against")
    parser.add_argument("--rows", type=int, default=64, help="requests per frame")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each build, in turn")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(_measure(args.rows)))
        return 0
    if not args.baseline_ref:
        _report(_measure(args.rows), None)
        return 0
    sys.path.insert(0, str(ROOT))  # not before: a measuring process imports from its own tree
    from benchmarks.revisions import add_worktree, remove_worktree

    with tempfile.TemporaryDirectory(prefix="fleet-codec-") as tmp:
        tree = add_worktree(args.baseline_ref, Path(tmp))
        try:
            runs: dict[Path, list[dict[str, float]]] = {ROOT: [], tree: []}
            for n in range(args.rounds):
                for where in (tree, ROOT):
                    runs[where].append(_run(where, args.rows))
                print(f"round {n + 1} of {args.rounds} done", file=sys.stderr)
        finally:
            remove_worktree(tree)
    best = {where: {k: min(r[k] for r in rs) for k in rs[0]} for where, rs in runs.items()}
    print(f"this build against {args.baseline_ref}, best of {args.rounds} runs each:")
    _report(best[ROOT], best[tree])
    return 0


if __name__ == "__main__":
    sys.exit(main())
