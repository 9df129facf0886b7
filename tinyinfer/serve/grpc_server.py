"""The gRPC front end: ``inference.GRPCInferenceService``, from the definitions ``tritonclient`` ships.

The service, its messages and the servicer base class are Triton's own generated code
(``tritonclient.grpc.service_pb2`` and ``service_pb2_grpc``), so any Triton gRPC client talks
to this server unchanged. Each method translates a message to a call of the
:class:`~tinyinfer.serve.core.ServerCore` and back; a refused request ends the call with the
gRPC status its :class:`~tinyinfer.errors.ServeError` carries (``INVALID_ARGUMENT``,
``NOT_FOUND``, ``UNAVAILABLE``, ...).

Tensors arrive either as ``raw_input_contents`` (one little-endian byte string per input, what
``tritonclient`` sends) or as typed ``contents`` (``fp32_contents``, ``int64_contents``, ...);
outputs always leave as ``raw_output_contents``. The server runs on ``grpc.aio``, on the same
event loop as the HTTP server and the batchers.
"""

from __future__ import annotations

import grpc
from google.protobuf import json_format
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..errors import InvalidRequestError, ServeError
from .core import InferRequest, ServerCore, tensor_from_bytes, tensor_from_list
from .repository import dtype_datatype

#: Which field of ``InferTensorContents`` carries each datatype (FP16 travels only raw).
TYPED_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}


def build_server(core: ServerCore, address: str, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """A ``grpc.aio`` server for ``core`` bound to ``address`` (``host:0`` picks a port); returns it and the port."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.aio.server(options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(core), server)
    port = server.add_insecure_port(address)
    return server, port


def _refusing(method):
    """Run a servicer method; a ServeError ends the call with its gRPC status and message."""

    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except ServeError as exc:
            await context.abort(grpc.StatusCode[exc.grpc_code], str(exc))

    wrapper.__name__ = method.__name__
    return wrapper


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService over a ServerCore (shared memory and tracing are not offered)."""

    def __init__(self, core: ServerCore):
        self.core = core

    @_refusing
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=self.core.live())

    @_refusing
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.core.ready())

    @_refusing
    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=self.core.model_ready(request.name, request.version))

    @_refusing
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(**self.core.server_metadata())

    @_refusing
    async def ModelMetadata(self, request, context):
        return _message(self.core.model_metadata(request.name, request.version), service_pb2.ModelMetadataResponse)

    @_refusing
    async def ModelConfig(self, request, context):
        return service_pb2.ModelConfigResponse(config=self.core.model_config(request.name, request.version))

    @_refusing
    async def ModelStatistics(self, request, context):
        return _message(self.core.statistics(request.name, request.version), service_pb2.ModelStatisticsResponse)

    @_refusing
    async def RepositoryIndex(self, request, context):
        rows = self.core.repository_index(ready_only=request.ready)
        return service_pb2.RepositoryIndexResponse(
            models=[service_pb2.RepositoryIndexResponse.ModelIndex(**row) for row in rows])

    @_refusing
    async def RepositoryModelLoad(self, request, context):
        await self.core.load(request.model_name)
        return service_pb2.RepositoryModelLoadResponse()

    @_refusing
    async def RepositoryModelUnload(self, request, context):
        await self.core.unload(request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    @_refusing
    async def ModelInfer(self, request, context):
        response = await self.core.infer(request.model_name, request.model_version, decode_infer_request(request))
        message = service_pb2.ModelInferResponse(model_name=response.model_name,
                                                 model_version=response.model_version, id=response.id)
        for name, array in response.outputs:
            message.outputs.add(name=name, datatype=dtype_datatype(array.dtype), shape=array.shape)
            message.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
        return message


def _message(document: dict, message_type):
    """The core's JSON-shaped answer as the protobuf message of the same schema."""
    return json_format.ParseDict(document, message_type())


def decode_infer_request(request: service_pb2.ModelInferRequest) -> InferRequest:
    """An InferRequest from a ModelInferRequest, its inputs raw or typed."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(f"{len(request.inputs)} inputs but {len(raw)} raw_input_contents: "
                                  "either every input is raw or none is")
    inputs = {}
    for i, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        if raw:
            inputs[tensor.name] = tensor_from_bytes(tensor.name, tensor.datatype, shape, raw[i])
        elif tensor.datatype in TYPED_CONTENTS:
            data = getattr(tensor.contents, TYPED_CONTENTS[tensor.datatype])
            inputs[tensor.name] = tensor_from_list(tensor.name, tensor.datatype, shape, list(data))
        else:
            raise InvalidRequestError(f"input {tensor.name!r}: datatype {tensor.datatype!r} must be sent as "
                                      "raw_input_contents (it has no typed contents field)")
    outputs = [output.name for output in request.outputs] or None
    timeout = request.parameters["timeout"].int64_param if "timeout" in request.parameters else 0
    return InferRequest(inputs, outputs, id=request.id, timeout_s=timeout / 1e6 if timeout else None)
