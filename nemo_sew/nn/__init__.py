"""Pure PyTorch parts of nemo_sew (no NeMo import): front ends, compressors, blocks."""

from nemo_sew.nn.blocks import Block, BlockOptions, FeedForward, LayerPlan, Residual, SelfAttention, build_block
from nemo_sew.nn.compress import SEWUpsampler, SqueezeCompressor
from nemo_sew.nn.frontend import (
    ConvFeatureExtractor,
    FeatureProjection,
    FrontendLayout,
    MaskedInstanceNorm,
    MelStackFrontend,
    build_frontend,
    conv_out_lengths,
    frontend_layout,
    time_mask,
    wfe_c_layers,
    wfe_o_layers,
)

__all__ = [
    "Block", "BlockOptions", "ConvFeatureExtractor", "FeatureProjection", "FeedForward", "FrontendLayout",
    "LayerPlan", "MaskedInstanceNorm", "MelStackFrontend", "Residual", "SEWUpsampler", "SelfAttention",
    "SqueezeCompressor", "build_block", "build_frontend", "conv_out_lengths", "frontend_layout", "time_mask",
    "wfe_c_layers", "wfe_o_layers",
]  # fmt: skip
