"""Export: one ONNX graph per compression profile, onnxruntime runner, parity checks.

    from nemo_sew.export import to_onnx, OnnxCTCRunner
    path = to_onnx(model, "out/s2.onnx", profile="s2")      # parity-checked against PyTorch
    OnnxCTCRunner(path).transcribe(["a.wav", "b.wav"])      # -> ["text a", "text b"]

TensorRT engines are built from these files by ``trt/build_engines.py``.
"""

from nemo_sew.export.onnx import (
    TOLERANCE,
    ExportResult,
    ParityError,
    ParityReport,
    check_parity,
    export_onnx,
    read_metadata,
    to_onnx,
)
from nemo_sew.export.ort import OnnxCTCRunner, TorchCTCRunner, ctc_greedy_decode

__all__ = [
    "TOLERANCE", "ExportResult", "OnnxCTCRunner", "ParityError", "ParityReport", "TorchCTCRunner",
    "check_parity", "ctc_greedy_decode", "export_onnx", "read_metadata", "to_onnx",
]  # fmt: skip
