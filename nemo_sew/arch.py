"""The encoder described by data: :class:`EncoderArch` and its per-layer :class:`BlockSpec`.

An ``EncoderArch`` says what weights an encoder has (front end, width, compressor, expander, and one
``BlockSpec`` per layer); :class:`nemo_sew.SqueezeEncoder` builds exactly that, :mod:`nemo_sew.cost`
counts its MACs and parameters, pruning writes a smaller one, and ``.nemo`` files store it
(``cfg.encoder.arch``). Presets are ``EncoderArch`` values (:data:`PRESETS`); a recipe names a preset and
overrides fields, it never copies the numbers::

    arch = build_arch("sew_tiny", d_model=384, blocks={"heads": 6, "ffn_dims": [1536]})
    arch = build_arch("tiny_mel", blocks=[{"heads": 2}, {"heads": 3}, ...])   # one override per layer

Every field is a plain value (ints, strings, tuples of them), so ``to_dict`` / ``from_dict`` round-trip
through YAML and OmegaConf. Nothing here imports torch or NeMo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

from nemo_sew.errors import UserError

FrontendKind = Literal["mel_stack", "wfe_c", "wfe_o"]
BlockKind = Literal["transformer", "conformer"]
ExpanderKind = Literal["sew", "phase", "none"]

ConvLayer = tuple[int, int, int]  # (out_channels, kernel, stride)



@dataclass(frozen=True)
class BlockTraits:
    """What the rest of the library needs to know about a block kind (the cost model, validation, pruning).

    Args:
        ffns: FFNs per block (``BlockSpec.ffn_dims`` has exactly this many entries; 0 = that FFN is absent).
        ffns_before_attention: how many of them run before the attention branch (before its query pooling).
        conv_module: the block has a conv module (``BlockSpec.conv_channels``).
        final_norm: a LayerNorm after the last branch.
    """

    ffns: int
    ffns_before_attention: int = 0
    conv_module: bool = False
    final_norm: bool = False


# Adding a block kind: one entry here and one builder in nemo_sew.nn.blocks.BLOCK_BUILDERS.
BLOCK_KINDS: dict[str, BlockTraits] = {
    "transformer": BlockTraits(ffns=1),
    "conformer": BlockTraits(ffns=2, ffns_before_attention=1, conv_module=True, final_norm=True),
}


def wfe_o_layers(channels: int = 512) -> tuple[ConvLayer, ...]:
    """wav2vec 2.0's original wave feature extractor (WFE-O): 7 convs, stride 320, receptive field 400.

    Maps to fairseq ``conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"``.
    """
    return ((channels, 10, 5),) + ((channels, 3, 2),) * 4 + ((channels, 2, 2),) * 2


def wfe_c_layers(c: int = 64, extra_1x1: int = 1) -> tuple[ConvLayer, ...]:
    """SEW's compact wave feature extractor (WFE-C): channels double each time the rate drops 4x.

    Args:
        c: width of the first layer (SEW ``wfe_c``; 64 gives 13 layers ending at 512 channels).
        extra_1x1: number of 1x1 convs after each strided conv (SEW ``wfe_l``).
    """
    stages = [(2 * c, 3, 2), (2 * c, 3, 2), (4 * c, 3, 2), (4 * c, 3, 2), (8 * c, 2, 2), (8 * c, 2, 2)]
    layers: list[ConvLayer] = [(c, 10, 5)]
    for ch, k, s in stages:
        layers.append((ch, k, s))
        layers.extend([(ch, 1, 1)] * extra_1x1)
    return tuple(layers)


@dataclass(frozen=True)
class FrontendSpec:
    """The front end: raw waveform convs (``wfe_c``, ``wfe_o``) or log-mel frames stacked to 20 ms.

    Args:
        kind: ``wfe_c`` (SEW's compact CNN), ``wfe_o`` (wav2vec 2.0's CNN) or ``mel_stack``.
        conv_layers: per-layer ``(channels, kernel, stride)`` of a waveform front end (empty for ``mel_stack``).
            Pruning shrinks the channels per layer.
        conv_norm: ``group_norm`` (fairseq ``extractor_mode=default``) or ``layer_norm``.
        conv_bias: bias in the front-end convs (fairseq ``conv_bias``).
        n_mels: mel bins of ``mel_stack`` (its input channels).
        mel_stack: 10 ms frames stacked per 20 ms frame.
    """

    kind: FrontendKind = "mel_stack"
    conv_layers: tuple[ConvLayer, ...] = ()
    conv_norm: Literal["group_norm", "layer_norm"] = "group_norm"
    conv_bias: bool = False
    n_mels: int = 80
    mel_stack: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_layers", tuple(tuple(int(v) for v in layer) for layer in self.conv_layers))
        if self.kind not in ("mel_stack", "wfe_c", "wfe_o"):
            raise UserError(f"expected frontend kind in ('mel_stack', 'wfe_c', 'wfe_o'), got {self.kind!r}")
        if self.kind == "mel_stack":
            if self.conv_layers:
                raise UserError("a mel_stack front end has no conv_layers")
            if self.n_mels < 1 or self.mel_stack < 1:
                raise UserError(f"expected n_mels >= 1 and mel_stack >= 1, got {self.n_mels}, {self.mel_stack}")
            return
        if not self.conv_layers:
            raise UserError(f"a {self.kind} front end needs conv_layers")
        for layer in self.conv_layers:
            if len(layer) != 3 or min(layer) < 1:
                raise UserError(f"expected conv layers [channels, kernel, stride] of positive ints, got {list(layer)}")
        if self.conv_norm not in ("group_norm", "layer_norm"):
            raise UserError(f"expected conv_norm 'group_norm' or 'layer_norm', got {self.conv_norm!r}")

    @property
    def feat_in(self) -> int:
        """Input channels: 1 for a waveform, ``n_mels`` for log-mel features."""
        return self.n_mels if self.kind == "mel_stack" else 1

    @property
    def out_dim(self) -> int:
        """Channels of the 20 ms frames the front end produces."""
        return self.n_mels * self.mel_stack if self.kind == "mel_stack" else self.conv_layers[-1][0]


@dataclass(frozen=True)
class CompressorSpec:
    """The squeeze before the blocks (SEW's pooling + strided positional conv, CIF for real rates).

    Args:
        squeeze: the trained squeeze factor (the active one comes from a profile).
        pos_conv_kernel, pos_conv_groups: the positional conv that also squeezes (SEW 31/16, W2V2 128/16).
        cif_alpha: learn content-dependent CIF weights for real rates (once-for-all ``AlphaModule``).
    """

    squeeze: int = 2
    pos_conv_kernel: int = 31
    pos_conv_groups: int = 16
    cif_alpha: bool = False

    def __post_init__(self) -> None:
        if int(self.squeeze) != self.squeeze or self.squeeze < 1:
            raise UserError(f"expected an integer trained squeeze >= 1, got {self.squeeze}")
        object.__setattr__(self, "squeeze", int(self.squeeze))
        if self.pos_conv_kernel < 1 or self.pos_conv_groups < 1:
            raise UserError(f"expected a positive pos-conv kernel and groups, got {self.pos_conv_kernel}, {self.pos_conv_groups}")


@dataclass(frozen=True)
class BlockSpec:
    """One encoder layer: a sequence of residual branches whose widths are given here.

    A transformer block is ``attention, FFN`` (``ffn_dims`` has one entry); a conformer block is
    ``FFN/2, attention, conv module, FFN/2, LayerNorm`` (two entries). A width of 0 removes that branch
    (pruning may remove whole branches), so ``heads=0`` is a block without attention.

    Args:
        kind: ``transformer`` (attention-only) or ``conformer``.
        heads: attention heads (0 = no attention branch).
        head_dim: width of one head; the attention's inner width is ``heads * head_dim``.
        ffn_dims: intermediate width of each FFN of the block (0 = absent).
        conv_channels: channels of the conformer conv module (0 = absent; transformer blocks have none).
        conv_kernel: depthwise kernel of the conformer conv module.
        window: local (banded) self-attention: each query attends to keys within ``window // 2`` frames of
            this layer's input on either side (``nemo_sew.nn.blocks.band_mask``); 0 = full attention. The
            mask does not skip compute (SDPA runs ``T x T``), so the cost model counts full attention.
    """

    kind: BlockKind = "transformer"
    heads: int = 4
    head_dim: int = 64
    ffn_dims: tuple[int, ...] = (1024,)
    conv_channels: int = 0
    conv_kernel: int = 31
    window: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ffn_dims", tuple(int(v) for v in self.ffn_dims))
        if self.kind not in BLOCK_KINDS:
            raise UserError(f"expected block kind in {sorted(BLOCK_KINDS)}, got {self.kind!r}")
        if len(self.ffn_dims) != BLOCK_KINDS[self.kind].ffns:
            raise UserError(
                f"a {self.kind} block has {BLOCK_KINDS[self.kind].ffns} FFN(s): expected ffn_dims with that many "
                f"entries, got {list(self.ffn_dims)}"
            )
        if self.heads < 0 or self.head_dim < 1 or min(self.ffn_dims) < 0 or self.conv_channels < 0:
            raise UserError(f"expected heads, ffn_dims, conv_channels >= 0 and head_dim >= 1, got {self}")
        if self.conv_channels and not BLOCK_KINDS[self.kind].conv_module:
            raise UserError(f"a {self.kind} block has no conv module: expected conv_channels=0")
        if self.conv_channels and self.conv_kernel % 2 == 0:
            raise UserError(f"expected an odd depthwise kernel, got {self.conv_kernel}")
        if self.window < 0:
            raise UserError(f"expected window >= 0 (0 = full attention), got {self.window}")

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim


@dataclass(frozen=True)
class EncoderArch:
    """Every shape of a :class:`nemo_sew.SqueezeEncoder`; build one with :func:`build_arch`.

    Args:
        frontend: the front end (:class:`FrontendSpec`).
        d_model: the blocks' width ``C``.
        compressor: the squeeze (:class:`CompressorSpec`).
        expander: back to 20 ms after the blocks: ``sew`` (SEW's ``Linear(C, s*C)``, the trained factor only),
            ``phase`` (factor-agnostic, for stochastic / real-rate models) or ``none`` (output at the squeezed
            rate, wav2vec 2.0).
        blocks: one :class:`BlockSpec` per layer; neighbours may differ in every field.
        layer_norm_first: pre-LN (True) or post-LN (False: SEW, wav2vec 2.0 base) transformer blocks
            (conformer blocks are always pre-LN).
        feature_layer_norm: LayerNorm on the front-end features before the projection.
        feature_projection: linear map to ``d_model``; None = only when the widths differ (SEW), True = always.
        layer_norm_eps: eps of every LayerNorm in the blocks and the projection.
    """

    frontend: FrontendSpec = field(default_factory=FrontendSpec)
    d_model: int = 256
    compressor: CompressorSpec = field(default_factory=CompressorSpec)
    expander: ExpanderKind = "sew"
    blocks: tuple[BlockSpec, ...] = ()
    layer_norm_first: bool = False
    feature_layer_norm: bool = True
    feature_projection: bool | None = None
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.d_model < 1:
            raise UserError(f"expected d_model >= 1, got {self.d_model}")
        if self.expander not in ("sew", "phase", "none"):
            raise UserError(f"expected expander 'sew', 'phase' or 'none', got {self.expander!r}")
        if self.d_model % self.compressor.pos_conv_groups:
            raise UserError(
                f"expected d_model divisible by the pos-conv groups, got {self.d_model} and {self.compressor.pos_conv_groups}"
            )
        if self.feature_projection is False and self.frontend.out_dim != self.d_model:
            raise UserError(
                f"feature_projection=False needs front-end channels == d_model, got {self.frontend.out_dim} and {self.d_model}"
            )

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        """Plain types (lists, not tuples), for YAML and OmegaConf."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EncoderArch":
        data = checked_fields(cls, data, "encoder arch")
        frontend = FrontendSpec(**checked_fields(FrontendSpec, data.pop("frontend", {}) or {}, "frontend"))
        compressor = CompressorSpec(**checked_fields(CompressorSpec, data.pop("compressor", {}) or {}, "compressor"))
        blocks = tuple(BlockSpec(**checked_fields(BlockSpec, b, "block")) for b in data.pop("blocks", ()) or ())
        return cls(frontend=frontend, compressor=compressor, blocks=blocks, **data)

    def replace(self, **changes: Any) -> "EncoderArch":
        return dataclasses.replace(self, **changes)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def checked_fields(cls: type, data: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    """``data`` as a dict, after checking that every key is a field of dataclass ``cls`` (a clear error names the
    unknown ones and the known ones)."""
    data = dict(data or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"unknown {what} fields {unknown}; expected a subset of {sorted(known)}")
    return data


# --------------------------------------------------------------------------------------------------
# presets: values, written once


def _blocks(n: int, kind: BlockKind, dim: int, heads: int | None = None, conv_kernel: int = 31) -> tuple[BlockSpec, ...]:
    heads = max(dim // 64, 1) if heads is None else heads
    spec = BlockSpec(
        kind=kind, heads=heads, head_dim=64, ffn_dims=(4 * dim,) * BLOCK_KINDS[kind].ffns,
        conv_channels=dim if BLOCK_KINDS[kind].conv_module else 0, conv_kernel=conv_kernel,
    )  # fmt: skip
    return (spec,) * n


def _sew(layers: int, dim: int, wfe_c: int = 64, heads: int | None = None, kind: BlockKind = "transformer") -> EncoderArch:
    # SEW (scripts/pt-sew.sh): C = 64*wf, heads = wf, FFN = 4C, pos-conv 31/16, s = 2, WFE-C c64 L1, post-LN
    return EncoderArch(
        frontend=FrontendSpec("wfe_c", wfe_c_layers(wfe_c, 1), "group_norm", conv_bias=False),
        d_model=dim, compressor=CompressorSpec(2, 31, 16), expander="sew",
        blocks=_blocks(layers, kind, dim, heads), layer_norm_first=False,
    )  # fmt: skip


def _w2v2(layers: int, dim: int, large: bool, conv_layers: tuple[ConvLayer, ...] | None = None) -> EncoderArch:
    # wav2vec 2.0: WFE-O, pos-conv 128/16, no squeeze and no upsampler; large = pre-LN + layer_norm extractor
    return EncoderArch(
        frontend=FrontendSpec("wfe_o", conv_layers or wfe_o_layers(), "layer_norm" if large else "group_norm", large),
        d_model=dim, compressor=CompressorSpec(1, 128, 16), expander="none",
        blocks=_blocks(layers, "transformer", dim), layer_norm_first=large,
    )  # fmt: skip


def _tiny_mel(layers: int, dim: int, kind: BlockKind = "transformer") -> EncoderArch:
    # CPU-sized: log-mel (80 bins, 10 ms) stacked to 20 ms, squeeze 2 -> 40 ms, upsampled back to 20 ms
    return EncoderArch(
        frontend=FrontendSpec("mel_stack", n_mels=80, mel_stack=2), d_model=dim,
        compressor=CompressorSpec(2, 31, 16), expander="sew", blocks=_blocks(layers, kind, dim), layer_norm_first=True,
    )  # fmt: skip


def _quant_study(layers: int, dim: int, heads: int, kind: BlockKind, window: int = 0) -> EncoderArch:
    # issue 13 (arXiv 2311.02772): attention-only "Sparseformer" (local-window attention, deep-narrow or
    # shallow-wide) vs a conformer at matched parameters (+-10%) and MACs (+-15%, nemo_sew.cost; tests/test_arch.py)
    arch = _tiny_mel(layers, dim, kind)
    return build_arch(arch, blocks={"heads": heads, "head_dim": dim // heads, "window": window})


PRESETS: dict[str, EncoderArch] = {
    "sew_tiny": _sew(12, 512),
    "sew_small": _sew(12, 768),
    "sew_mid": _sew(24, 768),
    "w2v2_base": _w2v2(12, 768, large=False),
    "w2v2_large": _w2v2(24, 1024, large=True),
    "conformer_sew_tiny": _sew(12, 512, kind="conformer"),
    "conformer_sew_small": _sew(12, 768, kind="conformer"),
    # small presets for CPU demos and tests
    "tiny_mel": _tiny_mel(6, 192),
    "tiny_mel_conformer": _tiny_mel(4, 192, kind="conformer"),
    "tiny_wfe_c": _sew(2, 128, wfe_c=16, heads=2),
    "tiny_wfe_o": _w2v2(2, 128, large=False, conv_layers=((64, 10, 5),) + ((64, 3, 2),) * 4 + ((64, 2, 2),) * 2),
    "tiny_conformer": _sew(2, 128, wfe_c=16, heads=2, kind="conformer"),
}
# the quantization study's three families (built after PRESETS: build_arch is defined below)
_QUANT_STUDY = {
    "study_conformer": (4, 192, 3, "conformer", 0),
    "study_attn_deep_narrow": (11, 160, 4, "transformer", 33),
    "study_attn_shallow_wide": (3, 304, 4, "transformer", 33),
}


# --------------------------------------------------------------------------------------------------
# the one factory


def _merge(base: Any, override: Any) -> Any:
    """Recursive override of plain dicts; lists and scalars replace."""
    if isinstance(base, dict) and isinstance(override, Mapping):
        out = dict(base)
        for k, v in override.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return override


def build_arch(
    preset: str | EncoderArch | Mapping[str, Any] | None = None,
    *,
    num_layers: int | None = None,
    blocks: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    **fields: Any,
) -> EncoderArch:
    """The one way to make an :class:`EncoderArch`: a preset (or a full arch) plus overrides.

    Args:
        preset: a name in :data:`PRESETS`, an ``EncoderArch``, or a full arch dict (``EncoderArch.to_dict``
            layout, e.g. from a ``.nemo``); None starts from ``EncoderArch()`` (which has no blocks).
        num_layers: keep the first ``num_layers`` blocks, or repeat the last one to reach it.
        blocks: a dict of ``BlockSpec`` fields applied to every layer (``{"kind": "conformer"}`` also sets
            the conformer defaults: two FFNs and a conv module of ``d_model`` channels, unless given), or a
            list with one dict per layer (applied after ``num_layers``).
        **fields: any other ``EncoderArch`` field; ``frontend`` and ``compressor`` take dicts of their fields,
            so ``build_arch("sew_tiny", compressor={"squeeze": 4})`` changes only the squeeze.

    A ``d_model`` override rescales what the preset derived from the width (heads = d/64, FFN = 4d, conv
    channels = d) in blocks that had exactly those values, so ``build_arch("sew_small", d_model=512)`` is
    ``sew_tiny``'s shape; explicit ``blocks`` overrides win.
    """
    if preset is None:
        base = EncoderArch()
    elif isinstance(preset, EncoderArch):
        base = preset
    elif isinstance(preset, str):
        if preset not in PRESETS:
            raise UserError(f"unknown encoder preset {preset!r}; expected one of {sorted(PRESETS)}")
        base = PRESETS[preset]
    else:
        base = EncoderArch.from_dict(preset)
    data = base.to_dict()
    unknown = sorted(set(fields) - set(data))
    if unknown:
        raise UserError(f"unknown encoder arch fields {unknown}; expected a subset of {sorted(data)} (or blocks, num_layers)")
    old_dim = base.d_model
    data = _merge(data, fields)
    block_list: list[dict[str, Any]] = data["blocks"]
    new_dim = int(data["d_model"])
    if new_dim != old_dim:
        for b in block_list:
            if b["heads"] == max(old_dim // 64, 1):
                b["heads"] = max(new_dim // 64, 1)
            b["ffn_dims"] = [4 * new_dim if f == 4 * old_dim else f for f in b["ffn_dims"]]
            if b["conv_channels"] == old_dim:
                b["conv_channels"] = new_dim
    if num_layers is not None:
        if num_layers < 0:
            raise UserError(f"expected num_layers >= 0, got {num_layers}")
        if num_layers > len(block_list) and not block_list:
            raise UserError("num_layers can only repeat an existing block: give blocks too")
        block_list = (block_list + [block_list[-1]] * num_layers)[:num_layers] if block_list else []
    if isinstance(blocks, Mapping):
        block_list = [_block_override(b, blocks, new_dim) for b in block_list]
    elif blocks is not None:
        blocks = list(blocks)
        if len(blocks) != len(block_list):
            raise UserError(f"expected one block override per layer ({len(block_list)}), got {len(blocks)}")
        block_list = [_block_override(b, o, new_dim) for b, o in zip(block_list, blocks)]
    data["blocks"] = block_list
    return EncoderArch.from_dict(data)


def _block_override(block: dict[str, Any], override: Mapping[str, Any], d_model: int) -> dict[str, Any]:
    override = checked_fields(BlockSpec, override, "block")
    out = {**block, **override}
    kind = out["kind"]
    if kind != block["kind"]:  # a kind change: that kind's defaults for what the override does not give
        if "ffn_dims" not in override:
            width = max(block["ffn_dims"]) or 4 * d_model
            out["ffn_dims"] = [width] * BLOCK_KINDS[kind].ffns
        if "conv_channels" not in override:
            out["conv_channels"] = d_model if BLOCK_KINDS[kind].conv_module else 0
    return out


def resolve_arch(preset: str | None, arch: "EncoderArch | Mapping[str, Any] | None") -> EncoderArch:
    """The arch an encoder config names: ``preset`` plus ``arch`` overrides, or a full ``arch`` (an
    :class:`EncoderArch` or its dict) without a preset. What :class:`nemo_sew.SqueezeEncoder` builds and what
    the data guard reads before the encoder exists."""
    if preset is not None:
        if isinstance(arch, EncoderArch):
            raise UserError("give either a preset (with arch overrides) or a full EncoderArch, not both")
        return build_arch(preset, **dict(arch or {}))
    if arch is None:
        raise UserError("an encoder config needs a preset name or an arch")
    return arch if isinstance(arch, EncoderArch) else build_arch(arch)


PRESETS.update({name: _quant_study(*args) for name, args in _QUANT_STUDY.items()})
