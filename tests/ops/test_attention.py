"""Transformer ops against independent oracles.

Oracles:

* Attention — ``naive_attention`` below: one query of one head at a time, every key's score
  and every mask rule written as the spec states it (``j <= i + offset`` ...), in float64;
  ONNX Runtime for the cases it implements; and properties (a causal query ignores later
  keys, keys are a set without a causal mask, probabilities sum to 1).
* RotaryEmbedding — a per-pair rotation loop, ONNX Runtime, and RoPE's defining property:
  the dot product of a rotated query and key depends only on their distance.
* SwiGLU — its formula in float64.
* LinearAttention — the closed forms of the linear and gated rules (a sum over past tokens,
  no recurrence), ``onnx.reference`` for the delta rules, and the state carry: one call over
  T tokens equals two calls over halves, the second given the first's present_state.
* CausalConvWithState — ``numpy.convolve`` per channel, and the same state-carry property.

Tolerances: float32 results against float64 oracles that sum at most a few dozen products
and one softmax: ``rtol=atol=1e-5``. Against ONNX Runtime (float32 both) the same. float16
and bfloat16 are compared with ``onnx.reference``, which computes the same sequence of
roundings; one unit in the last place of bfloat16 is 2**-8, so ``rtol=atol=1e-2`` there.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_oracle import assert_matches_reference, infer_outputs, run_onnxruntime, run_reference, run_tinyinfer

import ml_dtypes
from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError

FLOAT32 = dict(rtol=1e-5, atol=1e-5)
HALF = dict(rtol=1e-2, atol=1e-2)


def random(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ============================================================================ Attention oracle
def naive_attention(q, k, v, mask=None, past_key=None, past_value=None, nonpad=None, *, q_num_heads=None,
                    kv_num_heads=None, is_causal=0, scale=None, softcap=0.0, left_window_size=-1,
                    right_window_size=-1):
    """Y, present K/V and the four score stages (raw, capped, biased, probabilities), in float64,
    one (batch, head, query) at a time."""
    packed = q.ndim == 3
    if packed:
        q, k, v = (x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(0, 2, 1, 3)
                   for x, heads in ((q, q_num_heads), (k, kv_num_heads), (v, kv_num_heads)))
    if past_key is not None:
        k, v = np.concatenate([past_key, k], axis=2), np.concatenate([past_value, v], axis=2)
    present_key, present_value = k, v
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    batch, q_heads, q_length, head_size = q.shape
    kv_heads, total = k.shape[1], k.shape[2]
    scale = 1 / np.sqrt(head_size) if scale is None else scale
    y = np.zeros((batch, q_heads, q_length, v.shape[-1]))
    stages = np.zeros((4, batch, q_heads, q_length, total))
    for b in range(batch):
        if past_key is not None:
            offset = past_key.shape[2]
        elif nonpad is not None:
            offset = int(nonpad[b]) - q_length
        else:
            offset = 0
        for h in range(q_heads):
            kv_head = h // (q_heads // kv_heads)
            for i in range(q_length):
                position = i + offset
                raw = np.array([scale * np.dot(q[b, h, i], k[b, kv_head, j]) for j in range(total)])
                capped = softcap * np.tanh(raw / softcap) if softcap else raw
                bias = np.array([_bias(mask, (b, h, i, j), position, j, nonpad, b, is_causal, left_window_size,
                                       right_window_size) for j in range(total)])
                logits = capped + bias
                if np.all(np.isneginf(bias)):
                    probabilities = np.zeros(total)
                else:
                    e = np.exp(logits - logits.max())
                    probabilities = e / e.sum()
                stages[:, b, h, i] = raw, capped, logits, probabilities
                y[b, h, i] = sum(probabilities[j] * v[b, kv_head, j] for j in range(total))
    if packed:
        y = y.transpose(0, 2, 1, 3).reshape(batch, q_length, -1)
    return y, present_key, present_value, stages


def _bias(mask, index, position, j, nonpad, b, is_causal, left, right):
    """The spec's rules for key j of the query at absolute ``position``, one by one."""
    allowed = True
    if is_causal and j > position:
        allowed = False
    if left >= 0 and j < position - left:
        allowed = False
    if right >= 0 and j > position + right:
        allowed = False
    if nonpad is not None and j >= nonpad[b]:
        allowed = False
    bias = 0.0 if allowed else -np.inf
    if mask is not None:
        if j >= mask.shape[-1]:  # a short mask: later keys are padded with -inf
            return -np.inf
        # NumPy broadcasting written out: right-aligned, a size-1 axis always reads index 0.
        where = tuple(0 if size == 1 else index[4 - mask.ndim + axis] for axis, size in enumerate(mask.shape))
        value = mask[where]
        bias += (0.0 if value else -np.inf) if mask.dtype == np.bool_ else float(value)
    return bias


def attention_inputs(layout, seed=0, dtype=np.float32):
    """Q, K, V and head attributes for a named layout."""
    shapes = {  # (Q, K, V, attributes)
        "mha": ((2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), {}),
        "gqa": ((2, 4, 4, 8), (2, 2, 6, 8), (2, 2, 6, 8), {}),
        "mqa": ((1, 4, 3, 4), (1, 1, 5, 4), (1, 1, 5, 4), {}),
        "v_head_size": ((2, 2, 3, 8), (2, 2, 5, 8), (2, 2, 5, 6), {}),
        "packed": ((2, 4, 24), (2, 6, 24), (2, 6, 24), dict(q_num_heads=3, kv_num_heads=3)),
        "packed_gqa": ((2, 4, 32), (2, 6, 16), (2, 6, 12), dict(q_num_heads=4, kv_num_heads=2)),
    }
    q_shape, k_shape, v_shape, attrs = shapes[layout]
    return [random(q_shape, dtype, seed), random(k_shape, dtype, seed + 1), random(v_shape, dtype, seed + 2)], attrs


def check_attention(inputs, opset=23, n_outputs=1, **attrs):
    """tinyinfer against the naive oracle, every requested output."""
    got = run_tinyinfer("Attention", inputs, n_outputs, opset=opset, **attrs)
    mode = attrs.pop("qk_matmul_output_mode", 0)
    y, present_key, present_value, stages = naive_attention(*inputs, **attrs)
    want = [y, present_key, present_value, stages[mode]][:n_outputs]
    for g, w in zip(got, want):
        assert g.dtype == inputs[0].dtype
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, **FLOAT32)
    return got


# ============================================================================ Attention
@pytest.mark.parametrize("layout", ["mha", "gqa", "mqa", "v_head_size", "packed", "packed_gqa"])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_layouts(layout, is_causal):
    inputs, attrs = attention_inputs(layout)
    check_attention(inputs, is_causal=is_causal, **attrs)


@pytest.mark.parametrize("attrs", [dict(scale=0.3), dict(softcap=1.5), dict(scale=2.0, softcap=0.7)])
def test_attention_scale_and_softcap(attrs):
    inputs, heads = attention_inputs("gqa")
    check_attention(inputs, **attrs, **heads)


@pytest.mark.parametrize("mask_shape", [(4, 6), (1, 6), (6,), (3, 4, 6), (2, 1, 4, 6), (2, 3, 4, 6),
                                        (4, 4), (2, 1, 1, 2)])
@pytest.mark.parametrize("kind", ["float", "bool"])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_masks(mask_shape, kind, is_causal):
    """Float masks add, boolean masks allow; broadcast right-aligned; a short last axis
    leaves the later keys out."""
    inputs, _ = attention_inputs("mha")
    rng = np.random.default_rng(3)
    mask = rng.random(mask_shape) > 0.3 if kind == "bool" else random(mask_shape, seed=3)
    check_attention([*inputs, mask], opset=24, is_causal=is_causal)


@pytest.mark.parametrize("layout", ["mha", "gqa", "packed_gqa"])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_past_and_present(layout, is_causal):
    """The cache is prepended; a causal query i sees keys up to past_length + i."""
    inputs, attrs = attention_inputs(layout)
    (q, k, v), packed = inputs, inputs[0].ndim == 3
    kv_heads = attrs["kv_num_heads"] if packed else k.shape[1]
    head_size = q.shape[-1] // attrs["q_num_heads"] if packed else k.shape[-1]
    v_head_size = v.shape[-1] // kv_heads if packed else v.shape[-1]
    past_key = random((2, kv_heads, 5, head_size), seed=7)
    past_value = random((2, kv_heads, 5, v_head_size), seed=8)
    mask = random((q.shape[-2], 11), seed=9)  # 5 past + 6 current keys
    check_attention([*inputs, mask, past_key, past_value], n_outputs=3, is_causal=is_causal, **attrs)


@pytest.mark.parametrize("nonpad", [[6, 3], [4, 6], [1, 2]])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_nonpad_kv_seqlen(nonpad, is_causal):
    """An external cache: keys from nonpad[b] on are padding; a causal query block sits at
    the end of the valid keys (offset nonpad[b] - q_length, empty rows when negative)."""
    inputs, _ = attention_inputs("gqa")
    nonpad = np.array(nonpad, np.int64)
    got = check_attention([*inputs, None, None, None, nonpad], opset=24, is_causal=is_causal)
    assert np.all(np.isfinite(got[0]))


@pytest.mark.parametrize("windows", [(2, -1), (-1, 1), (1, 2), (0, 0)])
@pytest.mark.parametrize("is_causal", [0, 1])
def test_attention_sliding_window(windows, is_causal):
    left, right = windows
    inputs, attrs = attention_inputs("packed_gqa")
    check_attention(inputs, opset=25, is_causal=is_causal, left_window_size=left, right_window_size=right, **attrs)


def test_attention_window_with_past_and_nonpad():
    inputs, _ = attention_inputs("mha")
    past = [random((2, 3, 4, 8), seed=5), random((2, 3, 4, 8), seed=6)]
    check_attention([*inputs, None, *past], opset=25, n_outputs=3, is_causal=1, left_window_size=3)
    check_attention([*inputs, None, None, None, np.array([5, 6], np.int64)], opset=25, left_window_size=1,
                    right_window_size=0)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_matmul_output_modes(mode):
    inputs, _ = attention_inputs("gqa")
    mask = random((4, 6), seed=4)
    check_attention([*inputs, mask], n_outputs=4, softcap=1.2, is_causal=1, qk_matmul_output_mode=mode)


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_attention_qk_matmul_output_matches_onnxruntime(mode):
    """Mode 0 is the raw product even with a softcap (the spec's wording, and ONNX Runtime)."""
    inputs, _ = attention_inputs("mha")
    attrs = dict(opset=24, softcap=1.0, qk_matmul_output_mode=mode)
    got = run_tinyinfer("Attention", [*inputs, random((4, 6), seed=4)], 4, **attrs)
    want = run_onnxruntime("Attention", [*inputs, random((4, 6), seed=4)], 4, **attrs)
    np.testing.assert_allclose(got[3], want[3], **FLOAT32)
    np.testing.assert_allclose(got[0], want[0], **FLOAT32)


def test_attention_fully_masked_rows_are_zero():
    """A query that may attend no key yields a zero row, in Y and in the mode-3 output."""
    inputs, _ = attention_inputs("mha")
    mask = np.ones((4, 6), bool)
    mask[1] = False
    y, _, _, probabilities = run_tinyinfer("Attention", [*inputs, mask], 4, opset=23, qk_matmul_output_mode=3)
    assert np.all(y[:, :, 1] == 0) and np.all(probabilities[:, :, 1] == 0)
    assert np.all(np.isfinite(y)) and np.all(y[:, :, [0, 2, 3]] != 0)
    np.testing.assert_allclose(probabilities[:, :, [0, 2, 3]].sum(axis=-1), 1, **FLOAT32)


def test_attention_causal_query_ignores_later_keys():
    """Property: with is_causal, row i depends only on keys/values 0..i."""
    (q, k, v), _ = attention_inputs("mha")
    k, v = k[:, :, :4], v[:, :, :4]
    (y,) = run_tinyinfer("Attention", [q, k, v], opset=23, is_causal=1)
    for i in range(4):
        k2, v2 = k.copy(), v.copy()
        k2[:, :, i + 1:] = random(k2[:, :, i + 1:].shape, seed=10 + i)
        v2[:, :, i + 1:] = 100.0
        (y2,) = run_tinyinfer("Attention", [q, k2, v2], opset=23, is_causal=1)
        np.testing.assert_array_equal(y2[:, :, : i + 1], y[:, :, : i + 1])


def test_attention_keys_are_a_set():
    """Property: without a causal mask, permuting keys with their values changes nothing."""
    (q, k, v), _ = attention_inputs("gqa")
    order = np.random.default_rng(0).permutation(k.shape[2])
    (y,) = run_tinyinfer("Attention", [q, k, v], opset=23)
    (y2,) = run_tinyinfer("Attention", [q, k[:, :, order], v[:, :, order]], opset=23)
    np.testing.assert_allclose(y2, y, **FLOAT32)


@pytest.mark.parametrize("case", ["mha_causal", "packed_gqa_mask", "bool_mask", "past", "softcap"])
def test_attention_matches_onnxruntime(case):
    inputs, attrs = attention_inputs("packed_gqa" if case == "packed_gqa_mask" else "mha")
    n_outputs = 1
    if case == "mha_causal":
        attrs["is_causal"] = 1
    elif case == "packed_gqa_mask":
        inputs.append(random((4, 6), seed=3))
    elif case == "bool_mask":
        inputs.append(np.random.default_rng(3).random((2, 1, 4, 6)) > 0.3)
    elif case == "past":
        inputs += [None, random((2, 3, 5, 8), seed=4), random((2, 3, 5, 8), seed=5)]
        attrs["is_causal"], n_outputs = 1, 3
    else:
        attrs.update(softcap=2.0, scale=0.3)
    got = run_tinyinfer("Attention", inputs, n_outputs, opset=24, **attrs)
    want = run_onnxruntime("Attention", inputs, n_outputs, opset=24, **attrs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **FLOAT32)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_attention_half_precision_matches_reference(dtype):
    """Half types keep Q's type through every step, like the spec's function body."""
    inputs, attrs = attention_inputs("gqa", dtype=dtype)
    mask = random((4, 6), dtype, seed=3)
    assert_matches_reference("Attention", [*inputs, mask], 4, opset=24, is_causal=1, qk_matmul_output_mode=2,
                             **attrs, **HALF)


def test_attention_softmax_precision():
    inputs, _ = attention_inputs("mha", dtype=np.float16)
    got = run_tinyinfer("Attention", inputs, 4, opset=24, softmax_precision=1, qk_matmul_output_mode=3)
    want = run_reference("Attention", inputs, 4, opset=24, softmax_precision=1, qk_matmul_output_mode=3)
    assert got[3].dtype == np.float16  # the mode-3 output has Q's type, whatever the softmax ran in
    np.testing.assert_allclose(got[0].astype(np.float32), want[0].astype(np.float32), **HALF)


def test_attention_infers_symbolic_shapes():
    q, k, v = random((2, 4, 32)), random((2, 6, 16)), random((2, 6, 12))
    past = [random((2, 2, 5, 8)), random((2, 2, 5, 6))]
    y, present_key, present_value, scores = infer_outputs(
        "Attention", [q, k, v, None, *past], 4, opset=23, q_num_heads=4, kv_num_heads=2,
        shapes={0: ["B", "S", 32], 1: ["B", 6, 16], 2: ["B", 6, 12], 4: ["B", 2, 5, 8], 5: ["B", 2, 5, 6]})
    assert y.shape == ("B", "S", 24)  # 4 query heads of V's head size 6
    assert present_key.shape == ("B", 2, 11, 8) and present_value.shape == ("B", 2, 11, 6)
    assert scores.shape == ("B", 4, "S", 11)


@pytest.mark.parametrize("inputs, attrs, message", [
    ([(2, 4, 25), (2, 6, 24), (2, 6, 24)], dict(q_num_heads=3, kv_num_heads=3),
     "Q has hidden size 25.*not divisible by q_num_heads=3"),
    ([(2, 4, 24), (2, 6, 24), (2, 6, 24)], {}, "need both attributes q_num_heads and kv_num_heads"),
    ([(2, 3, 4, 8), (2, 2, 6, 8), (2, 2, 6, 8)], {}, "3 heads, not a multiple of the 2 K/V heads"),
    ([(2, 3, 4, 8), (2, 3, 6, 4), (2, 3, 6, 8)], {}, "head size of Q and of K"),
    ([(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 5, 8)], {}, "sequence length of K and of V"),
    ([(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6)], {}, r"all be 3-D \(batch, sequence, hidden\) or all 4-D"),
    ([(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), (4, 7)], {}, "attn_mask covers 7 keys, more than the 6"),
    ([(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), (2, 4, 6)], {}, "does not broadcast"),
    ([(2, 3, 4, 8), (2, 3, 6, 8), (2, 3, 6, 8), None, (2, 3, 5, 8)], {}, "past_key and past_value"),
])
def test_attention_bad_shapes(inputs, attrs, message):
    arrays = [None if s is None else random(s) for s in inputs]
    with pytest.raises(ShapeInferenceError, match=rf"attention_node.*{message}"):
        run_tinyinfer("Attention", arrays, opset=23, **attrs)


def test_attention_nonpad_with_past_is_refused():
    inputs, _ = attention_inputs("mha")
    past = [random((2, 3, 5, 8)), random((2, 3, 5, 8))]
    with pytest.raises(ShapeInferenceError, match="cannot be combined with past_key"):
        run_tinyinfer("Attention", [*inputs, None, *past, np.array([3, 4], np.int64)], opset=24)


@pytest.mark.parametrize("attrs, message", [
    (dict(is_causal=2), "is_causal must be 0 or 1"),
    (dict(qk_matmul_output_mode=4), "qk_matmul_output_mode must be 0, 1, 2 or 3"),
    (dict(softcap=-1.0), "softcap must be >= 0"),
    (dict(softmax_precision=7), "softmax_precision must be an ONNX floating-point type"),
    (dict(scale=-0.5), "scale must be >= 0"),
])
def test_attention_bad_attributes(attrs, message):
    inputs, _ = attention_inputs("mha")
    with pytest.raises(InvalidAttributeError, match=rf"attention_node.*{message}"):
        run_tinyinfer("Attention", inputs, opset=23, **attrs)


def test_attention_window_needs_opset_25():
    inputs, _ = attention_inputs("mha")
    with pytest.raises(InvalidAttributeError, match="unknown attribute.*left_window_size"):
        run_tinyinfer("Attention", inputs, opset=24, left_window_size=2)
    with pytest.raises(InvalidAttributeError, match="left_window_size must be -1"):
        run_tinyinfer("Attention", inputs, opset=25, left_window_size=-2)


# ============================================================================ RotaryEmbedding
def naive_rotary(x, cos, sin, position_ids=None, *, interleaved=0, rotary_embedding_dim=0, num_heads=None):
    """Rotate each pair (x[a], x[b]) by the angle of its token, one pair at a time, in float64."""
    x = x.astype(np.float64)
    packed = x.ndim == 3
    heads_first = x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(0, 2, 1, 3) if packed else x.copy()
    y = heads_first.copy()
    batch, heads, length, size = heads_first.shape
    rotary = rotary_embedding_dim or size
    for b in range(batch):
        for s in range(length):
            row = position_ids[b, s] if position_ids is not None else None
            for pair in range(rotary // 2):
                c = cos[row, pair] if row is not None else cos[b, s, pair]
                n = sin[row, pair] if row is not None else sin[b, s, pair]
                first, second = (2 * pair, 2 * pair + 1) if interleaved else (pair, pair + rotary // 2)
                for h in range(heads):
                    x1, x2 = heads_first[b, h, s, first], heads_first[b, h, s, second]
                    y[b, h, s, first] = c * x1 - n * x2
                    y[b, h, s, second] = n * x1 + c * x2
    return y.transpose(0, 2, 1, 3).reshape(x.shape) if packed else y


def rope_cache(positions, dim, base=10000.0):
    """The usual RoPE tables: angle = position * base ** (-2 i / dim)."""
    frequencies = base ** (-np.arange(0, dim, 2) / dim)
    angles = np.arange(positions)[:, None] * frequencies[None]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


@pytest.mark.parametrize("interleaved", [0, 1])
@pytest.mark.parametrize("rotary_embedding_dim", [0, 4])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("with_positions", [False, True])
def test_rotary_embedding_matches_pair_loop(interleaved, rotary_embedding_dim, packed, with_positions):
    rotary = rotary_embedding_dim or 8
    x = random((2, 3, 4, 8)) if not packed else random((2, 4, 24))
    attrs = dict(interleaved=interleaved, rotary_embedding_dim=rotary_embedding_dim)
    if packed:
        attrs["num_heads"] = 3
    if with_positions:
        cos, sin = rope_cache(20, rotary)
        positions = np.random.default_rng(0).integers(0, 20, (2, 4))
        inputs = [x, cos, sin, positions]
    else:
        cos, sin = random((2, 4, rotary // 2), seed=1), random((2, 4, rotary // 2), seed=2)
        inputs = [x, cos, sin]
    (y,) = run_tinyinfer("RotaryEmbedding", inputs, opset=23, **attrs)
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, naive_rotary(*inputs, **attrs), **FLOAT32)


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_matches_onnxruntime(interleaved):
    x = random((2, 2, 5, 8))
    cos, sin = rope_cache(16, 8)
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    inputs = [x, cos, sin, positions]
    (got,) = run_tinyinfer("RotaryEmbedding", inputs, opset=23, interleaved=interleaved)
    (want,) = run_onnxruntime("RotaryEmbedding", inputs, opset=23, interleaved=interleaved)
    np.testing.assert_allclose(got, want, **FLOAT32)


def test_rotary_embedding_encodes_relative_position():
    """RoPE's point: <rope(q, m), rope(k, n)> depends only on m - n."""
    cos, sin = rope_cache(32, 8)
    q, k = random((1, 1, 1, 8), seed=1), random((1, 1, 1, 8), seed=2)

    def rotate(x, position):
        (y,) = run_tinyinfer("RotaryEmbedding", [x, cos, sin, np.array([[position]])], opset=23)
        return y.astype(np.float64).ravel()

    for m, n in [(5, 2), (13, 10), (30, 27)]:
        np.testing.assert_allclose(rotate(q, m) @ rotate(k, n), rotate(q, 3) @ rotate(k, 0), rtol=1e-5)


def test_rotary_embedding_float16_matches_reference():
    x = random((1, 2, 3, 8), np.float16)
    cos, sin = (c.astype(np.float16) for c in rope_cache(8, 8))
    assert_matches_reference("RotaryEmbedding", [x, cos, sin, np.array([[1, 2, 5]])], opset=23, **HALF)


def test_rotary_embedding_errors():
    cos, sin = rope_cache(8, 8)
    positions = np.zeros((2, 3), np.int64)
    with pytest.raises(ShapeInferenceError, match="rotaryembedding_node.*needs the num_heads attribute"):
        run_tinyinfer("RotaryEmbedding", [random((2, 3, 16)), cos, sin, positions], opset=23)
    with pytest.raises(ShapeInferenceError, match="cos_cache has 4 angles per token but 4 features"):
        run_tinyinfer("RotaryEmbedding", [random((2, 1, 3, 8)), cos, sin, positions], opset=23,
                      rotary_embedding_dim=4)
    with pytest.raises(InvalidAttributeError, match="rotary_embedding_dim must be an even number"):
        run_tinyinfer("RotaryEmbedding", [random((2, 1, 3, 8)), cos, sin, positions], opset=23,
                      rotary_embedding_dim=3)
    with pytest.raises(Exception, match="position_ids must lie in"):
        run_tinyinfer("RotaryEmbedding", [random((2, 1, 3, 8)), cos, sin, positions + 8], opset=23)


# ============================================================================ SwiGLU
@pytest.mark.parametrize("alpha", [1.0, 0.5, 1.702])
def test_swiglu_formula(alpha):
    a, b = random((3, 5), seed=1), random((3, 5), seed=2)
    (y,) = run_tinyinfer("SwiGLU", [a, b], opset=28, alpha=alpha)
    wide = a.astype(np.float64)
    np.testing.assert_allclose(y, wide / (1 + np.exp(-alpha * wide)) * b, **FLOAT32)


def test_swiglu_float16_and_errors():
    a, b = random((4, 6), np.float16, 1), random((4, 6), np.float16, 2)
    assert_matches_reference("SwiGLU", [a, b], opset=28, rtol=1e-3, atol=1e-3)
    with pytest.raises(ShapeInferenceError, match="swiglu_node.*same shape"):
        run_tinyinfer("SwiGLU", [random((4, 6)), random((4, 1))], opset=28)


# ============================================================================ LinearAttention
def linear_attention_closed_form(query, key, value, decay=None, *, q_num_heads, kv_num_heads, scale=0.0):
    """Linear and (per-head) gated rules without a recurrence:
    o_t = scale * sum_{s <= t} exp(g_{s+1} + ... + g_t) (q_t . k_s) v_s."""
    batch, length, _ = query.shape
    d_k = query.shape[-1] // q_num_heads
    scale = scale or 1 / np.sqrt(d_k)
    q = query.astype(np.float64).reshape(batch, length, q_num_heads, d_k)
    k = key.astype(np.float64).reshape(batch, length, kv_num_heads, d_k)
    v = value.astype(np.float64).reshape(batch, length, kv_num_heads, -1)
    out = np.zeros((batch, length, q_num_heads, v.shape[-1]))
    for b in range(batch):
        for h in range(q_num_heads):
            g = h // (q_num_heads // kv_num_heads)
            for t in range(length):
                for s in range(t + 1):
                    weight = np.exp(decay[b, s + 1: t + 1, g].sum()) if decay is not None else 1.0
                    out[b, t, h] += weight * (q[b, t, h] @ k[b, s, g]) * v[b, s, g]
    return scale * out.reshape(batch, length, -1)


@pytest.mark.parametrize("heads", [(2, 2), (4, 2), (4, 1)])
def test_linear_attention_closed_forms(heads):
    q_heads, kv_heads = heads
    query, key, value = random((2, 5, q_heads * 4), seed=1), random((2, 5, kv_heads * 4), seed=2), \
        random((2, 5, kv_heads * 3), seed=3)
    attrs = dict(q_num_heads=q_heads, kv_num_heads=kv_heads)
    output, state = run_tinyinfer("LinearAttention", [query, key, value], 2, opset=27, update_rule="linear", **attrs)
    np.testing.assert_allclose(output, linear_attention_closed_form(query, key, value, **attrs), **FLOAT32)
    assert state.shape == (2, kv_heads, 4, 3)
    decay = -np.abs(random((2, 5, kv_heads), seed=4))
    output, _ = run_tinyinfer("LinearAttention", [query, key, value, None, decay], 2, opset=27, update_rule="gated",
                              scale=0.3, **attrs)
    np.testing.assert_allclose(output, linear_attention_closed_form(query, key, value, decay, scale=0.3, **attrs),
                               **FLOAT32)


@pytest.mark.parametrize("rule", ["delta", "gated_delta"])
def test_linear_attention_delta_rules_match_reference(rule):
    query, key, value = random((2, 4, 16), seed=1), random((2, 4, 8), seed=2), random((2, 4, 6), seed=3)
    key /= np.linalg.norm(key.reshape(2, 4, 2, 4), axis=-1).repeat(4, axis=-1)
    beta = 1 / (1 + np.exp(-random((2, 4, 2), seed=4)))
    decay = -np.abs(random((2, 4, 8), seed=5)) if rule == "gated_delta" else None
    inputs = [query, key, value, random((2, 2, 4, 3), seed=6), decay, beta]
    assert_matches_reference("LinearAttention", inputs, 2, opset=27, q_num_heads=4, kv_num_heads=2,
                             update_rule=rule, **FLOAT32)


def test_linear_attention_state_carries_across_calls():
    query, key, value = random((1, 6, 8), seed=1), random((1, 6, 8), seed=2), random((1, 6, 8), seed=3)
    decay, beta = -np.abs(random((1, 6, 2), seed=4)), np.full((1, 6, 1), 0.5, np.float32)
    attrs = dict(opset=27, q_num_heads=2, kv_num_heads=2)
    whole, final = run_tinyinfer("LinearAttention", [query, key, value, None, decay, beta], 2, **attrs)
    first, middle = run_tinyinfer("LinearAttention", [query[:, :3], key[:, :3], value[:, :3], None, decay[:, :3],
                                                      beta[:, :3]], 2, **attrs)
    second, last = run_tinyinfer("LinearAttention", [query[:, 3:], key[:, 3:], value[:, 3:], middle, decay[:, 3:],
                                                     beta[:, 3:]], 2, **attrs)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, **FLOAT32)
    np.testing.assert_allclose(last, final, **FLOAT32)


def test_linear_attention_errors():
    q = random((1, 2, 8))
    with pytest.raises(ShapeInferenceError, match="linearattention_node.*'gated_delta' needs the decay input"):
        run_tinyinfer("LinearAttention", [q, q, q], 2, opset=27, q_num_heads=2, kv_num_heads=2)
    with pytest.raises(ShapeInferenceError, match="'linear' takes no beta input"):
        run_tinyinfer("LinearAttention", [q, q, q, None, None, random((1, 2, 2))], 2, opset=27, q_num_heads=2,
                      kv_num_heads=2, update_rule="linear")
    with pytest.raises(InvalidAttributeError, match="must be a positive multiple of kv_num_heads"):
        run_tinyinfer("LinearAttention", [q, q, q], 2, opset=27, q_num_heads=3, kv_num_heads=2, update_rule="linear")
    with pytest.raises(InvalidAttributeError, match="update_rule must be one of"):
        run_tinyinfer("LinearAttention", [q, q, q], 2, opset=27, q_num_heads=2, kv_num_heads=2, update_rule="mamba")


# ============================================================================ CausalConvWithState
@pytest.mark.parametrize("taps", [1, 3, 4])
@pytest.mark.parametrize("activation", ["none", "silu"])
@pytest.mark.parametrize("with_past", [False, True])
def test_causal_conv_matches_numpy_convolve(taps, activation, with_past):
    x, weight, bias = random((2, 3, 7), seed=1), random((3, 1, taps), seed=2), random((3,), seed=3)
    past = random((2, 3, taps - 1), seed=4) if with_past else np.zeros((2, 3, taps - 1), np.float32)
    inputs = [x, weight, bias, past] if with_past else [x, weight, bias]
    y, state = run_tinyinfer("CausalConvWithState", inputs, 2, opset=27, activation=activation)
    padded = np.concatenate([past, x], axis=2).astype(np.float64)
    want = np.empty((2, 3, 7))
    for b in range(2):
        for c in range(3):  # convolve flips the kernel; the op correlates, so flip it back
            want[b, c] = np.convolve(padded[b, c], weight[c, 0, ::-1], mode="valid") + bias[c]
    if activation == "silu":
        want = want / (1 + np.exp(-want))
    np.testing.assert_allclose(y, want, **FLOAT32)
    np.testing.assert_array_equal(state, padded[:, :, 7:].astype(np.float32))


def test_causal_conv_state_carries_across_calls():
    x, weight = random((1, 2, 9), seed=1), random((2, 1, 4), seed=2)
    whole, final = run_tinyinfer("CausalConvWithState", [x, weight], 2, opset=27)
    state = None
    pieces = []
    for start, stop in [(0, 2), (2, 3), (3, 9)]:  # including a piece shorter than k - 1
        piece, state = run_tinyinfer("CausalConvWithState", [x[:, :, start:stop], weight, None, state]
                                     if state is not None else [x[:, :, start:stop], weight], 2, opset=27)
        pieces.append(piece)
    np.testing.assert_allclose(np.concatenate(pieces, axis=2), whole, **FLOAT32)
    np.testing.assert_array_equal(state, final)


def test_causal_conv_errors():
    with pytest.raises(ShapeInferenceError, match="causalconvwithstate_node.*channels of input"):
        run_tinyinfer("CausalConvWithState", [random((1, 3, 5)), random((2, 1, 3))], 2, opset=27)
    with pytest.raises(InvalidAttributeError, match="activation must be one of"):
        run_tinyinfer("CausalConvWithState", [random((1, 2, 5)), random((2, 1, 3))], 2, opset=27, activation="gelu")
