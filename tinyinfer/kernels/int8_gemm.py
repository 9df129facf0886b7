"""Int8 GEMM: u8 x s8 -> s32 products with a fused requantization, and QLinearMatMul on it.

Quantized inference multiplies 8-bit integers and adds them up in 32 bits. For a layer
``y = x @ w`` quantized as ``x = s_x (q_x - z_x)``, ``w = s_w (q_w - z_w)``, ``y = s_y (q_y - z_y)``::

    q_y = z_y + M * sum_k (q_x[k] - z_x) (q_w[k] - z_w),        M = s_x s_w / s_y

The sum is exact in int32 (|u8 x s8| <= 32640, so 65 000 products fit), and it splits into
the raw product plus sums that do not depend on the other operand::

    sum (a - z_a)(b - z_b) = sum a b  -  z_b sum a  -  z_a sum b  +  K z_a z_b

so the kernel multiplies the raw bytes and adds the zero-point terms once per row and
column: the weights' sums are computed when the plan is built, the activations' per call.

**The multiply.** AVX-512 VNNI has the instruction made for this: ``vpdpbusd acc, u, s``
multiplies 64 unsigned bytes of ``u`` by 64 signed bytes of ``s`` and adds each group of
four products into one of 16 int32 lanes of ``acc`` — 64 multiply-adds in one instruction,
four times the lanes of a float32 FMA. Numba cannot emit it from Python arithmetic (a loop
of widened products compiles to ``vpmaddwd``/``vpmulld`` chains at best), so, as
:mod:`tinyinfer.kernels.gemm` does for float32, this module gives Numba a few SIMD types
(:data:`u8x64`, :data:`s8x64`, :data:`i32x16`) and intrinsics that call LLVM's
``llvm.x86.avx512.vpdpbusd.512`` directly. On a CPU without VNNI the same intrinsic is
spelled in portable LLVM IR (widen, multiply, add groups of four): same results, slower.

**The algorithm** is the float32 GEMM's (Goto's five loops, packed operands, an MR x NR
register tile), with bytes instead of floats:

* The product computed is ``C (M x N) = S (M x K, signed) @ V (K x N, unsigned)``; ``S``
  is *broadcast* four bytes at a time (one ``k`` group of one row), ``V`` is read as 64-byte
  vectors (4 ``k`` x 16 columns). A u8 x s8 product ``A @ B`` maps on it by flipping the top
  bit of both operands (``a ^ 0x80 = a - 128`` is a signed byte, ``b ^ 0x80 = b + 128`` an
  unsigned one) and of the zero points: ``(a - z_a)`` is unchanged, so is the result. The
  flip costs nothing — it happens while packing.
* Packing: ``S`` in MR-row micro-panels, for each group of 4 ``k``, MR x 4 bytes; ``V`` in
  NR-column micro-panels, for each group of 4 ``k``, NR x 4 bytes. ``K`` is padded to a
  multiple of 4 with zeros (their products are 0).
* Micro-kernel MR x NR = 8 x 32: 16 zmm accumulators of 16 int32; each step over 4 ``k``
  loads 2 vectors of V, broadcasts 8 words of S and issues 16 ``vpdpbusd`` (1024
  multiply-adds for 10 loads).
* Blocking (bytes, not floats): KC = 1024 (a V micro-panel is 32 KiB, in L1), MC = 256
  (an S block is 256 KiB, in L2), NC = 1024 (a V block is 1 MiB).
* With K > KC the partial sums of C wait in an int32 buffer; at the last K block the
  epilogue runs on each tile: zero-point terms, bias, requantization, output zero point,
  saturation (with ReLU: clamp at the zero point), one byte per output.

**Requantization** (:func:`quantize_multiplier`, :func:`requantize_fixed`): the real
multiplier ``M`` (float32, as ONNX Runtime computes ``s_x s_w / s_y``) is written as
``q * 2**-shift`` with ``q`` a Q31 int32 in ``[2**30, 2**31)`` — exactly, since a float32 has a
24-bit mantissa. The kernel computes ``acc * q`` in int64 (exact) and shifts right by
``shift`` with **one rounding, half to even** — the same rounding as the float reference
``rint(acc * M)``, so the result is that of the reference except when the reference's
float64 product itself rounds across a half (never seen in the tests; at most 1 LSB).
gemmlowp / TFLite round twice (:func:`saturating_rounding_doubling_high_mul`, then
:func:`rounding_divide_by_pot`, half away from zero), which can differ by 1 LSB; the naive
twin :func:`qgemm_naive` offers both, the tests bound both.

Kernels registered here (``int8_gemm``): ONNX ``QLinearMatMul`` (uint8 A of rank >= 2, constant
int8 B, per-tensor zero points, per-tensor or per-column ``b_scale``) and ``ai.tinyinfer``
``QLinearGemm`` (the same with ``transB`` and an int32 bias), B flipped and packed once.

:func:`benchmark_int8_gemm` measures it against the float32 packed GEMM and NumPy. On the
machine this was written on (2 cores of an Intel Xeon with AVX-512 VNNI, one thread, timed
by the thread's CPU clock, best of 9), u8 x s8 with B prepacked, requantized to u8:

========  ===========  ==============  =================
size      int8 GOP/s   fp32 GEMM       NumPy (OpenBLAS)
========  ===========  ==============  =================
256^3     156          127 GFLOP/s     139 GFLOP/s
512^3     237          125             135
1024^3    404          109             140
========  ===========  ==============  =================

— 3 to 4 times the float32 GEMM at 1024^3, against a 4x lane advantage; at small sizes the
Python side of a call (zero-point sums of A, the flip, the epilogue's parameters) weighs.
The micro-kernel's loop is 2 ``vmovdqu64``, 8 ``vpbroadcastd`` and 16 ``vpdpbusd`` with no
spill (:func:`micro_kernel_asm`).
"""

from __future__ import annotations

import dataclasses
import statistics
import threading
import time

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ..ir import Node
from .registry import named, output_buffer, register_kernel, writes_into

#: Rows and columns of the register tile; bytes of K per step (one vpdpbusd lane group).
MR, NR, KGROUP = 8, 32, 4
#: int32 lanes in one zmm register.
LANES = 16
#: Cache blocking in bytes of K / rows / columns (see the module docstring).
KC, MC, NC = 1024, 256, 1024
#: Below this many multiply-adds one thread is faster than waking the others.
PARALLEL_THRESHOLD = 1 << 18
#: Rates for the cost hints (2 threads, int8 multiply-adds x 2 per second); ratios only.
INT8_OPS_PER_SECOND = 500e9
CALL_SECONDS = 10e-6

#: Whether this CPU has AVX-512 VNNI (else the dot product is spelled in portable IR).
HAS_VNNI = bool(llvm_binding.get_host_cpu_features().get("avx512vnni", False))


# ============================================================================ requantization
def quantize_multiplier(multiplier) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers (float32, any shape) as ``(q, shift)``: ``M = q * 2**-shift`` exactly.

    ``q`` is a Q31 fixed-point number in ``[2**30, 2**31)`` (int64 array), ``shift`` the
    total right shift (31 minus the binary exponent), in ``[1, 63]``. A multiplier too small
    to move any int32 accumulator past one half becomes ``q = 0``; one of ``2**30`` or more
    is refused (no real layer has it).
    """
    m = np.asarray(multiplier, dtype=np.float32).astype(np.float64)
    if np.any(m < 0) or not np.all(np.isfinite(m)):
        raise ValueError("requantization multipliers must be finite and >= 0")
    fraction, exponent = np.frexp(m)  # m = fraction * 2**exponent, fraction in [0.5, 1)
    q = np.rint(np.ldexp(fraction, 31)).astype(np.int64)
    shift = (31 - exponent).astype(np.int64)
    if np.any(shift < 1):
        raise ValueError("requantization multiplier >= 2**30 is not supported")
    tiny = (shift > 63) | (q == 0)
    q = np.where(tiny, 0, q)
    shift = np.where(tiny, 31, shift)
    return q, shift


@numba.njit(cache=True, inline="always")
def requantize_fixed(acc, q, shift):
    """``round_half_even(acc * q / 2**shift)`` with int64 arithmetic (exact, one rounding)."""
    product = np.int64(acc) * q
    result = product >> shift
    rest = product - (result << shift)
    half = np.int64(1) << (shift - 1)
    if rest > half or (rest == half and (result & 1) == 1):
        result += 1
    return result


@numba.njit(cache=True)
def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp's ``SaturatingRoundingDoublingHighMul``: ``round(a * b / 2**31)`` on int32 (ties away from 0)."""
    if a == b and a == -2147483648:
        return np.int64(2147483647)
    product = np.int64(a) * np.int64(b)
    nudge = np.int64(1 << 30) if product >= 0 else np.int64(1 - (1 << 30))
    total = product + nudge
    # C's int64 division truncates toward zero
    quotient = total // np.int64(1 << 31)
    if total < 0 and quotient * np.int64(1 << 31) != total:
        quotient += 1
    return quotient


@numba.njit(cache=True)
def rounding_divide_by_pot(x, exponent):
    """gemmlowp's ``RoundingDivideByPOT``: ``x / 2**exponent`` rounded half away from zero."""
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


# ============================================================================ the naive twin
def qgemm_naive(a, a_zero, b, b_zero, multiplier, y_zero, bias=None, relu=False, rounding="exact"):
    """``y = saturate(requantize(sum_k (a - a_zero)(b - b_zero) + bias) + y_zero)``, plainly.

    ``a`` (M x K) uint8, ``b`` (K x N) int8; ``multiplier`` a scalar or one float32 per
    column; ``bias`` int32 per column; ``y_zero`` a uint8 or int8 scalar (its dtype is the
    output's). ``rounding`` is ``"exact"`` (Q31 multiplier, one rounding half to even) or
    ``"gemmlowp"`` (SaturatingRoundingDoublingHighMul then RoundingDivideByPOT).
    """
    acc = (a.astype(np.int64) - int(a_zero)) @ (b.astype(np.int64) - np.asarray(b_zero, np.int64))
    if bias is not None:
        acc = acc + np.asarray(bias, np.int64)
    acc = acc.astype(np.int32)
    q, shift = quantize_multiplier(np.broadcast_to(np.asarray(multiplier, np.float32), (acc.shape[1],)))
    y_zero = np.asarray(y_zero)
    out = np.empty(acc.shape, np.int64)
    for j in range(acc.shape[1]):
        for i in range(acc.shape[0]):
            if rounding == "exact":
                out[i, j] = requantize_fixed(np.int64(acc[i, j]), q[j], shift[j])
            else:
                high = saturating_rounding_doubling_high_mul(np.int64(acc[i, j]), q[j])
                out[i, j] = rounding_divide_by_pot(high, shift[j] - 31)
    info = np.iinfo(y_zero.dtype)
    low = int(y_zero) if relu else info.min
    return np.clip(out + int(y_zero), low, info.max).astype(y_zero.dtype)


# ============================================================================ Numba: SIMD types
class _Bytes64(types.Type):
    """64 bytes in one zmm register (LLVM ``<64 x i8>``), unsigned or signed."""

    def __init__(self, signed):
        self.signed = signed
        super().__init__(name="s8x64" if signed else "u8x64")


class _Int32x16(types.Type):
    """Sixteen int32 lanes (LLVM ``<16 x i32>``): a row of accumulators."""

    def __init__(self):
        super().__init__(name="i32x16")


u8x64, s8x64, i32x16 = _Bytes64(False), _Bytes64(True), _Int32x16()
_V8 = llvm_ir.VectorType(llvm_ir.IntType(8), 64)
_V32 = llvm_ir.VectorType(llvm_ir.IntType(32), LANES)
_I32 = llvm_ir.IntType(32)


@register_model(_Bytes64)
class _Bytes64Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V8)


@register_model(_Int32x16)
class _Int32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V32)


def _element_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


def _load_bytes(signed):
    @intrinsic
    def load(typingctx, array, index):
        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], *args)
            return builder.load(builder.bitcast(pointer, _V8.as_pointer()), align=1)

        return (s8x64 if signed else u8x64)(array, index), codegen

    return load


def _broadcast_word(signed):
    @intrinsic
    def broadcast(typingctx, array, index):
        def codegen(context, builder, signature, args):
            pointer = _element_pointer(context, builder, signature.args[0], *args)
            word = builder.load(builder.bitcast(pointer, _I32.as_pointer()), align=1)
            one = builder.insert_element(llvm_ir.Constant(_V32, llvm_ir.Undefined), word, llvm_ir.Constant(_I32, 0))
            zeros = llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), None)
            splat = builder.shuffle_vector(one, llvm_ir.Constant(_V32, llvm_ir.Undefined), zeros)
            return builder.bitcast(splat, _V8)

        return (s8x64 if signed else u8x64)(array, index), codegen

    return broadcast


#: ``array[index:index+64]`` of a uint8 array as 64 unsigned / signed bytes (``vmovdqu8``).
load_u8x64, load_s8x64 = _load_bytes(False), _load_bytes(True)
#: The 4 bytes ``array[index:index+4]`` repeated 16 times (``vpbroadcastd``).
broadcast_u8x4, broadcast_s8x4 = _broadcast_word(False), _broadcast_word(True)


def _portable_dot(builder, acc, unsigned, signed):
    """vpdpbusd's arithmetic in plain LLVM IR (for CPUs without VNNI)."""
    wide = llvm_ir.VectorType(_I32, 64)
    products = builder.mul(builder.zext(unsigned, wide), builder.sext(signed, wide))
    for e in range(KGROUP):
        every_fourth = llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), [4 * i + e for i in range(LANES)])
        lane = builder.shuffle_vector(products, llvm_ir.Constant(wide, llvm_ir.Undefined), every_fourth)
        acc = builder.add(acc, lane)
    return acc


@intrinsic
def dot4(typingctx, acc, x, y):
    """``acc[i] += sum_e u[4i+e] * s[4i+e]`` for the unsigned and the signed one of x, y (``vpdpbusd``)."""
    if acc != i32x16 or not (isinstance(x, _Bytes64) and isinstance(y, _Bytes64)) or x.signed == y.signed:
        return None
    swap = x.signed

    def codegen(context, builder, signature, args):
        total, unsigned, signed = args
        if swap:
            unsigned, signed = signed, unsigned
        if not HAS_VNNI:
            return _portable_dot(builder, total, unsigned, signed)
        function = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(_V32, [_V32, _V8, _V8]), "llvm.x86.avx512.vpdpbusd.512")
        return builder.call(function, [total, unsigned, signed])

    return i32x16(acc, x, y), codegen


@intrinsic
def i32x16_zero(typingctx):
    """Sixteen int32 zeros."""

    def codegen(context, builder, signature, args):
        return llvm_ir.Constant(_V32, None)

    return i32x16(), codegen


@intrinsic
def store_i32x16(typingctx, array, index, value):
    """``array[index:index+16] = value`` for a 1-D int32 array (unaligned store)."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], builder.bitcast(pointer, _V32.as_pointer()), align=4)
        return context.get_dummy_value()

    return types.none(array, index, i32x16), codegen


_V64 = llvm_ir.VectorType(llvm_ir.IntType(64), LANES)
_MASK = llvm_ir.VectorType(llvm_ir.IntType(1), LANES)


class _Int64x16(types.Type):
    """Sixteen int64 lanes (LLVM ``<16 x i64>``, two zmm registers): the requantization's products."""

    def __init__(self):
        super().__init__(name="i64x16")


i64x16 = _Int64x16()


@register_model(_Int64x16)
class _Int64x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _V64)


def _splat(builder, value, vector_type):
    one = builder.insert_element(llvm_ir.Constant(vector_type, llvm_ir.Undefined), value, llvm_ir.Constant(_I32, 0))
    zeros = llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), None)
    return builder.shuffle_vector(one, llvm_ir.Constant(vector_type, llvm_ir.Undefined), zeros)


def _first_lanes(builder, count):
    """The mask ``lane < count``."""
    count = builder.trunc(count, _I32) if count.type.width > 32 else count
    lanes = llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, count, lanes.type))


def _masked_load(builder, pointer, vector_type, mask, align):
    name = f"llvm.masked.load.v{LANES}i{vector_type.element.width}.p0"
    load = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(vector_type, [vector_type.as_pointer(), _I32, _MASK, vector_type]), name)
    return builder.call(load, [pointer, llvm_ir.Constant(_I32, align), mask, llvm_ir.Constant(vector_type, None)])


@intrinsic
def load_i32x16_first(typingctx, array, index, count):
    """``array[index:index+count]`` of an int32 array and zeros after (masked: reads nothing past count)."""

    def codegen(context, builder, signature, args):
        pointer = builder.bitcast(_element_pointer(context, builder, signature.args[0], args[0], args[1]),
                                  _V32.as_pointer())
        return _masked_load(builder, pointer, _V32, _first_lanes(builder, args[2]), 4)

    return i32x16(array, index, count), codegen


@intrinsic
def load_i64x16_first(typingctx, array, index, count):
    """``array[index:index+count]`` of an int64 array and zeros after."""

    def codegen(context, builder, signature, args):
        pointer = builder.bitcast(_element_pointer(context, builder, signature.args[0], args[0], args[1]),
                                  _V64.as_pointer())
        return _masked_load(builder, pointer, _V64, _first_lanes(builder, args[2]), 8)

    return i64x16(array, index, count), codegen


@intrinsic
def splat_i32x16(typingctx, value):
    """An integer scalar in all 16 int32 lanes."""

    def codegen(context, builder, signature, args):
        return _splat(builder, context.cast(builder, args[0], signature.args[0], types.int32), _V32)

    return i32x16(value), codegen


@intrinsic
def splat_i64x16(typingctx, value):
    """An integer scalar in all 16 int64 lanes."""

    def codegen(context, builder, signature, args):
        return _splat(builder, context.cast(builder, args[0], signature.args[0], types.int64), _V64)

    return i64x16(value), codegen


@intrinsic
def add_i32x16(typingctx, x, y):
    """``x + y`` lane by lane (wrapping)."""

    def codegen(context, builder, signature, args):
        return builder.add(*args)

    return i32x16(i32x16, i32x16), codegen


@intrinsic
def requantize_store(typingctx, y, index, count, acc, q, shift, zero, low, high):
    """``y[index:index+count] = clamp(round_half_even(acc * q >> shift) + zero, low, high)`` as bytes.

    16 lanes at once: the products in int64 — ``q < 2**31`` is an int32 too, so a widening
    32 x 32 -> 64-bit multiply does (``vpmuldq``, one instruction, where an int64 product
    takes three) — then :func:`requantize_fixed`'s rounding without a branch: with
    ``P = acc * q`` and ``s = shift``, ``round_half_even(P / 2**s) = (P + 2**(s-1) - 1 + odd) >> s``
    where ``odd`` is the lowest bit of ``P >> s`` (a remainder above one half carries, one below
    does not, exactly one half carries when the quotient is odd). No overflow: ``|P| < 2**62``
    and ``2**(s-1) <= 2**62``. Last, a masked byte store of ``count`` lanes.
    """

    def codegen(context, builder, signature, args):
        y_arg, index, count, acc, q, shift, zero, low, high = args
        pointer = _element_pointer(context, builder, signature.args[0], y_arg, index)
        wide = [_splat(builder, context.cast(builder, value, ty, types.int64), _V64)
                for value, ty in zip((zero, low, high), signature.args[6:9])]
        product = builder.mul(builder.sext(acc, _V64), builder.sext(builder.trunc(q, _V32), _V64))
        one = llvm_ir.Constant(_V64, [1] * LANES)
        below_half = builder.sub(builder.shl(one, builder.sub(shift, one)), one)
        odd = builder.and_(builder.ashr(product, shift), one)
        result = builder.ashr(builder.add(builder.add(product, below_half), odd), shift)
        result = builder.add(result, wide[0])
        result = builder.select(builder.icmp_signed("<", result, wide[1]), wide[1], result)
        result = builder.select(builder.icmp_signed(">", result, wide[2]), wide[2], result)
        vector8 = llvm_ir.VectorType(llvm_ir.IntType(8), LANES)
        store = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [vector8, vector8.as_pointer(), _I32, _MASK]),
            f"llvm.masked.store.v{LANES}i8.p0")
        builder.call(store, [builder.trunc(result, vector8), builder.bitcast(pointer, vector8.as_pointer()),
                             llvm_ir.Constant(_I32, 1), _first_lanes(builder, count)])
        return context.get_dummy_value()

    return types.none(y, index, count, i32x16, i64x16, i64x16, zero, low, high), codegen


def _masked_store_first(context, builder, signature, args, vector_type, name):
    """``array[index:index+count] = value[:count]`` (``args``: array, index, value, count), 4-byte lanes."""
    pointer = builder.bitcast(_element_pointer(context, builder, signature.args[0], args[0], args[1]),
                              vector_type.as_pointer())
    store = cgutils.get_or_insert_function(
        builder.module, llvm_ir.FunctionType(llvm_ir.VoidType(), [vector_type, vector_type.as_pointer(), _I32, _MASK]),
        f"llvm.masked.store.v{LANES}{name}.p0")
    builder.call(store, [args[2], pointer, llvm_ir.Constant(_I32, 4), _first_lanes(builder, args[3])])
    return context.get_dummy_value()


@intrinsic
def store_i32x16_first(typingctx, array, index, value, count):
    """``array[index:index+count] = value[:count]`` for an int32 array (masked)."""

    def codegen(context, builder, signature, args):
        return _masked_store_first(context, builder, signature, args, _V32, "i32")

    return types.none(array, index, i32x16, count), codegen


@intrinsic
def interleave4x16(typingctx, src, at, ld, out, out_at):
    """Pack 4 rows x 16 bytes of ``src`` (row ``e`` at ``at + e * ld``) as 16 columns x 4 bytes at ``out[out_at]``.

    Byte j of row e goes to ``out[out_at + 4 j + e]``: four 16-byte loads, one byte
    permutation (``vpermb``), one 64-byte store — the inner step of V's packing.
    """

    def codegen(context, builder, signature, args):
        src_arg, at_arg, ld_arg, out_arg, out_at_arg = args
        v16 = llvm_ir.VectorType(llvm_ir.IntType(8), 16)
        rows = []
        for e in range(KGROUP):
            index = builder.add(at_arg, builder.mul(ld_arg, context.get_constant(types.intp, e)))
            pointer = _element_pointer(context, builder, signature.args[0], src_arg, index)
            rows.append(builder.load(builder.bitcast(pointer, v16.as_pointer()), align=1))
        v32 = llvm_ir.VectorType(llvm_ir.IntType(8), 32)
        mask32 = llvm_ir.Constant(llvm_ir.VectorType(_I32, 32), list(range(32)))
        mask64 = llvm_ir.Constant(llvm_ir.VectorType(_I32, 64), list(range(64)))
        low = builder.shuffle_vector(rows[0], rows[1], mask32)
        high = builder.shuffle_vector(rows[2], rows[3], mask32)
        joined = builder.shuffle_vector(low, high, mask64)
        order = llvm_ir.Constant(llvm_ir.VectorType(_I32, 64), [e * 16 + j for j in range(16) for e in range(KGROUP)])
        packed = builder.shuffle_vector(joined, llvm_ir.Constant(v32 if False else _V8, llvm_ir.Undefined), order)
        pointer = _element_pointer(context, builder, signature.args[3], out_arg, out_at_arg)
        builder.store(packed, builder.bitcast(pointer, _V8.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(src, at, ld, out, out_at), codegen


@intrinsic
def copy_word(typingctx, src, at, out, out_at):
    """``out[out_at:out_at+4] = src[at:at+4]`` as one unaligned 32-bit move."""

    def codegen(context, builder, signature, args):
        source = _element_pointer(context, builder, signature.args[0], args[0], args[1])
        target = _element_pointer(context, builder, signature.args[2], args[2], args[3])
        word = builder.load(builder.bitcast(source, _I32.as_pointer()), align=1)
        builder.store(word, builder.bitcast(target, _I32.as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(src, at, out, out_at), codegen


class _Float32x16(types.Type):
    """Sixteen float32 lanes (LLVM ``<16 x float>``): the depthwise kernel's exact integer sums."""

    def __init__(self):
        super().__init__(name="int8.f32x16")


f32x16 = _Float32x16()
_VF = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)


@register_model(_Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VF)


@intrinsic
def f32x16_zero(typingctx):
    """Sixteen float32 zeros."""

    def codegen(context, builder, signature, args):
        return llvm_ir.Constant(_VF, None)

    return f32x16(), codegen


@intrinsic
def load_f32x16(typingctx, array, index):
    """``array[index:index+16]`` of a float32 array (unaligned)."""

    def codegen(context, builder, signature, args):
        pointer = _element_pointer(context, builder, signature.args[0], *args)
        return builder.load(builder.bitcast(pointer, _VF.as_pointer()), align=4)

    return f32x16(array, index), codegen


@intrinsic
def store_f32x16_first(typingctx, array, index, value, count):
    """``array[index:index+count] = value[:count]`` for a float32 array (masked)."""

    def codegen(context, builder, signature, args):
        return _masked_store_first(context, builder, signature, args, _VF, "f32")

    return types.none(array, index, f32x16, count), codegen


@intrinsic
def fma_f32x16(typingctx, x, scale, acc):
    """``x * scale + acc`` lane by lane (``scale`` a float32 scalar; one ``vfmadd``)."""

    def codegen(context, builder, signature, args):
        splat = _splat(builder, context.cast(builder, args[1], signature.args[1], types.float32), _VF)
        fma = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(_VF, [_VF] * 3),
                                             f"llvm.fma.v{LANES}f32")
        return builder.call(fma, [args[0], splat, args[2]])

    return f32x16(f32x16, scale, f32x16), codegen


@intrinsic
def f32x16_to_i32x16(typingctx, x):
    """Float32 lanes holding integers -> int32 lanes (``vcvttps2dq``)."""

    def codegen(context, builder, signature, args):
        return builder.fptosi(args[0], _V32)

    return i32x16(f32x16), codegen


# ============================================================================ packed operands
@dataclasses.dataclass(frozen=True)
class PackedInt8:
    """An operand packed once for the int8 GEMM.

    ``side`` is ``"s"`` (the signed, broadcast operand, M x K, MR-row micro-panels) or
    ``"v"`` (the unsigned, vector operand, K x N, NR-column micro-panels); ``rows`` x
    ``cols`` its logical shape; ``sums`` its row sums (side s) or column sums (side v) over
    K, of the packed (flipped) values, int32.
    """

    data: np.ndarray  # uint8, the bytes of the packed panels
    side: str
    rows: int
    cols: int
    sums: np.ndarray

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def pack_s(matrix: np.ndarray, flip: bool = False) -> PackedInt8:
    """Pack an M x K int8 matrix (or uint8 with ``flip``: stored as ``a - 128``) as the S operand."""
    matrix = np.ascontiguousarray(matrix)
    m, k = matrix.shape
    data = np.empty(_round_up(m, MR) * _round_up(k, KGROUP), np.uint8)
    flip_bits = 0x80 if flip else 0
    _pack_s_all(_writable_bytes(matrix), k, m, k, flip_bits, data)
    values = matrix.astype(np.int32) - (128 if flip else 0)
    return PackedInt8(data, "s", m, k, values.sum(axis=1, dtype=np.int32))


def pack_v(matrix: np.ndarray, flip: bool = False) -> PackedInt8:
    """Pack a K x N uint8 matrix (or int8 with ``flip``: stored as ``b + 128``) as the V operand."""
    matrix = np.ascontiguousarray(matrix)
    k, n = matrix.shape
    data = np.empty(_round_up(k, KGROUP) * _round_up(n, NR), np.uint8)
    flip_bits = 0x80 if flip else 0
    _pack_v_all(_writable_bytes(matrix), n, k, n, flip_bits, data)
    values = matrix.astype(np.int32) + (128 if flip else 0)
    return PackedInt8(data, "v", k, n, values.sum(axis=0, dtype=np.int32))


def _writable_bytes(matrix: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous matrix, as a writable flat uint8 array.

    Weights are often read-only (initializers); Numba compiles a read-only array as another
    type, so copying the few bytes once saves a second compilation of the packing code.
    """
    flat = matrix.view(np.uint8).reshape(-1)
    return flat if flat.flags.writeable else flat.copy()


# ============================================================================ the epilogue's parameters
@dataclasses.dataclass
class Requantization:
    """What the epilogue adds and how it rounds, per row (``M``) or per column (``N``).

    ``acc + row_offset[m] + col_offset[n] (+ row_factor[m] * col_factor[n])`` is requantized
    with ``(q, shift)`` of row m (``per_column=False``) or column n, plus ``zero_point``, and
    clamped to ``[low, high]`` (the output type's range, ``low = zero_point`` with ReLU).
    """

    row_offset: np.ndarray  # int32 (M,)
    col_offset: np.ndarray  # int32 (N,)
    q: np.ndarray  # int64
    shift: np.ndarray  # int64
    per_column: bool
    zero_point: int
    low: int
    high: int
    row_factor: np.ndarray | None = None  # int32 (M,): a rank-1 term, for per-channel zero points
    col_factor: np.ndarray | None = None  # int32 (N,)
    residual: "ResidualAdd | None" = None  # a quantized tensor added after requantizing


@dataclasses.dataclass
class ResidualAdd:
    """A residual join in the epilogue: ``y = Q(DQ(c) + DQ(z))`` on each value c just requantized.

    ``z`` holds the residual's bytes laid out as the output (same indices); ``integers`` are
    ``(c_flip, c_base, z_flip, z_base, y_zero, low, high)`` and ``scales`` ``(c_s, z_s, y_s)``,
    with an 8-bit value read as ``(byte ^ flip) - base`` (int8: flip 0x80, base zero + 128),
    the float32 arithmetic of ``ai.tinyinfer:QLinearAdd`` (bit-identical to its reference).
    """

    z: np.ndarray
    integers: np.ndarray  # int32 (7,)
    scales: np.ndarray  # float32 (3,)

    @staticmethod
    def of(z: np.ndarray, c_dtype, c_scale, c_zero, z_scale, z_zero, y_dtype, y_scale, y_zero) -> "ResidualAdd":
        def flip_and_base(dtype, zero):
            signed = np.dtype(dtype) == np.int8
            return (0x80, int(zero) + 128) if signed else (0, int(zero))

        info = np.iinfo(y_dtype)
        integers = np.array([*flip_and_base(c_dtype, c_zero), *flip_and_base(z.dtype, z_zero), int(y_zero),
                             info.min, info.max], np.int32)
        scales = np.array([c_scale, z_scale, y_scale], np.float32)
        return ResidualAdd(np.ascontiguousarray(z).reshape(-1).view(np.uint8), integers, scales)


_EMPTY32 = np.zeros(1, np.int32)
NO_RESIDUAL = ResidualAdd(np.zeros(1, np.uint8), np.zeros(7, np.int32), np.ones(3, np.float32))


# ============================================================================ the driver
def gemm_s8u8(s, v, requant: Requantization, out: np.ndarray | None = None, *, threads: int | None = None,
              out_strides: tuple[int, int] | None = None) -> np.ndarray:
    """``out = requantize(S @ V + terms)`` as bytes: the int8 GEMM on packed or plain operands.

    ``s``: a :class:`PackedInt8` of side "s" or an M x K int8 matrix; ``v``: side "v" or a
    K x N uint8 matrix. ``out`` is a uint8 or int8 array of M x N elements (written through
    a uint8 view); ``out_strides`` (row, column, in elements) lets a caller write the
    transpose or a slice of a bigger tensor.
    """
    if not isinstance(s, PackedInt8):
        s = np.ascontiguousarray(s)
        m, k = s.shape
        s_data, s_ld, s_packed = s.view(np.uint8).reshape(-1), k, False
    else:
        m, k, s_data, s_ld, s_packed = s.rows, s.cols, s.data, 0, True
    if not isinstance(v, PackedInt8):
        v = np.ascontiguousarray(v)
        k_v, n = v.shape
        v_data, v_ld, v_packed = v.view(np.uint8).reshape(-1), n, False
    else:
        k_v, n, v_data, v_ld, v_packed = v.rows, v.cols, v.data, 0, True
    if k != k_v:
        raise ValueError(f"cannot multiply S ({m} x {k}) by V ({k_v} x {n})")
    if out is None:
        out = np.empty((m, n), np.uint8)
    y = out.reshape(-1).view(np.uint8)
    row_stride, col_stride = out_strides or (n, 1)
    r = requant
    rank1 = r.row_factor is not None
    residual = r.residual or NO_RESIDUAL
    if m and n:
        threads = numba.get_num_threads() if threads is None else threads
        parallel = threads > 1 and m * n * k >= PARALLEL_THRESHOLD
        mt, nt = plan_tasks(m, n, threads if parallel else 1)
        tasks = _cdiv(m, mt) * _cdiv(n, nt)
        work = _scratch("work", np.uint8, tasks * (MC * KC + KC * NC))
        tiles = _scratch("tiles", np.int32, tasks * MR * NR)
        partial = _scratch("partial", np.int32, m * n if k > KC else 1)
        args = (s_data, s_ld, s_packed, v_data, v_ld, v_packed, y, row_stride, col_stride, m, n, k, mt, nt,
                work, tiles, partial, r.row_offset, r.col_offset,
                r.row_factor if rank1 else _EMPTY32, r.col_factor if rank1 else _EMPTY32, rank1,
                r.q, r.shift, r.per_column, r.zero_point, r.low, r.high, residual.z, r.residual is not None,
                residual.integers, residual.scales)
        # One compiled driver (a serial twin would double the compile time): with one task
        # the loop runs on one thread of the pool.
        _gemm_parallel(*args)
    return out


def plan_tasks(m: int, n: int, threads: int) -> tuple[int, int]:
    """One block of C per thread: cut the larger of M (in MR rows) and N (in NR columns)."""
    if m >= n and _cdiv(m, MR) >= threads:
        return _round_up(_cdiv(m, threads), MR), n
    return m, _round_up(_cdiv(n, min(threads, _cdiv(n, NR))), NR)


_SCRATCH = threading.local()


def _scratch(name: str, dtype, size: int) -> np.ndarray:
    """A work buffer reused by later calls on the same Python thread (it only grows)."""
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(max(size, 1), dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer[:size]


# ============================================================================ u8 x s8 products (QLinearMatMul)
def requantization_for_product(a_zero: int, b_zero: int, b_sums: np.ndarray, a_rows: np.ndarray, k: int,
                               multiplier, y_zero: np.ndarray, bias=None, relu: bool = False) -> Requantization:
    """The epilogue of ``A (u8) @ B (s8)`` computed as ``flip(A) @ flip(B)`` (module docstring).

    ``b_sums``: column sums of ``B + 128``; ``a_rows``: row sums of ``A - 128``; ``bias``
    int32 per column (or None); ``multiplier`` float32, a scalar or one per column, or
    its ``(q, shift)`` from :func:`quantize_multiplier`.
    """
    zs, zv = int(a_zero) - 128, int(b_zero) + 128  # zero points of the flipped operands
    row_offset = (-zv * a_rows.astype(np.int64) + k * zs * zv).astype(np.int32)
    col_offset = -zs * b_sums.astype(np.int64)
    if bias is not None:
        col_offset = col_offset + np.asarray(bias, np.int64).reshape(-1)
    if isinstance(multiplier, tuple):  # (q, shift) from quantize_multiplier, computed once by a builder
        q, shift = (np.asarray(v, np.int64).reshape(-1) for v in multiplier)
    else:
        q, shift = (v.reshape(-1) for v in quantize_multiplier(multiplier))
    per_column = q.size > 1
    if not per_column:  # one per row, as the epilogue indexes it
        q, shift = np.full(a_rows.shape[0], q[0]), np.full(a_rows.shape[0], shift[0])
    return Requantization(row_offset, col_offset.astype(np.int32), q, shift, per_column,
                          *_output_range(y_zero, relu))


def _output_range(y_zero, relu: bool) -> tuple[int, int, int]:
    y_zero = np.asarray(y_zero)
    info = np.iinfo(y_zero.dtype)
    zero = int(y_zero.reshape(-1)[0])
    return zero, (zero if relu else int(info.min)), int(info.max)


def qgemm(a: np.ndarray, a_zero, b, b_zero, multiplier, y_zero, *, bias=None, relu: bool = False,
          out: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """``y = saturate(requantize((a - a_zero) @ (b - b_zero) + bias) + y_zero)``: u8 x s8 -> u8/s8.

    ``a`` (M x K) uint8; ``b`` (K x N) int8 or a :class:`PackedInt8` from ``pack_v(b, flip=True)``
    (a constant B is packed once); ``b_zero`` per tensor; ``multiplier`` float32 per tensor or
    per column (``s_a s_b / s_y``) or its ``(q, shift)`` from :func:`quantize_multiplier`;
    ``y_zero``'s dtype (uint8 or int8) is the output's.
    """
    a = np.ascontiguousarray(a, dtype=np.uint8)
    packed_b = b if isinstance(b, PackedInt8) else pack_v(np.asarray(b, np.int8), flip=True)
    m, k = a.shape
    a_rows = a.sum(axis=1, dtype=np.int32) - 128 * k
    requant = requantization_for_product(a_zero, b_zero, packed_b.sums, a_rows, k, multiplier, y_zero, bias, relu)
    y = np.empty((m, packed_b.cols), np.asarray(y_zero).dtype) if out is None else out
    flipped = (a ^ np.uint8(0x80)).view(np.int8)
    return gemm_s8u8(flipped, packed_b, requant, out=y, threads=threads)


# ============================================================================ QLinearMatMul kernel
def _supports_qlinear_matmul(node: Node, inputs: list) -> bool:
    """uint8 A (rank >= 2), constant int8 2-D B, per-tensor zero points, per-tensor or per-column b_scale."""
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = inputs
    if node.domain != "" or a.dtype != np.uint8 or b.dtype != np.int8 or b.const is None:
        return False
    if a.shape is None or len(a.shape) < 2 or len(b.shape) != 2 or not all(isinstance(d, int) for d in a.shape):
        return False
    if y_zp is None or y_zp.dtype not in (np.uint8, np.int8):
        return False
    for value in (a_s, a_zp, y_s, y_zp):
        if value.const is None or value.const.size != 1:
            return False
    if b_zp is None or b_zp.const is None or b_s.const is None:
        return False
    if np.unique(np.asarray(b_zp.const)).size != 1 or b_s.const.size not in (1, b.shape[1]):
        return False
    multiplier = np.float32(a_s.const) * b_s.const.astype(np.float32) / np.float32(y_s.const)
    return bool(np.all(multiplier < 2.0 ** 30))


def _cost_qlinear_matmul(node: Node, inputs: list) -> float:
    a, b = inputs[0].shape, inputs[3].shape
    m = int(np.prod(a[:-1]))
    return 2.0 * _round_up(m, MR) * _round_up(b[1], NR) * b[0] / INT8_OPS_PER_SECOND + CALL_SECONDS


@register_kernel("QLinearMatMul", "int8_gemm", supports=_supports_qlinear_matmul, cost=_cost_qlinear_matmul)
def build_qlinear_matmul(node: Node, inputs: list, outputs: list):
    """Packed u8 x s8 GEMM with requantization (accelerates QLinearMatMul): constant int8 B.

    B is flipped to unsigned and packed here, its column sums with it; A's rows are one
    product (batch dims of A stacked).
    """
    a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (v.const for v in inputs[1:])
    packed_b = pack_v(b, flip=True)
    multiplier = quantize_multiplier(np.float32(a_s) * np.asarray(b_s, np.float32).reshape(-1) / np.float32(y_s))
    a_zero, b_zero = int(np.asarray(a_zp).reshape(-1)[0]), int(np.asarray(b_zp).reshape(-1)[0])
    y_zero = np.asarray(y_zp).reshape(())

    def int8_gemm(node, a, *rest, out=None):
        rows = a.reshape(-1, a.shape[-1])
        y = output_buffer(out, (*a.shape[:-1], packed_b.cols), y_zero.dtype)
        qgemm(rows, a_zero, packed_b, b_zero, multiplier, y_zero, out=y.reshape(rows.shape[0], packed_b.cols))
        return y

    return writes_into(named(int8_gemm, "int8_gemm"))


# ============================================================================ QLinearGemm kernel
def _supports_qlinear_gemm(node: Node, inputs: list) -> bool:
    """uint8 A (M x K), constant int8 B (transB or not), uniform b_zp, per-tensor or per-column b_s, int32 C."""
    if node.domain != "ai.tinyinfer" or len(inputs) not in (8, 9):
        return False
    a, a_s, a_zp, b, b_s, b_zp = inputs[:6]
    bias, y_s, y_zp = (inputs[6], *inputs[7:]) if len(inputs) == 9 else (None, *inputs[6:])
    if a.dtype != np.uint8 or b.dtype != np.int8 or b.const is None or b.const.ndim != 2:
        return False
    if a.shape is None or len(a.shape) != 2 or not all(isinstance(d, int) for d in a.shape):
        return False
    if y_zp is None or y_zp.dtype not in (np.uint8, np.int8):
        return False
    if not all(v is not None and v.const is not None and v.const.size == 1 for v in (a_s, a_zp, y_s, y_zp)):
        return False
    n = b.const.shape[0] if node.attrs["transB"] else b.const.shape[1]
    if b_zp is None or b_zp.const is None or np.unique(np.asarray(b_zp.const)).size != 1:
        return False
    if b_s.const is None or b_s.const.size not in (1, n):
        return False
    if bias is not None and (bias.const is None or bias.dtype != np.int32 or bias.const.size != n):
        return False
    multiplier = np.float32(a_s.const) * b_s.const.astype(np.float32) / np.float32(y_s.const)
    return bool(np.all(multiplier < 2.0 ** 30))


def _cost_qlinear_gemm(node: Node, inputs: list) -> float:
    (m, k), b = inputs[0].shape, inputs[3].const.shape
    n = b[0] if node.attrs["transB"] else b[1]
    return 2.0 * _round_up(m, MR) * _round_up(n, NR) * k / INT8_OPS_PER_SECOND + CALL_SECONDS


@register_kernel("QLinearGemm", "int8_gemm", domain="ai.tinyinfer", supports=_supports_qlinear_gemm,
                 cost=_cost_qlinear_gemm)
def build_qlinear_gemm(node: Node, inputs: list, outputs: list):
    """Packed u8 x s8 GEMM with bias and requantization (accelerates ai.tinyinfer:QLinearGemm): constant int8 B."""
    a_s, a_zp, b, b_s, b_zp = (v.const for v in inputs[1:6])
    bias, y_s, y_zp = (inputs[6], *inputs[7:]) if len(inputs) == 9 else (None, *inputs[6:])
    weights = b.T if node.attrs["transB"] else b
    packed_b = pack_v(weights, flip=True)
    multiplier = quantize_multiplier(np.float32(a_s) * np.asarray(b_s, np.float32).reshape(-1) / np.float32(y_s.const))
    a_zero, b_zero = int(np.asarray(a_zp).reshape(-1)[0]), int(np.asarray(b_zp).reshape(-1)[0])
    y_zero = np.asarray(y_zp.const).reshape(())
    bias_values = None if bias is None else np.asarray(bias.const, np.int32).reshape(-1)

    def int8_gemm(node, a, *rest, out=None):
        y = output_buffer(out, (a.shape[0], packed_b.cols), y_zero.dtype)
        return qgemm(a, a_zero, packed_b, b_zero, multiplier, y_zero, bias=bias_values, out=y)

    return writes_into(named(int8_gemm, "int8_gemm"))


# ============================================================================ benchmark
def benchmark_int8_gemm(sizes=(256, 512, 1024), repeats: int = 5, seed: int = 0, threads: int | None = None,
                        clock: str = "wall") -> list[dict]:
    """GOP/s (``2 M N K / seconds``) of the int8 GEMM next to the float32 GEMM and NumPy's BLAS.

    One row per square size: ``int8`` (u8 x s8 with B prepacked, requantized to u8),
    ``fp32`` (:func:`tinyinfer.kernels.gemm.gemm`, B prepacked), ``blas`` (``np.matmul``
    float32), the best of ``repeats`` runs each, interleaved; ``threads`` limits all three.
    """
    from . import gemm as fp32
    now = time.thread_time if clock == "cpu" else time.perf_counter
    old_threads = numba.get_num_threads()
    rows = []
    try:
        if threads:
            numba.set_num_threads(threads)
        with fp32._blas_threads(threads):
            rng = np.random.default_rng(seed)
            for size in sizes:
                m = n = k = size
                a8 = rng.integers(0, 256, (m, k), dtype=np.uint8)
                b8 = rng.integers(-127, 128, (k, n), dtype=np.int8)
                packed8 = pack_v(b8, flip=True)
                af, bf = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
                packedf = fp32.prepack_b(bf)
                out8, outf = np.empty((m, n), np.uint8), np.empty((m, n), np.float32)
                multiplier = np.float32(1.0 / (k * 64.0))
                calls = {
                    "int8": lambda: qgemm(a8, 128, packed8, 0, multiplier, np.uint8(128), out=out8),
                    "fp32": lambda: fp32.gemm(af, packedf, out=outf),
                    "blas": lambda: np.matmul(af, bf, out=outf),
                }
                times = {name: [] for name in calls}
                for call in calls.values():
                    call()
                for _ in range(max(repeats, 1)):
                    for name, call in calls.items():
                        start = now()
                        call()
                        times[name].append(now() - start)
                ops = 2.0 * m * n * k
                row = {"m": m, "n": n, "k": k, "threads": threads or old_threads}
                for name, seconds in times.items():
                    row[f"{name}_gops"] = ops / min(seconds) / 1e9
                    row[f"{name}_median_ms"] = statistics.median(seconds) * 1e3
                row["int8_over_fp32"] = row["int8_gops"] / row["fp32_gops"]
                row["vnni"] = HAS_VNNI
                row["blas_kernel"] = fp32._blas_name()
                rows.append(row)
    finally:
        numba.set_num_threads(old_threads)
    return rows


def micro_kernel_asm() -> str:
    """The micro-kernel's machine code (the loop over K holds the 16 ``vpdpbusd``)."""
    fresh = numba.njit(_micro_kernel.py_func)
    s = np.zeros(MR * KGROUP, np.uint8)
    v = np.zeros(NR * KGROUP, np.uint8)
    tile = np.zeros(MR * NR, np.int32)
    fresh(1, s, 0, v, 0, tile, 0)
    return fresh.inspect_asm(fresh.signatures[0])


# ============================================================================ helpers
def _cdiv(x: int, y: int) -> int:
    return -(-x // y)


def _round_up(x: int, multiple: int) -> int:
    return _cdiv(x, multiple) * multiple


# ============================================================================ Numba: packing
@numba.njit(cache=True)
def _pack_s(src, ld, i0, mb, k0, kb, flip, out):
    """Rows ``i0:i0+mb``, K ``k0:k0+kb`` of S (bytes, row stride ``ld``) -> MR-row micro-panels.

    Panel q holds, for each group g of 4 k, MR x 4 bytes (row r's ``k0+4g .. k0+4g+3``);
    rows past ``mb`` and k past ``kb`` are zeros. ``flip`` (0 or 0x80) is xor-ed in.
    """
    kbp = (kb + 3) // 4 * 4
    count = (mb + MR - 1) // MR
    full = kb // 4 * 4
    for q in range(count):
        base = q * MR * kbp
        for r in range(MR):
            i = i0 + q * MR + r
            if i < i0 + mb:
                row = i * ld + k0
                if flip == 0:
                    for p in range(0, full, 4):  # whole groups: one 32-bit move each
                        copy_word(src, row + p, out, base + p * MR + r * 4)
                else:
                    for p in range(full):
                        out[base + (p // 4) * (4 * MR) + r * 4 + p % 4] = src[row + p] ^ flip
                for p in range(full, kbp):
                    out[base + (p // 4) * (4 * MR) + r * 4 + p % 4] = (src[row + p] ^ flip) if p < kb else 0
            else:
                for p in range(kbp):
                    out[base + (p // 4) * (4 * MR) + r * 4 + p % 4] = 0


@numba.njit(cache=True)
def _pack_v(src, ld, k0, kb, j0, nb, flip, out):
    """K ``k0:k0+kb``, columns ``j0:j0+nb`` of V (bytes, row stride ``ld``) -> NR-column micro-panels.

    Panel q holds, for each group g of 4 k, NR x 4 bytes (column j's ``k0+4g .. k0+4g+3``);
    columns past ``nb`` and k past ``kb`` are zeros. ``flip`` (0 or 0x80) is xor-ed in.
    """
    kbp = (kb + 3) // 4 * 4
    count = (nb + NR - 1) // NR
    for q in range(count):
        base = q * NR * kbp
        cols = min(NR, nb - q * NR)
        for g in range(kbp // 4):
            at = base + g * 4 * NR
            if flip == 0 and 4 * g + 4 <= kb and cols == NR:  # the common case: 2 x (4 rows x 16 bytes)
                row = (k0 + 4 * g) * ld + j0 + q * NR
                interleave4x16(src, row, ld, out, at)
                interleave4x16(src, row + 16, ld, out, at + 64)
                continue
            for e in range(4):
                p = 4 * g + e
                if p < kb:
                    row = (k0 + p) * ld + j0 + q * NR
                    for j in range(cols):
                        out[at + j * 4 + e] = src[row + j] ^ flip
                    for j in range(cols, NR):
                        out[at + j * 4 + e] = 0
                else:
                    for j in range(NR):
                        out[at + j * 4 + e] = 0


@numba.njit(cache=True)
def _pack_s_all(src, ld, m, k, flip, out):
    """All of S: K block k0 at ``k0 * m_padded`` (k0 a multiple of KC, itself a multiple of 4)."""
    m_padded = (m + MR - 1) // MR * MR
    for k0 in range(0, k, KC):
        kb = min(KC, k - k0)
        _pack_s(src, ld, k0 - k0, m, k0, kb, flip, out[k0 * m_padded:])  # k0 - k0: see _pack_v_all


@numba.njit(cache=True)
def _pack_v_all(src, ld, k, n, flip, out):
    """All of V: K block k0 at ``k0 * n_padded``."""
    n_padded = (n + NR - 1) // NR * NR
    for k0 in range(0, k, KC):
        kb = min(KC, k - k0)
        # ``k0 - k0``, not ``0``: a constant argument would be typed as a literal, and Numba
        # would compile the packing once more for it
        _pack_v(src, ld, k0, kb, k0 - k0, n, flip, out[k0 * n_padded:])


# ============================================================================ Numba: the micro-kernel
@numba.njit(cache=True, inline="always")
def _micro_kernel(groups, s, s_at, v, v_at, tile, tile_at):
    """``tile = S~ @ V~`` for one S micro-panel (``groups`` x MR x 4 bytes at ``s[s_at]``) and one V micro-panel.

    Each step: 2 loads of 64 bytes of V (4 k x 16 columns each), 8 broadcasts of 4 bytes of S
    (4 k of one row), 16 ``vpdpbusd`` into 16 accumulators of 16 int32. The MR x NR tile is
    stored (int32, row by row) at ``tile[tile_at]``.
    """
    c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = i32x16_zero()
    c40 = c41 = c50 = c51 = c60 = c61 = c70 = c71 = i32x16_zero()
    for g in range(groups):
        v0 = load_u8x64(v, v_at)
        v1 = load_u8x64(v, v_at + 64)
        x = broadcast_s8x4(s, s_at)
        c00 = dot4(c00, v0, x)
        c01 = dot4(c01, v1, x)
        x = broadcast_s8x4(s, s_at + 4)
        c10 = dot4(c10, v0, x)
        c11 = dot4(c11, v1, x)
        x = broadcast_s8x4(s, s_at + 8)
        c20 = dot4(c20, v0, x)
        c21 = dot4(c21, v1, x)
        x = broadcast_s8x4(s, s_at + 12)
        c30 = dot4(c30, v0, x)
        c31 = dot4(c31, v1, x)
        x = broadcast_s8x4(s, s_at + 16)
        c40 = dot4(c40, v0, x)
        c41 = dot4(c41, v1, x)
        x = broadcast_s8x4(s, s_at + 20)
        c50 = dot4(c50, v0, x)
        c51 = dot4(c51, v1, x)
        x = broadcast_s8x4(s, s_at + 24)
        c60 = dot4(c60, v0, x)
        c61 = dot4(c61, v1, x)
        x = broadcast_s8x4(s, s_at + 28)
        c70 = dot4(c70, v0, x)
        c71 = dot4(c71, v1, x)
        s_at += 4 * MR
        v_at += 4 * NR
    store_i32x16(tile, tile_at + 0 * NR, c00)
    store_i32x16(tile, tile_at + 0 * NR + LANES, c01)
    store_i32x16(tile, tile_at + 1 * NR, c10)
    store_i32x16(tile, tile_at + 1 * NR + LANES, c11)
    store_i32x16(tile, tile_at + 2 * NR, c20)
    store_i32x16(tile, tile_at + 2 * NR + LANES, c21)
    store_i32x16(tile, tile_at + 3 * NR, c30)
    store_i32x16(tile, tile_at + 3 * NR + LANES, c31)
    store_i32x16(tile, tile_at + 4 * NR, c40)
    store_i32x16(tile, tile_at + 4 * NR + LANES, c41)
    store_i32x16(tile, tile_at + 5 * NR, c50)
    store_i32x16(tile, tile_at + 5 * NR + LANES, c51)
    store_i32x16(tile, tile_at + 6 * NR, c60)
    store_i32x16(tile, tile_at + 6 * NR + LANES, c61)
    store_i32x16(tile, tile_at + 7 * NR, c70)
    store_i32x16(tile, tile_at + 7 * NR + LANES, c71)


@numba.njit(cache=True, inline="always")
def requantize_tile(tile, tile_at, rows, cols, y, y_at, y_rows, y_cols, i0, j0, row_offset, col_offset,
                    row_factor, col_factor, rank1, q, shift, per_column, zero, low, high):
    """The epilogue of one MR x NR int32 tile: zero-point terms, requantization, clamp, bytes.

    Output element (r, c) of the tile goes to ``y[y_at + r * y_rows + c * y_cols]``. Rows of
    16 lanes run vectorised (:func:`requantize_store`) when the columns are contiguous
    (``y_cols == 1``) and there is no rank-1 term; otherwise element by element.
    """
    if y_cols == 1 and not rank1:
        for half in range(0, cols, LANES):
            count = min(LANES, cols - half)
            col = load_i32x16_first(col_offset, j0 + half, count)
            if per_column:
                qv, sv = load_i64x16_first(q, j0 + half, count), load_i64x16_first(shift, j0 + half, count)
            for r in range(rows):
                i = i0 + r
                if not per_column:
                    qv, sv = splat_i64x16(q[i]), splat_i64x16(shift[i])
                acc = add_i32x16(load_i32x16_first(tile, tile_at + r * NR + half, count),
                                 add_i32x16(col, splat_i32x16(row_offset[i])))
                requantize_store(y, y_at + r * y_rows + half, count, acc, qv, sv, zero, low, high)
        return
    for r in range(rows):
        i = i0 + r
        base = row_offset[i]
        for c in range(cols):
            j = j0 + c
            acc = np.int64(tile[tile_at + r * NR + c]) + base + col_offset[j]
            if rank1:
                acc += np.int64(row_factor[i]) * col_factor[j]
            at = j if per_column else i
            value = requantize_fixed(acc, q[at], shift[at]) + zero
            value = min(max(value, low), high)
            y[y_at + r * y_rows + c * y_cols] = np.uint8(value & 0xFF)


#: 1.5 * 2^23: ``(x + m) - m`` rounds a float32 |x| < 2^22 to an integer, half to even.
ROUNDING_MAGIC = np.float32(12582912.0)


@numba.njit(cache=True, inline="always")
def add_residual_tile(y, y_at, rows, cols, y_rows, y_cols, z, integers, scales):
    """``y = Q(DQ(y) + DQ(z))`` on the tile of bytes :func:`requantize_tile` just stored (see
    :class:`ResidualAdd`): the residual join of a quantized ResNet, while the tile is in L1."""
    c_flip, z_flip = np.uint8(integers[0]), np.uint8(integers[2])
    c_base, z_base = np.float32(integers[1]), np.float32(integers[3])  # exact: small integers
    zero, low, high = np.float32(integers[4]), np.float32(integers[5]), np.float32(integers[6])
    c_scale, z_scale, y_scale = scales[0], scales[1], scales[2]
    for r in range(rows):
        row = np.uint64(y_at + r * y_rows)
        # unsigned indices (no negative-index checks) and, for contiguous rows, a unit stride
        # LLVM can see: the loop vectorises
        step = np.uint64(y_cols)
        for c in range(np.uint64(cols)):
            at = row + c if y_cols == 1 else row + c * step
            real = ((np.float32(np.uint8(y[at] ^ c_flip)) - c_base) * c_scale
                    + (np.float32(np.uint8(z[at] ^ z_flip)) - z_base) * z_scale)
            # round half to even by the float unit itself (np.rint is a call per value): adding
            # 1.5 * 2^23 leaves no fraction bits, for |ratio| < 2^22; a larger one is clamped anyway
            rounded = (real / y_scale + ROUNDING_MAGIC) - ROUNDING_MAGIC
            v = min(max(rounded + zero, low), high)
            y[at] = np.uint8(np.int32(v) & 0xFF)


# ============================================================================ Numba: the five loops
@numba.njit(cache=True, parallel=True)
def _gemm_parallel(s, s_ld, s_packed, v, v_ld, v_packed, y, y_rows, y_cols, m, n, k, mt, nt, work, tiles, partial,
                   row_offset, col_offset, row_factor, col_factor, rank1, q, shift, per_column, zero, low, high,
                   z, has_z, z_integers, z_scales):
    """One task per thread (``plan_tasks`` makes exactly as many as there are threads)."""
    tasks = ((m + mt - 1) // mt) * ((n + nt - 1) // nt)
    for task in numba.prange(tasks):
        # int64: the parallel loop's index is unsigned, and the task would compile twice
        _gemm_task(np.int64(task), s, s_ld, s_packed, v, v_ld, v_packed, y, y_rows, y_cols, m, n, k, mt, nt, work, tiles,
                   partial, row_offset, col_offset, row_factor, col_factor, rank1, q, shift, per_column, zero, low,
                   high, z, has_z, z_integers, z_scales)


@numba.njit(cache=True)
def _gemm_task(task, s, s_ld, s_packed, v, v_ld, v_packed, y, y_rows, y_cols, m, n, k, mt, nt, work, tiles, partial,
               row_offset, col_offset, row_factor, col_factor, rank1, q, shift, per_column, zero, low, high,
               z, has_z, z_integers, z_scales):
    """One task's block of C: Goto's loops over packed blocks; the epilogue at the last K block."""
    row_tasks = (m + mt - 1) // mt
    i_lo, j_lo = task % row_tasks * mt, task // row_tasks * nt
    i_hi, j_hi = min(m, i_lo + mt), min(n, j_lo + nt)
    m_padded, n_padded = (m + MR - 1) // MR * MR, (n + NR - 1) // NR * NR
    s_size, v_size = MC * KC, KC * NC
    s_block = work[task * (s_size + v_size):task * (s_size + v_size) + s_size]
    v_block = work[task * (s_size + v_size) + s_size:(task + 1) * (s_size + v_size)]
    tile = tiles[task * MR * NR:(task + 1) * MR * NR]
    for jc in range(j_lo, j_hi, NC):
        nb = min(NC, j_hi - jc)
        for k0 in range(0, k, KC):
            kb = min(KC, k - k0)
            kbp = (kb + 3) // 4 * 4
            if v_packed:
                v_panels, v_base = v, k0 * n_padded + jc * kbp
            else:
                _pack_v(v, v_ld, k0, kb, jc, nb, k0 - k0, v_block)  # not a literal 0 (see _pack_v_all)
                v_panels, v_base = v_block, 0
            first, last = k0 == 0, k0 + kb == k
            for ic in range(i_lo, i_hi, MC):
                mb = min(MC, i_hi - ic)
                if s_packed:
                    s_panels, s_base = s, k0 * m_padded + ic * kbp
                else:
                    _pack_s(s, s_ld, ic, mb, k0, kb, k0 - k0, s_block)
                    s_panels, s_base = s_block, 0
                for j in range(0, nb, NR):
                    cols = min(NR, nb - j)
                    for ir in range(0, mb, MR):
                        rows = min(MR, mb - ir)
                        _micro_kernel(kbp // 4, s_panels, s_base + ir * kbp, v_panels, v_base + j * kbp, tile, 0)
                        i0, j0 = ic + ir, jc + j
                        if not first:
                            for r in range(rows):
                                for half in range(0, cols, LANES):
                                    count = min(LANES, cols - half)
                                    store_i32x16(tile, r * NR + half, add_i32x16(
                                        load_i32x16_first(tile, r * NR + half, LANES),
                                        load_i32x16_first(partial, (i0 + r) * n + j0 + half, count)))
                        if last:
                            requantize_tile(tile, 0, rows, cols, y, i0 * y_rows + j0 * y_cols, y_rows, y_cols, i0, j0,
                                            row_offset, col_offset, row_factor, col_factor, rank1, q, shift,
                                            per_column, zero, low, high)
                            if has_z:
                                add_residual_tile(y, i0 * y_rows + j0 * y_cols, rows, cols, y_rows, y_cols, z,
                                                  z_integers, z_scales)
                        else:
                            for r in range(rows):
                                for half in range(0, cols, LANES):
                                    store_i32x16_first(partial, (i0 + r) * n + j0 + half,
                                                       load_i32x16_first(tile, r * NR + half, LANES),
                                                       min(LANES, cols - half))
