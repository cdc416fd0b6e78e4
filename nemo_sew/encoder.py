"""SqueezeEncoder: the NeMo NeuralModule that composes the ``nemo_sew.nn`` parts.

Data flow (DESIGN.md): front end (20 ms) -> feature projection -> compressor (squeeze s) -> blocks
-> expander back to 20 ms. Inside, one layout ``(B, T, C)`` + lengths; NeMo's ``(B, D, T)`` is
converted here, in ``forward``, and nowhere else.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal, Sequence

import torch
from nemo.core.classes import Exportable, NeuralModule, typecheck
from nemo.core.neural_types import (
    AcousticEncodedRepresentation,
    AudioSignal,
    LengthsType,
    NeuralType,
    SpectrogramType,
)
from torch import nn

from nemo_sew.nn.blocks import ConformerLayer, TransformerLayer
from nemo_sew.nn.compress import SEWUpsampler, SqueezeCompressor
from nemo_sew.nn.frontend import (
    ConvFeatureExtractor,
    FeatureProjection,
    MelStackFrontend,
    time_mask,
    wfe_c_layers,
    wfe_o_layers,
)
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile

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
        layerdrop: probability of skipping a whole block while training (fairseq ``encoder_layerdrop``).
        layer_norm_eps: eps of every LayerNorm.
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

        self.projection = FeatureProjection(self.frontend.out_dim, d_model, feature_dropout, layer_norm_eps)
        self.compressor = SqueezeCompressor(d_model, pos_conv_kernel, pos_conv_groups, int(squeeze))
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
        self.expander = SEWUpsampler(d_model, int(squeeze)) if upsample else None
        self._profile = CompressionProfile(squeeze=float(squeeze))

    # ----------------------------------------------------------------------------------------------
    # profile

    @property
    def profile(self) -> CompressionProfile:
        return self._profile

    @property
    def squeeze(self) -> int:
        """The active integer squeeze factor."""
        return int(self._profile.squeeze)

    def supported_squeeze(self) -> list[int]:
        """Squeeze factors this encoder can run: the trained one, since SEW's upsampler is factor-specific."""
        return [self.compressor.factor]

    def set_profile(self, profile: ProfileLike) -> CompressionProfile:
        """Make ``profile`` the active one; fields this encoder cannot act on raise a clear error."""
        p = as_profile(profile)
        squeeze = float(self.compressor.factor if p.squeeze is None else p.squeeze)
        if squeeze != int(squeeze):
            raise ValueError(
                f"squeeze {squeeze} is not an integer; fractional rates need a CIF compressor, this encoder has "
                f"SEW's integer squeeze (supported: {self.supported_squeeze()})"
            )
        if int(squeeze) not in self.supported_squeeze():
            raise ValueError(
                f"this encoder cannot run at squeeze {int(squeeze)}: it was built with a fixed squeeze of "
                f"{self.compressor.factor} and SEW's upsampler expands by exactly that factor "
                f"(supported: {self.supported_squeeze()})"
            )
        unsupported = {
            name: getattr(p, name)
            for name in ("q_pool", "kv_pool", "depth_threshold", "arch")
            if getattr(p, name) is not None
        }
        if p.weight_bits != 16:
            unsupported["weight_bits"] = p.weight_bits
        if unsupported:
            raise NotImplementedError(f"this encoder cannot act on profile fields {unsupported}; only squeeze is supported")
        self._profile = CompressionProfile(squeeze=squeeze, name=p.name)
        return self._profile

    # ----------------------------------------------------------------------------------------------
    # lengths

    def frame_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """20 ms front-end frames for input lengths (samples or 10 ms frames)."""
        return self.frontend.output_lengths(length)

    def output_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """Encoder output frames for input lengths."""
        frames = self.frame_lengths(length)
        if self.expander is not None:
            return frames
        return SqueezeCompressor.output_lengths(frames, self.squeeze)

    def min_input_length(self) -> int:
        """Shortest input (samples or 10 ms frames) that gives at least one squeezed frame."""
        return _min_input_length(self.frontend, self.squeeze)

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
        if self.frontend_kind == "mel_stack":
            x, frames = self.frontend(audio_signal, length)  # (B, T, stack*n_mels) at 20 ms
        else:
            x, frames = self.frontend(audio_signal[:, 0, :], length)  # (B, T, C_conv) at 20 ms
        x = self.projection(x)  # (B, T, D)
        y, lengths = self.encode(x, frames)
        return y.transpose(1, 2), lengths  # (B, D, T_out): the only conversion to NeMo's layout

    def encode(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The context network on 20 ms features ``(B, T, D)``: squeeze, blocks, expand."""
        t_in = x.shape[1]
        h, h_len = self.compressor(x, lengths, self.squeeze)  # (B, T', D)
        if not self.layer_norm_first:
            h = self.norm(h)
        h = self.dropout(h)
        mask = time_mask(h_len, h.shape[1])  # (B, T') True = valid
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            h = layer(h, mask)
        if self.layer_norm_first:
            h = self.norm(h)
        if self.expander is None:
            return h.masked_fill(~mask[..., None], 0.0), h_len
        return self.expander(h, h_len, lengths, t_in)  # (B, T, D) at 20 ms
