"""tinyinfer as an ONNX backend (``onnx.backend.base.Backend``), for ONNX's conformance suite.

ONNX ships a test suite for backends: 1,800+ single-node tests with inputs and expected
outputs, a few small models and nine real architectures. ``onnx.backend.test.BackendTest``
drives any class with this interface; ``tests/conformance`` plugs tinyinfer into it, and
:func:`run_node_suite` runs the whole node suite outside pytest for ``tinyinfer conformance``.
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from typing import Any, Callable, Iterable

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from .. import ops
from ..errors import UnsupportedOpError
from .session import InferenceSession


class TinyInferRep(BackendRep):
    """A prepared model: runs positional inputs through an InferenceSession."""

    def __init__(self, session: InferenceSession):
        self.session = session

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, dict):
            feeds = dict(inputs)
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            names = [arg.name for arg in self.session.get_inputs()]
            feeds = dict(zip(names, inputs))
        return tuple(self.session.run(None, feeds))


class TinyInferBackend(Backend):
    """``onnx.backend`` entry points for tinyinfer (CPU only)."""

    check_shapes = True  # the conformance suite also tests every op's shape inference

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return all(_supported(node) for node in model.graph.node)

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> TinyInferRep:
        super().prepare(model, device, **kwargs)
        return TinyInferRep(InferenceSession(model, check_shapes=cls.check_shapes))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def _supported(node: onnx.NodeProto) -> bool:
    return (ops.normalize_domain(node.domain), node.op_type) in ops.OPS


def model_ops(model: onnx.ModelProto) -> set[str]:
    """Op types a model uses (``domain:Op`` outside the default domain)."""
    names = set()
    for node in model.graph.node:
        domain = ops.normalize_domain(node.domain)
        names.add(node.op_type if not domain else f"{domain}:{node.op_type}")
    return names


@dataclasses.dataclass
class SuiteResult:
    passed: list[str] = dataclasses.field(default_factory=list)
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.passed) + len(self.failed) + len(self.skipped)

    def summary(self) -> str:
        return (
            f"ONNX node suite: {len(self.passed)} passed, {len(self.failed)} failed, "
            f"{len(self.skipped)} skipped (unsupported ops) of {self.total}"
        )


def node_test_cases() -> list:
    """The ONNX backend node test cases shipped (as code) in the onnx wheel."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return collect_testcases()


def run_case(case) -> None:
    """Run one node test case; raises AssertionError (or a TinyInferError) on failure."""
    rep = TinyInferBackend.prepare(case.model)
    for inputs, expected in case.data_sets:
        # Some cases give their data as TensorProto (types NumPy cannot build directly).
        inputs = [_as_array(x) for x in inputs]
        expected = [_as_array(x) for x in expected]
        outputs = rep.run(inputs)
        assert len(outputs) == len(expected), f"{len(outputs)} outputs, expected {len(expected)}"
        for got, want in zip(outputs, expected):
            _assert_close(got, want, case)


def _assert_close(got, want, case) -> None:
    """Compare one output: a tensor, a sequence (list) of tensors, or an empty optional (None)."""
    if want is None or isinstance(want, list):
        assert type(got) is type(want), f"got {type(got).__name__}, expected {type(want).__name__}"
        if want is not None:
            assert len(got) == len(want), f"a sequence of {len(got)} tensors, expected {len(want)}"
            for got_item, want_item in zip(got, want):
                _assert_close(got_item, _as_array(want_item), case)
        return
    want = np.asarray(want)
    assert got.shape == want.shape, f"shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"dtype {got.dtype}, expected {want.dtype}"
    if want.dtype == object or want.dtype.kind in "biu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=case.rtol, atol=case.atol, equal_nan=True
        )


def _as_array(value):
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    return value


def run_node_suite(cases: Iterable | None = None, progress: Callable | None = None) -> SuiteResult:
    """Run every node test; a test using an op tinyinfer lacks counts as skipped."""
    result = SuiteResult()
    cases = list(cases if cases is not None else node_test_cases())
    iterator = progress(cases) if progress else cases
    for case in iterator:
        missing = sorted(op for op in model_ops(case.model) if op not in set(ops.supported_ops()))
        if missing:
            result.skipped[case.name] = f"unsupported: {', '.join(missing)}"
            continue
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                run_case(case)
        except UnsupportedOpError as exc:
            result.skipped[case.name] = str(exc)
        except Exception as exc:  # a failed case is reported, not raised
            result.failed[case.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        else:
            result.passed.append(case.name)
    return result


def failures_by_op(result: SuiteResult, cases: list) -> dict[str, list[str]]:
    """Group failed test names by the ops their models use (for reports)."""
    by_name = {c.name: c for c in cases}
    groups: dict[str, list[str]] = collections.defaultdict(list)
    for name in result.failed:
        groups["+".join(sorted(model_ops(by_name[name].model)))].append(name)
    return dict(groups)
