"""The quantization study's fast paths on trained models: the onnxruntime int8 and 4-bit forms of each study
family's fp model (PTQ), with the test WER/CER they give and their batch-1 latency, against fp32 eager and fp32
onnxruntime (``nemo-sew bench quant --fast-paths``).

``nemo-sew bench cpu`` times the same forms on random weights next to transformers' fp32 models (the speed
goal at equal weights); this is the other half of issue 13's goal: what those forms do to the WER of a trained
model. Each form is the whole CTC graph (mel features computed in PyTorch by :class:`OnnxCTCRunner`, as in
deployment); latency is :meth:`CTCRunner.logprobs` on one utterance of ``seconds`` of audio, features included,
every runtime timed in the same interleaved rounds.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Sequence

from benchmarks.report import threads_text
from nemo_sew.measure import runner_latency_ms, torch_threads

FORMS = (  # (label, nemo_sew.quant.onnx form, weight bits)
    ("onnxruntime int8 static (W8 per channel, A8 calibrated, fused attention)", "int8_static", 8),
    ("onnxruntime int8 dynamic (W8 per channel, A8 per batch)", "int8_dynamic", 8),
    ("onnxruntime QDQ int8 weights (fused MatMulNBits)", "qdq", 8),
    ("onnxruntime MatMulNBits 4-bit g32 (int8 compute)", "matmul_nbits", 4),
)


def fast_paths(
    fp_path: str | Path,
    manifest: str | Path,
    work_dir: str | Path,
    threads: int = 2,
    seconds: float = 10.0,
    runs: int = 10,
    max_timed_s: float = 20.0,
    batch_size: int = 16,
    calibration: str | Path | None = None,
    calibration_utterances: int = 32,
) -> list[dict[str, Any]]:
    """One row per runtime of the model ``fp_path``: ``runtime, wer, cer, mb, ms`` (median batch-1 latency).
    ``calibration``: the manifest whose first ``calibration_utterances`` utterances calibrate the int8 static form
    (never the test manifest); without it that form is left out."""
    import torch
    from nemo.collections.asr.models import ASRModel

    from manifests.audio import load_audio
    from nemo_sew.evaluate import error_rates, read_manifest
    from nemo_sew.export import OnnxCTCRunner, TorchCTCRunner, export_onnx
    from nemo_sew.quant.model import quantize_model
    from nemo_sew.quant.onnx import calibration_feeds, export_quantized_onnx

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    entries = read_manifest(manifest)
    paths, refs = [e["audio_filepath"] for e in entries], [e["text"] for e in entries]
    with torch_threads(threads):
        fp = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
        q = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
        quantize_model(q, (8, 4), keep_fp=False, group_size=32)
        runners: dict[str, Any] = {"PyTorch eager fp32": TorchCTCRunner(fp)}
        sizes = {"PyTorch eager fp32": None}
        fp_onnx = export_onnx(fp, work_dir / "fp32.onnx", check=False).path
        runners["onnxruntime fp32"], sizes["onnxruntime fp32"] = OnnxCTCRunner(fp_onnx, threads), fp_onnx.stat().st_size
        for label, form, bits in FORMS:
            q.set_profile({"weight_bits": bits})
            extra = {}
            if form == "int8_static":
                if calibration is None:
                    continue
                cal = read_manifest(calibration)[:calibration_utterances]
                waves = [load_audio(e["audio_filepath"])[0] for e in cal]
                extra["calibration"] = calibration_feeds(q, waves)
            path = export_quantized_onnx(q, work_dir / f"{form}_{bits}.onnx", form, check=False, **extra).path
            runners[label], sizes[label] = OnnxCTCRunner(path, threads), path.stat().st_size
        rows = []
        for label, runner in runners.items():
            with torch.inference_mode():
                wer, cer = error_rates(runner.transcribe(paths, batch_size=batch_size), refs)
            rows.append({"runtime": label, "wer": wer, "cer": cer, "mb": None if sizes[label] is None else sizes[label] / 1e6})
        times = runner_latency_ms(runners, seconds, runs, max_timed_s)
        for row in rows:
            row["ms"] = statistics.median(times[row["runtime"]])
            row["samples"] = len(times[row["runtime"]])
    return rows


def fast_paths_markdown(per_family: dict[str, list[dict[str, Any]]], threads: int, seconds: float) -> list[str]:
    """The table of :func:`fast_paths` rows per family, relative to its fp32 eager row."""
    lines = [
        "", f"Fast CPU paths of each fp model (PTQ; whole CTC graph, mel features in PyTorch; test WER / CER; "
        f"median batch-1 latency on {seconds:g} s of audio, {threads_text(threads)}, runtimes timed in interleaved rounds):",
        "", "| encoder | runtime | ONNX MB | test WER | rel. WER vs fp32 | test CER | latency (ms) | speed-up vs eager fp32 "
        "| vs onnxruntime fp32 |", "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for family, rows in per_family.items():
        eager = next(r for r in rows if r["runtime"].startswith("PyTorch"))
        ort = next(r for r in rows if r["runtime"] == "onnxruntime fp32")
        for r in rows:
            mb = "-" if r["mb"] is None else f"{r['mb']:.2f}"
            rel = f"{(r['wer'] / eager['wer'] - 1) * 100:+.1f}%" if eager["wer"] > 0 else "-"
            lines.append(f"| {family} | {r['runtime']} | {mb} | {r['wer']:.3f} | {rel} | {r['cer']:.3f} | {r['ms']:.1f} "
                         f"| {eager['ms'] / r['ms']:.2f}x | {ort['ms'] / r['ms']:.2f}x |")  # fmt: skip
    return lines


def family_rows(families: Sequence[str], out_dir: Path, manifest: str, threads: int, seconds: float = 10.0,
                calibration: str | None = None) -> dict:  # fmt: skip
    """:func:`fast_paths` of ``out_dir/<family>/fp.nemo`` for each family (ONNX files in ``<family>/onnx``);
    ``calibration``: the manifest the int8 static form calibrates on (the dev split)."""
    return {f: fast_paths(out_dir / f / "fp.nemo", manifest, out_dir / f / "onnx", threads, seconds,
                          calibration=calibration) for f in families}  # fmt: skip


__all__ = ["FORMS", "fast_paths", "fast_paths_markdown", "family_rows"]
