"""Front ends: waveform or log-mel in, 20 ms frames out, lengths computed here.

Layout everywhere in ``nemo_sew.nn``: ``(batch, time, channels)`` plus a lengths tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.arch import ConvLayer, FrontendSpec, wfe_c_layers, wfe_o_layers  # noqa: F401 (re-exported)
from nemo_sew.nn.linear import Linear
from nemo_sew.nn.ort_ops import contrib_ops_active
from nemo_sew.nn.units import FrontendPlan, FrontendUnits, UnitSlice, layer_norm_over, scale_channels


@dataclass(frozen=True)
class FrontendLayout:
    """What a front end takes in, in which units, and how much of it one output frame needs.

    Args:
        port: ``waveform`` (``(B, 1, samples)`` from :class:`nemo_sew.WaveformPreprocessor`) or ``spectrogram``
            (``(B, n_mels, 10 ms frames)`` from NeMo's mel preprocessor).
        feat_in: input channels (1 or ``n_mels``).
        unit: the input length unit, for messages (``samples`` or ``feature frames``).
        receptive_field: input units one 20 ms output frame needs.
        stride: input units per 20 ms output frame.
    """

    port: Literal["waveform", "spectrogram"]
    feat_in: int
    unit: str
    receptive_field: int
    stride: int

    def min_input_length(self, squeeze: float = 1) -> int:
        """Shortest input (in :attr:`unit`) that gives at least one frame after squeezing by ``squeeze``."""
        return self.receptive_field + (math.ceil(float(squeeze)) - 1) * self.stride

    def units_per_second(self, sample_rate: int = 16000, hop_seconds: float = 0.01) -> float:
        """Input units per second of audio: the sample rate, or feature frames per second (``1 / hop``)."""
        return float(sample_rate) if self.port == "waveform" else 1.0 / float(hop_seconds)

    def seconds(self, length: float, sample_rate: int = 16000, hop_seconds: float = 0.01) -> float:
        return float(length) / self.units_per_second(sample_rate, hop_seconds)

    def length(self, seconds: float, sample_rate: int = 16000, hop_seconds: float = 0.01) -> int:
        """Input length (in :attr:`unit`) of ``seconds`` of audio."""
        return int(round(float(seconds) * self.units_per_second(sample_rate, hop_seconds)))


def frontend_layout(spec: FrontendSpec) -> FrontendLayout:
    """The :class:`FrontendLayout` of a front-end spec, without building it."""
    if spec.kind == "mel_stack":
        return FrontendLayout("spectrogram", spec.n_mels, "feature frames", spec.mel_stack, spec.mel_stack)
    rf, stride = 1, 1
    for _, k, s in reversed(spec.conv_layers):
        rf = (rf - 1) * s + k
    for _, _, s in spec.conv_layers:
        stride *= s
    return FrontendLayout("waveform", 1, "samples", rf, stride)


def build_frontend(spec: FrontendSpec) -> "ConvFeatureExtractor | MelStackFrontend":
    """The front-end module of a spec; the one place that turns a front-end kind into a module."""
    if spec.kind == "mel_stack":
        return MelStackFrontend(spec.n_mels, spec.mel_stack)
    return ConvFeatureExtractor(spec.conv_layers, norm=spec.conv_norm, conv_bias=spec.conv_bias)


def conv_out_lengths(lengths: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Valid-convolution length rule ``floor((L - k) / s) + 1``, clamped at 0 (torchaudio's rule)."""
    return torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)


def time_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(B, T)`` bool mask, True on valid frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def _tracing() -> bool:
    """True while ``torch.jit.trace`` / the TorchScript ONNX exporter records the graph.

    Data-dependent Python branches would be frozen into a traced graph, and in-place ops are best kept out
    of it, so traced code takes the general (masked, out-of-place) path.
    """
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _capturing() -> bool:
    """:func:`_tracing`, or ``torch.compile`` capturing a graph: value-dependent fast paths (a host
    synchronisation to pick a kernel, ``nonzero`` row gathers) then take the general path, which has neither."""
    return _tracing() or torch.compiler.is_compiling()


def can_overwrite(x: torch.Tensor) -> bool:
    """True when an op may write its result into ``x`` (a temporary the caller owns) instead of a new tensor.

    That is safe when autograd will not need ``x`` (no grad mode, inference mode, or ``x`` needs no grad) and
    no graph is being traced. On CPU it saves more than a pass: a fresh multi-hundred-MB result costs a page
    fault per 4 KiB page (glibc hands such allocations back to the OS when freed).
    """
    return not _tracing() and not (torch.is_grad_enabled() and x.requires_grad)


def gelu(x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Exact (erf) GELU, written into ``x`` when ``inplace`` (see :func:`can_overwrite`); same kernel either way."""
    return torch.ops.aten.gelu_(x) if inplace else F.gelu(x)


class MaskedInstanceNorm(nn.Module):
    """Per-channel normalisation over the valid frames only (GroupNorm with groups == channels).

    wav2vec 2.0's ``group_norm`` extractor mode normalises each channel over the whole time axis,
    so padding changes every frame's value. This computes the same statistics over the valid
    frames only; written by hand because torch has no masked GroupNorm. Without padding it equals
    ``nn.GroupNorm(C, C, eps, affine=True)`` and keeps its parameter names (``weight``, ``bias``).

    Two paths, equal up to fp32 rounding (``tests/test_frontend.py``):

    * no padding (every length == ``T``, eager): torch's fused ``F.group_norm``, one kernel;
    * padding (or while tracing, where the batch is unknown): :meth:`masked`, a two-pass mean / variance
      over the valid frames. Padded frames come out as ``bias`` (their centred value is zeroed); they are
      never read by the valid frames of the next (unpadded, valid) convolution, so nothing leaks.

    Statistics are fp32 whatever the input dtype; the output has the input's dtype.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: ``(B, C, T)``; lengths: ``(B,)`` valid frames per item -> ``(B, C, T)``."""
        if not _capturing() and bool((lengths >= x.shape[-1]).all()):
            return self.unpadded(x)
        return self.masked(x, lengths)

    def unpadded(self, x: torch.Tensor) -> torch.Tensor:
        """The norm when every frame is valid: torch's fused GroupNorm (statistics over the whole time axis)."""
        w, b = self.weight.float(), self.bias.float()
        return F.group_norm(x.float(), x.shape[1], w, b, self.eps).to(x.dtype)

    def masked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The norm with statistics over the first ``lengths[i]`` frames of item ``i`` (any padding).

        Written by hand because torch has no masked GroupNorm. Two-pass, so no ``E[x^2] - mean^2``
        cancellation: ``d = x`` with padding zeroed, ``mean = sum(d) / L``, ``d = d - mean`` with padding
        zeroed again, ``var = sum(d^2) / L``, ``y = d * scale + bias``. The sums are torch's cascade
        reductions (a matmul with the mask would save a pass but sums sequentially, ~50x less accurate at
        32k frames). Eager, the one fp32 temporary ``d`` is updated in place (the last step only when
        autograd does not need ``d``) and ``sum(d^2)`` is a vector norm, which needs no temporary.
        """
        valid = time_mask(lengths, x.shape[-1])[:, None, :]  # (B, 1, T)
        m = valid.to(torch.float32)
        count = lengths.clamp_min(1).to(torch.float32)[:, None, None]  # (B, 1, 1)
        if _tracing():
            # the exported graph: Mul by the mask and Mul + ReduceSum run faster in onnxruntime than Where
            # and ReduceL2, whose sum is also less accurate there (6e-5 vs 1e-5 off at 32k frames). Padding
            # must be finite here (inf * 0 = nan); the front end's convs see zeroed padded samples
            d = x.float() * m
            mean = d.sum(-1, keepdim=True) / count  # (B, C, 1)
            d = (d - mean) * m
            var = (d * d).sum(-1, keepdim=True) / count
        else:
            d = x.float().masked_fill(~valid, 0.0)  # a new fp32 tensor; any padding value, even inf, becomes 0
            mean = d.sum(-1, keepdim=True) / count  # (B, C, 1)
            d = d.sub_(mean).mul_(m)  # centred; padding (-mean, finite) back to 0
            var = torch.linalg.vector_norm(d, dim=-1, keepdim=True).square() / count
        scale = torch.rsqrt(var + self.eps) * self.weight.float()[None, :, None]
        bias = self.bias.float()[None, :, None]
        if can_overwrite(d) and not scale.requires_grad:
            y = d.mul_(scale).add_(bias)
        else:  # autograd needs d as it is
            y = d * scale + bias
        return y.to(x.dtype)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a ``(B, C, T)`` tensor (wav2vec 2.0 ``layer_norm`` extractor mode)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


CHANNELS_LAST = True
"""Run the waveform front end's convs channels-last on CPU in eager mode (see :class:`ConvBlock`).

False gives the channels-first path everywhere (the one traced graphs and CUDA use); the two agree within
fp32 rounding (``tests/test_channels_last.py``). A switch for tests and A/B timing, not a user setting."""


def _channels_last(x: torch.Tensor) -> bool:
    return CHANNELS_LAST and x.device.type == "cpu" and not _tracing()


class ConvBlock(nn.Module):
    """One conv of the wave feature extractor: Conv1d -> [norm] -> GELU (fairseq ``ConvFeatureExtractionModel``).

    Every form reads the same ``conv.weight`` (``(C_out, C_in, k)``, nn.Conv1d's), so checkpoints, pruning
    and quantization see one parameter. Input and output are ``(B, C, T)``; in which memory order depends
    on the path:

    * channels-first (traced graphs, CUDA, or :data:`CHANNELS_LAST` off): ``nn.Conv1d``; a 1x1 conv (kernel
      1, stride 1: WFE-C's extra layers) runs as a batched matmul (torch's CPU convolution takes up to ~2x
      longer than the GEMM for it).
    * channels-last (eager CPU, the default there): the tensors between blocks are ``(B, C, T)`` views of
      contiguous ``(B, T, C)`` memory. A strided conv runs as ``F.conv2d`` on a ``(B, C, 1, T)``
      channels_last view (oneDNN's NHWC kernels: 1.7x faster than its NCW ones at 512 channels, 2.4x at
      361, k3/s2 on 32k frames, one interleaved timing on the 2-core AMD EPYC); a 1x1 conv is a plain
      ``F.linear`` on the ``(B, T, C)`` memory; the first conv of the waveform (``C_in == 1``) is a GEMM on
      its unfolded windows (a copy of ``k / s`` times the waveform: about 2x faster than oneDNN's conv with
      one input channel). When the group norm follows the first conv, that conv and the norm stay
      channels-first (torch's channels-last group norm kernel sums squares in one pass: 5e-5 off at 32k
      frames, against 1e-6; a hand-written two-pass one was 2x slower) and the second conv copies its input
      to channels-last once. Written by hand: torch picks neither form itself for a 1-D conv.

    The GELU overwrites the conv / norm output when autograd does not need it (:func:`can_overwrite`).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, norm: nn.Module | None
    ) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm = norm
        self.onednn_linear = False  # set by nemo_sew.nn.onednn.use_onednn_linear (channels-last 1x1 path)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if _channels_last(x):
            return self._conv_channels_last(x)
        if self.kernel == 1 and self.stride == 1 and not contrib_ops_active():  # onnxruntime's int8 form: a Conv
            # (C_out, C_in) @ (B, C_in, T) -> (B, C_out, T), contiguous: the conv's sums as one batched GEMM.
            # bmm on the expanded weight, not torch.matmul: with a weight that requires grad, matmul takes a
            # path ~2x slower on CPU (even under inference_mode)
            w = self.conv.weight[:, :, 0]
            y = torch.bmm(w.expand(x.shape[0], -1, -1), x)
            return y if self.conv.bias is None else y + self.conv.bias[:, None]
        return self.conv(x)

    def _conv_channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T)`` in any memory order -> ``(B, C_out, T_out)``, channels-last except as noted above."""
        weight, bias = self.conv.weight, self.conv.bias
        if weight.shape[1] == 1:  # the waveform
            if isinstance(self.norm, MaskedInstanceNorm):  # channels-first for the group norm (see above)
                return self.conv(x)
            # (B, T_out, k) windows (a copy) times the (C_out, k) weight
            windows = x[:, 0, :].unfold(1, self.kernel, self.stride)
            return F.linear(windows, weight[:, 0, :], bias).transpose(1, 2)
        if self.kernel == 1 and self.stride == 1:
            if self.onednn_linear:
                from nemo_sew.nn.onednn import packed_linear

                return packed_linear(self, x.transpose(1, 2), weight[:, :, 0], bias, source=weight).transpose(1, 2)
            return F.linear(x.transpose(1, 2), weight[:, :, 0], bias).transpose(1, 2)
        x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # a view when x is channels-last
        return F.conv2d(x4, weight.unsqueeze(2), bias, stride=(1, self.stride))[:, :, 0, :]

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, units: torch.Tensor | None = None, scale: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``units``: scales of the output channels (pruning; a channel LayerNorm then normalises over the kept
        channels); ``scale=False`` leaves the output unscaled (the projection applies them after its norm)."""
        x = self._conv(x)  # (B, C_out, T_out)
        lengths = conv_out_lengths(lengths, self.kernel, self.stride)
        if isinstance(self.norm, MaskedInstanceNorm):
            x = self.norm(x, lengths)
        elif isinstance(self.norm, ChannelLayerNorm) and units is not None:
            x = layer_norm_over(x.transpose(1, 2), self.norm, units).transpose(1, 2)
        elif self.norm is not None:
            x = self.norm(x)
        x = gelu(x, inplace=can_overwrite(x))
        return (scale_channels(x, units, dim=1) if scale else x), lengths


class ConvFeatureExtractor(nn.Module):
    """Waveform front end (WFE-O or WFE-C): ``(B, N)`` samples -> ``(B, T, C)`` frames at 20 ms.

    Args:
        layers: per-layer ``(channels, kernel, stride)``; see :func:`wfe_o_layers`, :func:`wfe_c_layers`.
        norm: ``"group_norm"`` (fairseq ``extractor_mode=default``: per-channel norm after the first
            conv only, computed over valid frames here) or ``"layer_norm"`` (``extractor_mode=layer_norm``:
            channel LayerNorm after every conv).
        conv_bias: fairseq ``conv_bias`` (False for base models and SEW, True for large models).

    Valid output frames depend only on valid input samples (no padding inside the convs), so with the
    masked norm a padded batch gives the same valid frames as each item alone.
    """

    def __init__(
        self,
        layers: Sequence[Sequence[int]],
        norm: Literal["group_norm", "layer_norm"] = "group_norm",
        conv_bias: bool = False,
    ) -> None:
        super().__init__()
        if norm not in ("group_norm", "layer_norm"):
            raise ValueError(f"expected norm 'group_norm' or 'layer_norm', got {norm!r}")
        blocks = []
        in_ch = 1
        for i, (ch, k, s) in enumerate(layers):
            if norm == "layer_norm":
                block_norm: nn.Module | None = ChannelLayerNorm(ch)
            else:
                block_norm = MaskedInstanceNorm(ch) if i == 0 else None
            blocks.append(ConvBlock(in_ch, ch, k, s, conv_bias, block_norm))
            in_ch = ch
        self.blocks = nn.ModuleList(blocks)
        self.out_dim = in_ch

    @property
    def stride(self) -> int:
        """Samples per output frame."""
        total = 1
        for b in self.blocks:
            total *= b.stride
        return total

    @property
    def receptive_field(self) -> int:
        """Samples needed for one output frame."""
        rf = 1
        for b in reversed(self.blocks):
            rf = (rf - 1) * b.stride + b.kernel
        return rf

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            lengths = conv_out_lengths(lengths, b.kernel, b.stride)
        return lengths

    def from_port(
        self, signal: torch.Tensor, lengths: torch.Tensor, plan: FrontendPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input port ``(B, 1, N)`` -> ``(B, T, C)`` frames at 20 ms and their lengths."""
        return self(signal[:, 0, :], lengths, plan)

    def forward(
        self, wav: torch.Tensor, lengths: torch.Tensor, plan: FrontendPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``plan``: the conv channels' unit scales this forward (pruning), or None."""
        if wav.dim() != 2:
            raise ValueError(f"expected waveform of shape (B, N), got {tuple(wav.shape)}")
        # zero the padding so every item sees the same samples as when run alone
        x = wav.masked_fill(~time_mask(lengths, wav.shape[1]), 0.0)[:, None, :]  # (B, 1, N)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if plan is None:
                x, lengths = block(x, lengths)
            else:
                x, lengths = block(x, lengths, plan.layer(i), scale=not (i == last and plan.feature_units is not None))
        return x.transpose(1, 2), lengths  # (B, T, C), contiguous on the channels-last path


class MelStackFrontend(nn.Module):
    """Log-mel front end: ``(B, n_mels, T)`` at 10 ms -> stack ``stack`` frames -> ``(B, T // stack, n_mels*stack)``.

    The input comes from NeMo's ``AudioToMelSpectrogramPreprocessor``; stacking two 10 ms frames gives the
    20 ms rate the waveform front ends produce, so the compressor and expander see the same rate.
    """

    def __init__(self, n_mels: int = 80, stack: int = 2) -> None:
        super().__init__()
        if stack < 1:
            raise ValueError(f"expected stack >= 1, got {stack}")
        self.n_mels, self.stack = n_mels, stack
        self.out_dim = n_mels * stack

    @property
    def receptive_field(self) -> int:
        """Input frames needed for one output frame."""
        return self.stack

    def from_port(
        self, signal: torch.Tensor, lengths: torch.Tensor, plan: FrontendPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's input port ``(B, n_mels, T)`` -> ``(B, T // stack, stack * n_mels)`` and lengths (no conv
        channels: ``plan`` has nothing to apply here)."""
        return self(signal, lengths)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return torch.div(lengths, self.stack, rounding_mode="floor")

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if feats.dim() != 3 or feats.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel features of shape (B, {self.n_mels}, T), got {tuple(feats.shape)}")
        b, c, t = feats.shape
        t_out = t // self.stack
        x = feats[:, :, : t_out * self.stack].transpose(1, 2)  # (B, T_out*stack, n_mels)
        x = x.reshape(b, t_out, self.stack * c)  # (B, T_out, stack*n_mels), frames in time order
        lengths = self.output_lengths(lengths)
        return x.masked_fill(~time_mask(lengths, t_out)[..., None], 0.0), lengths


#: a waveform front end's prunable units, each :class:`ConvBlock`'s output channels, and where they sit (names
#: relative to the encoder): the block's conv and norm rows; the next block's conv columns; after the last block, the
#: :class:`FeatureProjection`'s LayerNorm rows and Linear columns (pruning's masks and materialisation read this)
FRONTEND_UNITS = FrontendUnits(
    block="frontend.blocks.{i}.", rows=UnitSlice(("conv", "norm"), 0), next=UnitSlice(("conv",), 1),
    last=(UnitSlice(("projection.layer_norm",), 0), UnitSlice(("projection.projection",), 1)),
)


class FeatureProjection(nn.Module):
    """LayerNorm on front-end features, then a linear map to the model width (wav2vec 2.0 / SEW).

    Args:
        in_dim, out_dim: front-end channels and model width.
        dropout: dropout after the projection (fairseq ``dropout_input``).
        layer_norm_eps: eps of the LayerNorm.
        layer_norm: apply the LayerNorm (transformers HuBERT ``feat_proj_layer_norm``; always on in
            wav2vec 2.0 and SEW).
        project: use the linear map; None (default) uses it only when the widths differ, as SEW's optional
            ``post_extract_proj`` does; True keeps it at equal widths (wav2vec 2.0 / HuBERT always project).

    ``projection`` is None when there is no linear map, ``layer_norm`` None when there is no LayerNorm.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
        layer_norm: bool = True,
        project: bool | None = None,
    ) -> None:
        super().__init__()
        if project is None:
            project = in_dim != out_dim
        if not project and in_dim != out_dim:
            raise ValueError(f"expected project=True when in_dim != out_dim, got in_dim={in_dim}, out_dim={out_dim}")
        self.layer_norm = nn.LayerNorm(in_dim, eps=layer_norm_eps) if layer_norm else None
        self.projection = Linear(in_dim, out_dim) if project else None
        self.dropout = nn.Dropout(dropout)

    def normalize(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """The LayerNorm part (identity without one): what wav2vec 2.0 quantizes for its targets. ``units``: the
        last conv layer's channel scales (pruning): statistics over the kept channels, then the scales."""
        if self.layer_norm is None:
            return scale_channels(x, units)
        return scale_channels(layer_norm_over(x, self.layer_norm, units), units)

    def project(self, normed: torch.Tensor) -> torch.Tensor:
        """The linear map and dropout on normalized features."""
        return self.dropout(self.projection(normed) if self.projection is not None else normed)

    def forward(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        return self.project(self.normalize(x, units))
