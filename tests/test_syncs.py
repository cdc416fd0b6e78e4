"""Host synchronisations per training step (issue 31, item 3), counted on CPU with :class:`nemo_sew.syncs.SyncCounter`
(the dispatcher ops that wait for a value: ``.item()``, ``bool()``, ``.tolist()``, ``nonzero``, host copies).

Budgets, written here: a training step of every encoder family has none (CIF's segment count is the one an
algorithm needs: one); the CTC model's step (preprocessor, encoder, decoder, CTC loss, backward) has none on CPU.
Eager inference checks its inputs once (one sync). Before issue 31: gated steps 7, pruning steps 31.
"""

from __future__ import annotations

import pytest
import torch
from test_ddp_families import FAMILIES, Step, _encoder, _halves

from nemo_sew.syncs import SyncCounter

TRAIN_BUDGET = {family: 0 for family in FAMILIES}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_training_step_has_no_host_synchronisation(family):
    enc = _encoder(family)
    x, lengths = _halves(0)[0]
    Step(enc)(x, lengths, step=1).backward()  # first calls may build caches
    with SyncCounter() as syncs:
        Step(enc)(x, lengths, step=2).backward()
    assert syncs.total <= TRAIN_BUDGET[family], dict(syncs.counts)


def test_cif_step_synchronises_once_for_its_segment_count():
    from nemo_sew.encoder import build_encoder

    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"squeeze": {"values": [1.5]}}).train()
    x, lengths = _halves(0)[0]
    with SyncCounter() as syncs:
        enc.run(x, lengths, enc.draw(0)).hidden.sum().backward()
    assert syncs.total == 1, dict(syncs.counts)


def test_eager_inference_checks_its_inputs_with_one_synchronisation():
    enc = _encoder("plain").eval()
    x, lengths = _halves(0)[0]
    with SyncCounter() as syncs, torch.no_grad():
        enc.run(x, lengths)
    assert syncs.total == 1, dict(syncs.counts)


def test_the_counter_sees_what_waits():
    t = torch.arange(5.0)
    with SyncCounter() as syncs:
        t.sum().item()
        bool(t.any())
        t[t > 2]
        t.tolist()
    assert syncs.counts["item"] == 2 and syncs.counts["nonzero"] == 1 and syncs.counts["tolist"] == 1


def test_a_ctc_model_step_has_no_host_synchronisation():
    """Preprocessor, encoder, decoder, CTC loss and backward of the CTC model (what its training_step runs)."""
    from nemo_sew.quant.model import build_tiny_ctc

    model = build_tiny_ctc("tiny_mel", num_layers=2).train()
    x, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 12000])
    targets, target_lengths = torch.randint(0, 27, (2, 10)), torch.tensor([10, 7])

    def step():
        log_probs, encoded_len, _, _ = model.forward_with_draw(x, lengths, draw=model.encoder.draw(1))
        model.loss(log_probs=log_probs, targets=targets, input_lengths=encoded_len, target_lengths=target_lengths).backward()

    step()
    with SyncCounter() as syncs:
        step()
    assert syncs.total == 0, dict(syncs.counts)
