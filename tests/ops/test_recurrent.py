"""RNN, GRU and LSTM against per-sample loops and ONNX Runtime.

Oracles:

* ``naive_layer`` below: the spec's equations written for one batch entry and one time step
  at a time, in float64, with each entry's sequence walked forwards or backwards within its
  own length. No batching, no gathered time indices, no masks.
* ONNX Runtime for the configurable parts (activations with alpha/beta, clip,
  input_forget, peepholes) and for older opsets.
* A layout identity: ``layout=1`` (batch first) is ``layout=0`` with the batch and sequence
  axes swapped (ONNX Runtime does not implement ``layout=1``).

Tolerance: each step is a few products of length <= 8 of values ~1 in float32, then
activations whose slope is <= 1; errors stay around 1e-7 per step and do not grow over 5-7
steps, so ``rtol=1e-5, atol=1e-5`` against float64 loops and ONNX Runtime's float32.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx_oracle import Initializer, infer_outputs, run_onnxruntime, run_tinyinfer

from tinyinfer.errors import InvalidAttributeError, ShapeInferenceError, TinyInferError

FLOAT32 = dict(rtol=1e-5, atol=1e-5)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def naive_cell(op, x, h, c, w, r, b, p, linear_before_reset=0):
    """One step of one batch entry, straight from the spec's equations (default activations)."""
    hidden = h.shape[0]
    wb, rb = b[: len(b) // 2], b[len(b) // 2:]

    def block(matrix, k):
        return matrix[k * hidden:(k + 1) * hidden]

    if op == "RNN":
        return np.tanh(w @ x + r @ h + wb + rb), c
    if op == "GRU":
        z = sigmoid(block(w, 0) @ x + block(r, 0) @ h + block(wb, 0) + block(rb, 0))
        reset = sigmoid(block(w, 1) @ x + block(r, 1) @ h + block(wb, 1) + block(rb, 1))
        if linear_before_reset:
            candidate = np.tanh(block(w, 2) @ x + reset * (block(r, 2) @ h + block(rb, 2)) + block(wb, 2))
        else:
            candidate = np.tanh(block(w, 2) @ x + block(r, 2) @ (reset * h) + block(rb, 2) + block(wb, 2))
        return (1 - z) * candidate + z * h, c
    # LSTM, gates stacked i, o, f, c; peepholes i, o, f
    p_i, p_o, p_f = p[:hidden], p[hidden:2 * hidden], p[2 * hidden:]
    i = sigmoid(block(w, 0) @ x + block(r, 0) @ h + p_i * c + block(wb, 0) + block(rb, 0))
    f = sigmoid(block(w, 2) @ x + block(r, 2) @ h + p_f * c + block(wb, 2) + block(rb, 2))
    cell = np.tanh(block(w, 3) @ x + block(r, 3) @ h + block(wb, 3) + block(rb, 3))
    c_new = f * c + i * cell
    o = sigmoid(block(w, 1) @ x + block(r, 1) @ h + p_o * c_new + block(wb, 1) + block(rb, 1))
    return o * np.tanh(c_new), c_new


def naive_layer(op, x, w, r, b=None, lengths=None, h0=None, c0=None, p=None, direction="forward",
                linear_before_reset=0):
    """Y, Y_h, Y_c (layout 0) by looping over directions, batch entries and time steps."""
    x, w, r = (a.astype(np.float64) for a in (x, w, r))
    seq, batch, _ = x.shape
    directions, hidden = w.shape[0], r.shape[2]
    b = np.zeros((directions, 2 * GATES[op] * hidden)) if b is None else b.astype(np.float64)
    p = np.zeros((directions, 3 * hidden)) if p is None else p.astype(np.float64)
    h0 = np.zeros((directions, batch, hidden)) if h0 is None else h0.astype(np.float64)
    c0 = np.zeros((directions, batch, hidden)) if c0 is None else c0.astype(np.float64)
    lengths = [seq] * batch if lengths is None else list(lengths)
    y = np.zeros((seq, directions, batch, hidden))
    y_h = np.zeros((directions, batch, hidden))
    y_c = np.zeros((directions, batch, hidden))
    for d in range(directions):
        backwards = direction == "reverse" or d == 1
        for n in range(batch):
            h, c = h0[d, n], c0[d, n]
            times = range(lengths[n] - 1, -1, -1) if backwards else range(lengths[n])
            for t in times:
                h, c = naive_cell(op, x[t, n], h, c, w[d], r[d], b[d], p[d], linear_before_reset)
                y[t, d, n] = h
            if lengths[n]:  # an empty sequence ends with a zero state (ONNX Runtime's choice)
                y_h[d, n], y_c[d, n] = h, c
    return y, y_h, y_c


def make_inputs(op, *, seq=5, batch=3, input_size=4, hidden=3, directions=1, lengths=None, initial=True,
                peepholes=False, seed=0, dtype=np.float32):
    """X, W, R, B, sequence_lens, initial_h (, initial_c, P) for layout 0; None = left out."""
    rng = np.random.default_rng(seed)
    gates = GATES[op]

    def normal(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(dtype)

    inputs = [
        normal(seq, batch, input_size),
        normal(directions, gates * hidden, input_size, scale=0.5),
        normal(directions, gates * hidden, hidden, scale=0.5),
        normal(directions, 2 * gates * hidden, scale=0.5),
        None if lengths is None else np.array(lengths, dtype=np.int32),
        normal(directions, batch, hidden) if initial else None,
    ]
    if op == "LSTM":
        inputs += [normal(directions, batch, hidden) if initial else None,
                   normal(directions, 3 * hidden, scale=0.5) if peepholes else None]
    while inputs[-1] is None:
        inputs.pop()
    return inputs


def outputs_of(op):
    return 3 if op == "LSTM" else 2


def check_against_loops(op, inputs, direction="forward", **attrs):
    directions = inputs[1].shape[0]
    hidden = inputs[2].shape[2]
    got = run_tinyinfer(op, inputs, outputs_of(op), direction=direction, hidden_size=hidden, **attrs)
    padded = list(inputs) + [None] * (8 - len(inputs))
    x, w, r, b, lengths, h0, c0, p = padded
    want = naive_layer(op, x, w, r, b, lengths, h0, c0, p, direction, attrs.get("linear_before_reset", 0))
    assert got[0].shape == (x.shape[0], directions, x.shape[1], hidden)
    for g, expected in zip(got, want):
        assert g.dtype == x.dtype
        np.testing.assert_allclose(g, expected, **FLOAT32)


# ---------------------------------------------------------------------------- against loops
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("lengths", [None, [5, 2, 3], [1, 5, 0]], ids=["full", "ragged", "with_empty"])
def test_layers_match_per_sample_loops(op, direction, lengths):
    directions = 2 if direction == "bidirectional" else 1
    inputs = make_inputs(op, directions=directions, lengths=lengths, peepholes=True)
    check_against_loops(op, inputs, direction)


@pytest.mark.parametrize("linear_before_reset", [0, 1])
def test_gru_linear_before_reset_matches_loops(linear_before_reset):
    inputs = make_inputs("GRU", directions=2, lengths=[4, 5, 1], seed=3)
    check_against_loops("GRU", inputs, "bidirectional", linear_before_reset=linear_before_reset)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_optional_inputs_default_to_zero(op):
    x, w, r = make_inputs(op, initial=False, seed=5)[:3]
    check_against_loops(op, [x, w, r])


# ---------------------------------------------------------------------------- against ONNX Runtime
ORT_CASES = [
    ("RNN", dict(activations=["LeakyRelu"], activation_alpha=[0.3])),
    ("RNN", dict(activations=["ThresholdedRelu"], activation_alpha=[0.2])),
    ("RNN", dict(activations=["Relu", "Softsign"], direction="bidirectional")),
    ("RNN", dict(clip=0.5)),
    # alpha/beta are consumed only by the activations that take them: here LeakyRelu gets 0.05.
    ("GRU", dict(activations=["Sigmoid", "LeakyRelu"], activation_alpha=[0.05])),
    ("GRU", dict(activations=["HardSigmoid", "Elu"], activation_alpha=[0.3, 0.5], activation_beta=[0.4])),
    ("GRU", dict(clip=0.7, linear_before_reset=1, direction="reverse")),
    ("LSTM", dict(activations=["Sigmoid", "Affine", "ScaledTanh"], activation_alpha=[0.3, 0.5],
                  activation_beta=[0.4, 0.7])),
    ("LSTM", dict(activations=["Sigmoid", "Tanh", "Tanh", "HardSigmoid", "Softplus", "Softsign"],
                  direction="bidirectional")),
    ("LSTM", dict(input_forget=1, clip=1.5)),
    ("LSTM", dict(direction="reverse")),
]


@pytest.mark.parametrize("op, attrs", ORT_CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(ORT_CASES)])
def test_attributes_match_onnxruntime(op, attrs):
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    inputs = make_inputs(op, directions=directions, lengths=[5, 3, 4], peepholes=True, seed=7)
    got = run_tinyinfer(op, inputs, outputs_of(op), hidden_size=3, **attrs)
    want = run_onnxruntime(op, inputs, outputs_of(op), hidden_size=3, **attrs)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **FLOAT32)


@pytest.mark.parametrize("op, opset", [("RNN", 7), ("GRU", 7), ("LSTM", 7), ("LSTM", 14)])
def test_older_opsets_match_onnxruntime(op, opset):
    inputs = make_inputs(op, seed=11)
    got = run_tinyinfer(op, inputs, outputs_of(op), opset=opset, hidden_size=3)
    want = run_onnxruntime(op, inputs, outputs_of(op), opset=opset, hidden_size=3)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, **FLOAT32)


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_opset_1_output_sequence_attribute_is_accepted(op):
    # Opset 1 had ``output_sequence`` (ONNX Runtime runs nothing older than opset 7).
    inputs = make_inputs(op, seed=12)
    check_against_loops(op, inputs, opset=1, output_sequence=1)


# ---------------------------------------------------------------------------- layout, dtypes, weights
@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_batch_first_layout_is_the_transposed_layout(op):
    inputs = make_inputs(op, directions=2, lengths=[5, 2, 4], seed=2)
    sequence_first = run_tinyinfer(op, inputs, outputs_of(op), direction="bidirectional", hidden_size=3)
    batch_first_inputs = list(inputs)
    batch_first_inputs[0] = inputs[0].swapaxes(0, 1).copy()
    for i in (5, 6):  # initial_h, initial_c: (batch, directions, hidden)
        if i < len(inputs):
            batch_first_inputs[i] = inputs[i].swapaxes(0, 1).copy()
    batch_first = run_tinyinfer(op, batch_first_inputs, outputs_of(op), direction="bidirectional", hidden_size=3,
                                layout=1)
    np.testing.assert_array_equal(batch_first[0], sequence_first[0].transpose(2, 0, 1, 3))
    for got, want in zip(batch_first[1:], sequence_first[1:]):
        np.testing.assert_array_equal(got, want.swapaxes(0, 1))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("op", ["GRU", "LSTM"])
def test_layers_keep_float16_and_float64(op, dtype):
    inputs = make_inputs(op, lengths=[5, 4, 2], dtype=dtype, seed=4)
    got = run_tinyinfer(op, inputs, outputs_of(op), hidden_size=3)
    want = naive_layer(op, *(list(inputs) + [None] * (8 - len(inputs))))
    # float16: inputs and outputs rounded to an 11-bit mantissa, values ~1 -> 2e-3.
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-3)
    for g, w in zip(got, want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g.astype(np.float64), w, **tolerance)


def test_weights_as_initializers_and_omitted_outputs():
    x, w, r, b = make_inputs("LSTM", seed=9)[:4]
    # Only Y_c asked for: Y and Y_h left out with empty names.
    model_inputs = [x, Initializer(w), Initializer(r), Initializer(b)]
    got = run_tinyinfer("LSTM", model_inputs, 3, hidden_size=3)
    _, _, want_c = naive_layer("LSTM", x, w, r, b)
    np.testing.assert_allclose(got[2], want_c, **FLOAT32)


# ---------------------------------------------------------------------------- shapes and errors
@pytest.mark.parametrize("layout", [0, 1])
def test_shape_inference_keeps_symbols(layout):
    x, w, r = make_inputs("LSTM", directions=2)[:3]
    shape = ("batch", "seq", 4) if layout else ("seq", "batch", 4)
    y, y_h, y_c = infer_outputs("LSTM", [x, Initializer(w), Initializer(r)], 3, shapes={0: shape},
                                direction="bidirectional", layout=layout)
    if layout:
        assert y.shape == ("batch", "seq", 2, 3) and y_h.shape == y_c.shape == ("batch", 2, 3)
    else:
        assert y.shape == ("seq", 2, "batch", 3) and y_h.shape == y_c.shape == (2, "batch", 3)
    assert y.dtype == np.float32


def test_bad_direction_is_an_attribute_error():
    with pytest.raises(InvalidAttributeError, match="direction must be one of"):
        run_tinyinfer("RNN", make_inputs("RNN")[:3], 2, direction="sideways")


def test_unknown_activation_is_an_attribute_error():
    with pytest.raises(InvalidAttributeError, match="unknown activation"):
        run_tinyinfer("RNN", make_inputs("RNN")[:3], 2, activations=["Swish"])


def test_wrong_number_of_activations_is_an_attribute_error():
    with pytest.raises(InvalidAttributeError, match="3 function"):
        run_tinyinfer("LSTM", make_inputs("LSTM")[:3], 3, activations=["Sigmoid", "Tanh"])


def test_weights_for_the_wrong_direction_count_are_a_shape_error():
    x, w, r = make_inputs("GRU")[:3]  # one direction of weights
    with pytest.raises(ShapeInferenceError, match=r"W must have shape \[2, 9, 4\]"):
        run_tinyinfer("GRU", [x, w, r], 2, direction="bidirectional")


def test_sequence_lengths_longer_than_the_input_are_refused():
    inputs = make_inputs("RNN", lengths=[5, 6, 1])
    with pytest.raises(TinyInferError, match=r"sequence_lens must lie in \[0, 5\]"):
        run_tinyinfer("RNN", inputs, 2, hidden_size=3)
