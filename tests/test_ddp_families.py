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

import contextlib
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


def _train_encoder_rank(rank: int, family: str) -> dict[str, torch.Tensor]:
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(Step(_encoder(family)), find_unused_parameters=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(STEPS):
        torch.manual_seed(step * 2 + rank)  # each rank's own stream (StepSeed: (seed, step, rank))
        x, lengths = _halves(step)[rank]
        opt.zero_grad()
        model(x, lengths, step).backward()
        opt.step()
    return model.module.encoder.state_dict()


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
def test_plain_ddp_equals_one_process(family, ddp_runs):
    ddp = _ddp_result(ddp_runs, "encoder", family, 1)
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


# ------------------------------------------------------------------------------------------------------
# model-level families: SSL objectives, a stochastic sandwich step, gradient accumulation

class ModelStep(nn.Module):
    """A whole model's training loss at the step's draw (what its training_step returns as ``loss``)."""

    def __init__(self, model: nn.Module, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, step: int) -> torch.Tensor:
        if self.kind == "ssl":
            return self.model(x, lengths, draw=self.model.encoder.draw(step, seed=SEED))["loss"]
        targets = torch.arange(1, 7).repeat(x.shape[0], 1)  # fixed transcripts of 6 characters
        target_lengths = torch.full((x.shape[0],), 6)
        return self.model.stochastic_trainer().loss(self.model, x, lengths, targets, target_lengths, step)[0]


def _ssl(objective: str) -> nn.Module:
    import numpy as np
    from omegaconf import OmegaConf

    from nemo_sew.encoder import encoder_config
    from nemo_sew.models.ssl import SqueezeSSLModel

    enc = {"_target_": "nemo_sew.SqueezeEncoder", **encoder_config("tiny_wfe_c", num_layers=2, dropout={
        **NO_DROPOUT, "layerdrop": 0.3}, squeeze_sampler={"values": [1, 2, 3]})}  # fmt: skip
    cfg = {"sample_rate": 16000, "preprocessor": {"_target_": "nemo_sew.WaveformPreprocessor"}, "encoder": enc,
           "objective": objective}  # fmt: skip
    if objective == "wav2vec2":
        cfg["wav2vec2"] = {"head_hidden": 32, "num_negatives": 5, "target_dropout": 0.0}
    else:
        path = os.path.join(tempfile.gettempdir(), f"nemo_sew_ddp_centroids_{os.getpid()}.npy")
        np.save(path, np.random.default_rng(0).normal(size=(12, 78)).astype(np.float32))
        cfg["hubert"] = {"num_clusters": 12, "centroids": path}
    torch.manual_seed(0)
    return ModelStep(SqueezeSSLModel(OmegaConf.create(cfg)).train(), "ssl")


def _sandwich() -> nn.Module:
    from omegaconf import open_dict

    from nemo_sew.quant.model import build_tiny_ctc

    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_mel", num_layers=2, dropout={**NO_DROPOUT, "layerdrop": 0.3},
                           squeeze_sampler={"squeeze": {"values": [1, 2, 3, 4]}})  # fmt: skip
    with open_dict(model.cfg):
        model.cfg.stochastic = {"method": "sandwich"}
    return ModelStep(model.train(), "ctc")


LR = {"ctc_sandwich": 0.002}  # its CTC loss starts near 60: a larger step amplifies fp32 rounding into chaos
MODEL_FAMILIES = {"ssl_wav2vec2": lambda: _ssl("wav2vec2"), "ssl_hubert": lambda: _ssl("hubert"),
                  "ctc_sandwich": _sandwich}  # fmt: skip


def _audio(step: int, items: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2000 + step)
    return torch.randn(items, 8000, generator=g) * 0.1, torch.tensor([8000, 6100, 7000, 5200][:items])


def _train_model_rank(rank: int, family: str, micro: int) -> dict[str, torch.Tensor]:
    """Each rank trains on its half of each step's batch, in ``micro`` micro-batches (gradient accumulation:
    the first ones under ``no_sync``, each with its own random stream, as StepSeed keys it)."""
    from torch.nn.parallel import DistributedDataParallel

    module = MODEL_FAMILIES[family]() if family in MODEL_FAMILIES else Step(_encoder(family))
    model = DistributedDataParallel(module, find_unused_parameters=False)
    opt = torch.optim.SGD(model.parameters(), lr=LR.get(family, 0.2))
    for step in range(3):
        x, lengths = _inputs(family, step)
        x, lengths = x[rank * 2 : rank * 2 + 2], lengths[rank * 2 : rank * 2 + 2]
        opt.zero_grad()
        for m in range(micro):
            torch.manual_seed(hash((step, rank, m)) % 2**31)
            part = slice(m * 2 // micro, (m + 1) * 2 // micro)
            with model.no_sync() if m < micro - 1 else contextlib.nullcontext():
                (model(x[part], lengths[part], step) / micro).backward()
        opt.step()
    return {k: v.detach() for k, v in model.module.named_parameters()}


MODEL_JOBS = [("ssl_wav2vec2", 1), ("ssl_hubert", 1), ("ctc_sandwich", 1), ("layerdrop", 2)]
JOBS = [("encoder", f, 1) for f in sorted(FAMILIES)] + [("model", f, m) for f, m in MODEL_JOBS]


def _all_jobs(rank: int, out: str) -> None:
    """Both ranks run every job, each in a fresh gloo process group (one spawn for the whole module: starting
    two processes and importing NeMo costs ~10 s). A job that raises (DDP's "Expected to have finished
    reduction" when a parameter gets no gradient) records its error and the next job starts cleanly."""
    from datetime import timedelta

    torch.set_num_threads(1)
    for i, (kind, family, micro) in enumerate(JOBS):
        name = os.path.join(out, f"{kind}-{family}-{micro}")
        dist.init_process_group("gloo", init_method=f"file://{out}/store{i}", rank=rank, world_size=2,
                                timeout=timedelta(seconds=120))  # fmt: skip
        try:
            state = _train_encoder_rank(rank, family) if kind == "encoder" else _train_model_rank(rank, family, micro)
            if rank == 0:
                torch.save(state, name + ".pt")
        except Exception as err:  # noqa: BLE001 - reported by the job's test
            if rank == 0:
                with open(name + ".err", "w") as f:
                    f.write(f"{type(err).__name__}: {err}")
        finally:
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("ddp_families"))
    mp.start_processes(_all_jobs, args=(out,), nprocs=2, join=True, start_method="spawn")
    return out


def _ddp_result(out: str, kind: str, family: str, micro: int) -> dict[str, torch.Tensor]:
    name = os.path.join(out, f"{kind}-{family}-{micro}")
    if os.path.exists(name + ".err"):
        pytest.fail(f"DDP run of {family} failed: {open(name + '.err').read()[:2000]}")
    return torch.load(name + ".pt")


def _inputs(family: str, step: int):
    return _audio(step) if family in MODEL_FAMILIES else _batch(step)


def _model_reference(family: str, micro: int) -> dict[str, torch.Tensor]:
    module = MODEL_FAMILIES[family]() if family in MODEL_FAMILIES else Step(_encoder(family))
    opt = torch.optim.SGD(module.parameters(), lr=LR.get(family, 0.2))
    for step in range(3):
        x, lengths = _inputs(family, step)
        opt.zero_grad()
        for rank in range(2):
            for m in range(micro):
                torch.manual_seed(hash((step, rank, m)) % 2**31)
                part = slice(rank * 2 + m * 2 // micro, rank * 2 + (m + 1) * 2 // micro)
                (module(x[part], lengths[part], step) / (2 * micro)).backward()
        opt.step()
    return {k: v.detach() for k, v in module.named_parameters()}


@pytest.mark.parametrize(("family", "micro"), MODEL_JOBS, ids=["ssl_wav2vec2", "ssl_hubert", "ctc_sandwich",
                                                                 "grad_accumulation_layerdrop"])  # fmt: skip
def test_plain_ddp_equals_one_process_for_models_and_accumulation(family, micro, ddp_runs):
    """SSL objectives (BatchNorm heads, Gumbel quantizer, negatives, span masks), a sandwich step (three paths of
    one front end) and gradient accumulation (``no_sync`` micro-batches) under plain DDP with LayerDrop on."""
    ddp = _ddp_result(ddp_runs, "model", family, micro)
    one = _model_reference(family, micro)
    assert ddp.keys() == one.keys()
    worst = max(float((ddp[k].double() - one[k].double()).abs().max()) for k in ddp)
    assert worst < 1e-5, f"{family}: DDP and one process differ by up to {worst}"
