"""``nemo-sew bench stochastic --methods`` on the tiny corpus: real training (2 steps per model) of fixed models,
two methods at equal steps and one at equal wall-clock time; the table and the raw numbers."""

import json
from pathlib import Path

import pytest

import nemo_sew  # noqa: F401
from conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["model.train_ds.batch_size=4", "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
         *TINY_ENCODER, "trainer.limit_val_batches=1", "augment=null"]  # fmt: skip


def test_cli_parses_bench_stochastic_methods():
    from benchmarks.cli import _cmd_bench_stochastic
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "stochastic", "--methods", "uniform", "sandwich", "--steps", "9",
                                      "--seeds", "3", "4", "--no-fixed", "trainer.max_epochs=2"])  # fmt: skip
    assert args.func is _cmd_bench_stochastic and args.methods == ["uniform", "sandwich"]
    assert (args.steps, args.seeds, args.factors, args.no_fixed, args.no_equal_time) == (9, [3, 4], [1, 2, 4], True, False)
    assert (args.finetune, args.finetune_factor, args.cost_rounds) == (False, 2, 8)
    assert args.overrides == ["trainer.max_epochs=2"]
    assert build_parser().parse_args(["bench", "stochastic"]).methods is None  # the older equal-steps table
    assert build_parser().parse_args(["bench", "stochastic", "--methods", "uniform", "--step-cost", "3"]).step_cost == 3


@pytest.mark.slow
def test_method_step_costs_times_every_method(tiny_corpus):
    from benchmarks.stochastic import method_step_costs

    section = method_step_costs(None, recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml", rounds=2, splits=tiny_corpus,
                                extra=["model.train_ds.batch_size=4", *TINY_ENCODER], command="nemo-sew bench stochastic")  # fmt: skip
    rows = {line.split(" | ")[0].strip("| "): line for line in section.splitlines() if line.startswith("| ") and "s / step" not in line}
    assert set(rows) == {"uniform", "sandwich", "inplace_distill", "weighted"}
    assert rows["uniform"].endswith("| 1.00x |")


def test_methods_are_checked(tmp_path):
    from benchmarks.stochastic import bench_stochastic_methods

    with pytest.raises(ValueError, match="stochastic method: expected one of"):
        bench_stochastic_methods(None, tmp_path, methods=["uniform", "dropout"], splits={"test": {}})
    with pytest.raises(ValueError, match="uniform"):
        bench_stochastic_methods(None, tmp_path, methods=["sandwich"], splits={"test": {}})
    with pytest.raises(ValueError, match="finetune_factor"):
        bench_stochastic_methods(None, tmp_path, methods=["uniform"], finetune_steps=5, fixed=False, splits={"test": {}})


@pytest.mark.slow
def test_bench_stochastic_methods_trains_and_tabulates(tiny_corpus, tmp_path):
    from benchmarks.stochastic import bench_stochastic_methods

    kwargs = dict(recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml", methods=["uniform", "sandwich"], steps=2,
                  seeds=[0], factors=[1, 2], finetune_steps=1, cost_rounds=2, extra=SMALL,
                  command="nemo-sew bench stochastic --methods uniform sandwich", splits=tiny_corpus)  # fmt: skip
    section = bench_stochastic_methods(None, tmp_path, **kwargs)
    raw = json.loads((tmp_path / "bench_stochastic_methods.json").read_text())
    assert list(raw) == ["fixed s=1", "fixed s=2", "uniform, equal steps", "sandwich, equal steps", "sandwich, equal time",
                         "fixed s=2 + 1 at s=2", "uniform + 1 at s=2", "sandwich + 1 at s=2"]  # fmt: skip
    for name, per_seed in raw.items():
        run = per_seed["0"]
        assert set(run["wer"]) == ({name[-1]} if name.startswith("fixed") or "+" in name else {"1", "2"})
        assert all(0 <= w <= 5 for w in [*run["wer"].values(), *run["cer"].values()])
        assert Path(run["nemo"]).is_file()
    # equal time from the measured step costs: sandwich (3 paths a step) gets fewer steps than uniform's 2
    costs = json.loads((tmp_path / "step_costs.json").read_text())["result"]
    assert costs["sandwich"] > costs["uniform"] > 0
    assert raw["sandwich, equal time"]["0"]["steps"] == max(1, round(2 * costs["uniform"] / costs["sandwich"]))
    assert json.loads((tmp_path / "step_costs.json").read_text())["settings"]["warmup_rounds"] == 1
    assert {raw[k]["0"]["steps"] for k in raw if "equal time" not in k and "+" not in k} == {2}
    assert {raw[k]["0"]["steps"] for k in raw if "+" in k} == {1}
    for needle in ("| fixed s=1 |", "| sandwich, equal time |", "Equal time", "| sandwich + 1 at s=2 |",
                   "nemo-sew bench stochastic --methods"):  # fmt: skip
        assert needle in section
    # the fine-tuned rows are relative to the fine-tuned fixed model, which itself has no bracket
    control = next(line for line in section.splitlines() if line.startswith("| fixed s=2 + 1 at s=2 |"))
    tuned = next(line for line in section.splitlines() if line.startswith("| sandwich + 1 at s=2 |"))
    assert "(" not in control.split(" | ", 2)[2] and "%)" in tuned
    # a second call with the same settings reuses every run (no training: the result files are untouched)
    stamps = {f: f.stat().st_mtime_ns for f in tmp_path.glob("*/result.json")}
    assert len(stamps) == len(raw)
    assert bench_stochastic_methods(None, tmp_path, **kwargs) == section  # the same table
    assert {f: f.stat().st_mtime_ns for f in tmp_path.glob("*/result.json")} == stamps
    # another fine-tuning length trains only the fine-tuning runs, in their own folders: the kept ones stay
    longer = bench_stochastic_methods(None, tmp_path, **{**kwargs, "finetune_steps": 2})
    assert "| sandwich + 2 at s=2 |" in longer
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps
    assert sorted(p.name for p in tmp_path.glob("*_2steps_seed0")) == ["fixed_s2_ft2_2steps_seed0", "sandwich_ft2_2steps_seed0",
                                                                       "uniform_ft2_2steps_seed0"]  # fmt: skip


def test_convergence_line_reports_each_fixed_models_last_fifth():
    from benchmarks.stochastic import convergence_line

    def run(*wers):
        return {"validation": [{"step": 200 * (i + 1), "val_wer": w} for i, w in enumerate(wers)]}

    results = {"fixed s=1": {0: run(0.9, 0.8, 0.7, 0.63), 1: run(0.9, 0.8, 0.7, 0.7)},
               "sandwich, equal steps": {0: run(0.9, 0.9, 0.9, 0.9)},
               "fixed s=2 + 200 at s=2": {0: run(0.9, 0.5)}}  # fmt: skip
    line = convergence_line(results)
    assert line.startswith("Validation WER over the last 20%")
    assert "fixed s=1 0.700 -> 0.630 (-10.0%), 0.700 -> 0.700 (+0.0%)" in line
    assert "sandwich" not in line and "+ 200" not in line  # only the fixed models, not the fine-tuned control
    assert convergence_line({"fixed s=1": {0: {"wer": {}}}}) == ""  # a run kept from before: no history, no line


def test_factor_losses_reports_each_factor_and_the_weighted_draws(tiny_corpus, tmp_path):
    """A (randomly initialised) stochastic model: one loss per factor, and the draw probabilities are what the
    weighted sampler computes for those losses with the model's own options (power 1 here, floor 0.4)."""
    from benchmarks.stochastic import factor_losses
    from nemo_sew.stochastic import StochasticOptions, StochasticTrainer
    from nemo_sew.train import build_model, load_config

    cfg = load_config(ROOT / "recipes" / "ctc_char_stochastic_tiny_mel.yaml", [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        "model.train_ds.batch_size=4", *TINY_ENCODER, "augment=null",
        "model.stochastic.power=1.0", "model.stochastic.floor=0.4",
    ])  # fmt: skip
    path = tmp_path / "stochastic.nemo"
    build_model(cfg).save_to(str(path))
    section = factor_losses([path], factors=[1, 2, 4], batches=2, splits=tiny_corpus, command="nemo-sew bench stochastic --factor-losses")
    assert "| model | loss s=1 | loss s=2 | loss s=4 | p(s=1) | p(s=2) | p(s=4) |" in section
    row = next(line for line in section.splitlines() if line.startswith(f"| `{path}` |"))
    cells = [float(c) for c in row.strip("| \n").split(" | ")[1:]]
    losses, p = cells[:3], cells[3:]
    assert all(0 < loss < 1e4 for loss in losses)
    expected = StochasticTrainer(StochasticOptions(method="weighted", power=1.0, floor=0.4))
    expected.ema_loss = dict(zip([1.0, 2.0, 4.0], losses))
    assert p == pytest.approx(expected.factor_weights([1.0, 2.0, 4.0]), abs=2e-3)
    assert min(p) >= 0.4 / 3 - 1e-3 and sum(p) == pytest.approx(1.0, abs=3e-3)
    assert p[losses.index(max(losses))] == max(p)  # the highest loss gets the most draws


def test_cli_parses_factor_losses():
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "stochastic", "--factor-losses", "a.nemo", "b.nemo", "--sampler-factors", "1", "2.5"])
    assert (args.factor_losses, args.sampler_factors, args.loss_batches) == (["a.nemo", "b.nemo"], [1.0, 2.5], 6)
