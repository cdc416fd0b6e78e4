"""Plain DDP (gloo, ``find_unused_parameters=False``, what the recipes run) equals one process, for the encoder
features that skip work in a training step: LayerDrop, a pruning branch closed by its mask, I3D gates (local,
global), a stochastic squeeze sampler (issue 31, item 1).

Two spawned ranks each train on half of every batch; the one-process reference trains on the same two halves as
two micro-batches of one step (gradients averaged, as DDP does), with each half's random stream keyed by (step,
half) exactly as each rank keys its own by (step, rank) (``nemo_sew.resume.StepSeed``). Shared decisions
(LayerDrop, the squeeze draw) are functions of (seed, step) alone, so both runs take them the same. Before the fix
a dropped block or closed branch left its parameters without a gradient and DDP stopped with "Expected to have
finished reduction in the prior iteration". The recipe path (Lightning, ``nemo-sew train``) is covered by
``test_distributed_and_scripts.py`` with LayerDrop on.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

STEPS = 4
HALF = 2  # items per rank
SEED = 7
NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0}

FAMILIES = {
    "plain": {"num_layers": 2, "dropout": NO_DROPOUT},
    "layerdrop": {"num_layers": 4, "dropout": {**NO_DROPOUT, "layerdrop": 0.5}},
    "prune_closed_branch": {"num_layers": 2, "preset": "tiny_mel_conformer", "dropout": NO_DROPOUT,
                            "pruning": {"units": ["heads", "ffn", "branches"], "budget": "size", "target": 0.7}},
    "gates_local": {"num_layers": 2, "preset": "tiny_mel_conformer", "dropout": NO_DROPOUT, "gates": {"kind": "local", "init_logit": 0.0, "target": 0.5}},
    "gates_global": {"num_layers": 2, "dropout": NO_DROPOUT, "gates": {"kind": "global", "init_logit": 0.0, "target": 0.5}},
    "stochastic_layerdrop": {"num_layers": 3, "dropout": {**NO_DROPOUT, "layerdrop": 0.4},
                             "squeeze_sampler": {"squeeze": {"values": [1, 2, 3]}}},
}  # fmt: skip


class Step(nn.Module):
    """What DDP wraps: the encoder's training forward at the step's draw -> a scalar loss (per-item means, so the
    mean of two halves' gradients is the full batch's)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, step: int) -> torch.Tensor:
        from nemo_sew.nn.frontend import time_mask

        out = self.encoder.run(x, lengths, self.encoder.draw(step, seed=SEED))
        valid = time_mask(out.lengths, out.hidden.shape[1])[..., None].to(out.hidden.dtype)
        per_item = (out.hidden.pow(2) * valid).sum((1, 2)) / (valid.sum((1, 2)) * out.hidden.shape[-1])
        loss = per_item.mean()
        for value in out.aux_losses.values():
            loss = loss + value
        return loss


def _encoder(family: str) -> nn.Module:
    from nemo_sew.encoder import build_encoder

    torch.manual_seed(0)
    options = dict(FAMILIES[family])
    preset = options.pop("preset", "tiny_mel")
    blocks = {"heads": 2, "head_dim": 16, "ffn_dims": [64] * (2 if preset == "tiny_mel_conformer" else 1)}
    enc = build_encoder(preset, d_model=32, blocks=blocks, **options)
    if enc.pruning is not None:  # close layer 0's attention branch: its HardConcrete sample is exactly 0
        with torch.no_grad():
            enc.pruning.gates["l0_attn_branch"].log_alpha.fill_(-50.0)
    return enc.train()


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(2 * HALF, 80, 64, generator=g)
    lengths = torch.tensor([64, 50, 40, 61])
    return x, lengths


def _halves(step: int):
    x, lengths = _batch(step)
    return [(x[h * HALF : (h + 1) * HALF], lengths[h * HALF : (h + 1) * HALF]) for h in range(2)]


def _rank(rank: int, family: str, store: str, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        model = DistributedDataParallel(Step(_encoder(family)), find_unused_parameters=False)
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(STEPS):
            torch.manual_seed(step * 2 + rank)  # each rank's own stream (StepSeed: (seed, step, rank))
            x, lengths = _halves(step)[rank]
            opt.zero_grad()
            model(x, lengths, step).backward()
            opt.step()
        if rank == 0:
            torch.save(model.module.encoder.state_dict(), out)
    finally:
        dist.destroy_process_group()


def _reference(family: str) -> dict[str, torch.Tensor]:
    model = Step(_encoder(family))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        opt.zero_grad()
        for half, (x, lengths) in enumerate(_halves(step)):
            torch.manual_seed(step * 2 + half)
            (model(x, lengths, step) / 2).backward()
        opt.step()
    return model.encoder.state_dict()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_plain_ddp_equals_one_process(family):
    with tempfile.TemporaryDirectory() as tmp:
        store, out = os.path.join(tmp, "store"), os.path.join(tmp, "rank0.pt")
        mp.start_processes(_rank, args=(family, store, out), nprocs=2, join=True, start_method="spawn")
        ddp = torch.load(out)
    one = _reference(family)
    assert ddp.keys() == one.keys()
    worst = max(float((ddp[k].double() - one[k].double()).abs().max()) for k in ddp if ddp[k].is_floating_point())
    assert worst < 1e-5, f"{family}: DDP and one process differ by up to {worst}"
    start = _encoder(family).state_dict()
    assert any(not torch.equal(start[k], one[k]) for k in one if "layers" in k), "it trained"


def test_layerdrop_decisions_are_shared_and_drop():
    """The LayerDrop decision is a pure function of (seed, step, layer): the same in every process, different
    across steps and seeds, and close to the configured rate."""
    from nemo_sew.encoder import layerdrop_decisions

    draws = [layerdrop_decisions(0.25, SEED, step, 12) for step in range(400)]
    assert draws == [layerdrop_decisions(0.25, SEED, step, 12) for step in range(400)]
    assert draws != [layerdrop_decisions(0.25, SEED + 1, step, 12) for step in range(400)]
    rate = sum(len(d) for d in draws) / (400 * 12)
    assert 0.22 < rate < 0.28
    assert layerdrop_decisions(0.0, SEED, 3, 12) == frozenset()


def test_dropped_block_and_closed_branch_get_zero_gradients():
    """Every parameter has a gradient after a training step, zero for the skipped parts (what DDP needs)."""
    enc = _encoder("prune_closed_branch")
    loss = Step(enc)(*_halves(0)[0], step=0)
    loss.backward()
    missing = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    closed = enc.layers[0].attn.body.q_proj.weight.grad
    assert torch.count_nonzero(closed) == 0

    enc = _encoder("layerdrop")
    step = next(s for s in range(50) if 1 in enc.layerdrop_decisions(enc.draw(s, seed=SEED), 4))
    Step(enc)(*_halves(0)[0], step=step).backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    assert all(torch.count_nonzero(p.grad) == 0 for p in enc.layers[1].parameters())
