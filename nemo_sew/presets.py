"""Named model sizes: each preset only fills in numbers of :class:`nemo_sew.SqueezeEncoder`'s arguments.

``encoder_config(name, **overrides)`` gives the full keyword dict (what goes under ``encoder:`` in a NeMo
config, with ``_target_: nemo_sew.SqueezeEncoder``); ``build_encoder(name, **overrides)`` builds it.
"""

from __future__ import annotations

from typing import Any

from nemo_sew.encoder import SqueezeEncoder


def _sew(layers: int, dim: int) -> dict[str, Any]:
    # SEW (scripts/pt-sew.sh): C = 64*wf, heads = wf, FFN = 4C, pos-conv 31/16, s = 2, WFE-C c64 L1, post-LN
    return dict(
        frontend="wfe_c", feat_in=1, wfe_c=64, wfe_l=1, conv_norm="group_norm", conv_bias=False,
        d_model=dim, num_layers=layers, num_heads=dim // 64, ffn_dim=4 * dim, block="transformer",
        layer_norm_first=False, squeeze=2, pos_conv_kernel=31, pos_conv_groups=16, upsample=True,
    )  # fmt: skip


def _w2v2(layers: int, dim: int, large: bool) -> dict[str, Any]:
    # wav2vec 2.0: WFE-O, pos-conv 128/16, no squeeze and no upsampler; large = pre-LN + layer_norm extractor
    return dict(
        frontend="wfe_o", feat_in=1, conv_norm="layer_norm" if large else "group_norm", conv_bias=large,
        d_model=dim, num_layers=layers, num_heads=dim // 64, ffn_dim=4 * dim, block="transformer",
        layer_norm_first=large, squeeze=1, pos_conv_kernel=128, pos_conv_groups=16, upsample=False,
    )  # fmt: skip


def _conformer(layers: int, dim: int, frontend: str) -> dict[str, Any]:
    base = _sew(layers, dim) if frontend == "wfe_c" else _tiny_mel(layers, dim)
    return {**base, "block": "conformer", "ffn_dim": 4 * dim, "conv_kernel": 31}


def _tiny_mel(layers: int, dim: int) -> dict[str, Any]:
    # CPU-sized: log-mel (80 bins, 10 ms) stacked to 20 ms, squeeze 2 -> 40 ms, upsampled back to 20 ms
    return dict(
        frontend="mel_stack", feat_in=80, mel_stack=2, d_model=dim, num_layers=layers, num_heads=max(dim // 64, 1),
        ffn_dim=4 * dim, block="transformer", layer_norm_first=True, squeeze=2, pos_conv_kernel=31,
        pos_conv_groups=16, upsample=True,
    )  # fmt: skip


PRESETS: dict[str, dict[str, Any]] = {
    "sew_tiny": _sew(12, 512),
    "sew_small": _sew(12, 768),
    "sew_mid": _sew(24, 768),
    "w2v2_base": _w2v2(12, 768, large=False),
    "w2v2_large": _w2v2(24, 1024, large=True),
    "conformer_sew_tiny": _conformer(12, 512, "wfe_c"),
    "conformer_sew_small": _conformer(12, 768, "wfe_c"),
    # small presets for CPU demos and tests
    "tiny_mel": _tiny_mel(6, 192),
    "tiny_mel_conformer": _conformer(4, 192, "mel_stack"),
    "tiny_wfe_c": {**_sew(2, 128), "wfe_c": 16, "num_heads": 2},
    "tiny_wfe_o": {**_w2v2(2, 128, large=False), "conv_layers": [[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2},
    "tiny_conformer": {**_conformer(2, 128, "wfe_c"), "wfe_c": 16, "num_heads": 2},
}


def encoder_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full keyword arguments of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown encoder preset {name!r}; expected one of {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(SqueezeEncoder.__init__.__annotations__) - {"return"})
    if unknown:
        raise ValueError(f"unknown SqueezeEncoder arguments {unknown}")
    return {**PRESETS[name], **overrides}


def build_encoder(name: str, **overrides: Any) -> SqueezeEncoder:
    """Build preset ``name`` (see :data:`PRESETS`), e.g. ``build_encoder("sew_tiny", squeeze=4)``."""
    return SqueezeEncoder(**encoder_config(name, **overrides))
