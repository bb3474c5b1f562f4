"""The claim check: requests and replies too large for a broker message go
through a payload store, checked by hash, and are deleted afterwards."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.errors import ConfigError, DecodeError, InvalidArgument, LimitExceeded
from fleet.jobs import JobState
from fleet.payloads import FilePayloads, Ref, open_payloads
from producer import Client
from tests.conftest import BROKERS, broker_url_for
from tests.helpers import rows, running_worker
from tests.jobs.conftest import build_doubler

pytestmark = pytest.mark.jobs

WAIT = 120.0


def test_references_round_trip_and_bad_ones_are_typed() -> None:
    ref = Ref(url="s3://b/p/x.request", sha256="0" * 64, size=12)
    assert Ref.parse(ref.encode()) == ref
    for bad in ("s3://b/x", "s3://b/x#sha256=00&size=1", "nothing#sha256=" + "0" * 64 + "&size=1"):
        with pytest.raises(DecodeError, match="no payload reference"):
            Ref.parse(bad)


async def test_a_file_store_checks_what_it_reads(tmp_path: Path) -> None:
    store = open_payloads(f"file://{tmp_path}/blobs")
    assert isinstance(store, FilePayloads)
    ref = await store.put("a.request", b"payload")
    assert ref.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert await store.get(ref) == b"payload"
    (tmp_path / "blobs" / "a.request").write_bytes(b"pAyload")  # changed underneath
    with pytest.raises(DecodeError, match="does not match"):
        await store.get(ref)
    with pytest.raises(LimitExceeded):
        await store.get(ref, max_bytes=3)
    elsewhere = Ref(url=f"file://{tmp_path}/other/a.request", sha256=ref.sha256, size=7)
    with pytest.raises(ConfigError, match="outside this store"):
        await store.get(elsewhere)
    await store.delete(ref)
    assert list((tmp_path / "blobs").iterdir()) == []
    with pytest.raises(DecodeError, match="gone"):
        await store.get(ref)
    with pytest.raises(ConfigError, match="file:///dir or s3://"):
        open_payloads("ftp://x/y")


async def serve_large(
    broker: str, model_repo: Path, model: str, blobs: Path, mb: int
) -> tuple[int, float]:
    """One request of about ``mb`` MB through the claim check, its reply as
    large; the bytes sent and the seconds the call took."""
    width = 1 << 20 if mb < 100 else 1 << 22  # 4 or 16 MiB of float32 a row: under 64 rows
    build_doubler(model_repo, model, width)
    url = f"file://{blobs}"
    n_rows = mb * 1000 * 1000 // (width * 4) + 1
    x = np.random.default_rng(5).standard_normal((n_rows, width), dtype=np.float32)
    async with (
        running_worker(broker, model_repo, payloads=url, claim_threshold=64 << 10),
        Client(broker, payloads=url, claim_threshold=64 << 10, timeout=WAIT) as client,
    ):
        started = time.perf_counter()
        got = await client.infer(model, {"x": x})
        took = time.perf_counter() - started
    np.testing.assert_array_equal(got["y"], x + x)
    return x.nbytes, took


async def test_a_large_request_and_its_reply_go_through_the_store(
    model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    await serve_large(f"memory://{unique_model}", model_repo, f"{unique_model}-big", blobs, 8)
    assert list(blobs.iterdir()) == []  # request and reply blobs deleted


async def test_without_a_store_the_worker_refuses_a_claimed_request(
    model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    broker, url = f"memory://{unique_model}", f"file://{tmp_path}/blobs"
    digits = f"{unique_model}-digits"
    async with (
        running_worker(broker, model_repo),
        Client(broker, payloads=url, claim_threshold=4096) as client,
    ):
        with pytest.raises(InvalidArgument, match="payload store"):
            await client.infer(digits, {"input": rows(64, 64)})
        small = await client.infer(digits, {"input": rows(64, 2)})
    assert small["label"].shape == (2,)
    assert list((tmp_path / "blobs").iterdir()) == []


async def test_a_large_job_goes_through_the_store_and_is_forgotten_with_it(
    model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    broker, blobs, big = f"memory://{unique_model}", tmp_path / "blobs", f"{unique_model}-big"
    url, results = f"file://{blobs}", f"memory://jobs-{unique_model}"
    build_doubler(model_repo, big, 1 << 16)
    x = np.random.default_rng(6).standard_normal((8, 1 << 16), dtype=np.float32)
    async with (
        running_worker(broker, model_repo, payloads=url, claim_threshold=64 << 10, results=results),
        Client(broker, payloads=url, claim_threshold=64 << 10, results=results) as client,
    ):
        assert client.jobs is not None
        job = await client.submit(big, {"x": x})
        got = await client.jobs.result(job, timeout=WAIT)
        assert (await client.jobs.status(job)).state is JobState.DONE
        assert [p.name for p in blobs.iterdir()] == [f"{job}.reply"]  # the request's is gone
        await client.jobs.forget(job)
    np.testing.assert_array_equal(got["y"], x + x)
    assert list(blobs.iterdir()) == []


ON_BROKERS = [pytest.param(k, marks=BROKERS[k].mark) for k in ("amqp", "kafka")]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ON_BROKERS)
async def test_a_200_mb_request_on_the_brokers(
    kind: str, model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    blobs = tmp_path / "blobs"
    sent, took = await serve_large(
        broker_url_for(kind), model_repo, f"{unique_model}-big", blobs, 200
    )
    assert list(blobs.iterdir()) == []
    assert sent >= 200_000_000
    print(f"{kind}: {sent / 1e6:.0f} MB request and reply through the claim check: {took:.2f} s")


@pytest.mark.aws
async def test_an_s3_store_on_the_brokers_path(
    model_repo: Path, unique_model: str, s3: Any
) -> None:
    """s3:// on moto's server: the blobs are objects, deleted afterwards;
    a changed object is refused by its hash."""
    bucket = f"fleet-payloads-{unique_model}"
    s3.create_bucket(Bucket=bucket)
    url = f"s3://{bucket}/claims"
    store = open_payloads(url)
    ref = await store.put("probe.request", b"probe")
    s3.put_object(Bucket=bucket, Key="claims/probe.request", Body=b"PROBE")
    with pytest.raises(DecodeError, match="does not match"):
        await store.get(ref)
    await store.delete(ref)
    big, broker = f"{unique_model}-big", f"memory://{unique_model}"
    build_doubler(model_repo, big, 1 << 16)
    x = np.random.default_rng(7).standard_normal((16, 1 << 16), dtype=np.float32)
    async with (
        running_worker(broker, model_repo, payloads=url, claim_threshold=64 << 10),
        Client(broker, payloads=url, claim_threshold=64 << 10) as client,
    ):
        got = await client.infer(big, {"x": x}, timeout=WAIT)
    np.testing.assert_array_equal(got["y"], x + x)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    s3.delete_bucket(Bucket=bucket)
