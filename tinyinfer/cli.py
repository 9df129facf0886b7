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

    p = sub.add_parser("conformance", help="run ONNX's backend node test suite and count passes")
    p.add_argument("--op", action="append", default=[], help="only tests whose model uses this op (repeatable)")
    p.add_argument("-k", dest="pattern", default=None, help="only tests whose name contains this text")
    p.add_argument("-v", "--verbose", action="store_true", help="list every failure")
    p.set_defaults(handler=_conformance)
    return parser


def _progress(items, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dev extra; the command works without it
        return items
    return tqdm(items, desc=desc, unit="test", leave=False, disable=not sys.stderr.isatty())


def _conformance(args) -> int:
    from .runtime.onnx_backend import model_ops, node_test_cases, run_node_suite

    cases = node_test_cases()
    if args.op:
        cases = [c for c in cases if set(args.op) & model_ops(c.model)]
    if args.pattern:
        cases = [c for c in cases if args.pattern in c.name]
    result = run_node_suite(cases, progress=lambda items: _progress(items, "conformance"))
    if args.verbose:
        for name, why in sorted(result.failed.items()):
            print(f"FAIL {name}: {why}")
    print(result.summary())
    return 0 if not result.failed else 1
