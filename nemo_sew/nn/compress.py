"""Sequence compressors (20 ms -> 20*s ms) and expanders (back to 20 ms).

Each module that changes the time axis returns the new lengths, and a :class:`FrameMap` that says
which compressed frame covers each 20 ms frame (what a factor-agnostic expander needs).
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from nemo_sew.nn.frontend import _channels_last, time_mask
from nemo_sew.nn.linear import Linear
from nemo_sew.nn.pooling import FrameMap


def is_integer_rate(factor: float | torch.Tensor) -> bool:
    return not isinstance(factor, torch.Tensor) and float(factor) == int(factor)


def rate_fraction(factor: float) -> tuple[int, int]:
    """``factor`` as ``p / q`` (denominator at most 2^20: 1.5 -> 3/2, 3.3 -> 33/10), for exact integer CIF lengths."""
    f = Fraction(float(factor)).limit_denominator(1 << 20)
    return f.numerator, f.denominator


def cif_lengths(lengths: torch.Tensor, factor: float, keep_tail: bool) -> torch.Tensor:
    """Exact CIF output lengths: ``floor(L / s)``, plus the tail frame when ``keep_tail`` and its mass >= 0.5.

    Integer arithmetic on ``s = p / q`` (:func:`rate_fraction`): ``n = floor(L q / p)``, tail when ``2 (L q - n p)
    >= p``. Exact at every length (no float rounding at a tail of exactly 0.5), the same in torch, onnxruntime
    and TensorRT, and free of float64 (which TensorRT has not). The cost model counts frames with it too."""
    p, q = rate_fraction(factor)
    scaled = lengths.long() * q
    n = torch.div(scaled, p, rounding_mode="floor")
    if keep_tail:
        n = n + (2 * (scaled - n * p) >= p).long()
    return n


class AlphaPredictor(nn.Module):
    """Once-for-all CIF weight predictor: ``Conv1d(C, C, 5) -> LayerNorm -> ReLU -> Linear(C, 1) -> sigmoid``.

    Gives a content-dependent weight ``alpha_t`` in (0, 1) per 20 ms frame (OFA ``AlphaModule``). Padded
    frames are zeroed before the conv, so padding does not change valid weights.
    """

    def __init__(self, dim: int, kernel: int = 5) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)
        self.proj = Linear(dim, 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x.masked_fill(~time_mask(lengths, x.shape[1])[..., None], 0.0)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T, C)
        return torch.sigmoid(self.proj(F.relu(self.norm(h)))).squeeze(-1).float()  # (B, T)


class SqueezeCompressor(nn.Module):
    """SEW's squeeze, generalised to real rates by continuous integrate-and-fire (CIF).

    Integer ``s`` (SEW, exact): ``avgpool_s(x) + GELU(WN-Conv1d_s(x))``, truncated to ``T' = floor(T / s)``.
    With ``s = 1`` this is wav2vec 2.0's convolutional positional embedding ``x + GELU(conv(x))`` (SamePad
    drops the last output frame when the kernel is even), so W2V2 / HuBERT use the same module.

    Real ``s`` (once-for-all): frame ``t`` carries weight ``a_t``; compressed frame ``k`` is the weighted
    mean of the 20 ms frames whose cumulative-weight interval ``[c_{t-1}, c_t)`` overlaps ``[k, k+1)``
    (CIF with threshold 1), plus the positional conv sampled at the first frame of the segment. Uniform
    weights ``a_t = 1/s`` reproduce the integer rule. With an :class:`AlphaPredictor`, OFA's lambda
    mixing ``a_t = (1 - lam) + lam * alpha_t`` is rescaled per utterance so that the weights sum to exactly
    ``L / s``: the profile fixes the rate, the predictor decides where the boundaries fall (OFA instead lets
    lambda set the rate). Differences from the OFA reference: padding gets zero weight, the tail segment
    is kept at inference when its mass is >= 0.5, the cumulative sum is fp64 rounded to fp32.

    The conv weight does not depend on ``s`` (shared across factors): the stride is a forward argument.

    Args:
        dim: model width ``C``.
        kernel, groups: positional conv (SEW 31/16, wav2vec 2.0 128/16).
        factor: the squeeze used when ``forward`` is not given one.
        alpha_predictor: learn content-dependent CIF weights (OFA) for real rates.
    """

    def __init__(
        self, dim: int, kernel: int = 31, groups: int = 16, factor: int = 2, alpha_predictor: bool = False
    ) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"expected dim divisible by groups, got dim={dim}, groups={groups}")
        self.kernel, self.factor = kernel, int(factor)
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = parametrizations.weight_norm(conv, name="weight", dim=2)
        self.alpha = AlphaPredictor(dim) if alpha_predictor else None

    @staticmethod
    def output_lengths(lengths: torch.Tensor, factor: float, keep_tail: bool = False) -> torch.Tensor:
        if is_integer_rate(factor):
            return torch.div(lengths, int(factor), rounding_mode="floor")
        return cif_lengths(lengths, float(factor), keep_tail)

    def _pos(self, x: torch.Tensor, stride: int) -> torch.Tensor:
        # x: (B, C, T) -> GELU(conv) (B, C, ceil(T/stride)) (+1 frame when the kernel is even)
        w = self.conv.weight
        if stride == 1 and _channels_last(x):
            # x is a view of (B, T, C) memory: oneDNN's channels-last (NHWC) grouped conv reads it as it is,
            # 1.3x (wav2vec 2.0's k128) to 2.3x (SEW's k31) faster than the channels-first one on the 2-core
            # AMD EPYC (one interleaved timing); strided, the channels-first one was faster (7.7 vs 14.6 ms)
            x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
            y = F.conv2d(x4, w.unsqueeze(2), self.conv.bias, padding=(0, self.kernel // 2), groups=self.conv.groups)
            return F.gelu(y[:, :, 0, :])
        return F.gelu(F.conv1d(x, w, self.conv.bias, stride=stride, padding=self.kernel // 2, groups=self.conv.groups))

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        factor: float | torch.Tensor | None = None,
        lam: float = 1.0,
        keep_tail: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, FrameMap]:
        """x: ``(B, T, C)`` at 20 ms -> ``(B, T', C)``, lengths, frame map. ``factor`` may be a tensor (learned rate)."""
        s = self.factor if factor is None else factor
        if (s < 1) if not isinstance(s, torch.Tensor) else bool(s.detach() < 1):
            raise ValueError(f"expected a squeeze factor >= 1, got {float(s)}")
        x = x.masked_fill(~time_mask(lengths, x.shape[1])[..., None], 0.0)
        if is_integer_rate(s) and self.alpha is None:
            return self._integer(x, lengths, int(s))
        return self._cif(x, lengths, s, lam, keep_tail)

    def _integer(self, x: torch.Tensor, lengths: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor, FrameMap]:
        xt = x.transpose(1, 2)  # (B, C, T)
        pooled = F.avg_pool1d(xt, s, s) if s > 1 else xt  # (B, C, floor(T/s))
        t_out = pooled.shape[-1]
        y = (pooled + self._pos(xt, s)[..., :t_out]).transpose(1, 2)  # (B, T', C)
        out_len = torch.div(lengths, s, rounding_mode="floor")
        t = torch.arange(x.shape[1], device=x.device)
        index = torch.minimum(torch.div(t, s, rounding_mode="floor")[None, :], (out_len - 1).clamp_min(0)[:, None])
        phase = ((t % s).to(x.dtype) + 0.5) / s
        return y, out_len, FrameMap(index, phase[None, :].expand(x.shape[0], -1))

    def _weights(self, x: torch.Tensor, lengths: torch.Tensor, s, lam: float) -> torch.Tensor:
        mask = time_mask(lengths, x.shape[1]).float()  # (B, T)
        if self.alpha is None:
            return mask / s
        a = ((1.0 - lam) + lam * self.alpha(x, lengths)) * mask
        target = lengths.float() / s  # per-utterance total weight: exactly L / s
        return a * (target / a.sum(-1).clamp_min(1e-6))[:, None]

    def _segments(self, x: torch.Tensor, lengths: torch.Tensor, s, lam: float, keep_tail: bool):
        """CIF segment weights ``(B, K, T)`` (rows sum to 1), output lengths, and the weights' cumsum."""
        t = x.shape[1]
        s_value = float(s.detach()) if isinstance(s, torch.Tensor) else float(s)
        out_len = cif_lengths(lengths, s_value, keep_tail).clamp_min(1)
        if not torch.jit.is_tracing():
            k_max = int(out_len.max())  # eager: the longest item decides (CIF's one host synchronisation)
        else:
            # traced: the segment count of the padded length T, from the input's shape (not from the values of
            # `length`), so the graph has no value-dependent shape (TensorRT); the longest item fills the batch,
            # so it equals the eager count there, and extra segments are padding (zero, beyond every length)
            padded = torch.arange(t, device=x.device)[-1:] + 1  # (1,) = T, traced from the shape
            k_max = cif_lengths(padded, s_value, keep_tail).clamp_min(1)[0]
        a = self._weights(x, lengths, s, lam)  # (B, T) fp32
        if self.alpha is None:
            # uniform weights 1/s: c_t = min(t + 1, L) / s, one correctly rounded fp32 division per frame, so torch
            # (CPU/CUDA), onnxruntime and TensorRT agree on segment boundaries without a float64 cumsum
            steps = torch.minimum(torch.arange(1, t + 1, device=x.device)[None, :], lengths[:, None])
            cum = steps.float() / float(s_value) if not isinstance(s, torch.Tensor) else steps.float() / s
        elif torch.jit.is_tracing():
            cum = torch.cumsum(a, dim=-1)  # learned weights, exported: fp32 accumulation (no float64 in the graph)
        else:
            cum = torch.cumsum(a.double(), dim=-1).float()  # learned weights: fp64 accumulation, rounded to fp32
        prev = cum - a  # c_{t-1}
        k = torch.arange(k_max, device=x.device, dtype=torch.float32)[None, :, None]  # (1, K, 1)
        # overlap of frame t's interval [c_{t-1}, c_t) with segment [k, k+1): (B, K, T); dense is fine at
        # speech lengths (T = 500 per 10 s) and traces to plain ONNX ops
        overlap = (torch.minimum(cum[:, None, :], k + 1) - torch.maximum(prev[:, None, :], k)).clamp_min(0.0)
        overlap = overlap * time_mask(out_len, overlap.shape[1])[..., None]
        weights = overlap / overlap.sum(-1, keepdim=True).clamp_min(1e-6)  # rows sum to 1 (tail rescaled)
        return weights, out_len, a, cum, prev, k

    def integrate(
        self,
        values: torch.Tensor,
        x: torch.Tensor,
        lengths: torch.Tensor,
        factor: float | torch.Tensor,
        lam: float = 1.0,
        keep_tail: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``values (B, T, F)`` to the squeezed rate with the weights ``forward(x, ...)`` uses.

        The pooling part only (no positional conv): average pooling for integer factors, the CIF segment
        means otherwise. Once-for-all pre-training compresses its targets this way.
        """
        values = values.masked_fill(~time_mask(lengths, values.shape[1])[..., None], 0.0)
        if is_integer_rate(factor) and self.alpha is None:
            s = int(factor)
            pooled = F.avg_pool1d(values.transpose(1, 2), s, s).transpose(1, 2) if s > 1 else values
            return pooled, torch.div(lengths, s, rounding_mode="floor")
        x = x.masked_fill(~time_mask(lengths, x.shape[1])[..., None], 0.0)
        weights, out_len, *_ = self._segments(x, lengths, factor, lam, keep_tail)
        return torch.bmm(weights.to(values.dtype), values), out_len

    def _cif(self, x: torch.Tensor, lengths: torch.Tensor, s, lam: float, keep_tail: bool):
        b, t, c = x.shape
        weights, out_len, a, cum, prev, k = self._segments(x, lengths, s, lam, keep_tail)
        y = torch.bmm(weights.to(x.dtype), x)  # (B, K, C)
        # positional conv at stride 1, sampled at the first frame of each segment (= SEW's strided conv)
        pos = self._pos(x.transpose(1, 2), 1)[..., :t]  # (B, C, T)
        start = (cum[:, None, :] <= k + 1e-5).sum(-1).clamp(max=t - 1)  # (B, K) first frame with c_t > k
        y = y + torch.gather(pos, 2, start[:, None, :].expand(-1, c, -1)).transpose(1, 2)  # (B, K, C)
        y = y.masked_fill(~time_mask(out_len, y.shape[1])[..., None], 0.0)
        centre = prev + a / 2  # (B, T) position of each 20 ms frame in compressed units
        index = torch.minimum(torch.floor(centre).long(), (out_len - 1)[:, None]).clamp_min(0)
        phase = (centre - index.to(centre.dtype)).clamp(0.0, 1.0).to(x.dtype)
        return y, out_len, FrameMap(index, phase)


class SEWUpsampler(nn.Module):
    """SEW's upsampler: ``Linear(C, s*C)`` + GELU, each squeezed frame becomes ``s`` consecutive 20 ms frames.

    The last ``T mod s`` frames (and any padding) are zeros, as in SEW. The weight shape depends on
    ``s``, so this expander serves one factor only.
    """

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)
        self.linear = Linear(dim, self.factor * dim)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, frame_map: FrameMap, target_lengths: torch.Tensor, target_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        y = F.gelu(self.linear(x))  # (B, T', s*C)
        y = y.reshape(b, t * self.factor, c)  # 'b t (s c) -> b (t s) c'
        # always pad (by T mod s >= 0 frames): a Python `if` on the shape would be frozen by ONNX tracing
        y = F.pad(y, (0, 0, 0, target_len - y.shape[1]))  # (B, T, C)
        y = y[:, :target_len]
        # frames past lengths*s came from padding in a batch and are zeros when the item runs alone
        valid = time_mask(torch.minimum(lengths * self.factor, target_lengths), target_len)
        return y.masked_fill(~valid[..., None], 0.0), target_lengths


class PhaseExpander(nn.Module):
    """Factor-agnostic expander back to 20 ms: ``y_t = GELU(W h_{j(t)} + u * (phase_t - 1/2) + b)``.

    Our design for stochastic and real-rate models, where SEW's ``Linear(C, s*C)`` cannot serve every
    factor: each 20 ms frame ``t`` reads the compressed frame ``j(t)`` that covers it (from the
    compressor's :class:`FrameMap`, updated by query pooling) plus its relative position inside that frame,
    so the same weights expand by 1, 1.5, 2, 4 or any learned rate. Unlike SEW, tail frames past the last
    compressed frame read the last one instead of being zeros.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = Linear(dim, dim)
        self.phase = Linear(1, dim, bias=False)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, frame_map: FrameMap, target_lengths: torch.Tensor, target_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[-1]
        h = self.linear(x)  # (B, T', C)
        index = frame_map.index[:, :target_len]  # (B, T)
        y = torch.gather(h, 1, index[..., None].expand(-1, -1, c))  # (B, T, C)
        y = F.gelu(y + self.phase((frame_map.phase[:, :target_len, None] - 0.5).to(y.dtype)))
        return y.masked_fill(~time_mask(target_lengths, target_len)[..., None], 0.0), target_lengths
