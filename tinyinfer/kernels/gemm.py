"""GEMM: a float32 matrix product in Numba, built the way BLIS builds one; MatMul and Gemm on it.

``Y = act(alpha * A' @ B' + beta * C)`` with ``A'`` (M x K), ``B'`` (K x N), C broadcast to
(M x N), ``'`` an optional transpose and ``act`` an optional activation. Two versions, side
by side as chapter 06 shows them:

* :func:`gemm_naive` is the definition: three loops, one dot product per output. Every
  product reads a row of A and a column of B from memory; it runs at a few GFLOP/s.
* :func:`gemm` is the algorithm of Goto & van de Geijn, "Anatomy of High-Performance Matrix
  Multiplication" (ACM TOMS, 2008), in the five-loop form of Van Zee & van de Geijn, "BLIS:
  A Framework for Rapidly Instantiating BLAS Functionality" (ACM TOMS, 2015)::

      for jc in 0..N step NC:                            loop 5
        for pc in 0..K step KC:                          loop 4
          B~ = B'[pc:pc+KC, jc:jc+NC] in NR-column micro-panels     (L2)
          for ic in 0..M step MC:                        loop 3
            A~ = A'[ic:ic+MC, pc:pc+KC] in MR-row micro-panels      (L2)
            for jr in 0..NC step NR:                     loop 2: a B micro-panel, KC x NR, in L1
              for ir in 0..MC step MR:                   loop 1: the A micro-panels stream past it
                C[ic+ir.., jc+jr..] += A~[ir] @ B~[jr]   the micro-kernel: an MR x NR tile

  Packing copies each block of A and B into exactly the order the micro-kernel reads it
  (unit stride, zero-padded to whole micro-panels, so edge tiles need no special code);
  transposed inputs cost nothing extra because packing reads through strides. A constant
  operand (a layer's weights) is packed once, when a plan is built (:func:`prepack_b`,
  :func:`prepack_a`); its blocks are then slices of the packed array. With several threads
  the larger of M and N is cut into equal parts, :data:`TASKS_PER_THREAD` per thread, handed
  out dynamically, and the five loops run in each part.

The micro-kernel keeps an MR x NR = 8 x 32 tile of C in 16 vector registers of 16 floats.
Each of the KC steps loads 2 vectors of B~, broadcasts 8 values of A~ and issues 16 fused
multiply-adds (512 flops for 10 loads, no store); the old C is added only after the loop, and
its cache lines are prefetched before it, so their misses overlap the arithmetic.

Blocking for the CPU this was tuned on (2 cores of a Xeon with AVX-512 and two 512-bit FMA
units; L1d 48 KiB 12-way, L2 2 MiB per core):

* **MR x NR = 8 x 32**: 16 accumulators + 2 B vectors + 2 broadcasts = 20 of the 32 zmm
  registers; 16 independent FMA chains cover the FMA latency (4 cycles x 2 ports = 8).
* **KC = 256**: the B micro-panel, ``KC x NR x 4 B = 32 KiB``, stays in L1 (8 of its 12
  ways); the A micro-panel, ``KC x MR x 4 B = 8 KiB``, and the C tile pass through the rest.
* **MC = 128**: A~ is ``MC x KC x 4 B = 128 KiB``, L2-resident while the NC / NR = 16
  B micro-panels each sweep it once.
* **NC = 512**: B~ is ``KC x NC x 4 B = 512 KiB``. BLIS sizes this block for L3; with a 2 MiB
  L2, A~ and B~ (640 KiB together) both fit in L2, and B~ is reused by every MC block.

  KC = 192 or 320, MC = 64 or 256 and NC = 768 measured within 3 % of these (noise level).

Numba has no SIMD types, so this module gives it one: :data:`float32x16`, a Numba type whose
LLVM value is ``<16 x float>``, with a few intrinsics (load, masked load, broadcast, fma, add,
masked store, prefetch) — the vocabulary of C's ``_mm512_*`` intrinsics, in which BLIS's own
micro-kernels are written. LLVM keeps the 16 local accumulator variables in registers: the
loop over K compiles to 2 ``vmovups``, 8 ``vbroadcastss`` and 16 ``vfmadd231ps`` on zmm
registers, with no spill (:func:`micro_kernel_asm` prints it). Written with a small NumPy
array of accumulators instead, the same loop compiled to ymm gathers and scatters through
memory, at about 4 GFLOP/s.

:func:`benchmark_gemm` measures :func:`gemm` against NumPy's BLAS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import statistics
import threading
import time

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, register_model

from ..ir import Node, Value
from .epilogue import (ACTIVATION_CODES, CLIP, FUSED_DOMAIN, HARD_SIGMOID, HARD_SWISH, IDENTITY, LEAKY_RELU, RELU,
                       SIGMOID, TANH, activate)
from .registry import named, output_buffer, register_kernel, writes_into

#: Rows and columns of the register tile of C the micro-kernel computes.
MR, NR = 8, 32
#: Floats in one SIMD vector (AVX-512: 16 float32 per zmm register).
LANES = 16
#: Cache blocking: K block, M block, N block (see the module docstring for the arithmetic).
KC, MC, NC = 256, 128, 512

#: Sustained rate assumed by the cost hints: about 140 GFLOP/s per core on mid-sized products
#: (:func:`benchmark_gemm` with ``threads=1, clock="cpu"``), times 2 cores, less a little for
#: the threads' start and the halves' imbalance. Only ratios matter for ``select="cost"``.
GEMM_FLOPS_PER_SECOND = 250e9
#: Python's share of one call (checks, views, the dispatch to Numba), for the cost hints.
CALL_SECONDS = 10e-6
#: Parts a parallel product is cut into per thread (see :func:`gemm`), from this many
#: multiply-adds on (below, cutting the larger side finer repacks the smaller one for little).
TASKS_PER_THREAD = 3
DYNAMIC_THRESHOLD = 1 << 22
#: Below this many multiply-adds one thread is faster than waking the others.
PARALLEL_THRESHOLD = 1 << 18  # about 64^3: measured crossover on 2 threads

#: ResNet-50's convolutions as im2col GEMMs (batch 1, 224 x 224): M = output channels,
#: N = output pixels, K = input channels x kernel height x kernel width; and its fc layer.
RESNET50_SHAPES = (
    (64, 12544, 147),  # conv1 7x7/2, 3 -> 64
    (64, 3136, 64),  # layer1 1x1, 64 -> 64
    (64, 3136, 576),  # layer1 3x3, 64 -> 64
    (256, 3136, 64),  # layer1 1x1, 64 -> 256 (and the downsample)
    (64, 3136, 256),  # layer1 1x1, 256 -> 64
    (128, 784, 1152),  # layer2 3x3/2, 128 -> 128
    (512, 784, 128),  # layer2 1x1, 128 -> 512
    (128, 784, 512),  # layer2 1x1, 512 -> 128
    (256, 196, 2304),  # layer3 3x3, 256 -> 256
    (1024, 196, 256),  # layer3 1x1, 256 -> 1024
    (256, 196, 1024),  # layer3 1x1, 1024 -> 256
    (512, 49, 4608),  # layer4 3x3, 512 -> 512
    (2048, 49, 512),  # layer4 1x1, 512 -> 2048
    (512, 49, 2048),  # layer4 1x1, 2048 -> 512
    (1, 1000, 2048),  # fc (a Gemm with one row)
)


# ============================================================================ the naive twin
@numba.njit(cache=True)
def gemm_naive(a, b, out):
    """``out = a @ b`` by the definition: one dot product per element of ``out``.

    The readable twin of :func:`gemm` (and as slow as that sounds: the inner loop walks down
    a column of ``b``, one cache line per multiply-add).
    """
    m, k = a.shape
    n = b.shape[1]
    for i in range(m):
        for j in range(n):
            total = np.float32(0.0)
            for p in range(k):
                total += a[i, p] * b[p, j]
            out[i, j] = total
    return out


# ============================================================================ packed operands
@dataclasses.dataclass(frozen=True)
class PackedMatrix:
    """An operand packed once for :func:`gemm` (what :func:`prepack_a` / :func:`prepack_b` return).

    ``side`` is "a" (MR-row micro-panels of A', M x K) or "b" (NR-column micro-panels of B',
    K x N); ``rows`` x ``cols`` is the shape of the *logical* (transposed if asked) matrix.
    The panels of each KC block of K follow each other: block ``p0`` starts at
    ``p0 * padded`` (``padded`` = rows or cols rounded up to MR or NR).
    """

    data: np.ndarray
    side: str
    rows: int
    cols: int
    kc: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes


def prepack_b(b: np.ndarray, trans_b: bool = False) -> PackedMatrix:
    """Pack ``B' = B.T if trans_b else B`` (K x N) into NR-column micro-panels, once.

    A builder calls this at plan time for a constant weight matrix, so a dense layer never
    repacks its weights per call. The result is ``K x ceil(N / NR) * NR`` floats.
    """
    flat, row_stride, col_stride, (k, n) = _strided(b, trans_b)
    data = np.empty(k * _round_up(n, NR), np.float32)
    _pack_b_all(flat, row_stride, col_stride, k, n, data)
    return PackedMatrix(data, "b", k, n, KC)


def prepack_a(a: np.ndarray, trans_a: bool = False) -> PackedMatrix:
    """Pack ``A' = A.T if trans_a else A`` (M x K) into MR-row micro-panels, once.

    For a convolution lowered to ``Y = W @ columns`` the constant is A (the weights): its
    builder packs it here and every call skips the per-task packing of A.
    """
    flat, row_stride, col_stride, (m, k) = _strided(a, trans_a)
    data = np.empty(_round_up(m, MR) * k, np.float32)
    _pack_a_all(flat, row_stride, col_stride, m, k, data)
    return PackedMatrix(data, "a", m, k, KC)


# ============================================================================ gemm
def gemm(a, b, out: np.ndarray | None = None, *, alpha: float = 1.0, beta: float = 0.0,
         c: np.ndarray | None = None, trans_a: bool = False, trans_b: bool = False,
         activation: str = "Identity", activation_params=(), threads: int | None = None,
         row_bias: np.ndarray | None = None) -> np.ndarray:
    """``out = act(alpha * A' @ B' + beta * C + row_bias)`` in float32 by the blocked, packed algorithm.

    ``a`` and ``b`` are matrices (any float dtype, any strides; converted to float32) or
    :class:`PackedMatrix` from :func:`prepack_a` / :func:`prepack_b` (already transposed as
    packed: ``trans_a`` / ``trans_b`` apply to plain arrays only). ``c`` broadcasts to
    (M, N) (a scalar, a row of N biases, a column of M, or a full matrix) and is ignored when
    ``beta`` is 0; ``c`` may be ``out`` itself (BLAS's ``C = alpha AB + beta C``).
    ``activation`` is one of :data:`tinyinfer.kernels.epilogue.ACTIVATION_CODES` (the
    activations of ``ai.tinyinfer:FusedGemm``), applied to each tile of the result as it is
    stored. ``out`` (float32, M x N) receives the result when given; it is returned.
    ``threads`` defaults to Numba's current thread count. ``row_bias`` (M values, or None)
    is added to each row as well: a convolution's bias next to a residual in C, both
    in the one store of each tile.
    """
    a_data, a_rows, a_cols, a_packed, (m, k) = _operand(a, "a", trans_a)
    b_data, b_rows, b_cols, b_packed, (k_b, n) = _operand(b, "b", trans_b)
    if k_b != k:
        raise ValueError(f"cannot multiply A' ({m} x {k}) by B' ({k_b} x {n}): inner sizes differ")
    y, target = _output(out, m, n)
    if c is not None and out is not None and np.may_share_memory(c, out):
        c = np.array(c, copy=True)  # C is read after the first K block has been written to out
    c_data, c_rows, c_cols = _addend(c, m, n, beta)
    code, p0, p1 = _activation(activation, activation_params)
    if row_bias is not None:
        row_bias = np.ascontiguousarray(row_bias, dtype=np.float32).reshape(-1)
        if row_bias.size != m:
            raise ValueError(f"row_bias has {row_bias.size} values, the product has {m} rows")
    if m and n:
        threads = numba.get_num_threads() if threads is None else threads
        parallel = threads > 1 and m * n * k >= PARALLEL_THRESHOLD
        # TASKS_PER_THREAD parts per thread, handed out dynamically: a thread the OS preempts
        # for a while (other processes on the cores) is made up for by the others.
        parts = TASKS_PER_THREAD if m * n * k >= DYNAMIC_THRESHOLD else 1  # small: no repacking
        mt, nt = plan_tasks(m, n, threads * parts if parallel else 1)
        slots = numba.config.NUMBA_NUM_THREADS if parallel else 1  # packing buffers: one per thread
        work = scratch(slots * (_round_up(MC, MR) * KC + KC * NC))
        args = (a_data, a_rows, a_cols, a_packed, b_data, b_rows, b_cols, b_packed, y.reshape(-1),
                m, n, k, mt, nt, work, c_data, c_rows, c_cols, np.float32(alpha),
                np.float32(beta if c is not None else 0.0), code, np.float32(p0), np.float32(p1),
                _NO_ADDEND if row_bias is None else row_bias, row_bias is not None)
        if parallel:
            previous = numba.set_parallel_chunksize(1)  # dynamic schedule (cannot be set in cached code)
            try:
                _gemm_parallel(*args)
            finally:
                numba.set_parallel_chunksize(previous)
        else:
            _gemm_serial(*args)
    if target is not None and target is not y:
        target[...] = y
        return target
    return y


def gemm_grouped(a: np.ndarray, b: np.ndarray, out: np.ndarray, *, c: np.ndarray | None = None,
                 row_bias: np.ndarray | None = None, activation: str = "Identity", activation_params=(),
                 threads: int | None = None) -> np.ndarray:
    """``out[g] = act(A[g] @ B[g] + C[g] + row_bias[g])`` for every group g, in one parallel loop.

    A grouped convolution is one small product per group; one :func:`gemm` call each would
    pay Python's share of a call and a parallel loop per group (a ShuffleNet layer has 4
    groups of 34 x 34 x 784). ``a`` is (G, MR-panel data) — each group's matrix packed by
    :func:`prepack_a`, stacked; ``b`` (G, K, N) and ``out`` (G, M, N) are C-ordered float32;
    ``c`` (G, M, N) or None; ``row_bias`` (G * M,) or None. The tasks of all groups are
    handed out together, dynamically.
    """
    groups, k, n = b.shape
    m = out.shape[1]
    if a.shape[0] != groups or out.shape != (groups, m, n) or a.shape[1] != _round_up(m, MR) * k:
        raise ValueError(f"grouped shapes do not match: A {a.shape}, B {b.shape}, out {out.shape}")
    if not (out.dtype == np.float32 and out.flags.c_contiguous):
        raise ValueError("out must be a C-ordered float32 array")
    b = np.ascontiguousarray(b, dtype=np.float32)
    code, p0, p1 = _activation(activation, activation_params)
    if c is not None and np.may_share_memory(c, out):
        c = np.array(c, copy=True)  # C is read after the first K block has been written to out
    c_data = _NO_ADDEND if c is None else np.ascontiguousarray(c, dtype=np.float32).reshape(-1)
    bias = _NO_ADDEND if row_bias is None else np.ascontiguousarray(row_bias, dtype=np.float32).reshape(-1)
    if groups and m and n:
        threads = numba.get_num_threads() if threads is None else threads
        parallel = threads > 1 and groups * m * n * k >= PARALLEL_THRESHOLD
        per_group = max(1, _cdiv(threads * TASKS_PER_THREAD, groups)) if parallel else 1
        mt, nt = plan_tasks(m, n, per_group)
        slots = numba.config.NUMBA_NUM_THREADS if parallel else 1
        work = scratch(slots * (_round_up(MC, MR) * KC + KC * NC))
        args = (np.ascontiguousarray(a, dtype=np.float32), b.reshape(groups, -1), out.reshape(groups, -1), m, n, k,
                mt, nt, work, c_data, c is not None, code, np.float32(p0), np.float32(p1), bias, row_bias is not None)
        if parallel:
            previous = numba.set_parallel_chunksize(1)
            try:
                _gemm_grouped_parallel(*args)
            finally:
                numba.set_parallel_chunksize(previous)
        else:
            _gemm_grouped_serial(*args)
    return out


def plan_tasks(m: int, n: int, threads: int) -> tuple[int, int]:
    """How one product is shared out: ``threads`` blocks of C of ``mt`` rows x ``nt`` columns.

    The larger of M and N is cut: rows (in whole MR micro-panels) when M >= N, else columns
    (in whole NR micro-panels), into equal parts, one per thread; a thread then reads all
    of the smaller operand and its part of the larger. :func:`gemm` asks for
    :data:`TASKS_PER_THREAD` parts per thread and hands them out dynamically, so that a
    thread the OS preempts for a while does not hold up the others.
    """
    if m >= n and _cdiv(m, MR) >= threads:
        return _round_up(_cdiv(m, threads), MR), n
    return m, _round_up(_cdiv(n, min(threads, _cdiv(n, NR))), NR)


def scratch(size: int) -> np.ndarray:
    """A float32 work buffer of ``size`` elements, reused by later calls on the same thread.

    The packed blocks of A and B need under a MB per thread; a fresh ``np.empty`` would
    cost a page fault per 4 KiB on first touch, on every call. The buffer lives in a
    per-thread cache (``_SCRATCH``) and only grows.
    """
    buffer = getattr(_SCRATCH, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _SCRATCH.buffer = np.empty(size, np.float32)
    return buffer[:size]


#: The named cache of :func:`scratch`: one buffer per Python thread.
_SCRATCH = threading.local()


def micro_kernel_asm() -> str:
    """The micro-kernel's machine code (x86 assembly), as LLVM compiles it for this CPU.

    Compiled afresh (a function loaded from Numba's cache keeps no assembly text); the
    loop over K is the block with the ``vfmadd231ps`` instructions.
    """
    fresh = numba.njit(_micro_kernel.py_func)
    one = np.float32(1.0)
    fresh(1, np.ones(MR, np.float32), 0, np.ones(NR, np.float32), 0, np.empty(MR * NR, np.float32), 0, NR, MR, NR,
          False, False, _NO_ADDEND, 0, 0, 0, one, one, IDENTITY, one, one, _NO_ADDEND, -1)
    return fresh.inspect_asm(fresh.signatures[0])


# ============================================================================ benchmark
def benchmark_gemm(sizes=(128, 256, 512, 1024, 2048), shapes=RESNET50_SHAPES, repeats: int = 5,
                   seed: int = 0, naive_up_to: int = 256, threads: int | None = None,
                   clock: str = "wall") -> list[dict]:
    """GFLOP/s (``2 M N K / seconds``) of :func:`gemm` and of NumPy's BLAS on the same products.

    One row per square size and per (M, N, K) in ``shapes``, with the best GFLOP/s of
    ``repeats`` runs (and the median time) for:

    * ``gemm``: both operands packed inside the call (a product of two activations);
    * ``gemm_prepacked_a`` / ``gemm_prepacked_b``: A or B packed beforehand, as a
      convolution's (A) or a dense layer's (B) weights are when a plan is built;
    * ``blas``: ``np.matmul`` (the library and kernel that ran are in ``blas_kernel``);
    * ``naive``: :func:`gemm_naive`, for square sizes up to ``naive_up_to`` only.

    The calls are interleaved, so a busy moment of the machine hurts them alike.
    ``threads`` limits both gemm and BLAS (default: all of Numba's / BLAS's threads).
    ``clock="cpu"`` (with ``threads=1`` only) times by the thread's CPU time, which a
    machine shared with other work disturbs far less than the wall clock.
    """
    if clock not in ("wall", "cpu") or (clock == "cpu" and threads != 1):
        raise ValueError("clock is 'wall', or 'cpu' with threads=1")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    with _blas_threads(threads):
        return _benchmark(sizes, shapes, repeats, seed, naive_up_to, threads, now)


def _benchmark(sizes, shapes, repeats, seed, naive_up_to, threads, now) -> list[dict]:
    rng = np.random.default_rng(seed)
    blas = _blas_name()
    rows = []
    for m, n, k in [(s, s, s) for s in sizes] + [tuple(s) for s in shapes]:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), np.float32)
        packed_a, packed_b = prepack_a(a), prepack_b(b)
        calls = {
            "gemm": lambda: gemm(a, b, out=out, threads=threads),
            "gemm_prepacked_a": lambda: gemm(packed_a, b, out=out, threads=threads),
            "gemm_prepacked_b": lambda: gemm(a, packed_b, out=out, threads=threads),
            "blas": lambda: np.matmul(a, b, out=out),
        }
        if m == n == k and m <= naive_up_to:
            calls["naive"] = lambda: gemm_naive(a, b, out)
        times = {name: [] for name in calls}
        for call in calls.values():
            call()  # compiles (first use) and warms the caches
        for _ in range(max(repeats, 1)):
            for name, call in calls.items():
                start = now()
                call()
                times[name].append(now() - start)
        flops = 2.0 * m * n * k
        row = {"m": m, "n": n, "k": k}
        for name in ("gemm", "gemm_prepacked_a", "gemm_prepacked_b", "blas", "naive"):
            seconds = times.get(name)
            row[f"{name}_gflops"] = flops / min(seconds) / 1e9 if seconds else None
            row[f"{name}_median_ms"] = statistics.median(seconds) * 1e3 if seconds else None
        row["ratio"] = row["gemm_gflops"] / row["blas_gflops"]
        row["blas_kernel"] = blas
        rows.append(row)
    return rows


def _blas_threads(threads: int | None):
    """A context limiting BLAS to ``threads`` threads (nothing to do without threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return contextlib.nullcontext()
    return threadpoolctl.threadpool_limits(threads) if threads else contextlib.nullcontext()


def _blas_name() -> str:
    try:
        import threadpoolctl
    except ImportError:
        return "unknown"
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas":
            return f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')} ({info.get('num_threads')} threads)"
    return "unknown"


# ============================================================================ kernels
def _float32_matrix(value: Value | None) -> bool:
    return (value is not None and value.dtype == np.float32 and value.shape is not None
            and len(value.shape) == 2 and all(isinstance(d, int) for d in value.shape))


def _supports_gemm(node: Node, inputs: list) -> bool:
    """Float32 A and B matrices, C (if any) of rank <= 2, an activation the epilogue knows."""
    a, b = inputs[0], inputs[1]
    c = inputs[2] if len(inputs) > 2 else None
    if not (_float32_matrix(a) and _float32_matrix(b)):
        return False
    if c is not None and (c.dtype != np.float32 or c.shape is None or len(c.shape) > 2):
        return False
    if node.domain == FUSED_DOMAIN:
        return node.attrs.get("activation", "Identity") in ACTIVATION_CODES
    return node.domain == ""


def _gemm_sizes(node: Node, inputs: list) -> tuple[int, int, int]:
    a, b = inputs[0].shape, inputs[1].shape
    m, k = (a[1], a[0]) if node.attrs["transA"] else a
    n = b[0] if node.attrs["transB"] else b[1]
    return m, n, k


def gemm_seconds(m: int, n: int, k: int, products: int = 1) -> float:
    """Estimated time of ``products`` GEMMs of this size: the padded tiles' flops, plus a call each."""
    flops = 2.0 * _round_up(m, MR) * _round_up(n, NR) * k
    return products * (flops / GEMM_FLOPS_PER_SECOND + CALL_SECONDS)


def _cost_gemm(node: Node, inputs: list) -> float:
    return gemm_seconds(*_gemm_sizes(node, inputs))


@register_kernel("Gemm", "gemm_packed", supports=_supports_gemm, cost=_cost_gemm)
@register_kernel("FusedGemm", "gemm_packed", domain=FUSED_DOMAIN, supports=_supports_gemm, cost=_cost_gemm)
def build_gemm(node: Node, inputs: list, outputs: list):
    """Packed GEMM (accelerates Gemm / FusedGemm): float32 2-D A, B; transA/transB; alpha, beta, C.

    A constant B is packed here, once; FusedGemm's activation runs in the GEMM's store.
    """
    attrs = node.attrs
    trans_a, trans_b = bool(attrs["transA"]), bool(attrs["transB"])
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    activation = attrs.get("activation", "Identity") if node.domain == FUSED_DOMAIN else "Identity"
    params = tuple(attrs.get("activation_params") or ()) if node.domain == FUSED_DOMAIN else ()
    packed_b = None if inputs[1].const is None else prepack_b(inputs[1].const, trans_b)

    def gemm_packed(node, a, b, c=None, out=None):
        return gemm(a, packed_b if packed_b is not None else b, out=out[0] if out else None, alpha=alpha, beta=beta, c=c,
                    trans_a=trans_a, trans_b=trans_b, activation=activation, activation_params=params)

    return writes_into(named(gemm_packed, "gemm_packed"))


def _supports_matmul(node: Node, inputs: list) -> bool:
    """Float32 A (rank >= 1) and B (rank >= 2) of known shapes; batch dims broadcast."""
    a, b = inputs
    if a is None or b is None or a.dtype != np.float32 or b.dtype != np.float32:
        return False
    if a.shape is None or b.shape is None or len(a.shape) < 1 or len(b.shape) < 2:
        return False
    return all(isinstance(d, int) for d in (*a.shape, *b.shape))


def _cost_matmul(node: Node, inputs: list) -> float:
    a, b = inputs[0].shape, inputs[1].shape
    if len(b) == 2:  # every row of A in one product
        return gemm_seconds(math.prod(a[:-1]), b[1], b[0])
    batch = math.prod(np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2])))
    return gemm_seconds(a[-2] if len(a) > 1 else 1, b[-1], b[-2], products=batch)


@register_kernel("MatMul", "gemm_packed", supports=_supports_matmul, cost=_cost_matmul)
def build_matmul(node: Node, inputs: list, outputs: list):
    """Packed GEMM (accelerates MatMul): float32, A rank >= 1, B rank >= 2, batch dims broadcast.

    With a 2-D B every row of every batch of A is one tall product against B (packed here
    when B is constant); batched B runs one product per broadcast batch.
    """
    a_shape, b_shape = tuple(inputs[0].shape), tuple(inputs[1].shape)
    packed_b = prepack_b(inputs[1].const) if inputs[1].const is not None and len(b_shape) == 2 else None

    def matmul_packed(node, a, b, out=None):
        if len(b_shape) == 2:  # (..., M, K) @ (K, N): one product with all rows stacked
            y = output_buffer(out, (*a.shape[:-1], b_shape[1]))
            rows = a.reshape(-1, a.shape[-1])
            gemm(rows, packed_b if packed_b is not None else b, out=y.reshape(rows.shape[0], b_shape[1]))
            return y
        return _batched_matmul(a, b, out)

    return writes_into(named(matmul_packed, "gemm_packed"))


def _batched_matmul(a: np.ndarray, b: np.ndarray, out) -> np.ndarray:
    """One product per broadcast batch of A and B (into the planned ``out``, if given)."""
    a2 = a[np.newaxis] if a.ndim == 1 else a  # a vector is one row; its axis is dropped after
    batch = np.broadcast_shapes(a2.shape[:-2], b.shape[:-2])
    a_all = np.broadcast_to(a2, (*batch, *a2.shape[-2:]))
    b_all = np.broadcast_to(b, (*batch, *b.shape[-2:]))
    shape = (*batch, b.shape[-1]) if a.ndim == 1 else (*batch, a2.shape[-2], b.shape[-1])
    y = output_buffer(out, shape)
    products = y.reshape(*batch, a2.shape[-2], b.shape[-1])
    for index in np.ndindex(*batch):
        gemm(a_all[index], b_all[index], out=products[index])
    return y


# ============================================================================ boundary helpers
def _cdiv(x: int, y: int) -> int:
    return -(-x // y)


def _round_up(x: int, multiple: int) -> int:
    return _cdiv(x, multiple) * multiple


def _strided(x: np.ndarray, transpose: bool):
    """A flat float32 view of a matrix and the strides (in elements) of its logical transpose.

    C- and Fortran-ordered matrices are used in place (a transpose is a swap of strides);
    anything else is copied once.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {x.shape}")
    if x.dtype != np.float32 or not (x.flags.c_contiguous or x.flags.f_contiguous):
        x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    if x.flags.c_contiguous:
        flat, row_stride, col_stride = x.reshape(-1), cols, 1
    else:
        flat, row_stride, col_stride = x.T.reshape(-1), 1, rows
    if transpose:
        row_stride, col_stride, rows, cols = col_stride, row_stride, cols, rows
    # The packing reads the flat array as a (rows, cols) matrix when col_stride is 1, else as
    # its (cols, rows) transpose; for a matrix with a side of 1 both strides are 1, so say which.
    if col_stride == 1:
        row_stride = cols
    else:
        col_stride = rows
    return flat, row_stride, col_stride, (rows, cols)


def _operand(x, side: str, transpose: bool):
    """A flat operand, its strides, whether it is prepacked, and its logical shape."""
    if isinstance(x, PackedMatrix):
        if x.side != side:
            raise ValueError(f"{side} must be a matrix or a PackedMatrix from prepack_{side}, not prepack_{x.side}")
        if x.kc != KC:
            raise ValueError(f"{side} was packed with KC = {x.kc}, this GEMM uses {KC}; pack it again")
        return x.data, 0, 0, True, x.shape
    flat, row_stride, col_stride, shape = _strided(x, transpose)
    return flat, row_stride, col_stride, False, shape


def _output(out: np.ndarray | None, m: int, n: int):
    """The C-ordered float32 array the kernel writes, and the caller's ``out`` (or None)."""
    if out is None:
        return np.empty((m, n), np.float32), None
    if out.shape != (m, n):
        raise ValueError(f"out has shape {out.shape}, the product is {(m, n)}")
    if out.dtype == np.float32 and out.flags.c_contiguous:
        return out, out
    return np.empty((m, n), np.float32), out


_NO_ADDEND = np.zeros(1, np.float32)


def _addend(c, m: int, n: int, beta: float):
    """C as a flat float32 array with (row, column) strides of its broadcast to (M, N)."""
    if c is None or beta == 0.0:
        return _NO_ADDEND, 0, 0
    c = np.asarray(c)
    if c.ndim > 2 or any(have not in (1, want) for have, want in zip(reversed(c.shape), (n, m))):
        raise ValueError(f"C of shape {c.shape} does not broadcast to (M, N) = {(m, n)}")
    rows, cols = (1, 1) if c.ndim == 0 else (1, c.shape[0]) if c.ndim == 1 else c.shape
    compact = np.ascontiguousarray(c, dtype=np.float32).reshape(-1)
    return compact, (cols if rows > 1 else 0), (1 if cols > 1 else 0)


def _activation(name: str, params) -> tuple[int, float, float]:
    if name not in ACTIVATION_CODES:
        raise ValueError(f"activation must be one of {sorted(ACTIVATION_CODES)}, got {name!r}")
    params = [float(p) for p in params or ()]
    return ACTIVATION_CODES[name], *(params + [0.0, 0.0])[:2]


# ============================================================================ Numba: the driver
@numba.njit(cache=True, parallel=True)
def _gemm_parallel(a, a_rows, a_cols, a_packed, b, b_rows, b_cols, b_packed, y, m, n, k, mt, nt, work,
                   c, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, has_row_bias):
    """The tasks on Numba's threads, dynamically scheduled; each packs into its thread's buffer."""
    tasks = ((m + mt - 1) // mt) * ((n + nt - 1) // nt)
    for task in numba.prange(tasks):
        _gemm_task(task, numba.get_thread_id(), a, a_rows, a_cols, a_packed, b, b_rows, b_cols, b_packed, y, m, n, k,
                   mt, nt, work, c, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, has_row_bias)


@numba.njit(cache=True)
def _gemm_serial(a, a_rows, a_cols, a_packed, b, b_rows, b_cols, b_packed, y, m, n, k, mt, nt, work,
                 c, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, has_row_bias):
    """The same tasks on the calling thread (small products: waking threads costs more)."""
    for task in range(((m + mt - 1) // mt) * ((n + nt - 1) // nt)):
        _gemm_task(task, 0, a, a_rows, a_cols, a_packed, b, b_rows, b_cols, b_packed, y, m, n, k, mt, nt, work,
                   c, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, has_row_bias)


@numba.njit(cache=True, parallel=True)
def _gemm_grouped_parallel(a, b, y, m, n, k, mt, nt, work, c, has_c, code, p0, p1, bias, has_bias):
    """Every group's tasks, dynamically scheduled (see :func:`gemm_grouped`)."""
    per_group = ((m + mt - 1) // mt) * ((n + nt - 1) // nt)
    for task in numba.prange(a.shape[0] * per_group):
        _grouped_task(task // per_group, task % per_group, numba.get_thread_id(), a, b, y, m, n, k, mt, nt, work,
                      c, has_c, code, p0, p1, bias, has_bias)


@numba.njit(cache=True)
def _gemm_grouped_serial(a, b, y, m, n, k, mt, nt, work, c, has_c, code, p0, p1, bias, has_bias):
    per_group = ((m + mt - 1) // mt) * ((n + nt - 1) // nt)
    for task in range(a.shape[0] * per_group):
        _grouped_task(task // per_group, task % per_group, 0, a, b, y, m, n, k, mt, nt, work,
                      c, has_c, code, p0, p1, bias, has_bias)


@numba.njit(cache=True, inline="always")
def _grouped_task(group, task, slot, a, b, y, m, n, k, mt, nt, work, c, has_c, code, p0, p1, bias, has_bias):
    """One task of one group: :func:`_gemm_task` on the group's slices (B, C and Y C-ordered)."""
    c_group = c[group * m * n:(group + 1) * m * n] if has_c else c
    bias_group = bias[group * m:(group + 1) * m] if has_bias else bias
    _gemm_task(task, slot, a[group], 0, 0, True, b[group], n, 1, False, y[group], m, n, k, mt, nt, work,
               c_group, n if has_c and m > 1 else 0, 1 if has_c and n > 1 else 0, np.float32(1.0),
               np.float32(1.0 if has_c else 0.0), code, p0, p1, bias_group, has_bias)


@numba.njit(cache=True)
def _gemm_task(task, slot, a, a_rows, a_cols, a_packed, b, b_rows, b_cols, b_packed, y, m, n, k, mt, nt, work,
               c, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, has_row_bias):
    """One task's block of C (``mt`` rows x ``nt`` columns): the five loops of Goto's algorithm.

    ``a`` / ``b`` are either the flat operands with their strides (packed here, block by
    block, into the slice ``slot`` of ``work``, its thread's) or, when ``a_packed`` / ``b_packed``, the
    whole prepacked operand (then a block is a slice of it).
    """
    row_tasks = (m + mt - 1) // mt
    i_lo, j_lo = task % row_tasks * mt, task // row_tasks * nt
    i_hi, j_hi = min(m, i_lo + mt), min(n, j_lo + nt)
    m_padded, n_padded = (m + MR - 1) // MR * MR, (n + NR - 1) // NR * NR
    a_size, b_size = (MC + MR - 1) // MR * MR * KC, KC * NC
    a_block = work[slot * (a_size + b_size):slot * (a_size + b_size) + a_size]
    b_block = work[slot * (a_size + b_size) + a_size:(slot + 1) * (a_size + b_size)]
    finish = alpha != 1.0 or beta != 0.0 or code != IDENTITY or has_row_bias
    if k == 0:  # an empty sum: C is only the addend
        for i in range(i_lo, i_hi):
            y[i * n + j_lo:i * n + j_hi] = 0.0
            if finish:
                _finish_row(y, i * n + j_lo, j_hi - j_lo, c, i * c_rows + j_lo * c_cols, c_cols, alpha, beta, code,
                            p0, p1, row_bias, i if has_row_bias else -1)
    for jc in range(j_lo, j_hi, NC):  # loop 5: an NC-wide block of columns
        nb = min(NC, j_hi - jc)
        for k0 in range(0, k, KC):  # loop 4: a KC-deep block of K; B~ = B'[k0:k0+kb, jc:jc+nb]
            kb = min(KC, k - k0)
            if b_packed:
                b_panels, b_base = b, k0 * n_padded + jc * kb
            else:
                _pack_b(b, b_rows, b_cols, k0, kb, jc, nb, b_block)
                b_panels, b_base = b_block, 0
            accumulate, last = k0 > 0, k0 + kb == k
            for ic in range(i_lo, i_hi, MC):  # loop 3: an MC-high block of rows; A~ = A'[ic:ic+mb, k0:k0+kb]
                mb = min(MC, i_hi - ic)
                if a_packed:
                    a_panels, a_base = a, k0 * m_padded + ic * kb
                else:
                    _pack_a(a, a_rows, a_cols, ic, mb, k0, kb, a_block)
                    a_panels, a_base = a_block, 0
                for j in range(0, nb, NR):  # loop 2: a B micro-panel, kept in L1
                    cols = min(NR, nb - j)
                    for ir in range(0, mb, MR):  # loop 1: the A micro-panels stream past it from L2
                        rows = min(MR, mb - ir)
                        at = (ic + ir) * n + jc + j
                        _micro_kernel(kb, a_panels, a_base + ir * kb, b_panels, b_base + j * kb,
                                      y, (ic + ir) * n + jc + j, n, rows, cols, accumulate, last and finish,
                                      c, (ic + ir) * c_rows + (jc + j) * c_cols, c_rows, c_cols,
                                      alpha, beta, code, p0, p1, row_bias, ic + ir if has_row_bias else -1)


@numba.njit(cache=True, inline="always")
def _finish_row(y, at, count, c, c_at, c_cols, alpha, beta, code, p0, p1, row_bias, bias_at):
    """``y[at:at+count] = act(alpha * y + beta * c + row_bias[bias_at])`` lane by lane (no bias when
    ``bias_at < 0``): only for an empty sum (K = 0)."""
    if alpha != 1.0:
        for s in range(count):
            y[at + s] *= alpha
    if beta != 0.0:
        if c_cols == 1:
            for s in range(count):
                y[at + s] += beta * c[c_at + s]
        else:
            bias = beta * c[c_at]
            for s in range(count):
                y[at + s] += bias
    if bias_at >= 0:
        for s in range(count):
            y[at + s] += row_bias[bias_at]
    if code == 1:  # Relu
        for s in range(count):
            y[at + s] = max(y[at + s], np.float32(0.0))
    elif code == 2:  # Clip
        for s in range(count):
            y[at + s] = min(max(y[at + s], p0), p1)
    elif code != IDENTITY:
        for s in range(count):
            y[at + s] = activate(y[at + s], code, p0, p1)


# ============================================================================ Numba: packing
@numba.njit(cache=True)
def _pack_a(a, a_rows, a_cols, i0, mb, k0, kb, out):
    """``A'[i0:i0+mb, k0:k0+kb]`` -> MR-row micro-panels: panel q holds rows q*MR.. as kb x MR.

    ``a`` is the flat matrix A (``a_cols == 1``, rows of A' contiguous) or A.T. Rows past
    ``mb`` are zeros, so the micro-kernel always computes whole tiles.
    """
    count = (mb + MR - 1) // MR
    panels = out[:count * kb * MR].reshape(count, kb, MR)
    if a_cols == 1:
        source = a.reshape(-1, a_rows)  # A' itself: element (i, p) is source[i, p]
        for q in range(count):
            i, rows = i0 + q * MR, min(MR, mb - q * MR)
            if rows == MR:  # constant trip count: LLVM unrolls the 8 rows
                for p in range(kb):
                    for r in range(MR):
                        panels[q, p, r] = source[i + r, k0 + p]
            else:
                for p in range(kb):
                    for r in range(MR):
                        panels[q, p, r] = source[i + r, k0 + p] if r < rows else 0.0
    else:
        source = a.reshape(-1, a_cols)  # A'.T: element (i, p) is source[p, i]
        for q in range(count):
            i, rows = i0 + q * MR, min(MR, mb - q * MR)
            if rows == MR:
                for p in range(kb):
                    for r in range(MR):
                        panels[q, p, r] = source[k0 + p, i + r]
            else:
                for p in range(kb):
                    for r in range(MR):
                        panels[q, p, r] = source[k0 + p, i + r] if r < rows else 0.0


@numba.njit(cache=True)
def _pack_b(b, b_rows, b_cols, k0, kb, j0, nb, out):
    """``B'[k0:k0+kb, j0:j0+nb]`` -> NR-column micro-panels: panel q holds columns q*NR.. as kb x NR.

    ``b`` is the flat matrix B (``b_cols == 1``: each row of the block is read as one run)
    or B.T (each column is). Columns past ``nb`` are zeros, so the micro-kernel always
    computes whole tiles.
    """
    count = (nb + NR - 1) // NR
    if b_cols == 1:  # B' itself: row p of the block is b[(k0 + p) * b_rows + j0:][:nb]
        for p in range(kb):
            source = (k0 + p) * b_rows + j0
            for q in range(count):
                cols, at = min(NR, nb - q * NR), (q * kb + p) * NR
                # masked loads read only the valid columns and fill the rest with zeros
                vector_store_first(out, at, vector_load_first(b, source + q * NR, min(cols, LANES)), LANES)
                vector_store_first(out, at + LANES, vector_load_first(b, source + q * NR + LANES, max(cols - LANES, 0)), LANES)
    else:
        panels = out[:count * kb * NR].reshape(count, kb, NR)
        source = b.reshape(-1, b_cols)  # B'.T: element (p, j) is source[j, p]
        for q in range(count):
            for s in range(NR):
                if q * NR + s < nb:
                    for p in range(kb):
                        panels[q, p, s] = source[j0 + q * NR + s, k0 + p]
                else:
                    for p in range(kb):
                        panels[q, p, s] = 0.0


@numba.njit(cache=True)
def _pack_a_all(a, a_rows, a_cols, m, k, out):
    """All of A' in MR-row micro-panels: K block k0 at ``k0 * m_padded``, each as :func:`_pack_a` packs it."""
    m_padded = (m + MR - 1) // MR * MR
    for k0 in range(0, k, KC):
        kb = min(KC, k - k0)
        _pack_a(a, a_rows, a_cols, 0, m, k0, kb, out[k0 * m_padded:(k0 + kb) * m_padded])


@numba.njit(cache=True)
def _pack_b_all(b, b_rows, b_cols, k, n, out):
    """All of B' in NR-column micro-panels: K block k0 at ``k0 * n_padded``, each as :func:`_pack_b` packs it."""
    n_padded = (n + NR - 1) // NR * NR
    for k0 in range(0, k, KC):
        kb = min(KC, k - k0)
        _pack_b(b, b_rows, b_cols, k0, kb, 0, n, out[k0 * n_padded:(k0 + kb) * n_padded])


# ============================================================================ Numba: the micro-kernel
@numba.njit(cache=True, inline="always")  # a call would add atomic reference counts per tile
def _micro_kernel(kb, a, a_at, b, b_at, y, y_at, ldy, rows, cols, accumulate, finish,
                  c, c_at, c_rows, c_cols, alpha, beta, code, p0, p1, row_bias, bias_at):
    """``Y[0:rows, 0:cols] (+)= (A~ @ B~)[0:rows, 0:cols]`` for one A and one B micro-panel.

    The A micro-panel (kb x MR) starts at ``a[a_at]``, the B micro-panel (kb x NR) at
    ``b[b_at]``, Y's tile at ``y[y_at]`` with rows ``ldy`` apart. Row r of the tile lives in
    two 16-float registers ``y{r}0``, ``y{r}1`` for the whole loop over K; each step is a
    rank-1 update: 2 vector loads of B, 8 broadcasts of A, 16 fused multiply-adds. The old
    Y (``accumulate``: the sum over earlier K blocks) is added after the loop, so its cache
    misses overlap the loop. With ``finish`` (the last K block) the epilogue
    ``act(alpha * sum + beta * C)`` is applied in the registers, before the one store; C's
    tile starts at ``c[c_at]``, with strides ``c_rows``, ``c_cols`` (0 along an axis C is
    broadcast on). An edge tile (``rows < MR`` or ``cols < NR``) is computed whole — the
    packed panels are padded with zeros — and read and written through lane masks.
    """
    left, right = min(cols, LANES), max(cols - LANES, 0)  # valid lanes of each half of a row
    for r in range(MR):  # Y is needed only after the loop: start fetching it now (BLIS does too)
        prefetch(y, y_at + r * ldy)
        prefetch(y, y_at + r * ldy + NR - 1)
    y00 = y01 = y10 = y11 = y20 = y21 = y30 = y31 = vector_zero()
    y40 = y41 = y50 = y51 = y60 = y61 = y70 = y71 = vector_zero()
    for p in range(kb):
        b0 = vector_load(b, b_at)
        b1 = vector_load(b, b_at + LANES)
        x = vector_broadcast(a, a_at + 0)
        y00 = vector_fma(x, b0, y00)
        y01 = vector_fma(x, b1, y01)
        x = vector_broadcast(a, a_at + 1)
        y10 = vector_fma(x, b0, y10)
        y11 = vector_fma(x, b1, y11)
        x = vector_broadcast(a, a_at + 2)
        y20 = vector_fma(x, b0, y20)
        y21 = vector_fma(x, b1, y21)
        x = vector_broadcast(a, a_at + 3)
        y30 = vector_fma(x, b0, y30)
        y31 = vector_fma(x, b1, y31)
        x = vector_broadcast(a, a_at + 4)
        y40 = vector_fma(x, b0, y40)
        y41 = vector_fma(x, b1, y41)
        x = vector_broadcast(a, a_at + 5)
        y50 = vector_fma(x, b0, y50)
        y51 = vector_fma(x, b1, y51)
        x = vector_broadcast(a, a_at + 6)
        y60 = vector_fma(x, b0, y60)
        y61 = vector_fma(x, b1, y61)
        x = vector_broadcast(a, a_at + 7)
        y70 = vector_fma(x, b0, y70)
        y71 = vector_fma(x, b1, y71)
        a_at += MR
        b_at += NR
    lows = (y00, y10, y20, y30, y40, y50, y60, y70)  # one row's code for all rows (smaller, faster to compile)
    highs = (y01, y11, y21, y31, y41, y51, y61, y71)
    for r in range(rows):
        at, low, high = y_at + r * ldy, lows[r], highs[r]
        if accumulate:
            low = vector_add(low, vector_load_first(y, at, left))
            high = vector_add(high, vector_load_first(y, at + LANES, right))
        if finish:
            c_row = c_at + r * c_rows
            if beta == 0.0:
                c_low = c_high = vector_zero()
            elif c_cols == 1:
                c_low, c_high = vector_load_first(c, c_row, left), vector_load_first(c, c_row + LANES, right)
            else:
                c_low = c_high = vector_splat(c[c_row])
            shift = vector_splat(row_bias[bias_at + r]) if bias_at >= 0 else vector_zero()
            low = _finish_vector(low, c_low, alpha, beta, code, p0, p1, shift, bias_at >= 0)
            high = _finish_vector(high, c_high, alpha, beta, code, p0, p1, shift, bias_at >= 0)
        vector_store_first(y, at, low, left)
        vector_store_first(y, at + LANES, high, right)
        if finish and (code == SIGMOID or code == TANH):  # no vector exp here: lane by lane
            for s in range(cols):
                y[at + s] = activate(y[at + s], code, p0, p1)


@numba.njit(cache=True, inline="always")
def _finish_vector(v, addend, alpha, beta, code, p0, p1, shift, shifted):
    """``act(alpha * v + beta * addend (+ shift))`` on 16 lanes.

    Only vectors and scalars come in: an array argument would cost an atomic reference
    count per call, far more than the arithmetic.
    """
    if alpha != 1.0:
        v = vector_mul(v, vector_splat(alpha))
    if beta != 0.0:
        v = vector_fma(addend, vector_splat(beta), v)
    if shifted:
        v = vector_add(v, shift)
    zero, one = vector_splat(np.float32(0.0)), vector_splat(np.float32(1.0))
    if code == RELU:
        v = vector_max(v, zero)
    elif code == CLIP:
        v = vector_min(vector_max(v, vector_splat(p0)), vector_splat(p1))
    elif code == LEAKY_RELU:
        v = vector_where_negative(v, vector_mul(v, vector_splat(p0)))
    elif code == HARD_SWISH:
        gate = vector_fma(v, vector_splat(np.float32(1.0 / 6.0)), vector_splat(np.float32(0.5)))
        v = vector_mul(v, vector_min(vector_max(gate, zero), one))
    elif code == HARD_SIGMOID:
        v = vector_min(vector_max(vector_fma(v, vector_splat(p0), vector_splat(p1)), zero), one)
    return v


# ============================================================================ Numba: a SIMD vector type
class Float32x16(types.Type):
    """Sixteen float32 lanes: one AVX-512 register (LLVM type ``<16 x float>``).

    On a CPU with narrower vectors LLVM splits each operation in two or four; the code stays
    correct, only slower.
    """

    def __init__(self):
        super().__init__(name="float32x16")


float32x16 = Float32x16()
_VECTOR = llvm_ir.VectorType(llvm_ir.FloatType(), LANES)
_MASK = llvm_ir.VectorType(llvm_ir.IntType(1), LANES)
_I32 = llvm_ir.IntType(32)


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _vector_pointer(context, builder, array_type, array, index):
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [index]), _VECTOR.as_pointer())


def _splat(builder, value, vector_type):
    one = builder.insert_element(llvm_ir.Constant(vector_type, llvm_ir.Undefined), value, llvm_ir.Constant(_I32, 0))
    zeros = llvm_ir.Constant(llvm_ir.VectorType(_I32, LANES), None)
    return builder.shuffle_vector(one, llvm_ir.Constant(vector_type, llvm_ir.Undefined), zeros)


def _first_lanes(builder, count):
    """The mask ``lane < count`` (an AVX-512 k-register)."""
    lanes = llvm_ir.Constant(llvm_ir.VectorType(count.type, LANES), list(range(LANES)))
    return builder.icmp_signed("<", lanes, _splat(builder, count, lanes.type))


def _llvm_function(builder, name, result, arguments):
    return cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(result, arguments), name)


@intrinsic
def vector_zero(typingctx):
    """Sixteen zeros (``_mm512_setzero_ps``)."""

    def codegen(context, builder, signature, args):
        return llvm_ir.Constant(_VECTOR, None)

    return float32x16(), codegen


@intrinsic
def vector_load(typingctx, array, index):
    """``array[index:index+16]`` from a 1-D float32 array, no alignment assumed (``_mm512_loadu_ps``)."""

    def codegen(context, builder, signature, args):
        return builder.load(_vector_pointer(context, builder, signature.args[0], *args), align=4)

    return float32x16(array, index), codegen


@intrinsic
def vector_load_first(typingctx, array, index, count):
    """``array[index:index+count]`` and zeros after (``_mm512_maskz_loadu_ps``); reads nothing past count."""

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        load = _llvm_function(builder, f"llvm.masked.load.v{LANES}f32.p0", _VECTOR,
                              [_VECTOR.as_pointer(), _I32, _MASK, _VECTOR])
        mask = _first_lanes(builder, args[2])
        return builder.call(load, [pointer, llvm_ir.Constant(_I32, 4), mask, llvm_ir.Constant(_VECTOR, None)])

    return float32x16(array, index, count), codegen


@intrinsic
def vector_broadcast(typingctx, array, index):
    """``array[index]`` in all sixteen lanes (``_mm512_set1_ps``; one ``vbroadcastss``)."""

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        return _splat(builder, builder.load(builder.gep(data, [args[1]])), _VECTOR)

    return float32x16(array, index), codegen


@intrinsic
def vector_fma(typingctx, x, y, z):
    """``x * y + z`` lane by lane, rounded once (``_mm512_fmadd_ps``; one ``vfmadd231ps``)."""

    def codegen(context, builder, signature, args):
        return builder.call(_llvm_function(builder, f"llvm.fma.v{LANES}f32", _VECTOR, [_VECTOR] * 3), args)

    return float32x16(float32x16, float32x16, float32x16), codegen


@intrinsic
def vector_add(typingctx, x, y):
    """``x + y`` lane by lane (``_mm512_add_ps``)."""

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return float32x16(float32x16, float32x16), codegen


@intrinsic
def vector_mul(typingctx, x, y):
    """``x * y`` lane by lane (``_mm512_mul_ps``)."""

    def codegen(context, builder, signature, args):
        return builder.fmul(*args)

    return float32x16(float32x16, float32x16), codegen


@intrinsic
def vector_max(typingctx, x, y):
    """``y`` where ``x < y``, else ``x`` — NaN in x stays NaN, as in ``np.maximum``."""

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered("<", *args), args[1], args[0])

    return float32x16(float32x16, float32x16), codegen


@intrinsic
def vector_min(typingctx, x, y):
    """``y`` where ``x > y``, else ``x`` — NaN in x stays NaN, as in ``np.minimum``."""

    def codegen(context, builder, signature, args):
        return builder.select(builder.fcmp_ordered(">", *args), args[1], args[0])

    return float32x16(float32x16, float32x16), codegen


@intrinsic
def vector_where_negative(typingctx, x, y):
    """``y`` in the lanes where ``x < 0``, ``x`` elsewhere (a LeakyRelu with ``y = alpha * x``)."""

    def codegen(context, builder, signature, args):
        negative = builder.fcmp_ordered("<", args[0], llvm_ir.Constant(_VECTOR, None))
        return builder.select(negative, args[1], args[0])

    return float32x16(float32x16, float32x16), codegen


@intrinsic
def vector_splat(typingctx, value):
    """A float32 scalar in all sixteen lanes (``_mm512_set1_ps``)."""

    def codegen(context, builder, signature, args):
        return _splat(builder, context.cast(builder, args[0], signature.args[0], types.float32), _VECTOR)

    return float32x16(value), codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Ask the cache for the line holding ``array[index]``, to be written soon (``prefetchw``).

    A hint only: it never faults, so ``index`` may lie past the array's end.
    """

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        pointer = builder.bitcast(builder.gep(data, [args[1]]), llvm_ir.IntType(8).as_pointer())
        hint = _llvm_function(builder, "llvm.prefetch.p0", llvm_ir.VoidType(), [pointer.type, _I32, _I32, _I32])
        builder.call(hint, [pointer, llvm_ir.Constant(_I32, 1), llvm_ir.Constant(_I32, 3), llvm_ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return types.none(array, index), codegen


@intrinsic
def vector_store_first(typingctx, array, index, value, count):
    """``array[index:index+count] = value[:count]`` (``_mm512_mask_storeu_ps``); writes nothing past count."""

    def codegen(context, builder, signature, args):
        pointer = _vector_pointer(context, builder, signature.args[0], args[0], args[1])
        store = _llvm_function(builder, f"llvm.masked.store.v{LANES}f32.p0", llvm_ir.VoidType(),
                               [_VECTOR, _VECTOR.as_pointer(), _I32, _MASK])
        builder.call(store, [args[2], pointer, llvm_ir.Constant(_I32, 4), _first_lanes(builder, args[3])])
        return context.get_dummy_value()

    return types.none(array, index, float32x16, count), codegen
