"""Chapter 03b exercises: the gradients and bit tricks behind compression that trains.

1. :func:`max_pool2d_backward` and :func:`conv2d_backward` — two backward rules of the trainer:
   where a gradient goes through a max-pooling window and through a convolution.
2. :func:`fake_quantize`, :func:`fake_quantize_backward` and :func:`fake_quantize_scale_gradient`
   — quantize-then-dequantize in the forward pass, the straight-through estimator in the
   backward pass, and the step-size gradient of learned step size quantization (LSQ).
3. :func:`global_magnitude_masks` — unstructured pruning with one threshold for all layers.
4. :func:`softmax` and :func:`distillation_loss` — Hinton et al.'s soft targets and the
   gradient the student learns from.
5. :func:`pack_signs`, :func:`popcount64`, :func:`xnor_dot` and :func:`binary_matmul` — a dot
   product of ±1 vectors, 64 multiply-accumulates per XOR and popcount.

Replace each ``raise NotImplementedError`` with your code (NumPy is all you need), then grade it:

    pytest tests/exercises/test_ch03b_training_compression.py --impl=exercises -m ex1   # … ex5
    pytest tests/exercises --impl=exercises -m ch03b_ex1                   # the same, by chapter mark

The graded tests compare your answers with central differences in float64, with ONNX's
QuantizeLinear and DequantizeLinear (run by ``onnx.reference``) and ONNX Runtime's MaxPool
indices, with the engine's own backward rules (:mod:`tinyinfer.compress.backward`), pruning
masks (:mod:`tinyinfer.compress.prune`), distillation loss (:mod:`tinyinfer.compress.distill`)
and binary kernels (:mod:`tinyinfer.kernels.binary`), with naive loops and with properties any
correct answer has. They never look at the solution file.
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------- exercise 1
def max_pool2d_backward(x: np.ndarray, dy: np.ndarray, kernel: int, stride: int, padding: int = 0) -> np.ndarray:
    """``dL/dx`` of a 2-D max pooling, given ``dy = dL/dy``.

    ``x`` is (N, C, H, W); the pooling takes the maximum of each ``kernel``×``kernel`` window,
    the windows ``stride`` apart, over ``x`` padded by ``padding`` on every side with −∞ (a
    padded position never wins). ``dy`` is (N, C, OH, OW) with
    ``OH = (H + 2·padding - kernel) // stride + 1`` (OW likewise).

    The output of a window is one of its inputs, so its gradient goes to that input alone:

        dx[n, c, winner of window (oh, ow)] += dy[n, c, oh, ow]

    Windows overlap when ``stride < kernel``: an input that wins several windows collects the
    sum of their gradients. When several inputs of a window share the maximum there is no
    derivative; the convention (ONNX's MaxPool ``Indices`` output, ONNX Runtime, the engine's
    rule) is the **first** maximum in row-major order over the window — the top-most row,
    then the left-most column.

    Hint: loop over the ``kernel²`` taps ``(u, v)``, each a strided view
    ``padded[:, :, u::stride, v::stride]`` cut to (OH, OW); keep the best value so far and
    which tap it came from, replacing it only on a strictly greater value. Then add ``dy``
    back tap by tap where that tap won, and cut the padding off. Return an array of ``x``'s
    shape and dtype.

    Example: x = [[1, 3], [3, 2]] (one image, one channel), kernel 2, stride 1, dy = [[5]]:
    the 3 at the top right wins the tie, dx = [[0, 5], [0, 0]].
    """
    raise NotImplementedError("exercise: max_pool2d_backward (chapter 03b, exercise 1)")


def conv2d_backward(x: np.ndarray, w: np.ndarray, dy: np.ndarray, stride: int = 1,
                    padding: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(dL/dx, dL/dW, dL/db)`` of a 2-D convolution, given ``dy = dL/dy``.

    ``x`` is (N, C, H, W), ``w`` is (M, C, KH, KW) (one group, no dilation), ``dy`` is
    (N, M, OH, OW). With ``xp`` the input zero-padded by ``padding`` on every side, the
    forward pass is

        y[n, m, i, j] = b[m] + Σ_{c, u, v} w[m, c, u, v] · xp[n, c, i·stride + u, j·stride + v]

    Each product appears once in the sum, so its two factors get each other's gradient:

        dW[m, c, u, v]                      = Σ_{n, i, j} dy[n, m, i, j] · xp[n, c, i·s + u, j·s + v]
        dxp[n, c, i·s + u, j·s + v]        += Σ_m dy[n, m, i, j] · w[m, c, u, v]
        db[m]                               = Σ_{n, i, j} dy[n, m, i, j]

    and ``dx`` is ``dxp`` without its padding. Hint: loop over the taps ``(u, v)`` only; for
    each, the positions it reads are the strided view ``xp[:, :, u::s, v::s]`` cut to
    (OH, OW), and ``np.einsum`` does the sums over n, m, i, j. Return three arrays with the
    shapes of ``x``, ``w`` and (M,), in ``x``'s dtype.
    """
    raise NotImplementedError("exercise: conv2d_backward (chapter 03b, exercise 1)")


# ---------------------------------------------------------------------------- exercise 2
def fake_quantize(x: np.ndarray, scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """QuantizeLinear followed by DequantizeLinear: ``x`` snapped to the grid it will run on.

        q = clip(round(x / scale) + zero_point, qmin, qmax)        y = (q - zero_point) · scale

    ``qmin…qmax`` is the integer range: 0…255 for uint8, −128…127 for int8, −8…7 for int4.
    Round **half to even** (``np.rint``), as ONNX does. Compute in ``x``'s dtype (cast the
    scale to it), so that in float32 your result is bit for bit what ONNX's
    QuantizeLinear → DequantizeLinear gives. Return an array of ``x``'s shape and dtype.

    Example: scale 0.5, zero point 0, −8…7: x = (0.26, 0.75, 1.25, -9.0, 9.0) gives
    (0.5, 1.0, 1.0, -4.0, 3.5) (1.25 / 0.5 = 2.5 rounds to 2).
    """
    raise NotImplementedError("exercise: fake_quantize (chapter 03b, exercise 2)")


def fake_quantize_backward(x: np.ndarray, dy: np.ndarray, scale: float, zero_point: int, qmin: int,
                           qmax: int) -> np.ndarray:
    """``dL/dx`` of :func:`fake_quantize` by the straight-through estimator.

    Rounding is a staircase: its derivative is 0 almost everywhere, and training through it
    would never move a weight. The straight-through estimator (Bengio, Léonard & Courville,
    2013) treats the rounding as the identity in the backward pass, and keeps the clip: so
    ``dx = dy`` where the value was not saturated and ``dx = 0`` where it was.

    "Not saturated" means that the clip left the rounded value alone:
    ``qmin <= round(x / scale) + zero_point <= qmax`` (so with scale 1, zero point 0 and
    qmax 7, x = 7.4 passes its gradient and x = 7.6 does not). Return an array of ``x``'s
    shape and dtype.
    """
    raise NotImplementedError("exercise: fake_quantize_backward (chapter 03b, exercise 2)")


def fake_quantize_scale_gradient(x: np.ndarray, dy: np.ndarray, scale: float, zero_point: int, qmin: int,
                                 qmax: int) -> float:
    """``dL/dscale`` of :func:`fake_quantize`: the gradient that learns the step size (LSQ).

    Esser et al. (2020, "Learned Step Size Quantization") make the scale ``s`` a parameter.
    With the straight-through estimator for the rounding, each element's output
    ``y = s · (q - z)`` changes with ``s`` as

        dy/ds = round(x / s) - x / s        where the value was not saturated
                                            (y = s · round(x / s), round taken as the identity)
        dy/ds = q - z                       where it was (q = qmin or qmax, fixed)

    with "not saturated" exactly as in :func:`fake_quantize_backward`. The scale is shared by
    every element, so return ``Σ dy · dy/ds`` over all of them, as a Python float. Inside the
    range the term is at most half a step, of either sign; at saturation it pulls the scale
    up (or down) until the range covers the values the loss cares about.
    """
    raise NotImplementedError("exercise: fake_quantize_scale_gradient (chapter 03b, exercise 2)")


# ---------------------------------------------------------------------------- exercise 3
def global_magnitude_masks(weights: dict[str, np.ndarray],
                           ratio: float) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Keep-masks that prune the ``ratio`` share of all weights with one global threshold.

    Magnitude pruning (Han et al., 2015) removes the weights of smallest ``|w|``. With one
    threshold for the whole model, a layer full of small weights loses more of them than a
    layer of large ones — unlike per-layer pruning, which takes the same share of every layer.

    Of the ``n`` weights of all layers together, remove exactly ``k = round(ratio · n)`` (Python's
    ``round``, which takes a half to the even neighbour): the ``k`` smallest ``|w|``. Equal
    magnitudes at the threshold are decided by position, earlier first: the layers in the
    dict's order, and inside a layer its flattened (C-order) index — as a stable sort
    (``np.argsort(..., kind="stable")``) of the concatenated magnitudes does.

    Return ``(masks, sparsities)``: ``masks[name]`` a bool array of the weight's shape, True
    where the weight is kept; ``sparsities[name]`` the share of that layer's weights removed, a
    float in [0, 1].

    Example: {"a": (0.1, -0.5, 0.2), "b": (0.3, -0.05)}, ratio 0.4: k = 2, the two smallest are
    0.05 and 0.1, so masks a = (False, True, True), b = (True, False) and sparsities a = 1/3,
    b = 1/2.
    """
    raise NotImplementedError("exercise: global_magnitude_masks (chapter 03b, exercise 3)")


# ---------------------------------------------------------------------------- exercise 4
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(z / T)`` of (N, classes) logits.

    ``exp`` of a logit of 1000 overflows: subtract each row's maximum first (the result does
    not change, since softmax is invariant to adding a constant to a row). A temperature
    T > 1 flattens the distribution, lifting the small probabilities that carry what the
    teacher knows about similar classes. Return float64 rows that sum to 1.
    """
    raise NotImplementedError("exercise: softmax (chapter 03b, exercise 4)")


def distillation_loss(student_logits: np.ndarray, teacher_logits: np.ndarray, labels: np.ndarray,
                      temperature: float = 4.0, alpha: float = 0.9) -> tuple[float, np.ndarray]:
    """Hinton, Vinyals & Dean's (2015) loss of a batch, and its gradient w.r.t. the student's logits.

    With ``p = softmax(student / T)``, ``q = softmax(teacher / T)`` and the batch of N rows,

        L = α · T² · mean_n KL(q_n ‖ p_n) + (1 − α) · mean_n CE(labels_n, softmax(student_n))

    where ``KL(q ‖ p) = Σ_c q_c (log q_c − log p_c)`` and ``CE(y, r) = −log r_y`` — the hard
    term at temperature 1. The gradient, per row and divided by N like the means:

        dL/dz = α · T · (p − q) / N + (1 − α) · (softmax(z) − onehot(labels)) / N

    (the KL term's ``1/T`` from ``z / T`` times its ``T²`` leaves one ``T``). Why ``T²``? For large
    T the soft gradient shrinks as ``1/T²``; the factor keeps it as large as the hard one when T
    changes. Compute the logarithms as log-softmax (``z - max - log Σ exp(z - max)``), never as
    ``log`` of a probability that may underflow to 0. Return ``(loss as a Python float,
    gradient as float64 of the logits' shape)``.
    """
    raise NotImplementedError("exercise: distillation_loss (chapter 03b, exercise 4)")


# ---------------------------------------------------------------------------- exercise 5
def pack_signs(x: np.ndarray) -> np.ndarray:
    """The signs of ``x`` along its last axis, one bit each, packed 64 to a uint64 word.

    A binarized network keeps ±1 values; store +1 (``x >= 0``, so 0 counts as +1) as bit 1 and
    −1 as bit 0. Element ``j`` of a row goes to word ``j // 64``, bit ``j % 64`` (bit 0 the
    least significant). A row of K values takes ``ceil(K / 64)`` words; the unused bits of the
    last word are **0**. Return uint64 of shape ``x.shape[:-1] + (ceil(K / 64),)``.

    Hint: ``np.packbits(bits, axis=-1, bitorder="little")`` packs 8 bits to a byte, first bit
    least significant; pad the bits to a multiple of 64 first, and view every 8 bytes as one
    uint64 (``.view(np.uint64)``; the machines NumPy runs on are little-endian).

    Example: x = (1.0, -2.0, 0.0, -0.5, 3.0) packs to one word, bits 1, 0, 1, 0, 1: 0b10101 = 21.
    """
    raise NotImplementedError("exercise: pack_signs (chapter 03b, exercise 5)")


def popcount64(words: np.ndarray) -> np.ndarray:
    """The number of bits set in each uint64 word, as an int64 array of the same shape.

    CPUs count them in one instruction (POPCNT). In NumPy, look the count up per byte: view
    the words as uint8 (8 bytes each), index a table of the 256 bytes' counts, sum per word.
    (NumPy 2 also has ``np.bitwise_count``.) Example: (0, 21, 2**64 - 1) gives (0, 3, 64).
    """
    raise NotImplementedError("exercise: popcount64 (chapter 03b, exercise 5)")


def xnor_dot(a_bits: np.ndarray, b_bits: np.ndarray, k: int) -> int:
    """The dot product of two ±1 vectors of length ``k``, from their packed words.

    Where the signs agree the product is +1, where they differ −1, and XOR marks exactly the
    bits that differ. So with ``d`` the set bits of ``a XOR b`` (summed over the words),

        a · b = (k − d) − d = k − 2 · d

    The padding bits are 0 in both vectors, so they XOR to 0 and count for nothing: ``k`` is
    the true length, not ``64 · words``. (Papers say XNOR: it marks the agreements,
    ``k − d`` of them.) Return a Python int.
    """
    raise NotImplementedError("exercise: xnor_dot (chapter 03b, exercise 5)")


def binary_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``sign(a) @ sign(b).T`` by XOR and popcount: a (M, K), b (N, K), sign(0) = +1.

    Pack each row of ``a`` and of ``b`` with :func:`pack_signs`; entry ``[i, j]`` is
    :func:`xnor_dot` of row i of a and row j of b. (Broadcast ``a_bits[:, None, :] ^
    b_bits[None, :, :]`` to do all pairs at once.) Return an int64 (M, N) array.
    """
    raise NotImplementedError("exercise: binary_matmul (chapter 03b, exercise 5)")
