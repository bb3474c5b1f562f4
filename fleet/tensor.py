"""Named tensors in the Open Inference Protocol's datatypes (KServe v2).

A :class:`Tensor` holds raw little-endian bytes, a shape and a datatype. It
converts to and from numpy without copying where numpy allows. ``BYTES``
tensors hold variable-length elements, each a 4-byte little-endian length
followed by its bytes, as in KServe's binary extension.
"""

from __future__ import annotations

import enum
import itertools
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fleet.errors import InvalidArgument
from fleet.fastinit import positional


class DataType(enum.IntEnum):
    """Tensor element types. The values are part of the wire format."""

    BOOL = 1
    UINT8 = 2
    UINT16 = 3
    UINT32 = 4
    UINT64 = 5
    INT8 = 6
    INT16 = 7
    INT32 = 8
    INT64 = 9
    FP16 = 10
    FP32 = 11
    FP64 = 12
    BYTES = 13

    @property
    def itemsize(self) -> int:
        """Bytes per element; 0 for ``BYTES`` (variable length)."""
        return 0 if self is DataType.BYTES else _NUMPY[self].itemsize

    @property
    def numpy(self) -> np.dtype[Any]:
        return _NUMPY[self]

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DataType:
        known = _BY_DTYPE.get(dtype)
        if known is not None:
            return known
        if dtype.kind in ("O", "S", "U"):
            return cls.BYTES
        try:
            found = _FROM_NUMPY[np.dtype(dtype).newbyteorder("<").str]
        except KeyError:
            raise InvalidArgument(f"numpy dtype {dtype} has no inference datatype") from None
        if len(_BY_DTYPE) < 64:  # the few dtypes seen: each numeric one in either byte order
            _BY_DTYPE[dtype] = found
        return found

    @classmethod
    def from_onnx(cls, onnx_type: str) -> DataType:
        """Map an ONNX Runtime type string such as ``tensor(float)``."""
        try:
            return _FROM_ONNX[onnx_type]
        except KeyError:
            raise InvalidArgument(f"ONNX type {onnx_type} is not supported") from None


_NUMPY: dict[DataType, np.dtype[Any]] = {
    DataType.BOOL: np.dtype("?"),
    DataType.UINT8: np.dtype("<u1"),
    DataType.UINT16: np.dtype("<u2"),
    DataType.UINT32: np.dtype("<u4"),
    DataType.UINT64: np.dtype("<u8"),
    DataType.INT8: np.dtype("<i1"),
    DataType.INT16: np.dtype("<i2"),
    DataType.INT32: np.dtype("<i4"),
    DataType.INT64: np.dtype("<i8"),
    DataType.FP16: np.dtype("<f2"),
    DataType.FP32: np.dtype("<f4"),
    DataType.FP64: np.dtype("<f8"),
    DataType.BYTES: np.dtype("O"),
}
_FROM_NUMPY = {dt.str: t for t, dt in _NUMPY.items() if t is not DataType.BYTES}
_BY_DTYPE: dict[np.dtype[Any], DataType] = {}  # dtypes mapped before, as given
_FROM_ONNX = {
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
    "tensor(uint16)": DataType.UINT16,
    "tensor(uint32)": DataType.UINT32,
    "tensor(uint64)": DataType.UINT64,
    "tensor(int8)": DataType.INT8,
    "tensor(int16)": DataType.INT16,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(float16)": DataType.FP16,
    "tensor(float)": DataType.FP32,
    "tensor(double)": DataType.FP64,
    "tensor(string)": DataType.BYTES,
}
_LEN = struct.Struct("<I")


@dataclass(frozen=True, kw_only=True, slots=True)
class Tensor:
    """A named tensor: datatype, shape and raw little-endian data."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]
    data: bytes | memoryview

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)

    @classmethod
    def from_numpy(cls, name: str, array: npt.ArrayLike) -> Tensor:
        arr = np.asarray(array)
        datatype = DataType.from_numpy(arr.dtype)
        if datatype is DataType.BYTES:
            parts: list[bytes] = []
            for item in arr.reshape(-1):
                raw = _element_bytes(name, item)
                parts.append(_LEN.pack(len(raw)))
                parts.append(raw)
            return cls(name=name, datatype=datatype, shape=arr.shape, data=b"".join(parts))
        return _numeric(name, datatype, np.ascontiguousarray(arr, dtype=datatype.numpy))

    def to_numpy(self) -> npt.NDArray[Any]:
        """A numpy view of the data (read-only when the data is ``bytes``).

        Raises only :class:`InvalidArgument`: the shape, the element count and
        (for ``BYTES``) every element length are checked against the data
        before anything is allocated, so nothing larger than the data is made.
        """
        count = check_shape(self.name, self.shape)
        try:
            if self.datatype is DataType.BYTES:
                return _split_bytes(self.name, self.data, count).reshape(self.shape)
            dtype = _NUMPY[self.datatype]
            expected = count * dtype.itemsize
            if len(self.data) != expected:
                raise InvalidArgument(
                    f"tensor {self.name!r}: {len(self.data)} bytes of data, "
                    f"shape {list(self.shape)} of {self.datatype.name} needs {expected}"
                )
            return np.ndarray(self.shape, dtype, self.data)  # a view: one call, not two
        except (ValueError, TypeError, OverflowError, MemoryError, struct.error) as exc:
            raise InvalidArgument(f"tensor {self.name!r}: {exc}") from None


def split_rows(name: str, array: npt.ArrayLike, counts: list[int]) -> list[Tensor]:
    """``array`` cut along its first axis into tensors of ``counts`` rows
    each, in order: what :meth:`Tensor.from_numpy` makes of each slice, with
    the datatype found and the array made contiguous once, not per slice."""
    arr = np.asarray(array)
    datatype = DataType.from_numpy(arr.dtype)
    # each piece's first row; one more (where the last ends) is left unread
    parts = list(zip(itertools.accumulate(counts, initial=0), counts, strict=False))
    if datatype is DataType.BYTES:
        return [Tensor.from_numpy(name, arr[s : s + n]) for s, n in parts]
    arr = np.ascontiguousarray(arr, dtype=datatype.numpy)  # its rows' slices: contiguous too
    return [_numeric(name, datatype, arr[s : s + n]) for s, n in parts]


make_tensor: Callable[[str, DataType, tuple[int, ...], bytes | memoryview], Tensor] = positional(
    Tensor
)
"""``make_tensor(name, datatype, shape, data)``: a :class:`Tensor` of fields
already checked, made faster than through its ``__init__``."""


def _numeric(name: str, datatype: DataType, arr: npt.NDArray[Any]) -> Tensor:
    """A tensor over the bytes of ``arr``: C-contiguous, of ``datatype``'s dtype."""
    data = arr.data.cast("B") if arr.size else b""
    return make_tensor(name, datatype, arr.shape, data)


_U64_END = 1 << 64


def check_shape(name: str, shape: tuple[int, ...]) -> int:
    """The element count of ``shape``; :class:`InvalidArgument` unless every
    dimension is a non-negative integer that fits the wire's u64."""
    plain = True  # every dimension a Python int (not a bool): the common case
    for dim in shape:
        if type(dim) is not int:
            plain = False
            if not isinstance(dim, int | np.integer):
                break
        if not 0 <= dim < _U64_END:
            break
    else:
        return math.prod(shape) if plain else math.prod(int(d) for d in shape)
    raise InvalidArgument(f"tensor {name!r}: dimension {dim!r} in shape {list(shape)}")


def check_bytes_elements(name: str, data: bytes | memoryview, count: int) -> None:
    """:class:`InvalidArgument` unless ``data`` is exactly ``count`` BYTES
    elements (each a u32 length and that many bytes). Allocates nothing."""
    view = memoryview(data)
    if count * 4 > len(view):
        raise InvalidArgument(
            f"BYTES tensor {name!r}: {len(view)} bytes cannot hold {count} elements"
        )
    pos = 0
    for i in range(count):
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4 + size
        if pos > len(view) or (i + 1 < count and pos + 4 > len(view)):
            raise InvalidArgument(f"BYTES tensor {name!r}: element {i} runs past the end")
    if pos != len(view):
        raise InvalidArgument(f"BYTES tensor {name!r} has {len(view) - pos} trailing bytes")


def _split_bytes(name: str, data: bytes | memoryview, count: int) -> npt.NDArray[Any]:
    check_bytes_elements(name, data, count)
    view = memoryview(data)
    out = np.empty(count, dtype=object)
    pos = 0
    for i in range(count):
        (size,) = _LEN.unpack_from(view, pos)
        out[i] = bytes(view[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out


def _element_bytes(name: str, item: object) -> bytes:
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise InvalidArgument(
        f"tensor {name!r}: a BYTES tensor holds bytes or str, not {type(item).__name__}"
    )


__all__ = [
    "DataType",
    "Tensor",
    "check_bytes_elements",
    "check_shape",
    "make_tensor",
    "split_rows",
]
