"""The frozen-encoder period (``finetune.freeze_encoder_steps``) costs no encoder backward (issue 31, item 4): the
encoder runs without autograd, its parameters get zero gradients (so plain DDP reduces complete buckets), the
CTC head learns, and after the period the encoder trains again. ``nemo-sew bench train-step`` measures the time."""

import lightning.pytorch as pl
import torch
from omegaconf import open_dict

from nemo_sew.quant.model import build_tiny_ctc


def _step(model):
    x, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 11000])
    targets, target_lengths = torch.randint(0, 27, (2, 8)), torch.tensor([8, 5])
    model.zero_grad(set_to_none=True)
    log_probs, encoded_len, _, _ = model.forward_with_draw(x, lengths, draw=model.encoder.draw(0))
    model.loss(log_probs=log_probs, targets=targets, input_lengths=encoded_len, target_lengths=target_lengths).backward()


def test_frozen_encoder_runs_without_autograd_and_gets_zero_gradients():
    model = build_tiny_ctc("tiny_mel", num_layers=2).train()
    model.set_trainer(pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1))
    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 5}  # global_step 0 < 5: frozen
    assert model.encoder_frozen()
    needs_grad = []
    handle = model.encoder.layers[0].register_forward_hook(lambda m, a, out: needs_grad.append(out[0].requires_grad))
    _step(model)
    assert needs_grad == [False], "the encoder's blocks ran with autograd"
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.decoder.parameters())

    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 0}
    needs_grad.clear()
    _step(model)
    handle.remove()
    assert needs_grad == [True] and not model.encoder_frozen()
    assert any(torch.count_nonzero(p.grad) > 0 for p in model.encoder.layers[0].parameters())
