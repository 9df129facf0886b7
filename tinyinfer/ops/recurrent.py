"""Recurrent layers: RNN, GRU and LSTM (ONNX opset 1-22).

A recurrent layer runs one *cell* along a sequence. At time step ``t`` the cell reads the
input ``X[t]`` and its own state from step ``t - 1`` (the hidden state ``H``, and for an
LSTM also the cell state ``C``) and computes the new state; the layer's output ``Y`` is the
hidden state of every step, ``Y_h`` (and ``Y_c``) the state after the last one.

The three ops share everything but the cell, so :class:`_RecurrentLayer` holds the common
part and each op adds only its cell equations (Elman 1990 for RNN; Cho et al. 2014, "Learning
Phrase Representations using RNN Encoder-Decoder", for GRU; Hochreiter & Schmidhuber 1997
with Gers & Schmidhuber's peepholes, 2000, for LSTM):

* **Input projection once.** ``X[t] @ W^T + Wb`` does not depend on the state, so it is one
  matrix product over all time steps before the loop. Inside the loop only the recurrent
  product ``H @ R^T`` is left: one ``(batch, hidden) @ (hidden, gates*hidden)`` product per
  step, every gate at once.
* **The time loop is a Python loop**, because step ``t`` needs the result of step
  ``t - 1``; everything inside a step is vectorised over batch and hidden units.
* **Directions.** ``reverse`` runs the same cell over each sequence read backwards;
  ``bidirectional`` runs one cell per direction, each with its own weights.
* **sequence_lens.** Batch entries may have shorter sequences. Reading "backwards" then
  means from each entry's own last step, so the steps are gathered through a per-entry time
  index; an entry whose sequence has ended keeps its state (``Y_h`` is its state after its
  last real step) and writes zeros to ``Y``. An empty sequence ends with a zero state.
* **layout=1** (opset 14) stores batch first: ``X`` is ``(batch, seq, input)``; it is
  transposed on the way in and out.

Gate activations are configurable (``activations``, with ``activation_alpha`` and
``activation_beta``); the spec lists the functions in :data:`ACTIVATIONS`. ``clip`` bounds
every gate's input to ``[-clip, clip]`` before its activation.
"""

from __future__ import annotations

import abc

from typing import Callable

import numpy as np

from .base import Op, bad_attribute, fail, out, register, require_inputs
from .conv import _compute_dtype

DIRECTIONS = ("forward", "reverse", "bidirectional")


# ---------------------------------------------------------------------------- activations
def _sigmoid(x, alpha, beta):
    # 1 / (1 + e^-x) written with tanh, which cannot overflow for large negative x.
    return 0.5 * (np.tanh(0.5 * x) + 1.0)


#: name (lower case) -> (function(x, alpha, beta), default alpha, default beta). The
#: defaults are those of the ONNX ops of the same name (LeakyRelu, HardSigmoid, Elu, ...).
ACTIVATIONS: dict[str, tuple[Callable, float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (_sigmoid, None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x >= a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}


def activation_functions(node, count: int, default: tuple[str, ...]) -> list[Callable[[np.ndarray], np.ndarray]]:
    """The node's activations as one-argument functions, forward direction first.

    ``activation_alpha``/``activation_beta`` are consumed in order by the activations that
    take an alpha (beta), as ONNX Runtime reads them; the others use their defaults. A single
    direction's list is repeated for the reverse direction of a bidirectional layer.
    """
    names = list(node.attrs["activations"] or default)
    directions = 2 if node.attrs["direction"] == "bidirectional" else 1
    if len(names) == count and directions == 2:
        names = names * 2
    alphas = list(node.attrs["activation_alpha"] or [])
    betas = list(node.attrs["activation_beta"] or [])
    functions = []
    for name in names:
        fn, alpha, beta = ACTIVATIONS[name.lower()]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append(lambda x, fn=fn, alpha=alpha, beta=beta: fn(x, alpha, beta))
    return functions


# ---------------------------------------------------------------------------- the shared layer
class _RecurrentLayer(Op):
    """What RNN, GRU and LSTM share: inputs, shapes, directions, sequence lengths, layout.

    Inputs: ``X, W, R, B, sequence_lens, initial_h`` (+ ``initial_c, P`` for LSTM).
    Subclasses set ``gates`` (blocks stacked in W and R), ``activation_count`` (activations
    per direction), ``default_activations``, ``state_count`` (H, or H and C) and implement
    :meth:`cell`.
    """

    gates = 1
    activation_count = 1
    default_activations: tuple[str, ...] = ()
    state_count = 1
    since = 1
    attributes = {
        "activation_alpha": None,
        "activation_beta": None,
        "activations": None,
        "clip": None,
        "direction": "forward",
        "hidden_size": None,
        "layout": 0,
    }

    def defaults(self, version):
        # ``layout`` (opset 14) and GRU's ``linear_before_reset`` (opset 3) are accepted at every
        # version: their defaults keep the older meaning.
        spec = dict(self.attributes)
        if version < 7:  # opset 1 had an output_sequence switch for Y (Y is optional anyway)
            spec["output_sequence"] = 0
        return spec

    def check(self, node):
        attrs = node.attrs
        if attrs["direction"] not in DIRECTIONS:
            raise bad_attribute(node, f"direction must be one of {list(DIRECTIONS)}, got {attrs['direction']!r}")
        if attrs["layout"] not in (0, 1):
            raise bad_attribute(node, f"layout must be 0 (sequence first) or 1 (batch first), got {attrs['layout']}")
        if attrs["hidden_size"] is not None and attrs["hidden_size"] < 1:
            raise bad_attribute(node, f"hidden_size must be >= 1, got {attrs['hidden_size']}")
        if attrs["clip"] is not None and attrs["clip"] <= 0:
            raise bad_attribute(node, f"clip must be a positive threshold, got {attrs['clip']}")
        names = attrs["activations"]
        if names is not None:
            unknown = [n for n in names if n.lower() not in ACTIVATIONS]
            if unknown:
                raise bad_attribute(node, f"unknown activation(s) {unknown}; expected names from "
                                          f"{sorted(ACTIVATIONS)} (any case)")
            directions = 2 if attrs["direction"] == "bidirectional" else 1
            allowed = {self.activation_count, self.activation_count * directions}
            if len(names) not in allowed:
                raise bad_attribute(node, f"activations must list {self.activation_count} function(s) per direction "
                                          f"({self.activation_count * directions} for direction "
                                          f"{attrs['direction']!r}), got {len(names)}: {names}")

    # ------------------------------------------------------------------ shapes
    def infer(self, node, inputs):
        n_inputs = 8 if self.state_count == 2 else 6
        require_inputs(node, inputs, 3, n_inputs)
        x, w, r = inputs[:3]
        rest = list(inputs[3:]) + [None] * (n_inputs - len(inputs))
        batch_first = node.attrs["layout"] == 1
        directions = 2 if node.attrs["direction"] == "bidirectional" else 1
        hidden = self._hidden_size(node, w, r)
        seq = batch = None
        if x.shape is not None:
            if len(x.shape) != 3:
                raise fail(node, f"X must be 3-D ({'batch, seq' if batch_first else 'seq, batch'}, input_size), "
                                 f"got shape {list(x.shape)}")
            seq, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        input_size = x.shape[2] if x.shape is not None else None
        gates = self.gates * hidden if isinstance(hidden, int) else None
        self._expect(node, "W", w, (directions, gates, input_size))
        self._expect(node, "R", r, (directions, gates, hidden))
        self._expect(node, "B", rest[0], (directions, 2 * gates if gates else None))
        self._expect(node, "sequence_lens", rest[1], (batch,))
        state_shape = (batch, directions, hidden) if batch_first else (directions, batch, hidden)
        self._expect(node, "initial_h", rest[2], state_shape)
        if self.state_count == 2:
            self._expect(node, "initial_c", rest[3], state_shape)
            self._expect(node, "P", rest[4], (directions, 3 * hidden if isinstance(hidden, int) else None))
        if rest[1] is not None and rest[1].dtype is not None and rest[1].dtype != np.int32:
            raise fail(node, f"sequence_lens must be int32, got {rest[1].dtype}")
        y_shape = (batch, seq, directions, hidden) if batch_first else (seq, directions, batch, hidden)
        results = [out(node, 0, x.dtype, y_shape)]
        for i in range(1, min(len(node.outputs), 1 + self.state_count)):
            results.append(out(node, i, x.dtype, state_shape))
        return results

    def _hidden_size(self, node, w, r):
        if node.attrs["hidden_size"] is not None:
            return node.attrs["hidden_size"]
        if r is not None and r.shape is not None and len(r.shape) == 3:
            return r.shape[2]
        if w is not None and w.shape is not None and len(w.shape) == 3 and isinstance(w.shape[1], int):
            return w.shape[1] // self.gates
        return None

    def _expect(self, node, name, value, shape):
        """Check an input's shape against what the spec says, where both are known."""
        if value is None or value.shape is None:
            return
        if len(value.shape) != len(shape) or any(
            isinstance(got, int) and isinstance(want, int) and got != want for got, want in zip(value.shape, shape)
        ):
            expected = ", ".join("?" if not isinstance(d, int) else str(d) for d in shape)
            raise fail(node, f"{name} must have shape [{expected}] (direction={node.attrs['direction']!r}, "
                             f"layout={node.attrs['layout']}, {self.gates} gate(s)), got {list(value.shape)}")

    # ------------------------------------------------------------------ computation
    def reference(self, node, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
        dtype, compute = x.dtype, _compute_dtype(x.dtype)
        batch_first = node.attrs["layout"] == 1
        if batch_first:  # work sequence-first, as layout 0 stores it
            x = x.swapaxes(0, 1)
            initial_h = None if initial_h is None else initial_h.swapaxes(0, 1)
            initial_c = None if initial_c is None else initial_c.swapaxes(0, 1)
        seq, batch = x.shape[:2]
        directions, hidden = w.shape[0], r.shape[2]
        x, w, r = (a.astype(compute, copy=False) for a in (x, w, r))
        b = np.zeros((directions, 2 * self.gates * hidden), compute) if b is None else b.astype(compute, copy=False)
        lengths = self._lengths(node, sequence_lens, seq, batch)
        states = [initial_h, initial_c][: self.state_count]
        states = [np.zeros((directions, batch, hidden), compute) if s is None else s.astype(compute, copy=False)
                  for s in states]
        functions = activation_functions(node, self.activation_count, self.default_activations)
        outputs, finals = [], []
        for d in range(directions):
            reverse = node.attrs["direction"] == "reverse" or d == 1
            weights = {
                "R": r[d],
                "Rb": b[d, self.gates * hidden:],
                "P": None if p is None else p[d].astype(compute, copy=False),
            }
            projected = x @ w[d].T + b[d, : self.gates * hidden]  # every step's X W^T + Wb at once
            activations = functions[d * self.activation_count:(d + 1) * self.activation_count]
            step = self._step_function(node, weights, activations)
            y, final = run_direction(step, projected, [s[d] for s in states], lengths, reverse)
            outputs.append(y)
            finals.append(final)
        y = np.stack(outputs, axis=1)  # (seq, directions, batch, hidden)
        final_states = [np.stack([f[i] for f in finals]) for i in range(self.state_count)]
        if batch_first:
            y = y.transpose(2, 0, 1, 3)
            final_states = [s.swapaxes(0, 1) for s in final_states]
        results = [y.astype(dtype, copy=False)] + [s.astype(dtype, copy=False) for s in final_states]
        return tuple(results[: max(1, len(node.outputs))])

    def _lengths(self, node, sequence_lens, seq, batch):
        """Per-entry sequence lengths, or None when every entry runs all ``seq`` steps."""
        if sequence_lens is None:
            return None
        lengths = np.asarray(sequence_lens).astype(np.int64).reshape(-1)
        if lengths.shape != (batch,):
            raise fail(node, f"sequence_lens must hold one length per batch entry ({batch}), got {lengths.shape[0]}")
        if ((lengths < 0) | (lengths > seq)).any():
            raise fail(node, f"sequence_lens must lie in [0, {seq}] (the sequence length of X), got {lengths.tolist()}")
        return None if (lengths == seq).all() else lengths

    def _step_function(self, node, weights, activations):
        clip = node.attrs["clip"]
        squash = (lambda v: v) if clip is None else (lambda v: np.clip(v, -clip, clip))
        return lambda projected, states: self.cell(node, projected, states, weights, activations, squash)

    @abc.abstractmethod
    def cell(self, node, projected, states, weights, activations, squash):
        """One time step: the new states from ``projected = X[t] W^T + Wb`` and the old states."""


def run_direction(step, projected, states, lengths, reverse):
    """Run ``step`` along the time axis of ``projected`` (seq, batch, gates*hidden).

    Returns ``Y`` (seq, batch, hidden) in the original time order and the final states. With
    ``lengths``, entry ``b`` runs only its first ``lengths[b]`` steps (read backwards from step
    ``lengths[b] - 1`` when ``reverse``); later steps keep the state and output zeros.
    """
    seq, batch = projected.shape[:2]
    hidden = states[0].shape[-1]
    steps = np.arange(seq)[:, None]
    entries = np.arange(batch)
    if reverse and lengths is not None:
        # order[k, b]: the time step entry b reads at iteration k, its own sequence backwards.
        # Reversing within each entry's length is its own inverse, so the same gather puts Y
        # back in time order.
        order = np.where(steps < lengths, lengths - 1 - steps, steps)
        projected = projected[order, entries]
    elif reverse:
        projected = projected[::-1]
    active = None if lengths is None else steps < lengths  # (seq, batch)
    y = np.zeros((seq, batch, hidden), dtype=projected.dtype)
    for k in range(seq):
        new = step(projected[k], states)
        if active is not None:
            keep = active[k][:, None]
            new = [np.where(keep, n, s) for n, s in zip(new, states)]
            y[k] = np.where(keep, new[0], 0)
        else:
            y[k] = new[0]
        states = new
    if reverse and lengths is not None:
        y = y[order, entries]
    elif reverse:
        y = y[::-1]
    if lengths is not None and (lengths == 0).any():
        # An empty sequence has no last step: its final state is zero, as in ONNX Runtime
        # (the spec leaves it open).
        states = [np.where((lengths == 0)[:, None], 0, s) for s in states]
    return y, states


# ---------------------------------------------------------------------------- RNN
@register
class RNN(_RecurrentLayer):
    """Simple (Elman) RNN: ``H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb)``, f = Tanh by default.

    Spec: RNN-22 (layout from RNN-14; RNN-1 also had ``output_sequence``).
    """

    op_type = "RNN"
    gates = 1
    activation_count = 1
    default_activations = ("Tanh",)

    def cell(self, node, projected, states, weights, activations, squash):
        (h,) = states
        (f,) = activations
        return [f(squash(projected + h @ weights["R"].T + weights["Rb"]))]


# ---------------------------------------------------------------------------- GRU
@register
class GRU(_RecurrentLayer):
    """Gated recurrent unit; W, R and B stack the update (z), reset (r) and hidden (h) gates.

    ``z = f(X Wz^T + H Rz^T + Wbz + Rbz)``, ``r = f(X Wr^T + H Rr^T + Wbr + Rbr)``,
    ``h = g(X Wh^T + (r * H) Rh^T + Rbh + Wbh)`` (or ``g(X Wh^T + r * (H Rh^T + Rbh) + Wbh)``
    with ``linear_before_reset``), ``H_t = (1 - z) * h + z * H``; f = Sigmoid, g = Tanh by
    default. Spec: GRU-22 (linear_before_reset since GRU-3, layout since GRU-14).
    """

    op_type = "GRU"
    gates = 3
    activation_count = 2
    default_activations = ("Sigmoid", "Tanh")
    attributes = {**_RecurrentLayer.attributes, "linear_before_reset": 0}

    def cell(self, node, projected, states, weights, activations, squash):
        (h,) = states
        f, g = activations
        hidden = h.shape[-1]
        r_weights, r_bias = weights["R"], weights["Rb"]
        x_z, x_r, x_h = np.split(projected, 3, axis=-1)
        # Update and reset gates: one product for both.
        recurrent = h @ r_weights[: 2 * hidden].T + r_bias[: 2 * hidden]
        z = f(squash(x_z + recurrent[:, :hidden]))
        reset = f(squash(x_r + recurrent[:, hidden:]))
        r_h, rb_h = r_weights[2 * hidden:], r_bias[2 * hidden:]
        if node.attrs["linear_before_reset"]:
            candidate = g(squash(x_h + reset * (h @ r_h.T + rb_h)))
        else:
            candidate = g(squash(x_h + (reset * h) @ r_h.T + rb_h))
        return [(1 - z) * candidate + z * h]


# ---------------------------------------------------------------------------- LSTM
@register
class LSTM(_RecurrentLayer):
    """Long short-term memory; W, R and B stack the input (i), output (o), forget (f) and cell
    (c) gates, P the peepholes ``[Pi, Po, Pf]``.

    ``i = f(X Wi^T + H Ri^T + Pi * C + Wbi + Rbi)``, ``f = f(... + Pf * C ...)`` (or ``1 - i``
    with ``input_forget``), ``c = g(X Wc^T + H Rc^T + Wbc + Rbc)``, ``C_t = f * C + i * c``,
    ``o = f(X Wo^T + H Ro^T + Po * C_t + Wbo + Rbo)``, ``H_t = o * h(C_t)``; f = Sigmoid,
    g = h = Tanh by default. Spec: LSTM-22 (layout since LSTM-14).
    """

    op_type = "LSTM"
    gates = 4
    activation_count = 3
    default_activations = ("Sigmoid", "Tanh", "Tanh")
    state_count = 2
    attributes = {**_RecurrentLayer.attributes, "input_forget": 0}

    def cell(self, node, projected, states, weights, activations, squash):
        h, c = states
        f, g, h_act = activations
        gates = projected + h @ weights["R"].T + weights["Rb"]
        pre_i, pre_o, pre_f, pre_c = np.split(gates, 4, axis=-1)
        peepholes = weights["P"]
        if peepholes is not None:
            p_i, p_o, p_f = np.split(peepholes, 3)
            pre_i = pre_i + p_i * c
            pre_f = pre_f + p_f * c
        i = f(squash(pre_i))
        forget = 1 - i if node.attrs["input_forget"] else f(squash(pre_f))
        c_new = forget * c + i * g(squash(pre_c))
        if peepholes is not None:
            pre_o = pre_o + p_o * c_new
        o = f(squash(pre_o))
        return [o * h_act(c_new), c_new]
