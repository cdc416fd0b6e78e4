"""Pure PyTorch parts of nemo_sew (no NeMo import): front ends, compressors, blocks."""

from nemo_sew.nn.blocks import (
    BRANCH_KINDS,
    Block,
    BlockOptions,
    FeedForward,
    LayerPlan,
    Residual,
    SelfAttention,
    branch_kind,
    build_block,
)
from nemo_sew.nn.compress import SEWUpsampler, SqueezeCompressor
from nemo_sew.nn.units import BranchUnits, FrontendUnits, UnitSlice
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
    "BRANCH_KINDS", "Block", "BlockOptions", "BranchUnits", "ConvFeatureExtractor", "FeatureProjection", "FeedForward",
    "FrontendLayout", "FrontendUnits", "LayerPlan", "MaskedInstanceNorm", "MelStackFrontend", "Residual", "SEWUpsampler",
    "SelfAttention", "SqueezeCompressor", "UnitSlice", "branch_kind", "build_block", "build_frontend", "conv_out_lengths",
    "frontend_layout", "time_mask", "wfe_c_layers", "wfe_o_layers",
]  # fmt: skip
