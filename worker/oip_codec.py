"""The Open Inference Protocol's REST bodies (KServe v2), with the binary tensor data extension.

:func:`decode_infer` turns an ``/infer`` body into the tensors, the
parameters and the outputs asked for; :func:`encode_infer` turns a reply's
tensors into the response body. Every malformed body is an
:class:`~fleet.errors.InvalidArgument` (or a :class:`~fleet.errors.LimitExceeded`)
naming what is wrong; nothing here raises anything else.

The binary extension: a request whose JSON header is followed by raw tensor
data says how long the header is in the ``Inference-Header-Content-Length``
HTTP header; each input whose data is in the binary part carries a
``binary_data_size`` parameter and no ``data``, in the order of the inputs.
An output is answered in binary when the request asks for it with the
output's ``binary_data`` parameter, or for all outputs with the request's
``binary_data_output`` parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fleet.contract import ParamValue, Reply
from fleet.errors import InvalidArgument, LimitExceeded
from fleet.tensor import DataType, Tensor, check_bytes_elements, check_shape

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"

#: Request parameters the protocol itself uses; never handed to a model.
PROTOCOL_PARAMETERS = frozenset({"timeout", "binary_data_output", "priority"})
_UNSUPPORTED_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end", "classification")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    name: str
    binary: bool


@dataclass(frozen=True, slots=True)
class InferBody:
    """A decoded ``/infer`` request."""

    id: str | None
    inputs: tuple[Tensor, ...]
    outputs: tuple[RequestedOutput, ...] | None  # None: every output
    binary_output: bool  # for every output when ``outputs`` is None
    timeout_s: float | None  # the ``timeout`` parameter (microseconds) in seconds
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)


def decode_infer(body: bytes, header_length: str | None) -> InferBody:
    """Decode an ``/infer`` body; ``header_length`` is the binary extension's header."""
    json_part, binary = _split(body, header_length)
    try:
        doc = json.loads(json_part)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body must be a JSON object")
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise InvalidArgument("'id' must be a string")
    params = check_parameters(doc.get("parameters"), "the request")
    inputs = _inputs(doc.get("inputs"), binary)
    return InferBody(
        id=rid,
        inputs=inputs,
        outputs=_outputs(doc.get("outputs")),
        binary_output=params.get("binary_data_output") is True,
        timeout_s=timeout_seconds(params.get("timeout")),
        parameters={k: v for k, v in params.items() if k not in PROTOCOL_PARAMETERS},
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        raise InvalidArgument(f"{HEADER_LENGTH} {header_length[:40]!r} is not a number") from None
    if not 0 <= n <= len(body):
        raise InvalidArgument(f"{HEADER_LENGTH} {n} is outside the body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def check_parameters(raw: object, where: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidArgument(f"the parameters of {where} must be a JSON object")
    for key, value in raw.items():
        if not isinstance(value, bool | int | float | str):
            raise InvalidArgument(f"parameter {key!r} of {where} must be a bool, number or string")
        if key in _UNSUPPORTED_PARAMETERS:
            raise InvalidArgument(f"parameter {key!r} is not supported by this server")
    return dict(raw)


def timeout_seconds(raw: ParamValue | None) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
        raise InvalidArgument(f"the 'timeout' parameter must be positive microseconds, not {raw!r}")
    return float(raw) / 1e6


def _inputs(raw: object, binary: memoryview) -> tuple[Tensor, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidArgument("'inputs' must be a non-empty list")
    tensors: list[Tensor] = []
    offset = 0
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise InvalidArgument(f"input {i} must be a JSON object")
        name, datatype, shape = check_head(entry, f"input {i}")
        params = check_parameters(entry.get("parameters"), f"input {name!r}")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"input {name!r}: binary_data_size must be a byte count")
            if offset + size > len(binary):
                raise InvalidArgument(
                    f"input {name!r}: binary_data_size {size} runs past the binary data"
                )
            data = binary[offset : offset + size]
            offset += size
            tensors.append(binary_tensor(name, datatype, shape, data))
        else:
            tensors.append(list_tensor(name, datatype, shape, entry.get("data")))
    if offset != len(binary):
        raise InvalidArgument(f"{len(binary) - offset} bytes of binary data belong to no input")
    return tuple(tensors)


def check_head(entry: Mapping[str, Any], where: str) -> tuple[str, DataType, tuple[int, ...]]:
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"{where} needs a 'name'")
    dt = entry.get("datatype")
    try:
        datatype = DataType[dt] if isinstance(dt, str) else None
    except KeyError:
        datatype = None
    if datatype is None:
        known = ", ".join(d.name for d in DataType)
        raise InvalidArgument(f"input {name!r}: datatype {dt!r} is not one of {known}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in shape
    ):
        raise InvalidArgument(f"input {name!r}: 'shape' must be a list of integers")
    check_shape(name, tuple(shape))
    return name, datatype, tuple(shape)


def binary_tensor(
    name: str, datatype: DataType, shape: tuple[int, ...], data: memoryview
) -> Tensor:
    count = check_shape(name, shape)
    if datatype is DataType.BYTES:
        check_bytes_elements(name, data, count)
    elif len(data) != count * datatype.itemsize:
        raise InvalidArgument(
            f"input {name!r}: {len(data)} bytes of binary data, shape {list(shape)} of "
            f"{datatype.name} needs {count * datatype.itemsize}"
        )
    return Tensor(name=name, datatype=datatype, shape=shape, data=data)


def list_tensor(name: str, datatype: DataType, shape: tuple[int, ...], data: object) -> Tensor:
    if not isinstance(data, list):
        raise InvalidArgument(f"input {name!r} needs 'data' (a list) or binary_data_size")
    count = check_shape(name, shape)
    try:
        if datatype is DataType.BYTES:
            flat = np.empty(0, dtype=object) if count == 0 else np.array(data, dtype=object)
            flat = flat.reshape(-1)
            if not all(isinstance(x, str) for x in flat):
                raise InvalidArgument(f"input {name!r}: BYTES data must be strings")
        else:
            flat = np.array(data, dtype=datatype.numpy).reshape(-1)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"input {name!r}: data is not {datatype.name}: {exc}") from None
    if flat.size != count:
        raise InvalidArgument(
            f"input {name!r}: {flat.size} elements of data, shape {list(shape)} needs {count}"
        )
    tensor = Tensor.from_numpy(name, flat.reshape(shape))
    return tensor


def _outputs(raw: object) -> tuple[RequestedOutput, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise InvalidArgument("'outputs' must be a list")
    out: list[RequestedOutput] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise InvalidArgument(f"output {i} must be an object with a 'name'")
        params = check_parameters(entry.get("parameters"), f"output {entry['name']!r}")
        out.append(RequestedOutput(entry["name"], params.get("binary_data") is True))
    return tuple(out)


def encode_infer(body: InferBody, reply: Reply) -> tuple[bytes, dict[str, str]]:
    """The response body of an answered request, and its HTTP headers."""
    by_name = {t.name: t for t in reply.outputs}
    if body.outputs is None:
        wanted = [RequestedOutput(t.name, body.binary_output) for t in reply.outputs]
    else:
        wanted = list(body.outputs)
    outputs: list[dict[str, Any]] = []
    binary: list[bytes] = []
    for want in wanted:
        tensor = by_name.get(want.name)
        if tensor is None:
            raise InvalidArgument(f"unknown output {want.name!r}; the outputs are {list(by_name)}")
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype.name,
            "shape": list(tensor.shape),
        }
        if want.binary:
            raw = bytes(tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            binary.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": reply.model,
        "model_version": reply.version,
        "outputs": outputs,
    }
    if body.id is not None:
        doc["id"] = body.id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": JSON_TYPE}
    headers = {"Content-Type": BINARY_TYPE, HEADER_LENGTH: str(len(header))}
    return b"".join([header, *binary]), headers


def check_outputs(body: InferBody, names: Sequence[str]) -> None:
    """:class:`InvalidArgument` when the request asks for an output the model lacks."""
    for want in body.outputs or ():
        if want.name not in names:
            raise InvalidArgument(
                f"unknown output {want.name!r}; the model's outputs are {list(names)}"
            )


def _json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.to_numpy().reshape(-1)
    if tensor.datatype is DataType.BYTES:
        return [bytes(x).decode("utf-8", errors="replace") for x in flat]
    return list(flat.tolist())


def error_body(message: str) -> bytes:
    """The protocol's error body: ``{"error": message}``."""
    return json.dumps({"error": message}).encode()


class BodyTooLarge(LimitExceeded):
    """A request body over the worker's limit (HTTP 413)."""


def oversize(size: int, limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"the request body of {size} bytes is over the limit of {limit} bytes")


__all__ = [
    "BINARY_TYPE",
    "HEADER_LENGTH",
    "JSON_TYPE",
    "PROTOCOL_PARAMETERS",
    "BodyTooLarge",
    "InferBody",
    "RequestedOutput",
    "binary_tensor",
    "check_head",
    "check_outputs",
    "check_parameters",
    "decode_infer",
    "encode_infer",
    "error_body",
    "list_tensor",
    "oversize",
    "timeout_seconds",
]
