"""Per-unit scales a plan hands to a module: pruning masks applied by the module that owns the units.

A :class:`BranchPlan` (one per branch and forward, inside a :class:`~nemo_sew.nn.blocks.LayerPlan`) and a
front-end plan carry, per prunable group, a vector of unit scales (a HardConcrete sample in training, the
deterministic mask at inference; exact zeros switch units off). The module that owns the units multiplies
them in where they fold into the next linear map (see :mod:`nemo_sew.prune.masks` for the table), and a
channel LayerNorm over masked channels takes its statistics over the kept channels only. Nothing here knows
about pruning's Lagrangian: these are the arithmetic the modules apply.

Also here, the declarations those modules make about their units: :class:`BranchUnits` (one per branch kind,
:data:`nemo_sew.nn.blocks.BRANCH_KINDS`) and :class:`FrontendUnits` (:data:`nemo_sew.nn.frontend.FRONTEND_UNITS`)
say which parameters carry which unit axis and how a kind's cost depends on its kept units; pruning's masks,
materialisation and the cost model iterate over them instead of naming branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

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


# ------------------------------------------------------------------------------------------------------------------
# declarations: which parameters carry a module's prunable units


@dataclass(frozen=True)
class UnitSlice:
    """Parameters (submodules ``modules``, relative to the module that owns the units) that carry the units on one axis.

    Args:
        modules: submodule names whose ``weight`` (and, on ``axis`` 0, ``bias``) hold one entry per channel.
        axis: 0 = the units' own outputs (output rows; kept rows are selected); 1 = a consumer's inputs (input
            columns of ``weight``; kept columns are selected and multiplied by the units' mask values, which sit
            right before that consumer, so they fold into it exactly).
        channels: how a unit maps to channels on that axis: ``unit`` (one channel), ``group`` (``per_unit``
            consecutive channels, e.g. an attention head's ``head_dim`` context channels) or ``glu`` (one channel in
            each half of a GLU's doubled output).
    """

    modules: tuple[str, ...]
    axis: int = 0
    channels: str = "unit"

    def __post_init__(self) -> None:
        if self.axis not in (0, 1) or self.channels not in ("unit", "group", "glu"):
            raise ValueError(f"expected axis 0 or 1 and channels 'unit', 'group' or 'glu', got {self}")

    def channel_index(self, idx: torch.Tensor, units: int, per_unit: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(channels, owner)``: the channel indices of the kept units ``idx`` (of ``units``) on this axis, and the
        unit each channel belongs to (whose mask value scales it)."""
        if self.channels == "group":
            ch = (idx[:, None] * per_unit + torch.arange(per_unit, device=idx.device)[None, :]).flatten()
            return ch, idx.repeat_interleave(per_unit)
        if self.channels == "glu":
            return torch.cat([idx, idx + units]), torch.cat([idx, idx])
        return idx, idx


@dataclass(frozen=True)
class BranchUnits:
    """What a branch kind (a residual branch's body class) declares about its prunable units and its cost.

    One declaration per kind, beside the body module that implements it (:data:`nemo_sew.nn.blocks.BRANCH_KINDS`);
    pruning's masks (:mod:`nemo_sew.prune.masks`: which masks exist, their expected widths), materialisation
    (:mod:`nemo_sew.prune.materialize`: which rows and columns to keep) and the cost model (:mod:`nemo_sew.cost`:
    MACs, parameters, soft widths and keep probabilities) iterate over the declarations instead of naming branches.

    **Adding a branch kind** (say an E-Branchformer cgMLP branch):

    1. write its body module in :mod:`nemo_sew.nn.blocks` with the body signature
       ``forward(h, lengths, plan, units=None) -> (y, lengths)``, applying its unit scales ``units`` (one per unit,
       :func:`scale_channels`) right before the linear map that consumes them, and a channel LayerNorm over them
       with :func:`layer_norm_over`;
    2. give the width of its units a field of :class:`~nemo_sew.arch.BlockSpec` (0 = the branch is absent), and let
       a block builder (:data:`nemo_sew.nn.blocks.BLOCK_BUILDERS`) create it under a branch name;
    3. declare it: a :class:`BranchUnits` in :data:`nemo_sew.nn.blocks.BRANCH_KINDS` naming its branch names, its
       width field, the parameters that carry its units (``slices``) and its output layer, and the two functions
       that count its MACs and parameters from a (possibly soft) width, into :class:`~nemo_sew.cost.Cost`
       components (an existing one, or a new field of ``Cost`` listed in ``COMPONENTS``). Nothing else changes:
       masks, the masked forward's plans, materialisation, soft widths and keep probabilities (``soft`` and
       ``keep`` of :func:`~nemo_sew.cost.encoder_cost` gain the kind's width and keep keys), I3D gates' keep
       tensors and the cost model follow; ``tests/test_branch_kinds.py`` checks the declaration against the built
       module, and the masked model against the materialised one and the cost model, once an encoder in its
       ``CANDIDATES`` has the branch.

    Args:
        name: the kind's name (reports, errors).
        body: the body class that implements it.
        branches: the branch names of this kind, each with its index into ``width`` when ``columns`` (a block may
            have several branches of one kind, e.g. a conformer's two FFNs ``ffn_dims[0]``, ``ffn_dims[1]``).
        width: the :class:`~nemo_sew.arch.BlockSpec` field holding the number of units (0 = no branch).
        columns: ``width`` is a tuple with one entry per branch of this kind in a block.
        unit: the name of these units in :attr:`nemo_sew.prune.Pruning.units`, and in ``prune_kept_<unit>`` logs.
        keep: the cost model's ``keep`` key of the kind (I3D keep probabilities, pruning's branch masks).
        init_drop: the :class:`~nemo_sew.prune.Pruning` option with the initial drop rate of its unit masks.
        per_unit: the BlockSpec field with the channels per unit (``group`` slices), or None (one channel).
        present: a :class:`~nemo_sew.arch.BlockTraits` flag a block kind needs to have this branch (soft widths
            of blocks without it count 0), or None.
        slices: the parameters that carry the units (relative to the body), rows first.
        output: the body's output layer: a whole-branch mask folds into its ``weight`` and ``bias``.
        components: the :class:`~nemo_sew.cost.Cost` components its MACs count in.
        macs: ``macs(width, keep, times) -> {component: (..., L)}``: the kind's MACs per layer from its width
            ``(..., L[, columns])`` (float, may be soft), keep probabilities of the same shape (or 1.0) and the
            layer times and constants (:class:`nemo_sew.cost.LayerTimes`).
        params: ``params(width, times) -> {component: (...,)}``: its parameters summed over layers (the
            branch's norm and output bias count when the arch's integer width is > 0: ``times.exists(width)``).
    """

    name: str
    body: type
    branches: dict[str, int]
    width: str
    unit: str
    keep: str
    slices: tuple[UnitSlice, ...]
    output: str
    components: tuple[str, ...]
    macs: Callable[..., dict[str, torch.Tensor]]
    params: Callable[..., dict[str, torch.Tensor]]
    columns: bool = False
    init_drop: str = "init_drop"
    per_unit: str | None = None
    present: str | None = None

    def count(self, spec: Any, column: int = 0) -> int:
        """Units of this kind in block ``spec`` (its branch at ``column``)."""
        value = getattr(spec, self.width)
        return int(value[column] if self.columns else value)

    def channels_per_unit(self, spec: Any) -> int:
        return int(getattr(spec, self.per_unit)) if self.per_unit else 1


@dataclass(frozen=True)
class FrontendUnits:
    """Where a waveform front end's prunable units sit: each conv block's output channels (module names relative
    to the encoder, ``{i}`` = the conv block). The block's own ``rows``; then their consumer: the next block's
    ``next`` columns, or, after the last block, the feature projection's ``last`` slices (its LayerNorm's rows and
    its Linear's columns)."""

    block: str
    rows: UnitSlice
    next: UnitSlice
    last: tuple[UnitSlice, ...]
