"""Chapter 03b answers: two backward rules, the straight-through estimator, a global pruning
mask, the distillation loss and an XNOR-popcount dot product.

Same names and signatures as :mod:`exercises.ch03b_training_compression`, whose docstrings
explain each task; the comments here only say why a line is the way it is.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64
#: Bits set in each of the 256 byte values: popcount by table lookup.
BYTE_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], np.int64)


# ---------------------------------------------------------------------------- exercise 1
def max_pool2d_backward(x: np.ndarray, dy: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """Each window's gradient to the first of its maxima, summed where windows overlap."""
    x = np.asarray(x)
    padded = _pad(x.astype(np.float64), padding, -np.inf)  # padding never wins a window
    out_h, out_w = dy.shape[2:]
    taps = [(u, v) for u in range(kernel) for v in range(kernel)]  # row-major: ties go to the earlier tap
    best = np.full(dy.shape, -np.inf)
    winner = np.zeros(dy.shape, np.int64)
    for t, (u, v) in enumerate(taps):
        patch = _tap(padded, u, v, stride, out_h, out_w)
        better = patch > best  # strictly greater: an equal value later in the window does not take over
        best = np.where(better, patch, best)
        winner[better] = t
    d_padded = np.zeros(padded.shape, x.dtype)
    for t, (u, v) in enumerate(taps):
        window = _tap(d_padded, u, v, stride, out_h, out_w)
        window += np.where(winner == t, dy, 0)  # a view: this adds into d_padded
    return _crop(d_padded, padding)


def conv2d_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: int = 1,
                    padding: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One tap ``(u, v)`` at a time: the input it read gives dW, its weight spreads dy back to dx."""
    x_padded = _pad(x, padding, 0)
    out_h, out_w = dy.shape[2:]
    dx_padded = np.zeros_like(x_padded)
    dw = np.zeros(w.shape, x.dtype)
    for u in range(w.shape[2]):
        for v in range(w.shape[3]):
            patch = _tap(x_padded, u, v, stride, out_h, out_w)  # (N, C, OH, OW): what w[:, :, u, v] multiplied
            dw[:, :, u, v] = np.einsum("nmij,ncij->mc", dy, patch)
            window = _tap(dx_padded, u, v, stride, out_h, out_w)
            window += np.einsum("nmij,mc->ncij", dy, w[:, :, u, v])
    db = dy.sum(axis=(0, 2, 3)).astype(x.dtype)
    return _crop(dx_padded, padding), dw, db


def _pad(x: np.ndarray, padding: int, value: float) -> np.ndarray:
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)), constant_values=value)


def _crop(x: np.ndarray, padding: int) -> np.ndarray:
    return x[:, :, padding:x.shape[2] - padding, padding:x.shape[3] - padding]


def _tap(padded: np.ndarray, u: int, v: int, stride: int, out_h: int, out_w: int) -> np.ndarray:
    """The (N, C, OH, OW) view of the positions that tap ``(u, v)`` of every window reads."""
    return padded[:, :, u:u + stride * (out_h - 1) + 1:stride, v:v + stride * (out_w - 1) + 1:stride]


# ---------------------------------------------------------------------------- exercise 2
def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """``(clip(rint(x / s) + z, qmin, qmax) - z) · s``, all in ``x``'s dtype as ONNX computes it."""
    x = np.asarray(x)
    s = x.dtype.type(scale)
    q = np.clip(np.rint(x / s) + zero_point, qmin, qmax)  # np.rint rounds half to even
    return ((q - zero_point) * s).astype(x.dtype)


def fake_quantize_backward(x: np.ndarray, dy: np.ndarray, scale: float, zero_point: int, qmin: int,
                           qmax: int) -> np.ndarray:
    """``dy`` where the clip did nothing, 0 where it saturated: rounding counts as the identity."""
    x = np.asarray(x)
    inside = _unsaturated(x, scale, zero_point, qmin, qmax)
    return np.where(inside, dy, 0).astype(x.dtype)


def fake_quantize_scale_gradient(x: np.ndarray, dy: np.ndarray, scale: float, zero_point: int, qmin: int,
                                 qmax: int) -> float:
    """LSQ's ``Σ dy · dy/ds``: ``round(v) - v`` inside the range, ``q - z`` where saturated."""
    x = np.asarray(x)
    steps = x / x.dtype.type(scale)
    rounded = np.rint(steps)
    q = np.clip(rounded + zero_point, qmin, qmax)
    inside = _unsaturated(x, scale, zero_point, qmin, qmax)
    return float(np.sum(dy * np.where(inside, rounded - steps, q - zero_point)))


def _unsaturated(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    level = np.rint(x / x.dtype.type(scale)) + zero_point
    return (level >= qmin) & (level <= qmax)


# ---------------------------------------------------------------------------- exercise 3
def global_magnitude_masks(weights: dict[str, np.ndarray],
                           ratio: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One sort over every layer's ``|w|``; the first ``k`` positions of it are removed."""
    names = list(weights)
    magnitudes = np.concatenate([np.abs(np.asarray(weights[name])).ravel() for name in names])
    removed = round(ratio * magnitudes.size)
    keep = np.ones(magnitudes.size, bool)
    keep[np.argsort(magnitudes, kind="stable")[:removed]] = False  # stable: equal |w| go in position order
    ends = np.cumsum([np.size(weights[name]) for name in names])[:-1]
    masks, sparsities = {}, {}
    for name, part in zip(names, np.split(keep, ends)):
        masks[name] = part.reshape(np.shape(weights[name]))
        sparsities[name] = float(np.mean(~part))
    return masks, sparsities


# ---------------------------------------------------------------------------- exercise 4
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(_log_softmax(np.asarray(logits, np.float64) / temperature))


def distillation_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray,
                      temperature: float = 4.0, alpha: float = 0.9) -> tuple[float, np.ndarray]:
    """``α T² mean KL(q ‖ p) + (1 - α) mean CE`` and its gradient, from log-softmaxes."""
    z = np.asarray(student_logits, np.float64)
    t = float(temperature)
    n = z.shape[0]
    log_p = _log_softmax(z / t)
    log_q = _log_softmax(np.asarray(teacher_logits, np.float64) / t)
    q = np.exp(log_q)
    soft = t * t * float(np.sum(q * (log_q - log_p))) / n
    log_r = _log_softmax(z)  # the hard term sees the logits at temperature 1
    rows = np.arange(n)
    hard = -float(np.mean(log_r[rows, labels]))
    d_hard = np.exp(log_r)
    d_hard[rows, labels] -= 1
    grad = alpha * t * (np.exp(log_p) - q) / n + (1 - alpha) * d_hard / n
    return alpha * soft + (1 - alpha) * hard, grad


def _log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)  # exp of the largest is 1: no overflow
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------------------- exercise 5
def pack_signs(x: np.ndarray) -> np.ndarray:
    """Bit ``j % 64`` of word ``j // 64`` is 1 where ``x[..., j] >= 0``; padding bits are 0."""
    x = np.asarray(x)
    k = x.shape[-1]
    words = -(-k // WORD_BITS)
    bits = np.zeros(x.shape[:-1] + (words * WORD_BITS,), bool)
    bits[..., :k] = x >= 0
    return np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)


def popcount64(words: np.ndarray) -> np.ndarray:
    """Eight table lookups per word, one per byte, summed."""
    flat = np.ascontiguousarray(words, np.uint64).reshape(-1)
    return BYTE_POPCOUNT[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1).reshape(np.shape(words))


def xnor_dot(a_bits: np.ndarray, b_bits: np.ndarray, k: int) -> int:
    """``k - 2 d``, with ``d`` the positions whose signs differ (padding bits never do)."""
    differ = popcount64(np.asarray(a_bits, np.uint64) ^ np.asarray(b_bits, np.uint64)).sum()
    return int(k - 2 * differ)


def binary_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All row pairs at once: (M, 1, W) XOR (1, N, W), popcounts summed over the words."""
    a_bits, b_bits = pack_signs(a), pack_signs(b)
    differ = popcount64(a_bits[:, None, :] ^ b_bits[None, :, :]).sum(axis=-1)
    return (a.shape[-1] - 2 * differ).astype(np.int64)
