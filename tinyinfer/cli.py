"""The ``tinyinfer`` command: one subcommand per user task.

    tinyinfer info MODEL [--layers]      inputs, outputs, parameters, MACs, FLOPs, memory, op histogram
    tinyinfer run MODEL [--input x=a.npy] [--output out.npz]
    tinyinfer conformance [--op Conv] [-v]
    tinyinfer bench MODEL                tinyinfer vs ONNX Runtime (and onnx.reference), one run
    tinyinfer zoo list                   the zoo's networks, our parameters and MACs next to their papers'
    tinyinfer zoo export NAME OUT.onnx   build a zoo network (--width, --resolution, --seed) and save it

MODEL is an .onnx path, ``light:NAME`` (a light model shipped with onnx) or ``zoo:NAME`` (a zoo
network at its paper's configuration).
"""

from __future__ import annotations

import argparse
import sys

from .errors import TinyInferError

MODEL_HELP = "an .onnx path, light:NAME (e.g. light:resnet50) or zoo:NAME (e.g. zoo:mobilenet_v2)"


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

    p = sub.add_parser("info", help="inputs, outputs, parameters, MACs, FLOPs, memory and op histogram of a model")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--nodes", action="store_true", help="also list every node")
    p.add_argument("--layers", action="store_true", help="also print the cost of every layer")
    p.add_argument("--top", type=int, default=None, metavar="N",
                   help="with --layers: only the N layers with the most FLOPs")
    p.add_argument("--batch", type=int, default=1, help="size of every symbolic dim when counting costs (default 1)")
    p.set_defaults(handler=_info)

    p = sub.add_parser("run", help="run a model on given or random inputs")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy", help="a feed (repeatable)")
    p.add_argument("--output", metavar="OUT.npz", help="save every output to this .npz file")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE", help="size of a symbolic dim")
    p.add_argument("--seed", type=int, default=0, help="seed of random feeds")
    p.add_argument("--profile", action="store_true", help="print the per-node profile")
    p.set_defaults(handler=_run)

    p = sub.add_parser("bench", help="time tinyinfer against ONNX Runtime (and onnx.reference) in one run")
    p.add_argument("model", help=MODEL_HELP)
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

    p = sub.add_parser("zoo", help="the networks of chapter 02: list them, or export one to ONNX")
    p.set_defaults(handler=lambda args, zoo_parser=p: _print_help(zoo_parser))
    zoo = p.add_subparsers(title="zoo commands")
    q = zoo.add_parser("list", help="every zoo network with our parameters and MACs next to its paper's")
    q.add_argument("--no-build", action="store_true", help="only the papers' figures: do not build and measure")
    q.add_argument("--notes", action="store_true", help="also print how each figure was matched to its paper")
    q.set_defaults(handler=_zoo_list)
    q = zoo.add_parser("export", help="build a zoo network and save it as ONNX")
    q.add_argument("name", help="a zoo name (see `tinyinfer zoo list`)")
    q.add_argument("output", metavar="OUT.onnx")
    q.add_argument("--width", type=float, default=None, help="width multiplier (the builder's default if omitted)")
    q.add_argument("--resolution", type=int, default=None, help="input side in pixels (builder's default if omitted)")
    q.add_argument("--seed", type=int, default=None, help="seed of the random weights (builder's default if omitted)")
    q.set_defaults(handler=_zoo_export)

    p = sub.add_parser("optimize", help="run the graph passes and save the result (.onnx or .tinf)")
    p.add_argument("model", help="an .onnx/.tinf path, light:NAME or zoo:NAME")
    p.add_argument("output", metavar="OUT.{onnx,tinf}")
    p.add_argument("--level", default="O2", choices=["O0", "O1", "O2", "O3"], help="optimisation level (default O2)")
    p.add_argument("--memory", action="store_true", help="also plan the activation memory and print the three sizes")
    p.add_argument("--notes", type=int, default=3, help="changes listed per pass (default 3)")
    p.set_defaults(handler=_optimize)
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


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
    """A model argument: a path, ``light:NAME`` for a light model shipped with onnx (weights
    re-drawn, see :mod:`tinyinfer.models.light`) or ``zoo:NAME`` for a zoo network built at
    its default configuration (:mod:`tinyinfer.models.zoo`)."""
    if spec.startswith("zoo:"):
        from .models import build

        return build(_zoo_name(spec.split(":", 1)[1]))
    if spec.startswith("light:"):
        from .models.light import LIGHT_MODELS, load_light_model

        name = spec.split(":", 1)[1]
        if name not in LIGHT_MODELS:
            raise TinyInferError(f"unknown light model {name!r}; choose from {', '.join(LIGHT_MODELS)}")
        return load_light_model(name)
    return spec


def _info(args) -> int:
    from . import load
    from .models.metrics import analyze, human_bytes, human_count

    if args.batch < 1:
        raise TinyInferError(f"--batch must be at least 1, got {args.batch}")
    graph = load(resolve_model(args.model))
    print(f"model: {args.model}")
    print(f"graph '{graph.name}', opset {dict(graph.opset)}, {len(graph.nodes)} nodes")
    for value in graph.inputs:
        print(f"  input  {value.name}: {value.type_str()}")
    for value in graph.outputs:
        print(f"  output {value.name}: {value.type_str()}")
    if args.model.startswith("zoo:"):
        _print_paper_figures(args.model.split(":", 1)[1], graph)
    report = analyze(graph, batch=args.batch)
    totals = report.totals
    print(f"parameters: {totals['params']:,} "
          f"({human_bytes(totals['param_bytes'])} in {len(graph.initializers)} initializers)")
    print(f"cost at batch {args.batch} (symbolic dims set to {args.batch}; 1 MAC = 2 FLOPs):")
    rows = [
        ("MACs", f"{totals['macs']:,} ({human_count(totals['macs'])})", "multiply-accumulates of conv and matmul"),
        ("FLOPs", f"{totals['flops']:,} ({human_count(totals['flops'])})", "every op, see tinyinfer.models.metrics"),
        ("activation memory", human_bytes(totals["activation_bytes"]), "every node's outputs, no buffer reuse"),
        ("peak activation memory", human_bytes(totals["peak_activation_bytes"]),
         f"freeing each tensor after its last use; peak at {report.peak_node or '-'}"),
        ("memory access", human_bytes(totals["memory_access"]), "inputs + weights + outputs of every node"),
        ("arithmetic intensity", f"{totals['arithmetic_intensity']:.2f} FLOP/byte", "FLOPs / memory access"),
    ]
    for label, value, note in rows:
        print(f"  {label:<23} {value:<30} {note}")
    if report.unknown:
        shown = ", ".join(report.unknown[:5]) + (", ..." if len(report.unknown) > 5 else "")
        print(f"  (shapes unknown for {len(report.unknown)} node(s), counted as zero: {shown})")
    print("ops:")
    groups = report.by_op()
    histogram = graph.op_histogram()
    for op_type, count in histogram.most_common():
        flops = groups.get(op_type, {}).get("flops", 0)
        share = f"{100 * flops / totals['flops']:5.1f} % of FLOPs" if totals["flops"] else ""
        print(f"  {op_type:<24} {count:>5}  {human_count(flops):>8} FLOPs  {share}")
    if args.layers:
        print(report.table(top=args.top))
    if args.nodes:
        print(graph.summary(max_nodes=None))
    return 0


def _print_paper_figures(name: str, graph) -> None:
    from .models import entry
    from .models.metrics import human_count
    from .models.zoo import measured_cost

    paper = entry(name)
    params, macs = measured_cost(graph)
    print(f"paper: {paper.paper}")
    print(f"  reports {human_count(paper.params)} parameters, {human_count(paper.macs)} MACs; "
          f"this build {human_count(params)} parameters (BN statistics excluded), {human_count(macs)} MACs")


def _zoo_name(name: str) -> str:
    """``name`` if the zoo has it, else a clear error listing what it has."""
    from .models import list_models

    names = list_models()
    if name not in names:
        available = ", ".join(names) if names else "none are registered"
        raise TinyInferError(f"unknown zoo model {name!r}; available: {available}")
    return name


def _zoo_list(args) -> int:
    from .models import build, entry, list_models
    from .models.metrics import human_count
    from .models.zoo import measured_cost

    names = list_models()
    if not names:
        print("no zoo models registered")
        return 0
    rows, failures = [], []
    for name in _progress(names, "zoo", "model"):
        info = entry(name)
        ours = ("-", "-")
        if not args.no_build:
            try:
                params, macs = measured_cost(build(name))
                ours = (human_count(params), human_count(macs))
            # A broken builder must not hide the rest of the zoo: report it and go on.
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                ours = ("error", "error")
        rows.append((name, info.family, ours[0], human_count(info.params), ours[1], human_count(info.macs), info.paper))
    header = ("name", "family", "params", "(paper)", "MACs", "(paper)", "paper")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        labels = [f"{row[0]:<{widths[0]}}", f"{row[1]:<{widths[1]}}"]
        figures = [f"{cell:>{width}}" for cell, width in zip(row[2:6], widths[2:6])]
        print("  ".join([*labels, *figures, row[6]]))
    print("params: this build's parameters, BatchNorm statistics excluded (as the papers count); "
          "MACs: multiply-accumulates per image at the paper's configuration")
    if args.notes:
        for name in names:
            if entry(name).note:
                print(f"note on {name}: {entry(name).note}")
    for failure in failures:
        print(f"tinyinfer: warning: cannot build {failure}", file=sys.stderr)
    return 0


def _zoo_export(args) -> int:
    import onnx

    from .models import build
    from .models.metrics import human_count
    from .models.zoo import measured_cost

    name = _zoo_name(args.name)
    config = {key: getattr(args, key) for key in ("width", "resolution", "seed") if getattr(args, key) is not None}
    model = build(name, **config)
    try:
        onnx.save(model, args.output)
    except OSError as exc:
        raise TinyInferError(f"cannot write '{args.output}': {exc}") from None
    params, macs = measured_cost(model)
    settings = ", ".join(f"{key}={value}" for key, value in config.items()) or "default configuration"
    print(f"wrote {args.output}: {name} ({settings}), {len(model.graph.node)} nodes, "
          f"{human_count(params)} parameters, {human_count(macs)} MACs per image")
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


def _optimize(args) -> int:
    from . import load, save
    from .passes import PassManager

    graph = load(resolve_model(args.model))
    optimized, report = PassManager(args.level).run(graph)
    print(report.table(notes=args.notes))
    if args.memory:
        from .passes.memory import plan_memory

        print("activation memory:", plan_memory(optimized).summary())
    save(optimized, args.output)
    print(f"saved {len(optimized.nodes)} nodes to {args.output}")
    return 0
