"""Every error a user of tinyinfer can cause, in one place.

All of them derive from :class:`TinyInferError`, so ``except ti.TinyInferError`` catches
anything the engine raises on purpose. The messages name the node, the op and what was
expected, because "KeyError: 'x'" tells a user nothing about which of 200 nodes is wrong.
"""

from __future__ import annotations


class TinyInferError(Exception):
    """Base class of every error tinyinfer raises on purpose."""


class ModelLoadError(TinyInferError):
    """The file or bytes are not a model tinyinfer can read (malformed, truncated, unsafe)."""


class UnsupportedOpError(TinyInferError):
    """An operator (or an opset version of it) that tinyinfer does not implement."""


class InvalidAttributeError(TinyInferError):
    """A node attribute is missing, has the wrong type, or holds a value the spec forbids."""


class InvalidGraphError(TinyInferError):
    """The graph breaks a structural rule: undefined input, two producers, a cycle, ..."""


class ShapeInferenceError(TinyInferError):
    """Input shapes or types do not fit what an operator accepts."""


class InvalidFeedError(TinyInferError):
    """The feeds given to ``InferenceSession.run`` do not match the model's inputs."""


class FeedNameError(InvalidFeedError):
    """A required input is missing, or a feed names no input of the model."""


class FeedTypeError(InvalidFeedError):
    """A feed has a different element type from the one the model declares."""


class FeedShapeError(InvalidFeedError):
    """A feed has the wrong rank, or a static dimension differs from the declared one."""


class ExecutionError(TinyInferError):
    """An operator failed while running; the message names the node that failed."""


def node_label(node) -> str:
    """How errors refer to a node: ``Conv 'conv1' (domain ai.onnx, opset 13)``.

    The opset is named once the node knows it (the frontend sets ``node.version``), since
    "no operator X" and "attribute Y is wrong" often depend on which version a model imports.
    """
    domain = node.domain or "ai.onnx"
    name = f" '{node.name}'" if node.name else f" producing {list(node.outputs)}"
    version = getattr(node, "version", 0)
    opset = f", opset {version}" if version else ""
    return f"{node.op_type}{name} (domain {domain}{opset})"


class ServeError(TinyInferError):
    """A request the model server refuses; carries the HTTP status and gRPC code a client sees."""

    http_status = 500
    grpc_code = "INTERNAL"  # a grpc.StatusCode name; errors.py does not import grpc


class InvalidRequestError(ServeError):
    """A malformed request: bad JSON, unknown input, wrong datatype or shape."""

    http_status, grpc_code = 400, "INVALID_ARGUMENT"


class ModelNotFoundError(ServeError):
    """No model, or no version of it, by the name a request gives."""

    http_status, grpc_code = 404, "NOT_FOUND"


class ModelUnavailableError(ServeError):
    """The model or version exists but is not ready (loading, unloading or failed to load)."""

    http_status, grpc_code = 503, "UNAVAILABLE"


class QueueFullError(ServeError):
    """The model's request queue is at its bound: rejected now rather than queued without limit."""

    http_status, grpc_code = 503, "UNAVAILABLE"


class RequestTimeoutError(ServeError):
    """A request waited in the queue past its timeout."""

    http_status, grpc_code = 504, "DEADLINE_EXCEEDED"


class RequestTooLargeError(ServeError):
    """A request body over the server's configured limit."""

    http_status, grpc_code = 413, "RESOURCE_EXHAUSTED"


class RepositoryError(ServeError):
    """A repository operation the server's model control mode or the files on disk do not allow."""

    http_status, grpc_code = 400, "FAILED_PRECONDITION"


class CanaryError(ServeError):
    """A canary action that cannot apply now: a weight outside (0, 1), or promote / rollback with no canary."""

    http_status, grpc_code = 400, "FAILED_PRECONDITION"


class PerfError(TinyInferError):
    """A load-generator run that cannot start: bad options, or a server or model it cannot reach."""
