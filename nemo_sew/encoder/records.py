"""What one encoder forward takes and gives, as plain records: the :class:`Draw` it runs at, the stages' outputs
(:class:`Front`, :class:`Squeezed`) and the :class:`EncoderOutput` with its auxiliary losses and stats.

The model <-> encoder contract lives here: the model decides what the encoder does in a training step (a
:class:`Draw` from the profile sampler, seeded by the global step) and passes it in; the encoder returns an
:class:`EncoderOutput`. Nothing is written into the encoder by the model and nothing is read back after a forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from nemo_sew.nn.pooling import FrameMap
from nemo_sew.profile import CompressionProfile


@dataclass(frozen=True)
class Draw:
    """What one forward runs at: a profile (its ``squeeze`` None = the trained or learned factor) and OFA's
    CIF lambda. In training the model makes one per step with :meth:`SqueezeEncoder.draw` (the same on
    every DDP rank); at inference :meth:`SqueezeEncoder.draw` returns the active profile."""

    profile: CompressionProfile
    cif_lambda: float = 1.0
    step: int | None = None  # the training step it was drawn for (I3D temperature annealing, pruning warm-up), if known
    seed: int = 0  # the run's seed: decisions every DDP rank must share (LayerDrop) are functions of (seed, step)


@dataclass
class EncoderOutput:
    """What the encoder returns (library layout).

    Args:
        hidden: ``(B, T, D)``.
        lengths: ``(B,)`` valid frames.
        aux_losses: scalar losses the training step adds to its objective (``rate_penalty``, ...).
        stats: values about this forward: ``squeeze`` (the factor run, float), ``cif_lambda``,
            ``q_pool`` / ``kv_pool`` (strides run), ``layers`` (blocks run); gate and pruning stats are detached
            tensors (no host synchronisation in a step): :meth:`plain_stats` for Python values.
    """

    hidden: torch.Tensor
    lengths: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def plain_stats(self) -> dict[str, Any]:
        """:attr:`stats` with tensors as Python numbers and lists (the one host synchronisation, for reports)."""
        return plain_stats(self.stats)


def plain_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors in a stats dict (also nested in dicts) -> Python floats (0-dim) and lists."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.tolist()
        elif isinstance(value, Mapping):
            out[key] = plain_stats(value)
        else:
            out[key] = value
    return out


@dataclass
class Front:
    """What :meth:`SqueezeEncoder.front` returns: projected (and, in fine-tuning, masked) 20 ms features."""

    hidden: torch.Tensor  # (B, T, D)
    lengths: torch.Tensor  # 20 ms frames (B,)
    input_lengths: torch.Tensor  # the input port's lengths (samples / 10 ms frames)
    units: dict[str, torch.Tensor] | None = None  # this forward's pruning-mask values (shared by every path)
    features: torch.Tensor | None = None  # (B, T, C_front): the front end's output, before the projection
    normed: torch.Tensor | None = None  # (B, T, C_front): after the feature LayerNorm (wav2vec 2.0's targets)


@dataclass
class Squeezed:
    """The compressor's output, before the blocks (see :meth:`SqueezeEncoder.squeeze_features`)."""

    hidden: torch.Tensor  # (B, T', D)
    lengths: torch.Tensor  # (B,)
    frame_map: FrameMap
    factor: float | torch.Tensor  # the squeeze run (a tensor in learned-rate training)
    cif_lambda: float
    frames: torch.Tensor  # 20 ms input lengths (B,)
    num_frames: int  # 20 ms padded length
    input_lengths: torch.Tensor | None = None  # the input port's lengths (samples / 10 ms frames), for the cost model
    units: dict[str, torch.Tensor] | None = None  # this forward's pruning-mask values, if the encoder has masks
