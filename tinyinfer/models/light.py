"""The nine "light" real-architecture models that ship inside the ``onnx`` wheel.

ONNX's backend suite carries ResNet-50, SqueezeNet, ShuffleNet, DenseNet-121, Inception v1
and v2, AlexNet, VGG-19 and ZFNet-512 as graphs whose every weight is the constant 0.02, so
the files stay small. Constant weights make a poor test: many wrong kernels (a transposed
filter, a flipped window) give the same output when all weights are equal. For correctness
work :func:`redraw_weights` replaces them with seeded random weights of sensible scale: He
initialisation (He et al., 2015) for conv and dense weights, and realistic BatchNormalization
statistics, so activations neither vanish nor explode through 50 layers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_MODELS = (
    "resnet50",
    "squeezenet",
    "shufflenet",
    "densenet121",
    "inception_v1",
    "inception_v2",
    "bvlc_alexnet",
    "vgg19",
    "zfnet512",
)


def light_model_path(name: str) -> Path:
    """Path of ``light_<name>.onnx`` inside the installed onnx package."""
    if name not in LIGHT_MODELS:
        raise KeyError(f"unknown light model {name!r}; choose from {', '.join(LIGHT_MODELS)}")
    return Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def load_light_model(name: str, *, redraw: bool = True, seed: int = 0) -> onnx.ModelProto:
    """One of the light models as a ModelProto, with re-drawn weights unless ``redraw=False``.

    Re-drawn models also get BatchNormalization statistics measured on random input
    (:func:`calibrate_batchnorm`), so every BN sees inputs it normalises to unit scale.
    """
    model = onnx.load(str(light_model_path(name)))
    if not redraw:
        return model
    return calibrate_batchnorm(redraw_weights(model, seed=seed), seed=seed)


def calibrate_batchnorm(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> onnx.ModelProto:
    """Set every BatchNormalization's running mean and variance to its input's statistics.

    A trained network's BN layers hold the mean and variance of the activations they see;
    random weights leave activations growing layer after layer (ResNet-50's logits reach
    the thousands). Walking the graph once on random input and storing, at each BN, the
    per-channel mean and variance of what actually arrives there reproduces what training
    would have measured, so every BN output has roughly unit scale.
    """
    if not any(node.op_type == "BatchNormalization" for node in model.graph.node):
        return model
    from .. import ops
    from ..runtime import load
    from ..runtime.feeds import random_feeds
    from ..runtime.session import _node_arg

    graph = load(model)
    inputs = [_node_arg(v) for v in graph.inputs]
    env: dict[str, np.ndarray] = dict(graph.initializers)
    env.update(random_feeds(inputs, seed=seed, default_dim=batch))
    updated: dict[str, np.ndarray] = {}
    for node in graph.topological_order():
        args = [env[name] if name else None for name in node.inputs]
        if node.op_type == "BatchNormalization" and len(node.inputs) == 5 and len(node.outputs) == 1:
            x = args[0]
            axes = (0, *range(2, x.ndim))
            mean_name, var_name = node.inputs[3], node.inputs[4]
            if mean_name in graph.initializers and var_name in graph.initializers:
                updated[mean_name] = x.mean(axis=axes).astype(x.dtype)
                updated[var_name] = x.var(axis=axes).astype(x.dtype)
                args[3], args[4] = updated[mean_name], updated[var_name]
        results = ops.get_op(node).reference(node, *args)
        if isinstance(results, np.ndarray) or not isinstance(results, (list, tuple)):
            results = (results,)
        for name, array in zip(node.outputs, results):
            if name:
                env[name] = np.asarray(array)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for index, tensor in enumerate(result.graph.initializer):
        if tensor.name in updated:
            result.graph.initializer[index].CopyFrom(numpy_helper.from_array(updated[tensor.name], tensor.name))
    return result


def redraw_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of ``model`` with seeded He-scaled weights and realistic BatchNorm statistics.

    The light models build their weights at run time with ``ConstantOfShape(shape) = 0.02``;
    each such node whose shape is an initializer is replaced by an initializer holding
    random values drawn for the role of the tensor (conv weight, BN scale, bias, ...).
    Float initializers are re-drawn the same way.
    """
    rng = np.random.default_rng(seed)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    roles: dict[str, tuple[str, int, bool]] = {}
    for node in graph.node:
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        for position, name in enumerate(node.input):
            roles.setdefault(name, (node.op_type, position, trans_b))
    initial = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    drawn: dict[str, np.ndarray] = {}
    kept_nodes = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in initial and node.output[0] in roles:
            value = next((numpy_helper.to_array(a.t) for a in node.attribute if a.name == "value"), np.zeros(1, np.float32))
            shape = tuple(int(d) for d in initial[node.input[0]])
            template = np.zeros(shape, dtype=value.dtype)
            if template.dtype.kind == "f":
                drawn[node.output[0]] = _draw(rng, *roles[node.output[0]], template).astype(template.dtype)
                continue
        kept_nodes.append(node)
    for name, array in initial.items():
        if array.dtype.kind == "f" and name in roles:
            drawn[name] = _draw(rng, *roles[name], array).astype(array.dtype)
    del graph.node[:]
    graph.node.extend(kept_nodes)
    still_used = {name for node in kept_nodes for name in node.input} | {o.name for o in graph.output}
    tensors = [numpy_helper.from_array(array, name) for name, array in initial.items() if name not in drawn and name in still_used]
    tensors += [numpy_helper.from_array(array, name) for name, array in drawn.items()]
    del graph.initializer[:]
    graph.initializer.extend(tensors)
    # IR 3 lists every initializer as a graph input too; from IR 4 on, inputs are only what
    # the caller feeds, which is what the re-drawn model keeps.
    inputs = [v for v in graph.input if v.name not in initial and v.name not in drawn]
    del graph.input[:]
    graph.input.extend(inputs)
    result.ir_version = max(result.ir_version, 4)
    return result


def _draw(rng: np.random.Generator, op_type: str, position: int, trans_b: bool, array: np.ndarray) -> np.ndarray:
    shape = array.shape
    if op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and position == 1 and array.ndim >= 2:
        # fan_in is the number of inputs each output sums over: C/group * prod(kernel) for a
        # Conv weight W[M, C/group, k...]; the contracted axis for Gemm (B is [N, K] when
        # transB=1, else [K, N]) and MatMul ([K, N]).
        if op_type in ("Conv", "ConvTranspose"):
            fan_in = int(np.prod(shape[1:]))
        elif op_type == "Gemm" and trans_b:
            fan_in = shape[1]
        else:
            fan_in = shape[0]
        return rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))
    if op_type == "BatchNormalization":
        # inputs: X, scale, B, mean, var — scale near 1, shift near 0, running statistics of
        # a ReLU network's activations (mean about 0.5, variance about 1).
        return {
            1: rng.uniform(0.5, 1.5, shape),
            2: rng.normal(0.0, 0.1, shape),
            3: rng.normal(0.0, 0.5, shape),
            4: rng.uniform(0.5, 2.0, shape),
        }.get(position, array)
    if position == 2 or array.ndim == 1:  # biases and per-channel parameters
        return rng.normal(0.0, 0.05, shape)
    return rng.standard_normal(shape) * 0.1
