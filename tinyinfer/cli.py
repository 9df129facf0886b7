"""The ``tinyinfer`` command: one subcommand per user task.

    tinyinfer info MODEL [--layers]      inputs, outputs, parameters, MACs, FLOPs, memory, op histogram
    tinyinfer run MODEL [--input x=a.npy] [--output out.npz]
    tinyinfer conformance [--op Conv] [-v]
    tinyinfer bench MODEL...             tinyinfer vs ONNX Runtime (and onnx.reference), one run; --by-op
    tinyinfer bench --suite light|zoo|all   reference, numba, ONNX Runtime x batch x threads; --gemm; --dispatch
    tinyinfer zoo list                   the zoo's networks, our parameters and MACs next to their papers'
    tinyinfer zoo export NAME OUT.onnx   build a zoo network (--width, --resolution, --seed) and save it
    tinyinfer quantize MODEL OUT.onnx    int8 post-training quantization (--mode static|dynamic, --calibration calib.npz)
    tinyinfer quantize --compare light:all,zoo:all,digits [--json table.json]   vs ONNX Runtime's quantizer
    tinyinfer prune MODEL OUT.onnx --ratio R   remove weights or channels (--method magnitude|l1-channel|bn-scale)
    tinyinfer serve REPO                 serve a Triton-layout model repository (HTTP, gRPC, metrics)
    tinyinfer cluster REPO --replicas 2  replicas of tinyinfer serve behind nginx (retries, health checks)
    tinyinfer perf MODEL -u HOST:PORT    throughput and p50/p90/p99 latency per concurrency level of a running server
    tinyinfer model canary MODEL [--version V --weight W] -u HOST:PORT   show or set a running server's canary
    tinyinfer model promote|rollback MODEL -u HOST:PORT                  make the canary stable, or drop it

MODEL is an .onnx path, ``light:NAME`` (a light model shipped with onnx) or ``zoo:NAME`` (a zoo
network at its paper's configuration).
"""

from __future__ import annotations

import argparse
import os
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

    p = sub.add_parser(
        "bench", help="time tinyinfer against ONNX Runtime in one run: one model, a suite, GEMM, dispatch",
        description="MODEL...: tinyinfer's reference path vs ONNX Runtime (and --onnx-reference) per model. "
                    "--suite: reference, numba and ONNX Runtime on many models x --batch x --threads, checked "
                    "against the reference. --gemm: GEMM GFLOP/s. --dispatch: per-node overhead.")
    p.add_argument("model", nargs="*", help=MODEL_HELP)
    p.add_argument("--suite", metavar="SET", help="light, zoo, all, or comma-separated MODELs: the suite table")
    p.add_argument("--gemm", action="store_true", help="GFLOP/s of the packed GEMM, naive and NumPy BLAS")
    p.add_argument("--dispatch", action="store_true", help="per-node dispatch overhead on a chain of tiny nodes")
    p.add_argument("--by-op", action="store_true",
                   help="MODEL: where the time goes, per op family, tinyinfer numba vs ONNX Runtime (both profilers)")
    p.add_argument("--repeat", type=int, default=None, help="timed runs per engine (default 10; suite 5; GEMM 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 2; suite 1 after the first)")
    p.add_argument("--dim", action="append", default=[], metavar="SYMBOL=SIZE", help="size of a symbolic dim")
    p.add_argument("--threads", default=None, metavar="N[,N...]",
                   help="MODEL: ONNX Runtime intra-op threads (default: its own); suite and GEMM: the thread "
                        "counts to run (default 1,2)")
    p.add_argument("--batch", default="1,8", metavar="B[,B...]", help="suite: batch sizes (default 1,8)")
    p.add_argument("--engines", default="reference,numba,onnxruntime", metavar="E[,E...]",
                   help="suite: engines to time (default reference,numba,onnxruntime)")
    p.add_argument("--select", default="time", choices=["time", "cost"], help="suite: numba kernel selection")
    p.add_argument("--pin-blas", default="reference", metavar="E[,E...]",
                   help="suite: engines run with NumPy's BLAS pinned to the row's threads (default reference; "
                        "'none' for no engine)")
    p.add_argument("--onnx-reference", action="store_true", help="MODEL: also time onnx.reference.ReferenceEvaluator")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which an engine stops repeating (default 60; suite: per engine and row, 2)")
    p.add_argument("--gemm-sizes", default="128,256,512,1024,2048", metavar="S[,S...]", help="GEMM: square sizes")
    p.add_argument("--gemm-shapes", default="resnet50", choices=["resnet50", "none"],
                   help="GEMM: also the GEMMs of light:resnet50's convolutions at batch 1 (default) or not")
    p.add_argument("--naive-up-to", type=int, default=512, help="GEMM: largest square size the naive GEMM runs")
    p.add_argument("--nodes", type=int, default=200, help="dispatch: nodes in the chain (default 200)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--figure", metavar="FILE.png", help="suite: write the figure (ms per model and engine)")
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
    p.add_argument("model", help="an .onnx/.tinf path, light:NAME or zoo:NAME "
                                 "(light:all with --compare-ort: the nine light models, nothing saved)")
    p.add_argument("output", metavar="OUT.{onnx,tinf}", nargs="?", help="where to save the optimized model")
    p.add_argument("--level", default="O2", choices=["O0", "O1", "O2", "O3"], help="optimisation level (default O2)")
    p.add_argument("--memory", action="store_true", help="also plan the activation memory and print the three sizes")
    p.add_argument("--notes", type=int, default=3, help="changes listed per pass (default 3)")
    p.add_argument("--compare-ort", action="store_true",
                   help="also count the nodes ONNX Runtime leaves (ORT_ENABLE_EXTENDED) and print both counts")
    p.set_defaults(handler=_optimize)

    p = sub.add_parser("quantize", help="post-training int8 quantization: static (QDQ, calibrated) or dynamic")
    p.add_argument("model", nargs="?", help=MODEL_HELP)
    p.add_argument("output", nargs="?", metavar="OUT.{onnx,tinf}")
    p.add_argument("--compare", metavar="MODELS",
                   help="instead of one model: quantize each of these (comma-separated MODEL arguments, light:all, "
                        "zoo:all, digits) with ONNX Runtime's quantizer and tinyinfer's, and print the table")
    p.add_argument("--json", metavar="PATH", help="--compare: also write the table as JSON")
    p.add_argument("--threads", type=int, default=2, help="--compare: threads of both runtimes when timing (default 2)")
    p.add_argument("--mode", choices=["static", "dynamic"], default="static", help="default: static")
    p.add_argument("--method", choices=["minmax", "percentile", "entropy", "mse"],
                   help="static: how activation ranges are calibrated (default: quantize_static's, mse)")
    granularity = p.add_mutually_exclusive_group()
    granularity.add_argument("--per-channel", dest="per_channel", action="store_true", default=True,
                             help="one weight scale per output channel (default)")
    granularity.add_argument("--per-tensor", dest="per_channel", action="store_false", help="one weight scale per tensor")
    p.add_argument("--calibration", metavar="CALIB.npz",
                   help="static: one array per model input, samples on axis 0 (default: random-normal samples)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="calibrate on the first N samples (default: all of --calibration, or 16 random ones)")
    p.add_argument("--weight-type", choices=["int8", "int4"], default="int8",
                   help="static: weights in 8 bits, or 4 bits packed two per byte (ONNX int4, opset 21); default int8")
    p.add_argument("--equalize", action=argparse.BooleanOptionalAction,
                   help="cross-layer equalization before calibrating (default: off)")
    p.add_argument("--bias-correction", action=argparse.BooleanOptionalAction,
                   help="correct biases for the weights' quantization error (default: on)")
    p.add_argument("--gptq", dest="weight_rounding", action="store_const", const="gptq",
                   help="round weights by GPTQ against the calibration data instead of to nearest")
    p.add_argument("--seed", type=int, default=0, help="seed of random calibration samples")
    p.set_defaults(handler=_quantize)

    p = sub.add_parser("prune", help="remove weights (magnitude) or whole conv channels (l1-channel, bn-scale)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("output", metavar="OUT.onnx")
    p.add_argument("--method", choices=["magnitude", "l1-channel", "bn-scale"], default="l1-channel",
                   help="magnitude: zero the smallest weights; l1-channel / bn-scale: remove the channels with the "
                        "smallest filter L1 norm / BatchNorm scale, shrinking the model (default l1-channel)")
    p.add_argument("--ratio", type=float, required=True, help="share of weights or channels removed, in (0, 1)")
    p.add_argument("--scope", choices=["layer", "global"], default="layer",
                   help="magnitude: one threshold per layer (default) or one for the whole model")
    p.add_argument("--emit-masked", metavar="MASKED.onnx",
                   help="channel methods: also write the same-size model with the pruned channels zeroed")
    p.add_argument("--multiple-of", type=int, default=1, metavar="M",
                   help="channel methods: keep a multiple of M channels per layer (8 suits SIMD-blocked kernels)")
    p.set_defaults(handler=_prune)

    p = sub.add_parser("serve", help="serve a Triton-layout model repository over HTTP and gRPC (Open Inference "
                                     "Protocol v2), with Prometheus metrics",
                       description="REPO holds <model>/config.pbtxt (optional) and <model>/<version>/model.{onnx,tinf}. "
                                   "Port 0 picks a free port. SIGTERM or Ctrl-C drains the requests in flight and exits.")
    p.add_argument("repository", metavar="REPO")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--http-port", type=int, default=8000, help="default 8000")
    p.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    p.add_argument("--metrics-port", type=int, default=8002, help="default 8002")
    p.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                   help="none: load all, never change; poll: load all and rescan REPO; explicit: load through "
                        "the repository API (default none)")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="explicit mode: a model to load at start (repeatable)")
    p.add_argument("--repository-poll-secs", type=float, default=15.0, help="poll mode: seconds between rescans")
    p.add_argument("--max-body-mib", type=float, default=64.0, help="largest request body in MiB (default 64)")
    p.set_defaults(handler=_serve)

    p = sub.add_parser("cluster", help="run several `tinyinfer serve` replicas behind nginx (HTTP and gRPC, retries, "
                                       "health checks)")
    p.add_argument("repository", metavar="REPO")
    p.add_argument("--replicas", type=int, default=2, help="default 2")
    p.add_argument("--http-port", type=int, default=8000, help="nginx's HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=8001, help="nginx's gRPC port (default 8001)")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                   help="an argument passed to every replica's tinyinfer serve (repeatable)")
    p.set_defaults(handler=_cluster)

    p = sub.add_parser("perf", help="measure a running v2 server: throughput and p50/p90/p99 latency per concurrency",
                       description="A concurrency sweep in the spirit of Triton's perf_analyzer, through tritonclient: "
                                   "each level keeps N requests in flight for a warm-up and a measurement window.")
    p.add_argument("model", help="the model's name on the server")
    p.add_argument("-u", "--url", default="127.0.0.1:8000", help="host:port (default 127.0.0.1:8000; gRPC usually :8001)")
    p.add_argument("-i", "--protocol", choices=["http", "grpc"], default="http", help="default http")
    p.add_argument("--json", action="store_true", help="HTTP: JSON tensors instead of the binary tensor extension")
    p.add_argument("--concurrency", default="1,2,4,8,16", metavar="LEVELS",
                   help="'1,2,4' or perf_analyzer's 'start:end[:step]' (default 1,2,4,8,16)")
    p.add_argument("-b", "--batch-size", type=int, default=1, help="rows per request on a variable axis 0 (default 1)")
    p.add_argument("-x", "--model-version", default="", help="a version (default: the server's routing)")
    p.add_argument("--window", type=float, default=2.0, help="seconds measured per level (default 2)")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds before each window (default 0.5)")
    p.add_argument("--csv", metavar="OUT.csv", help="write one row per level")
    p.add_argument("--figure", metavar="OUT.png", help="plot throughput and latency against concurrency")
    p.set_defaults(handler=_perf)

    p = sub.add_parser("model", help="a running server's canary: show it, set it, promote it or roll it back",
                       description="Talks to the server's canary extension over HTTP (POST /v2/models/MODEL/canary "
                                   "and .../promote, .../rollback). `canary` without --version shows the split.")
    p.add_argument("action", choices=["canary", "promote", "rollback"])
    p.add_argument("model", help="the model's name on the server")
    p.add_argument("--version", type=int, help="canary: the version to send --weight of the traffic to")
    p.add_argument("--weight", type=float, help="canary: the share of version-less requests, in (0, 1)")
    p.add_argument("--stable", type=int, help="canary: the version the rest goes to (default: the current stable)")
    p.add_argument("-u", "--url", default="127.0.0.1:8000", help="the server's HTTP host:port (default 127.0.0.1:8000)")
    p.set_defaults(handler=_model)
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
    """Per-model reports (MODEL...), the suite table (--suite), GEMM GFLOP/s (--gemm) and
    dispatch cost (--dispatch), in that order; one JSON file holds whatever ran."""
    if not (args.model or args.suite or args.gemm or args.dispatch):
        raise TinyInferError("bench needs a MODEL, --suite SET, --gemm or --dispatch (see tinyinfer bench -h)")
    record: dict = {}
    status = 0
    if args.model and args.by_op:
        record["by_op"] = [_bench_by_op(args, spec) for spec in args.model]
    elif args.model and not args.suite:
        record["models"] = [_bench_model(args, spec) for spec in args.model]
    if args.suite:
        record["suite"], status = _bench_suite(args)
    if args.gemm:
        record["gemm"] = _bench_gemm(args)
    if args.dispatch:
        from .runtime.microbench import benchmark_dispatch, format_dispatch

        record["dispatch"] = benchmark_dispatch(nodes=args.nodes)
        print(format_dispatch(record["dispatch"]))
    if args.json:
        import json

        only_models = list(record) == ["models"] and len(record["models"]) == 1
        try:
            with open(args.json, "w") as f:
                json.dump(record["models"][0] if only_models else record, f, indent=2)
        except OSError as exc:
            raise TinyInferError(f"cannot write '{args.json}': {exc}") from None
    return status


def _bench_by_op(args, spec: str) -> dict:
    import dataclasses

    from .runtime.compare import time_by_op_table, time_by_op_vs_onnxruntime

    threads = _int_list(args.threads, "--threads", default=(2,))
    if len(threads) != 1:
        raise TinyInferError(f"bench --by-op takes one --threads count, got {args.threads!r}")
    row = time_by_op_vs_onnxruntime(resolve_model(spec), name=spec, threads=threads[0],
                                    runs=20 if args.repeat is None else args.repeat,
                                    warmup=5 if args.warmup is None else args.warmup)
    print(time_by_op_table(row))
    return dataclasses.asdict(row)


def _bench_model(args, spec: str) -> dict:
    from .runtime.bench import benchmark_model

    threads = _int_list(args.threads, "--threads", default=(0,), minimum=0)
    if len(threads) != 1:
        raise TinyInferError(f"bench MODEL takes one --threads count, got {args.threads!r}")
    report = benchmark_model(
        resolve_model(spec),
        repeat=10 if args.repeat is None else args.repeat,
        warmup=2 if args.warmup is None else args.warmup,
        dims=_dims(args.dim),
        threads=threads[0],
        onnx_reference=args.onnx_reference,
        budget_s=60.0 if args.budget is None else args.budget,
        progress=lambda items, desc: _progress(items, desc),
    )
    print(report.table())
    return report.to_dict()


def _bench_suite(args) -> tuple[dict, int]:
    from .runtime.bench import ENGINES, benchmark_suite, write_suite_figure

    specs = _suite_specs(args.suite) + list(args.model)
    engines = [e for e in args.engines.split(",") if e]
    pinned = [] if args.pin_blas == "none" else [e for e in args.pin_blas.split(",") if e]
    unknown = [e for e in engines + pinned if e not in ENGINES]
    if unknown:
        raise TinyInferError(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    report = benchmark_suite(
        [(spec, lambda spec=spec: resolve_model(spec)) for spec in specs],
        engines=engines,
        threads=_int_list(args.threads, "--threads", default=(1, 2)),
        batches=_int_list(args.batch, "--batch", default=(1, 8)),
        repeat=5 if args.repeat is None else args.repeat,
        budget=2.0 if args.budget is None else args.budget,
        warmup=1 if args.warmup is None else args.warmup,
        select=args.select,
        pin_blas=pinned,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(report.table())
    if args.figure:
        write_suite_figure(report, args.figure)
        print(f"figure written to {args.figure}")
    for warning in report.warnings:
        print(f"tinyinfer: warning: {warning}", file=sys.stderr)
    for error in report.errors:
        print(f"tinyinfer: error: {error}", file=sys.stderr)
    return report.to_dict(), 1 if report.errors else 0


def _suite_specs(suite: str) -> list[str]:
    """``light``, ``zoo``, ``all`` or a comma-separated list of MODEL arguments."""
    from .models import list_models
    from .models.light import LIGHT_MODELS

    light = [f"light:{name}" for name in LIGHT_MODELS]
    zoo = [f"zoo:{name}" for name in list_models()]
    sets = {"light": light, "zoo": zoo, "all": light + zoo}
    if suite in sets:
        return sets[suite]
    return [spec for spec in suite.split(",") if spec]


def _bench_gemm(args) -> list[dict]:
    from .runtime.microbench import conv_gemm_shapes, format_gemm_table, gemm_table

    threads = _int_list(args.threads, "--threads", default=(1, 2))
    sizes = _int_list(args.gemm_sizes, "--gemm-sizes", default=())
    shapes = conv_gemm_shapes(resolve_model("light:resnet50")) if args.gemm_shapes == "resnet50" else []
    rows = gemm_table(sizes, shapes, threads=threads, repeats=5 if args.repeat is None else args.repeat,
                      naive_up_to=args.naive_up_to)
    print(format_gemm_table(rows, threads))
    return rows


def _int_list(text: str | None, option: str, default: tuple, minimum: int = 1) -> tuple[int, ...]:
    """``"1,2"`` -> (1, 2); ``default`` when the option is not given."""
    if text is None:
        return default
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise TinyInferError(f"{option} expects comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise TinyInferError(f"{option} expects integers >= {minimum}, got {text!r}")
    return values


def _optimize(args) -> int:
    from . import load, save
    from .passes import PassManager
    from .runtime.compare import NodeCountRow, node_count_table, node_counts_vs_onnxruntime, onnxruntime_node_count

    if args.model == "light:all":  # the node-count table of chapter 05, one light model at a time
        if not args.compare_ort or args.output:
            raise TinyInferError("light:all only compares node counts: use `tinyinfer optimize light:all --compare-ort` "
                                 "without an output file")
        from .models.light import LIGHT_MODELS, load_light_model

        rows = []
        for name in _progress(LIGHT_MODELS, "light models", "model"):
            rows += node_counts_vs_onnxruntime({name: load_light_model(name)}, level=args.level)
        print(node_count_table(rows))
        return 0
    if not args.output:
        raise TinyInferError("optimize needs an output file (OUT.onnx or OUT.tinf) after the model")
    source = resolve_model(args.model)
    graph = load(source)
    optimized, report = PassManager(args.level).run(graph)
    print(report.table(notes=args.notes))
    if args.memory:
        from .passes.memory import plan_memory

        print("activation memory:", plan_memory(optimized).summary())
    if args.compare_ort:
        row = NodeCountRow(args.model, len(graph.nodes), len(optimized.nodes), onnxruntime_node_count(source), args.level)
        print(node_count_table([row]))
    save(optimized, args.output)
    print(f"saved {len(optimized.nodes)} nodes to {args.output}")
    return 0


def _quantize(args) -> int:
    from .compress.ptq import NpzDataReader, ListDataReader, quantize_dynamic, quantize_static, random_normal_reader
    from .runtime import load

    if args.samples is not None and args.samples < 1:
        raise TinyInferError(f"--samples must be at least 1, got {args.samples}")
    if args.compare:
        if args.model or args.output:
            raise TinyInferError("--compare takes its models as its value; give no MODEL or OUT file with it")
        return _quantize_compare(args)
    if not (args.model and args.output):
        raise TinyInferError("quantize needs a MODEL and an OUT.onnx (or OUT.tinf) file, or --compare MODELS")
    model = resolve_model(args.model)
    if args.mode == "dynamic":
        if args.calibration or args.weight_type != "int8" or len(_static_options(args)) > 1:
            raise TinyInferError(
                "--calibration, --method, --weight-type, --equalize and --bias-correction apply to --mode static only")
        report = quantize_dynamic(model, args.output, per_channel=args.per_channel)
    else:
        if args.calibration:
            reader = NpzDataReader(args.calibration, load(model).input_names)
            if args.samples is not None:
                reader = ListDataReader(reader.feeds[:args.samples])
            print(f"calibrating on {len(reader)} sample(s) from {args.calibration}")
        else:
            samples = args.samples or 16
            reader = random_normal_reader(model, samples, seed=args.seed)
            print(f"no --calibration given: calibrating on {samples} random-normal sample(s) (seed {args.seed}); "
                  "ranges from real data are better")
        report = quantize_static(model, args.output, reader, per_channel=args.per_channel,
                                 progress=sys.stderr.isatty(), **_static_options(args))
    print(report.table())
    print(f"saved {args.output}")
    return 0


def _serve(args) -> int:
    import asyncio
    import signal

    from .serve.server import ModelServer

    if args.max_body_mib <= 0:
        raise TinyInferError(f"--max-body-mib must be positive, got {args.max_body_mib}")

    async def serve() -> None:
        server = ModelServer(args.repository, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                             metrics_port=args.metrics_port, model_control_mode=args.model_control_mode,
                             load_models=tuple(args.load_model), poll_interval_s=args.repository_poll_secs,
                             max_body_bytes=int(args.max_body_mib * (1 << 20)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.request_stop)
        await server.start()
        for row in server.core.repository_index():
            print(f"model {row['name']} version {row['version'] or '-'}: {row['state']} {row['reason']}".rstrip())
        print(f"serving {args.repository}: HTTP {args.host}:{server.http_port}, gRPC {args.host}:{server.grpc_port}, "
              f"metrics http://{args.host}:{server.metrics_port}/metrics", flush=True)
        await server.serve_until_stopped()
        print("drained and stopped", flush=True)

    asyncio.run(serve())
    return 0


def _cluster(args) -> int:
    import signal
    import threading

    from .serve.cluster import Cluster

    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    with Cluster(args.repository, replicas=args.replicas, http_port=args.http_port, grpc_port=args.grpc_port,
                 serve_args=tuple(args.serve_arg)) as cluster:
        ports = ", ".join(f"{r['http_port']}/{r['grpc_port']}" for r in cluster.state()["replicas"])
        print(f"nginx on HTTP :{args.http_port}, gRPC :{args.grpc_port} -> {args.replicas} replicas "
              f"(HTTP/gRPC ports {ports}); config in {cluster.workdir}", flush=True)
        seen = 0
        while not stopped.wait(0.5):
            events = cluster.state()["events"]
            for event in events[seen:]:
                print(event, flush=True)
            seen = len(events)
    print("stopped", flush=True)
    return 0


def _perf(args) -> int:
    from .serve import perf

    results = perf.sweep(args.url, args.model, perf.parse_concurrency(args.concurrency), protocol=args.protocol,
                         binary=not args.json, batch_size=args.batch_size, window_s=args.window,
                         warmup_s=args.warmup, model_version=args.model_version,
                         progress=lambda levels: _progress(levels, "perf", "level"))
    print(perf.format_table(results))
    if args.csv:
        perf.write_csv(results, args.csv)
    if args.figure:
        perf.plot(results, args.figure, title=f"{args.model} over {args.protocol}")
    return 1 if any(result.errors for result in results) else 0


def _model(args) -> int:
    setting = (args.version, args.weight, args.stable) != (None, None, None)
    if args.action != "canary" and setting:
        raise TinyInferError(f"tinyinfer model {args.action} takes no --version, --weight or --stable")
    if setting and (args.version is None or args.weight is None):
        raise TinyInferError("tinyinfer model canary: give --version and --weight to set a canary (neither to show it)")
    path = f"/v2/models/{args.model}/canary" + ("" if args.action == "canary" else f"/{args.action}")
    body = {"version": args.version, "weight": args.weight, "stable": args.stable} if setting else None
    state = _http_json(args.url, path, body, post=setting or args.action != "canary")
    print(_format_canary(args.model, state))
    return 0


def _http_json(url: str, path: str, body: dict | None, post: bool) -> dict:
    """GET or POST (a JSON body) to a server's HTTP port; the server's {"error"} becomes a TinyInferError."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else (b"" if post else None)
    request = urllib.request.Request(f"http://{url}{path}", data=data, method="POST" if post else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        try:
            message = json.loads(error.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise TinyInferError(f"{url} answered {error.code}: {message}") from None
    except (urllib.error.URLError, OSError) as error:
        raise TinyInferError(f"cannot reach a server at {url}: {getattr(error, 'reason', error)}") from None


def _format_canary(model: str, state: dict) -> str:
    """The router state as a few lines: the split, then each version's counts and window."""
    split = (f"canary version {state['canary']} at weight {state['weight']:g}" if state["canary"] is not None
             else "no canary")
    lines = [f"model {model}: stable version {state['stable']}, {split}"]
    for version, counts in sorted(state["counts"].items(), key=lambda item: int(item[0])):
        window = state["window"].get(version, {})
        p99 = window.get("p99_ms")
        lines.append(f"  version {version}: routed {counts['routed']}, ok {counts['ok']}, failed {counts['failed']}; "
                     f"window {window.get('requests', 0)} requests, {window.get('errors', 0)} errors, p99 "
                     + (f"{p99:.2f} ms" if p99 is not None else "-"))
    if state["last_rollback"]:
        lines.append(f"  last rollback: {state['last_rollback']}")
    return "\n".join(lines)


def _prune(args) -> int:
    from .compress.prune import prune

    report = prune(resolve_model(args.model), args.output, method=args.method, ratio=args.ratio,
                   scope=args.scope, masked_out=args.emit_masked, multiple_of=args.multiple_of)
    print(report.table())
    print(f"saved {args.output}" + (f" and {args.emit_masked}" if args.emit_masked else ""))
    return 0


def _quantize_compare(args) -> int:
    import json
    import platform
    import time

    from .compress.compare import compare_models, expand_specs, markdown_table

    if args.mode != "static" or args.calibration or not args.per_channel:
        raise TinyInferError("--compare runs static per-channel quantization on each model's own calibration data; "
                             "--mode, --calibration and --per-tensor do not apply")
    options = _static_options(args)
    specs = expand_specs(args.compare)
    start = time.perf_counter()
    done = []

    def save(result) -> None:  # after every model, so a long run that stops keeps what it measured
        done.append(result)
        state = "skipped (" + result.skipped + ")" if result.skipped else "done"
        print(f"{result.model}: {state} in {result.seconds:.0f} s ({len(done)}/{len(specs)})", file=sys.stderr, flush=True)
        if not args.json:
            return
        record = {
            "command": "tinyinfer quantize --compare " + args.compare,
            "options": {key: str(value) for key, value in options.items()},
            "machine": {"cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "platform": platform.platform()},
            "threads": args.threads, "calibration_samples": args.samples or 16,
            "seconds": round(time.perf_counter() - start, 1), "complete": len(done) == len(specs),
            "models": [r.to_dict() for r in done],
        }
        try:
            with open(args.json, "w") as f:
                json.dump(record, f, indent=2)
        except OSError as exc:
            raise TinyInferError(f"cannot write '{args.json}': {exc}") from None

    results = compare_models(specs, options=options, calib_samples=args.samples or 16, threads=args.threads,
                             on_result=save)
    print(markdown_table(results))
    if args.json:
        print(f"table written to {args.json}")
    return 1 if all(result.skipped for result in results) else 0


def _static_options(args) -> dict:
    """The quantize_static keywords the command line sets (the others keep their defaults)."""
    options = {"weight_type": args.weight_type}
    for key in ("method", "equalize", "bias_correction", "weight_rounding"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options
