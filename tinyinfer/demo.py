"""``make demo``: tinyinfer end to end on real architectures, offline.

Loads two of the light models that ship inside the onnx wheel (SqueezeNet and ResNet-50) with
re-drawn weights, prints what they are, runs them, checks the result against ONNX's own
reference evaluator (``onnx.reference``, an independent implementation), and shows where the
time goes. SqueezeNet then runs on the Numba backend too, whose first session compiles the
kernels it needs and picks one per node: that one-time cost is shown apart from the run
time. Everything needed comes with tinyinfer's three runtime dependencies.
"""

from __future__ import annotations

import collections
import statistics
import time

import numpy as np

from . import InferenceSession, load
from .models import count_flops, load_light_model
from .runtime.feeds import random_feeds


def demo_model(name: str, check_with_onnx_reference: bool) -> float:
    """Load, describe, run and check one light model on the reference path; its ms per run."""
    print(f"=== {name} " + "=" * (60 - len(name)))
    t0 = time.perf_counter()
    model = load_light_model(name)
    graph = load(model)
    print(f"loaded in {time.perf_counter() - t0:.2f} s: {len(graph.nodes)} nodes, "
          f"{graph.parameter_count() / 1e6:.2f} M parameters, "
          f"{sum(c.macs for c in count_flops(graph)) / 1e9:.2f} G MACs per image")
    session = InferenceSession(graph)
    feeds = random_feeds(session.get_inputs(), seed=0)
    (name_in, x), = feeds.items()
    print(f"input '{name_in}' {list(x.shape)} {x.dtype}")
    t0 = time.perf_counter()
    (probs,) = session.run(None, feeds)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    runs = 3
    for _ in range(runs):
        session.run(None, feeds)
    steady = (time.perf_counter() - t0) / runs
    top = np.argsort(probs.reshape(-1))[::-1][:3]
    print(f"output {list(probs.shape)}: top-3 classes {top.tolist()}, "
          f"p = {[round(float(probs.reshape(-1)[i]), 4) for i in top]}")
    print(f"first run (plans the graph) {first * 1e3:.1f} ms, then {steady * 1e3:.1f} ms per run")
    if check_with_onnx_reference:
        check_logits(model, graph, feeds)
    print("time per op type (ms per run):",
          ", ".join(f"{op} {ms:.1f}" for op, ms in list(session.profile().by_op().items())[:5]))
    print()
    return steady * 1e3


def demo_numba(name: str, reference_ms: float) -> None:
    """The same model on the Numba backend: compile and kernel selection, then run time.

    The first session compiles every kernel a node could use (Numba keeps the machine code
    in its on-disk cache, so this happens once per machine), times the candidates on the
    real shapes and keeps the fastest per node (cached in ``~/.cache/tinyinfer``). A second
    session of the same model finds both caches warm.
    """
    print(f"=== {name} on the numba backend " + "=" * (42 - len(name)))
    model = load_light_model(name)
    t0 = time.perf_counter()
    session = InferenceSession(model, backend="numba")
    feeds = random_feeds(session.get_inputs(), seed=0)
    (probs,) = session.run(None, feeds)
    setup = time.perf_counter() - t0
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    steady = statistics.median(times)
    (expected,) = InferenceSession(model).run(None, feeds)
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(probs, expected, rtol=1e-3, atol=1e-4 * scale)
    t0 = time.perf_counter()
    InferenceSession(model, backend="numba").run(None, feeds)
    again = time.perf_counter() - t0
    print(f"first session (compile + kernel selection) {setup:.1f} s, then {steady:.1f} ms per run "
          f"(reference path {reference_ms:.1f} ms); a second session starts in {again:.1f} s")
    kernels = collections.Counter(r.kernel for r in session.profile().records)
    print("kernels per node:", ", ".join(f"{kernel} x{count}" for kernel, count in kernels.most_common()))
    print(f"output matches the reference path (rtol 1e-3, atol 1e-4 x max|p|; max |diff| "
          f"{float(np.abs(probs - expected).max()):.1e})")
    print()


def check_logits(model, graph, feeds) -> None:
    """Compare the logits (the input of the final Softmax) with ``onnx.reference``.

    The logits, not the probabilities: for these opset-9 models ``onnx.reference`` applies
    the opset-13 meaning of Softmax's ``axis`` (one axis instead of the flattened trailing
    block), which on SqueezeNet's [1, 1000, 1, 1] output gives all ones.
    """
    import onnx
    from onnx.reference import ReferenceEvaluator

    softmax = [n for n in graph.nodes if n.op_type == "Softmax"][-1]
    logits_name = softmax.inputs[0]
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(onnx.helper.make_tensor_value_info(logits_name, onnx.TensorProto.FLOAT, None))
    t0 = time.perf_counter()
    expected = ReferenceEvaluator(exposed).run([logits_name], feeds)[0]
    reference_s = time.perf_counter() - t0
    logits = InferenceSession(exposed).run([logits_name], feeds)[0]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4 * scale)
    print(f"logits match onnx.reference (rtol 1e-3, atol 1e-4 x max|logit|; max |diff| "
          f"{float(np.abs(logits - expected).max()):.1e} for logits up to {scale:.1f}); "
          f"onnx.reference took {reference_s * 1e3:.0f} ms")


def main() -> int:
    print("tinyinfer demo: ONNX models in, NumPy reference ops and Numba kernels, checked against onnx.reference\n")
    squeezenet_ms = demo_model("squeezenet", check_with_onnx_reference=True)
    demo_numba("squeezenet", squeezenet_ms)
    demo_model("resnet50", check_with_onnx_reference=True)
    print("next: `make test` runs the tests, the ONNX conformance suite and the book's notebooks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
