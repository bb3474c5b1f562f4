"""The OIP REST bodies: JSON and binary tensors both ways, and every malformed body refused."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from fleet.contract import Reply
from fleet.errors import InvalidArgument
from fleet.tensor import DataType, Tensor
from worker.oip_codec import (
    HEADER_LENGTH,
    BodyTooLarge,
    RequestedOutput,
    decode_infer,
    encode_infer,
    oversize,
)

pytestmark = pytest.mark.unit


def _doc(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _split(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    n = int(headers.get(HEADER_LENGTH, len(body)))
    return json.loads(body[:n]), body[n:]


def test_json_inputs_nested_or_flat_and_the_protocol_parameters() -> None:
    body = decode_infer(
        _doc(
            id="a",
            inputs=[
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]},
                {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["hé", ""]},
                {"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
            ],
            parameters={"timeout": 250_000, "binary_data_output": True, "scale": 2},
        ),
        None,
    )
    assert body.id == "a" and body.timeout_s == 0.25 and body.binary_output
    assert body.parameters == {"scale": 2}  # the protocol's own are not the model's
    x, s, b = (t.to_numpy() for t in body.inputs)
    np.testing.assert_array_equal(x, np.array([[1, 2], [3, 4]], np.float32))
    assert s.tolist() == ["hé".encode(), b""]
    assert b.dtype == np.bool_ and b.tolist() == [[True, False]]


def test_binary_inputs_follow_the_json_header_in_order() -> None:
    a = np.arange(6, dtype=np.int64).reshape(3, 2)
    strings = Tensor.from_numpy("s", np.array([b"ab", b"c"], dtype=object))
    header = _doc(
        inputs=[
            {
                "name": "a",
                "datatype": "INT64",
                "shape": [3, 2],
                "parameters": {"binary_data_size": 48},
            },
            {
                "name": "s",
                "datatype": "BYTES",
                "shape": [2],
                "parameters": {"binary_data_size": len(strings.data)},
            },
        ]
    )
    body = decode_infer(header + a.tobytes() + bytes(strings.data), str(len(header)))
    np.testing.assert_array_equal(body.inputs[0].to_numpy(), a)
    assert body.inputs[1].to_numpy().tolist() == [b"ab", b"c"]
    assert body.outputs is None and not body.binary_output and body.timeout_s is None


def _reply() -> Reply:
    return Reply(
        id="internal",
        model="m",
        version="1",
        outputs=(
            Tensor.from_numpy("y", np.array([[0.5, 1.5]], np.float32)),
            Tensor.from_numpy("label", np.array([b"cat"], dtype=object)),
        ),
    )


def test_outputs_in_json_or_binary_as_asked_in_the_order_asked() -> None:
    body = decode_infer(
        _doc(
            id="r",
            inputs=[{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}],
            outputs=[{"name": "label"}, {"name": "y", "parameters": {"binary_data": True}}],
        ),
        None,
    )
    assert body.outputs == (RequestedOutput("label", False), RequestedOutput("y", True))
    data, headers = encode_infer(body, _reply())
    doc, binary = _split(data, headers)
    assert headers["Content-Type"] == "application/octet-stream"
    assert doc["id"] == "r" and doc["model_name"] == "m" and doc["model_version"] == "1"
    label, y = doc["outputs"]
    assert label == {"name": "label", "datatype": "BYTES", "shape": [1], "data": ["cat"]}
    assert y["parameters"] == {"binary_data_size": 8} and "data" not in y
    np.testing.assert_array_equal(np.frombuffer(binary, np.float32), [0.5, 1.5])


def test_every_output_in_binary_or_json_when_none_are_named() -> None:
    inputs = [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]
    for binary in (True, False):
        body = decode_infer(_doc(inputs=inputs, parameters={"binary_data_output": binary}), None)
        data, headers = encode_infer(body, _reply())
        doc, rest = _split(data, headers)
        assert "id" not in doc and [o["name"] for o in doc["outputs"]] == ["y", "label"]
        if binary:
            assert len(rest) == 8 + 4 + 3  # two floats; one BYTES element: length, "cat"
        else:
            assert headers == {"Content-Type": "application/json"}
            assert doc["outputs"][0]["data"] == [0.5, 1.5]
    named = decode_infer(_doc(inputs=inputs, outputs=[{"name": "nope"}]), None)
    with pytest.raises(InvalidArgument, match="nope"):
        encode_infer(named, _reply())


X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}


@pytest.mark.parametrize(
    ("body", "header_length", "says"),
    [
        (b"{", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1]", None, "JSON object"),
        (_doc(inputs={}), None, "non-empty list"),
        (_doc(id=5, inputs=[X]), None, "'id'"),
        (_doc(inputs=[{**X, "datatype": "FLOAT"}]), None, "datatype"),
        (_doc(inputs=[{**X, "shape": [1, "2"]}]), None, "shape"),
        (_doc(inputs=[{**X, "shape": [1, -2]}]), None, "dimension"),
        (_doc(inputs=[{**X, "data": [1, 2, 3]}]), None, "3 elements"),
        (_doc(inputs=[{**X, "data": [[1], [2, 3]]}]), None, "not FP32"),
        (_doc(inputs=[{**X, "data": None}]), None, "'data'"),
        (_doc(inputs=[{**X, "datatype": "BYTES", "data": [1, 2]}]), None, "strings"),
        (_doc(inputs=[X], parameters={"timeout": 0}), None, "timeout"),
        (_doc(inputs=[X], parameters={"timeout": True}), None, "timeout"),
        (_doc(inputs=[X], parameters={"sequence_id": 1}), None, "not supported"),
        (_doc(inputs=[X], parameters={"a": [1]}), None, "bool, number or string"),
        (_doc(inputs=[X], parameters=[]), None, "JSON object"),
        (_doc(inputs=[X], outputs=[{"nom": "y"}]), None, "'name'"),
        (_doc(inputs=[X]), "many", "not a number"),
        (_doc(inputs=[X]), "99999", "outside the body"),
        (_doc(inputs=[X]) + b"\0", str(len(_doc(inputs=[X]))), "belong to no input"),
    ],
)
def test_malformed_bodies_are_invalid_arguments_naming_the_fault(
    body: bytes, header_length: str | None, says: str
) -> None:
    with pytest.raises(InvalidArgument, match=says):
        decode_infer(body, header_length)


@pytest.mark.parametrize(
    ("datatype", "shape", "size", "extra", "says"),
    [
        ("FP32", [1, 2], 8, b"", "runs past"),
        ("FP32", [1, 2], 4, b"\0" * 4, "needs 8"),
        ("BYTES", [1], 6, b"\x09\0\0\0ab", "runs past the end"),
        ("FP32", [1, 2], -1, b"", "byte count"),
    ],
)
def test_malformed_binary_data_is_refused(
    datatype: str, shape: list[int], size: int, extra: bytes, says: str
) -> None:
    header = _doc(
        inputs=[
            {
                "name": "x",
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": size},
            }
        ]
    )
    with pytest.raises(InvalidArgument, match=says):
        decode_infer(header + extra, str(len(header)))


def test_an_oversize_body_is_its_own_error() -> None:
    exc = oversize(10, 4)
    assert isinstance(exc, BodyTooLarge) and isinstance(exc, InvalidArgument)
    assert "10 bytes" in exc.message and "4 bytes" in exc.message


def test_datatypes_are_the_protocols_names() -> None:
    assert [d.name for d in DataType] == [
        "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
        "FP16", "FP32", "FP64", "BYTES",
    ]  # fmt: skip
