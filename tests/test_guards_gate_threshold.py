"""The I3D gate threshold at its edges (issue 30, item 8).

Documented rule (``nemo_sew.nn.gates.gate_decisions``): at inference a branch runs when its probability is strictly
above the threshold, ``p > threshold``; threshold 0 opens every branch and 1 closes every branch whatever the
probabilities. A probability EXACTLY at the threshold (logit 0 -> p = 0.5, exact in floating point) is closed. The
encoder's gated forward and the frozen (static) export decisions follow the same rule.
"""

from __future__ import annotations

import pytest
import torch

from nemo_sew.encoder import build_encoder
from nemo_sew.export.static_gates import _decisions
from nemo_sew.nn.gates import gate_decisions

EXTREME = torch.tensor([-1e4, -30.0, -1e-3, 0.0, 1e-3, 30.0, 1e4])  # p: 0, ~0, <0.5, 0.5, >0.5, ~1, 1


def test_a_probability_exactly_at_the_threshold_is_closed():
    logits = torch.zeros(5)
    gates, p = gate_decisions(logits, training=False, threshold=0.5)
    assert bool((p == 0.5).all()), "logit 0 must give p = 0.5 exactly"
    assert torch.equal(gates, torch.zeros(5))
    for dtype in (torch.float16, torch.bfloat16):  # logits from an autocast forward: the same decision
        assert torch.equal(gate_decisions(logits.to(dtype), training=False, threshold=0.5)[0], torch.zeros(5))


def test_just_above_and_below_the_threshold():
    gates, p = gate_decisions(torch.tensor([-1e-3, 1e-3]), training=False, threshold=0.5)
    assert gates.tolist() == [0.0, 1.0]
    gates, _ = gate_decisions(torch.zeros(3), training=False, threshold=0.4999)
    assert gates.tolist() == [1.0, 1.0, 1.0]


def test_threshold_zero_opens_everything_and_one_closes_everything():
    """Even probability exactly 0 (logit -1e4) opens at threshold 0, and exactly 1 (logit +1e4) closes at 1."""
    p = torch.sigmoid(EXTREME)
    assert float(p[0]) == 0.0 and float(p[-1]) == 1.0
    assert torch.equal(gate_decisions(EXTREME, training=False, threshold=0.0)[0], torch.ones(7))
    assert torch.equal(gate_decisions(EXTREME, training=False, threshold=1.0)[0], torch.zeros(7))
    assert torch.equal(gate_decisions(EXTREME, training=False, threshold=-0.1)[0], torch.ones(7))
    assert torch.equal(gate_decisions(EXTREME, training=False, threshold=1.1)[0], torch.zeros(7))


def test_the_static_export_decides_like_the_gates():
    """``freeze_gates`` / static export decisions from probabilities: the same rule at the same edges."""
    p = torch.sigmoid(EXTREME)
    for threshold in (0.0, 0.5, 1.0, 0.25, 0.75):
        assert torch.equal(_decisions(p, threshold), gate_decisions(EXTREME, False, threshold)[0]), threshold
    assert torch.equal(_decisions(torch.full((3,), 0.5), 0.5), torch.zeros(3))


def test_training_hardens_the_relaxed_sample_at_one_half_and_is_straight_through():
    """Training: a Gumbel-sigmoid sample hardened to 0/1 (``soft > 0.5``) whose gradient is the soft sample's."""
    torch.manual_seed(0)
    logits = torch.zeros(2000, requires_grad=True)
    gates, p = gate_decisions(logits, training=True, threshold=0.5)
    hard = gates.detach()
    assert torch.allclose(hard, hard.round(), atol=1e-6) and 0.4 < float(hard.mean()) < 0.6  # 0/1 up to rounding
    gates.sum().backward()
    assert logits.grad is not None and bool((logits.grad > 0).all())
    assert bool((p == 0.5).all())


@pytest.mark.parametrize("kind", ["local", "global"])
def test_an_encoder_whose_gates_say_exactly_one_half(kind: str):
    """Gate predictors with zero output layers (logit exactly 0, p = 0.5): every gated branch is skipped at
    ``depth_threshold`` 0.5, every one runs just below it, and 0 / 1 give the full / the minimal depth."""
    torch.manual_seed(0)
    encoder = build_encoder("tiny_mel", num_layers=2, gates={"kind": kind}).eval()
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if "gate" in name and ".fc2." in name:
                param.zero_()
    x, lengths = torch.randn(2, encoder.layout.feat_in, 200), torch.tensor([200, 150])

    def stats(threshold: float) -> dict:
        encoder.set_profile({"depth_threshold": threshold})
        return encoder.run(x, lengths, measure=True).plain_stats()

    at = stats(0.5)
    assert all(p == 0.5 for row in at["gate_probs"] for p in row), at["gate_probs"]
    assert at["gates_open"] == 0.0 and at["depth"] == [0.0, 0.0]
    below = stats(0.4999)
    assert below["gates_open"] == 1.0 and below["depth"] == [2.0, 2.0]
    assert stats(0.0)["gates_open"] == 1.0 and stats(1.0)["gates_open"] == 0.0
