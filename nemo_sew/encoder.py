"""SqueezeEncoder: the NeMo NeuralModule that composes the ``nemo_sew.nn`` parts.

Data flow (DESIGN.md): front end (20 ms) -> feature projection -> compressor (squeeze s) -> blocks
-> expander back to 20 ms. Inside, one layout ``(B, T, C)`` + lengths; NeMo's ``(B, D, T)`` is
converted here, in ``forward``, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any, Literal, Mapping, Sequence

import torch
from nemo.core.classes import Exportable, NeuralModule, typecheck
from nemo.core.neural_types import (
    AcousticEncodedRepresentation,
    AudioSignal,
    LengthsType,
    NeuralType,
    SpectrogramType,
)
import torch.nn.functional as F
from torch import nn

from nemo_sew.nn.blocks import ConformerLayer, TransformerLayer
from nemo_sew.nn.compress import PhaseExpander, SEWUpsampler, SqueezeCompressor, is_integer_rate
from nemo_sew.nn.pooling import pooled_lengths
from nemo_sew.nn.frontend import (
    ConvFeatureExtractor,
    FeatureProjection,
    MelStackFrontend,
    time_mask,
    wfe_c_layers,
    wfe_o_layers,
)
from nemo_sew.profile import CompressionProfile, ProfileLike, ProfileSampler, as_profile

FrontendKind = Literal["mel_stack", "wfe_c", "wfe_o"]
BlockKind = Literal["transformer", "conformer"]


def _per_layer(value: int | Sequence[int], num_layers: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * num_layers
    values = [int(v) for v in value]
    if len(values) != num_layers:
        raise ValueError(f"expected {name} to be an int or a list of {num_layers} ints, got {len(values)} values")
    return values


def _min_input_length(frontend: nn.Module, squeeze: int) -> int:
    stride = getattr(frontend, "stride", frontend.receptive_field)  # mel: stack frames per 20 ms frame
    return frontend.receptive_field + (int(squeeze) - 1) * stride


class SqueezeEncoder(NeuralModule, Exportable):
    """A SEW-style squeezed speech encoder with NeMo's encoder interface.

    ``forward(audio_signal (B, C, T), length (B,)) -> (encoded (B, D, T'), encoded_len (B,))``. For the
    waveform front ends ``C = 1`` and ``T`` is in samples (from :class:`nemo_sew.WaveformPreprocessor`);
    for ``mel_stack`` ``C = n_mels`` and ``T`` is in 10 ms frames (from NeMo's mel preprocessor).

    Args:
        frontend: ``wfe_c`` (SEW compact CNN), ``wfe_o`` (wav2vec 2.0 CNN) or ``mel_stack`` (log-mel,
            ``mel_stack`` frames stacked to 20 ms).
        feat_in: input channels: 1 for waveforms, the number of mel bins for ``mel_stack``.
        conv_layers: per-layer ``[channels, kernel, stride]`` of a waveform front end; default WFE-C
            (``wfe_c``, ``wfe_l``) or WFE-O.
        conv_norm: ``group_norm`` (fairseq ``extractor_mode=default``) or ``layer_norm``.
        conv_bias: bias in the front-end convs (fairseq ``conv_bias``).
        wfe_c, wfe_l: SEW's WFE-C width and number of extra 1x1 convs (used when ``conv_layers`` is None).
        mel_stack: 10 ms frames stacked per 20 ms frame.
        d_model: transformer width ``C`` (fairseq ``encoder_embed_dim``).
        num_layers: number of blocks.
        num_heads, ffn_dim: per-layer lists (or one int for all layers); head width is ``head_dim``.
        block: ``transformer`` (attention-only) or ``conformer``.
        layer_norm_first: pre-LN (True) or post-LN (False, SEW / wav2vec 2.0 base) transformer layers.
        conv_kernel: depthwise kernel of conformer conv modules.
        squeeze: trained squeeze factor ``s`` (SEW ``squeeze_factor``); the active one is set by a profile.
        pos_conv_kernel, pos_conv_groups: the positional conv that also squeezes (SEW 31/16, W2V2 128/16).
        upsample: SEW's upsampler back to 20 ms after the blocks (False: output at the squeezed rate).
        dropout, attention_dropout, activation_dropout: fairseq's dropouts in the blocks.
        feature_dropout: dropout after the feature projection (fairseq ``dropout_input``).
        feature_layer_norm: LayerNorm on the front-end features before the projection (transformers HuBERT
            ``feat_proj_layer_norm``; on in wav2vec 2.0 and SEW).
        feature_projection: linear map from front-end channels to ``d_model``; None = only when the widths
            differ (SEW), True = always (wav2vec 2.0 / HuBERT ``feature_projection``).
        layerdrop: probability of skipping a whole block while training (fairseq ``encoder_layerdrop``).
        layer_norm_eps: eps of every LayerNorm.
        expander: ``sew`` (SEW's ``Linear(C, s*C)``, one factor only) or ``phase`` (factor-agnostic
            :class:`~nemo_sew.nn.compress.PhaseExpander`); default ``sew`` for fixed-squeeze encoders and
            ``phase`` when a sampler, CIF weights or a learned rate make the factor vary.
        squeeze_sampler: training-time profile sampler (:class:`nemo_sew.profile.ProfileSampler` fields),
            e.g. ``{"squeeze": {"values": [1, 2, 3, 4]}}`` or ``{"squeeze": {"low": 1, "high": 4}}``; a bare
            ``{"values": ...}`` / ``{"low": ..., "high": ...}`` is taken as the squeeze spec.
        cif_alpha: learn content-dependent CIF weights for real rates (once-for-all ``AlphaModule``).
        cif_lambda: OFA's lambda at inference when ``cif_alpha`` (0 = uniform weights, 1 = learned only).
        learned_rate: learn the squeeze as a parameter (no grid search), e.g. ``{"init": 2.0, "min": 1.0,
            "max": 6.0, "target": 3.0, "penalty": 1.0}``: the downstream loss plus
            ``penalty * relu(target / s - 1)^2`` (more compute than the target's costs).
        mask_emb: keep a learned mask embedding (``d_model``) for masked frames: created by self-supervised
            pre-training (:class:`nemo_sew.models.ssl.SqueezeSSLModel`) and reused by fine-tuning's time
            masking (wav2vec 2.0's ``mask_emb``, transformers' ``masked_spec_embed``).
        masking: fine-tuning-time masking of the 20 ms features (SEW / wav2vec 2.0 fine-tuning): ``{"time_prob":
            0.65, "time_length": 10, "channel_prob": 0.5, "channel_length": 64}``; time spans are replaced by
            ``mask_emb`` (needs ``mask_emb=True``), channel spans are zeroed. Training only.
    """

    def __init__(
        self,
        frontend: FrontendKind = "mel_stack",
        feat_in: int = 80,
        conv_layers: Sequence[Sequence[int]] | None = None,
        conv_norm: Literal["group_norm", "layer_norm"] = "group_norm",
        conv_bias: bool = False,
        wfe_c: int = 64,
        wfe_l: int = 1,
        mel_stack: int = 2,
        d_model: int = 256,
        num_layers: int = 4,
        num_heads: int | Sequence[int] = 4,
        head_dim: int = 64,
        ffn_dim: int | Sequence[int] = 1024,
        block: BlockKind = "transformer",
        layer_norm_first: bool = False,
        conv_kernel: int = 31,
        squeeze: int = 2,
        pos_conv_kernel: int = 31,
        pos_conv_groups: int = 16,
        upsample: bool = True,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        feature_dropout: float = 0.0,
        layerdrop: float = 0.0,
        layer_norm_eps: float = 1e-5,
        feature_layer_norm: bool = True,
        feature_projection: bool | None = None,
        expander: Literal["sew", "phase"] | None = None,
        squeeze_sampler: Mapping[str, Any] | None = None,
        cif_alpha: bool = False,
        cif_lambda: float = 1.0,
        learned_rate: Mapping[str, float] | None = None,
        mask_emb: bool = False,
        masking: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        if frontend == "mel_stack":
            self.frontend: nn.Module = MelStackFrontend(n_mels=feat_in, stack=mel_stack)
        elif frontend in ("wfe_c", "wfe_o"):
            if feat_in != 1:
                raise ValueError(f"expected feat_in=1 for waveform front end {frontend!r}, got {feat_in}")
            if conv_layers is None:
                conv_layers = wfe_c_layers(wfe_c, wfe_l) if frontend == "wfe_c" else wfe_o_layers()
            self.frontend = ConvFeatureExtractor(conv_layers, norm=conv_norm, conv_bias=conv_bias)
        else:
            raise ValueError(f"expected frontend in ('mel_stack', 'wfe_c', 'wfe_o'), got {frontend!r}")
        if block not in ("transformer", "conformer"):
            raise ValueError(f"expected block 'transformer' or 'conformer', got {block!r}")
        if int(squeeze) != squeeze or squeeze < 1:
            raise ValueError(f"expected an integer trained squeeze >= 1, got {squeeze}")
        self.frontend_kind = frontend
        self._feat_in = feat_in
        self._feat_out = d_model
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop

        self.projection = FeatureProjection(
            self.frontend.out_dim, d_model, feature_dropout, layer_norm_eps, feature_layer_norm, feature_projection
        )
        self.compressor = SqueezeCompressor(d_model, pos_conv_kernel, pos_conv_groups, int(squeeze), cif_alpha)
        if squeeze_sampler is not None and not ({"squeeze", "q_pool", "kv_pool", "cif_lambda", "seed"} & set(squeeze_sampler)):
            squeeze_sampler = {"squeeze": dict(squeeze_sampler)}  # a bare squeeze spec
        self.sampler = ProfileSampler(**squeeze_sampler) if squeeze_sampler is not None else None
        self.cif_lambda = float(cif_lambda)
        self.learned_rate = dict(learned_rate) if learned_rate is not None else None
        if self.learned_rate is not None:
            lo, hi = float(self.learned_rate.get("min", 1.0)), float(self.learned_rate.get("max", 8.0))
            init = float(self.learned_rate.get("init", squeeze))
            if not lo <= init <= hi and lo >= 1.0:
                raise ValueError(f"expected 1 <= min <= init <= max for learned_rate, got {self.learned_rate}")
            # squeeze = lo + (hi - lo) * sigmoid(theta)
            frac = min(max((init - lo) / max(hi - lo, 1e-6), 1e-4), 1 - 1e-4)
            self.rate_logit = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        variable = self.sampler is not None or cif_alpha or self.learned_rate is not None
        if expander is None:
            expander = "phase" if variable else "sew"
        if expander not in ("sew", "phase"):
            raise ValueError(f"expected expander 'sew' or 'phase', got {expander!r}")
        self.norm = nn.LayerNorm(d_model, eps=layer_norm_eps)  # post-LN: before the blocks; pre-LN: after
        self.dropout = nn.Dropout(dropout)
        heads = _per_layer(num_heads, num_layers, "num_heads")
        ffns = _per_layer(ffn_dim, num_layers, "ffn_dim")
        common = dict(
            head_dim=head_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation_dropout=activation_dropout,
            layer_norm_eps=layer_norm_eps,
        )
        if block == "transformer":
            layers = [TransformerLayer(d_model, h, f, layer_norm_first=layer_norm_first, **common) for h, f in zip(heads, ffns)]
        else:
            layers = [ConformerLayer(d_model, h, f, conv_kernel=conv_kernel, **common) for h, f in zip(heads, ffns)]
        self.layers = nn.ModuleList(layers)
        if not upsample:
            self.expander: nn.Module | None = None
        elif expander == "sew":
            self.expander = SEWUpsampler(d_model, int(squeeze))
        else:
            self.expander = PhaseExpander(d_model)
        self.mask_emb = nn.Parameter(torch.empty(d_model).uniform_()) if mask_emb else None  # fairseq init
        self.masking = {k: float(v) for k, v in (masking or {}).items()}
        unknown = set(self.masking) - {"time_prob", "time_length", "channel_prob", "channel_length", "min_masks"}
        if unknown:
            raise ValueError(f"unknown masking options {sorted(unknown)}")
        if self.masking.get("time_prob", 0.0) > 0 and self.mask_emb is None:
            raise ValueError("time masking replaces frames by the mask embedding: set mask_emb=True")
        self.sampler_step: int | None = None  # set by the model to the trainer's global step
        self._train_forwards = 0
        self.last_rate_penalty: torch.Tensor | None = None
        self._profile = CompressionProfile()  # squeeze None = the trained (or learned) factor

    # ----------------------------------------------------------------------------------------------
    # profile

    @property
    def profile(self) -> CompressionProfile:
        return self._profile

    @property
    def learned_squeeze(self) -> torch.Tensor | None:
        """The learned squeeze as a differentiable scalar (learned-rate mode), else None."""
        if self.learned_rate is None:
            return None
        lo, hi = float(self.learned_rate.get("min", 1.0)), float(self.learned_rate.get("max", 8.0))
        return lo + (hi - lo) * torch.sigmoid(self.rate_logit)

    @property
    def squeeze(self) -> float:
        """The active squeeze factor (int-valued for SEW's integer path)."""
        if self._profile.squeeze is not None:
            s = float(self._profile.squeeze)
        elif self.learned_rate is not None:
            s = float(self.learned_squeeze.detach())
        else:
            s = float(self.compressor.factor)
        return int(s) if s == int(s) else s

    @property
    def fixed_factor(self) -> bool:
        """True when only the trained factor can run (SEW's factor-specific upsampler)."""
        return isinstance(self.expander, SEWUpsampler)

    def supported_squeeze(self) -> str:
        if self.fixed_factor:
            return f"only {self.compressor.factor} (SEW's upsampler expands by exactly that factor)"
        return "any real factor >= 1 (integers through SEW's squeeze, others through CIF)"

    def set_profile(self, profile: ProfileLike) -> CompressionProfile:
        """Make ``profile`` the active one; fields this encoder cannot act on raise a clear error."""
        p = as_profile(profile)
        squeeze = p.squeeze
        if squeeze is not None and self.fixed_factor and float(squeeze) != self.compressor.factor:
            kind = "an integer" if float(squeeze) == int(squeeze) else "a fractional rate"
            raise ValueError(
                f"this encoder cannot run at squeeze {squeeze} ({kind}): it was built with a fixed squeeze of "
                f"{self.compressor.factor}; supported: {self.supported_squeeze()}. Train with a squeeze_sampler "
                f"(factor-agnostic expander) to run other factors"
            )
        n = len(self.layers)
        for name in ("q_pool", "kv_pool"):
            strides = getattr(p, name)
            if strides is None:
                continue
            if len(strides) != n or min(strides) < 1:
                raise ValueError(f"expected {name} to list {n} strides >= 1 (one per layer), got {list(strides)}")
            if name == "q_pool" and self.fixed_factor and max(strides) > 1:
                raise ValueError("query pooling changes the output rate; SEW's fixed upsampler cannot expand it")
        unsupported = {name: getattr(p, name) for name in ("depth_threshold", "arch") if getattr(p, name) is not None}
        if p.weight_bits != 16:
            unsupported["weight_bits"] = p.weight_bits
        if unsupported:
            raise NotImplementedError(
                f"this encoder cannot act on profile fields {unsupported} yet; it acts on squeeze, q_pool and kv_pool"
            )
        self._profile = dataclasses.replace(p, squeeze=None if squeeze is None else float(squeeze))
        return self._profile

    def _training_draw(self) -> tuple[CompressionProfile, float]:
        """The profile for this training step: drawn from the sampler (same on every DDP rank)."""
        step = self.sampler_step if self.sampler_step is not None else self._train_forwards
        self._train_forwards += 1
        drawn, lam = self.sampler.sample(step)
        if drawn.squeeze is None:
            drawn = dataclasses.replace(drawn, squeeze=self._profile.squeeze)
        return drawn, lam

    # ----------------------------------------------------------------------------------------------
    # lengths

    def frame_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """20 ms front-end frames for input lengths (samples or 10 ms frames)."""
        return self.frontend.output_lengths(length)

    def output_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """Encoder output frames for input lengths at the active profile (inference)."""
        frames = self.frame_lengths(length)
        if self.expander is not None:
            return frames
        lengths = SqueezeCompressor.output_lengths(frames, self.squeeze, keep_tail=True)
        for stride in self._profile.q_pool or ():
            lengths = pooled_lengths(lengths, stride)
        return lengths

    def min_input_length(self) -> int:
        """Shortest input (samples or 10 ms frames) that gives at least one squeezed frame."""
        return _min_input_length(self.frontend, math.ceil(self.squeeze))

    @staticmethod
    def min_input_length_for(
        squeeze: int,
        frontend: FrontendKind = "mel_stack",
        feat_in: int = 80,
        conv_layers: Sequence[Sequence[int]] | None = None,
        wfe_c: int = 64,
        wfe_l: int = 1,
        mel_stack: int = 2,
        **_: object,
    ) -> int:
        """:meth:`min_input_length` from constructor arguments, without building the model."""
        if frontend == "mel_stack":
            return _min_input_length(MelStackFrontend(feat_in, mel_stack), squeeze)
        if conv_layers is None:
            conv_layers = wfe_c_layers(wfe_c, wfe_l) if frontend == "wfe_c" else wfe_o_layers()
        strides = [int(layer[2]) for layer in conv_layers]
        kernels = [int(layer[1]) for layer in conv_layers]
        rf, stride = 1, 1
        for k, s in zip(reversed(kernels), reversed(strides)):
            rf = (rf - 1) * s + k
        for s in strides:
            stride *= s
        return rf + (int(squeeze) - 1) * stride

    # ----------------------------------------------------------------------------------------------
    # NeMo ports

    @property
    def input_types(self) -> OrderedDict:
        if self.frontend_kind == "mel_stack":
            signal = NeuralType(("B", "D", "T"), SpectrogramType())
        else:
            signal = NeuralType(("B", "C", "T"), AudioSignal())
        return OrderedDict(audio_signal=signal, length=NeuralType(tuple("B"), LengthsType()))

    @property
    def output_types(self) -> OrderedDict:
        return OrderedDict(
            outputs=NeuralType(("B", "D", "T"), AcousticEncodedRepresentation()),
            encoded_lengths=NeuralType(tuple("B"), LengthsType()),
        )

    def input_example(self, max_batch: int = 2, max_dim: int = 32000) -> tuple[torch.Tensor, torch.Tensor]:
        """Example inputs for export: ``max_dim`` samples (waveform) or 10 ms frames (mel)."""
        param = next(self.parameters())
        length = max_dim if self.frontend_kind != "mel_stack" else max(max_dim // 160, self.min_input_length())
        signal = torch.randn(max_batch, self._feat_in, length, device=param.device, dtype=param.dtype)
        lengths = torch.full((max_batch,), length, dtype=torch.int64, device=param.device)
        lengths[1:] = torch.randint(self.min_input_length(), length + 1, (max_batch - 1,))
        return signal, lengths

    def _check_inputs(self, audio_signal: torch.Tensor, length: torch.Tensor) -> None:
        if audio_signal.dim() != 3 or audio_signal.shape[1] != self._feat_in:
            raise ValueError(
                f"expected audio_signal of shape (B, {self._feat_in}, T), got {tuple(audio_signal.shape)}"
            )
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return  # data-dependent checks cannot be traced
        if not bool(torch.isfinite(audio_signal).all()):
            bad = (~torch.isfinite(audio_signal)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(f"audio_signal contains NaN or inf values in batch items {bad}")
        need = self.min_input_length()
        short = (length < need).nonzero().flatten().tolist()
        if short:
            unit = "samples" if self.frontend_kind != "mel_stack" else "feature frames"
            raise ValueError(
                f"input too short for this encoder at squeeze {self.squeeze}: items {short} have lengths "
                f"{length[short].tolist()} {unit}; the front end's receptive field and the squeeze need at least {need}"
            )

    @typecheck()
    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(audio_signal, length)
        x, frames = self.features(audio_signal, length)  # (B, T, C_front) at 20 ms
        x = self.projection(x)  # (B, T, D)
        if self.training and self.masking:
            x = self.apply_masking(x, frames)
        y, lengths = self.encode(x, frames)
        return y.transpose(1, 2), lengths  # (B, D, T_out): the only conversion to NeMo's layout

    def features(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end features ``(B, T, C_front)`` at 20 ms and their lengths (before the projection)."""
        if self.frontend_kind == "mel_stack":
            return self.frontend(audio_signal, length)  # (B, T, stack*n_mels)
        return self.frontend(audio_signal[:, 0, :], length)  # (B, T, C_conv)

    def apply_masking(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Fine-tuning masking of projected features ``(B, T, D)``: time spans -> ``mask_emb``, channel spans -> 0."""
        from nemo_sew.ssl.masking import channel_mask, span_mask

        m = self.masking
        if m.get("time_prob", 0.0) > 0:
            spans = span_mask(lengths, x.shape[1], m["time_prob"], int(m.get("time_length", 10)), int(m.get("min_masks", 2)))
            x = torch.where(spans[..., None], self.mask_emb.to(x.dtype), x)
        if m.get("channel_prob", 0.0) > 0:
            channels = channel_mask(x.shape[0], x.shape[2], m["channel_prob"], int(m.get("channel_length", 64)), device=x.device)
            x = x.masked_fill(channels[:, None, :], 0.0)
        return x

    def encode(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        after_squeeze: Any = None,
        num_layers: int | None = None,
        expand: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The context network on 20 ms features ``(B, T, D)``: squeeze, blocks (with pooling), expand.

        Args:
            after_squeeze: ``fn(h, h_len, factor, lam) -> h`` applied to the squeezed sequence before the
                blocks, with the squeeze factor and CIF mixing weight drawn for this call (the once-for-all
                pre-training masks there and compresses its targets at the same rate).
            num_layers: run only the first ``num_layers`` blocks (HuBERT's targets from an inner layer).
            expand: False returns the squeezed (and pooled) sequence without the expander.
        """
        if self.training and self.sampler is not None:
            profile, lam = self._training_draw()
        else:
            profile, lam = self._profile, self.cif_lambda
        factor: float | torch.Tensor = self.squeeze if profile.squeeze is None else float(profile.squeeze)
        if self.learned_rate is not None and profile.squeeze is None:
            factor = self.learned_squeeze if self.training else float(self.learned_squeeze.detach())
            if self.training:
                self.last_rate_penalty = self._rate_penalty(factor)
        if not isinstance(factor, torch.Tensor) and factor == int(factor):
            factor = int(factor)
        t_in = x.shape[1]
        h, h_len, frame_map = self.compressor(x, lengths, factor, lam=lam, keep_tail=not self.training)  # (B, T', D)
        if after_squeeze is not None:
            h = after_squeeze(h, h_len, factor, lam)
        if not self.layer_norm_first:
            h = self.norm(h)
        h = self.dropout(h)
        q_pool = profile.q_pool or (1,) * len(self.layers)
        kv_pool = profile.kv_pool or (1,) * len(self.layers)
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        for layer, q_stride, kv_stride in zip(layers, q_pool, kv_pool):
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop and q_stride == 1:
                continue
            h, h_len = layer(h, h_len, q_stride, kv_stride)
            frame_map = frame_map.pooled(q_stride, h_len)
        if self.layer_norm_first and num_layers is None:
            h = self.norm(h)
        if self.expander is None or not expand:
            return h.masked_fill(~time_mask(h_len, h.shape[1])[..., None], 0.0), h_len
        return self.expander(h, h_len, frame_map, lengths, t_in)  # (B, T, D) at 20 ms

    def _rate_penalty(self, squeeze: torch.Tensor) -> torch.Tensor:
        target = float(self.learned_rate.get("target", self.compressor.factor))
        weight = float(self.learned_rate.get("penalty", 1.0))
        return weight * F.relu(target / squeeze - 1.0) ** 2

    def learned_frame_period_ms(self, frame_ms: float = 20.0) -> float | None:
        """The learned frame period (learned-rate mode): ``frame_ms * squeeze``."""
        if self.learned_rate is None:
            return None
        return frame_ms * float(self.learned_squeeze.detach())
