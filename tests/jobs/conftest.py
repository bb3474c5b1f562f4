"""The jobs tier: result stores (``memory://``, Redis, S3 on moto) and jobs end to end.

Redis comes from ``FLEET_TEST_REDIS_URL`` (``scripts/test.sh`` starts
``scripts/redis.sh``, or a container when a Docker engine answers); under
``CI=true`` its absence fails the tier.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet.jobs import ResultStore, open_store
from fleet.jobs.memory import MemoryResultStore
from tests.conftest import missing

pytestmark = pytest.mark.jobs


def redis_url() -> str:
    url = os.environ.get("FLEET_TEST_REDIS_URL")
    if not url:
        missing("FLEET_TEST_REDIS_URL is not set; run scripts/redis.sh start (or scripts/test.sh)")
    assert url is not None
    return url


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Any:
    """An S3 client of moto's server (``FLEET_TEST_AWS_URL``), with the
    environment set so that the code under test reaches the same server with
    fake credentials, never a real profile's."""
    import boto3

    aws = os.environ.get("FLEET_TEST_AWS_URL")
    if not aws:
        missing("FLEET_TEST_AWS_URL is not set; run scripts/moto.sh start (or scripts/test.sh)")
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": str(aws),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return boto3.client("s3")


@pytest.fixture(params=["memory", "redis", "s3"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://jobs-{uuid.uuid4().hex[:8]}"
    if request.param == "s3":
        bucket = f"jobs-{uuid.uuid4().hex[:8]}"
        request.getfixturevalue("s3").create_bucket(Bucket=bucket)
        return f"s3://{bucket}/fleet"
    return redis_url()


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ResultStore]:
    async with open_store(store_url) as opened:
        yield opened
    if store_url.startswith("memory://"):
        MemoryResultStore.reset(store_url.removeprefix("memory://"))


def build_doubler(root: Path, name: str, width: int) -> Path:
    """A model ``name`` that doubles a float32 ``[n, width]`` input (``x`` to
    ``y``): inputs and outputs as large as a test wants."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", width])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], name, [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    version = root / name / "1"
    version.mkdir(parents=True)
    onnx.save(model, str(version / "model.onnx"))
    (version / "config.toml").write_text("max_batch_size = 64\nmax_wait_ms = 0.0\n")
    return root / name
