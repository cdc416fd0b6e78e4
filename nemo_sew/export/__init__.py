"""Export: one ONNX graph per compression profile, onnxruntime runner, parity checks.

    from nemo_sew.export import to_onnx, OnnxCTCRunner
    path = to_onnx(model, "out/s2.onnx", profile="s2")      # parity-checked against PyTorch
    OnnxCTCRunner(path).transcribe(["a.wav", "b.wav"])      # -> ["text a", "text b"]

TensorRT engines are built from these files by ``trt/build_engines.py``.
"""

from nemo_sew._lazy import lazy_exports

_EXPORTS = {
    "TOLERANCE": "nemo_sew.export.onnx",
    "ExportResult": "nemo_sew.export.onnx",
    "ParityError": "nemo_sew.export.onnx",
    "ParityReport": "nemo_sew.export.onnx",
    "check_parity": "nemo_sew.export.onnx",
    "export_onnx": "nemo_sew.export.onnx",
    "read_metadata": "nemo_sew.export.onnx",
    "to_onnx": "nemo_sew.export.onnx",
    "OnnxCTCRunner": "nemo_sew.export.ort",
    "TorchCTCRunner": "nemo_sew.export.ort",
    "ctc_greedy_decode": "nemo_sew.export.ort",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "TOLERANCE", "ExportResult", "OnnxCTCRunner", "ParityError", "ParityReport", "TorchCTCRunner",
    "check_parity", "ctc_greedy_decode", "export_onnx", "read_metadata", "to_onnx",
]  # fmt: skip
