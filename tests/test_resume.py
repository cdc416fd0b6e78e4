"""Kill -9 and resume, exactly (issue 14, item 2): `nemo-sew train` killed after a checkpoint and run again with
the same command ends where an uninterrupted run ends (weights, optimizer state, LR within 1e-6), with the same
batches and squeeze draws after the resume."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import RandomSampler

from conftest import TINY_ENCODER
from nemo_sew.resume import ResumableBatchSampler

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "ctc_char_stochastic_tiny_mel.yaml"
STEPS, EVERY = 60, 10


def _command(corpus, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "nemo_sew.cli", "train", str(RECIPE),
        f"model.train_ds.manifest_filepath={corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={corpus['dev']['manifest']}",
        "model.train_ds.batch_size=4", "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
        *TINY_ENCODER, "model.encoder.dropout.hidden=0.1",  # dropout, SpecAugment, dither: random draws each step
        # waveform augmentation: random draws per sample at load time (nemo_sew.resume.SeededDataset)
        "augment={speed: {prob: 0.5}, reverb: {prob: 0.5}, noise: {prob: 0.5}}",
        "model.optim.sched.warmup_steps=3",
        "trainer.precision=32", "trainer.deterministic=true", f"trainer.max_steps={STEPS}", "trainer.max_time=null",
        "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false",
        "anneal_to_max_time=false", "seed=3", "progress_log_every=0",
        f"exp_manager.exp_dir={out / 'exp'}", "exp_manager.resume_if_exists=true",
        "exp_manager.resume_ignore_no_checkpoint=true",
        "exp_manager.checkpoint_callback_params.monitor=step", "exp_manager.checkpoint_callback_params.mode=max",
        "exp_manager.checkpoint_callback_params.save_top_k=-1", "exp_manager.checkpoint_callback_params.save_last=true",
        f"++exp_manager.checkpoint_callback_params.every_n_train_steps={EVERY}",
        "++exp_manager.checkpoint_callback_params.every_n_epochs=null",
        f"step_log={out / 'steps.jsonl'}",
    ]  # fmt: skip


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "exp").rglob("*.ckpt") if "last" not in p.name)


def _steps(out: Path) -> dict[int, dict]:
    records = [json.loads(x) for x in (out / "steps.rank0.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records}  # a step run twice (before and after the kill): the resumed run's


def _final(out: Path) -> dict:
    last = sorted((out / "exp").rglob("*last.ckpt"))
    assert last, f"no last checkpoint under {out}"
    return torch.load(last[-1], map_location="cpu", weights_only=False)


def _assert_close(a, b, where: str, tol: float = 1e-6) -> None:
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape, where
        assert torch.allclose(a.double(), b.double(), atol=tol, rtol=0), f"{where}: max diff {(a.double() - b.double()).abs().max()}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_close(a[k], b[k], f"{where}.{k}", tol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close(x, y, f"{where}[{i}]", tol)
    elif isinstance(a, float):
        assert abs(a - b) <= tol, f"{where}: {a} != {b}"


@pytest.mark.slow
def test_kill_9_after_a_checkpoint_and_resume_equals_an_uninterrupted_run(tiny_corpus, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    reference = subprocess.Popen(_command(tiny_corpus, straight), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip

    victim = subprocess.Popen(_command(tiny_corpus, killed), cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not _checkpoints(killed):  # the first checkpoint (step EVERY) is on disk
        assert victim.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    offset = random.uniform(0.0, 1.0)
    print(f"killing {offset:.2f} s after {_checkpoints(killed)[0].name}")
    time.sleep(offset)
    assert victim.poll() is None, "the run ended before the kill: make it longer"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    done_before = max(_steps(killed))
    records_before = len((killed / "steps.rank0.jsonl").read_text().splitlines())
    saved = max(int(p.name.split("step=")[1].split("-")[0].split(".")[0]) for p in _checkpoints(killed))
    assert saved < STEPS and done_before < STEPS

    resumed = subprocess.run(_command(tiny_corpus, killed), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "not resumable" not in resumed.stderr  # Lightning's warning for a loader it cannot resume
    assert reference.wait(timeout=600) == 0, reference.stderr.read()[-4000:]

    # the second run started after the last checkpoint, not from step 1
    records = [json.loads(x) for x in (killed / "steps.rank0.jsonl").read_text().splitlines()]
    first_resumed = records[records_before]["step"]
    assert first_resumed == saved + 1, f"resumed at step {first_resumed}, last checkpoint at {saved}"

    # the same batches, squeeze draws, losses and learning rates, step by step
    a, b = _steps(straight), _steps(killed)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert a[step]["lengths"] == b[step]["lengths"] and a[step]["targets"] == b[step]["targets"], f"batch of step {step}"
        assert a[step]["squeeze"] == b[step]["squeeze"], f"squeeze of step {step}"
        assert a[step]["lr"] == pytest.approx(b[step]["lr"], abs=1e-12)
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-5), f"loss of step {step}"
    assert len({a[s]["squeeze"] for s in a}) > 3  # the stochastic sampler was on

    # the final weights, optimizer state and LR schedule
    fa, fb = _final(straight), _final(killed)
    assert fa["global_step"] == fb["global_step"] == STEPS
    _assert_close(fa["state_dict"], fb["state_dict"], "state_dict")
    _assert_close(fa["optimizer_states"], fb["optimizer_states"], "optimizer")
    _assert_close(fa["lr_schedulers"], fb["lr_schedulers"], "lr_schedulers")


# ---------------------------------------------------------------------------------------------------- the sampler


def _sampler(n=23, b=4, world=1, rank=0, seed=5):
    return ResumableBatchSampler(RandomSampler(range(n)), seed=seed, batch_size=b, rank=rank, world=world)


def test_the_order_depends_on_seed_and_epoch_only():
    torch.manual_seed(1)
    first = list(_sampler())
    torch.manual_seed(2)  # the global RNG does not matter
    assert list(_sampler()) == first
    other = _sampler()
    other.set_epoch(1)
    assert list(other) != first
    assert list(_sampler(seed=6)) != first
    assert sorted(i for batch in first for i in batch) == list(range(23))


def test_a_mid_epoch_resume_continues_with_the_next_batch():
    run = _sampler()
    run.set_epoch(2)
    batches = []
    for batch in run:
        run.mark_consumed()  # what the model does at each training batch
        batches.append(batch)
        if len(batches) == 3:
            state = run.state_dict()  # a checkpoint after the third batch
    fresh = _sampler(seed=99)  # the checkpoint's seed wins
    fresh.load_state_dict(state)
    assert list(fresh) == batches[3:]
    fresh.set_epoch(3)  # the next epoch starts from its first batch
    assert len(list(fresh)) == len(batches)


def test_ranks_split_the_batches_of_one_process():
    """Batch k of rank r holds every world-th sample of one process's batch k with batch_size * world."""
    single = list(_sampler(n=24, b=8))
    ranks = [list(_sampler(n=24, b=4, world=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, batch in enumerate(single):
        assert sorted(ranks[0][k] + ranks[1][k]) == sorted(batch)


def test_a_lhotse_sampler_resumes_with_the_next_batch(tiny_corpus):
    from lhotse import CutSet
    from lhotse.dataset import DynamicBucketingSampler

    cuts = CutSet.from_file(tiny_corpus["train"]["cuts"])

    def sampler():
        inner = DynamicBucketingSampler(cuts, max_duration=12.0, num_buckets=2, shuffle=True, seed=0)
        return ResumableBatchSampler(inner, seed=4, batches_from_inner=True)

    run = sampler()
    run.set_epoch(1)
    seen = []
    for batch in run:
        run.mark_consumed()
        seen.append([c.id for c in batch])
        if len(seen) == 2:
            state = run.state_dict()
    assert len(seen) > 3
    resumed = sampler()
    resumed.load_state_dict(state)
    assert [[c.id for c in batch] for batch in resumed] == seen[2:]


def test_a_run_killed_before_its_last_checkpoint_resumes_from_the_newest_one(tmp_path):
    """exp_manager resumes from ``*last.ckpt`` only; a kill between a step checkpoint and ``last.ckpt`` must not
    restart training from scratch (this happened to the kill test above on a loaded machine)."""
    import lightning.pytorch as pl
    from omegaconf import OmegaConf

    from nemo_sew.train import _resume_from_newest_checkpoint

    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    for step in (10, 20):
        (ckpt_dir / f"run--step={step}.ckpt").write_bytes(b"x")
        time.sleep(0.02)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    em = OmegaConf.create({"resume_if_exists": True})
    _resume_from_newest_checkpoint(trainer, em, tmp_path)
    assert trainer.ckpt_path == str(ckpt_dir / "run--step=20.ckpt")
    from nemo.utils.callbacks.nemo_model_checkpoint import NeMoModelCheckpoint

    NeMoModelCheckpoint.format_checkpoint_unfinished_marker_path(ckpt_dir / "run--step=20.ckpt").touch()  # being written
    trainer.ckpt_path = None
    _resume_from_newest_checkpoint(trainer, em, tmp_path)
    assert trainer.ckpt_path == str(ckpt_dir / "run--step=10.ckpt")
    trainer.ckpt_path = None
    _resume_from_newest_checkpoint(trainer, OmegaConf.create({"resume_if_exists": False}), tmp_path)
    assert trainer.ckpt_path is None



def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_augmented_samples_repeat_per_seed_epoch_and_index(tiny_corpus, tmp_path):
    """SeededDataset: a sample's waveform augmentation depends on (seed, epoch, index) only -- not on the global
    RNG state, the batch it lands in, or what was loaded before (what makes a resumed run augment alike)."""
    import numpy as np
    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset
    from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations

    from nemo_sew.augment import augmentor_config
    from nemo_sew.resume import SeededBatch, SeededDataset

    section = {"speed": {"prob": 1.0}, "reverb": {"prob": 1.0}, "noise": {"prob": 1.0}}
    kwargs = dict(manifest_filepath=str(tiny_corpus["train"]["manifest"]), labels=list(" abcdefghijklmnopqrstuvwxyz'"),
                  sample_rate=16000)  # fmt: skip
    clean = AudioToCharDataset(**kwargs)
    seeded = SeededDataset(AudioToCharDataset(**kwargs, augmentor=process_augmentations(augmentor_config(section, tmp_path))))
    first = seeded[SeededBatch([0, 1], [7, 0])]
    random.seed(123), np.random.seed(123), torch.manual_seed(123)  # another global RNG state
    seeded[SeededBatch([2], [7, 0])]  # and another sample loaded in between
    again = seeded[SeededBatch([1, 0], [7, 0])]  # the same samples in another batch order
    assert _same(first[0][0], again[1][0]) and _same(first[1][0], again[0][0])
    assert not _same(first[0][0], seeded[SeededBatch([0], [7, 1])][0][0]), "another epoch draws another augmentation"
    assert not _same(first[0][0], clean[0][0]), "the augmentation changed the audio"
