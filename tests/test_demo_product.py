"""The product demo (``nemo-sew demo --product``) end to end at a tiny scale: the all-dials recipe trained a few
steps, quantized keeping fp, swept over squeeze x depth threshold x weight bits with one parity-checked ONNX
file per profile, results.md opening with the one-line answer; ``nemo-sew pick`` chooses from its sweep.json."""

import json
from pathlib import Path

import pytest

from conftest import TINY_WIDTH
from nemo_sew.demo_product import answer_line, cheap_point, default_profile_name, goals, product_profiles_path
from nemo_sew.profile import load_profiles

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "all_dials_tiny_mel.yaml"

# a corner of recipes/profiles/product.yaml that still crosses every dial (the whole grid is 36 profiles)
TEST_PROFILES = """\
s2_t0.5: {squeeze: 2, depth_threshold: 0.5, weight_bits: 16}
s1_t0: {squeeze: 1, depth_threshold: 0.0, weight_bits: 16}
s4_t0.9: {squeeze: 4, depth_threshold: 0.9, weight_bits: 16}
s2_t0.5_w8: {squeeze: 2, depth_threshold: 0.5, weight_bits: 8}
s4_t0.9_w4: {squeeze: 4, depth_threshold: 0.9, weight_bits: 4}
"""


def test_product_grid_is_squeeze_by_threshold_by_bits():
    profiles = load_profiles(product_profiles_path(RECIPE))
    assert len(profiles) == 4 * 3 * 3
    assert {(p.squeeze, p.depth_threshold, p.weight_bits) for p in profiles.values()} == {
        (s, t, b) for s in (1, 2, 3, 4) for t in (0.0, 0.5, 0.9) for b in (16, 8, 4)}


def test_answer_picks_the_best_cer_at_half_the_macs():
    rows = [
        {"name": "s2_t0.5", "cer": 0.20, "encoder_gmacs_per_s": 0.10, "latency_ms_10s": 20.0,
         "profile": {"squeeze": 2, "depth_threshold": 0.5, "weight_bits": 16}},
        {"name": "s4_t0.9", "cer": 0.26, "encoder_gmacs_per_s": 0.04, "latency_ms_10s": 9.0,
         "profile": {"squeeze": 4, "depth_threshold": 0.9, "weight_bits": 16}},
        {"name": "s4_t0.5_w4", "cer": 0.21, "encoder_gmacs_per_s": 0.05, "latency_ms_10s": 10.0,
         "profile": {"squeeze": 4, "depth_threshold": 0.5, "weight_bits": 4}},
        {"name": "s3_t0", "cer": 0.19, "encoder_gmacs_per_s": 0.06, "latency_ms_10s": 12.0,
         "profile": {"squeeze": 3, "depth_threshold": 0.0, "weight_bits": 16}},
    ]  # fmt: skip
    assert cheap_point(rows, "s2_t0.5")["name"] == "s4_t0.5_w4"  # s3_t0 is above 50% of the MACs
    line = answer_line(rows, "s2_t0.5")
    assert line.startswith("**Answer:** at its default profile s2_t0.5") and "CER 0.200 at 20.0 ms" in line
    assert "s4_t0.5_w4 (squeeze 4, depth threshold 0.5, 4-bit weights) gives CER 0.210 (+5.0%)" in line
    # none at <= 50%: the answer names the cheapest profile and the goal is not met
    dear = [r for r in rows if r["name"] in ("s2_t0.5", "s3_t0")]
    assert cheap_point(dear, "s2_t0.5") is None
    assert "no profile runs at <= 50% of those MACs (the cheapest, s3_t0" in answer_line(dear, "s2_t0.5")
    assert goals(dear, "s2_t0.5")[-1].endswith("**not met**.")


@pytest.mark.slow
def test_product_demo_end_to_end(tiny_corpus, tmp_path):
    from nemo_sew.cli import main
    from nemo_sew.demo_product import run_product_demo
    from nemo_sew.safe_load import restore

    profiles = tmp_path / "profiles.yaml"
    profiles.write_text(TEST_PROFILES)
    out = tmp_path / "product"
    result = run_product_demo(
        out_dir=out, recipe=RECIPE, train_steps=3, splits=tiny_corpus, sweep_utterances=2, profiles_path=profiles,
        overrides=["trainer.enable_progress_bar=false", *TINY_WIDTH, "++model.encoder.arch.blocks.conv_channels=64"],
    )  # fmt: skip
    assert result.default == "s2_t0.5"
    results = (out / "results.md").read_text()
    lines = results.splitlines()
    assert lines[0] == "# nemo-sew demo results" and lines[2].startswith("**Answer:** at its default profile s2_t0.5")
    assert "of those MACs" in lines[2] or "no profile runs at <= 50%" in lines[2]
    assert "## Goals (issue 29.2)" in results and "(goal <= 0.15)" in results

    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["name"] for r in rows] == list(load_profiles(profiles))  # every profile ran
    assert {r["profile"]["squeeze"] for r in rows} == {1, 2, 4}
    assert {r["profile"]["depth_threshold"] for r in rows} == {0.0, 0.5, 0.9}
    assert {r["profile"]["weight_bits"] for r in rows} == {16, 8, 4}
    assert all(r["utterances"] == 2 and r["depth_mean"] is not None for r in rows)  # gated: depth is reported
    table = results[results.index("| profile | squeeze"):results.index("### ONNX")]
    assert all(f"| {r['name']} |" in table for r in rows)

    index = json.loads((out / "onnx" / "export.json").read_text())["profiles"]
    assert list(index) == [r["name"] for r in rows]
    assert all(f["passed"] for f in index.values()), {n: f.get("error") for n, f in index.items()}
    assert [index[n]["form"] for n in ("s2_t0.5", "s2_t0.5_w8", "s4_t0.9_w4")] == ["fp32", "qdq int8", "qdq int4"]
    assert (out / "pareto.png").stat().st_size > 10_000

    # one file holds every width (quantize --keep-fp) and its default profile is the fp one
    qmodel = restore(out / "model_q.nemo")
    assert default_profile_name(qmodel, load_profiles(profiles)) == "s2_t0.5"
    # nemo-sew pick chooses across every dial from this sweep.json
    budget = max(r["encoder_gmacs_per_s"] for r in rows)
    assert main(["pick", str(out), "--max-gmacs", str(budget)]) == 0


def test_cli_demo_product_routes_to_the_product_demo(monkeypatch, capsys):
    """``nemo-sew demo --product``: the all-dials recipe, its own output folder and step count unless given."""
    import nemo_sew.demo_product as product
    from nemo_sew.cli import main

    seen = {}
    monkeypatch.setattr(product, "run_product_demo", lambda **kw: seen.update(kw))
    assert main(["demo", "--product", "--train-minutes", "1", "--sweep-utterances", "0"]) == 0
    assert seen["recipe"] == product.PRODUCT_RECIPE and seen["out_dir"] == "outputs/demo_product"
    assert seen["train_minutes"] == 1 and seen["train_steps"] == product.PRODUCT_STEPS
    assert seen["sweep_utterances"] is None and seen["command"].startswith("nemo-sew demo --product")
    capsys.readouterr()
    assert main(["demo", "--product", "--no-sweep", "--train-minutes", "1"]) == 2  # a one-line user error
    assert "leave out --no-sweep" in capsys.readouterr().err
