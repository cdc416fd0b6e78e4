"""Tests for manifests.shar: Lhotse Shar shards of a CutSet, read back by lhotse and by NeMo's lhotse loader.

The corpus is made here (noise bursts written with soundfile); nothing is downloaded. The slow test trains the
sharded LibriSpeech recipe two steps on shards of the synthetic ``tiny_corpus``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.dataset.collation import collate_audio

from manifests import cli as manifests_cli
from manifests.cli import main
from manifests.librispeech import prepare_librispeech_local
from manifests.shar import num_shards, shar_cut_ids, shar_paths, shard_size_for, write_shar

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
SHAR_RECIPE = ROOT / "recipes" / "librispeech" / "ssl_sew_tiny_shar.yaml"
PARTS = ("train-clean-100", "train-clean-360", "train-other-500")


def make_cuts(root: Path, n: int = 10) -> CutSet:
    """``n`` cuts of 2.2-3.6 s noise (FLAC, one WAV), each with a supervision; the last one is a span of its file."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    cuts = []
    for i in range(n):
        seconds = 2.2 + 0.15 * i
        suffix = "wav" if i == 1 else "flac"
        path = root / f"utt{i:02d}.{suffix}"
        sf.write(str(path), (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR, subtype="PCM_16")
        recording = Recording.from_file(path, recording_id=f"utt{i:02d}")
        start, duration = (0.5, recording.duration - 0.7) if i == n - 1 else (0.0, recording.duration)
        supervision = SupervisionSegment(
            id=f"utt{i:02d}", recording_id=recording.id, start=0.0, duration=duration, channel=0,
            text=f"utterance number {i}", speaker=f"spk{i % 3}", language="en", custom={"engine": "noise"},
        )  # fmt: skip
        cut = MonoCut(id=f"utt{i:02d}", start=start, duration=duration, channel=0, recording=recording,
                      supervisions=[supervision])  # fmt: skip
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> CutSet:
    return make_cuts(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def written(source: CutSet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[Path]]]:
    out = tmp_path_factory.mktemp("shar") / "train"
    return out, write_shar(source, out, shards=4)


class AudioBatch(torch.utils.data.Dataset):
    """The simplest dataset NeMo's lhotse loader accepts: a CutSet in, its ids and padded audio out."""

    def __getitem__(self, cuts: CutSet) -> dict:
        audio, lengths = collate_audio(cuts)
        return {"ids": [cut.id for cut in cuts], "audio": audio, "lengths": lengths}


def _same_audio(batch: dict, by_id: dict) -> None:
    for row, (cut_id, length) in enumerate(zip(batch["ids"], batch["lengths"].tolist())):
        expected = by_id[cut_id].load_audio()[0]
        assert length == len(expected)
        np.testing.assert_array_equal(batch["audio"][row, :length].numpy(), expected)


# ------------------------------------------------------------------------------------------------ writing


def test_shard_size_splits_into_about_n_shards() -> None:
    assert (shard_size_for(10, 4), num_shards(10, 4)) == (3, 4)
    assert (shard_size_for(28539, 128), num_shards(28539, 128)) == (223, 128)  # train-clean-100
    assert num_shards(148688, 128) == 128  # train-other-500
    assert num_shards(5, 4) == 3  # few cuts: a few shards fewer
    assert num_shards(3, 8) == 3
    with pytest.raises(ValueError, match="shards"):
        shard_size_for(10, 0)


def test_round_trip_equals_the_source(source: CutSet, written: tuple[Path, dict]) -> None:
    out, paths = written
    assert {k: len(v) for k, v in paths.items()} == {"cuts": 4, "recording": 4}
    assert paths == shar_paths(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for v in paths.values() for p in v)
    back = CutSet.from_shar(in_dir=out).to_eager()
    by_id = {cut.id: cut for cut in source}
    assert sorted(cut.id for cut in back) == sorted(by_id)
    assert [cut.id for cut in back] != sorted(by_id)  # shuffled before the split (shuffle_seed=0)
    assert [cut.id for cut in back] == shar_cut_ids(out)
    for cut in back:
        src = by_id[cut.id]
        assert cut.recording.sources[0].type == "memory"  # the audio lives in the shard, not in the file
        assert cut.duration == pytest.approx(src.duration)
        assert cut.supervisions == src.supervisions
        np.testing.assert_array_equal(cut.load_audio(), src.load_audio())  # FLAC: lossless for 16-bit sources


def test_unshuffled_shards_keep_the_order(source: CutSet, tmp_path: Path) -> None:
    write_shar(source, tmp_path / "s", shards=2, shuffle_seed=None, num_jobs=2)
    assert shar_cut_ids(tmp_path / "s") == [cut.id for cut in source]


def test_up_to_date_shards_are_kept_stale_ones_replaced(source: CutSet, tmp_path: Path) -> None:
    out = tmp_path / "shar" / "train"
    paths = write_shar(source, out, shards=4)
    mtimes = {p: p.stat().st_mtime_ns for v in paths.values() for p in v}
    assert write_shar(source, out, shards=4) == paths
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    fewer = write_shar(source.subset(first=6), out, shards=4)  # other cuts: rewritten
    assert len(shar_cut_ids(out)) == 6 and len(fewer["cuts"]) == 3
    assert len(write_shar(source, out, shards=2)["cuts"]) == 2  # another shard count: rewritten
    assert sorted(p.name for p in out.parent.iterdir()) == ["train"]  # no temporary directories left


def test_a_directory_with_other_files_is_never_replaced(source: CutSet, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="expected only Shar shards"):
        write_shar(source, out, shards=2)
    assert (out / "notes.txt").read_text() == "keep me"


def test_bad_input_is_named(source: CutSet, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shards: expected >= 1"):
        write_shar(source, tmp_path / "a", shards=0)
    with pytest.raises(ValueError, match="empty CutSet"):
        write_shar(CutSet.from_cuts([]), tmp_path / "b", shards=2)
    no_audio = MonoCut(id="silent", start=0, duration=1.0, channel=0)
    with pytest.raises(ValueError, match="silent: expected a cut with a recording"):
        write_shar(CutSet.from_cuts([no_audio]), tmp_path / "c", shards=1)
    twice = CutSet(list(source.subset(first=2)) * 2)
    with pytest.raises(ValueError, match="unique cut ids"):
        write_shar(twice, tmp_path / "d", shards=1)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ prepare


def test_prepare_librispeech_writes_shards(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from test_manifests_librispeech import UTTERANCES, write_librispeech

    corpus = write_librispeech(tmp_path / "src")
    out_dir = tmp_path / "out"
    assert main(["prepare", "librispeech", str(corpus), str(out_dir), "-p", "dev-clean", "--shards", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dev-clean"]["shar"] == str(out_dir / "shar" / "dev-clean")
    cuts = CutSet.from_file(out_dir / "dev-clean_cuts.jsonl.gz")
    back = CutSet.from_shar(in_dir=out_dir / "shar" / "dev-clean").to_eager()
    assert len(shar_paths(out_dir / "shar" / "dev-clean")["cuts"]) == 2
    assert sorted(cut.id for cut in back) == sorted(cut.id for cut in cuts) and len(back) == len(UTTERANCES)
    by_id = {cut.id: cut for cut in cuts}
    for cut in back:
        assert cut.supervisions == by_id[cut.id].supervisions
        np.testing.assert_array_equal(cut.load_audio(), by_id[cut.id].load_audio())
    # a prepared part: the shards come from its cuts file (no recipe run) and are kept when up to date
    shard = out_dir / "shar" / "dev-clean" / "recording.000000.tar"
    before = shard.stat().st_mtime_ns
    outputs = prepare_librispeech_local(corpus, out_dir, dataset_parts=["dev-clean"], shards=2)
    assert outputs["dev-clean"]["shar"] == out_dir / "shar" / "dev-clean" and shard.stat().st_mtime_ns == before
    assert set(prepare_librispeech_local(corpus, out_dir, dataset_parts=["dev-clean"])["dev-clean"]) == {"cuts", "manifest"}
    with pytest.raises(ValueError, match="shards"):
        prepare_librispeech_local(corpus, out_dir, shards=0)


def test_prepare_synthetic_writes_shards_per_split(
    source: CutSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The CLI's --shards step after prepare_synthetic (synthesis itself is tested in test_manifests_synthetic)."""
    import manifests.synthetic

    cuts_path = tmp_path / "train_cuts.jsonl.gz"
    source.to_file(cuts_path)
    fake = {"train": {"cuts": cuts_path, "manifest": tmp_path / "train.json"}}
    monkeypatch.setattr(manifests.synthetic, "prepare_synthetic", lambda *a, **k: fake)
    assert main(["prepare", "synthetic", str(tmp_path), "--shards", "3", "-j", "1"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["shar"] == str(tmp_path / "shar" / "train")
    assert sorted(shar_cut_ids(tmp_path / "shar" / "train")) == sorted(cut.id for cut in source)
    assert manifests_cli.build_parser().parse_args(["prepare", "synthetic", "x"]).shards is None


# ------------------------------------------------------------------------------------------------ NeMo


def test_nemo_lhotse_loader_reads_the_shards(source: CutSet, written: tuple[Path, dict]) -> None:
    from lhotse.dataset import IterableDatasetWrapper
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config

    out, _ = written
    config = {
        "input_cfg": [{"type": "lhotse_shar", "shar_path": str(out)}],
        "sample_rate": SR, "batch_duration": 8.0, "shuffle": False, "shard_seed": 0, "seed": 0, "num_workers": 0,
    }  # fmt: skip
    loader = get_lhotse_dataloader_from_config(config, global_rank=0, world_size=1, dataset=AudioBatch())
    assert isinstance(loader.dataset, IterableDatasetWrapper)  # shar: an iterable dataset, the sampler in the workers
    by_id = {cut.id: cut for cut in source}
    seen: list[str] = []
    for batch in loader:
        _same_audio(batch, by_id)
        seen += batch["ids"]
        if len(seen) >= 2 * len(by_id):
            break
    n = len(by_id)
    assert sorted(seen[:n]) == sorted(by_id)  # one pass over the shards holds every cut once
    assert len(seen) >= 2 * n  # and the stream goes on (repeat): the trainer's limit_train_batches ends an epoch


def test_shar_recipe_differs_from_ssl_sew_tiny_in_its_train_inputs_only() -> None:
    from omegaconf import OmegaConf

    from nemo_sew.train import load_config

    base = OmegaConf.to_container(load_config(SHAR_RECIPE.with_name("ssl_sew_tiny.yaml")))  # ${name} unresolved
    shar = OmegaConf.to_container(load_config(SHAR_RECIPE))
    changed = {"input_cfg", "shard_seed", "bucket_buffer_size", "shuffle_buffer_size"}
    assert {k: v for k, v in shar["model"]["train_ds"].items() if k not in changed} == {
        k: v for k, v in base["model"]["train_ds"].items() if k not in changed
    }
    shar["model"]["train_ds"] = base["model"]["train_ds"] = None
    assert {**shar, "name": None} == {**base, "name": None}
    base_cfg = load_config(SHAR_RECIPE.with_name("ssl_sew_tiny.yaml")).model.train_ds
    assert [item.type for item in base_cfg.input_cfg] == ["lhotse"] * 3
    assert base_cfg.shard_seed == 0  # ${seed}: one sampler order on every rank (the shar recipe: trng per worker)


def test_shar_recipe_config_builds_a_loader(source: CutSet, tmp_path: Path) -> None:
    """The recipe's own train_ds (three weighted lhotse_shar inputs, bucketing) through NeMo's lhotse loader."""
    from nemo.collections.common.data.lhotse import get_lhotse_dataloader_from_config
    from omegaconf import OmegaConf

    from nemo_sew.train import load_config

    for part in PARTS:
        write_shar(source, tmp_path / "shar" / part, shards=2, shuffle_seed=len(part))
    cfg = load_config(SHAR_RECIPE, [f"data_dir={tmp_path}"])
    train_ds = OmegaConf.to_container(cfg.model.train_ds, resolve=True)
    assert [item["shar_path"] for item in train_ds["input_cfg"]] == [str(tmp_path / "shar" / p) for p in PARTS]
    # CPU-sized: the recipe's batch of 87.5 s and 30 buckets need more than 10 short cuts
    train_ds.update(num_workers=1, pin_memory=False, batch_duration=8.0, num_buckets=2, bucket_buffer_size=50,
                    shuffle_buffer_size=20)  # fmt: skip
    loader = get_lhotse_dataloader_from_config(train_ds, global_rank=0, world_size=1, dataset=AudioBatch())
    by_id = {cut.id: cut for cut in source}
    batches = []
    for batch in loader:  # a worker process: the dataset, sampler and shar readers travel to it
        batches.append(batch)
        if len(batches) == 3:
            break
    for batch in batches:
        assert batch["ids"] and set(batch["ids"]) <= set(by_id)
        _same_audio(batch, by_id)


@pytest.mark.slow
def test_shar_recipe_trains_two_steps(tiny_corpus, tmp_path: Path) -> None:
    """``nemo-sew train recipes/librispeech/ssl_sew_tiny_shar.yaml`` on CPU: shards of the synthetic corpus stand in
    for the three LibriSpeech parts, the encoder runs one block; two optimizer steps and a validation."""
    train = CutSet.from_file(tiny_corpus["train"]["cuts"])
    for i, part in enumerate(PARTS):
        write_shar(train, tmp_path / "data" / "shar" / part, shards=2, shuffle_seed=i)
    steps = tmp_path / "steps.jsonl"
    overrides = [
        f"data_dir={tmp_path / 'data'}", f"model.validation_ds.cuts_path={tiny_corpus['dev']['cuts']}",
        "trainer.accelerator=cpu", "trainer.devices=1", "trainer.strategy=auto", "trainer.precision=32",
        "trainer.max_steps=2", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.val_check_interval=2", "trainer.accumulate_grad_batches=1", "trainer.enable_progress_bar=false",
        # one loader worker, as in real runs: with none, lhotse's concurrent-bucketing thread would read the endless
        # shar stream in the main process and keep it from exiting (concurrent_bucketing=false avoids that too)
        "++model.encoder.arch.num_layers=1", "model.train_ds.num_workers=1", "model.train_ds.pin_memory=false",
        "model.train_ds.batch_duration=12.0", "model.train_ds.num_buckets=2", "model.train_ds.bucket_buffer_size=200",
        "model.train_ds.shuffle_buffer_size=100", "model.train_ds.min_duration=0.5",
        "model.validation_ds.num_workers=0", "model.validation_ds.pin_memory=false",
        f"exp_manager.exp_dir={tmp_path / 'exp'}", "exp_manager.create_tensorboard_logger=false",
        "exp_manager.resume_if_exists=false", "exp_manager.checkpoint_callback_params.always_save_nemo=false",
        f"step_log={steps}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "nemo_sew.cli", "train", str(SHAR_RECIPE), *overrides], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in steps.with_name("steps.rank0.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in records)
