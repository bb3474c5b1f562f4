"""Notifications of finished jobs: a worker started with ``notify`` publishes
one JSON message per job it stores, ``done`` or ``failed``, to a destination
the user names, on every broker; a job stored before (a delivery again after
a worker stopped between storing and notifying) is notified from its record;
a job past the delivery limit ends failed, and is notified."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from fleet import wire
from fleet.contract import ErrorInfo, Priority, Reply
from fleet.errors import DecodeError, Internal, InvalidArgument
from fleet.jobs import JobEvent, JobState, job_address, new_job_id
from fleet.transport import connect
from producer import Client, JobEvents
from tests.conftest import ROOT
from tests.helpers import direct_onnx, rows, running_worker
from tests.jobs.conftest import redis_url
from worker.settings import WorkerSettings

pytestmark = pytest.mark.jobs

WAIT = 60.0


async def test_a_worker_notifies_each_finished_job(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    results, digits = redis_url(), f"{unique_model}-digits"
    destination = f"jobs-{unique_model}"
    x = rows(64, 2, seed=3)
    async with (
        running_worker(broker_url, model_repo, results=results, notify=destination),
        JobEvents(broker_url, destination) as events,
        Client(broker_url, results=results) as client,
    ):
        good = await client.submit(digits, {"input": x})
        bad = await client.submit(digits, {"input": rows(7, 2)})  # the wrong width
        got = {e.job: e for e in [await events.get(timeout=WAIT), await events.get(timeout=WAIT)]}
        assert client.jobs is not None
        answer = await client.jobs.result(good, timeout=0)  # stored before it was notified
    assert set(got) == {good, bad}
    done, failed = got[good], got[bad]
    assert (done.model, done.state, done.version, done.error) == (digits, JobState.DONE, "1", None)
    assert done.key == f"{digits}.done"
    assert (failed.state, failed.key) == (JobState.FAILED, f"{digits}.failed")
    assert failed.error is not None
    assert isinstance(failed.error.to_exception(), InvalidArgument)
    assert "expected shape" in failed.error.message
    assert events.dropped == 0
    want = direct_onnx(model_repo / digits, {"input": x})
    np.testing.assert_array_equal(answer["label"], want["label"])


def _stored_reply(model: str) -> bytes:
    """A reply frame as a worker stores it: a failed job's."""
    reply = Reply(
        id="r0", model=model, version="1", error=ErrorInfo.of(Internal("stopped mid-way"))
    )
    return wire.encode_replies([reply])


@pytest.mark.memory
async def test_a_job_stored_before_is_notified_when_delivered_again(
    model_repo: Path, unique_model: str
) -> None:
    """A worker that stored a job's result and stopped before notifying left
    its request to be delivered again: the next worker does not run it again,
    and notifies it from the store."""
    broker, results = f"memory://{unique_model}", f"memory://jobs-{unique_model}"
    digits, destination = f"{unique_model}-digits", f"jobs-{unique_model}"
    async with Client(broker, results=results) as client:
        await client.transport.declare_model(digits)
        job = await client.submit(digits, {"input": rows(64, 1)})
        assert client.jobs is not None
        store = client.jobs.store
        assert await store.start(job) and await store.finish(
            job, ok=False, result=_stored_reply(digits)
        )
        async with (
            JobEvents(broker, destination) as events,
            running_worker(broker, model_repo, results=results, notify=destination) as worker,
        ):
            event = await events.get(timeout=WAIT)
            assert worker.stats.answered_total == 0  # not run again
    assert (event.job, event.state) == (job, JobState.FAILED)
    assert event.error is not None and event.error.message == "stopped mid-way"


async def die_holding(broker: str, model: str) -> None:
    """A worker that takes the model's one job and dies holding it."""
    crashed = connect(broker)
    await crashed.connect()
    taken: asyncio.Queue[object] = asyncio.Queue()

    async def hold(delivery: object) -> None:
        await taken.put(delivery)

    await crashed.consume(model, Priority.BATCH, hold, prefetch=1)
    await asyncio.wait_for(taken.get(), WAIT)
    await crashed.close()


@pytest.mark.exclusive  # any worker with a result store taps the same dead letters
async def test_a_job_past_the_delivery_limit_ends_failed_and_is_notified(
    broker_url: str, model_repo: Path, unique_model: str
) -> None:
    """Every broker dead-letters a message past its delivery limit itself, so
    no worker sees that delivery: a worker with a result store taps the dead
    letters and stores the job failed. Here the job's model is one no worker
    serves, so only the tap can end it."""
    broker = f"{broker_url}{'&' if '?' in broker_url else '?'}delivery_limit=1"
    results = redis_url()
    destination, ghost = f"jobs-{unique_model}", f"{unique_model}-ghost"
    async with (
        Client(broker, results=results) as client,
        JobEvents(broker, destination) as events,
        running_worker(broker, model_repo, results=results, notify=destination) as worker,
    ):
        await client.transport.declare_model(ghost)
        job = await client.submit(ghost, {"input": rows(64, 1)})
        await die_holding(broker, ghost)
        # a consumer after it gets nothing: on Kafka, its joining is what finds
        # the record past its limit (RabbitMQ dead-lettered it on its return)
        after = connect(broker)
        await after.connect()
        got: list[object] = []

        async def keep(delivery: object) -> None:
            got.append(delivery)

        await after.consume(ghost, Priority.BATCH, keep, prefetch=1)
        event = await events.get(timeout=WAIT)
        while event.job != job:  # one the tap ended from before this test
            event = await events.get(timeout=WAIT)
        await after.close()
        assert got == []
        assert worker.stats.answered_total == 0
        assert client.jobs is not None
        status = await client.jobs.status(job)
        with pytest.raises(Internal, match="dead-lettered by the broker"):
            await client.jobs.result(job, timeout=0)
    assert (status.state, event.job, event.state) == (JobState.FAILED, job, JobState.FAILED)
    assert isinstance(status.error, Internal) and event.model == ghost


@pytest.mark.memory
async def test_an_unreadable_notification_is_skipped(unique_model: str) -> None:
    broker, destination = f"memory://{unique_model}", f"jobs-{unique_model}"
    event = JobEvent(job=new_job_id(), model="m", state=JobState.DONE, version="2")
    async with JobEvents(broker, destination) as events:
        for body in (b"", b"{", b"[]", b'{"job": "nope"}', b"\xff" * 9, event.encode()):
            await events.transport.publish_notification(destination, "m.done", body)
        assert await events.get(timeout=WAIT) == event
    assert events.dropped == 5


def test_job_events_round_trip_and_refuse_what_is_not_one() -> None:
    failed = JobEvent(
        job=new_job_id(),
        model="digits",
        state=JobState.FAILED,
        error=ErrorInfo.of(InvalidArgument("bad")),
        finished_at=1.5,
    )
    assert JobEvent.decode(failed.encode()) == failed
    assert json.loads(failed.encode())["error"]["type"] == "InvalidArgument"
    for body in (b"", b"null", b'{"job": 1}', b'{"job": "' + b"0" * 32 + b'", "model": "m"}'):
        with pytest.raises(DecodeError):
            JobEvent.decode(body)


@pytest.mark.parametrize("name", ["fleet.heartbeats", "fleet.dead-letter", "a b", "", "x" * 201])
def test_a_worker_refuses_a_notify_destination_it_may_not_use(name: str) -> None:
    with pytest.raises(ValidationError, match="notify"):
        WorkerSettings(models="/nonexistent", notify=name)


@pytest.mark.rabbitmq
async def test_fleet_jobs_watch_prints_each_notification(
    model_repo: Path, unique_model: str
) -> None:
    broker = os.environ.get("FLEET_TEST_AMQP_URL")
    if not broker:
        pytest.fail("FLEET_TEST_AMQP_URL is not set")
    results, digits = redis_url(), f"{unique_model}-digits"
    destination = f"jobs-{unique_model}"
    watch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleetctl", "jobs", "watch", destination, "--count", "1",
        "--timeout", str(WAIT),
        cwd=ROOT, env={**os.environ, "FLEET_BROKER": broker},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert watch.stderr is not None
        started = await asyncio.wait_for(watch.stderr.readline(), WAIT)
        assert started.decode().strip() == f"watching {destination}"
        async with (
            running_worker(broker, model_repo, results=results, notify=destination),
            Client(broker, results=results) as client,
        ):
            job = await client.submit(digits, {"input": rows(64, 1)})
            out, _ = await asyncio.wait_for(watch.communicate(), WAIT)
    finally:
        if watch.returncode is None:
            watch.kill()
            await watch.wait()
    assert watch.returncode == 0
    (line,) = out.decode().splitlines()
    event = JobEvent.decode(line.encode())
    assert (event.job, event.state, event.model) == (job, JobState.DONE, digits)
    assert job_address(job).endswith(event.job)
