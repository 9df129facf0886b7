"""Model compression (chapter 03): quantization first — the affine map, calibration, PTQ.

Every tool takes an ONNX model or an ``ir.Graph`` in and gives one back. The public API is
shaped like ``onnxruntime.quantization`` so that a user of it feels at home::

    from tinyinfer.compress import quantize_static, CalibrationDataReader
    quantize_static("model.onnx", "model.int8.onnx", reader, method="entropy", per_channel=True)

The modules, in the order the chapter builds them:

* :mod:`.affine` — scale and zero point, quantize / dequantize, int4 packing;
* :mod:`.calibrate` — activation ranges from data (minmax, percentile, entropy, MSE);
* :mod:`.equalize` — cross-layer equalization and bias correction (data-free);
* :mod:`.gptq` — weight rounding that keeps each layer's outputs on the calibration data (GPTQ);
* :mod:`.ptq` — static and dynamic post-training quantization to a standard QDQ model;
* :mod:`.compare` — the same model through ONNX Runtime's quantizer and ours, measured;
* :mod:`.qdq` — whether a model is quantized, and its float twin;
* :mod:`.prune` — magnitude and channel pruning (the graph physically shrinks);
* :mod:`.cluster` — weight sharing by k-means and Deep Compression's size table;
* :mod:`.centroids` — trained quantization: fine-tuning the shared centroids;
* :mod:`.finetune`, :mod:`.distill` — pruning with fine-tuning (gradual, one-shot, channels,
  network slimming) and knowledge distillation, on the trainer below;
* :mod:`.qat` — quantization-aware training (straight-through estimator, learned step size)
  exporting the same QDQ model as PTQ;
* :mod:`.binarize` — binarized networks (sign weights and activations, XNOR-Net scales, STE),
  exported as standard ONNX that tinyinfer runs with XNOR and popcount;
* :mod:`.backward`, :mod:`.train`, :mod:`.data` — gradients over the engine's own graphs, the
  :class:`Trainer` that uses them, and the digits data it trains on (the methods that need
  training build on these).
"""

from __future__ import annotations

from .affine import QuantParams, compute_params, dequantize, fake_quantize, pack_int4, quantize, unpack_int4
from .calibrate import Calibrator
from .equalize import correct_bias, equalize_cross_layer
from .ptq import CalibrationDataReader, NpzDataReader, quantize_dynamic, quantize_static
from .backward import RULES, kl_divergence, softmax_cross_entropy
from .data import DigitsSplit, digits_split, minibatches
from .train import SGD, Adam, Trainer
from .finetune import (GradualPruningTrainer, MaskedTrainer, Recipe, SlimmingTrainer, cubic_sparsity,
                       prune_channels_and_finetune, prune_gradually, prune_once_and_finetune, train_slimming)
from .distill import DistillationTrainer, distillation_loss, distillation_study
from .qat import QuantizationAwareTrainer, compare_with_ptq, prepare_qat, quantize_aware_train
from .centroids import CentroidTrainer, finetune_centroids
from .binarize import BinarizedResult, BinarizedTrainer, binarized_accuracy, binarized_digits_cnn, train_binarized

__all__ = [
    "QuantParams", "compute_params", "quantize", "dequantize", "fake_quantize", "pack_int4", "unpack_int4",
    "Calibrator", "equalize_cross_layer", "correct_bias",
    "quantize_static", "quantize_dynamic", "CalibrationDataReader", "NpzDataReader",
    "RULES", "softmax_cross_entropy", "kl_divergence", "DigitsSplit", "digits_split", "minibatches",
    "Trainer", "SGD", "Adam",
    "MaskedTrainer", "GradualPruningTrainer", "SlimmingTrainer", "Recipe", "cubic_sparsity", "prune_gradually",
    "prune_once_and_finetune", "prune_channels_and_finetune", "train_slimming",
    "DistillationTrainer", "distillation_loss", "distillation_study",
    "quantize_aware_train", "prepare_qat", "QuantizationAwareTrainer", "compare_with_ptq",
    "CentroidTrainer", "finetune_centroids",
    "train_binarized", "binarized_accuracy", "BinarizedResult", "BinarizedTrainer", "binarized_digits_cnn",
]
