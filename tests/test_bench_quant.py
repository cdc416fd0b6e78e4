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
    assert "distilled from it (KL weight 1)" in text and "`fp + 250`:" not in text  # no control was trained
    assert "| study_conformer | +2.0% / +5.0% | +0.0% / +0.0% |" in text  # no fp_more: QAT against fp
    assert "| study_conformer | 3.60 | 0.100 | 14.00 MB | 2.50 MB |" in text


def test_fast_paths_transcribe_and_time_every_onnxruntime_form(tiny_ctc_nemo, tiny_corpus, tmp_path):
    from nemo_sew.bench.quant_paths import FORMS, fast_paths, fast_paths_markdown

    manifest = tiny_corpus["test"]["manifest"]
    rows = fast_paths(tiny_ctc_nemo, manifest, tmp_path, threads=1, seconds=1.0, runs=3)
    by = {r["runtime"]: r for r in rows}
    assert list(by) == ["PyTorch eager fp32", "onnxruntime fp32", *(label for label, *_ in FORMS)]
    # the fp32 graph decodes what the eager model decodes
    assert (by["onnxruntime fp32"]["wer"], by["onnxruntime fp32"]["cer"]) == pytest.approx(
        (by["PyTorch eager fp32"]["wer"], by["PyTorch eager fp32"]["cer"]), abs=1e-9)
    sizes = [by[label]["mb"] for label in ("onnxruntime fp32", FORMS[1][0], FORMS[2][0])]
    assert sizes[0] > sizes[1] > sizes[2]  # fp32 > int8 QDQ > 4-bit MatMulNBits
    assert all(r["ms"] > 0 and r["samples"] >= 3 for r in rows)
    lines = fast_paths_markdown({"tiny": rows}, 1, 1.0)
    assert sum(line.startswith("| tiny |") for line in lines) == len(rows)
