"""Per-node timing for :meth:`InferenceSession.profile`."""

from __future__ import annotations

import collections
import dataclasses


@dataclasses.dataclass
class NodeRecord:
    """What one node of the plan cost, summed over the runs since the session began."""

    name: str
    op_type: str
    kernel: str
    input_shapes: list
    output_shapes: list
    calls: int = 0
    total_ns: int = 0

    @property
    def mean_ms(self) -> float:
        return self.total_ns / max(self.calls, 1) / 1e6


@dataclasses.dataclass
class Profile:
    """Per-node records of a session, with a table view (``print(profile)``)."""

    records: list[NodeRecord]
    runs: int
    run_ns: int

    @property
    def mean_run_ms(self) -> float:
        return self.run_ns / max(self.runs, 1) / 1e6

    def by_op(self) -> dict[str, float]:
        """Mean milliseconds per run spent in each op type, largest first."""
        totals: dict[str, float] = collections.defaultdict(float)
        for r in self.records:
            totals[r.op_type] += r.total_ns / max(self.runs, 1) / 1e6
        return dict(sorted(totals.items(), key=lambda kv: -kv[1]))

    def table(self, top: int | None = 20) -> str:
        nodes_ms = sum(r.total_ns for r in self.records) / max(self.runs, 1) / 1e6
        lines = [
            f"{self.runs} run(s), {self.mean_run_ms:.3f} ms per run "
            f"({nodes_ms:.3f} ms in nodes, {max(self.mean_run_ms - nodes_ms, 0):.3f} ms dispatch)"
        ]
        rows = sorted(self.records, key=lambda r: -r.total_ns)
        shown = rows if top is None else rows[:top]
        name_w = max([len(r.name) for r in shown] + [4])
        op_w = max([len(r.op_type) for r in shown] + [2])
        lines.append(f"{'node':<{name_w}}  {'op':<{op_w}}  {'kernel':<10}  {'ms':>9}  {'%':>5}  shapes")
        total = sum(r.total_ns for r in self.records) or 1
        for r in shown:
            shapes = f"{_fmt(r.input_shapes)} -> {_fmt(r.output_shapes)}"
            lines.append(
                f"{r.name:<{name_w}}  {r.op_type:<{op_w}}  {r.kernel:<10}  {r.mean_ms:9.3f}  "
                f"{100 * r.total_ns / total:5.1f}  {shapes}"
            )
        if len(shown) < len(rows):
            lines.append(f"... {len(rows) - len(shown)} more nodes")
        by_op = ", ".join(f"{op} {ms:.2f}" for op, ms in list(self.by_op().items())[:8])
        lines.append(f"ms per op type: {by_op}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _fmt(shapes: list) -> str:
    return ", ".join(_fmt_shape(s) for s in shapes)


def _fmt_shape(shape) -> str:
    if shape is None:
        return "?"
    return "x".join(map(str, shape)) if len(shape) else "scalar"
