"""The ``tinyinfer`` command: one subcommand per user task.

    tinyinfer info MODEL                 inputs, outputs, op histogram, parameters, FLOPs
    tinyinfer run MODEL [--input x=a.npy] [--output out.npz]
    tinyinfer conformance [--op Conv] [-v]
    tinyinfer bench MODEL                tinyinfer vs ONNX Runtime (and onnx.reference), one run
"""

from __future__ import annotations

import argparse
import sys

from .errors import TinyInferError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except TinyInferError as exc:
        print(f"tinyinfer: error: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyinfer", description="A small DNN inference engine.")
    sub = parser.add_subparsers(title="commands")

    p = sub.add_parser("info", help="inputs, outputs, op histogram, parameters and FLOPs of a model")
    p.add_argument("model", help="an .onnx path, or light:NAME (e.g. light:resnet50)")
    p.add_argument("--nodes", action="store_true", help="also list every node")
    p.set_defaults(handler=_info)

    p = sub.add_parser("run", help="run a model on given or random inputs")
    p.add_argument("model")
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="a feed (repeatable)")
    p.add_argument("--output", metavar="OUT.npz", help="save every output to this .npz file")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE", help="size of a symbolic dim")
    p.add_argument("--seed", type=int, default=0, help="seed of random feeds")
    p.add_argument("--profile", action="store_true", help="print the per-node profile")
    p.set_defaults(handler=_run)

    p = sub.add_parser("bench", help="time tinyinfer against ONNX Runtime (and onnx.reference) in one run")
    p.add_argument("model")
    p.add_argument("--repeat", type=int, default=10, help="timed runs per engine (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE", help="size of a symbolic dim")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    p.add_argument("--onnx-reference", action="store_true", help="also time onnx.reference.ReferenceEvaluator")
    p.add_argument("--budget", type=float, default=60.0, help="stop repeating an engine after this many seconds")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.set_defaults(handler=_bench)

    p = sub.add_parser("conformance", help="run ONNX's backend node test suite and count passes")
    p.add_argument("--op", action="append", default=[], help="only tests whose model uses this op (repeatable)")
    p.add_argument("-k", dest="pattern", default=None, help="only tests whose name contains this text")
    p.add_argument("-v", "--verbose", action="store_true", help="list every failure")
    p.set_defaults(handler=_conformance)
    return parser


def _progress(items, desc: str, unit: str = "it"):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dev extra; the command works without it
        return items
    return tqdm(items, desc=desc, unit=unit, leave=False, disable=not sys.stderr.isatty())


def _conformance(args) -> int:
    from .runtime.onnx_backend import model_ops, node_test_cases, run_node_suite

    cases = node_test_cases()
    if args.op:
        cases = [c for c in cases if set(args.op) & model_ops(c.model)]
    if args.pattern:
        cases = [c for c in cases if args.pattern in c.name]
    result = run_node_suite(cases, progress=lambda items: _progress(items, "conformance", "test"))
    if args.verbose:
        for name, why in sorted(result.failed.items()):
            print(f"FAIL {name}: {why}")
    print(result.summary())
    return 0 if not result.failed else 1


def _dims(pairs: list[str]) -> dict[str, int]:
    dims = {}
    for pair in pairs:
        name, _, size = pair.partition("=")
        if not size.isdigit():
            raise TinyInferError(f"--dim expects SYMBOL=SIZE, got {pair!r}")
        dims[name] = int(size)
    return dims


def resolve_model(spec: str):
    """A model argument: a path, or ``light:NAME`` for a light model shipped with onnx
    (weights re-drawn, see :mod:`tinyinfer.models.light`)."""
    if spec.startswith("light:"):
        from .models.light import LIGHT_MODELS, load_light_model

        name = spec.split(":", 1)[1]
        if name not in LIGHT_MODELS:
            raise TinyInferError(f"unknown light model {name!r}; choose from {', '.join(LIGHT_MODELS)}")
        return load_light_model(name)
    return spec


def _info(args) -> int:
    from . import load
    from .models.metrics import count_flops

    graph = load(resolve_model(args.model))
    print(f"model: {args.model}")
    print(f"graph '{graph.name}', opset {dict(graph.opset)}, {len(graph.nodes)} nodes")
    for value in graph.inputs:
        print(f"  input  {value.name}: {value.type_str()}")
    for value in graph.outputs:
        print(f"  output {value.name}: {value.type_str()}")
    print(f"parameters: {graph.parameter_count():,} ({graph.parameter_bytes() / 2**20:.2f} MiB in {len(graph.initializers)} initializers)")
    costs = count_flops(graph)
    macs = sum(c.macs for c in costs)
    flops = sum(c.flops for c in costs)
    print(f"compute (batch 1): {macs / 1e6:,.1f} M MACs, {flops / 1e9:,.3f} GFLOPs (1 MAC = 2 FLOPs)")
    print("ops:")
    for op_type, count in graph.op_histogram().most_common():
        print(f"  {op_type:<24} {count}")
    if args.nodes:
        print(graph.summary(max_nodes=None))
    return 0


def _load_feeds(session, pairs: list[str], dims: dict[str, int], seed: int):
    import numpy as np

    from .runtime.feeds import random_feeds

    feeds = random_feeds(session.get_inputs(), seed=seed, dims=dims)
    for pair in pairs:
        name, _, path = pair.partition("=")
        if not path:
            raise TinyInferError(f"--input expects NAME=FILE.npy, got {pair!r}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise TinyInferError(f"cannot read input '{name}' from '{path}': {exc}") from None
    return feeds


def _run(args) -> int:
    import numpy as np

    from . import InferenceSession

    session = InferenceSession(resolve_model(args.model))
    feeds = _load_feeds(session, args.input, _dims(args.dim), args.seed)
    names = [o.name for o in session.get_outputs()]
    results = session.run(None, feeds)
    for name, array in zip(names, results):
        stats = ""
        if array.size and array.dtype.kind in "fiub":
            a = array.astype(np.float64)
            stats = f"  min {a.min():.6g}  max {a.max():.6g}  mean {a.mean():.6g}"
        print(f"{name}: {array.dtype} {list(array.shape)}{stats}")
    if args.output:
        np.savez(args.output, **dict(zip(names, results)))
        print(f"saved {len(results)} output(s) to {args.output}")
    if args.profile:
        print(session.profile())
    return 0


def _bench(args) -> int:
    from .runtime.bench import benchmark_model

    report = benchmark_model(
        resolve_model(args.model),
        repeat=args.repeat,
        warmup=args.warmup,
        dims=_dims(args.dim),
        threads=args.threads,
        onnx_reference=args.onnx_reference,
        budget_s=args.budget,
        progress=lambda items, desc: _progress(items, desc),
    )
    print(report.table())
    if args.json:
        import json

        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0
