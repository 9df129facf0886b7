"""The HTTP/REST front end: the Open Inference Protocol v2 (KServe, Triton) as a Starlette app.

Every route translates JSON (and binary tensors) to a call of the
:class:`~tinyinfer.serve.core.ServerCore` and back; nothing here decides anything about
models. Routes::

    GET  /v2/health/live | /v2/health/ready          200 when live / ready
    GET  /v2                                         server metadata
    GET  /v2/models/{m}[/versions/{v}]               model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready         200 when that model (version) is ready
    POST /v2/models/{m}[/versions/{v}]/infer         inference
    GET  /v2/models/{m}[/versions/{v}]/config        the model's config (Triton's ModelConfig as JSON)
    GET  /v2/models[/{m}[/versions/{v}]]/stats       statistics extension
    POST /v2/repository/index                        repository extension
    POST /v2/repository/models/{m}/load | /unload
    GET  /v2/models/{m}/canary                       canary extension (tinyinfer's own): router state
    POST /v2/models/{m}/canary                       {"version": v, "weight": w[, "stable": s]}
    POST /v2/models/{m}/canary/promote | /rollback

The canary extension is the control plane of a canary release. ``POST .../canary`` sends a
fraction ``w`` (0 < w < 1) of the requests that name no version to version ``v`` and the
rest to the stable version (``s`` if given: a version that just loaded is the latest, hence
stable, so testing it against its predecessor names that one); ``promote`` makes the canary
the stable version, ``rollback`` drops it. Each answers the router state that ``GET`` shows:
``stable``, ``canary``, ``weight``, per-version ``counts`` (routed, ok, failed) and
``window`` (requests, errors, p99_ms over the rollback window), ``last_rollback`` (why the
last canary went, also after an automatic rollback) and the rollback ``policy``. It is
HTTP only: Triton's gRPC service has no call for it.

Tensors travel as JSON lists, or, with Triton's binary tensor extension, as raw little-endian
bytes after the JSON: the header ``Inference-Header-Content-Length`` gives the length of the
JSON part, each binary input says its size in ``parameters.binary_data_size``, and outputs are
sent binary when the request asks (``binary_data`` per output, ``binary_data_output`` for all).
Binary saves the cost of printing and parsing decimal numbers, which dominates for images.

Errors answer ``{"error": "..."}`` with the status the :class:`~tinyinfer.errors.ServeError`
carries: 400 malformed, 404 unknown model or version, 413 body too large, 503 not ready or
queue full. The canary extension answers 400 for a weight outside (0, 1), a canary equal to
the stable version, and promote or rollback with no canary set (a request that does not fit the
router's state, answered like the repository API's refusals), 404 for an unknown model or
version and 503 for a version that is not ready.
"""

from __future__ import annotations

import gzip
import json
import zlib

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InvalidRequestError, RequestTooLargeError, ServeError
from .core import InferRequest, InferResponse, ServerCore, tensor_from_bytes, tensor_from_list
from .repository import dtype_datatype

#: The default request body limit (--max-body-mib).
DEFAULT_MAX_BODY_BYTES = 64 << 20


def build_app(core: ServerCore, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Starlette:
    """The Starlette application serving ``core``."""
    routes = HttpRoutes(core, max_body_bytes)
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    table = [
        Route("/v2/health/live", routes.live),
        Route("/v2/health/ready", routes.ready),
        Route("/v2", routes.server_metadata),
        Route("/v2/models/stats", routes.stats),
        Route("/v2/repository/index", routes.repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", routes.load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", routes.unload, methods=["POST"]),
        Route(model + "/canary", routes.canary_state, methods=["GET"]),
        Route(model + "/canary", routes.set_canary, methods=["POST"]),
        Route(model + "/canary/promote", routes.promote, methods=["POST"]),
        Route(model + "/canary/rollback", routes.rollback, methods=["POST"]),
    ]
    for prefix in (model, versioned):
        table += [
            Route(prefix, routes.model_metadata),
            Route(prefix + "/ready", routes.model_ready),
            Route(prefix + "/infer", routes.infer, methods=["POST"]),
            Route(prefix + "/config", routes.config),
            Route(prefix + "/stats", routes.stats),
        ]
    return Starlette(routes=table, exception_handlers={ServeError: _error_response})


class HttpRoutes:
    """The route handlers, bound to one server core."""

    def __init__(self, core: ServerCore, max_body_bytes: int):
        self.core = core
        self.max_body_bytes = max_body_bytes

    async def live(self, request: Request) -> Response:
        return Response(status_code=200 if self.core.live() else 503)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.core.ready() else 503)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse(self.core.server_metadata())

    async def model_metadata(self, request: Request) -> Response:
        model, version = _model_version(request)
        return JSONResponse(self.core.model_metadata(model, version))

    async def model_ready(self, request: Request) -> Response:
        model, version = _model_version(request)
        return Response(status_code=200 if self.core.model_ready(model, version) else 503)

    async def config(self, request: Request) -> Response:
        model, version = _model_version(request)
        return JSONResponse(message_to_dict(self.core.model_config(model, version)))

    async def stats(self, request: Request) -> Response:
        model, version = _model_version(request)
        return JSONResponse(self.core.statistics(model, version))

    async def repository_index(self, request: Request) -> Response:
        body = await self._body(request)
        options = _parse_json(body) if body else {}
        if not isinstance(options, dict):
            raise InvalidRequestError("a repository index request is a JSON object, e.g. {\"ready\": true}")
        return JSONResponse(self.core.repository_index(ready_only=bool(options.get("ready", False))))

    async def load(self, request: Request) -> Response:
        await self.core.load(request.path_params["model"])
        return Response(status_code=200)

    async def unload(self, request: Request) -> Response:
        await self.core.unload(request.path_params["model"])
        return Response(status_code=200)

    async def canary_state(self, request: Request) -> Response:
        return JSONResponse(self.core.canary_state(request.path_params["model"]))

    async def set_canary(self, request: Request) -> Response:
        body = _parse_json(await self._body(request))
        if not isinstance(body, dict) or "version" not in body or "weight" not in body:
            raise InvalidRequestError('a canary request is a JSON object {"version": v, "weight": w} '
                                      '(and optionally "stable": s)')
        version = _version_number("version", body["version"])
        stable = _version_number("stable", body["stable"]) if body.get("stable") is not None else None
        return JSONResponse(self.core.set_canary(request.path_params["model"], version, body["weight"], stable))

    async def promote(self, request: Request) -> Response:
        return JSONResponse(self.core.promote(request.path_params["model"]))

    async def rollback(self, request: Request) -> Response:
        return JSONResponse(self.core.rollback(request.path_params["model"]))

    async def infer(self, request: Request) -> Response:
        model, version = _model_version(request)
        body = await self._body(request)
        header_length = request.headers.get("inference-header-content-length")
        if header_length is not None:
            if not header_length.isdigit() or int(header_length) > len(body):
                raise InvalidRequestError(f"Inference-Header-Content-Length {header_length!r} is not a length "
                                          f"within the {len(body)}-byte body")
            header, binary = body[:int(header_length)], memoryview(body)[int(header_length):]
        else:
            header, binary = body, memoryview(b"")
        document = _parse_json(header)
        infer_request, binary_outputs = decode_infer_request(document, binary)
        response = await self.core.infer(model, version, infer_request)
        return encode_infer_response(response, binary_outputs)

    # ------------------------------------------------------------------ bodies
    async def _body(self, request: Request) -> bytes:
        """The request body, refused with 413 past the limit (before reading it when the length is sent)."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _too_large(int(declared), self.max_body_bytes)
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise _too_large(size, self.max_body_bytes)
                chunks.append(chunk)
        except ClientDisconnect:
            raise InvalidRequestError(f"the client went away after {size} bytes of the body") from None
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding")
        if encoding in ("gzip", "deflate"):
            try:
                body = gzip.decompress(body) if encoding == "gzip" else zlib.decompress(body)
            except (OSError, zlib.error) as exc:
                raise InvalidRequestError(f"the body is not valid {encoding} data: {exc}") from None
        return body


def decode_infer_request(document, binary: memoryview) -> tuple[InferRequest, set[str] | bool]:
    """An InferRequest from the JSON document and the binary part after it.

    Returns the request and which outputs go back binary: a set of names, or True for all.
    """
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InvalidRequestError("an inference request is a JSON object with an \"inputs\" list")
    inputs, offset = {}, 0
    for tensor in document["inputs"]:
        name, datatype, shape = _tensor_header(tensor)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or offset + size > len(binary):
                raise InvalidRequestError(f"input {name!r}: binary_data_size {size!r} runs past the "
                                          f"{len(binary)} bytes of binary data")
            inputs[name] = tensor_from_bytes(name, datatype, shape, binary[offset:offset + size])
            offset += size
        elif "data" in tensor:
            inputs[name] = tensor_from_list(name, datatype, shape, tensor["data"])
        else:
            raise InvalidRequestError(f"input {name!r} has neither \"data\" nor parameters.binary_data_size")
    parameters = document.get("parameters") or {}
    requested = document.get("outputs")
    outputs, binary_outputs = None, bool(parameters.get("binary_data_output", False))
    if requested is not None:
        if not isinstance(requested, list) or not all(isinstance(o, dict) and "name" in o for o in requested):
            raise InvalidRequestError("\"outputs\" must be a list of objects with a \"name\"")
        outputs = [o["name"] for o in requested]
        chosen = {o["name"] for o in requested if (o.get("parameters") or {}).get("binary_data", binary_outputs)}
        binary_outputs = chosen
    timeout = parameters.get("timeout")
    if timeout is not None and not isinstance(timeout, (int, float)):
        raise InvalidRequestError(f"parameter timeout is in microseconds, got {timeout!r}")
    request = InferRequest(inputs, outputs, id=str(document.get("id", "")),
                           timeout_s=timeout / 1e6 if timeout else None)
    return request, binary_outputs


def encode_infer_response(response: InferResponse, binary_outputs: set[str] | bool) -> Response:
    """The response JSON, with binary outputs appended after it when asked for."""
    outputs, blobs = [], []
    for name, array in response.outputs:
        tensor = {"name": name, "datatype": dtype_datatype(array.dtype), "shape": list(array.shape)}
        if binary_outputs is True or (binary_outputs and name in binary_outputs):
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = array.reshape(-1).tolist()
        outputs.append(tensor)
    document = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    header = json.dumps(document).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


def message_to_dict(message: Message) -> dict:
    """A protobuf message as JSON-ready dict, with 64-bit integers kept as numbers.

    ``json_format.MessageToDict`` writes int64 fields (``dims``) as strings, as the proto3 JSON
    mapping says; Triton's HTTP API, and its clients, use numbers.
    """
    result = {}
    for field, value in message.ListFields():
        result[field.name] = _field_value(field, value)
    return result


def _field_value(field, value):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {key: _field_value(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_scalar(field, item) for item in value]
    return _scalar(field, value)


def _scalar(field, value):
    if field.message_type is not None:
        return message_to_dict(value)
    if field.enum_type is not None:
        return field.enum_type.values_by_number[value].name
    return value


def _tensor_header(tensor) -> tuple[str, str, list[int]]:
    if not isinstance(tensor, dict) or not all(key in tensor for key in ("name", "datatype", "shape")):
        raise InvalidRequestError("each input needs \"name\", \"datatype\" and \"shape\"")
    shape = tensor["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidRequestError(f"input {tensor['name']!r}: shape must be a list of integers, got {shape!r}")
    return str(tensor["name"]), str(tensor["datatype"]), shape


def _model_version(request: Request) -> tuple[str, str]:
    return request.path_params.get("model", ""), request.path_params.get("version", "")


def _version_number(field: str, value) -> int:
    """A version given as a JSON number or a string of digits (as the v2 paths spell versions)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    raise InvalidRequestError(f"\"{field}\" must be a version number (a positive integer), got {value!r}")


def _parse_json(data: bytes):
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(f"the request is not valid JSON: {exc}") from None


def _too_large(size: int, limit: int) -> RequestTooLargeError:
    return RequestTooLargeError(f"the request body ({size} bytes or more) is over the server's limit of {limit} "
                                "bytes (tinyinfer serve --max-body-mib)")


async def _error_response(request: Request, exc: ServeError) -> Response:
    return JSONResponse({"error": str(exc)}, status_code=exc.http_status)
