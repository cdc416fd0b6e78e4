"""I3D gates: input-dependent dynamic depth (Peng, Lee, Watanabe, ICASSP 2023).

Every residual branch (attention, FFN, conformer conv module) of a gated encoder has a binary gate per
utterance. A closed gate makes the branch an exact identity (:class:`nemo_sew.nn.blocks.Residual`).

* **Local** predictors (:class:`LocalGatePredictor`): one small MLP per branch on the masked mean of that
  branch's input, so a layer's decisions depend on the gates taken before it.
* **Global** predictor (:class:`GlobalGatePredictor`): one MLP on the masked mean of the encoder input (the
  squeezed sequence before the blocks) that emits every gate at once, so the whole architecture of an
  utterance is known before the blocks run.

Training samples the gates with Gumbel-sigmoid and a straight-through estimator (forward: hard 0/1,
backward: the gradient of the relaxed sample), per utterance. Inference uses ``p > threshold``; a threshold
of 0 opens every gate and 1 closes every gate. Written by hand: no library implements I3D (no public code
exists); the Gumbel-sigmoid is the 2-class case of ``torch.nn.functional.gumbel_softmax``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.nn.frontend import time_mask
from nemo_sew.nn.linear import Linear


def masked_mean(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean of ``(B, T, C)`` over each item's valid frames -> ``(B, C)``; padding never enters it."""
    mask = time_mask(lengths, x.shape[1]).to(x.dtype)[..., None]  # (B, T, 1)
    return (x * mask).sum(1) / lengths.clamp_min(1).to(x.dtype)[:, None]


def gate_decisions(
    logits: torch.Tensor, training: bool, threshold: float = 0.5, tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gates, probabilities)`` from gate logits (any shape).

    Training: a Gumbel-sigmoid sample ``sigmoid((logit + logistic noise) / tau)``, hardened at 0.5 with a
    straight-through gradient. Inference: ``p > threshold`` (0 opens all, 1 closes all), no noise.
    """
    p = torch.sigmoid(logits.float())
    if training:
        u = torch.rand_like(p).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid((logits.float() + torch.log(u) - torch.log1p(-u)) / tau)
        hard = (soft > 0.5).to(soft.dtype)
        return hard + soft - soft.detach(), p
    if threshold <= 0.0:
        return torch.ones_like(p), p
    if threshold >= 1.0:
        return torch.zeros_like(p), p
    return (p > threshold).to(p.dtype), p


def bounded(logits: torch.Tensor, max_logit: float | None) -> torch.Tensor:
    """``max_logit * tanh(logits / max_logit)`` (None: unchanged). Bounded logits keep the gates from saturating,
    so the relaxed samples (and the budget) keep a gradient in training."""
    return logits if max_logit is None else max_logit * torch.tanh(logits / max_logit)


class LocalGatePredictor(nn.Module):
    """``Linear(C, H) -> GELU -> Linear(H, 1)`` on the masked mean of one branch's input -> one logit per item.

    The output bias starts at ``init_logit`` (default +3, p ~ 0.95; small random output weights), so a model gated from the start, or
    gates added to a trained model, begin with every branch (almost always) open.
    """

    def __init__(self, dim: int, hidden: int = 32, init_logit: float = 3.0, max_logit: float | None = None) -> None:
        super().__init__()
        self.max_logit = max_logit
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, 1)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, init_logit)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return bounded(self.fc2(F.gelu(self.fc1(masked_mean(x, lengths).to(self.fc1.weight.dtype))))[:, 0], self.max_logit)


class GlobalGatePredictor(nn.Module):
    """``Linear(C, H) -> GELU -> Linear(H, n_gates)`` on the masked mean of the encoder input -> ``(B, n_gates)``."""

    def __init__(
        self, dim: int, num_gates: int, hidden: int = 64, init_logit: float = 3.0, max_logit: float | None = None
    ) -> None:
        super().__init__()
        self.max_logit = max_logit
        self.fc1 = Linear(dim, hidden)
        self.fc2 = Linear(hidden, num_gates)
        nn.init.normal_(self.fc2.weight, std=0.01)
        nn.init.constant_(self.fc2.bias, init_logit)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return bounded(self.fc2(F.gelu(self.fc1(masked_mean(x, lengths).to(self.fc1.weight.dtype)))), self.max_logit)


class _GateMix(torch.autograd.Function):
    """``g * out + (1 - g) * skip`` per item; in the TorchScript ONNX exporter one ``nemo_sew::GateMix`` node,
    which :func:`nemo_sew.export.conditional.conditional_branches` turns into an ``If`` over the branch."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, out: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        g = gate.to(out.dtype)[:, None, None]
        return g * out + (1.0 - g) * skip

    @staticmethod
    def symbolic(g, gate, out, skip):  # noqa: ANN001, ANN205  (ONNX graph context and values)
        return g.op("nemo_sew::GateMix", gate, out, skip).setType(out.type())


def gate_mix(gate: torch.Tensor, out: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``(B,)`` gates mixing a branch output and its identity ``(B, T, C)``: ``g * out + (1 - g) * skip``.

    Under the ONNX exporter the mix is a marker node (the graph is rewritten into a conditional branch);
    elsewhere (training, ``torch.jit.trace``) it is the plain formula, with gradients to ``gate``.
    """
    if torch.onnx.is_in_onnx_export():
        return _GateMix.apply(gate, out, skip)
    g = gate.to(out.dtype)[:, None, None]
    return g * out + (1.0 - g) * skip
