"""The quantization study (benchmarks.quant): a tiny real study whose re-runs retrain only what their settings
change, and the report's relative-change table."""

from __future__ import annotations

import pytest

from benchmarks.quant import bench_quant, quant_markdown


def _row(fp=(0.5, 0.2), ptq4=(0.51, 0.21), qat4=(0.5, 0.2)):
    return {"fp": list(fp), "ptq": {4: list(ptq4)}, "qat": {4: list(qat4)}, "bytes": {16: 14e6, 4: 2.5e6},
            "params_m": 3.6, "gmacs_per_s": 0.1, "minutes": 30.0}  # fmt: skip


@pytest.mark.slow
def test_study_reruns_retrain_only_what_their_settings_change(tiny_corpus, tmp_path):
    """Real NeMo trainings of a few steps each. Adding a bit width trains only its QAT model; the same settings
    again train nothing and measure nothing (the kept row); other fine-tuning steps retrain fp and everything after it."""
    tiny = ["model.train_ds.batch_size=4", "model.validation_ds.batch_size=4", "trainer.val_check_interval=1.0"]

    def study(bits, finetune_steps=2):
        return bench_quant(None, tmp_path, families=["study_conformer"], bits=bits, pretrain_steps=2,
                           finetune_steps=finetune_steps, qat_steps=2, clusters=8, extra=tiny,
                           splits=tiny_corpus)[1]["study_conformer"]  # fmt: skip

    fam = tmp_path / "study_conformer"
    row = study([16, 4])
    assert set(row["ptq"]) == {4} and set(row["qat"]) == {4} and set(row["bytes"]) == {16, 4}  # int keys
    assert row["bytes"][4] < row["bytes"][16] and len(row["fp"]) == 2 and row["fp_more"]
    times = {p.name: p.stat().st_mtime_ns for p in fam.glob("*.nemo")}
    assert set(times) == {"ssl.nemo", "fp.nemo", "fp_more.nemo", "qat4.nemo"}
    trained = sum(float((fam / f"{name}.minutes").read_text()) for name in times)  # each training's own minutes
    assert 0 < trained <= row["minutes"]

    row = study([16, 8, 4])
    assert set(row["ptq"]) == {8, 4} and set(row["qat"]) == {8, 4}
    assert {p.name: p.stat().st_mtime_ns for p in fam.glob("*.nemo") if p.name in times} == times  # all reused
    assert row["minutes"] >= trained  # the reused models' training still counts
    kept = (fam / "result.json").stat().st_mtime_ns
    assert study([16, 8, 4]) == row and (fam / "result.json").stat().st_mtime_ns == kept

    study([16, 8, 4], finetune_steps=3)
    after = {p.name: p.stat().st_mtime_ns for p in fam.glob("*.nemo")}
    assert after["ssl.nemo"] == times["ssl.nemo"]
    assert all(after[n] != times[n] for n in ("fp.nemo", "fp_more.nemo", "qat4.nemo"))


def test_report_states_relative_change_against_fp(tmp_path):
    text = quant_markdown({"study_conformer": _row()}, [16, 4], 400, 1500, 250, 2, 30.0, "nemo-sew bench quant",
                          tmp_path, distill=1.0)  # fmt: skip
    assert "distilled from it (KL weight 1)" in text and "`fp + 250`:" not in text  # no control was trained
    assert "| study_conformer | +2.0% / +5.0% | +0.0% / +0.0% |" in text  # no fp_more: QAT against fp
    assert "| study_conformer | 3.60 | 0.100 | 14.00 MB | 2.50 MB |" in text


def test_fast_paths_transcribe_and_time_every_onnxruntime_form(tiny_ctc_nemo, tiny_corpus, tmp_path):
    from benchmarks.quant_paths import FORMS, fast_paths, fast_paths_markdown

    manifest = tiny_corpus["test"]["manifest"]
    rows = fast_paths(tiny_ctc_nemo, manifest, tmp_path, threads=1, seconds=1.0, runs=3,
                      calibration=tiny_corpus["dev"]["manifest"], calibration_utterances=4)
    by = {r["runtime"]: r for r in rows}
    assert list(by) == ["PyTorch eager fp32", "onnxruntime fp32", *(label for label, *_ in FORMS)]
    # the fp32 graph decodes what the eager model decodes
    assert (by["onnxruntime fp32"]["wer"], by["onnxruntime fp32"]["cer"]) == pytest.approx(
        (by["PyTorch eager fp32"]["wer"], by["PyTorch eager fp32"]["cer"]), abs=1e-9)
    label = {form: label for label, form, _ in FORMS}
    sizes = [by[name]["mb"] for name in ("onnxruntime fp32", label["qdq"], label["matmul_nbits"])]
    assert sizes[0] > sizes[1] > sizes[2]  # fp32 > int8 QDQ > 4-bit MatMulNBits
    assert by[label["int8_static"]]["mb"] < sizes[0]  # int8 weights
    # the int8 static form decodes close to fp32 (calibrated on the dev split, scored on the test split)
    assert by[label["int8_static"]]["cer"] <= by["onnxruntime fp32"]["cer"] + 0.05
    assert all(r["ms"] > 0 and r["samples"] >= 3 for r in rows)
    lines = fast_paths_markdown({"tiny": rows}, 1, 1.0)
    assert sum(line.startswith("| tiny |") for line in lines) == len(rows)


def test_bench_fast_paths_command_on_a_trained_model_file(tiny_ctc_nemo, tiny_corpus, tmp_path, capsys):
    """``nemo-sew bench fast-paths MODEL.nemo``: one table with every runtime, int8 static calibrated on the dev split."""
    from nemo_sew.cli import main

    rc = main(["bench", "fast-paths", str(tiny_ctc_nemo), "--manifest", str(tiny_corpus["test"]["manifest"]),
               "--calibration", str(tiny_corpus["dev"]["manifest"]), "--calibration-utterances", "3", "--runs", "3",
               "--seconds", "1", "--out", str(tmp_path / "onnx")])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "onnxruntime int8 static" in out and "onnxruntime int8 dynamic" in out and "PyTorch eager fp32" in out
    assert "the first 3 utterances of" in out and (tmp_path / "onnx" / "int8_static_8.onnx").is_file()
