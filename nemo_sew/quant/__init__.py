"""Low-bit weight-only quantization (PTQ, QAT, BiT 1-bit, ternary 2-bit) of every encoder weight; see
:mod:`nemo_sew.quant.weights` and :mod:`nemo_sew.quant.schemes`."""

from nemo_sew._lazy import lazy_exports

_EXPORTS = {
    "QuantSpec": "nemo_sew.quant.schemes",
    "dequantize": "nemo_sew.quant.schemes",
    "fake_quantize": "nemo_sew.quant.schemes",
    "pack": "nemo_sew.quant.schemes",
    "quantize": "nemo_sew.quant.schemes",
    "unpack": "nemo_sew.quant.schemes",
    "WEIGHT_BITS": "nemo_sew.quant.weights",
    "FakeQuant": "nemo_sew.quant.weights",
    "HeldWeight": "nemo_sew.quant.weights",
    "QuantConfig": "nemo_sew.quant.weights",
    "apply_config": "nemo_sew.quant.weights",
    "prepare_qat": "nemo_sew.quant.weights",
    "quantize_encoder": "nemo_sew.quant.weights",
    "set_weight_bits": "nemo_sew.quant.weights",
    "storage_bytes": "nemo_sew.quant.weights",
    "weight_bits_table": "nemo_sew.quant.weights",
    "weight_targets": "nemo_sew.quant.weights",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "FakeQuant", "HeldWeight", "QuantConfig", "QuantSpec", "WEIGHT_BITS", "apply_config", "dequantize",
    "fake_quantize", "pack", "prepare_qat", "quantize", "quantize_encoder", "set_weight_bits", "storage_bytes",
    "unpack", "weight_bits_table", "weight_targets",
]  # fmt: skip
