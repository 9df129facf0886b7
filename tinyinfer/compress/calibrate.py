"""Calibration: choosing the range ``[rmin, rmax]`` each activation is quantized over.

Weights are known offline, so their range is simply their min and max. Activations depend on
the input: a *calibration set* of typical inputs is run through the float model once, and
each tensor's statistics are collected as it is computed. Then a *method* turns the
statistics into a range. The range trades two errors against each other: a wide range makes
the step ``s`` coarse (rounding error ~ s²/12 per value) while a narrow one clips the tails
(clipping error (|x| - t)² for every |x| above the threshold t).

* **minmax** — the observed min and max. No clipping at all; a single outlier stretches the
  grid for every other value.
* **percentile** — clip the rarest ``100 - p`` percent (e.g. p = 99.99): with ``symmetric``
  the ``p``-th percentile of |x|, otherwise ``(100 - p) / 2`` percent off each end.
* **entropy** — the threshold whose quantized distribution loses the least information,
  measured by the Kullback-Leibler divergence between the histogram clipped at t and its
  quantized version (Migacz, 2017, "8-bit Inference with TensorRT", GTC talk):
  :func:`threshold_entropy`.
* **mse** — the threshold minimising the expected squared error, rounding plus clipping,
  over the histogram (as Banner et al., 2019, "Post training 4-bit quantization of
  convolutional networks for rapid-deployment", derive analytically for Gaussian and Laplace
  data): :func:`threshold_mse`.

One pass over the data: :meth:`Calibrator.collect` runs the model once per batch with
``InferenceSession(..., opt_level="O0").run(None, feeds, observe=callback)``; the runtime
calls ``callback(name, value)`` with every intermediate tensor right after computing it, and
the callback reduces it at once (min, max, histogram) — the value lives in memory the next
node reuses, and no copy of the model is made per tensor.

The histogram of a tensor covers ``[-limit, limit]`` with ``num_bins`` bins on each side of 0,
so the histogram of |x| is the two halves added (:meth:`TensorStatistics.magnitude_histogram`).
When a batch exceeds the limit, the limit grows by an integer factor k and every k
neighbouring bins merge into one: the old counts stay exact, only coarser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Callable

import numpy as np

from ..errors import TinyInferError

METHODS = ("minmax", "percentile", "entropy", "mse")


class TensorStatistics:
    """Running min, max and (optionally) histogram of one tensor over the calibration set."""

    def __init__(self, num_bins: int = 2048, *, histogram: bool = True):
        self.num_bins = num_bins  # bins on each side of zero
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.zeros = 0  # exact zeros: always on the grid, so they never cost quantization error
        self.limit = 0.0  # the histogram covers [-limit, limit]
        self.hist = np.zeros(2 * num_bins, dtype=np.int64) if histogram else None
        self._zeros = 0  # values counted while every value so far was 0 (no limit yet)

    def update(self, x: np.ndarray) -> None:
        """Fold a batch of values into the statistics (non-finite values are ignored)."""
        x = np.asarray(x).ravel()
        if x.size == 0:
            return
        low, high = float(x.min()), float(x.max())
        if not (math.isfinite(low) and math.isfinite(high)):
            x = x[np.isfinite(x)]
            if x.size == 0:
                return
            low, high = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, low), max(self.max, high)
        self.count += x.size
        if self.hist is None:
            return
        self.zeros += x.size - np.count_nonzero(x)
        magnitude = max(-low, high)
        if magnitude == 0.0 and self.limit == 0.0:
            self._zeros += x.size
            return
        if magnitude > self.limit:
            self._grow(magnitude)
        bins_per_unit = self.num_bins / self.limit
        index = np.floor(x.astype(np.float64) * bins_per_unit).astype(np.int64) + self.num_bins
        np.clip(index, 0, 2 * self.num_bins - 1, out=index)  # x == limit lands in the last bin
        self.hist += np.bincount(index, minlength=2 * self.num_bins)

    def _grow(self, magnitude: float) -> None:
        """Widen the histogram to cover ``magnitude``, merging k old bins into one new bin."""
        if self.limit == 0.0:
            self.limit = magnitude
            self.hist[self.num_bins] += self._zeros  # zeros seen so far: the bin [0, step)
            self._zeros = 0
            return
        factor = math.ceil(magnitude / self.limit)
        n = self.num_bins
        for half, outward in ((slice(n, None), False), (slice(None, n), True)):
            counts = self.hist[half][::-1] if outward else self.hist[half]  # ordered away from 0
            padded = np.zeros(n * factor, dtype=np.int64)
            padded[:n] = counts
            merged = padded.reshape(n, factor).sum(axis=1)
            self.hist[half] = merged[::-1] if outward else merged
        self.limit *= factor

    # ----------------------------------------------------------------- views
    def signed_histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Counts and bin edges over ``[-limit, limit]`` (2 · num_bins bins)."""
        self._require_histogram()
        return self.hist.copy(), np.linspace(-self.limit, self.limit, 2 * self.num_bins + 1)

    def magnitude_histogram(self, *, exclude_zeros: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Counts and edges of |x| over ``[0, limit]`` (num_bins bins): the two halves folded.

        ``exclude_zeros`` leaves exact zeros out of the first bin. Zero is always on the grid,
        so zeros lose nothing whatever the threshold; ReLU outputs are often half zeros, a
        spike that would otherwise dominate the entropy and MSE searches.
        """
        self._require_histogram()
        n = self.num_bins
        hist = self.hist[n:] + self.hist[:n][::-1]
        if exclude_zeros:
            hist[0] -= self.zeros
        return hist, np.linspace(0.0, self.limit, n + 1)

    @property
    def one_sided(self) -> bool:
        """True when the values never cross zero (ReLU outputs, say)."""
        return self.min >= 0.0 or self.max <= 0.0

    def _require_histogram(self) -> None:
        if self.hist is None:
            raise TinyInferError("these statistics hold no histogram (collected with method='minmax')")
        if self.limit == 0.0:
            raise TinyInferError("the histogram is empty or holds only zeros")


class Calibrator:
    """Collect activation statistics in one pass over calibration data and turn them into ranges.

    ``method`` is ``"minmax"``, ``"percentile"`` (with ``percentile``, default 99.99),
    ``"entropy"`` or ``"mse"``; the histogram methods keep ``num_bins`` bins per side of zero
    per tensor. ``symmetric=True`` asks for ranges ``(-t, t)`` (int8 activations with zero
    point 0, 255 levels −127…127); otherwise the range may be asymmetric (uint8 activations,
    256 levels), and a tensor that never crosses zero keeps its exact bound on that side (a
    ReLU output's range starts at 0).

        calibrator = Calibrator("entropy")
        calibrator.collect("model.onnx", reader)      # reader.get_next() -> feeds dict | None
        ranges = calibrator.ranges()                  # {tensor name: (rmin, rmax)}
    """

    def __init__(self, method: str = "minmax", *, percentile: float = 99.99, num_bins: int = 2048,
                 symmetric: bool = False):
        if method not in METHODS:
            raise TinyInferError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 < percentile <= 100.0:
            raise TinyInferError(f"percentile must be in (0, 100], got {percentile}")
        if num_bins < 256:
            raise TinyInferError(f"num_bins must be at least 256 (the quantized levels it is searched over), got {num_bins}")
        self.method = method
        self.percentile = float(percentile)
        self.num_bins = int(num_bins)
        self.symmetric = symmetric
        #: tensor name -> its running statistics, in the order the tensors were first seen.
        self.statistics: dict[str, TensorStatistics] = {}
        self.batches = 0

    # ----------------------------------------------------------------- collecting
    def collect(self, model_or_graph: Any, reader: Any, tensor_names: Iterable[str] | None = None,
                progress: bool = True) -> None:
        """Run the model once per batch of ``reader`` and reduce every float tensor's values.

        ``model_or_graph``: a path, serialized bytes, an ``onnx.ModelProto`` or an ``ir.Graph``.
        ``reader``: an object with ``get_next() -> feeds | None`` (like ONNX Runtime's
        ``CalibrationDataReader``), or any iterable of feed dicts. ``tensor_names``: the
        tensors to calibrate (default: every float graph input and every float tensor a node
        computes; constants the planner folds are weights, not activations, and are skipped).
        Calling ``collect`` again adds more data to the same statistics.
        """
        from ..runtime import InferenceSession  # the runtime sits below compress; imported late

        session = InferenceSession(model_or_graph, opt_level="O0")
        graph = session.graph
        known = set(graph.input_names) | {name for node in graph.nodes for name in node.outputs if name}
        wanted = None if tensor_names is None else list(dict.fromkeys(tensor_names))
        if wanted is not None:
            unknown = [name for name in wanted if name not in known]
            if unknown:
                raise TinyInferError(
                    f"tensor(s) {unknown} are not in graph '{graph.name}' (its tensors are the graph inputs and "
                    f"the node outputs of the model as imported, e.g. {sorted(known)[:6]})"
                )
        selected = None if wanted is None else set(wanted)
        histogram = self.method != "minmax"

        def observe(name: str, value: Any) -> None:
            # ``value`` lives in memory the next node reuses: reduce it now, keep nothing.
            if (selected is None or name in selected) and isinstance(value, np.ndarray) and value.dtype.kind == "f":
                stats = self.statistics.get(name)
                if stats is None:
                    stats = self.statistics[name] = TensorStatistics(self.num_bins, histogram=histogram)
                stats.update(value)

        self.batches += observe_over(session, reader, observe, progress)
        if wanted is not None:
            missing = [name for name in wanted if name not in self.statistics]
            if missing:
                raise TinyInferError(
                    f"tensor(s) {missing} were never computed as float tensors at run time (not float, "
                    f"or constant and folded when the model was planned); nothing to calibrate"
                )

    # ----------------------------------------------------------------- results
    def ranges(self) -> dict[str, tuple[float, float]]:
        """``{tensor name: (rmin, rmax)}`` by the calibrator's method, for every tensor seen."""
        if not self.statistics:
            raise TinyInferError("no statistics yet: call collect(model, reader) first")
        return {name: self.range_of(stats) for name, stats in self.statistics.items()}

    def range_of(self, stats: TensorStatistics) -> tuple[float, float]:
        """The range one tensor's statistics give with this calibrator's method."""
        if stats.count == 0:
            raise TinyInferError("statistics of a tensor that held no finite values")
        if stats.min == stats.max == 0.0 or self.method == "minmax":
            return self._finish(stats, -max(-stats.min, stats.max), max(-stats.min, stats.max), exact=True)
        if self.method == "percentile":
            if self.symmetric:
                hist, edges = stats.magnitude_histogram()
                t = threshold_percentile(hist, edges, self.percentile)
                return self._finish(stats, -t, t)
            hist, edges = stats.signed_histogram()
            tail = (100.0 - self.percentile) / 2.0
            low = threshold_percentile(hist, edges, tail)
            high = threshold_percentile(hist, edges, 100.0 - tail)
            return self._finish(stats, low, high)
        hist, edges = stats.magnitude_histogram(exclude_zeros=True)
        # The grid the threshold is searched for: symmetric int8 spans [-t, t] with 255 levels;
        # uint8 spans [0, t] with 256 levels for one-sided data, else [-t, t] with 256.
        one_sided = stats.one_sided and not self.symmetric
        if self.method == "entropy":
            t = threshold_entropy(hist, edges, num_quant_bins=255 if one_sided else 128)
        else:
            t = threshold_mse(hist, edges, 255 if self.symmetric else 256, one_sided=one_sided)
        return self._finish(stats, -t, t)

    def _finish(self, stats: TensorStatistics, low: float, high: float, *, exact: bool = False) -> tuple[float, float]:
        """Symmetric: ``(-t, t)``. Otherwise clamp to the observed range; a side of zero the data
        never reach keeps its observed bound (no point in clipping what is never there)."""
        if self.symmetric:
            t = max(-low, high)
            return (-float(t), float(t))
        if exact:
            return (float(stats.min), float(stats.max))
        low, high = max(low, stats.min), min(high, stats.max)
        if stats.min >= 0.0:
            low = stats.min
        if stats.max <= 0.0:
            high = stats.max
        return (float(low), float(high))


# ------------------------------------------------------------------------- thresholds
def threshold_percentile(hist: np.ndarray, edges: np.ndarray, percentile: float) -> float:
    """The value below which ``percentile`` percent of the histogram's counts lie.

    Counts are taken as spread evenly within each bin, so the answer is interpolated inside
    the bin where the cumulative count crosses the target.
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        raise TinyInferError("cannot take a percentile of an empty histogram")
    cumulative = np.cumsum(hist) / total
    target = min(max(percentile / 100.0, 0.0), 1.0)
    index = int(np.searchsorted(cumulative, target, side="left"))
    index = min(index, hist.size - 1)
    before = cumulative[index - 1] if index > 0 else 0.0
    inside = cumulative[index] - before
    fraction = (target - before) / inside if inside > 0 else 1.0
    return float(edges[index] + min(max(fraction, 0.0), 1.0) * (edges[index + 1] - edges[index]))


def threshold_entropy(hist: np.ndarray, edges: np.ndarray, num_quant_bins: int = 128) -> float:
    """The clipping threshold with the least KL divergence, as TensorRT's calibrator finds it.

    ``hist`` counts |x| over ``edges`` (from 0). For every candidate threshold, the upper edge
    of bin i for i = num_quant_bins … last non-empty bin:

    * the reference distribution P is the first i bins, with every count above the threshold
      (the outliers) folded into bin i - 1 — clipping puts them there;
    * the candidate Q is the same i bins (outliers not folded) merged into ``num_quant_bins``
      groups — what survives quantization — and expanded back: each group's count spread
      evenly over those of its bins where P is non-zero;
    * the score is KL(P ‖ Q) = Σ P log(P / Q), both normalised.

    A small threshold clips much (P's last bin grows, Q cannot follow); a large one merges
    many bins per level (Q is coarse). The minimum balances the two (Migacz, 2017).
    """
    hist = np.asarray(hist, dtype=np.float64)
    nonzero_bins = np.flatnonzero(hist)
    if nonzero_bins.size == 0:
        raise TinyInferError("cannot search a threshold on an empty histogram")
    last = int(nonzero_bins[-1]) + 1  # thresholds beyond the last non-empty bin change nothing
    if last <= num_quant_bins:
        return float(edges[last])  # every value fits on the grid without merging bins
    best_index, best_divergence = last, math.inf
    suffix = np.cumsum(hist[::-1])[::-1]  # suffix[i] = counts in bins i and above
    for i in range(num_quant_bins, last + 1):
        divergence = _kl_divergence_at(hist, i, suffix[i] if i < hist.size else 0.0, num_quant_bins)
        if divergence < best_divergence:
            best_index, best_divergence = i, divergence
    return float(edges[best_index])


def _kl_divergence_at(hist: np.ndarray, i: int, outliers: float, num_quant_bins: int) -> float:
    """KL(P ‖ Q) for the candidate threshold at the upper edge of bin ``i - 1``."""
    reference = hist[:i].copy()
    reference[-1] += outliers
    present = reference > 0
    # Split the i bins into num_quant_bins groups as evenly as integers allow.
    starts = (np.arange(num_quant_bins) * i) // num_quant_bins
    sizes = np.diff(np.append(starts, i))
    group_counts = np.add.reduceat(hist[:i], starts)
    group_present = np.add.reduceat(present.astype(np.float64), starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_bin = np.where(group_present > 0, group_counts / group_present, 0.0)
    candidate = np.repeat(per_bin, sizes) * present
    p = reference[present] / reference.sum()
    total = candidate.sum()
    if total <= 0:
        return math.inf
    q = candidate[present] / total
    # Where P has mass but Q has none (outliers folded into a bin whose group was empty) the
    # divergence would be infinite and the search would refuse to clip one lone outlier: give
    # Q a small floor there instead (the smoothing TensorRT-style calibrators apply).
    empty = q <= 0
    if np.any(empty):
        q = np.where(empty, _Q_FLOOR / present.sum(), q)
        q /= q.sum()
    return float(np.sum(p * np.log(p / q)))


#: Probability mass (shared over the bins) Q gets where it has none but P has some.
_Q_FLOOR = 1e-4


def threshold_mse(hist: np.ndarray, edges: np.ndarray, num_levels: int, *, one_sided: bool = False) -> float:
    """The threshold t minimising the expected squared quantization error over the histogram.

    ``hist`` counts |x| over ``edges`` (from 0). The grid has ``num_levels`` evenly spaced
    levels over ``[-t, t]`` (step Δ = 2t / (num_levels - 1)) or, ``one_sided``, over
    ``[0, t]`` (Δ = t / (num_levels - 1)). For each candidate t (every bin edge) the
    expected error of a value at |x| (the bin centre) is

    * Δ² / 12 if |x| ≤ t — rounding error, uniform over a step;
    * (|x| - t)² if |x| > t — clipping error (t is on the grid, so no rounding on top),

    which is the model Banner et al. (2019) minimise in closed form (for 8-bit Laplace data
    with scale b they find t ≈ 9.89 b). Computed for all candidates at once with suffix sums.
    """
    hist = np.asarray(hist, dtype=np.float64)
    if hist.sum() <= 0:
        raise TinyInferError("cannot search a threshold on an empty histogram")
    centres = (edges[:-1] + edges[1:]) / 2
    thresholds = edges[1:]  # candidate i clips at the upper edge of bin i
    # Tail sums over the bins above each candidate: Σh, Σh·c, Σh·c².
    def above(values: np.ndarray) -> np.ndarray:
        return np.append(np.cumsum(values[::-1])[::-1][1:], 0.0)

    count_above, first_above, second_above = above(hist), above(hist * centres), above(hist * centres**2)
    count_inside = hist.sum() - count_above
    step = thresholds * (1.0 if one_sided else 2.0) / (num_levels - 1)
    rounding = count_inside * step**2 / 12.0
    clipping = second_above - 2 * thresholds * first_above + thresholds**2 * count_above
    return float(thresholds[int(np.argmin(rounding + clipping))])


# ------------------------------------------------------------------------- data
def observe_over(session: Any, reader: Any, observe: Callable[[str, Any], None], progress: bool) -> int:
    """Run ``session`` on every batch of ``reader``, showing ``observe`` each input and every
    intermediate value; returns the number of batches (an empty reader is an error)."""
    batches = 0
    for feeds in _progress(_batches(reader), reader, progress):
        for name in session.graph.input_names:
            if name in feeds:
                observe(name, np.asarray(feeds[name]))
        session.run(None, feeds, observe=observe)
        batches += 1
    if batches == 0:
        raise TinyInferError("the calibration reader gave no data: get_next() returned None at once")
    return batches


def _batches(reader: Any) -> Iterator[Mapping[str, Any]]:
    """The feed dicts of a calibration reader, one per run."""
    if isinstance(reader, Mapping):
        batches: Iterable = [reader]
    elif hasattr(reader, "get_next"):
        batches = iter(reader.get_next, None)
    elif isinstance(reader, Iterable):
        batches = reader
    else:
        raise TinyInferError(
            f"a calibration reader needs get_next() (like onnxruntime's CalibrationDataReader) or must be an "
            f"iterable of feed dicts; got {type(reader).__name__}"
        )
    for feeds in batches:
        if not isinstance(feeds, Mapping):
            raise TinyInferError(f"a calibration reader must give dicts of input name -> array, got {type(feeds).__name__}")
        yield feeds


def _progress(batches: Iterator, reader: Any, enabled: bool) -> Iterable:
    """A tqdm bar over the batches when tqdm is installed and ``enabled``."""
    if not enabled:
        return batches
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dev extra; calibration works without it
        return batches
    total = len(reader) if hasattr(reader, "__len__") and not isinstance(reader, Mapping) else None
    return tqdm(batches, total=total, desc="calibrating", unit="batch", leave=False)
