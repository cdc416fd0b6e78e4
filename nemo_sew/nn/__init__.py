"""Pure PyTorch parts of nemo_sew (no NeMo import): front ends, compressors, blocks."""

from nemo_sew.nn.blocks import ConformerLayer, FeedForward, SelfAttention, TransformerLayer
from nemo_sew.nn.compress import SEWUpsampler, SqueezeCompressor
from nemo_sew.nn.frontend import (
    ConvFeatureExtractor,
    FeatureProjection,
    MaskedInstanceNorm,
    MelStackFrontend,
    conv_out_lengths,
    time_mask,
    wfe_c_layers,
    wfe_o_layers,
)

__all__ = [
    "ConformerLayer", "ConvFeatureExtractor", "FeatureProjection", "FeedForward", "MaskedInstanceNorm",
    "MelStackFrontend", "SEWUpsampler", "SelfAttention", "SqueezeCompressor", "TransformerLayer",
    "conv_out_lengths", "time_mask", "wfe_c_layers", "wfe_o_layers",
]  # fmt: skip
