"""Masked average pooling along time, and the frame map that ties 20 ms frames to compressed frames."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nemo_sew.nn.frontend import time_mask


def pooled_lengths(lengths: torch.Tensor, stride: int) -> torch.Tensor:
    """``ceil(lengths / stride)``: a partial last window keeps the tail."""
    return torch.div(lengths + stride - 1, stride, rounding_mode="floor")


def masked_avg_pool(x: torch.Tensor, lengths: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``(B, T, C)`` over windows of ``stride`` frames, counting valid frames only.

    Output length ``ceil(T / stride)``, per-item lengths ``ceil(lengths / stride)``; the last partial
    window averages the frames it has. MViT-style pooling with a padding mask; written by hand because
    torch's pooling layers have no mask.
    """
    if stride == 1:
        return x, lengths
    b, t, c = x.shape
    pad = (-t) % stride
    mask = time_mask(lengths, t).to(x.dtype)[..., None]  # (B, T, 1)
    xs = F.pad(x * mask, (0, 0, 0, pad)).view(b, (t + pad) // stride, stride, c).sum(2)  # (B, T/p, C)
    count = F.pad(mask, (0, 0, 0, pad)).view(b, (t + pad) // stride, stride, 1).sum(2)  # (B, T/p, 1)
    return xs / count.clamp_min(1.0), pooled_lengths(lengths, stride)


@dataclass
class FrameMap:
    """Where each 20 ms frame lives in the compressed sequence.

    ``index (B, T)``: the compressed frame that covers 20 ms frame ``t`` (clamped to the valid range);
    ``phase (B, T)``: the position of ``t``'s centre inside that compressed frame, in [0, 1].
    A factor-agnostic expander reads both; every time-axis change updates them.
    """

    index: torch.Tensor
    phase: torch.Tensor

    def pooled(self, stride: int, lengths: torch.Tensor) -> "FrameMap":
        """The map after pooling the compressed sequence by ``stride`` (``lengths`` = lengths after pooling)."""
        if stride == 1:
            return self
        index = torch.div(self.index, stride, rounding_mode="floor")
        phase = (self.index - index * stride + self.phase) / stride
        return FrameMap(torch.minimum(index, (lengths - 1).clamp_min(0)[:, None]), phase)
