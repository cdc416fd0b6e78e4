"""``nemo-sew bench i3d-analysis``: the heat map, depth vs duration / speaking rate / added noise pictures and the
numbers, from a gated model trained a few steps with the annealing recipe on the tiny corpus; the rank
correlation with ties and the noise level."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import nemo_sew  # noqa: F401
from conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parents[1]


def test_spearman_with_ties_and_noise_level():
    from benchmarks.i3d_analysis import add_noise, spearman

    assert spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert spearman([3, 2, 2, 1], [1, 5, 5, 9]) == pytest.approx(-1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 2.0, 2.0]) == pytest.approx(0.8944, abs=1e-4)  # scipy's value
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))
    wav = torch.sin(torch.linspace(0, 500, 16000))[None]
    noisy = add_noise(wav, 10.0, torch.Generator().manual_seed(0))
    snr = 10 * torch.log10(wav.pow(2).mean() / (noisy - wav).pow(2).mean())
    assert float(snr) == pytest.approx(10.0, abs=0.2)


def test_cli_parses_bench_i3d_analysis():
    from benchmarks.cli import _cmd_bench_i3d_analysis
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "i3d-analysis", "m.nemo", "--manifest", "t.json", "--snr", "10,0"])
    assert args.func is _cmd_bench_i3d_analysis and args.snr == [10.0, 0.0] and args.out == "benchmarks/i3d_analysis"


@pytest.mark.slow
def test_analysis_draws_the_pictures(tiny_corpus, tmp_path):
    from benchmarks.i3d_analysis import analyse_i3d, analysis_markdown
    from nemo_sew.train import load_config, train

    overrides = [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        "model.train_ds.batch_size=4", "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
        "trainer.limit_val_batches=1", "trainer.max_steps=2", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "exp_manager.create_checkpoint_callback=false", f"exp_manager.exp_dir={tmp_path / 'runs'}", *TINY_ENCODER,
        "model.encoder.gates.init_logit=0.0",  # gate probabilities near 0.5: the threshold splits them
    ]  # fmt: skip
    model = train(load_config(ROOT / "recipes" / "i3d_tiny_mel_anneal.yaml", overrides))
    assert model.encoder.gate_options.tau_final == 0.3 and model.encoder.gate_options.penalty == "hinge"
    out = tmp_path / "analysis"
    result = analyse_i3d(model, tiny_corpus["test"]["manifest"], out, threshold=0.5, snrs=(10.0, 0.0), noise_utterances=3)
    for name in ("gates.png", "depth.png", "depth_noise.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["utterances"] == result["utterances"] > 0 and len(saved["noise"]) == 3
    n = min(3, saved["utterances"])  # the first 3 utterances (or all, if fewer) at each noise level
    assert [len(lv["depth"]) for lv in saved["noise"]] == [n, n, n]
    assert 0 <= saved["depth_min"] <= saved["depth_mean"] <= saved["depth_max"] <= 2
    assert saved["depth_std"] == pytest.approx(float(np.std(saved["depth"])))
    assert saved["noise"][0]["depth"] == pytest.approx(saved["depth"][:n])  # "clean" is the same forward
    assert np.array(saved["gate_matrix"]).shape == (2, len(saved["branches"]))
    first = analyse_i3d(model, tiny_corpus["test"]["manifest"], tmp_path / "first", threshold=0.5, snrs=(), noise_utterances=1,
                        max_utterances=1)  # fmt: skip
    assert first["utterances"] == 1 and first["depth"] == pytest.approx(saved["depth"][:1])
    assert first["manifest"] == str(tiny_corpus["test"]["manifest"])
    section = analysis_markdown(result, "nemo-sew bench i3d-analysis m.nemo", "m.nemo")
    assert "depth_noise.png" in section and f"std **{result['depth_std']:.3f}**" in section
