"""Per-unit scales a plan hands to a module: pruning masks applied by the module that owns the units.

A :class:`BranchPlan` (one per branch and forward, inside a :class:`~nemo_sew.nn.blocks.LayerPlan`) and a
front-end plan carry, per prunable group, a vector of unit scales (a HardConcrete sample in training, the
deterministic mask at inference; exact zeros switch units off). The module that owns the units multiplies
them in where they fold into the next linear map (see :mod:`nemo_sew.prune.masks` for the table), and a
channel LayerNorm over masked channels takes its statistics over the kept channels only. Nothing here knows
about pruning's Lagrangian: these are the arithmetic the modules apply.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BranchPlan:
    """One residual branch's part of a forward's plan.

    Args:
        open: False = the branch is an exact identity this forward (switched off, or pruned to width 0 at
            inference); a 0-dim bool tensor = decided on the device (training with pruning masks that may
            close the branch): the branch runs and ``torch.where`` selects it or the identity, with no host
            synchronisation, and a closed branch's parameters get a zero gradient.
        units: the body's unit scales (attention heads, FFN units, conv-module channels), or None.
        scale: the whole-branch mask value (shape ``(1,)``) multiplied into the body's output, or None.
    """

    open: bool | torch.Tensor = True
    units: torch.Tensor | None = None
    scale: torch.Tensor | None = None


OPEN = BranchPlan()


@dataclass(frozen=True)
class FrontendPlan:
    """The front end's part of a forward's plan (pruning of the waveform front end's conv channels).

    Args:
        channels: per conv layer, the unit scales of its output channels (None: unmasked). A channel
            LayerNorm after that conv takes its statistics over the kept channels.
        feature_units: the last conv layer's scales, applied after the feature LayerNorm of the projection
            instead of on the conv's output (a LayerNorm is not per-channel linear, so a scale before it could
            not be folded into the projection); None when the last layer's output is scaled in place.
    """

    channels: tuple[torch.Tensor | None, ...] = ()
    feature_units: torch.Tensor | None = None

    def layer(self, i: int) -> torch.Tensor | None:
        return self.channels[i] if i < len(self.channels) else None


def scale_channels(x: torch.Tensor, units: torch.Tensor | None, dim: int = -1, repeat: int = 1) -> torch.Tensor:
    """``x`` times ``units`` along ``dim`` (each unit repeated ``repeat`` times: one value per attention head
    over its ``head_dim`` context channels); ``units`` None returns ``x``."""
    if units is None:
        return x
    m = units.to(x.dtype)
    if repeat > 1:
        m = m.repeat_interleave(repeat)
    shape = [1] * x.dim()
    shape[dim] = -1
    return x * m.view(shape)


def support_layer_norm(x: torch.Tensor, support: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """``norm`` over the last axis of ``x`` with statistics over the channels where ``support`` is True only.

    What the materialised LayerNorm over the kept channels computes (the other channels' outputs are
    masked to 0 afterwards). Written by hand: torch's layer_norm has no channel mask. The
    statistics are computed in fp32 whatever the input dtype (as ``nn.LayerNorm`` does under autocast), so bf16
    and fp16 training keep ``nn.LayerNorm``'s accuracy and a sum of squares cannot overflow fp16; no host
    synchronisation (a full support takes the same arithmetic path).
    """
    x32 = x.float()
    s = support.to(torch.float32)
    n = s.sum().clamp_min(1.0)
    mean = (x32 * s).sum(-1, keepdim=True) / n
    d = (x32 - mean) * s
    var = (d * d).sum(-1, keepdim=True) / n
    y = (x32 - mean) * torch.rsqrt(var + norm.eps) * norm.weight.float() + norm.bias.float()
    return y.to(x.dtype)


def layer_norm_over(x: torch.Tensor, norm: nn.LayerNorm, units: torch.Tensor | None) -> torch.Tensor:
    """``norm(x)`` (last axis), over the channels whose unit scale is non-zero when ``units`` is given.
    The output keeps the dtype ``nn.LayerNorm`` gives (fp32 under autocast)."""
    if units is None:
        return norm(x)
    # the dtype nn.LayerNorm gives here (autocast's policy differs by device): from an empty slice, no compute
    dtype = nn.LayerNorm.forward(norm, x.narrow(0, 0, 0)).dtype
    return support_layer_norm(x, units != 0, norm).to(dtype)
