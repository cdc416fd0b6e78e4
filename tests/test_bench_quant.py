"""The quantization study's bookkeeping (nemo_sew.bench.quant): per-family results resume, models trained with
other settings are refused, and the report's relative-change table."""

from __future__ import annotations

import json

import pytest

from nemo_sew.bench.quant import _claim, _load_result, quant_markdown

SETTINGS = {"bits": [1, 2, 4, 8, 16], "pretrain_steps": 400, "finetune_steps": 1500, "qat_steps": 250}


def _row(fp=(0.5, 0.2), ptq4=(0.51, 0.21), qat4=(0.5, 0.2)):
    return {"fp": list(fp), "ptq": {4: list(ptq4)}, "qat": {4: list(qat4)}, "bytes": {16: 14e6, 4: 2.5e6},
            "params_m": 3.6, "gmacs_per_s": 0.1, "minutes": 30.0}  # fmt: skip


def test_results_resume_only_with_the_same_settings(tmp_path):
    path = tmp_path / "result.json"
    assert _load_result(path, SETTINGS) is None
    path.write_text(json.dumps({"settings": SETTINGS, "row": _row()}))
    row = _load_result(path, SETTINGS)
    assert row["ptq"] == {4: [0.51, 0.21]} and row["bytes"][16] == 14e6  # bit widths are ints again
    assert _load_result(path, {**SETTINGS, "qat_steps": 100}) is None
    path.write_text("{not json")
    assert _load_result(path, SETTINGS) is None


def test_models_of_other_settings_are_refused(tmp_path):
    _claim(tmp_path / "fam", SETTINGS)
    _claim(tmp_path / "fam", SETTINGS)  # the same settings: a resume
    with pytest.raises(ValueError, match="other settings"):
        _claim(tmp_path / "fam", {**SETTINGS, "finetune_steps": 10})


def test_report_states_relative_change_against_fp(tmp_path):
    text = quant_markdown({"study_conformer": _row()}, [16, 4], 400, 1500, 250, 2, 30.0, "nemo-sew bench quant",
                          tmp_path, distill=1.0)  # fmt: skip
    assert "distilled from it (KL weight 1)" in text
    assert "| study_conformer | +2.0% / +5.0% | +0.0% / +0.0% |" in text
    assert "| study_conformer | 3.60 | 0.100 | 14.00 MB | 2.50 MB |" in text
