"""Transformer ops: Attention, RotaryEmbedding, SwiGLU, LinearAttention, CausalConvWithState.

**Attention** is scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You
Need")::

    Y = softmax(scale * Q @ K^T + bias) @ V

with every variant a decoder-only language model needs folded into one op: several heads,
fewer key/value heads than query heads (grouped-query attention, Ainslie et al., 2023;
multi-query attention, Shazeer, 2019), a key/value cache, a causal frontier, a sliding window
(Beltagy et al., 2020, "Longformer") and soft-capped logits (Gemma 2). The reference below is
the spec's picture in four NumPy steps: one batched matmul for the scores, one additive
``bias`` built from all the masks, a numerically stable softmax, one batched matmul with V.

**RotaryEmbedding** rotates pairs of features by a position-dependent angle (RoPE, Su et al.,
2021, "RoFormer"); **SwiGLU** is the gated feed-forward activation of Shazeer (2020), "GLU
Variants Improve Transformer". **LinearAttention** replaces the softmax by a recurrent state
``S`` updated once per token (Katharopoulos et al., 2020; gated and delta rules from
Yang et al., 2024, "Gated Delta Networks"), and **CausalConvWithState** is the short causal
depthwise convolution that precedes it in Mamba / Gated DeltaNet blocks, with its carry
state for token-by-token decoding.

Half-precision inputs (float16, bfloat16) compute in float32 and are rounded back at the end,
like MatMul in :mod:`tinyinfer.ops.linalg`. Attention is the exception: the spec defines it by
a function body in which every intermediate tensor has Q's type, so its reference rounds at
the same points (matmuls still accumulate in float32) and matches the spec bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..ir import dtypes
from ..ir.graph import Dim, Shape
from .base import REQUIRED, Op, bad_attribute, dim_product, fail, out, register, require_inputs
from .linalg import _compute_dtype as compute_dtype


# ============================================================================ Attention
@register
class Attention(Op):
    """Multi-head scaled dot-product attention with masks and a key/value cache.

    Layout: Q, K, V are all 4-D ``(batch, heads, sequence, head_size)``, or all 3-D
    ``(batch, sequence, heads * head_size)`` with the head counts given by ``q_num_heads`` and
    ``kv_num_heads``. With fewer K/V heads than Q heads, K/V head ``h`` serves the
    ``q_num_heads / kv_num_heads`` consecutive query heads ``h * group ... (h + 1) * group - 1``.

    Cache: ``past_key``/``past_value`` (4-D) are prepended to K/V along the sequence axis;
    ``present_key``/``present_value`` return the result. From opset 24 ``nonpad_kv_seqlen``
    instead says how many leading keys of each batch entry are real (an external cache).

    The additive bias is the sum of

    * ``attn_mask``: a boolean mask (True = attend, False = ``-inf``) or a float mask added to
      the scores; it broadcasts to ``(batch, q_heads, q_length, total_length)`` and a last
      axis shorter than ``total_length`` is padded with ``-inf``;
    * ``is_causal``: query ``i`` sees key ``j`` iff ``j <= i + offset`` (bottom-right
      alignment), ``offset`` being the count of keys before the query block: the past length,
      or ``nonpad_kv_seqlen - q_length`` per batch entry, else 0;
    * the sliding window (opset 25): ``p - left_window_size <= j <= p + right_window_size``
      for the query's absolute position ``p = i + offset`` (``-1``: that side unbounded);
    * padding: keys at or beyond ``nonpad_kv_seqlen[b]`` get ``-inf``.

    Scores are ``(sqrt(scale) * Q) @ (sqrt(scale) * K)^T`` (scaling both sides keeps half
    precision in range), ``scale`` defaulting to ``1 / sqrt(head_size)``; ``softcap > 0``
    maps them to ``softcap * tanh(scores / softcap)`` before the bias is added. A query row
    whose bias is ``-inf`` everywhere attends nothing: its probabilities and output are 0.

    The optional 4th output is the score matrix at the stage ``qk_matmul_output_mode`` names:
    0 after the matmul, 1 after the softcap, 2 after adding the bias, 3 after the softmax
    (mode 0 is before the softcap, as the spec says and ONNX Runtime does; ``onnx.reference``
    returns the capped scores there). ``softmax_precision`` (an ONNX float type) is the type the softmax
    runs in; by default Q's type.

    Spec: Attention-23, -24 (``nonpad_kv_seqlen``) and -25 (window sizes), with the 1.23
    errata (bottom-right causal alignment; fully-masked rows give 0 instead of NaN).
    """

    op_type = "Attention"
    since = 23
    attributes = {
        "is_causal": 0,
        "kv_num_heads": None,
        "q_num_heads": None,
        "qk_matmul_output_mode": 0,
        "scale": None,
        "softcap": 0.0,
        "softmax_precision": None,
        "left_window_size": -1,
        "right_window_size": -1,
    }

    def defaults(self, version):
        if version < 25:
            return {k: v for k, v in self.attributes.items() if not k.endswith("_window_size")}
        return self.attributes

    def check(self, node):
        attrs = node.attrs
        if attrs["is_causal"] not in (0, 1):
            raise bad_attribute(node, f"is_causal must be 0 or 1, got {attrs['is_causal']}")
        if attrs["qk_matmul_output_mode"] not in (0, 1, 2, 3):
            raise bad_attribute(node, f"qk_matmul_output_mode must be 0, 1, 2 or 3, got "
                                      f"{attrs['qk_matmul_output_mode']}")
        if attrs["softcap"] < 0:
            raise bad_attribute(node, f"softcap must be >= 0 (0 = no soft cap), got {attrs['softcap']}")
        if attrs["scale"] is not None and attrs["scale"] < 0:
            raise bad_attribute(node, f"scale must be >= 0 (Q and K are each scaled by sqrt(scale)), "
                                      f"got {attrs['scale']}")
        _check_float_type(node, "softmax_precision")
        for name in ("q_num_heads", "kv_num_heads"):
            if attrs[name] is not None and attrs[name] < 1:
                raise bad_attribute(node, f"{name} must be >= 1, got {attrs[name]}")
        for name in ("left_window_size", "right_window_size"):
            if attrs.get(name, -1) < -1:
                raise bad_attribute(node, f"{name} must be -1 (unbounded) or >= 0, got {attrs[name]}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3, 7 if node.version >= 24 else 6)
        q, k, v, mask, past_key, past_value, nonpad = (*inputs, None, None, None, None)[:7]
        _check_cache_inputs(node, past_key, past_value, nonpad)
        shapes_known = all(x.shape is not None for x in (q, k, v))
        sizes = _attention_sizes(node, q.shape, k.shape, v.shape) if shapes_known else None
        y_shape = key_shape = value_shape = scores_shape = None
        if sizes is not None:
            total = sizes.kv_length
            if past_key is not None and past_key.shape is not None and past_value.shape is not None:
                past = _check_past(node, sizes, past_key.shape, past_value.shape)
                total = past + total if isinstance(past, int) and isinstance(total, int) else None
            elif past_key is not None:
                total = None
            if sizes.packed:
                y_shape = (sizes.batch, sizes.q_length, dim_product([sizes.q_heads, sizes.v_head_size]))
            else:
                y_shape = (sizes.batch, sizes.q_heads, sizes.q_length, sizes.v_head_size)
            key_shape = (sizes.batch, sizes.kv_heads, total, sizes.head_size)
            value_shape = (sizes.batch, sizes.kv_heads, total, sizes.v_head_size)
            scores_shape = (sizes.batch, sizes.q_heads, sizes.q_length, total)
            if mask is not None and mask.shape is not None:
                _check_mask(node, mask.shape, scores_shape)
            if nonpad is not None and nonpad.shape is not None and len(nonpad.shape) != 1:
                raise fail(node, f"nonpad_kv_seqlen must be a vector (batch,), got shape {list(nonpad.shape)}")
        types = [(q.dtype, y_shape), (k.dtype, key_shape), (v.dtype, value_shape), (q.dtype, scores_shape)]
        return [out(node, i, dtype, shape) for i, (dtype, shape) in enumerate(types[: len(node.outputs)])]

    def reference(self, node, q, k, v, attn_mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        attrs = node.attrs
        sizes = _attention_sizes(node, q.shape, k.shape, v.shape)
        if sizes.packed:  # (batch, sequence, heads * size) -> (batch, heads, sequence, size)
            q, k, v = (_unpack_heads(x, heads) for x, heads in
                       ((q, sizes.q_heads), (k, sizes.kv_heads), (v, sizes.kv_heads)))
        if past_key is not None:
            k = np.concatenate([past_key, k], axis=2)
            v = np.concatenate([past_value, v], axis=2)
        present_key, present_value = k, v
        batch, q_heads, q_length, _ = q.shape
        kv_heads, total = k.shape[1], k.shape[2]
        group = q_heads // kv_heads
        t1 = q.dtype  # every intermediate has Q's type, as in the spec's function body

        # Scores, one batched matmul: query heads grouped under the K/V head they share, so K
        # is broadcast over the group instead of copied.
        scale = attrs["scale"] if attrs["scale"] is not None else 1.0 / np.sqrt(q.shape[-1])
        root = t1.type(np.sqrt(scale))
        grouped_q = (q * root).reshape(batch, kv_heads, group, q_length, -1)
        shared_k = (k * root)[:, :, None]
        raw = _matmul(grouped_q, shared_k.swapaxes(-1, -2)).reshape(batch, q_heads, q_length, total)
        capped = raw
        if attrs["softcap"] > 0:
            cap = t1.type(attrs["softcap"])
            capped = cap * np.tanh(raw / cap)

        if past_key is not None:
            offset = past_key.shape[2]
        elif nonpad_kv_seqlen is not None:
            offset = nonpad_kv_seqlen.astype(np.int64).reshape(-1, 1, 1, 1) - q_length
        else:
            offset = 0
        bias = _attention_bias(node, attn_mask, nonpad_kv_seqlen, offset, q_length, total, t1)
        logits = capped if bias is None else capped + bias

        precision = attrs["softmax_precision"]
        softmax_input = logits if precision is None else logits.astype(dtypes.from_onnx(precision))
        empty_rows = None if bias is None else np.isneginf(bias.max(axis=-1, keepdims=True))
        probabilities = _softmax_rows(softmax_input, empty_rows).astype(t1, copy=False)
        y = _matmul(probabilities.reshape(batch, kv_heads, group, q_length, total), v[:, :, None])
        y = y.reshape(batch, q_heads, q_length, -1)
        if sizes.packed:
            y = y.transpose(0, 2, 1, 3).reshape(batch, q_length, -1)

        scores = None
        if len(node.outputs) > 3 and node.outputs[3]:
            stage = (raw, capped, logits, probabilities)[attrs["qk_matmul_output_mode"]]
            scores = np.broadcast_to(stage, (batch, q_heads, q_length, total)).astype(t1)
        return y, present_key, present_value, scores


@dataclasses.dataclass
class _AttentionSizes:
    """The sizes Attention works with, read from Q, K and V (None or a symbol: unknown)."""

    batch: Dim
    q_heads: Dim
    kv_heads: Dim
    q_length: Dim
    kv_length: Dim
    head_size: Dim
    v_head_size: Dim
    packed: bool  # 3-D inputs, heads packed into the last axis


def _attention_sizes(node, q: Shape, k: Shape, v: Shape) -> _AttentionSizes:
    """Read (and cross-check) batch, head counts, lengths and head sizes from Q, K, V shapes."""
    ranks = {len(q), len(k), len(v)}
    if len(ranks) != 1 or not ranks <= {3, 4}:
        raise fail(node, f"Q, K and V must all be 3-D (batch, sequence, hidden) or all 4-D (batch, heads, "
                         f"sequence, head_size), got shapes {list(q)}, {list(k)} and {list(v)}")
    q_attr, kv_attr = node.attrs["q_num_heads"], node.attrs["kv_num_heads"]
    if len(q) == 3:
        if q_attr is None or kv_attr is None:
            raise fail(node, "3-D Q, K and V need both attributes q_num_heads and kv_num_heads, to split "
                             "the hidden axis into heads")
        sizes = _AttentionSizes(
            batch=q[0], q_heads=q_attr, kv_heads=kv_attr, q_length=q[1], kv_length=k[1],
            head_size=_split_heads(node, "Q", q[2], "q_num_heads", q_attr),
            v_head_size=_split_heads(node, "V", v[2], "kv_num_heads", kv_attr), packed=True,
        )
        k_head_size = _split_heads(node, "K", k[2], "kv_num_heads", kv_attr)
        _same(node, "the head size of Q and of K", sizes.head_size, k_head_size)
    else:
        sizes = _AttentionSizes(batch=q[0], q_heads=q[1], kv_heads=k[1], q_length=q[2], kv_length=k[2],
                                head_size=q[3], v_head_size=v[3], packed=False)
        _same(node, "the head count of K and of V (axis 1)", k[1], v[1])
        _same(node, "the head size of Q and of K (axis 3)", q[3], k[3])
        _same(node, "q_num_heads and the head count of Q (axis 1)", q_attr, q[1])
        _same(node, "kv_num_heads and the head count of K (axis 1)", kv_attr, k[1])
    _same(node, "the batch size of Q, K and V", q[0], k[0], v[0])
    _same(node, "the sequence length of K and of V", k[-2], v[-2])
    heads = (sizes.q_heads, sizes.kv_heads)
    if all(isinstance(h, int) for h in heads) and sizes.q_heads % sizes.kv_heads:
        raise fail(node, f"Q has {sizes.q_heads} heads, not a multiple of the {sizes.kv_heads} K/V heads "
                         f"(grouped-query attention shares each K/V head among a whole group)")
    return sizes


def _split_heads(node, name: str, hidden: Dim, attribute: str, heads: int) -> Dim:
    if not isinstance(hidden, int):
        return None
    if hidden % heads:
        raise fail(node, f"{name} has hidden size {hidden} (last axis), which is not divisible by "
                         f"{attribute}={heads}")
    return hidden // heads


def _same(node, what: str, *dims: Dim) -> None:
    known = {d for d in dims if isinstance(d, int)}
    if len(known) > 1:
        raise fail(node, f"{what} must agree, got {list(dims)}")


def _check_cache_inputs(node, past_key, past_value, nonpad) -> None:
    if (past_key is None) != (past_value is None):
        raise fail(node, "past_key and past_value must be given together (or both left out)")
    if nonpad is not None and past_key is not None:
        raise fail(node, "nonpad_kv_seqlen (an external cache) cannot be combined with past_key/past_value "
                         "(the op's own cache)")


def _check_past(node, sizes: _AttentionSizes, past_key: Shape, past_value: Shape) -> Dim:
    """Check the cache shapes against Q, K, V; return the past length."""
    caches = (("past_key", past_key, sizes.head_size), ("past_value", past_value, sizes.v_head_size))
    for name, shape, size in caches:
        if len(shape) != 4:
            raise fail(node, f"{name} must be 4-D (batch, kv_heads, past_length, head_size), got {list(shape)}")
        _same(node, f"the batch size of Q and {name}", sizes.batch, shape[0])
        _same(node, f"the K/V head count and axis 1 of {name}", sizes.kv_heads, shape[1])
        _same(node, f"the head size and axis 3 of {name}", size, shape[3])
    _same(node, "the past length of past_key and past_value", past_key[2], past_value[2])
    return past_key[2]


def _check_mask(node, mask: Shape, scores: Shape) -> None:
    """attn_mask broadcasts to the scores' shape; its last axis may be shorter (padded)."""
    if len(mask) > 4:
        raise fail(node, f"attn_mask has rank {len(mask)}; it must broadcast to (batch, q_heads, q_length, "
                         f"total_length) = {list(scores)}")
    if not mask:
        return
    last, total = mask[-1], scores[-1]
    if isinstance(last, int) and isinstance(total, int) and last > total:
        raise fail(node, f"attn_mask covers {last} keys, more than the {total} keys (past + current) attended")
    for dim, want in zip(reversed(mask[:-1]), reversed(scores[:-1])):
        if isinstance(dim, int) and dim != 1 and isinstance(want, int) and dim != want:
            raise fail(node, f"attn_mask of shape {list(mask)} does not broadcast to (batch, q_heads, q_length, "
                             f"total_length) = {list(scores)}")


def _attention_bias(node, mask, nonpad, offset, q_length: int, total: int, dtype) -> np.ndarray | None:
    """The additive bias (0 / -inf from the structural masks, plus ``attn_mask``), shaped to
    broadcast against the ``(batch, q_heads, q_length, total)`` scores; None if nothing masks."""
    attrs = node.attrs
    key = np.arange(total)
    position = np.arange(q_length)[:, None] + offset  # absolute position of each query
    allowed = np.ones((1, total), dtype=bool)
    if attrs["is_causal"]:
        allowed = allowed & (key <= position)
    if attrs.get("left_window_size", -1) >= 0:
        allowed = allowed & (key >= position - attrs["left_window_size"])
    if attrs.get("right_window_size", -1) >= 0:
        allowed = allowed & (key <= position + attrs["right_window_size"])
    if nonpad is not None:
        allowed = allowed & (key < nonpad.astype(np.int64).reshape(-1, 1, 1, 1))
    bias = None if allowed.all() else np.where(allowed, dtype.type(0), dtype.type(-np.inf))
    if mask is not None:
        if mask.dtype == np.bool_:
            mask = np.where(mask, dtype.type(0), dtype.type(-np.inf))
        mask = mask.astype(dtype, copy=False)
        if mask.ndim and mask.shape[-1] < total:  # a short mask leaves the later keys out
            width = [(0, 0)] * (mask.ndim - 1) + [(0, total - mask.shape[-1])]
            mask = np.pad(mask, width, constant_values=-np.inf)
        bias = mask if bias is None else bias + mask
    return bias


def _softmax_rows(logits: np.ndarray, empty_rows: np.ndarray | None) -> np.ndarray:
    """Softmax over the last axis, shifted by the row maximum; rows in ``empty_rows`` are 0."""
    zero, one = logits.dtype.type(0), logits.dtype.type(1)
    peak = logits.max(axis=-1, keepdims=True)
    peak = np.where(np.isneginf(peak), zero, peak)  # an all -inf row: exp(-inf - 0) = 0, no NaN
    e = np.exp(logits - peak)
    total = e.sum(axis=-1, keepdims=True)
    probabilities = e / np.where(total == 0, one, total)
    if empty_rows is not None:
        probabilities = np.where(empty_rows, zero, probabilities)
    return probabilities


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in ``a``'s type, accumulated in float32 for half types (like MatMul)."""
    wide = compute_dtype(a.dtype)
    return np.matmul(a.astype(wide, copy=False), b.astype(wide, copy=False)).astype(a.dtype, copy=False)


def _unpack_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(batch, sequence, heads * size) -> (batch, heads, sequence, size)."""
    batch, length, hidden = x.shape
    return x.reshape(batch, length, heads, hidden // heads).transpose(0, 2, 1, 3)


# ============================================================================ RotaryEmbedding
@register
class RotaryEmbedding(Op):
    """Rotate feature pairs of each head by a position-dependent angle (RoPE).

    For each pair ``(x1, x2)`` of the first ``rotary_embedding_dim`` features of a head
    (default: all of them), with ``cos``/``sin`` of the token's angle for that pair::

        (x1, x2) -> (cos * x1 - sin * x2,  sin * x1 + cos * x2)

    Pairs are the two halves of the rotated block (``x[i]`` with ``x[i + dim/2]``), or, with
    ``interleaved=1``, neighbours (``x[2i]`` with ``x[2i+1]``). The remaining features pass
    through. X is ``(batch, heads, sequence, head_size)`` or ``(batch, sequence, hidden)``
    with ``num_heads``. With ``position_ids`` (batch, sequence) the caches are tables
    ``(max_position + 1, dim/2)`` indexed by position; without, they are already
    ``(batch, sequence, dim/2)``. Spec: RotaryEmbedding-23.
    """

    op_type = "RotaryEmbedding"
    since = 23
    attributes = {"interleaved": 0, "num_heads": None, "rotary_embedding_dim": 0}

    def check(self, node):
        attrs = node.attrs
        if attrs["interleaved"] not in (0, 1):
            raise bad_attribute(node, f"interleaved must be 0 or 1, got {attrs['interleaved']}")
        if attrs["num_heads"] is not None and attrs["num_heads"] < 1:
            raise bad_attribute(node, f"num_heads must be >= 1, got {attrs['num_heads']}")
        dim = attrs["rotary_embedding_dim"]
        if dim < 0 or dim % 2:
            raise bad_attribute(node, f"rotary_embedding_dim must be an even number >= 0 (0 = the whole head), "
                                      f"got {dim}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3, 4)
        x, cos, sin = inputs[:3]
        positions = inputs[3] if len(inputs) > 3 else None
        if x.shape is not None:
            head_size = self._head_size(node, x.shape)
            rotary = node.attrs["rotary_embedding_dim"] or head_size
            if isinstance(head_size, int) and isinstance(rotary, int):
                if rotary > head_size or rotary % 2:
                    raise fail(node, f"rotary_embedding_dim {rotary} must be even and at most the head size "
                                     f"{head_size}")
            cache_rank = 2 if positions is not None else 3
            for name, cache in (("cos_cache", cos), ("sin_cache", sin)):
                if cache.shape is None:
                    continue
                if len(cache.shape) != cache_rank:
                    form = "(max_position + 1, dim / 2) with position_ids" if positions is not None else \
                        "(batch, sequence, dim / 2) without position_ids"
                    raise fail(node, f"{name} must be {form}, got shape {list(cache.shape)}")
                half = cache.shape[-1]
                if isinstance(half, int) and isinstance(rotary, int) and 2 * half != rotary:
                    raise fail(node, f"{name} has {half} angles per token but {rotary} features are rotated "
                                     f"(it needs rotary_embedding_dim / 2 = {rotary // 2})")
        return [out(node, 0, x.dtype, x.shape)]

    def _head_size(self, node, shape: Shape) -> Dim:
        if len(shape) == 4:
            return shape[3]
        if len(shape) != 3:
            raise fail(node, f"input must be (batch, heads, sequence, head_size) or (batch, sequence, hidden), "
                             f"got shape {list(shape)}")
        heads = node.attrs["num_heads"]
        if heads is None:
            raise fail(node, "a 3-D input needs the num_heads attribute to split its hidden axis into heads")
        return _split_heads(node, "input", shape[2], "num_heads", heads)

    def reference(self, node, x, cos_cache, sin_cache, position_ids=None):
        compute = compute_dtype(x.dtype)
        if position_ids is not None:
            positions = position_ids.astype(np.int64)
            limit = cos_cache.shape[0]
            if positions.size and (positions.min() < 0 or positions.max() >= limit):
                raise IndexError(f"position_ids must lie in [0, {limit - 1}] (the cache's rows), got values "
                                 f"in [{positions.min()}, {positions.max()}]")
            cos, sin = cos_cache[positions], sin_cache[positions]  # (batch, sequence, dim / 2)
        else:
            cos, sin = cos_cache, sin_cache
        if x.ndim == 4:  # (batch, heads, sequence, size): angles broadcast over heads
            heads_first = x.astype(compute)
            cos, sin = cos[:, None], sin[:, None]
        else:  # (batch, sequence, heads * size): split the heads, angles broadcast over them
            batch, length, hidden = x.shape
            heads_first = x.astype(compute).reshape(batch, length, node.attrs["num_heads"], -1)
            cos, sin = cos[:, :, None], sin[:, :, None]
        cos, sin = cos.astype(compute), sin.astype(compute)
        rotary = node.attrs["rotary_embedding_dim"] or heads_first.shape[-1]
        if node.attrs["interleaved"]:
            first, second = np.s_[..., 0:rotary:2], np.s_[..., 1:rotary:2]
        else:
            first, second = np.s_[..., : rotary // 2], np.s_[..., rotary // 2: rotary]
        x1, x2 = heads_first[first], heads_first[second]
        y = heads_first.copy()
        y[first] = cos * x1 - sin * x2
        y[second] = sin * x1 + cos * x2
        return y.reshape(x.shape).astype(x.dtype)


# ============================================================================ SwiGLU
@register
class SwiGLU(Op):
    """``Y = Swish_alpha(A) * B = A * sigmoid(alpha * A) * B`` for a gate A and a value B of
    the same shape (no broadcasting). Spec: SwiGLU-28."""

    op_type = "SwiGLU"
    since = 28
    attributes = {"alpha": 1.0}

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2)
        a, b = inputs
        if a.shape is not None and b.shape is not None:
            same_rank = len(a.shape) == len(b.shape)
            if not same_rank or any(isinstance(p, int) and isinstance(q, int) and p != q
                                    for p, q in zip(a.shape, b.shape)):
                raise fail(node, f"A and B must have the same shape (SwiGLU does not broadcast), got "
                                 f"{list(a.shape)} and {list(b.shape)}")
        if a.dtype is not None and b.dtype is not None and a.dtype != b.dtype:
            raise fail(node, f"A and B must have the same type, got {a.dtype} and {b.dtype}")
        shape = a.shape if a.shape is not None else b.shape
        return [out(node, 0, a.dtype, shape)]

    def reference(self, node, a, b):
        compute = compute_dtype(a.dtype)
        gate = a.astype(compute)
        y = gate * _sigmoid(compute.type(node.attrs["alpha"]) * gate) * b.astype(compute)
        return y.astype(a.dtype)


# ============================================================================ LinearAttention
_UPDATE_RULES = ("linear", "gated", "delta", "gated_delta")


@register
class LinearAttention(Op):
    """Attention with a recurrent state instead of a softmax over all past keys.

    Per K/V head a ``(d_k, d_v)`` state ``S`` (``past_state``, else zeros) is updated once per
    token ``t`` and read by the query::

        linear:       S = S + k ⊗ v
        gated:        S = exp(g) * S + k ⊗ v
        delta:        S = S + β k ⊗ (v - S^T k)
        gated_delta:  S = exp(g) S + β k ⊗ (v - exp(g) S^T k)
        o = scale * q^T S

    ``g`` is the log-space ``decay`` (per key feature, or one per head), ``β`` the update rate
    ``beta`` (per head or one for all). Q, K, V, decay and beta are packed 3-D
    ``(batch, T, heads * size)``; with fewer K/V heads, each state serves a group of
    consecutive query heads. ``scale = 0`` means ``1 / sqrt(d_k)``. Outputs: ``o`` packed
    like Q, and the last state ``present_state``. ``chunk_size`` is a hint for chunked
    kernels and does not change the result. Spec: LinearAttention-27.
    """

    op_type = "LinearAttention"
    since = 27
    attributes = {"chunk_size": 64, "kv_num_heads": REQUIRED, "q_num_heads": REQUIRED, "scale": 0.0,
                  "update_rule": "gated_delta"}

    def check(self, node):
        attrs = node.attrs
        if attrs["update_rule"] not in _UPDATE_RULES:
            raise bad_attribute(node, f"update_rule must be one of {list(_UPDATE_RULES)}, got {attrs['update_rule']!r}")
        q_heads, kv_heads = attrs["q_num_heads"], attrs["kv_num_heads"]
        if q_heads < 1 or kv_heads < 1 or q_heads % kv_heads:
            raise bad_attribute(node, f"q_num_heads ({q_heads}) must be a positive multiple of kv_num_heads "
                                      f"({kv_heads})")
        if attrs["chunk_size"] < 1:
            raise bad_attribute(node, f"chunk_size must be >= 1, got {attrs['chunk_size']}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 3, 6)
        query, key, value = inputs[:3]
        past, decay, beta = (*inputs[3:], None, None, None)[:3]
        rule = node.attrs["update_rule"]
        for name, given, needed in (("decay", decay, rule in ("gated", "gated_delta")),
                                    ("beta", beta, rule in ("delta", "gated_delta"))):
            if needed and given is None:
                raise fail(node, f"update_rule '{rule}' needs the {name} input")
            if not needed and given is not None:
                raise fail(node, f"update_rule '{rule}' takes no {name} input")
        q_heads, kv_heads = node.attrs["q_num_heads"], node.attrs["kv_num_heads"]
        output_shape = state_shape = None
        if all(x.shape is not None for x in (query, key, value)):
            for name, x in (("query", query), ("key", key), ("value", value)):
                if len(x.shape) != 3:
                    raise fail(node, f"{name} must be 3-D (batch, T, heads * size), got shape {list(x.shape)}")
            d_k = _split_heads(node, "query", query.shape[2], "q_num_heads", q_heads)
            _same(node, "the key size of query and key", d_k, _split_heads(node, "key", key.shape[2],
                                                                            "kv_num_heads", kv_heads))
            d_v = _split_heads(node, "value", value.shape[2], "kv_num_heads", kv_heads)
            _same(node, "the batch size of query, key and value", query.shape[0], key.shape[0], value.shape[0])
            _same(node, "the length T of query, key and value", query.shape[1], key.shape[1], value.shape[1])
            output_shape = (query.shape[0], query.shape[1], dim_product([q_heads, d_v]))
            state_shape = (query.shape[0], kv_heads, d_k, d_v)
            self._check_gates(node, decay, beta, kv_heads, d_k)
            if past is not None and past.shape is not None:
                if len(past.shape) != 4 or any(isinstance(p, int) and isinstance(s, int) and p != s
                                               for p, s in zip(past.shape, state_shape)):
                    raise fail(node, f"past_state must have shape (batch, kv_heads, d_k, d_v) = {list(state_shape)}, "
                                     f"got {list(past.shape)}")
        state_dtype = past.dtype if past is not None else query.dtype
        return [out(node, 0, query.dtype, output_shape), out(node, 1, state_dtype, state_shape)]

    def _check_gates(self, node, decay, beta, kv_heads: int, d_k: Dim) -> None:
        if decay is not None and decay.shape is not None:
            allowed = {kv_heads, dim_product([kv_heads, d_k])}
            if len(decay.shape) != 3 or (isinstance(decay.shape[2], int) and None not in allowed
                                         and decay.shape[2] not in allowed):
                raise fail(node, f"decay must be (batch, T, kv_heads) or (batch, T, kv_heads * d_k), "
                                 f"got shape {list(decay.shape)}")
        if beta is not None and beta.shape is not None:
            if len(beta.shape) != 3 or (isinstance(beta.shape[2], int) and beta.shape[2] not in (1, kv_heads)):
                raise fail(node, f"beta must be (batch, T, kv_heads) or (batch, T, 1), got shape {list(beta.shape)}")

    def reference(self, node, query, key, value, past_state=None, decay=None, beta=None):
        attrs = node.attrs
        q_heads, kv_heads = attrs["q_num_heads"], attrs["kv_num_heads"]
        group = q_heads // kv_heads
        batch, length, _ = query.shape
        compute = np.dtype(np.float32)  # every allowed type is float32 or narrower
        # Per time step t: q (batch, kv_heads, group, d_k); k (batch, kv_heads, d_k); v likewise.
        q = _unpack_heads(query.astype(compute), q_heads)
        q = q.reshape(batch, kv_heads, group, length, -1)
        k = _unpack_heads(key.astype(compute), kv_heads)
        v = _unpack_heads(value.astype(compute), kv_heads)
        d_k, d_v = k.shape[-1], v.shape[-1]
        scale = attrs["scale"] or 1.0 / np.sqrt(d_k)
        if decay is not None:  # (batch, T, kv_heads [* d_k]) -> (batch, kv_heads, T, d_k or 1, 1)
            decay_factor = np.exp(_unpack_heads(decay.astype(compute), kv_heads))[..., None]
        if beta is not None:  # (batch, T, kv_heads or 1) -> (batch, kv_heads or 1, T, 1)
            beta = _unpack_heads(beta.astype(compute), beta.shape[-1])
        state = (np.zeros((batch, kv_heads, d_k, d_v), compute) if past_state is None
                 else past_state.astype(compute))
        outputs = np.empty((batch, kv_heads, group, length, d_v), compute)
        for t in range(length):  # the recurrence is sequential in t by definition
            k_t, v_t = k[:, :, t], v[:, :, t]
            if decay is not None:
                state = state * decay_factor[:, :, t]
            if beta is not None:  # delta rule: write only what the state does not predict yet
                predicted = np.matmul(k_t[:, :, None, :], state)[:, :, 0]
                v_t = beta[:, :, t] * (v_t - predicted)
            state = state + k_t[..., :, None] * v_t[..., None, :]
            outputs[:, :, :, t] = np.matmul(q[:, :, :, t], state)
        output = (scale * outputs).reshape(batch, q_heads, length, d_v).transpose(0, 2, 1, 3)
        state_dtype = past_state.dtype if past_state is not None else query.dtype
        return output.reshape(batch, length, q_heads * d_v).astype(query.dtype), state.astype(state_dtype)


# ============================================================================ CausalConvWithState
_ACTIVATIONS = ("none", "silu", "swish")


@register
class CausalConvWithState(Op):
    """Causal depthwise 1-D convolution that carries its left context between calls.

    With ``k`` taps per channel, the input ``(batch, channels, L)`` is prefixed with the
    ``k - 1`` positions of ``past_state`` (zeros if absent), and each output position sees
    itself and the ``k - 1`` positions before it::

        y[b, c, l] = bias[c] + sum_j weight[c, 0, j] * padded[b, c, l + j]

    optionally followed by SiLU (``activation="silu"`` or its alias ``"swish"``:
    ``y * sigmoid(y)``). ``present_state`` is the last ``k - 1`` positions of ``padded``,
    the ``past_state`` of the next call. Spec: CausalConvWithState-27.
    """

    op_type = "CausalConvWithState"
    since = 27
    attributes = {"activation": "none"}

    def check(self, node):
        if node.attrs["activation"] not in _ACTIVATIONS:
            raise bad_attribute(node, f"activation must be one of {list(_ACTIVATIONS)}, got "
                                      f"{node.attrs['activation']!r}")

    def infer(self, node, inputs):
        require_inputs(node, inputs, 2, 4)
        x, weight = inputs[:2]
        bias, past = (*inputs[2:], None, None)[:2]
        state_shape = None
        if x.shape is not None and len(x.shape) != 3:
            raise fail(node, f"input must be (batch, channels, length), got shape {list(x.shape)}")
        if weight.shape is not None:
            if len(weight.shape) != 3 or (isinstance(weight.shape[1], int) and weight.shape[1] != 1):
                raise fail(node, f"weight must be (channels, 1, k), got shape {list(weight.shape)}")
            if x.shape is not None:
                _same(node, "the channels of input (axis 1) and weight (axis 0)", x.shape[1], weight.shape[0])
                taps = weight.shape[2]
                state_shape = (x.shape[0], x.shape[1], taps - 1 if isinstance(taps, int) else None)
        if bias is not None and bias.shape is not None and x.shape is not None:
            if len(bias.shape) != 1:
                raise fail(node, f"bias must be a vector (channels,), got shape {list(bias.shape)}")
            _same(node, "the channels of input and bias", x.shape[1], bias.shape[0])
        if past is not None and past.shape is not None and state_shape is not None:
            if len(past.shape) != 3 or any(isinstance(p, int) and isinstance(s, int) and p != s
                                           for p, s in zip(past.shape, state_shape)):
                raise fail(node, f"past_state must be (batch, channels, k - 1) = {list(state_shape)}, got "
                                 f"{list(past.shape)}")
        return [out(node, 0, x.dtype, x.shape), out(node, 1, x.dtype, state_shape)]

    def reference(self, node, x, weight, bias=None, past_state=None):
        compute = compute_dtype(x.dtype)
        batch, channels, length = x.shape
        taps = weight.shape[2]
        if past_state is None:
            past_state = np.zeros((batch, channels, taps - 1), x.dtype)
        padded = np.concatenate([past_state.astype(x.dtype), x], axis=2)
        wide = padded.astype(compute)
        kernel = weight.astype(compute)[:, 0]  # (channels, k)
        y = np.zeros((batch, channels, length), compute)
        for j in range(taps):  # k is small (a handful of taps)
            y += kernel[:, j, None] * wide[:, :, j: j + length]
        if bias is not None:
            y += bias.astype(compute)[:, None]
        if node.attrs["activation"] in ("silu", "swish"):
            y = y * _sigmoid(y)
        return y.astype(x.dtype), padded[:, :, length:]


# ============================================================================ private helpers
def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 0.5 * (1 + tanh(x / 2)) equals 1 / (1 + exp(-x)) and never overflows.
    return 0.5 * (1 + np.tanh(0.5 * x))


def _check_float_type(node, name: str) -> None:
    code = node.attrs[name]
    if code is None:
        return
    try:
        dtype = dtypes.from_onnx(code)
    except KeyError:
        dtype = None
    if dtype not in dtypes.FLOAT_TYPES:
        raise bad_attribute(node, f"{name} must be an ONNX floating-point type code (1 float, 10 float16, "
                                  f"11 double, 16 bfloat16), got {code}")
