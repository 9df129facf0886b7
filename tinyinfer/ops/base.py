"""The Op contract, the op registry, and helpers every op family shares.

An op is a class registered under its ONNX name and domain. It declares its attributes with
their spec defaults, then provides two methods:

* ``infer(node, inputs)`` — from the inputs' :class:`~tinyinfer.ir.Value` (dtype, shape,
  sometimes a known constant value) compute the outputs' Values. Dimensions may be symbolic.
* ``reference(node, *arrays)`` — compute the outputs with plain NumPy, the readable
  definition every fast kernel is checked against.

``node.attrs`` always holds every attribute of the op, defaults filled in, typed; ops read
``node.attrs["alpha"]`` and never worry whether the model spelled it out.
"""

from __future__ import annotations

import abc
import sys
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InvalidAttributeError, ShapeInferenceError, TinyInferError, UnsupportedOpError, node_label
from ..ir import Node, Value
from ..ir.graph import Dim, Shape

#: Marks an attribute the spec says must be given.
REQUIRED = object()

#: The registry: (domain, op_type) -> Op instance. Filled by @register at import time.
OPS: dict[tuple[str, str], "Op"] = {}

#: The newest opset version of ai.onnx the reference ops follow (the newest version ONNX's
#: conformance suite in onnx 1.23 tests). A model importing a newer one is refused: an op's
#: semantics may have changed in a version tinyinfer has not seen.
LATEST_OPSET = 28


class Op(abc.ABC):
    """Base class of every operator. Subclasses set the class attributes and two methods."""

    op_type: str = ""
    domain: str = ""
    #: The oldest opset version whose semantics this op implements (ONNX's since_version of
    #: the first schema we follow). Older models are refused with a clear error.
    since: int = 1
    #: name -> default value (``REQUIRED`` if the spec makes it mandatory, ``None`` if absent
    #: by default).
    attributes: dict[str, Any] = {}

    def defaults(self, version: int) -> dict[str, Any]:
        """Attribute defaults at an opset version; override where the spec changed them."""
        return self.attributes

    def check(self, node: Node) -> None:
        """Reject attribute values the spec forbids (called once, at import)."""

    @abc.abstractmethod
    def infer(self, node: Node, inputs: list[Value | None]) -> list[Value]:
        """The outputs' dtype and shape (and value, where known) from the inputs'."""

    @abc.abstractmethod
    def reference(self, node: Node, *arrays: np.ndarray | None):
        """The outputs, computed with plain NumPy."""


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: put one instance of the op into :data:`OPS`."""
    key = (cls.domain, cls.op_type)
    if key in OPS:
        raise RuntimeError(f"op {key} registered twice")
    OPS[key] = cls()
    return cls


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def get_op(node: Node) -> Op:
    """The registered op for a node, or :class:`UnsupportedOpError` naming it."""
    op = OPS.get((normalize_domain(node.domain), node.op_type))
    if op is None:
        raise UnsupportedOpError(
            f"{node_label(node)}: tinyinfer has no operator {node.op_type!r} in domain "
            f"'{node.domain or 'ai.onnx'}' (see tinyinfer.ops.supported_ops())"
        )
    return op


def prepare_node(node: Node, version: int) -> Op:
    """Check a node against its op and fill its attributes with typed defaults.

    Called by the frontend once per node. ``version`` is the opset version the model imports
    for the node's domain; it is remembered on the node (
    as ``node.version``) so version-dependent semantics can be looked up later.
    """
    op = get_op(node)
    if not op.domain and version > LATEST_OPSET:
        raise UnsupportedOpError(
            f"{node_label(node)}: the model imports ai.onnx opset {version}, newer than opset "
            f"{LATEST_OPSET}, the newest tinyinfer implements"
        )
    if version < op.since:
        raise UnsupportedOpError(
            f"{node_label(node)}: opset {version} is older than opset {op.since}, the oldest "
            f"version of {node.op_type} tinyinfer implements; convert the model with "
            f"onnx.version_converter first"
        )
    node.version = version
    spec = op.defaults(version)
    parsed: dict[str, Any] = {}
    for name, default in spec.items():
        if name in node.attrs and node.attrs[name] is not None:
            parsed[name] = _coerce(node, name, node.attrs[name], default)
        elif default is REQUIRED:
            raise InvalidAttributeError(f"{node_label(node)}: required attribute '{name}' is missing")
        else:
            parsed[name] = default
    unknown = sorted(set(node.attrs) - set(spec))
    if unknown:
        raise InvalidAttributeError(
            f"{node_label(node)}: unknown attribute(s) {unknown} for {node.op_type}-{version}; "
            f"expected some of {sorted(spec)}"
        )
    node.attrs = parsed
    try:
        op.check(node)
    except TinyInferError:
        raise
    except Exception as exc:  # a check that trips over an odd value still names the node
        raise InvalidAttributeError(f"{node_label(node)}: invalid attributes: {type(exc).__name__}: {exc}") from exc
    return op


def _coerce(node: Node, name: str, value: Any, default: Any) -> Any:
    """Give an attribute the Python type its default has (ints where floats are expected)."""
    if isinstance(default, float) and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        if value != int(value):
            raise InvalidAttributeError(f"{node_label(node)}: attribute '{name}' must be an integer, got {value}")
        return int(value)
    if isinstance(default, (int, float, str)) and isinstance(value, (list, tuple)):
        raise InvalidAttributeError(
            f"{node_label(node)}: attribute '{name}' must be a single {type(default).__name__}, got a list"
        )
    if isinstance(value, tuple):
        return list(value)
    return value


def supported_ops() -> list[str]:
    """Names of every registered op, ``domain:Op`` for non-default domains."""
    return sorted(op_type if not domain else f"{domain}:{op_type}" for domain, op_type in OPS)


# ---------------------------------------------------------------------------- errors
def fail(node: Node, message: str) -> ShapeInferenceError:
    """A shape-inference error naming the node; ``raise fail(node, ...)``."""
    return ShapeInferenceError(f"{node_label(node)}: {message}")


def bad_attribute(node: Node, message: str) -> InvalidAttributeError:
    return InvalidAttributeError(f"{node_label(node)}: {message}")


# ---------------------------------------------------------------------------- shapes
def normalize_axis(node: Node, axis: int, rank: int, what: str = "axis") -> int:
    """Turn a possibly negative axis into ``0 <= axis < rank``, or raise naming the node."""
    if not -rank <= axis < rank:
        raise fail(node, f"{what} {axis} is out of range for a tensor of rank {rank}")
    return axis % rank


def broadcast_shapes(node: Node, *shapes: Shape | None) -> Shape | None:
    """NumPy-style (multidirectional) broadcasting, with symbolic dimensions.

    A known 1 gives way to anything; two equal dims stay; a symbolic dim against a known
    dim > 1 becomes that known dim; two different symbols become unknown (``None``).
    """
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        known = {d for d in dims if isinstance(d, int) and d != 1}
        if len(known) > 1:
            raise fail(node, f"shapes {[list(s) for s in shapes]} cannot be broadcast together")
        if known:
            out.append(known.pop())
            continue
        symbols = {d for d in dims if not isinstance(d, int)}
        if not symbols:
            out.append(1)
        elif len(symbols) == 1 and None not in symbols:
            out.append(symbols.pop())
        else:
            out.append(None)
    return tuple(out)


def dim_product(dims: Sequence[Dim]) -> Dim:
    """Product of dimensions, or None if any is not a known integer."""
    total = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        total *= d
    return total


def const_ints(value: Value | None) -> list[int] | None:
    """The known integer contents of a (small, 0-d or 1-d) input, or None."""
    if value is None or value.const is None:
        return None
    return [int(v) for v in np.asarray(value.const).reshape(-1)]


def like(node: Node, index: int, value: Value, dtype=None, shape=None) -> Value:
    """An output Value for ``node.outputs[index]`` with another value's type (dtype, shape,
    kind) by default."""
    return Value(
        node.outputs[index],
        value.dtype if dtype is None else dtype,
        value.shape if shape is None else shape,
        kind=value.kind,
    )


def out(node: Node, index: int, dtype, shape) -> Value:
    """The Value of ``node.outputs[index]``."""
    return Value(node.outputs[index], dtype, shape)


def require_inputs(node: Node, inputs: list[Value | None], least: int, most: int | None = None) -> None:
    """Check the count of inputs the node was given (present or left empty)."""
    n = len(node.inputs)
    most = least if most is None else most
    if not least <= n <= most or any(inputs[i] is None for i in range(least)):
        expected = str(least) if least == most else f"{least} to {most}"
        raise fail(node, f"expects {expected} inputs, got {n} ({node.inputs})")


# ---------------------------------------------------------------------------- small op factories
def elementwise(op_type: str, fn: Callable, *, since: int = 1, attributes: dict | None = None,
                dtype: Callable[[np.dtype], np.dtype] | None = None, arity: int = 1) -> type[Op]:
    """Register an elementwise op from a NumPy function ``fn(*arrays, **attrs)``.

    ``arity=1`` for unary ops (output shape = input shape), ``2`` for binary ops with
    multidirectional broadcasting. ``dtype`` maps the first input's dtype to the output's
    (comparisons return bool).
    """

    class Elementwise(Op):
        def infer(self, node, inputs):
            require_inputs(node, inputs, arity)
            shape = inputs[0].shape if arity == 1 else broadcast_shapes(node, *(v.shape for v in inputs))
            out_dtype = inputs[0].dtype if dtype is None or inputs[0].dtype is None else dtype(inputs[0].dtype)
            return [out(node, 0, out_dtype, shape)]

        def reference(self, node, *arrays):
            result = np.asarray(fn(*arrays, **node.attrs))
            want = arrays[0].dtype if dtype is None else dtype(arrays[0].dtype)
            return result.astype(want, copy=False)

    Elementwise.op_type = op_type
    Elementwise.since = since
    Elementwise.attributes = dict(attributes or {})
    Elementwise.__name__ = Elementwise.__qualname__ = op_type
    # The module that called elementwise() defines the op (so docs and `sess.profile()` name
    # tinyinfer.ops.elementwise, not tinyinfer.ops.base).
    Elementwise.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    Elementwise.__doc__ = (fn.__doc__ or "").strip() or f"Elementwise {op_type}."
    return register(Elementwise)
