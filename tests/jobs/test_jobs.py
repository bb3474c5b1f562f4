"""Jobs end to end: submitted, run by workers that store their results, read
from another process; cancelled; after a worker is killed and a broker
restarts, every job ends done with the right answer (or failed, typed) and
none stays open."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from fleet.errors import DeadlineExceeded, InvalidArgument, JobCancelled, JobNotFound
from fleet.jobs import JobState, new_job_id
from producer import Client, Jobs
from tests.conftest import BROKERS, ROOT
from tests.helpers import WorkerProcess, assert_digits_answers, direct_onnx, rows, running_worker
from tests.jobs.conftest import redis_url

pytestmark = pytest.mark.jobs

WAIT = 60.0


@pytest.fixture(params=[pytest.param(k, marks=BROKERS[k].mark) for k in ("amqp", "kafka")])
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The real brokers only: these tests run workers as processes."""
    return str(request.param)


# --------------------------------------------------------------------------- in one process
async def test_submit_then_read_from_a_second_reader(
    store_url: str, model_repo: Path, unique_model: str
) -> None:
    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    x = rows(64, 3, seed=1)
    async with running_worker(broker, model_repo, results=store_url):
        async with Client(broker, results=store_url) as client:
            job = await client.submit(digits, {"input": x})
            assert client.jobs is not None
            got = await client.jobs.result(job, timeout=WAIT)
        async with Jobs(store_url) as reader:  # nothing but the store
            status = await reader.status(job)
            again = await reader.result(job, timeout=0)
    want = direct_onnx(model_repo / digits, {"input": x})
    np.testing.assert_array_equal(got["label"], want["label"])
    np.testing.assert_array_equal(again["label"], want["label"])
    assert (status.state, status.model, status.attempts, status.error) == (
        JobState.DONE,
        digits,
        1,
        None,
    )


async def test_a_failed_job_keeps_its_typed_error(
    store_url: str, model_repo: Path, unique_model: str
) -> None:
    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    async with (
        running_worker(broker, model_repo, results=store_url),
        Client(broker, results=store_url) as client,
    ):
        assert client.jobs is not None
        job = await client.submit(digits, {"input": rows(7, 2)})  # the wrong width
        with pytest.raises(InvalidArgument, match="expected shape"):
            await client.jobs.result(job, timeout=WAIT)
        status = await client.jobs.status(job)
    assert status.state is JobState.FAILED and isinstance(status.error, InvalidArgument)


async def test_a_cancelled_job_is_not_run(
    store_url: str, model_repo: Path, unique_model: str
) -> None:
    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    async with Client(broker, results=store_url) as client:
        assert client.jobs is not None
        await client.transport.declare_model(digits)
        job = await client.submit(digits, {"input": rows(64, 1)})
        assert (await client.jobs.status(job)).state is JobState.QUEUED
        with pytest.raises(DeadlineExceeded, match="still queued"):
            await client.jobs.result(job, timeout=0.1)
        assert await client.jobs.cancel(job)
        async with running_worker(broker, model_repo, results=store_url) as worker:
            done = await client.submit(digits, {"input": rows(64, 1)})  # behind the cancelled
            await client.jobs.result(done, timeout=WAIT)
            assert worker.stats.answered_total == 1  # the cancelled one was not run
        with pytest.raises(JobCancelled):
            await client.jobs.result(job, timeout=WAIT)
        assert not await client.jobs.cancel(done)  # ended: nothing to cancel
        with pytest.raises(JobNotFound):
            await client.jobs.result(new_job_id(), timeout=WAIT)


async def test_a_worker_without_a_store_refuses_jobs(model_repo: Path, unique_model: str) -> None:
    store_url = f"memory://jobs-{unique_model}"
    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    async with (
        running_worker(broker, model_repo) as worker,
        Client(broker, results=store_url) as client,
    ):
        assert client.jobs is not None
        job = await client.submit(digits, {"input": rows(64, 1)})
        for _ in range(250):  # dead-lettered: counted as an error, answered to nobody
            if worker.stats.errors_total:
                break
            await asyncio.sleep(0.02)
        assert worker.stats.errors_total == 1 and worker.stats.answered_total == 0
        assert (await client.jobs.status(job)).state is JobState.QUEUED
    with pytest.raises(InvalidArgument, match="result store"):
        async with Client(broker) as plain:
            await plain.submit(digits, {"input": rows(64, 1)})


# --------------------------------------------------------------------------- on the brokers
SUBMITTER = """
import asyncio, json, os, sys
import numpy as np
from producer import Client

async def main() -> None:
    model, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    async with Client(os.environ["JOBS_BROKER"], results=os.environ["JOBS_RESULTS"]) as c:
        ids = []
        for start in range(0, count, 100):
            xs = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)
                  for i in range(start, min(count, start + 100))]
            ids += await asyncio.gather(*(c.submit(model, {"input": x}) for x in xs))
    with open(out, "w") as f:
        json.dump(ids, f)
    print("submitted", flush=True)
    await asyncio.sleep(3600)  # until killed

asyncio.run(main())
"""


def expected(model_dir: Path, count: int) -> dict[str, np.ndarray]:
    """The outputs of the rows SUBMITTER sends (one seed per row)."""
    xs = np.concatenate(
        [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32) for i in range(count)]
    )
    return direct_onnx(model_dir, {"input": xs})


async def submit_and_die(broker: str, results: str, model: str, count: int, out: Path) -> list[str]:
    """Submit ``count`` jobs from a process of their own, kill -9 it, return their ids."""
    env = {**os.environ, "JOBS_BROKER": broker, "JOBS_RESULTS": results}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SUBMITTER, model, str(count), str(out),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    assert line.strip() == b"submitted", line
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    ids: list[str] = json.loads(await asyncio.to_thread(out.read_text))
    assert len(set(ids)) == count
    return ids


async def all_ended(results: str, ids: list[str], model_dir: Path) -> list[int]:
    """Wait for every job; check each is done with the right answer; their attempts."""
    want = expected(model_dir, len(ids))
    async with Jobs(results) as jobs:
        replies = await asyncio.gather(*(jobs.reply(j, timeout=WAIT * 2) for j in ids))
        statuses = await asyncio.gather(*(jobs.status(j) for j in ids))
    got = [r.arrays() for r in replies]
    assert_digits_answers(
        np.concatenate([g["label"] for g in got]),
        np.concatenate([g["probabilities"] for g in got]),
        want,
    )
    assert {s.state for s in statuses} == {JobState.DONE}
    return [s.attempts for s in statuses]


async def test_jobs_outlive_the_process_that_submitted_them(
    broker_url: str, model_repo: Path, unique_model: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    results, digits = redis_url(), f"{unique_model}-digits"
    async with Client(broker_url) as declare:  # the queues exist before anything is sent
        await declare.transport.declare_model(digits)
    ids = await submit_and_die(broker_url, results, digits, 1000, tmp_path / "ids.json")
    async with Jobs(results) as jobs:
        queued = {(await jobs.status(j)).state for j in ids[:50]}
    assert queued == {JobState.QUEUED}  # no worker yet: nothing ran
    monkeypatch.setenv("FLEET_RESULTS", results)  # the worker's store, never on argv
    worker = await WorkerProcess(broker_url, model_repo, "w-jobs").start()
    try:
        attempts = await all_ended(results, ids, model_repo / digits)
    finally:
        await worker.stop()
    assert set(attempts) == {1}


async def test_a_killed_worker_and_a_broker_restart_leave_no_job_open(
    broker_url: str, restart_broker: object, model_repo: Path, unique_model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    results, digits = redis_url(), f"{unique_model}-digits"
    monkeypatch.setenv("FLEET_RESULTS", results)
    workers = [
        await WorkerProcess(broker_url, model_repo, f"w{i}", "--max-held-requests", "8").start()
        for i in range(2)
    ]
    try:
        async with Client(broker_url, results=results) as client:
            assert client.jobs is not None
            xs = [np.random.default_rng(i).standard_normal((1, 64)).astype(np.float32)
                  for i in range(400)]  # fmt: skip
            ids = list(await asyncio.gather(*(client.submit(digits, {"input": x}) for x in xs)))
            await wait_done(client.jobs, ids, at_least=40)
            workers[0].signal(signal.SIGKILL)  # in the middle of its jobs
            await wait_done(client.jobs, ids, at_least=120)
            await restart_broker()  # type: ignore[operator]
        attempts = await all_ended(results, ids, model_repo / digits)
    finally:
        for w in workers:
            await w.stop()
    print(f"jobs run twice (their worker was killed): {sum(a > 1 for a in attempts)}")


async def wait_done(jobs: Jobs, ids: list[str], *, at_least: int) -> None:
    for _ in range(600):
        states = await asyncio.gather(*(jobs.status(j) for j in ids))
        if sum(s.state is JobState.DONE for s in states) >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} jobs done after 60 s")
