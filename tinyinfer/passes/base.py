"""Graph passes and the PassManager that runs them by optimisation level.

A pass is a named rewrite ``Graph -> Graph``. It works on the graph it is given (the manager
hands it a copy) and returns a list of one-line notes saying what it changed ("removed
Identity 'id_3'", "folded BatchNormalization 'bn1' into Conv 'conv1'"). The manager measures
each pass — nodes before and after, bytes of weights before and after, time — so a notebook
can print a before/after table of the whole pipeline.

Levels, as engines usually name them:

* ``O0`` — nothing: the graph runs as imported;
* ``O1`` — cleanup that never changes a result: constant folding, dead code, identities;
* ``O2`` — O1 plus fusions (conv + batch norm, conv + activation, ...); the default;
* ``O3`` — O2 plus layout transformation (the kernels chapter).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from ..errors import TinyInferError
from ..ir import Graph

LEVELS = ("O0", "O1", "O2", "O3")


@dataclasses.dataclass
class Pass:
    """A graph rewrite: ``run(graph)`` changes the graph in place and returns its notes."""

    name: str
    level: str
    run: Callable[[Graph], list[str]]
    doc: str = ""


#: The pass registry, in pipeline order. Filled by @register_pass in the pass modules.
PASSES: list[Pass] = []


def register_pass(name: str, level: str) -> Callable:
    """Decorator: add ``fn(graph) -> notes`` to the pipeline at ``level``."""
    if level not in LEVELS[1:]:
        raise ValueError(f"pass level must be one of {LEVELS[1:]}, got {level!r}")

    def decorate(fn: Callable[[Graph], list[str]]) -> Callable[[Graph], list[str]]:
        PASSES.append(Pass(name, level, fn, (fn.__doc__ or "").strip().split("\n")[0]))
        return fn

    return decorate


@dataclasses.dataclass
class PassReport:
    """What one pass did."""

    name: str
    nodes_before: int
    nodes_after: int
    weight_bytes_before: int
    weight_bytes_after: int
    seconds: float
    notes: list[str]

    @property
    def changed(self) -> bool:
        return bool(self.notes)


@dataclasses.dataclass
class OptimizationReport:
    """Every pass of one PassManager run, in order."""

    level: str
    passes: list[PassReport]

    @property
    def nodes_before(self) -> int:
        return self.passes[0].nodes_before if self.passes else 0

    @property
    def nodes_after(self) -> int:
        return self.passes[-1].nodes_after if self.passes else 0

    def table(self, notes: int = 3) -> str:
        lines = [f"optimisation level {self.level}: {self.nodes_before} -> {self.nodes_after} nodes"]
        lines.append(f"{'pass':<28} {'nodes':>13} {'weights MiB':>17} {'ms':>8}  changes")
        for r in self.passes:
            lines.append(
                f"{r.name:<28} {r.nodes_before:>5} -> {r.nodes_after:<5} "
                f"{r.weight_bytes_before / 2**20:>7.2f} -> {r.weight_bytes_after / 2**20:<7.2f} "
                f"{r.seconds * 1e3:8.1f}  {len(r.notes)}"
            )
            for note in r.notes[:notes]:
                lines.append(f"    {note}")
            if len(r.notes) > notes:
                lines.append(f"    ... {len(r.notes) - notes} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


class PassManager:
    """Runs the registered passes up to a level, in order, on a copy of the graph."""

    def __init__(self, level: str = "O2", *, passes: list[str] | None = None, validate: bool = True):
        if level not in LEVELS:
            raise TinyInferError(f"unknown optimisation level {level!r}; choose one of {', '.join(LEVELS)}")
        self.level = level
        self.validate = validate
        wanted = LEVELS.index(level)
        self.passes = [p for p in PASSES if LEVELS.index(p.level) <= wanted]
        if passes is not None:
            known = {p.name for p in PASSES}
            unknown = [name for name in passes if name not in known]
            if unknown:
                raise TinyInferError(f"unknown pass(es) {unknown}; known: {sorted(known)}")
            self.passes = [p for p in PASSES if p.name in passes]

    def run(self, graph: Graph) -> tuple[Graph, OptimizationReport]:
        graph = graph.copy()
        reports = []
        for p in self.passes:
            before_nodes, before_bytes = len(graph.nodes), graph.parameter_bytes()
            start = time.perf_counter()
            notes = p.run(graph) or []
            seconds = time.perf_counter() - start
            if self.validate and notes:
                graph.validate()
            reports.append(
                PassReport(p.name, before_nodes, len(graph.nodes), before_bytes, graph.parameter_bytes(), seconds, list(notes))
            )
        return graph, OptimizationReport(self.level, reports)


def optimize(graph: Graph, level: str = "O2") -> tuple[Graph, OptimizationReport]:
    """Run the pipeline up to ``level`` on a copy of ``graph``."""
    return PassManager(level).run(graph)


# The QDQ folding pass (O2) registers here, before the O1 cleanups: constant folding would
# otherwise turn each weight's DequantizeLinear into a float weight before it can be folded.
from . import quantize as _quantize  # noqa: E402,F401
