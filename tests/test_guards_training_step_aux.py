"""The CTC training step optimises CTC PLUS every auxiliary loss the encoder returns (issue 30, item 4).

A gated model's compute budget (``gate_budget``), a pruning model's Lagrangian budget (``prune_budget``) and a learned
rate's penalty (``rate_penalty``) only steer training if the step's returned loss includes them; a step that logs them
but does not add them trains an unconstrained model while the logs look right. The reference is computed
independently of ``training_step``: the same draw through ``forward_with_draw`` from the same RNG state, NeMo's CTC
loss, plus the sum of ``out.aux_losses``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from nemo_sew.quant.model import build_tiny_ctc
from nemo_sew.stochastic import run_seed

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "gates": ({"gates": {"kind": "local", "target": 0.5}}, "gate_budget"),
    "pruning": ({"pruning": {"units": ["heads", "ffn"], "budget": "size", "target": 0.7, "warmup_steps": 0}},
                "prune_budget"),
    "learned_rate": ({"learned_rate": {"init": 1.5, "target": 3.0, "min": 1.0, "max": 4.0, "penalty": 2.0},
                      "expander": "phase"}, "rate_penalty"),
}  # fmt: skip


def _model(encoder: dict[str, Any]):
    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_mel", num_layers=2, **encoder).train()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model.set_trainer(trainer)
    model._optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    pruning = getattr(model.encoder, "pruning", None)
    if pruning is not None:  # the multipliers start at 0 (no penalty yet); a run that has trained a while has others
        with torch.no_grad():
            pruning.lambda1.fill_(1.0)
            pruning.lambda2.fill_(2.0)
    return model


def _batch() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    signal = torch.randn(2, 16000, generator=gen) * 0.1
    transcript = torch.randint(0, 27, (2, 8), generator=gen)
    return signal, torch.tensor([16000, 11000]), transcript, torch.tensor([8, 5])


@pytest.mark.parametrize("case", list(CASES))
def test_the_training_step_loss_is_ctc_plus_every_auxiliary_loss(case, monkeypatch):
    encoder, aux_name = CASES[case]
    model = _model(encoder)
    logged: dict[str, Any] = {}
    monkeypatch.setattr(model, "log", lambda name, value, *args, **kwargs: logged.__setitem__(name, value))
    signal, signal_len, transcript, transcript_len = batch = _batch()

    torch.manual_seed(11)
    loss = model.training_step(batch, 0)["loss"]

    step = int(model.trainer.global_step)
    torch.manual_seed(11)  # the same dropout, gate noise and masks as the step
    log_probs, encoded_len, _, out = model.forward_with_draw(
        signal, signal_len, draw=model.encoder.draw(step, seed=run_seed(model))
    )
    ctc = model.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len, target_lengths=transcript_len)
    assert aux_name in out.aux_losses, sorted(out.aux_losses)
    ctc_value = float(ctc.detach())
    aux = {name: float(value.detach()) for name, value in out.aux_losses.items()}
    for name, value in aux.items():  # each term is large enough to show if it were left out
        assert abs(value) > 1e-3 * abs(ctc_value), (name, value, ctc_value)
        assert float(logged[name]) == pytest.approx(value, rel=1e-6), name
    got = float(loss.detach())
    assert got == pytest.approx(ctc_value + sum(aux.values()), rel=1e-6, abs=1e-6), (got, ctc_value, aux)


@pytest.mark.parametrize("case", list(CASES))
def test_the_step_gradient_is_that_of_ctc_plus_every_auxiliary_loss(case, monkeypatch):
    """Backward from the step's loss gives every parameter the gradient of CTC + the auxiliary losses (what moves
    the gate predictors toward the budget, the learned rate toward its target, the pruning multipliers at all:
    they appear in ``prune_budget`` and nowhere else)."""
    encoder, _ = CASES[case]
    model = _model(encoder)
    monkeypatch.setattr(model, "log", lambda *args, **kwargs: None)
    signal, signal_len, transcript, transcript_len = batch = _batch()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    torch.manual_seed(11)
    model.training_step(batch, 0)["loss"].backward()
    got = {n: None if p.grad is None else p.grad.clone() for n, p in params}
    model.zero_grad(set_to_none=True)

    torch.manual_seed(11)
    log_probs, encoded_len, _, out = model.forward_with_draw(
        signal, signal_len, draw=model.encoder.draw(int(model.trainer.global_step), seed=run_seed(model))
    )
    ctc = model.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len, target_lengths=transcript_len)
    (ctc + sum(out.aux_losses.values())).backward()
    for n, p in params:
        if p.grad is None or got[n] is None:
            assert p.grad is None and got[n] is None, n
        else:
            torch.testing.assert_close(got[n], p.grad, rtol=1e-5, atol=1e-7, msg=n)
    if case == "pruning":
        multipliers = model.encoder.pruning.multiplier_parameters()
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in multipliers)
