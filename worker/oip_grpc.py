"""The Open Inference Protocol (KServe v2) over gRPC: ``inference.GRPCInferenceService``.

``ServerLive``, ``ServerReady``, ``ModelReady``, ``ServerMetadata``,
``ModelMetadata`` and ``ModelInfer``, on the worker's ``oip_grpc_port``. A
``ModelInfer`` call goes to the same :class:`~worker.sync_ingress.SyncIngress`
as the REST calls: one admission limit, and the same batches as the queue
traffic.

Tensors come in ``raw_input_contents`` (every input, in order: the elements
row-major and little-endian, a BYTES element as a 4-byte length and its
bytes) or in each input's typed ``contents``; outputs are always answered in
``raw_output_contents``, as Triton does. The deadline is the sooner of the
call's gRPC deadline and its ``timeout`` parameter (microseconds). A call the
client cancels cancels its item unless it already runs.

Errors are gRPC statuses: ``INVALID_ARGUMENT`` (malformed request, wrong
shape or datatype), ``NOT_FOUND`` (model or version not served),
``RESOURCE_EXHAUSTED`` (the worker is full: try another), ``UNAVAILABLE``
(starting or stopping), ``DEADLINE_EXCEEDED``, ``INTERNAL``. A message over
the worker's ``max_message_bytes`` is refused by gRPC itself with
``RESOURCE_EXHAUSTED``.

The messages are the protocol's, declared in ``worker/oip_proto/oip_v2.proto``
under the fleet's own package (see there why); the service is registered
here under its protocol name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc import aio

from fleet.contract import ParamValue, Reply
from fleet.errors import ErrorCode, FleetError, InvalidArgument
from fleet.logging import get_logger
from fleet.tensor import DataType, Tensor, check_shape
from worker import oip_codec
from worker.oip_http import EXTENSIONS, model_metadata, server_version
from worker.oip_proto import oip_v2_pb2 as pb
from worker.sync_ingress import SyncIngress

log = get_logger("worker.oip_grpc")

SERVICE = "inference.GRPCInferenceService"

_STATUS = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.OVERLOADED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorCode.CONFIG: grpc.StatusCode.INTERNAL,
}

# the typed contents field of each datatype (FP16 travels raw only)
_CONTENTS = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
    DataType.BYTES: "bytes_contents",
}

Handler = Callable[[Any, aio.ServicerContext[Any, Any]], Awaitable[Message]]


def status_of(exc: FleetError) -> grpc.StatusCode:
    """The gRPC status of a typed error."""
    return _STATUS.get(exc.code, grpc.StatusCode.INTERNAL)


class OipGrpcServer:
    """``inference.GRPCInferenceService`` over one worker's synchronous ingress."""

    def __init__(self, sync: SyncIngress, *, max_message_bytes: int) -> None:
        self._sync = sync
        self._max_message = max_message_bytes
        self._server: aio.Server | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host``:``port`` (0 picks one); the port."""
        limit = self._max_message
        server = aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", max(limit, 4 << 20)),
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers((self._handlers(),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        self._server = server
        return self.port

    async def stop(self) -> None:
        self._sync.abort_waiting()
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace=1.0)

    def _handlers(self) -> grpc.GenericRpcHandler:
        def unary(handler: Handler, request: type[Message], reply: type[Message]) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                handler,
                request_deserializer=request.FromString,
                response_serializer=reply.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary(self._live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(self._ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
                "ModelReady": unary(self._model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ServerMetadata": unary(
                    self._server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelMetadata": unary(
                    self._model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                "ModelInfer": unary(self._infer, pb.ModelInferRequest, pb.ModelInferResponse),
            },
        )

    # ------------------------------------------------------------------ health, metadata
    async def _live(self, _req: Any, _ctx: aio.ServicerContext[Any, Any]) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def _ready(self, _req: Any, _ctx: aio.ServicerContext[Any, Any]) -> Message:
        return pb.ServerReadyResponse(ready=self._sync.ready())

    async def _model_ready(
        self, req: pb.ModelReadyRequest, _ctx: aio.ServicerContext[Any, Any]
    ) -> Message:
        """Ready or not; a model or version not served is not ready (as Triton answers)."""
        try:
            self._sync.runtime(req.name, req.version)
        except FleetError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self._sync.ready())

    async def _server_metadata(self, _req: Any, _ctx: aio.ServicerContext[Any, Any]) -> Message:
        extensions = [e for e in EXTENSIONS if e != "model_repository"]  # REST only
        return pb.ServerMetadataResponse(
            name="fleet", version=server_version(), extensions=extensions
        )

    async def _model_metadata(
        self, req: pb.ModelMetadataRequest, ctx: aio.ServicerContext[Any, Any]
    ) -> Message:
        try:
            _, runtime = self._sync.runtime(req.name, req.version)
        except FleetError as exc:
            await _abort(ctx, exc)
        doc = model_metadata(self._sync, req.name, runtime)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc["name"],
            versions=doc["versions"],
            platform=doc["platform"],
            inputs=[meta(**io) for io in doc["inputs"]],
            outputs=[meta(**io) for io in doc["outputs"]],
        )

    # ------------------------------------------------------------------ inference
    async def _infer(
        self, req: pb.ModelInferRequest, ctx: aio.ServicerContext[Any, Any]
    ) -> Message:
        try:
            rid = req.id or self._sync.new_id()
            version, runtime = self._sync.resolve(req.model_name, req.model_version, rid)
            inputs = decode_inputs(req)
            params = _parameters(req.parameters, "the request")
            timeout = oip_codec.timeout_seconds(params.get("timeout"))
            remaining = ctx.time_remaining()
            if remaining is not None:
                timeout = remaining if timeout is None else min(timeout, remaining)
            names = [io.name for io in getattr(runtime, "outputs", ())]
            wanted = [o.name for o in req.outputs]
            for name in wanted:
                if names and name not in names:
                    raise InvalidArgument(
                        f"unknown output {name!r}; the model's outputs are {names}"
                    )
            reply = await self._sync.infer(
                req.model_name,
                version,
                inputs,
                request_id=rid,
                parameters={
                    k: v for k, v in params.items() if k not in oip_codec.PROTOCOL_PARAMETERS
                },
                timeout_s=timeout,
            )
            if reply.error is not None:
                raise reply.error.to_exception()
            return encode_reply(req, reply, wanted)
        except FleetError as exc:
            await _abort(ctx, exc)


async def _abort(ctx: aio.ServicerContext[Any, Any], exc: FleetError) -> NoReturn:
    await ctx.abort(status_of(exc), exc.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    """The protocol's parameters as plain values, checked as the REST ones."""
    values: dict[str, ParamValue] = {}
    for key, param in raw.items():
        kind = param.WhichOneof("parameter_choice")
        if kind is not None:
            values[key] = getattr(param, kind)
    return oip_codec.check_parameters(values, where)


def decode_inputs(req: pb.ModelInferRequest) -> tuple[Tensor, ...]:
    """The input tensors of a ``ModelInfer`` request, checked."""
    if not req.inputs:
        raise InvalidArgument("'inputs' must not be empty")
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs"
        )
    tensors: list[Tensor] = []
    for i, inp in enumerate(req.inputs):
        head = {"name": inp.name, "datatype": inp.datatype, "shape": list(inp.shape)}
        name, datatype, shape = oip_codec.check_head(head, f"input {i}")
        if raw:
            if inp.HasField("contents"):
                raise InvalidArgument(f"input {name!r} has contents and raw_input_contents")
            tensors.append(oip_codec.binary_tensor(name, datatype, shape, memoryview(raw[i])))
        else:
            tensors.append(_typed_tensor(name, datatype, shape, inp.contents))
    return tuple(tensors)


def _typed_tensor(name: str, datatype: DataType, shape: tuple[int, ...], contents: Any) -> Tensor:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise InvalidArgument(f"input {name!r}: {datatype.name} data must be raw_input_contents")
    values = list(getattr(contents, field))
    if datatype is not DataType.BYTES:
        return oip_codec.list_tensor(name, datatype, shape, values)
    count = check_shape(name, shape)
    if len(values) != count:
        raise InvalidArgument(
            f"input {name!r}: {len(values)} elements of data, shape {list(shape)} needs {count}"
        )
    array = np.empty(count, dtype=object)
    array[:] = values
    return Tensor.from_numpy(name, array.reshape(shape))


def encode_reply(req: pb.ModelInferRequest, reply: Reply, wanted: list[str]) -> Message:
    """The ``ModelInfer`` response: the outputs asked for (every one for
    none), their data in ``raw_output_contents``."""
    by_name = {t.name: t for t in reply.outputs}
    names = wanted or list(by_name)
    out = pb.ModelInferResponse(model_name=reply.model, model_version=reply.version, id=req.id)
    for name in names:
        tensor = by_name.get(name)
        if tensor is None:
            raise InvalidArgument(f"unknown output {name!r}; the outputs are {list(by_name)}")
        out.outputs.add(name=tensor.name, datatype=tensor.datatype.name, shape=tensor.shape)
        out.raw_output_contents.append(bytes(tensor.data))
    return out


__all__ = ["SERVICE", "OipGrpcServer", "decode_inputs", "encode_reply", "status_of"]
