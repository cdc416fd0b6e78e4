"""Low-bit weight-only quantization (PTQ, QAT, BiT 1-bit, ternary 2-bit) of every encoder weight; see
:mod:`nemo_sew.quant.weights` and :mod:`nemo_sew.quant.schemes`."""

from nemo_sew.quant.schemes import QuantSpec, dequantize, fake_quantize, pack, quantize, unpack
from nemo_sew.quant.weights import (
    WEIGHT_BITS,
    FakeQuant,
    HeldWeight,
    QuantConfig,
    apply_config,
    prepare_qat,
    quantize_encoder,
    set_weight_bits,
    storage_bytes,
    weight_bits_table,
    weight_targets,
)

__all__ = [
    "FakeQuant", "HeldWeight", "QuantConfig", "QuantSpec", "WEIGHT_BITS", "apply_config", "dequantize",
    "fake_quantize", "pack", "prepare_qat", "quantize", "quantize_encoder", "set_weight_bits", "storage_bytes",
    "unpack", "weight_bits_table", "weight_targets",
]  # fmt: skip
