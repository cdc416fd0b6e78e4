"""Stochastic training methods (nemo_sew.stochastic): which profiles each step runs, the distillation loss,
gradients through every path, training a few steps with each method, and DDP-consistent weighted draws."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.multiprocessing as mp

from conftest import TINY_ENCODER
from nemo_sew import SqueezeCTCModel
from nemo_sew.stochastic import METHODS, StochasticOptions, StochasticTrainer, distill_loss
from nemo_sew.train import load_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ctc_char_tiny_mel.yaml"
VALUES = [1, 2, 3, 4]


def _model(tiny_corpus, method: str, **options) -> SqueezeCTCModel:
    opts = ", ".join(f"{k}: {v}" for k, v in {"method": method, **options}.items())
    cfg = load_config(RECIPE, [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        "model.train_ds.batch_size=4", "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
        *TINY_ENCODER, "++model.encoder.arch.expander=phase",
        "+model.encoder.squeeze_sampler={squeeze: {values: [1, 2, 3, 4]}}", f"+model.stochastic={{{opts}}}",
    ])  # fmt: skip
    return SqueezeCTCModel(cfg=cfg.model)


def test_options_are_checked():
    assert StochasticOptions.from_config(None).method == "uniform"
    with pytest.raises(ValueError, match="expected one of"):
        StochasticOptions(method="random")
    with pytest.raises(ValueError, match="distill_weight"):
        StochasticOptions(method="inplace_distill", distill_weight=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        StochasticOptions.from_config({"method": "sandwich", "paths": 3})


def test_each_method_runs_its_own_profiles(tiny_corpus):
    encoder = _model(tiny_corpus, "uniform").encoder.train()
    squeezes = {}
    for method in METHODS:
        trainer = StochasticTrainer(StochasticOptions(method=method))
        per_step = [[(p.draw.profile.squeeze, p.role) for p in trainer.paths(encoder, step)] for step in range(40)]
        assert per_step == [[(p.draw.profile.squeeze, p.role) for p in trainer.paths(encoder, step)] for step in range(40)]
        squeezes[method] = per_step
    assert squeezes["uniform"] == [[(encoder.draw(s).profile.squeeze, "ctc")] for s in range(40)]
    for step, paths in enumerate(squeezes["sandwich"]):  # smallest, largest and the sampler's draw
        assert paths == [(1.0, "ctc"), (4.0, "ctc"), (encoder.draw(step).profile.squeeze, "ctc")]
    students = Counter()
    for (teacher, student) in squeezes["inplace_distill"]:
        assert teacher == (1.0, "teacher") and student[1] == "student" and student[0] in (2.0, 3.0, 4.0)
        students[student[0]] += 1
    assert len(students) == 3  # every squeezed factor is taught
    assert {p[0][0] for p in squeezes["weighted"]} == {1.0, 2.0, 3.0, 4.0}  # uniform before any loss is seen


def test_sandwich_interior_middle_trains_only_the_factors_between_the_extremes(tiny_corpus):
    encoder = _model(tiny_corpus, "sandwich").encoder.train()
    trainer = StochasticTrainer(StochasticOptions.from_config({"method": "sandwich", "middle": "interior"}))
    middles = Counter()
    for step in range(200):
        paths = trainer.paths(encoder, step)
        assert [p.draw.profile.squeeze for p in paths[:2]] == [1.0, 4.0]
        middles[paths[2].draw.profile.squeeze] += 1
        assert [p.draw.profile.squeeze for p in trainer.paths(encoder, step)] == [p.draw.profile.squeeze for p in paths]
    assert set(middles) == {2.0, 3.0} and min(middles.values()) > 70  # about half the steps each
    any_middle = StochasticTrainer(StochasticOptions(method="sandwich"))
    assert {any_middle.paths(encoder, step)[2].draw.profile.squeeze for step in range(200)} == {1.0, 2.0, 3.0, 4.0}
    with pytest.raises(ValueError, match="middle"):
        StochasticOptions(method="sandwich", middle="centre")
    continuous = SqueezeCTCModel(cfg=load_config(RECIPE, [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}", "model.train_ds.num_workers=0",
        *TINY_ENCODER, "++model.encoder.arch.expander=phase", "+model.encoder.squeeze_sampler={squeeze: {low: 1, high: 4}}",
    ]).model).encoder.train()  # fmt: skip
    with pytest.raises(ValueError, match="over values"):  # interior of a continuous range: a clear error, not a no-op
        trainer.paths(continuous, 0)


def test_method_names_and_variants():
    from nemo_sew.stochastic import method_config, method_override

    assert method_config("sandwich") == {"method": "sandwich"}
    # the benches' overrides, part of their kept runs' settings: unchanged for the four methods
    assert method_override("sandwich") == "+model.stochastic={method: sandwich}"
    assert method_override("sandwich_interior", "++") == "++model.stochastic={method: sandwich, middle: interior}"
    assert StochasticOptions.from_config(method_config("sandwich_interior")).middle == "interior"
    with pytest.raises(ValueError, match="sandwich_interior"):
        method_config("sandwich_any")


def test_weighted_favours_the_lagging_factor(tiny_corpus):
    encoder = _model(tiny_corpus, "weighted").encoder.train()
    trainer = StochasticTrainer(StochasticOptions(method="weighted", power=2.0, floor=0.2, ema=0.5))
    for s, loss in ((1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0)):
        trainer.update(s, torch.tensor(loss))
    weights = trainer.factor_weights([1.0, 2.0, 3.0, 4.0])
    assert weights[3] == pytest.approx(0.8 * 4 / 7 + 0.05) and sum(weights) == pytest.approx(1.0)
    drawn = Counter(trainer.paths(encoder, step)[0].draw.profile.squeeze for step in range(600))
    assert drawn[4.0] > 2 * drawn[1.0] and min(drawn.values()) > 0.03 * 600  # the floor keeps every factor
    trainer.update(4, torch.tensor(1.0))  # an EMA: the lag shrinks as the factor catches up
    assert trainer.ema_loss[4.0] == pytest.approx(1.5)
    trainer.update(4, torch.tensor(float("nan")))  # a skipped (non-finite) step changes nothing
    assert trainer.ema_loss[4.0] == pytest.approx(1.5)


def test_distill_loss_is_kl_from_the_detached_teacher_on_valid_frames():
    torch.manual_seed(0)
    teacher = torch.log_softmax(torch.randn(2, 7, 5), -1).requires_grad_()
    student = torch.log_softmax(torch.randn(2, 7, 5), -1).requires_grad_()
    lengths = torch.tensor([7, 4])
    assert float(distill_loss(teacher.detach(), teacher, lengths)) == pytest.approx(0.0, abs=1e-6)
    loss = distill_loss(student, teacher, lengths)
    loss.backward()
    assert loss > 0 and teacher.grad is None and student.grad.abs().sum() > 0
    assert student.grad[1, 4:].abs().sum() == 0  # padding frames do not count
    changed = student.detach().clone()
    changed[1, 4:] = 0.0
    assert float(distill_loss(changed, teacher, lengths)) == pytest.approx(float(loss.detach()))
    manual = (teacher.exp() * (teacher - student)).sum(-1)
    expected = (manual[0].sum() + manual[1, :4].sum()) / 11
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("method", ["sandwich", "inplace_distill"])
def test_every_path_sends_gradients(tiny_corpus, method):
    model = _model(tiny_corpus, method).train()  # its training data loader is built with it
    signal, signal_len, transcript, transcript_len = next(iter(model._train_dl))
    loss, log_probs, encoded_len, _, out, logs = model.stochastic_trainer().loss(
        model, signal, signal_len, transcript, transcript_len, step=3
    )
    # sandwich at step 3: s=1, s=4 and the draw (which may repeat one of them); distillation: s=1 and a student
    assert {"train_ctc_s1", "train_ctc_s4"} <= set(logs) if method == "sandwich" else "train_ctc_s1" in logs
    if method == "inplace_distill":
        assert len([k for k in logs if k.startswith("train_kd_s")]) == 1
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert log_probs.shape[1] >= int(encoded_len.max())


def test_paths_share_one_front_end_and_keep_the_per_path_loss_and_gradients(tiny_corpus):
    model = _model(tiny_corpus, "sandwich").train()  # no dropout, no SpecAugment; dither off: deterministic forwards
    model.preprocessor.featurizer.dither = 0.0
    signal, signal_len, transcript, transcript_len = next(iter(model._train_dl))
    fronts = []
    hook = model.encoder.frontend.register_forward_hook(lambda *args: fronts.append(1))
    step = 5
    paths = model.stochastic_trainer().paths(model.encoder, step)
    assert len({p.draw.profile.squeeze for p in paths}) >= 2
    loss = model.stochastic_trainer().loss(model, signal, signal_len, transcript, transcript_len, step=step)[0]
    assert len(fronts) == 1  # three paths, one front end
    loss.backward()
    shared = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    reference = 0.0
    for path in paths:  # each path through its own front end, as before the front end was shared
        log_probs, encoded_len, _, _ = model.forward_with_draw(signal, signal_len, draw=path.draw)
        reference = reference + model.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len,
                                           target_lengths=transcript_len) / len(paths)  # fmt: skip
    assert len(fronts) == 1 + len(paths)
    hook.remove()
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)
    assert set(shared) == {n for n, p in model.named_parameters() if p.grad is not None}
    assert any(n.startswith("encoder.projection.") for n in shared)  # the shared part has weights (the mel front end none)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(shared[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains(tiny_corpus, method):
    model = _model(tiny_corpus, method)
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0,
                         enable_model_summary=False)  # fmt: skip
    model.set_trainer(trainer)
    trainer.fit(model)
    changed = sum(not torch.equal(before[n], p) for n, p in model.encoder.named_parameters())
    assert changed == len(before)
    if method == "weighted":
        assert model.stochastic_trainer().ema_loss  # it has seen losses


def _ddp_worker(rank: int, world: int, init_file: str, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = StochasticTrainer(StochasticOptions(method="weighted", ema=0.0))
        for s in VALUES:  # each rank sees another loss for the same factor (its own batch)
            trainer.update(s, torch.tensor(1.0 + rank * s))
        results[rank] = dict(trainer.ema_loss)
    finally:
        torch.distributed.destroy_process_group()


def test_weighted_draws_agree_across_ddp_ranks(tmp_path):
    results = mp.Manager().dict()
    # fork: the ranks inherit the imported modules (spawn would re-import NeMo in each, ~20 s on 2 cores)
    mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True, start_method="fork")
    assert results[0] == results[1] == {float(s): 1.0 + s / 2 for s in VALUES}  # the rank mean, on both


def test_weighted_averages_survive_a_checkpoint():
    """``weighted``'s per-factor loss averages go into the Lightning checkpoint and come back on resume (they are
    not a function of the step)."""
    from nemo_sew.quant.model import build_tiny_ctc

    model = build_tiny_ctc("tiny_mel", num_layers=1, squeeze_sampler={"squeeze": {"values": [1, 2]}})
    model.stochastic_trainer().ema_loss.update({1.0: 2.5, 2.0: 3.25})
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    resumed = build_tiny_ctc("tiny_mel", num_layers=1, squeeze_sampler={"squeeze": {"values": [1, 2]}})
    resumed.on_load_checkpoint(checkpoint)
    assert resumed.stochastic_trainer().ema_loss == {1.0: 2.5, 2.0: 3.25}
