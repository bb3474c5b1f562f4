"""Offline batch runs: a million rows through the fleet, the run killed at
about half way and started again, every row answered once, in order."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleet.errors import InvalidArgument
from producer import Client
from producer.batch import ERRORS, PROGRESS, run_batch
from tests.conftest import ROOT
from tests.helpers import assert_digits_answers, direct_onnx, running_worker

pytestmark = pytest.mark.jobs

ROWS = 1_000_000

RUNNER = """
import asyncio, sys
from pathlib import Path
from producer import Client
from producer.batch import run_batch
from worker.service import Worker, WorkerSettings

async def main() -> None:
    models, model, source, out = sys.argv[1:5]
    settings = WorkerSettings(broker="memory://batch", models=Path(models), http_port=None)
    worker = Worker(settings)
    await worker.start()
    async with Client("memory://batch", max_in_flight=64) as client:
        summary = await run_batch(
            client, model, source, out, in_flight=64,
            progress=lambda done, total, rate: print("progress", done, total, flush=True),
        )
    print("summary", summary.rows, summary.skipped_rows, summary.total_rows, flush=True)
    await worker.stop()

asyncio.run(main())
"""


async def batch_process(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUNNER, *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.timeout(240)
async def test_a_million_rows_killed_half_way_and_resumed(
    model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    digits = f"{unique_model}-digits"
    x = np.random.default_rng(9).standard_normal((ROWS, 64), dtype=np.float32)
    source, out = tmp_path / "rows.npz", tmp_path / "out"
    np.savez(source, input=x)  # stored uncompressed: read memory-mapped
    args = (str(model_repo), digits, str(source), str(out))

    first = await batch_process(*args)
    assert first.stdout is not None
    while True:  # kill -9 once half the rows are answered (logs are on stdout too)
        line = (await asyncio.wait_for(first.stdout.readline(), 120)).split()
        assert line, "the run ended before half its rows"
        if line[0] == b"progress" and int(line[1]) >= ROWS // 2:
            break
    first.send_signal(signal.SIGKILL)
    await first.wait()
    saved = json.loads((out / PROGRESS).read_text())
    assert 0 < len(saved["done"]) < -(-ROWS // 64)

    second = await batch_process(*args)
    stdout, _ = await asyncio.wait_for(second.communicate(), 180)
    assert second.returncode == 0
    summary = [line.split() for line in stdout.splitlines() if line.startswith(b"summary")]
    rows, skipped, total = (int(v) for v in summary[-1][1:])
    assert total == ROWS and rows + skipped == ROWS
    assert skipped == len(saved["done"]) * 64  # exactly the chunks recorded before the kill
    done = json.loads((out / PROGRESS).read_text())["done"]
    assert done == list(range(-(-ROWS // 64)))  # every chunk, once
    labels = np.load(out / "label.npy", mmap_mode="r")
    probabilities = np.load(out / "probabilities.npy", mmap_mode="r")
    want = direct_onnx(model_repo / digits, {"input": x})
    assert_digits_answers(labels, probabilities, want)  # every row, in order
    print(f"resumed run: {rows} rows answered, {skipped} done before the kill")


async def test_failed_chunks_are_counted_by_type_and_tried_again(
    model_repo: Path, unique_model: str, tmp_path: Path
) -> None:
    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    source, out = tmp_path / "wrong.npy", tmp_path / "out"
    np.save(source, np.zeros((100, 7), np.float32))  # not the model's width
    async with running_worker(broker, model_repo), Client(broker) as client:
        summary = await run_batch(client, digits, source, out, chunk_rows=40)
        assert (summary.rows, summary.errors["InvalidArgument"], summary.complete) == (0, 3, False)
        lines = [json.loads(v) for v in (out / ERRORS).read_text().splitlines()]
        assert sorted(v["chunk"] for v in lines) == [0, 1, 2]
        again = await run_batch(client, digits, source, out, chunk_rows=40)
        assert again.errors["InvalidArgument"] == 3  # tried again, not skipped
        with pytest.raises(InvalidArgument, match="another run"):
            await run_batch(client, digits, source, out, chunk_rows=50)
        with pytest.raises(InvalidArgument, match=r"\.npy, \.npz or \.parquet"):
            await run_batch(client, digits, tmp_path / "rows.csv", tmp_path / "o2")


@pytest.mark.aws
async def test_an_input_in_s3_is_copied_once_and_run(
    model_repo: Path, unique_model: str, tmp_path: Path, s3: Any
) -> None:
    bucket, digits = f"fleet-batch-{unique_model}", f"{unique_model}-digits"
    x = np.random.default_rng(10).standard_normal((500, 64), dtype=np.float32)
    np.save(tmp_path / "rows.npy", x)
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(tmp_path / "rows.npy"), bucket, "in/rows.npy")
    broker, out = f"memory://{unique_model}", tmp_path / "out"
    async with running_worker(broker, model_repo), Client(broker) as client:
        summary = await run_batch(client, digits, f"s3://{bucket}/in/rows.npy", out)
        assert summary.complete and summary.rows == 500
        again = await run_batch(client, digits, f"s3://{bucket}/in/rows.npy", out)
        assert again.rows == 0 and again.skipped_rows == 500  # resumed: nothing left
    want = direct_onnx(model_repo / digits, {"input": x})
    assert_digits_answers(np.load(out / "label.npy"), np.load(out / "probabilities.npy"), want)
    s3.delete_object(Bucket=bucket, Key="in/rows.npy")
    s3.delete_bucket(Bucket=bucket)


@pytest.mark.parametrize("layout", ["list", "columns"])
async def test_a_parquet_input_runs_a_row_group_at_a_time_and_resumes(
    model_repo: Path, unique_model: str, tmp_path: Path, layout: str
) -> None:
    """A list column is the input of its name; numeric columns side by side
    are one input. Row groups of 300 rows against chunks of 64: slices cross
    row groups, and a resumed run skips what is done."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    broker, digits = f"memory://{unique_model}", f"{unique_model}-digits"
    x = np.random.default_rng(11).standard_normal((1000, 64), dtype=np.float32)
    if layout == "list":
        table = pa.table({"input": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 64)})
    else:
        table = pa.table({f"f{i}": x[:, i] for i in range(64)})
    source, out = tmp_path / "rows.parquet", tmp_path / "out"
    pq.write_table(table, source, row_group_size=300)
    async with running_worker(broker, model_repo), Client(broker) as client:
        summary = await run_batch(client, digits, source, out)
        assert summary.complete and summary.rows == 1000
        again = await run_batch(client, digits, source, out)
        assert (again.rows, again.skipped_rows) == (0, 1000)
    want = direct_onnx(model_repo / digits, {"input": x})
    assert_digits_answers(np.load(out / "label.npy"), np.load(out / "probabilities.npy"), want)


def test_a_parquet_input_that_cannot_be_a_tensor_is_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from producer.batch import open_inputs

    cases = {
        "text": (pa.table({"a": [1.0, 2.0], "name": ["x", "y"]}), r"'name' of type string"),
        "ragged": (pa.table({"input": [[1.0, 2.0], [3.0]]}), r"rows of lengths \[1, 2\]"),
        "nulls": (pa.table({"input": [[1.0], None]}), "empty"),
    }
    for name, (table, message) in cases.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path)
        with pytest.raises(InvalidArgument, match=message):
            inputs = open_inputs(path)
            for column in inputs.values():
                column[0:2]
    (tmp_path / "not.parquet").write_bytes(b"PAR1 but not really")
    with pytest.raises(InvalidArgument, match="not a Parquet file"):
        open_inputs(tmp_path / "not.parquet")
