"""Model compression (chapter 03): quantization first — the affine map, calibration, PTQ.

Every tool takes an ONNX model or an ``ir.Graph`` in and gives one back. The public API is
shaped like ``onnxruntime.quantization`` so that a user of it feels at home::

    from tinyinfer.compress import quantize_static, CalibrationDataReader
    quantize_static("model.onnx", "model.int8.onnx", reader, method="entropy", per_channel=True)

Each module is imported only if it exists (a missing one is skipped; an existing one that
fails to import raises as usual), so every part of the package works as soon as it is written.
"""

from __future__ import annotations

import importlib
import importlib.util

#: module -> the public names it contributes to ``tinyinfer.compress``.
_PUBLIC = {
    "quantize": ["QuantParams", "compute_params", "quantize", "dequantize", "fake_quantize", "pack_int4", "unpack_int4"],
    "calibrate": ["Calibrator"],
    "equalize": ["equalize_cross_layer", "correct_bias"],
    "ptq": ["quantize_static", "quantize_dynamic", "CalibrationDataReader", "NpzDataReader"],
}

__all__: list[str] = []
for _module, _names in _PUBLIC.items():
    if importlib.util.find_spec(f"{__name__}.{_module}") is None:
        continue
    _loaded = importlib.import_module(f"{__name__}.{_module}")
    for _name in _names:
        if hasattr(_loaded, _name):  # a module still being written may lack a name for now
            globals()[_name] = getattr(_loaded, _name)
            __all__.append(_name)
