"""tinyinfer in ONNX's own backend test suite (``onnx.backend.test.BackendTest``).

Which tests run:
* every *node* test whose model uses only ops tinyinfer registers — so every node test of
  every supported op, including the ``_expanded`` variants that spell an op out in other
  supported ops;
* the *simple* model tests whose ops are all supported;
* the nine *real* architecture tests (ResNet-50, SqueezeNet, ShuffleNet, DenseNet-121,
  Inception v1/v2, AlexNet, VGG-19, ZFNet-512), which ship in the onnx wheel as "light"
  models with their expected outputs, so they run offline.

Tolerances are the suite's own (per test case; 1e-3 relative, 1e-7 absolute by default).
Every node is also checked against tinyinfer's shape inference (``check_shapes``).

A test of a supported op is left out only with a written reason, in ``EXCLUDED`` below.
``tinyinfer conformance`` prints the pass count over the whole node suite.
"""

from __future__ import annotations

import os
import re
import tempfile
import warnings

import onnx
import onnx.backend.test
import pytest
from onnx.backend.test.loader import load_model_tests

from tinyinfer import ops
from tinyinfer.runtime.onnx_backend import TinyInferBackend, model_ops, node_test_cases

# The real-model tests write their generated inputs under ONNX_HOME; keep that out of ~.
os.environ.setdefault("ONNX_HOME", tempfile.mkdtemp(prefix="tinyinfer-onnx-home-"))

SUPPORTED = set(ops.supported_ops())

#: Tests of supported ops that are left out, each with the reason.
EXCLUDED: dict[str, str] = {
    "test_loop16_seq_none": (
        "onnx's BackendTest cannot compare a sequence holding a 0-d tensor (its "
        "assert_similar_outputs calls len() on each element); `tinyinfer conformance` runs "
        "this test with its own comparison, and it passes there"
    ),
    "test_maxunpool_export_with_output_shape": (
        "the expected output reads the indices as positions in the default-size (4x4) output and "
        "pads that into output_shape (5x5); the spec text, ONNX Runtime and PyTorch read them as "
        "flat indices into the output_shape tensor, which tinyinfer follows (ONNX Runtime's result "
        "for this very case equals tinyinfer's)"
    ),
}

REAL_MODELS = [
    "test_resnet50",
    "test_squeezenet",
    "test_shufflenet",
    "test_densenet121",
    "test_inception_v1",
    "test_inception_v2",
    "test_bvlc_alexnet",
    "test_vgg19",
    "test_zfnet512",
]


def _node_tests() -> list[str]:
    return [c.name for c in node_test_cases() if model_ops(c.model) <= SUPPORTED]


def _simple_tests() -> list[str]:
    names = []
    for case in load_model_tests(kind="simple"):
        model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
        if model_ops(model) <= SUPPORTED:
            names.append(case.name)
    return names


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    INCLUDED = sorted(set(_node_tests()) | set(_simple_tests()) | set(REAL_MODELS))
    backend_test = onnx.backend.test.BackendTest(TinyInferBackend, __name__)

backend_test.include("^(" + "|".join(re.escape(name) for name in INCLUDED) + ")_cpu$")
for name in EXCLUDED:
    backend_test.exclude(f"^{re.escape(name)}_cpu$")


def _drop_unselected(test_case: type) -> type:
    """BackendTest generates all 4,000 tests and marks the unselected ones skipped; drop
    them instead, so the report counts only what tinyinfer is tested on."""
    for attr in list(vars(test_case)):
        method = getattr(test_case, attr)
        if attr.startswith("test_") and getattr(method, "__unittest_skip_why__", "") == "no matched include pattern":
            delattr(test_case, attr)
    return test_case


# NumPy warns on the suite's deliberate edge cases (log(0), x/0 giving inf); the outputs are
# what is checked.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

globals().update({name: _drop_unselected(case) for name, case in backend_test.test_cases.items()})
