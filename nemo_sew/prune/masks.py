"""HardConcrete masks on a built :class:`~nemo_sew.SqueezeEncoder` (HJ-Pruning), their expected cost and the
Lagrangian budget (research notes, part A).

What is masked, and where (always after a nonlinearity, so the surviving soft values are a per-unit scale
on the *next linear map* and fold into it exactly; see :mod:`nemo_sew.prune.materialize`):

========================  ==========================================  ============================
unit                      mask multiplies                             folded into
========================  ==========================================  ============================
front-end conv channels   the conv block's output (after norm, GELU)  the next conv's input channels
last front-end layer      the feature LayerNorm's output              the projection's input columns
attention heads           each head's context, before ``out_proj``    ``out_proj`` input columns
FFN units                 after the activation, before ``fc2``        ``fc2`` input columns
conformer conv channels   after norm + swish, before ``pointwise2``   ``pointwise2`` input channels
whole branch (optional)   the branch body's output                    its output weight and bias
========================  ==========================================  ============================

The rows of the table are declarations the modules make (:data:`nemo_sew.nn.frontend.FRONTEND_UNITS`, and one
:class:`~nemo_sew.nn.units.BranchUnits` per branch kind in :data:`nemo_sew.nn.blocks.BRANCH_KINDS`): which masks an
encoder gets, their sizes and expected widths follow from them, and so does :mod:`nemo_sew.prune.materialize`.

The masks are applied by the modules that own the units: per forward the encoder draws one value of every
mask (:meth:`PruningMasks.sample`) and puts it into the forward's plan (one
:class:`~nemo_sew.nn.units.BranchPlan` per branch, a :class:`~nemo_sew.nn.units.FrontendPlan` for the front end);
the bodies multiply their unit scales in (``nemo_sew.nn`` knows unit scales, not pruning). No hooks and no state
between forwards; an encoder without pruning has plans without scales and is unchanged.

**Channel norms (notes A7, A10.5).** A LayerNorm over channels that sees pruned channels would normalise
over a different set than the materialised model. Every channel LayerNorm whose channels are masked is
made *support-aware*: its statistics are taken over the channels whose current mask value is non-zero
(exact zeros happen in HardConcrete samples and in the deterministic mask). That covers the conformer conv
module's norm, the front-end norms of ``layer_norm`` extractors, and the feature LayerNorm after the last
front-end layer; for that last layer the mask moves *after* the feature LayerNorm (a LayerNorm is not
per-channel linear, so a soft scale before it could not be folded). The per-channel norm of
``group_norm`` extractors (layer 0) is exact under slicing as it is. With these rules the masked model at
its deterministic masks equals the materialised model (tested to 1e-4).

**Empty branches.** A branch whose every unit (or whose branch mask) is 0 is switched off, i.e. it is the
exact identity the arch gives a width-0 branch (its output bias and post-LN norm are skipped too), so a
fully pruned attention branch materialises as ``heads=0``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from nemo_sew.arch import checked_fields
from nemo_sew.cost import _constant, encoder_cost, encoder_params
from nemo_sew.errors import UserError
from nemo_sew.nn.blocks import BRANCH_KINDS, branch_kind
from nemo_sew.nn.frontend import frontend_layout
from nemo_sew.nn.units import OPEN, BranchPlan, FrontendPlan, support_layer_norm  # noqa: F401 (re-exported)
from nemo_sew.prune.hardconcrete import HardConcrete

#: what can be masked: the front end's conv channels, each branch kind's units, whole branches
UNITS = ("frontend",) + tuple(k.unit for k in BRANCH_KINDS) + ("branches",)
Budget = Literal["size", "mac", "sepmac"]
GROUPS = {"size": ("total",), "mac": ("total",), "sepmac": ("frontend", "transformer")}


@dataclass(frozen=True)
class Pruning:
    """HJ-Pruning options (``encoder.pruning`` in a config).

    Args:
        units: what is masked: ``frontend`` (conv output channels per layer), ``heads``, ``ffn`` (intermediate
            units), ``conv`` (conformer conv-module channels), ``branches`` (whole attention / FFN / conv
            branches; off by default, as in the released DPHuBERT recipe).
        budget: ``size`` (parameters), ``mac`` (total MACs at ``reference_seconds``) or ``sepmac`` (front end
            and the rest as two MAC budgets, each with its own multipliers).
        target: fraction of the dense cost to keep (``mac``: 0.6 = 60% of the MACs).
        target_frontend, target_transformer: ``sepmac`` targets of the front end and of everything after it
            (projection, positional conv, blocks, expander); default ``target``.
        warmup_steps: the target sparsity ramps linearly from 0 over this many steps (notes A5).
        reference_seconds: the utterance length the MACs are counted at (the budget is a property of the arch,
            not of the batch).
        init_drop: initial drop rate of channel, head and branch masks (0.01).
        ffn_init_drop: initial drop rate of FFN units (0.5, as DPHuBERT).
        reg_lr: learning rate of the mask logits and of the multipliers (their own optimizer groups; the
            multipliers' group maximises).
        reg_lr_schedule: ``shared`` (the reference code: the main LR schedule scales ``reg_lr`` too, notes A5)
            or ``constant`` (``reg_lr`` throughout). A run of a few hundred steps decays its LR while the budget
            is still being met, and the controller freezes short of the target: use ``constant`` there.
        penalty: ``signed`` (the reference code: ``lambda1 (s - t) + lambda2 (s - t)^2``) or ``absolute``
            (``lambda1 |s - t| + lambda2 (s - t)^2``, CoFiPruning#55). With the signed term, ``lambda1`` grows
            negative while the model is under-pruned and takes as many steps to come back once the target is
            crossed, so pruning runs past the target (the demo model, target 0.6: 0.54 of the MACs after 500
            steps); the absolute term pulls back toward the target from both sides as soon as it is crossed.
    """

    units: tuple[str, ...] = ("frontend", "heads", "ffn", "conv")
    budget: Budget = "sepmac"
    target: float = 0.6
    target_frontend: float | None = None
    target_transformer: float | None = None
    warmup_steps: int = 1000
    reference_seconds: float = 10.0
    init_drop: float = 0.01
    ffn_init_drop: float = 0.5
    reg_lr: float = 0.02
    reg_lr_schedule: str = "shared"
    penalty: str = "signed"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        bad = sorted(set(self.units) - set(UNITS))
        if bad or not self.units:
            raise UserError(f"expected pruning.units a non-empty subset of {list(UNITS)}, got {list(self.units)}")
        if self.budget not in GROUPS:
            raise UserError(f"expected pruning.budget in {sorted(GROUPS)}, got {self.budget!r}")
        for name in ("target", "target_frontend", "target_transformer"):
            value = getattr(self, name)
            if value is not None and not 0.0 < float(value) <= 1.0:
                raise UserError(f"expected pruning.{name} in (0, 1], got {value}")
        if self.reg_lr_schedule not in ("shared", "constant"):
            raise UserError(f"expected pruning.reg_lr_schedule 'shared' or 'constant', got {self.reg_lr_schedule!r}")
        if self.penalty not in ("signed", "absolute"):
            raise UserError(f"expected pruning.penalty 'signed' or 'absolute', got {self.penalty!r}")
        if self.warmup_steps < 0 or self.reference_seconds <= 0 or self.reg_lr <= 0:
            raise UserError(f"expected warmup_steps >= 0, reference_seconds > 0 and reg_lr > 0, got {self}")

    @classmethod
    def of(cls, data: "Pruning | Mapping[str, Any] | None") -> "Pruning | None":
        if data is None or isinstance(data, cls):
            return data
        return cls(**checked_fields(cls, data, "pruning options"))

    def targets(self) -> dict[str, float]:
        """The kept fraction per budget group."""
        if self.budget != "sepmac":
            return {"total": float(self.target)}
        return {
            "frontend": float(self.target if self.target_frontend is None else self.target_frontend),
            "transformer": float(self.target if self.target_transformer is None else self.target_transformer),
        }

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["units"] = list(self.units)
        return out


@dataclass(frozen=True)
class Slot:
    """One mask: its key, what it masks (``frontend``, ``heads``, ``ffn``, ``conv``, ``branch``), the layer index
    (front-end layer or block) and the branch name."""

    key: str
    unit: str
    layer: int
    branch: str = ""


class PruningMasks(nn.Module):
    """The masks of one encoder (``encoder.pruning``), where each applies (the plan's unit and branch scales),
    their expected cost and the Lagrangian (multipliers ``lambda1``, ``lambda2``, one per budget group).

    Built by :class:`~nemo_sew.SqueezeEncoder` when its config has ``pruning``; holds no reference to the
    encoder's modules. The encoder draws :meth:`sample` once per forward and builds its plans from it.
    """

    def __init__(self, encoder: nn.Module, options: Pruning) -> None:
        super().__init__()
        self.options = options
        self.arch = encoder.arch
        self.gates = nn.ModuleDict()
        self.slots: list[Slot] = []
        # where each mask goes in a forward's plan: front-end conv layer -> key, (layer, branch) -> unit / branch key
        self.frontend_keys: dict[int, str] = {}
        self.feature_key: str | None = None  # the last conv layer's mask, applied after the feature LayerNorm
        self.unit_keys: dict[tuple[int, str], str] = {}
        self.branch_keys: dict[tuple[int, str], str] = {}
        self._attach(encoder)
        self._dense = {k: float(v) for k, v in self._costs(None, None).items()}
        # a group without cost (sepmac on a mel front end: no front-end MACs) has no constraint
        self.group_names = tuple(g for g in GROUPS[options.budget] if self._dense[g] > 0)
        self.lambda1 = nn.Parameter(torch.zeros(len(self.group_names)))
        self.lambda2 = nn.Parameter(torch.zeros(len(self.group_names)))

    # ----------------------------------------------------------------------------------------- masks

    def _add(self, slot: Slot, n: int, init_drop: float, min_keep: int = 0) -> None:
        self.gates[slot.key] = HardConcrete(n, init_drop, min_keep)
        self.slots.append(slot)

    def sample(self) -> dict[str, torch.Tensor]:
        """One value of every mask for one forward: a HardConcrete sample in training, the deterministic mask at
        inference. The encoder draws it once per forward (the paths of a multi-path step share it) and hands it
        to the modules through the plan (:meth:`frontend_plan`, :meth:`branch_plan`)."""
        return {key: gate() for key, gate in self.gates.items()}

    @torch.no_grad()
    def deterministic(self) -> dict[str, torch.Tensor]:
        """Every mask's inference value."""
        return {key: gate.deterministic() for key, gate in self.gates.items()}

    def frontend_plan(self, units: Mapping[str, torch.Tensor]) -> FrontendPlan:
        """The front end's part of the plan for the mask values ``units`` (:meth:`sample`)."""
        if not self.frontend_keys:
            return FrontendPlan()
        n = max(self.frontend_keys) + 1
        channels = tuple(units[self.frontend_keys[i]] if i in self.frontend_keys else None for i in range(n))
        return FrontendPlan(channels, units[self.feature_key] if self.feature_key is not None else None)

    def branch_plan(self, layer: int, name: str, units: Mapping[str, torch.Tensor], training: bool) -> BranchPlan:
        """Branch ``name`` of block ``layer``'s part of the plan: its unit scales, its branch scale, and whether it
        is open. A branch whose every unit (or whose branch mask) is 0 is the arch's width-0 branch, an exact
        identity: decided on the device in training (``open`` a 0-dim bool tensor, no host synchronisation), and on
        the host at inference (``open=False`` skips its compute)."""
        unit_key, branch_key = self.unit_keys.get((layer, name)), self.branch_keys.get((layer, name))
        if unit_key is None and branch_key is None:
            return OPEN
        values = [units[k] for k in (unit_key, branch_key) if k is not None]
        open_ = torch.stack([(v != 0).any() for v in values]).all() if len(values) > 1 else (values[0] != 0).any()
        return BranchPlan(
            open=open_ if training else bool(open_),
            units=units[unit_key] if unit_key is not None else None,
            scale=units[branch_key] if branch_key is not None else None,
        )

    def _attach(self, encoder: nn.Module) -> None:
        """The masks of ``encoder``'s prunable units (the table in the module docstring) and where they apply."""
        units, o = set(self.options.units), self.options
        fe = encoder.arch.frontend
        if "frontend" in units and fe.conv_layers:
            proj = encoder.projection
            n_conv = len(fe.conv_layers)
            # the last layer's channels are the projection's input: maskable only when a Linear follows
            last = n_conv - 1 if proj.projection is not None else n_conv - 2
            for i in range(min(last + 1, n_conv)):
                key = f"fe{i}"
                self._add(Slot(key, "frontend", i), fe.conv_layers[i][0], o.init_drop, min_keep=1)
                self.frontend_keys[i] = key
                if i == n_conv - 1 and proj.layer_norm is not None:  # after the feature LayerNorm (see above)
                    self.feature_key = key
        for li, layer in enumerate(encoder.layers):
            spec = encoder.arch.blocks[li]
            for name in layer.branch_names:  # each branch kind declares its units (nemo_sew.nn.blocks.BRANCH_KINDS)
                kind, column = branch_kind(name)
                key = f"l{li}_{name}"
                if kind.unit in units:
                    self._add(Slot(key, kind.unit, li, name), kind.count(spec, column), getattr(o, kind.init_drop))
                    self.unit_keys[(li, name)] = key
                if "branches" in units:
                    self._add(Slot(f"{key}_branch", "branch", li, name), 1, o.init_drop)
                    self.branch_keys[(li, name)] = f"{key}_branch"

    # ------------------------------------------------------------------------------------------ cost

    def kept(self, expected: bool = True) -> dict[str, torch.Tensor]:
        """Kept units per mask: the expected L0 norm (differentiable) or, with ``expected=False``, the
        deterministic mask's non-zero count."""
        if expected:
            return {key: gate.expected_l0() for key, gate in self.gates.items()}
        return {key: (m != 0).sum().to(torch.float64) for key, m in self.deterministic().items()}

    def soft_widths(self, expected: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(soft, keep)`` for :func:`nemo_sew.cost.encoder_cost`: the arch's widths (one per branch kind's width
        field, and the front end's channels) with each masked group replaced by its kept count, and per branch kind
        the branch masks' keep probabilities."""
        arch = self.arch
        dev = next(iter(self.gates.values())).log_alpha.device if len(self.gates) else torch.device("cpu")
        f64 = torch.float64
        kept = self.kept(expected)
        # the arch's widths from the cost model's per-device constants (no host-to-device copy per step), as nested
        # lists of 0-dim tensors (one per layer, and per column of a kind with several branches per block)
        widths = {k.width: _nested(_constant(arch, f"spec:{k.width}", dev)) for k in BRANCH_KINDS}
        keep = {k.keep: _nested(torch.ones_like(_constant(arch, f"spec:{k.width}", dev))) for k in BRANCH_KINDS}
        fe = list(_constant(arch, "frontend_channels", dev).unbind())
        for slot in self.slots:
            value = kept[slot.key].to(f64)
            if slot.unit == "frontend":
                fe[slot.layer] = value
                continue
            kind, column = branch_kind(slot.branch)
            if slot.unit == "branch":
                target, value = keep[kind.keep], value if expected else (value > 0).to(f64)
            else:
                target = widths[kind.width]
            if kind.columns:
                target[slot.layer][column] = value
            else:
                target[slot.layer] = value
        soft = {k.width: _stacked(widths[k.width], _constant(arch, f"spec:{k.width}", dev)) for k in BRANCH_KINDS}
        if fe:
            soft["frontend_channels"] = torch.stack(fe)
        keeps = {k.keep: _stacked(keep[k.keep], _constant(arch, f"spec:{k.width}", dev)) for k in BRANCH_KINDS}
        return soft, keeps

    def reference_length(self) -> int:
        """Input length (samples or 10 ms frames) of ``reference_seconds`` of audio."""
        return frontend_layout(self.arch.frontend).length(self.options.reference_seconds)

    def group_costs(self, expected: bool = True) -> dict[str, torch.Tensor]:
        """The budget's cost per group (``total``, or ``frontend`` and ``transformer``): MACs at the reference
        length, or parameters for ``size``; expected from the masks (differentiable), or with
        ``expected=False`` the deterministic masks' counts (what the materialised model has)."""
        return self._costs(*self.soft_widths(expected))

    def _costs(self, soft: Mapping[str, torch.Tensor] | None, keep: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        if soft is None:  # the unpruned arch
            soft, keep = {}, {}
            if self.options.budget == "size":
                return {"total": encoder_params(self.arch)["total"]}
        if self.options.budget == "size":
            # parameters are linear in each width: a branch's keep probability scales its widths
            scaled = dict(soft)
            for kind in BRANCH_KINDS:
                scaled[kind.width] = soft[kind.width] * keep[kind.keep]
            return {"total": encoder_params(self.arch, soft=scaled)["total"]}
        cost = encoder_cost(self.arch, None, self.reference_length(), soft=soft, keep=keep)
        if self.options.budget == "mac":
            return {"total": cost.total}
        return {"frontend": cost.frontend, "transformer": cost.total - cost.frontend}

    def dense_costs(self) -> dict[str, float]:
        return dict(self._dense)

    # ------------------------------------------------------------------------------------ Lagrangian

    def target_sparsity(self, step: int) -> dict[str, float]:
        """Per group, ``t(step) = (1 - target) * min(1, step / warmup_steps)``."""
        w = self.options.warmup_steps
        ramp = 1.0 if w == 0 else min(1.0, max(step, 0) / w)
        return {g: (1.0 - keep) * ramp for g, keep in self.options.targets().items()}

    def penalty(self, step: int | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """``sum_g lambda1_g (s_g - t_g) + lambda2_g (s_g - t_g)^2`` (``penalty: absolute``: ``|s_g - t_g|`` in the
        first term) with the expected sparsity ``s_g = 1 -
        cost_g / dense_g`` (minimised over the masks, maximised over the multipliers), and what to log."""
        if step is None:
            raise UserError("the pruning penalty needs the training step (its target ramps with it): pass the "
                             "draw's step (Draw.step)")  # fmt: skip
        step = int(step)
        costs = self.group_costs(expected=True)
        targets = self.target_sparsity(step)
        total = torch.zeros((), dtype=torch.float32, device=self.lambda1.device)
        stats: dict[str, Any] = {}
        for i, g in enumerate(self.group_names):
            fraction = (costs[g] / max(self._dense[g], 1.0)).float()
            gap = (1.0 - fraction) - targets[g]
            linear = gap.abs() if self.options.penalty == "absolute" else gap
            total = total + self.lambda1[i] * linear + self.lambda2[i] * gap * gap
            stats[f"prune_{g}_expected"] = fraction.detach()  # tensors: no host synchronisation in a step
            stats[f"prune_{g}_target"] = 1.0 - targets[g]
            stats[f"prune_{g}_lambda1"] = self.lambda1[i].detach()
            stats[f"prune_{g}_lambda2"] = self.lambda2[i].detach()
        stats["prune_kept"] = {key: v.detach() for key, v in self.kept(expected=True).items()}
        return total, stats

    def outputs(self, run: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The pruning budget as an encoder policy (:class:`nemo_sew.encoder.policies.Policy`): in training,
        ``prune_budget`` (:meth:`penalty` at the draw's step) and its stats; nothing at inference."""
        if not run.training:
            return {}, {}
        loss, stats = self.penalty(run.draw.step)
        return {"prune_budget": loss}, stats

    def mask_parameters(self) -> list[nn.Parameter]:
        return [gate.log_alpha for gate in self.gates.values()]

    def multiplier_parameters(self) -> list[nn.Parameter]:
        return [self.lambda1, self.lambda2]


def _nested(t: torch.Tensor) -> list:
    """A ``(L,)`` or ``(L, C)`` tensor as (nested) lists of 0-dim tensors, to replace entries one by one."""
    return [row if row.dim() == 0 else list(row.unbind()) for row in t.unbind()] if t.shape[0] else []


def _stacked(values: list, like: torch.Tensor) -> torch.Tensor:
    """:func:`_nested`'s inverse (``like``: the shape and dtype of an empty result)."""
    if not values:
        return torch.zeros(like.shape, dtype=torch.float64, device=like.device)
    return torch.stack([v if isinstance(v, torch.Tensor) else torch.stack(v) for v in values])


PRUNING_GROUPS = ("prune_masks", "prune_multipliers")


def hold_reg_lr(optimizer: torch.optim.Optimizer, pruning: "PruningMasks") -> None:
    """``reg_lr_schedule: constant``: put the pruning groups back at ``reg_lr`` (after the LR scheduler's step)."""
    if pruning.options.reg_lr_schedule != "constant":
        return
    for group in optimizer.param_groups:
        if group.get("name") in PRUNING_GROUPS:
            group["lr"] = pruning.options.reg_lr


def optimizer_groups(model: nn.Module, groups: list[dict], pruning: PruningMasks) -> list[dict]:
    """``groups`` (an optimizer's param groups) without the pruning parameters, plus two groups: the mask
    logits (``lr = reg_lr``, no weight decay) and the multipliers (same, ``maximize=True``: gradient ascent)."""
    special = {id(p) for p in pruning.mask_parameters() + pruning.multiplier_parameters()}
    out = []
    for group in groups:
        params = [p for p in group["params"] if id(p) not in special]
        if params:
            out.append({**group, "params": params})
    lr = pruning.options.reg_lr
    out.append({"params": pruning.mask_parameters(), "lr": lr, "weight_decay": 0.0, "name": "prune_masks"})
    out.append({"params": pruning.multiplier_parameters(), "lr": lr, "weight_decay": 0.0, "maximize": True,
                "name": "prune_multipliers"})  # fmt: skip
    return out


def realised_fraction(arch_pruned, arch_dense, options: Pruning) -> dict[str, float]:
    """The budget groups' kept fraction of a materialised arch (integer widths) against the dense one. A group
    without dense cost (sepmac's front end on a log-mel model: nothing to prune) is left out, as the penalty
    leaves it out (:meth:`PruningMasks.group_names`)."""

    def costs(arch):
        n = frontend_layout(arch.frontend).length(options.reference_seconds)
        if options.budget == "size":
            return {"total": float(encoder_params(arch)["total"])}
        c = encoder_cost(arch, None, n)
        if options.budget == "mac":
            return {"total": float(c.total)}
        return {"frontend": float(c.frontend), "transformer": float(c.total - c.frontend)}

    a, b = costs(arch_pruned), costs(arch_dense)
    return {g: a[g] / b[g] for g in a if b[g] > 0}

