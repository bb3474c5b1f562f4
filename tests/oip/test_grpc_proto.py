"""The gRPC messages: generated code current, the protocol's fields, the codec's checks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2 as triton

from fleet.contract import Reply
from fleet.errors import InvalidArgument
from fleet.tensor import Tensor
from worker.oip_grpc import decode_inputs, encode_reply
from worker.oip_proto import oip_v2_pb2 as pb

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("oip_v2_pb2.py", "oip_v2_pb2.pyi")


def test_the_generated_modules_are_current(tmp_path: Path) -> None:
    """scripts/gen-proto.sh, run now, writes exactly the committed modules."""
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen-proto.sh"), str(tmp_path)],
        check=True,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    for name in GENERATED:
        fresh = (tmp_path / "worker" / "oip_proto" / name).read_text()
        committed = (ROOT / "worker" / "oip_proto" / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-proto.sh"


def _fields(d: Descriptor) -> dict[str, tuple[int, int, bool, str]]:
    return {
        f.name: (
            f.number,
            f.type,
            f.is_repeated,
            f.message_type.name if f.message_type is not None else "",
        )
        for f in d.fields
    }


def _messages(d: Descriptor, prefix: str = "") -> dict[str, Descriptor]:
    out = {prefix + d.name: d}
    for nested in d.nested_types:
        out.update(_messages(nested, prefix + d.name + "."))
    return out


def test_every_message_is_the_protocols_on_the_wire() -> None:
    """Each message and field has the name, number and type of Triton's copy
    of the protocol (a superset of KServe's), so the bytes are the same."""
    ours: dict[str, Descriptor] = {}
    for d in pb.DESCRIPTOR.message_types_by_name.values():
        ours.update(_messages(d))
    theirs: dict[str, Descriptor] = {}
    for d in triton.DESCRIPTOR.message_types_by_name.values():
        theirs.update(_messages(d))
    assert len(ours) >= 20
    for name, d in ours.items():
        assert name in theirs, name
        mine, other = _fields(d), _fields(theirs[name])
        for field, spec in mine.items():
            assert other.get(field) == spec, f"{name}.{field}"
    methods = {m.name for m in triton.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert triton.DESCRIPTOR.package == "inference"
    assert {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
    } <= methods


def _request(**tensor: object) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(**tensor)  # type: ignore[arg-type]
    return req


def test_raw_and_typed_inputs_decode_alike() -> None:
    x = np.arange(6, dtype=np.int64).reshape(2, 3)
    raw = _request(name="x", datatype="INT64", shape=[2, 3])
    raw.raw_input_contents.append(x.tobytes())
    typed = _request(name="x", datatype="INT64", shape=[2, 3])
    typed.inputs[0].contents.int64_contents.extend(x.reshape(-1).tolist())
    for req in (raw, typed):
        (tensor,) = decode_inputs(req)
        np.testing.assert_array_equal(tensor.to_numpy(), x)
    words = _request(name="s", datatype="BYTES", shape=[2])
    words.inputs[0].contents.bytes_contents.extend([b"ab", b""])
    (tensor,) = decode_inputs(words)
    assert [bytes(v) for v in tensor.to_numpy()] == [b"ab", b""]


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: pb.ModelInferRequest(model_name="m"), "must not be empty"),
        (lambda: _raw(2, shape=[1]), "2 entries for 1 inputs"),
        (lambda: _raw(1, shape=[3]), "bytes of binary data"),
        (lambda: _raw(1, shape=[-1]), "shape"),
        (lambda: _request(name="x", datatype="FP99", shape=[1]), "datatype"),
        (lambda: _request(name="x", datatype="FP16", shape=[1]), "raw_input_contents"),
        (lambda: _request(name="x", datatype="FP32", shape=[2]), "elements"),
        (lambda: _request(name="", datatype="FP32", shape=[1]), "name"),
        (lambda: _both(), "contents and raw_input_contents"),
        (lambda: _request(name="s", datatype="BYTES", shape=[3]), "elements"),
    ],
)
def test_malformed_requests_are_invalid_arguments(build: object, words: str) -> None:
    assert callable(build)
    with pytest.raises(InvalidArgument, match=words):
        decode_inputs(build())


def _raw(entries: int, *, shape: list[int]) -> pb.ModelInferRequest:
    req = _request(name="x", datatype="FP32", shape=shape)
    for _ in range(entries):
        req.raw_input_contents.append(np.zeros(1, dtype="<f4").tobytes())
    return req


def _both() -> pb.ModelInferRequest:
    req = _raw(1, shape=[1])
    req.inputs[0].contents.fp32_contents.append(1.0)
    return req


def test_the_reply_carries_the_outputs_asked_for_raw() -> None:
    y = np.array([[1.5, -2.0]], dtype=np.float32)
    label = np.array([7], dtype=np.int64)
    reply = Reply(
        id="r",
        model="m",
        version="3",
        outputs=(Tensor.from_numpy("y", y), Tensor.from_numpy("label", label)),
    )
    req = pb.ModelInferRequest(model_name="m", id="r")
    every = encode_reply(req, reply, [])
    assert every.id == "r" and every.model_version == "3"
    assert [(o.name, o.datatype, list(o.shape)) for o in every.outputs] == [
        ("y", "FP32", [1, 2]),
        ("label", "INT64", [1]),
    ]
    assert every.raw_output_contents[0] == y.tobytes()
    only = encode_reply(req, reply, ["label"])
    assert [o.name for o in only.outputs] == ["label"]
    assert list(only.raw_output_contents) == [label.tobytes()]
    with pytest.raises(InvalidArgument, match="nope"):
        encode_reply(req, reply, ["nope"])
