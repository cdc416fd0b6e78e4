"""The demo end to end at a tiny scale: corpus -> training -> evaluation -> results.md (slow)."""

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    from nemo_sew.demo import run_demo

    result = run_demo(
        out_dir=tmp_path / "demo",
        data_dir=tmp_path / "data",
        recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml",
        hours=0.04,
        train_minutes=0.5,
        overrides=["model.train_ds.num_workers=0", "model.validation_ds.num_workers=0", "trainer.enable_progress_bar=false"],
    )
    results = (tmp_path / "demo" / "results.md").read_text()
    for needle in ("test CER", "GMACs", "RTFx", "NeMo ConformerEncoder", "(this run)", "cross-engine CER", "festival"):
        assert needle in results
    assert (tmp_path / "demo" / "model.nemo").stat().st_size > 100_000
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["cer"] == result.cer and 0.0 <= result.cer and result.utterances > 0
    assert saved["cross_cer"] == result.cross_cer and saved["cross_utterances"] == result.utterances  # same sentences
