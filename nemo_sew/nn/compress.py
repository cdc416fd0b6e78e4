"""Sequence compressors (20 ms -> 20*s ms) and expanders (back to 20 ms).

Each module that changes the time axis returns the new lengths.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from nemo_sew.nn.frontend import time_mask


class SqueezeCompressor(nn.Module):
    """SEW's squeeze: ``avgpool_s(x) + GELU(WN-Conv1d_s(x))``, truncated to ``T' = floor(T / s)``.

    With ``s = 1`` this is exactly wav2vec 2.0's convolutional positional embedding ``x + GELU(conv(x))``
    (SamePad drops the last output frame when the kernel is even), so W2V2 / HuBERT models use the same
    module. The conv weight does not depend on ``s``: the stride is a forward-time argument, which is
    what lets one model run at several factors.

    Args:
        dim: model width ``C``.
        kernel: positional conv kernel (SEW 31, wav2vec 2.0 128).
        groups: positional conv groups (16 in both).
        factor: the squeeze factor ``s`` used when ``forward`` is not given one.

    Length rule: the conv gives ``ceil(T / s)`` frames, the pool ``floor(T / s)``; the output keeps the
    shorter, so ``lengths' = lengths // s`` per item. (SEW's reference adds ``T' - max(lengths')`` to all
    lengths, which only differs when a batch is padded beyond its longest item; we use the exact rule.)
    """

    def __init__(self, dim: int, kernel: int = 31, groups: int = 16, factor: int = 2) -> None:
        super().__init__()
        if dim % groups:
            raise ValueError(f"expected dim divisible by groups, got dim={dim}, groups={groups}")
        self.kernel, self.factor = kernel, int(factor)
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = parametrizations.weight_norm(conv, name="weight", dim=2)

    @staticmethod
    def output_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
        return torch.div(lengths, factor, rounding_mode="floor")

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, factor: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.factor if factor is None else int(factor)
        if s < 1:
            raise ValueError(f"expected an integer squeeze factor >= 1, got {factor}")
        x = x.masked_fill(~time_mask(lengths, x.shape[1])[..., None], 0.0).transpose(1, 2)  # (B, C, T)
        pos = F.conv1d(
            x, self.conv.weight, self.conv.bias, stride=s, padding=self.kernel // 2, groups=self.conv.groups
        )  # (B, C, ceil(T/s)) (+1 when the kernel is even)
        pooled = F.avg_pool1d(x, s, s) if s > 1 else x  # (B, C, floor(T/s))
        t_out = pooled.shape[-1]
        y = pooled + F.gelu(pos[..., :t_out])  # (B, C, T')
        return y.transpose(1, 2), self.output_lengths(lengths, s)  # (B, T', C)


class SEWUpsampler(nn.Module):
    """SEW's upsampler: ``Linear(C, s*C)`` + GELU, each squeezed frame becomes ``s`` consecutive 20 ms frames.

    The last ``T mod s`` frames (and any padding) are zeros, as in SEW. The weight shape depends on
    ``s``, so this expander serves one factor only.
    """

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        self.factor = int(factor)
        self.linear = nn.Linear(dim, self.factor * dim)
        nn.init.kaiming_normal_(self.linear.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.linear.bias)

    def supports(self, factor: float) -> bool:
        return factor == self.factor

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, target_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, c = x.shape
        y = F.gelu(self.linear(x))  # (B, T', s*C)
        y = y.reshape(b, t * self.factor, c)  # 'b t (s c) -> b (t s) c'
        if y.shape[1] < target_len:
            y = F.pad(y, (0, 0, 0, target_len - y.shape[1]))  # (B, T, C)
        y = y[:, :target_len]
        # frames past lengths*s came from padding in a batch and are zeros when the item runs alone
        valid = time_mask(torch.minimum(lengths * self.factor, target_lengths), target_len)
        return y.masked_fill(~valid[..., None], 0.0), target_lengths
