"""The HardConcrete (L0) mask of structured pruning (Louizos et al. 2018; as used by FLOP, CoFi, DPHuBERT).

Written by hand: torch has no HardConcrete distribution. The constants and rules are the published ones
(research notes, part A2): stretch limits ``l = -0.1``, ``r = 1.1``, temperature ``beta = 2/3``; one sample
per forward shared by the whole batch (a property of the model, not of the input).

* training: ``z = clamp(sigmoid((logit(u) + log_alpha) / beta) * (r - l) + l, 0, 1)``, ``u ~ U(eps, 1-eps)``
  (exact 0 and exact 1 both have non-zero probability);
* expected kept count: ``E||z||_0 = sum sigmoid(log_alpha - beta * log(-l / r))`` (differentiable);
* inference (deterministic): ``k = round(n - E||z||_0)`` units are zeroed (those with the smallest
  ``log_alpha``); the others keep the soft value ``sigmoid(log_alpha / beta * 0.8)`` (the "0.8" rule of
  CoFi / DPHuBERT), which pruning folds into the next linear map.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LEFT, RIGHT, BETA, EPS = -0.1, 1.1, 2.0 / 3.0, 1e-6


class HardConcrete(nn.Module):
    """``n`` HardConcrete gates with learnable ``log_alpha``.

    Args:
        n: number of units (channels, heads, FFN units; 1 for a whole branch).
        init_drop: initial drop rate ``d``: ``log_alpha ~ N(log(1 - d) - log(d), 0.01)`` (notes A2: 0.01 for
            channels and heads, 0.5 for FFN units).
        min_keep: the deterministic mask keeps at least this many units (1 for front-end layers, which
            cannot be removed).
        beta: the temperature.
    """

    def __init__(self, n: int, init_drop: float = 0.01, min_keep: int = 0, beta: float = BETA) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"expected n >= 1 units, got {n}")
        if not 0.0 < init_drop < 1.0:
            raise ValueError(f"expected init_drop in (0, 1), got {init_drop}")
        self.n, self.min_keep, self.beta = int(n), int(min_keep), float(beta)
        mean = math.log(1.0 - init_drop) - math.log(init_drop)
        self.log_alpha = nn.Parameter(torch.empty(n).normal_(mean, 0.01))
        self.bias = -self.beta * math.log(-LEFT / RIGHT)  # P(z != 0) = sigmoid(log_alpha + bias)

    def p_keep(self) -> torch.Tensor:
        """``(n,)`` probabilities that each unit is non-zero (differentiable)."""
        return torch.sigmoid(self.log_alpha + self.bias)

    def expected_l0(self) -> torch.Tensor:
        """Expected number of kept units (a differentiable scalar)."""
        return self.p_keep().sum()

    def sample(self) -> torch.Tensor:
        """One training sample ``(n,)`` in ``[0, 1]``."""
        u = torch.rand_like(self.log_alpha).clamp(EPS, 1.0 - EPS)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.log_alpha) / self.beta)
        return (s * (RIGHT - LEFT) + LEFT).clamp(0.0, 1.0)

    @torch.no_grad()
    def deterministic(self) -> torch.Tensor:
        """The inference mask ``(n,)``: the ``round(n - E||z||_0)`` lowest units zeroed, the rest soft in (0, 1)."""
        kept = int(round(float(self.expected_l0())))
        kept = min(self.n, max(kept, self.min_keep))
        soft = torch.sigmoid(self.log_alpha / self.beta * 0.8)
        mask = torch.zeros_like(soft)
        if kept:
            idx = torch.topk(self.log_alpha, kept).indices
            mask[idx] = soft[idx]
        return mask

    def forward(self) -> torch.Tensor:
        return self.sample() if self.training else self.deterministic()

    def extra_repr(self) -> str:
        return f"n={self.n}, min_keep={self.min_keep}, beta={self.beta:.3f}"
