"""Every result store keeps the same contract: transitions are atomic and only
an open job (queued or running) moves."""

from __future__ import annotations

import asyncio

import pytest

from fleet.errors import AuthenticationFailed, ConfigError, InvalidArgument, Unavailable
from fleet.jobs import JobState, ResultStore, job_address, job_id_of, new_job_id, open_store
from tests.conftest import ROOT
from tests.jobs.conftest import redis_url

pytestmark = pytest.mark.jobs


async def test_a_job_runs_then_ends_with_its_result(store: ResultStore) -> None:
    job = new_job_id()
    assert await store.get(job) is None
    await store.create(job, model="digits")
    record = await store.get(job)
    assert record is not None and (record.state, record.model, record.attempts) == (
        JobState.QUEUED,
        "digits",
        0,
    )
    assert record.result is None
    assert await store.start(job)
    assert await store.start(job)  # delivered again after a worker died: running again
    assert await store.finish(job, ok=True, result=b"\x00frame")
    record = await store.get(job)
    assert record is not None and record.state is JobState.DONE
    assert (record.result, record.attempts) == (b"\x00frame", 2)
    assert record.updated_at >= record.submitted_at > 0


async def test_a_final_job_is_never_written_over(store: ResultStore) -> None:
    done, cancelled = new_job_id(), new_job_id()
    await store.create(done, model="m")
    await store.create(cancelled, model="m")
    assert await store.finish(done, ok=False, result=b"first")
    assert not await store.finish(done, ok=True, result=b"second")  # a duplicate finish
    assert not await store.cancel(done)
    assert not await store.start(done)
    assert await store.cancel(cancelled)
    assert not await store.start(cancelled)  # a worker that takes it does not run it
    assert not await store.finish(cancelled, ok=True, result=b"late")
    got_done, got_cancelled = await store.get(done), await store.get(cancelled)
    assert got_done is not None and (got_done.state, got_done.result) == (JobState.FAILED, b"first")
    assert got_cancelled is not None and got_cancelled.state is JobState.CANCELLED
    assert got_cancelled.result is None


async def test_unknown_and_expired_jobs_do_not_move(store: ResultStore) -> None:
    unknown, short = new_job_id(), new_job_id()
    assert not await store.start(unknown)
    assert not await store.finish(unknown, ok=True, result=b"x")
    assert not await store.cancel(unknown)
    assert await store.get(unknown) is None  # and nothing was created by trying
    await store.create(short, model="m", ttl=0.2)
    for _ in range(100):
        if await store.get(short) is None:
            break
        await asyncio.sleep(0.05)
    assert await store.get(short) is None
    assert not await store.finish(short, ok=True, result=b"x")
    await store.create(unknown, model="m")
    await store.delete(unknown)
    assert await store.get(unknown) is None


async def test_concurrent_finishes_store_exactly_one(store: ResultStore) -> None:
    job = new_job_id()
    await store.create(job, model="m")
    results = await asyncio.gather(
        *(store.finish(job, ok=True, result=bytes([i])) for i in range(20))
    )
    assert sum(results) == 1
    record = await store.get(job)
    assert record is not None and record.result == bytes([results.index(True)])


def test_job_addresses_and_ids() -> None:
    job = new_job_id()
    assert job_id_of(job_address(job)) == job
    assert job_id_of(f"fleet.inbox.{job}") is None
    assert job_id_of("fleet.job.XYZ") is None
    with pytest.raises(InvalidArgument, match="32 lowercase hex"):
        job_address("../../etc")
    with pytest.raises(ConfigError, match=r"known: .*redis://"):
        open_store("mongodb://x")


async def test_a_wrong_password_is_a_typed_refusal_without_the_password() -> None:
    url = redis_url()
    host = url.rpartition("@")[2]
    wrong = f"redis://:not-the-password-9c1@{host}"
    store = open_store(wrong)
    with pytest.raises(AuthenticationFailed) as caught:
        await store.connect()
    assert "not-the-password-9c1" not in str(caught.value)
    await store.close()


async def test_a_store_that_does_not_answer_is_unavailable() -> None:
    store = open_store("redis://127.0.0.1:1/0")
    with pytest.raises(Unavailable, match="result store"):
        await store.connect()
    await store.close()


async def test_the_password_may_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = redis_url()
    password, _, host = url.removeprefix("redis://:").partition("@")
    monkeypatch.setenv("FLEET_RESULTS_PASSWORD", password)
    async with open_store(f"redis://{host}") as store:
        job = new_job_id()
        await store.create(job, model="m")
        assert await store.get(job) is not None
        await store.delete(job)


ACL = (
    "on resetkeys ~fleet:job:* -@all +ping +hget +hset +hincrby +hgetall +del +pexpire "
    "+multi +exec +evalsha +eval +script|load"
)


async def test_the_documented_acl_is_enough() -> None:
    """docs/security.md's Redis ACL: the store works with it, and nothing
    outside ``fleet:job:*`` is reachable."""
    import redis.asyncio as aioredis
    from redis.exceptions import NoPermissionError

    docs = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    assert f"ACL SETUSER fleet {ACL.replace('on ', 'on >PASSWORD ', 1)}" in docs
    url = redis_url()
    admin = aioredis.from_url(url)
    user, password = f"fleet-{new_job_id()[:8]}", new_job_id()
    await admin.execute_command("ACL", "SETUSER", user, *ACL.split(), f">{password}")
    host = url.rpartition("@")[2]
    try:
        async with open_store(f"redis://{user}:{password}@{host}") as store:
            job = new_job_id()
            await store.create(job, model="m")
            assert await store.start(job) and await store.finish(job, ok=True, result=b"r")
            assert not await store.cancel(job)
            record = await store.get(job)
            assert record is not None and record.result == b"r"
            await store.delete(job)
        limited = aioredis.from_url(f"redis://{user}:{password}@{host}")
        with pytest.raises(NoPermissionError):
            await limited.get("other-key")
        await limited.aclose()
    finally:
        await admin.execute_command("ACL", "DELUSER", user)
        await admin.aclose()
