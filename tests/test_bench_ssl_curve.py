"""``nemo-sew bench ssl-curve`` on the tiny corpus: real pre-training (HuBERT iterations 1 and 2, wav2vec 2.0) with
snapshots, fine-tuning from each and from random initialisation, the table, the plot, and reuse of kept runs."""

import json
from pathlib import Path

import pytest

import nemo_sew  # noqa: F401
from conftest import TINY_ENCODER

QUIET = ["trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "model.train_ds.num_workers=0",
         "model.validation_ds.num_workers=0", "model.train_ds.batch_size=4", "trainer.limit_val_batches=1"]  # fmt: skip


def test_cli_parses_bench_ssl_curve():
    from benchmarks.cli import _cmd_bench_ssl_curve
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "ssl-curve", "--objectives", "hubert", "wav2vec2", "--pretrain-steps",
                                      "5", "10", "--labelled-minutes", "20", "60", "--seeds", "0", "1"])  # fmt: skip
    assert args.func is _cmd_bench_ssl_curve
    assert (args.objectives, args.pretrain_steps, args.labelled_minutes, args.seeds) == (
        ["hubert", "wav2vec2"], [5, 10], [20.0, 60.0], [0, 1])
    assert build_parser().parse_args(["bench", "ssl-curve"]).objectives == ["hubert", "hubert2", "wav2vec2"]
    assert build_parser().parse_args(["bench", "ssl-curve", "--iter2-layer", "all"]).iter2_layer is None


def test_labelled_subset_takes_the_first_minutes(tmp_path):
    from benchmarks.ssl_curve import labelled_subset

    manifest = tmp_path / "train.json"
    manifest.write_text("".join(json.dumps({"audio_filepath": f"{i}.wav", "duration": 30.0, "text": "a"}) + "\n"
                                for i in range(10)))  # fmt: skip
    path, seconds = labelled_subset(manifest, 1.0, tmp_path / "sub.json")
    assert seconds == 60.0 and [json.loads(x)["audio_filepath"] for x in path.read_text().splitlines()] == ["0.wav", "1.wav"]


def test_bad_arguments_are_refused(tmp_path):
    from benchmarks.ssl_curve import bench_ssl_curve

    with pytest.raises(ValueError, match="objectives"):
        bench_ssl_curve(None, tmp_path, objectives=["data2vec"], splits={})
    with pytest.raises(ValueError, match="positive"):
        bench_ssl_curve(None, tmp_path, pretrain_steps=[0, 5], splits={})


@pytest.mark.slow
def test_bench_ssl_curve_trains_tabulates_and_reuses(tiny_corpus, tmp_path):
    from nemo.core.classes import ModelPT

    from benchmarks.ssl_curve import bench_ssl_curve

    kwargs = dict(objectives=["hubert", "hubert2", "wav2vec2"], pretrain_steps=[1, 2], labelled_minutes=[0.5],
                  finetune_steps=1, seeds=[0], clusters=8, iter2_layer=1, extra_pretrain=[*TINY_ENCODER, *QUIET],
                  extra_finetune=[*QUIET, *TINY_ENCODER], plot=tmp_path / "curve.png", command="nemo-sew bench ssl-curve",
                  splits=tiny_corpus)  # fmt: skip
    section = bench_ssl_curve(None, tmp_path / "out", **kwargs)
    raw = json.loads((tmp_path / "out" / "bench_ssl_curve.json").read_text())
    # one pre-training run per objective, a snapshot at each step; hubert2's targets come from hubert's final model
    for objective in ("hubert", "hubert2", "wav2vec2"):
        snaps = raw["pretrain"][objective]["nemo"]
        assert set(snaps) == {"1", "2"} and all(Path(p).is_file() for p in snaps.values())
    iter2 = ModelPT.restore_from(raw["pretrain"]["hubert2"]["nemo"]["2"], map_location="cpu")
    assert iter2.cfg.hubert.features == raw["pretrain"]["hubert"]["nemo"]["2"] and iter2.cfg.hubert.layer == 1
    step1 = ModelPT.restore_from(raw["pretrain"]["wav2vec2"]["nemo"]["1"], map_location="cpu")
    assert step1.cfg.objective == "wav2vec2"
    assert len(raw["finetune"]) == 1 + 3 * 2
    for runs in raw["finetune"].values():
        assert len(runs) == 1 and 0 <= runs[0]["cer"] <= 5
    rows = [line for line in section.splitlines() if line.startswith("| ") and "initialisation" not in line]
    assert [r.split(" | ")[0:2] for r in rows] == [["| random init", "-"]] + [
        [f"| {o}", str(s)] for o in ("hubert", "hubert2", "wav2vec2") for s in (1, 2)]
    assert rows[0].endswith("| - |") and "%" in rows[1]
    assert (tmp_path / "curve.png").stat().st_size > 1000 and "curve.png" in section
    # a second call reuses every kept run: no result file is rewritten
    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("*/result.json")}
    assert len(stamps) == 3 + 7
    assert bench_ssl_curve(None, tmp_path / "out", **kwargs) == section
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("*/result.json")} == stamps


def test_finetune_tag_keeps_another_set_of_fine_tunings_beside(tmp_path, monkeypatch):
    """Another fine-tuning setup on the same snapshots goes to its own run folders and raw file (here with the
    training runs replaced by recorders: the naming is under test, the runs are in the slow test above)."""
    import benchmarks.ssl_curve as ssl_curve

    manifest = tmp_path / "train.json"
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "duration": 30.0, "text": "a"}) + "\n")
    splits = {k: {"manifest": str(manifest)} for k in ("train", "dev", "test")}
    runs = []
    monkeypatch.setattr(ssl_curve, "pretrain_ssl", lambda run_dir, recipe, steps, *a, **k: {
        "minutes": 0.0, "val": {}, "nemo": {str(s): f"{run_dir}/s{s}.nemo" for s in steps}})  # fmt: skip
    monkeypatch.setattr(ssl_curve, "finetune_ctc", lambda run_dir, *a, **k: runs.append(run_dir.name) or {"wer": 0.5, "cer": 0.2})
    kwargs = dict(objectives=["hubert"], pretrain_steps=[5], labelled_minutes=[1], plot=None, splits=splits)
    ssl_curve.bench_ssl_curve(None, tmp_path, **kwargs)
    ssl_curve.bench_ssl_curve(None, tmp_path, finetune_tag="sew", **kwargs)
    assert runs == ["ft_random_1min_seed0", "ft_hubert_5_1min_seed0", "ft_sew_random_1min_seed0", "ft_sew_hubert_5_1min_seed0"]
    assert (tmp_path / "bench_ssl_curve.json").is_file() and (tmp_path / "bench_ssl_curve_sew.json").is_file()
