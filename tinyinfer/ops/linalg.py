"""Linear algebra: Gemm, MatMul, MatMulInteger and Einsum.

These are the ops a fully connected layer, an attention block or a quantized linear layer
compiles to. Each one ends in a single NumPy matrix product (``np.matmul``, which calls BLAS
for float32 and float64), so the reference path is already as fast as the machine's BLAS.
Half-precision inputs are multiplied in float32 and the result cast back: NumPy has no BLAS
for float16, and its own loop would accumulate in float16.

MatMul follows ``numpy.matmul`` exactly (ONNX defines it that way): batch dimensions
broadcast, a 1-D first operand is a row vector and a 1-D second operand a column vector,
and the dimension added for them is removed from the result.
"""

from __future__ import annotations

import re

import numpy as np

from ..ir import dtypes
from ..ir.graph import Dim, Shape
from .base import Op, bad_attribute, broadcast_shapes, fail, out, register, require_inputs


# ---------------------------------------------------------------------------- Gemm
@register
class Gemm(Op):
    """``Y = alpha * A' @ B' + beta * C``, with ``A' = A.T`` if ``transA`` (same for B).

    A' is ``(M, K)``, B' is ``(K, N)``; the optional C broadcasts *to* ``(M, N)``
    (unidirectional broadcasting). Spec: Gemm-13 (opsets before 7 spelled the broadcast out
    with a ``broadcast`` flag; broadcasting is always allowed here).
    """

    op_type = "Gemm"
    since = 1
    attributes = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}

    def defaults(self, version):
        if version < 7:
            return {**self.attributes, "broadcast": 0}
        return self.attributes

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 3)
        a, b = inputs[0], inputs[1]
        c = inputs[2] if len(inputs) > 2 else None
        rows = columns = None
        if a.shape is not None and b.shape is not None:
            for name, value in (("A", a), ("B", b)):
                if len(value.shape) != 2:
                    raise fail(node, f"{name} must be a matrix (rank 2), got shape {list(value.shape)}")
            rows, inner_a = (a.shape[1], a.shape[0]) if node.attrs["transA"] else a.shape
            inner_b, columns = (b.shape[1], b.shape[0]) if node.attrs["transB"] else b.shape
            if isinstance(inner_a, int) and isinstance(inner_b, int) and inner_a != inner_b:
                raise fail(node, f"A' is {rows}x{inner_a} but B' is {inner_b}x{columns} (after transA="
                                 f"{node.attrs['transA']}, transB={node.attrs['transB']}): inner sizes differ")
        if c is not None and c.shape is not None:
            _check_unidirectional(node, c.shape, (rows, columns))
        return [out(node, 0, a.dtype, None if a.shape is None or b.shape is None else (rows, columns))]

    def reference(self, node, a, b, c=None):
        attrs = node.attrs
        dtype, compute = a.dtype, _compute_dtype(a.dtype)
        a = a.astype(compute, copy=False).T if attrs["transA"] else a.astype(compute, copy=False)
        b = b.astype(compute, copy=False).T if attrs["transB"] else b.astype(compute, copy=False)
        y = np.matmul(a, b)
        if attrs["alpha"] != 1.0:
            y = y * attrs["alpha"]
        if c is not None and attrs["beta"] != 0.0:
            c = c.astype(compute, copy=False)
            y = y + (c if attrs["beta"] == 1.0 else attrs["beta"] * c)
        return y.astype(dtype, copy=False)


def _check_unidirectional(node, shape: Shape, target: tuple[Dim, Dim]) -> None:
    """C must broadcast to (M, N): rank <= 2, each dim 1 or equal to the target's."""
    if len(shape) > 2:
        raise fail(node, f"C must broadcast to (M, N), got rank {len(shape)} shape {list(shape)}")
    for dim, want in zip(reversed(shape), reversed(target)):
        if isinstance(dim, int) and isinstance(want, int) and dim not in (1, want):
            raise fail(node, f"C of shape {list(shape)} does not broadcast to (M, N) = {list(target)}")


# ---------------------------------------------------------------------------- MatMul
@register
class MatMul(Op):
    """``Y = A @ B`` with NumPy's matmul semantics (batched, broadcast). Spec: MatMul-13."""

    op_type = "MatMul"
    since = 1

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        a, b = inputs
        return [out(node, 0, a.dtype, matmul_shape(node, a.shape, b.shape))]

    def reference(self, node, a, b):
        compute = _compute_dtype(a.dtype)
        return np.matmul(a.astype(compute, copy=False), b.astype(compute, copy=False)).astype(a.dtype, copy=False)


def matmul_shape(node, a: Shape | None, b: Shape | None) -> Shape | None:
    """Result shape of ``numpy.matmul`` on shapes that may hold symbolic dims."""
    if a is None or b is None:
        return None
    if not a or not b:
        raise fail(node, f"MatMul needs operands of rank >= 1, got shapes {list(a)} and {list(b)}")
    left = (1, *a) if len(a) == 1 else tuple(a)
    right = (*b, 1) if len(b) == 1 else tuple(b)
    if isinstance(left[-1], int) and isinstance(right[-2], int) and left[-1] != right[-2]:
        raise fail(node, f"cannot multiply shapes {list(a)} and {list(b)}: inner sizes {left[-1]} and "
                         f"{right[-2]} differ")
    batch = broadcast_shapes(node, left[:-2], right[:-2])
    rows = (left[-2],) if len(a) > 1 else ()
    columns = (right[-1],) if len(b) > 1 else ()
    return (*batch, *rows, *columns)


# ---------------------------------------------------------------------------- MatMulInteger
@register
class MatMulInteger(Op):
    """``Y = (A - a_zero_point) @ (B - b_zero_point)`` in int32, for 8-bit A and B.

    ``a_zero_point`` is a scalar or one value per row of A; ``b_zero_point`` a scalar or one
    value per column of B. Spec: MatMulInteger-10.
    """

    op_type = "MatMulInteger"
    since = 10

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        a, b = inputs[0], inputs[1]
        for name, value in (("A", a), ("B", b)):
            if value.dtype is not None and value.dtype not in (np.int8, np.uint8):
                raise fail(node, f"{name} must be int8 or uint8, got {value.dtype}")
        return [out(node, 0, np.dtype(np.int32), matmul_shape(node, a.shape, b.shape))]

    def reference(self, node, a, b, a_zero_point=None, b_zero_point=None):
        # float64 holds every product (< 2**16) and every partial sum (< 2**53 for any
        # K < 2**37) exactly, and lets BLAS do the work; integer matmul in NumPy has no BLAS.
        left = a.astype(np.float64)
        right = b.astype(np.float64)
        if a_zero_point is not None:
            zero = a_zero_point.astype(np.float64)
            left -= zero.reshape(-1, 1) if zero.ndim == 1 and a.ndim > 1 else zero
        if b_zero_point is not None:
            right -= b_zero_point.astype(np.float64)
        return np.matmul(left, right).astype(np.int32)


# ---------------------------------------------------------------------------- Einsum
@register
class Einsum(Op):
    """Einstein summation, ``equation`` as in ``numpy.einsum`` (``"bij,bjk->bik"``, ``...``
    for broadcast dimensions, implicit output = labels seen once, alphabetically).
    Spec: Einsum-12.
    """

    op_type = "Einsum"
    since = 12
    attributes = {"equation": ""}

    def check(self, node):
        equation = node.attrs["equation"].replace(" ", "")
        if not equation or not re.fullmatch(r"[A-Za-z.,]*(->[A-Za-z.]*)?", equation):
            raise bad_attribute(node, f"equation {node.attrs['equation']!r} is not an einsum equation "
                                      f"like 'ij,jk->ik'")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 1, 2**31)
        shapes = [v.shape for v in inputs]
        shape = None if any(s is None for s in shapes) else einsum_shape(node, node.attrs["equation"], shapes)
        return [out(node, 0, inputs[0].dtype, shape)]

    def reference(self, node, *arrays):
        compute = _compute_dtype(arrays[0].dtype)
        operands = [x.astype(compute, copy=False) for x in arrays]
        y = np.einsum(node.attrs["equation"], *operands, optimize=len(operands) > 1)
        return np.asarray(y).astype(arrays[0].dtype, copy=False)


def einsum_shape(node, equation: str, shapes: list[Shape]) -> Shape:
    """Output shape of an einsum equation over input shapes (symbolic dims allowed)."""
    equation = equation.replace(" ", "")
    inputs_part, arrow, output_part = equation.partition("->")
    terms = inputs_part.split(",")
    if len(terms) != len(shapes):
        raise fail(node, f"equation {equation!r} names {len(terms)} operands but the node has {len(shapes)} inputs")
    sizes: dict[str, Dim] = {}
    ellipsis_shapes = []
    for term, shape in zip(terms, shapes):
        labels = term.replace("...", "")
        if "..." in term:
            count = len(shape) - len(labels)
            if count < 0:
                raise fail(node, f"term {term!r} has more labels than its operand has axes ({list(shape)})")
            start = term.index("...")
            ellipsis_shapes.append(tuple(shape[start:start + count]))
            shape = tuple(shape[:start]) + tuple(shape[start + count:])
        elif len(labels) != len(shape):
            raise fail(node, f"term {term!r} has {len(labels)} labels but its operand has rank {len(shape)}")
        for label, dim in zip(labels, shape):
            sizes[label] = _merge_dims(node, label, sizes.get(label, 1), dim)
    ellipsis = broadcast_shapes(node, *ellipsis_shapes) if ellipsis_shapes else ()
    if not arrow:
        letters = inputs_part.replace(",", "").replace(".", "")
        once = sorted(label for label in set(letters) if letters.count(label) == 1)
        output_part = ("..." if ellipsis_shapes else "") + "".join(once)
    result: list[Dim] = []
    for piece in re.findall(r"\.\.\.|[A-Za-z]", output_part):
        if piece == "...":
            result.extend(ellipsis)
        elif piece not in sizes:
            raise fail(node, f"output label {piece!r} of {equation!r} appears in no input term")
        else:
            result.append(sizes[piece])
    return tuple(result)


def _merge_dims(node, label: str, seen: Dim, dim: Dim) -> Dim:
    if seen == 1:
        return dim
    if dim == 1 or dim == seen:
        return seen
    if isinstance(seen, int) and isinstance(dim, int):
        raise fail(node, f"label {label!r} stands for sizes {seen} and {dim} in different operands")
    return seen if isinstance(seen, int) else dim


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    """Half types (float16, bfloat16) compute in float32; every other type as it is."""
    if dtype in dtypes.FLOAT_TYPES and dtype.itemsize < 4:
        return np.dtype(np.float32)
    return dtype
