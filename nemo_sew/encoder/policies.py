"""Policies: the mechanisms that steer a forward's compute through the training objective, behind one protocol.

A forward of the blocks leaves a :class:`ForwardRun` (the draw, the squeezed sequence, the plans, the gate
decisions taken, the core's stats). Each policy the encoder has turns that record into auxiliary losses (added
to the training objective by the model) and stats (logged), and nothing else: the core calls every policy of the
encoder in one loop (:attr:`~nemo_sew.encoder.core.EncoderCore.policies`) and merges what they return.

* :class:`RatePenalty` (``encoder.rate_policy``): the learned squeeze rate: its parametrisation and its penalty
  ``rate_penalty``;
* :class:`GateBudget` (``encoder.gate_budget``): the I3D gates' budget ``gate_budget`` and their depth and MAC stats;
* :class:`~nemo_sew.prune.masks.PruningMasks` (``encoder.pruning``): the pruning masks' Lagrangian ``prune_budget``
  and its stats (it implements :class:`Policy` itself, beside the masks it budgets).

A policy holds its options and whatever it caches; parameters stay where the state dict has always had them
(``rate_logit``, ``gate_predictor.*``, ``pruning.*``), so checkpoints do not change. What a policy changes in the
forward itself goes through the plan or the squeeze the core builds (the gates' decisions, the masks' unit scales,
the learned factor); here is only what it adds to the objective and the logs. Adding a mechanism: a class with
``outputs(run) -> (aux_losses, stats)``, listed in ``EncoderCore.policies``.

Why policies and not methods of the core: each is optional, has its own options and caches, and is tested on its
own (``tests/test_gates.py``, ``tests/test_prune.py``, ``tests/test_stochastic.py``); the core's forward loops over
whichever the encoder has instead of branching on each option.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

import torch
import torch.nn.functional as F

from nemo_sew.arch import EncoderArch
from nemo_sew.cost import branch_keep, encoder_cost
from nemo_sew.encoder.records import Draw, Squeezed
from nemo_sew.nn.blocks import GateDecision, LayerPlan
from nemo_sew.nn.frontend import _tracing
from nemo_sew.options import Gates, LearnedRate

if TYPE_CHECKING:  # pragma: no cover
    from nemo_sew.prune.masks import PruningMasks

Outputs = tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class ForwardRun:
    """What one forward of the blocks did: the record every policy computes its losses and stats from.

    Args:
        draw: the draw it ran at (profile, step).
        squeezed: the compressor's output the blocks ran on (its factor: a tensor in learned-rate training).
        plans: one :class:`~nemo_sew.nn.blocks.LayerPlan` per layer.
        decisions: the gate decisions taken, ``{(layer, branch): (gates (B,), probabilities (B,))}``.
        stats: the core's stats of the forward (``squeeze``, ``cif_lambda``, ``q_pool``, ``kv_pool``, ``layers``).
        training: a training forward.
        tau: the gates' temperature it ran at.
        measure: report realised MACs (a cost-model call; see :meth:`EncoderCore.run`).
        pruning: the encoder's pruning masks (the widths a gated cost is counted at), if any.
    """

    draw: Draw
    squeezed: Squeezed
    plans: list[LayerPlan]
    decisions: Mapping[tuple[int, str], GateDecision]
    stats: Mapping[str, Any]
    training: bool
    tau: float = 1.0
    measure: bool = False
    pruning: PruningMasks | None = None


class Policy(Protocol):
    """One mechanism's part of a forward's auxiliary losses and stats."""

    def outputs(self, run: ForwardRun) -> Outputs:
        """``(aux_losses, stats)`` of ``run``: scalar losses for the objective, values to log (tensors stay tensors)."""


class RatePenalty:
    """The learned squeeze (``learned_rate``): ``s = min + (max - min) * sigmoid(theta)`` with ``theta`` the
    encoder's ``rate_logit``, and, in training at the learned rate, ``rate_penalty = penalty * relu(target / s - 1)^2``
    (spending more compute than the target's rate costs)."""

    def __init__(self, options: LearnedRate) -> None:
        self.options = options

    def init_logit(self) -> float:
        """``theta`` at the start: the logit of ``init``'s place in ``[min, max]``."""
        r = self.options
        frac = min(max((r.init - r.min) / (r.max - r.min), 1e-4), 1 - 1e-4)
        return math.log(frac / (1 - frac))

    def squeeze(self, logit: torch.Tensor) -> torch.Tensor:
        """The rate as a differentiable scalar."""
        lo, hi = self.options.min, self.options.max
        return lo + (hi - lo) * torch.sigmoid(logit)

    def penalty(self, squeeze: torch.Tensor) -> torch.Tensor:
        r = self.options
        return r.penalty * F.relu(r.target / squeeze - 1.0) ** 2

    def outputs(self, run: ForwardRun) -> Outputs:
        if not run.training or run.draw.profile.squeeze is not None:  # a drawn factor: nothing learned this forward
            return {}, {}
        return {"rate_penalty": self.penalty(run.squeezed.factor)}, {}


class GateBudget:
    """The I3D gates' budget and stats: depth and MACs (expected from the probabilities, realised from the
    decisions) and, in training with ``weight > 0``, ``gate_budget``: the expected fraction of the blocks' MACs
    (``budget: macs``) or of the branches (``modules``) against ``target``.

    Args:
        options: the gates' options.
        arch: the encoder's arch (the cost model counts its MACs).
        slots: ``(layer, branch)`` of every gate, in the order of ``stats["gate_probs"]``.
    """

    def __init__(self, options: Gates, arch: EncoderArch, slots: list[tuple[int, str]]) -> None:
        self.options, self.arch, self.slots = options, arch, list(slots)
        per_layer: dict[int, int] = {}
        for i, _ in self.slots:
            per_layer[i] = per_layer.get(i, 0) + 1
        self._share = per_layer  # branches per layer: each gate's share of its layer is 1 / that
        self._depth_weights: dict[tuple, torch.Tensor] = {}

    def depth_weight(self, slots: tuple[tuple[int, str], ...], device: torch.device) -> torch.Tensor:
        """``(G,)``: each gate slot's share of its layer (1 / branches in the layer), cached per slot set and
        device (built once, not copied from the host every step)."""
        key = (slots, str(device))
        if key not in self._depth_weights:
            self._depth_weights[key] = torch.tensor([1.0 / self._share[i] for i, _ in slots], device=device)
        return self._depth_weights[key]

    def outputs(self, run: ForwardRun) -> Outputs:
        aux: dict[str, torch.Tensor] = {}
        stats: dict[str, Any] = {}
        if not run.decisions or _tracing():  # a traced graph has no stats (its decisions are data)
            return aux, stats
        hard = {k: g.detach().float() for k, (g, _) in run.decisions.items()}
        probs = {k: p.float() for k, (_, p) in run.decisions.items()}
        some = next(iter(probs.values()))
        weight = self.depth_weight(tuple(probs), some.device)  # each layer counts 1
        stacked_p, stacked_g = torch.stack(list(probs.values()), -1), torch.stack(list(hard.values()), -1)  # (B, G)
        depth_expected, depth = stacked_p @ weight, stacked_g @ weight  # (B,) in layers
        # stats stay tensors (no host synchronisation in a step); EncoderOutput.plain_stats() gives Python values
        stats["depth"] = depth.detach()
        stats["depth_expected"] = depth_expected.detach().mean()
        stats["gates_open"] = stacked_g.mean()
        nan = torch.full_like(some, float("nan"))  # a layer that did not run (LayerDrop, num_layers)
        stats["gate_probs"] = torch.stack([probs.get(k, nan) for k in self.slots], -1).detach()
        fraction = stacked_p.mean(-1)  # expected fraction of open branches
        g, squeezed = self.options, run.squeezed
        mac_budget = run.training and g.weight > 0 and g.budget == "macs"
        if mac_budget and squeezed.input_lengths is None:
            raise ValueError("gates.budget=macs needs the input lengths to count MACs: pass input_lengths to "
                             "squeeze_features (run() and front() do); without them the budget would silently "
                             "become a fraction of modules")  # fmt: skip
        if squeezed.input_lengths is not None and (run.measure or mac_budget):
            profile = dataclasses.replace(run.draw.profile, squeeze=run.stats["squeeze"], depth_threshold=None)
            # one cost-model call for the three keep patterns: every branch (full depth), probabilities, decisions
            keeps = [branch_keep(self.arch, v, some.shape[0], some.device) for v in ({}, probs, hard)]
            keep = {name: torch.stack([k[name] for k in keeps]) for name in keeps[0]}  # (3, B, L[, n_ffn])
            soft = None
            if run.pruning is not None:
                # the widths the pruning masks leave (expected in training, the deterministic masks' at inference),
                # detached: the gates' budget is over the pruned model and does not move the masks
                soft, pruned_keep = run.pruning.soft_widths(expected=run.training)
                soft = {k: v.detach() for k, v in soft.items()}
                keep = {k: v * pruned_keep[k].detach().to(v.dtype) for k, v in keep.items()}
            cost = encoder_cost(self.arch, profile, squeezed.input_lengths, soft=soft, keep=keep)
            blocks = cost.attention_proj + cost.attention_scores + cost.ffn + cost.conv_module  # (3, B)
            full_blocks, expected_blocks, realised_total = blocks[0], blocks[1], cost.total[2]
            stats["macs"] = realised_total.detach()
            stats["macs_expected"] = (expected_blocks.sum() / full_blocks.sum().clamp_min(1.0)).detach()
            if g.budget == "macs":
                fraction = expected_blocks / full_blocks.clamp_min(1.0)
        if run.training:
            stats["gate_tau"] = run.tau
        if run.training and g.weight > 0:
            excess = fraction.float() - g.target  # (B,): each utterance's expected fraction over the target
            if not g.per_utterance:
                excess = excess.mean()
            penalty = excess.pow(2) if g.penalty == "square" else excess.clamp_min(0.0)
            aux["gate_budget"] = g.weight * penalty.mean()
        return aux, stats
