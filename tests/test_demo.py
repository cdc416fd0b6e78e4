"""The demo end to end at a tiny scale: corpus -> training -> evaluation -> results.md ending with the profile
sweep and one parity-checked ONNX file per profile (slow); which profiles a model can run."""

import json
import re
from pathlib import Path

import onnx
import pytest

from conftest import TINY_WIDTH
from nemo_sew.demo_sweep import demo_profiles
from nemo_sew.quant.model import build_tiny_ctc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from nemo_sew.demo import run_demo

    tmp = tmp_path_factory.mktemp("demo")
    result = run_demo(
        out_dir=tmp / "demo",
        data_dir=tmp / "data",
        recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml",
        hours=0.04,
        train_steps=DEMO_TEST_STEPS,
        overrides=DEMO_TEST_OVERRIDES,
        sweep_utterances=2,
    )
    return tmp, result


DEMO_TEST_STEPS = 30
DEMO_TEST_OVERRIDES = ["model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
                       "trainer.enable_progress_bar=false",
                       *TINY_WIDTH]  # the recipe's four layers at a width whose sweep and exports take seconds  # fmt: skip


@pytest.mark.slow
def test_the_demo_repeats_exactly(demo_run):
    """A fixed number of fp32 steps from the recipe's seed: a second run gives the same model and the same metrics
    (what makes the README's demo CER hold on any machine; a time budget would end at a machine-dependent step)."""
    import torch

    from nemo_sew.demo import run_demo
    from nemo_sew.safe_load import restore

    tmp, first = demo_run
    again = run_demo(out_dir=tmp / "demo_again", data_dir=tmp / "data", recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml",
                     hours=0.04, train_steps=DEMO_TEST_STEPS, overrides=DEMO_TEST_OVERRIDES, sweep=False)  # fmt: skip
    assert (again.cer, again.wer, again.cross_cer) == (first.cer, first.wer, first.cross_cer)
    a = restore(tmp / "demo" / "model.nemo").state_dict()
    b = restore(tmp / "demo_again" / "model.nemo").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = (tmp / "demo_again" / "results.md").read_text()
    assert f"{DEMO_TEST_STEPS} steps" in results


def _sweep_rows(results: str) -> dict[str, list[str]]:
    """The profile sweep's table in results.md: row cells by profile name."""
    section = results[results.index("## Profile sweep"):]
    table = section[section.index("| profile | squeeze"):section.index("### ONNX")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table.splitlines()[2:] if line.startswith("|"))}  # fmt: skip


def _onnx_rows(results: str) -> dict[str, list[str]]:
    table = results[results.index("| profile | file |"):]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")]
                                          for line in table.splitlines()[2:] if line.startswith("|"))}  # fmt: skip


@pytest.mark.slow
def test_demo_end_to_end_small(demo_run):
    tmp, result = demo_run
    out = tmp / "demo"
    results = (out / "results.md").read_text()
    for needle in ("test CER", "GMACs", "RTFx", "NeMo ConformerEncoder", "(this run)", "cross-engine CER", "festival"):
        assert needle in results
    assert (out / "model.nemo").stat().st_size > 100_000
    saved = json.loads((out / "results.json").read_text())
    assert saved["cer"] == result.cer and 0.0 <= result.cer and result.utterances > 0
    assert saved["cross_cer"] == result.cross_cer and saved["cross_utterances"] == result.utterances  # same sentences

    # results.md ends with the sweep: after the main table, its own table, the ONNX files, the Pareto PNG last
    assert results.index("(this run)") < results.index("## Profile sweep")
    assert results.rstrip().splitlines()[-1] == "![WER vs latency per profile](pareto.png)"
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "2 evenly spaced utterances of the" in results  # the bounded sweep says what it used
    assert "SEW's factor-specific upsampler" in results  # the fixed squeeze-2 recipe: why no s=3 or 4
    rows = _sweep_rows(results)
    assert list(rows) == ["s2", "s2_w8", "s2_w4"]
    assert [rows[n][6] for n in rows] == ["fp", "8", "4"]  # the weight-bits column
    for cells in rows.values():
        assert 0.0 <= float(cells[7]) and 0.0 <= float(cells[8]) and float(cells[9]) > 0  # WER, CER, GMACs/s
    sweep = json.loads((out / "sweep.json").read_text())["rows"]
    assert all(r["utterances"] == 2 for r in sweep)
    assert len({r["encoder_gmacs_per_s"] for r in sweep}) == 1  # weight-only quantization: the same MACs

    files = _onnx_rows(results)
    assert list(files) == ["s2", "s2_w8", "s2_w4"]
    for name, cells in files.items():
        path = out / "onnx" / f"{name}.onnx"
        assert f"[`onnx/{name}.onnx`](onnx/{name}.onnx)" == cells[1]
        assert cells[-1] == "pass" and float(cells[4]) <= float(cells[5])
        assert abs(float(cells[3]) - path.stat().st_size / 1e6) < 0.01
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert json.loads(meta["profile"])["name"] == name
    assert files["s2_w8"][2] == "qdq int8" and files["s2_w4"][2] == "qdq int4"
    sizes = {name: (out / "onnx" / f"{name}.onnx").stat().st_size for name in files}
    assert sizes["s2_w4"] < sizes["s2_w8"] < 0.5 * sizes["s2"]
    assert not list((out / "onnx").glob("*.dequantized.onnx"))  # the exporter's intermediates are gone


@pytest.mark.slow
def test_profile_sweep_runs_every_factor_of_a_stochastic_model(demo_run):
    """``nemo-sew profile-sweep`` on a stochastic (sampler) model: every integer factor of its range and 4-bit
    weights, each with an ONNX file whose parity passes."""
    from nemo_sew.cli import main

    tmp, _ = demo_run
    sampler = {"squeeze": {"low": 1.0, "high": 4.0}}
    model = build_tiny_ctc("tiny_mel", d_model=64, num_layers=2, squeeze_sampler=sampler)  # small: quick exports
    model.set_profile({"squeeze": 2})
    path, out = tmp / "stochastic.nemo", tmp / "stochastic"
    model.save_to(str(path))
    assert main(["profile-sweep", str(path), "--manifest", str(tmp / "data" / "test.json"), "--out", str(out),
                 "--utterances", "2", "--bits", "4"]) == 0  # fmt: skip
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["name"] for r in rows] == ["s1", "s2", "s3", "s4", "s2_w4"]
    assert [r["profile"]["weight_bits"] for r in rows] == [16, 16, 16, 16, 4]
    gmacs = [r["encoder_gmacs_per_s"] for r in rows[:4]]
    assert gmacs == sorted(gmacs, reverse=True) and gmacs[0] > 1.5 * gmacs[3]  # compute falls with the squeeze
    files = list(json.loads((out / "onnx" / "export.json").read_text())["profiles"].values())  # export's layout
    assert [f["profile"] for f in files] == [r["name"] for r in rows]
    assert all(f["passed"] and f["max_abs_diff"] <= f["tolerance"] for f in files), files
    section = (out / "profile_sweep.md").read_text()
    assert "every factor swept is a training point" in section and "Off the training point" not in section
    assert re.search(r"^\| s3 \| 3\.0 \|", section, re.M) and "(onnx/s3.onnx)" in section
    assert section.rstrip().endswith("(pareto.png)") and (out / "pareto.png").stat().st_size > 10_000


def test_demo_profiles_follow_what_the_model_can_run():
    fixed = demo_profiles(build_tiny_ctc("tiny_mel"))  # SEW's upsampler: its trained factor only
    assert list(fixed.fp) == ["s2"] and list(fixed.quantized) == ["s2_w8", "s2_w4"] and not fixed.off_training
    assert "factor-specific upsampler" in fixed.notes[0]

    phase = demo_profiles(build_tiny_ctc("tiny_mel", expander="phase"))  # any factor, trained at 2
    assert list(phase.fp) == ["s2", "s3", "s4"] and phase.off_training == ["s3", "s4"]
    assert "off its training point" in phase.notes[0]

    values = demo_profiles(build_tiny_ctc("tiny_mel", squeeze_sampler={"squeeze": {"values": [1, 1.5, 3]}}))
    assert list(values.fp) == ["s1", "s1.5", "s3"] and not values.off_training

    gated = demo_profiles(build_tiny_ctc("tiny_mel", gates={"kind": "local"}), weight_bits=(8,))
    assert list(gated.fp) == ["s2", "s2_t0.5", "s2_t0.7", "s2_t0.9"] and list(gated.quantized) == ["s2_w8"]
    assert gated.fp["s2_t0.7"].depth_threshold == 0.7 and gated.quantized["s2_w8"].weight_bits == 8


def test_results_say_how_the_training_data_was_augmented():
    from omegaconf import OmegaConf

    from nemo_sew.demo import augment_summary

    on = OmegaConf.create({"augment": {"speed": {"prob": 0.5}, "reverb": {"prob": 0.0}, "noise": {"prob": 0.4}},
                           "model": {"spec_augment": {"freq_masks": 2, "time_masks": 1}}})  # fmt: skip
    assert augment_summary(on) == "augmented: speed, noise, SpecAugment 2 + 1 masks"
    off = OmegaConf.create({"augment": None, "model": {"spec_augment": {"freq_masks": 0, "time_masks": 0}}})
    assert augment_summary(off) == "no waveform augmentation, no SpecAugment"
    recipe = OmegaConf.load(ROOT / "recipes" / "ctc_char_tiny_mel.yaml")
    assert augment_summary(recipe) == "augmented: speed, reverb, noise, no SpecAugment"  # the demo recipe
    # speed, reverb and noise are on unless switched off; the voice perturbations when named, in the order applied
    voice = OmegaConf.merge(recipe, OmegaConf.load(ROOT / "recipes" / "ctc_char_tiny_mel_voiceaug.yaml"))
    assert augment_summary(voice).startswith("augmented: speed, vtlp, pitch, tilt, reverb, noise, band, codec, ")
    named = OmegaConf.create({"augment": {"pitch": {"prob": 0.3}, "speed": {"prob": 0}}, "model": {}})
    assert augment_summary(named) == "augmented: pitch, reverb, noise, no SpecAugment"


def test_results_name_the_corpus_engines(tmp_path):
    """results.md names the engines the corpus was made with (corpus.json) and the cross-engine test's engine."""
    from nemo_sew.demo import write_results
    from nemo_sew.evaluate import EvalResult

    result = EvalResult("test.json", 3, 0.5, 0.2, 1.0, 0.1, 5.0, 100.0, {}, cross_utterances=3, cross_cer=0.4,
                        cross_wer=0.7)  # fmt: skip
    path = tmp_path / "results.md"
    write_results(path, result, 60.0, 10, {"train": 0.5}, "make demo", engines=("espeak-ng",), cross_engine="flite")
    text = path.read_text()
    assert "Corpus: synthetic, espeak-ng (0.50 h train); " in text
    assert "cross-engine test = the test sentences said by flite, never heard in training, 3 utterances" in text
    write_results(path, result, 60.0, 10, {"train": 0.5}, "make demo")  # the default corpus
    assert "Corpus: synthetic, espeak-ng + flite (0.50 h train); " in path.read_text() and "by festival" in path.read_text()
