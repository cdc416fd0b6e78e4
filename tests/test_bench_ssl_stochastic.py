"""``nemo-sew bench ssl-stochastic`` on the tiny corpus: stochastic-squeeze pre-training then fine-tuning (sampler off
per factor, and on), against fixed-squeeze pre-training and fine-tuning; the table and reuse of kept runs."""

import json

import pytest

import nemo_sew  # noqa: F401  (registers the package before conftest imports)
from conftest import TINY_ENCODER

QUIET = ["trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "model.train_ds.num_workers=0",
         "model.validation_ds.num_workers=0", "model.train_ds.batch_size=4", "trainer.limit_val_batches=1"]  # fmt: skip


def test_cli_parses_bench_ssl_stochastic():
    from benchmarks.cli import _cmd_bench_ssl_stochastic
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "ssl-stochastic", "--factors", "1", "4", "--seeds", "0", "1",
                                      "--finetune-method", "uniform", "--objective", "wav2vec2", "--no-random-init"])  # fmt: skip
    assert args.func is _cmd_bench_ssl_stochastic
    assert (args.factors, args.seeds, args.finetune_method, args.objective) == ([1, 4], [0, 1], "uniform", "wav2vec2")
    defaults = build_parser().parse_args(["bench", "ssl-stochastic"])
    assert (defaults.pretrain_steps, defaults.factors, defaults.finetune_method) == (1200, [1, 2, 4], "sandwich")
    assert args.no_random_init and not defaults.no_random_init


def test_bad_arguments_are_refused(tmp_path):
    from benchmarks.ssl_stochastic import bench_ssl_stochastic

    with pytest.raises(ValueError, match="objective"):
        bench_ssl_stochastic(None, tmp_path, objective="hubert2", splits={})
    with pytest.raises(ValueError, match="stochastic method: expected one of"):
        bench_ssl_stochastic(None, tmp_path, finetune_method="random", splits={})
    with pytest.raises(ValueError, match="positive"):
        bench_ssl_stochastic(None, tmp_path, pretrain_steps=0, splits={})


@pytest.mark.slow
def test_bench_ssl_stochastic_trains_tabulates_and_reuses(tiny_corpus, tmp_path):
    from nemo.core.classes import ModelPT

    from benchmarks.ssl_stochastic import bench_ssl_stochastic

    kwargs = dict(pretrain_steps=2, labelled_minutes=0.5, finetune_steps=2, factors=[1, 2], sampler_values=[1, 2],
                  seeds=[0], clusters=8, extra_pretrain=[*TINY_ENCODER, *QUIET], extra_finetune=[*QUIET, *TINY_ENCODER],
                  command="nemo-sew bench ssl-stochastic", splits=tiny_corpus)  # fmt: skip
    section = bench_ssl_stochastic(None, tmp_path / "out", **kwargs)
    raw = json.loads((tmp_path / "out" / "bench_ssl_stochastic.json").read_text())
    assert set(raw["pretrain"]) == {"fixed_s1", "fixed_s2", "stochastic"}
    # the fixed models pre-train at their factor; the stochastic one draws its factor and keeps its sampler
    fixed1 = ModelPT.restore_from(raw["pretrain"]["fixed_s1"]["nemo"]["2"], map_location="cpu")
    stochastic = ModelPT.restore_from(raw["pretrain"]["stochastic"]["nemo"]["2"], map_location="cpu")
    assert fixed1.encoder.sampler is None and float(fixed1.cfg.profile.squeeze) == 1
    assert stochastic.encoder.sampler is not None
    # the pre-trainings share one k-means
    assert (tmp_path / "out" / "kmeans" / "km8.npy").is_file() and not list((tmp_path / "out").glob("pretrain_*/km8.npy"))
    # fine-tuned at s with the sampler off: a fixed model at s; the stochastic fine-tuning keeps the sampler
    at1 = ModelPT.restore_from(tmp_path / "out" / "ft_stochastic_at_s1_seed0" / "model.nemo", map_location="cpu")
    assert at1.encoder.sampler is None and float(at1.cfg.profile.squeeze) == 1
    one = ModelPT.restore_from(tmp_path / "out" / "ft_stochastic_sandwich_seed0" / "model.nemo", map_location="cpu")
    assert one.encoder.sampler is not None and one.cfg.stochastic.method == "sandwich"
    # from random weights at s: the recipe's encoder, squeezed by s, and no pre-trained weights
    random1 = ModelPT.restore_from(tmp_path / "out" / "ft_random_s1_seed0" / "model.nemo", map_location="cpu")
    assert random1.encoder.sampler is None and float(random1.cfg.profile.squeeze) == 1
    assert random1.encoder.arch.compressor.squeeze == 1
    assert set(raw["finetune"]) == {"no pre-training (random initialisation), fine-tuned at s",
                                    "fixed pre-training and fine-tuning at s",
                                    "stochastic pre-training, fine-tuned at s (sampler off)",
                                    "stochastic pre-training, sandwich fine-tuning (one model)"}
    for per_factor in raw["finetune"].values():
        assert set(per_factor) == {"1", "2"}
        assert all(0 <= r["wer"] <= 5 and 0 <= r["cer"] <= 5 for runs in per_factor.values() for r in runs)
    rows = [line for line in section.splitlines() if line.startswith("| ") and "pre-training, fine-tuning" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| no pre-training (random initialisation), fine-tuned at s",
                                                     "| fixed pre-training and fine-tuning at s",
                                                     "| stochastic pre-training, fine-tuned at s (sampler off)",
                                                     "| stochastic pre-training, sandwich fine-tuning (one model)"]
    assert [row.count("%") for row in rows] == [2, 0, 2, 2]  # relative to the fixed row, at each of the 2 factors
    # a second call reuses every kept run: no result file is rewritten
    stamps = {f: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("*/result.json")}
    assert len(stamps) == 3 + 3 * 2 + 1
    assert bench_ssl_stochastic(None, tmp_path / "out", **kwargs) == section
    assert {f: f.stat().st_mtime_ns for f in (tmp_path / "out").glob("*/result.json")} == stamps
