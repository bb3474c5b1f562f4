"""Offline batch runs: a large input file streamed through the fleet, resumable.

::

    summary = await run_batch(client, "digits", "data.npz", "out/", chunk_rows=64)

The input is ``.npy`` (one array; its name is the model input's, ``--input-name``),
``.npz`` (one array per model input, all with the same number of rows) or
``.parquet`` (each list column an input of its name, ``[n, k]``; the numeric
scalar columns side by side one input named ``--input-name``; needs
the ``parquet`` extra), a local file or ``s3://bucket/key`` (copied into the output
directory once). Arrays stored uncompressed are memory-mapped and Parquet is
read a row group at a time, so memory stays bounded whatever the file's
size; a compressed ``.npz`` member is read whole. Rows go in
chunks of ``chunk_rows`` (at most the model's max batch size), ``in_flight``
chunks at a time, at ``batch`` priority.

The output directory gets one ``.npy`` per model output, written in place as
replies come (memory-mapped), so row ``i`` of every output answers row ``i``
of the input; ``progress.json`` records the chunks done, saved (after the
outputs are flushed) every second and at the end. A run started again on the
same output directory skips the chunks done: an interrupted run resumes, and
no row is answered twice in the output. A chunk that gets a typed error is
not marked done (a later run tries it again); the errors are counted by type
in the summary and listed in ``errors.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fleet.contract import Priority
from fleet.errors import FleetError, InvalidArgument
from producer.client import Client

PROGRESS = "progress.json"
ERRORS = "errors.jsonl"


@dataclass
class BatchSummary:
    """What a run did: rows answered now, rows done before (resumed), errors."""

    rows: int = 0
    total_rows: int = 0
    skipped_rows: int = 0
    seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    @property
    def complete(self) -> bool:
        return not self.errors and self.rows + self.skipped_rows == self.total_rows


def _npz_member(path: Path, info: zipfile.ZipInfo) -> npt.NDArray[Any] | None:
    """An uncompressed ``.npz`` member memory-mapped in place (``None``: a
    format version this reader leaves to :func:`numpy.load`)."""
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    order: Literal["C", "F"] = "F" if fortran else "C"
    array: npt.NDArray[Any] = np.memmap(
        path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order
    )
    return array


Inputs = dict[str, "npt.NDArray[Any] | ParquetColumn"]


def open_inputs(path: Path, input_name: str = "input") -> Inputs:
    """The input arrays by name, memory-mapped where they can be."""
    if path.suffix == ".npy":
        return {input_name: np.load(path, mmap_mode="r")}
    if path.suffix == ".parquet":
        return open_parquet(path, input_name)
    if path.suffix != ".npz":
        raise InvalidArgument(f"{path}: the input must be .npy, .npz or .parquet")
    arrays: Inputs = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename.removesuffix(".npy")
            mapped = _npz_member(path, info) if info.compress_type == zipfile.ZIP_STORED else None
            if mapped is not None:
                arrays[name] = mapped
            else:
                with archive.open(info) as member:
                    arrays[name] = np.lib.format.read_array(member)
    if not arrays:
        raise InvalidArgument(f"{path}: no arrays")
    rows = {a.shape[0] if a.ndim else -1 for a in arrays.values()}
    if len(rows) != 1 or -1 in rows:
        raise InvalidArgument(f"{path}: every array needs the same number of rows, got {rows}")
    return arrays


class ParquetColumn:
    """One model input read from a Parquet file as rows are asked for: a list
    column as ``[n, k]`` rows, or the numeric scalar columns side by side.
    Only the row groups a slice touches are read, and the last two are kept,
    so a run reads each once in order and memory stays at about two row
    groups."""

    def __init__(self, path: Path, columns: list[str], *, stacked: bool) -> None:
        import pyarrow.parquet as pq

        self._file = pq.ParquetFile(path)
        self._columns, self._stacked = columns, stacked
        meta = self._file.metadata
        self._starts = np.cumsum(
            [0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        )
        self._cache: dict[int, npt.NDArray[Any]] = {}
        first = self._group(0) if meta.num_row_groups else np.zeros((0, len(columns)))
        self.shape: tuple[int, ...] = (int(self._starts[-1]), *first.shape[1:])
        self.dtype = first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _group(self, index: int) -> npt.NDArray[Any]:
        if index not in self._cache:
            table = self._file.read_row_group(index, columns=self._columns)
            if self._stacked:
                cols = [table.column(c).to_numpy() for c in self._columns]
                array = np.stack(cols, axis=1) if cols else np.zeros((table.num_rows, 0))
            else:
                array = _list_rows(table.column(self._columns[0]), self._columns[0])
            while len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[index] = array
        return self._cache[index]

    def __getitem__(self, rows: slice) -> npt.NDArray[Any]:
        start, stop, _ = rows.indices(self.shape[0])
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        index = first
        while index < len(self._starts) - 1 and self._starts[index] < stop:
            base = int(self._starts[index])
            group = self._group(index)
            parts.append(group[max(0, start - base) : stop - base])
            index += 1
        if not parts:
            return np.zeros((0, *self.shape[1:]), self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _list_rows(column: Any, name: str) -> npt.NDArray[Any]:
    """A Parquet list column as ``[n, k]``: every row needs the same length."""
    import pyarrow as pa

    flat = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if flat.null_count:
        raise InvalidArgument(f"column {name!r} has empty (null) rows")
    values = flat.flatten().to_numpy(zero_copy_only=False)
    lengths = set(flat.value_lengths().to_numpy(zero_copy_only=False).tolist())
    if len(lengths) > 1:
        raise InvalidArgument(f"column {name!r}: rows of lengths {sorted(lengths)[:5]}; need one")
    width = lengths.pop() if lengths else 0
    rows: npt.NDArray[Any] = values.reshape(len(flat), width)
    return rows


def open_parquet(path: Path, input_name: str = "input") -> Inputs:
    """The model inputs of a Parquet file: each list column is an input of its
    name, ``[n, k]``; the numeric scalar columns, in the file's order, are
    one input named ``input_name``, ``[n, columns]``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InvalidArgument(
            f"{path}: reading Parquet needs pyarrow (pip install 'inference-fleet[parquet]')"
        ) from None
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise InvalidArgument(f"{path}: not a Parquet file: {exc}") from None
    lists, scalars = [], []
    for f in schema:
        if (
            pa.types.is_list(f.type)
            or pa.types.is_fixed_size_list(f.type)
            or pa.types.is_large_list(f.type)
        ):
            lists.append(f.name)
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            scalars.append(f.name)
        else:
            raise InvalidArgument(
                f"{path}: column {f.name!r} of type {f.type} is neither numbers nor lists"
            )
    inputs: Inputs = {name: ParquetColumn(path, [name], stacked=False) for name in lists}
    if scalars:
        if input_name in inputs:
            raise InvalidArgument(f"{path}: a list column is named {input_name!r} too")
        inputs[input_name] = ParquetColumn(path, scalars, stacked=True)
    if not inputs:
        raise InvalidArgument(f"{path}: no columns")
    return inputs


class _Output:
    """The output arrays (``.npy``, memory-mapped) and the chunks done."""

    def __init__(self, directory: Path, total_rows: int, chunk_rows: int, source: str) -> None:
        self.dir = directory
        self.total_rows, self.chunk_rows = total_rows, chunk_rows
        self.chunks = -(-total_rows // chunk_rows)
        self.arrays: dict[str, np.memmap[Any, Any]] = {}
        self.done: set[int] = set()
        self.saved_at = time.monotonic()
        self.key = {"source": source, "rows": total_rows, "chunk_rows": chunk_rows}
        progress = directory / PROGRESS
        if progress.exists():
            saved = json.loads(progress.read_text(encoding="utf-8"))
            if saved.get("key") != self.key:
                raise InvalidArgument(
                    f"{directory} holds another run's output ({saved.get('key')}); "
                    "use an empty directory"
                )
            self.done = set(saved["done"])
            for name in saved["outputs"]:
                self.arrays[name] = np.load(directory / f"{name}.npy", mmap_mode="r+")

    def write(self, chunk: int, outputs: dict[str, npt.NDArray[Any]]) -> None:
        start = chunk * self.chunk_rows
        for name, value in outputs.items():
            array = self.arrays.get(name)
            if array is None:
                shape = (self.total_rows, *value.shape[1:])
                array = np.lib.format.open_memmap(
                    self.dir / f"{name}.npy", mode="w+", dtype=value.dtype, shape=shape
                )
                self.arrays[name] = array
            array[start : start + len(value)] = value
        self.done.add(chunk)

    def save(self, every: float = 0.0) -> None:
        """Flush the outputs, then record what is done (so a record never
        names rows that are not on disk); with ``every``, only when that many
        seconds passed since the last save."""
        now = time.monotonic()
        if now - self.saved_at < every:
            return
        self.saved_at = now
        for array in self.arrays.values():
            array.flush()
        state = {"key": self.key, "outputs": sorted(self.arrays), "done": sorted(self.done)}
        tmp = self.dir / f".{PROGRESS}.tmp"
        tmp.write_text(json.dumps(state), encoding="utf-8")
        os.replace(tmp, self.dir / PROGRESS)


async def run_batch(
    client: Client,
    model: str,
    input_path: str | Path,
    output_dir: str | Path,
    *,
    input_name: str = "input",
    chunk_rows: int = 64,
    in_flight: int = 32,
    timeout: float = 60.0,
    progress: Callable[[int, int, float], None] | None = None,
) -> BatchSummary:
    """Run ``model`` over every row of ``input_path`` into ``output_dir`` (see
    the module's docstring); ``progress(done_rows, total_rows, rows_per_s)``
    is called as chunks finish."""
    if chunk_rows < 1 or in_flight < 1:
        raise InvalidArgument("chunk_rows and in_flight must be at least 1")
    inputs, out = await asyncio.to_thread(
        _prepare, str(input_path), Path(output_dir), input_name, chunk_rows
    )
    out_dir, total = out.dir, out.total_rows
    summary = BatchSummary(total_rows=total)
    summary.skipped_rows = sum(min(chunk_rows, total - c * chunk_rows) for c in out.done)
    started = time.monotonic()
    gate = asyncio.Semaphore(in_flight)

    async def one(chunk: int) -> None:
        rows = slice(chunk * chunk_rows, min(total, (chunk + 1) * chunk_rows))
        feeds = {name: np.ascontiguousarray(a[rows]) for name, a in inputs.items()}
        try:
            outputs = await client.infer(model, feeds, timeout=timeout, priority=Priority.BATCH)
        except FleetError as exc:
            summary.errors[type(exc).__name__] += 1
            _record_error(out_dir, chunk, exc)
            return
        finally:
            gate.release()
        out.write(chunk, outputs)
        summary.rows += rows.stop - rows.start
        now = time.monotonic()
        out.save(every=1.0)
        if progress is not None:
            done = summary.rows + summary.skipped_rows
            progress(done, total, summary.rows / max(now - started, 1e-9))

    tasks: set[asyncio.Task[None]] = set()
    try:
        for chunk in _todo(out):
            await gate.acquire()
            task = asyncio.create_task(one(chunk))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.save()
        summary.seconds = time.monotonic() - started
    return summary


def _prepare(
    source: str, out_dir: Path, input_name: str, chunk_rows: int
) -> tuple[Inputs, _Output]:
    out_dir.mkdir(parents=True, exist_ok=True)
    if source.startswith("s3://"):
        local = _download(source, out_dir)
    else:
        local = Path(source)
        source = str(local.resolve())
    inputs = open_inputs(local, input_name)
    total = len(next(iter(inputs.values())))
    return inputs, _Output(out_dir, total, chunk_rows, source)


def _download(url: str, out_dir: Path) -> Path:
    """``s3://bucket/key.npz`` copied (streamed, not held in memory) into
    ``out_dir`` once; a run started again uses the copy."""
    import boto3

    from fleet.aws import client_config

    bucket, _, key = url.removeprefix("s3://").partition("/")
    suffix = Path(key).suffix
    if not bucket or suffix not in (".npy", ".npz", ".parquet"):
        raise InvalidArgument(f"{url}: the input must be s3://bucket/key.npy, .npz or .parquet")
    local = out_dir / f"input{suffix}"
    if not local.exists():
        part = out_dir / f".input{suffix}.part"
        boto3.client("s3", config=client_config()).download_file(bucket, key, str(part))
        os.replace(part, local)
    return local


def _record_error(out_dir: Path, chunk: int, exc: FleetError) -> None:
    line = {"chunk": chunk, "error": type(exc).__name__, "message": exc.message}
    with (out_dir / ERRORS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def _todo(out: _Output) -> Iterator[int]:
    return (c for c in range(out.chunks) if c not in out.done)


__all__ = ["BatchSummary", "open_inputs", "run_batch"]
