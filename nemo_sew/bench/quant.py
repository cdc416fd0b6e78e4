"""``nemo-sew bench quant``: attention-only vs conformer encoders under low-bit weight quantization (trains models).

    nemo-sew bench quant --pretrain-steps 300 --finetune-steps 300 --qat-steps 100 --write BENCHMARKS.md

The seed question (arXiv 2311.02772): does an attention-only encoder degrade less than a conformer at low
weight bit widths? On the synthetic corpus, for each family (``study_conformer``, ``study_attn_deep_narrow``,
``study_attn_shallow_wide``: matched parameters and MACs, see ``tests/test_local_attention.py``):

1. HuBERT pre-training (``recipes/ssl_tiny_mel.yaml``, MFCC k-means targets), the same steps for all;
2. CTC fine-tuning (``recipes/ctc_char_finetune_tiny_mel.yaml``), the same steps;
3. PTQ at 8/4/2/1 bits (every encoder weight; CTC head fp) and QAT from the fp model
   (``recipes/qat_finetune.yaml``, ``qat_steps``, distilled from the fp model with ``qat_distill`` weight
   ``distill``, BiT's setting) at the same widths; test WER/CER of each;
4. the hypothesis: per-layer relative output error of each branch (attention, conv module, FFN) of the PTQ
   model against fp, on test audio, plotted against depth (``layer_error.png``).

Table 2 (size, MACs, CPU latency per width): the packed ``.nemo`` sizes and analytic MACs here; with
``--fast-paths`` the onnxruntime int8 and 4-bit forms of each fp model (the widths with CPU kernels) are
transcribed and timed (:mod:`nemo_sew.bench.quant_paths`).

Each family's results are kept in ``OUT/<family>/result.json`` with the settings that made them, and every
trained model is kept too: a re-run with the same settings resumes where a stopped one left off, and families
can run as separate processes (``--families``) before one run over all of them writes the report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from nemo_sew.bench.report import machine_line
from nemo_sew.cost import macs_per_second

log = logging.getLogger("nemo_sew.bench.quant")

FAMILIES = ("study_conformer", "study_attn_deep_narrow", "study_attn_shallow_wide")
BITS = (16, 8, 4, 2, 1)


def branch_errors(fp_model: Any, q_model: Any, audio: torch.Tensor, lengths: torch.Tensor) -> dict[str, list[float]]:
    """Relative error ``||y_q - y_fp|| / ||y_fp||`` of every branch body's output, per layer, on one batch.

    Each model runs on its own inputs (errors accumulate through depth, as in deployment). Keys: ``attn``,
    ``conv``, ``ffn`` (conformer ``ffn1``/``ffn2`` pooled), and ``block`` (the layer's output)."""
    def capture(model: Any) -> dict[tuple[int, str], torch.Tensor]:
        out: dict[tuple[int, str], torch.Tensor] = {}
        hooks = []
        for i, layer in enumerate(model.encoder.layers):
            for name in layer.branch_names:
                body = getattr(layer, name).body
                hooks.append(body.register_forward_hook(lambda m, a, o, key=(i, name): out.__setitem__(key, o[0].detach())))
            hooks.append(layer.register_forward_hook(lambda m, a, o, key=(i, "block"): out.__setitem__(key, o[0].detach())))
        with torch.no_grad():
            model(input_signal=audio, input_signal_length=lengths)
        for h in hooks:
            h.remove()
        return out

    fp, q = capture(fp_model), capture(q_model)
    result: dict[str, list[float]] = {}
    n = len(fp_model.encoder.layers)
    for kind in ("attn", "conv", "ffn", "block"):
        values = []
        for i in range(n):
            keys = [k for k in fp if k[0] == i and (k[1] == kind or (kind == "ffn" and k[1].startswith("ffn")))]
            if not keys:
                continue
            num = sum(float((q[k] - fp[k]).pow(2).sum()) for k in keys)
            den = sum(float(fp[k].pow(2).sum()) for k in keys)
            values.append((num / max(den, 1e-30)) ** 0.5)
        if values:
            result[kind] = values
    return result


def plot_layer_errors(errors: dict[str, dict[str, list[float]]], path: Path, bits: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    styles = {"attn": "-o", "conv": "--s", "ffn": ":^", "block": "-"}
    for family, per_kind in errors.items():
        for kind, values in per_kind.items():
            depth = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(depth, values, styles[kind], label=f"{family} {kind}", alpha=0.8)
    ax.set_xlabel("relative depth (layer / layers)")
    ax.set_ylabel(f"relative output error, {bits}-bit PTQ vs fp")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _rates(model: Any, manifest: str) -> tuple[float, float]:
    from nemo_sew.evaluate import error_rates, transcribe_manifest

    hyps, refs = transcribe_manifest(model, manifest)
    return error_rates(hyps, refs)


def _test_batch(manifest: str, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    import soundfile as sf

    entries = [json.loads(x) for x in Path(manifest).read_text().splitlines()[:count]]
    waves = [torch.tensor(sf.read(e["audio_filepath"], dtype="float32")[0]) for e in entries]
    lengths = torch.tensor([len(w) for w in waves])
    audio = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    return audio, lengths


def _load_result(path: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """A family's row from ``result.json`` if it was made with ``settings`` (JSON's string keys made ints again)."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        log.warning("%s: unreadable (%s), measuring again", path, e)
        return None
    if saved.get("settings") != settings:
        log.info("%s: made with other settings, measuring again", path)
        return None
    row = saved["row"]
    for key in ("ptq", "qat", "bytes"):
        row[key] = {int(k): v for k, v in row[key].items()}
    return row


def _claim(fam_dir: Path, settings: dict[str, Any]) -> None:
    """Mark ``fam_dir``'s models as made with ``settings``; refuse to reuse models made with others."""
    fam_dir.mkdir(parents=True, exist_ok=True)
    path = fam_dir / "settings.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise ValueError(f"{fam_dir} holds models trained with other settings ({path}); choose another --out or remove it")
    path.write_text(json.dumps(settings, indent=1))


def bench_quant(
    data_dir: str | Path,
    out_dir: str | Path,
    families: Sequence[str] = FAMILIES,
    bits: Sequence[int] = BITS,
    pretrain_steps: int = 300,
    finetune_steps: int = 300,
    qat_steps: int = 100,
    hours: float = 3.5,
    clusters: int = 50,
    error_bits: int = 2,
    distill: float = 1.0,
    fast_paths_threads: int | None = None,
    extra: Sequence[str] = (),
    finetune_extra: Sequence[str] = (),
    command: str = "",
) -> tuple[str, dict[str, Any]]:
    """Run the study (see the module docstring); returns the markdown section and the raw results."""
    from nemo.collections.asr.models import ASRModel

    from manifests.synthetic import prepare_synthetic
    from nemo_sew.quant.model import quantize_model
    from nemo_sew.quant.weights import storage_bytes
    from nemo_sew.ssl.targets import kmeans_from_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    train_m, dev, test = (splits[k]["manifest"] for k in ("train", "dev", "test"))
    centroids = out_dir / f"mfcc_km{clusters}.npy"
    if not centroids.exists():  # written under a temporary name: a parallel run never reads a partial file
        partial = out_dir / f"mfcc_km{clusters}.{os.getpid()}.partial.npy"
        kmeans_from_manifest(train_m, partial, "mfcc", num_clusters=clusters, max_hours=0.5)
        partial.replace(centroids)
    common = ["trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false", *extra]
    audio, lengths = _test_batch(test)
    results: dict[str, Any] = {}
    settings = {"bits": sorted(int(b) for b in bits), "pretrain_steps": pretrain_steps, "finetune_steps": finetune_steps,
                "qat_steps": qat_steps, "hours": hours, "clusters": clusters, "error_bits": error_bits,
                "distill": distill, "extra": list(extra), "finetune_extra": list(finetune_extra)}  # fmt: skip
    for family in families:
        fam_dir = out_dir / family
        cached = _load_result(fam_dir / "result.json", settings)
        if cached is not None:
            log.info("%s: results of an earlier run with the same settings (%s)", family, fam_dir / "result.json")
            results[family] = cached
            continue
        family_started = time.perf_counter()
        _claim(fam_dir, settings)
        ssl_path, fp_path = fam_dir / "ssl.nemo", fam_dir / "fp.nemo"
        if not ssl_path.exists() and not fp_path.exists():
            train(load_config("recipes/ssl_tiny_mel.yaml", [
                f"model.train_ds.manifest_filepath={train_m}", f"model.validation_ds.manifest_filepath={dev}",
                f"model.encoder.preset={family}", f"model.hubert.centroids={centroids}",
                f"model.hubert.num_clusters={clusters}", f"trainer.max_steps={pretrain_steps}",
                f"exp_manager.exp_dir={fam_dir / 'ssl'}", f"save_to={ssl_path}", *common]))  # fmt: skip
        if not fp_path.exists():
            train(load_config("recipes/ctc_char_finetune_tiny_mel.yaml", [
                f"init_from_ssl={ssl_path}", f"model.train_ds.manifest_filepath={train_m}",
                f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={finetune_steps}",
                f"exp_manager.exp_dir={fam_dir / 'ctc'}", f"save_to={fp_path}", *common, *finetune_extra]))  # fmt: skip
        fp = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
        row: dict[str, Any] = {"fp": _rates(fp, test), "ptq": {}, "qat": {}, "bytes": {16: storage_bytes(fp)},
                               "params_m": sum(p.numel() for p in fp.encoder.parameters()) / 1e6,
                               "gmacs_per_s": macs_per_second(fp.encoder.arch, fp.encoder.profile)}  # fmt: skip
        if qat_steps > 0:  # the control: the fp model trained qat_steps more without quantization (QAT's extra steps)
            more_path = fam_dir / "fp_more.nemo"
            if not more_path.exists():
                train(load_config("recipes/qat_finetune.yaml", [
                    f"init_from_nemo={fp_path}", "qat=null", "profile.weight_bits=16",
                    f"qat_distill.weight={distill}", f"model.train_ds.manifest_filepath={train_m}",
                    f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={qat_steps}",
                    f"exp_manager.exp_dir={fam_dir / 'fp_more'}", f"save_to={more_path}", *common]))  # fmt: skip
            row["fp_more"] = _rates(ASRModel.restore_from(str(more_path), map_location="cpu").eval(), test)
        for b in bits:
            if b == 16:
                continue
            q = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
            quantize_model(q, b, keep_fp=False)
            row["ptq"][b] = _rates(q, test)
            row["bytes"][b] = storage_bytes(q)
            if b == error_bits:
                row["layer_error"] = branch_errors(fp, q, audio, lengths)
            if qat_steps > 0:
                qat_path = fam_dir / f"qat{b}.nemo"
                if not qat_path.exists():
                    train(load_config("recipes/qat_finetune.yaml", [
                        f"init_from_nemo={fp_path}", f"qat.bits={b}", f"profile.weight_bits={b}",
                        f"qat_distill.weight={distill}", f"model.train_ds.manifest_filepath={train_m}",
                        f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={qat_steps}",
                        f"exp_manager.exp_dir={fam_dir / f'qat{b}'}", f"save_to={qat_path}", *common]))  # fmt: skip
                qm = ASRModel.restore_from(str(qat_path), map_location="cpu").eval()
                quantize_model(qm, b, keep_fp=False)
                row["qat"][b] = _rates(qm, test)
        row["minutes"] = (time.perf_counter() - family_started) / 60
        results[family] = row
        (fam_dir / "result.json").write_text(json.dumps({"settings": settings, "row": row}, indent=1))
    minutes = sum(float(r.get("minutes", 0.0)) for r in results.values())
    errors = {f: r["layer_error"] for f, r in results.items() if "layer_error" in r}
    if errors:
        plot_layer_errors(errors, out_dir / "layer_error.png", error_bits)
    fast = None
    if fast_paths_threads:  # the onnxruntime int8 / 4-bit forms of each fp model: WER and latency
        from nemo_sew.bench.quant_paths import family_rows

        fast = family_rows(list(results), out_dir, test, fast_paths_threads)
    (out_dir / "bench_quant.json").write_text(json.dumps({"families": results, "fast_paths": fast}, indent=1, default=str))
    section = quant_markdown(results, bits, pretrain_steps, finetune_steps, qat_steps, error_bits, minutes, command,
                             out_dir, distill)  # fmt: skip
    if fast:
        from nemo_sew.bench.quant_paths import fast_paths_markdown

        section += "\n".join(fast_paths_markdown(fast, fast_paths_threads, 10.0)) + "\n"
    return section, results


def quant_markdown(results: dict[str, Any], bits: Sequence[int], pre: int, ft: int, qat: int, error_bits: int,
                   minutes: float, command: str, out_dir: Path, distill: float = 0.0) -> str:  # fmt: skip
    widths = [b for b in bits if b != 16]
    teacher = f", distilled from it (KL weight {distill:g})" if distill > 0 else ""
    lines = [
        "### Attention-only vs conformer under low-bit weight quantization (synthetic corpus)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}; one run, {minutes:.0f} min of training and evaluation  ",
        f"HuBERT pre-training {pre} steps, CTC fine-tuning {ft} steps, QAT {qat} steps from the fp model{teacher}; "
        "test WER / CER.",
        "",
        *([f"`fp + {qat}`: the fp model trained {qat} steps more with the QAT recipe and loss, without quantization "
           "(the control for QAT's extra steps).", ""] if any(r.get("fp_more") for r in results.values()) else []),
        "| encoder | fp | " + f"fp + {qat} | " + " | ".join(f"PTQ {b}-bit | QAT {b}-bit" for b in widths) + " |",
        "|---|---|---|" + "---|---|" * len(widths),
    ]
    for family, r in results.items():
        more = r.get("fp_more")
        cells = [f"{r['fp'][0]:.3f} / {r['fp'][1]:.3f}", f"{more[0]:.3f} / {more[1]:.3f}" if more else "-"]
        for b in widths:
            for kind in ("ptq", "qat"):
                v = r[kind].get(b)
                cells.append(f"{v[0]:.3f} / {v[1]:.3f}" if v else "-")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += ["", f"Relative WER / CER change: PTQ against the family's fp model, QAT against its `fp + {qat}` model "
              "(the same training without quantization; the fp model where there is none):", "",
              "| encoder | " + " | ".join(f"PTQ {b}-bit | QAT {b}-bit" for b in widths) + " |",
              "|---|" + "---|---|" * len(widths)]  # fmt: skip
    for family, r in results.items():
        cells = []
        for b in widths:
            for kind in ("ptq", "qat"):
                v = r[kind].get(b)
                ref = r.get("fp_more") if kind == "qat" and r.get("fp_more") else r["fp"]
                cells.append(" / ".join(f"{(q / f - 1) * 100:+.1f}%" if f > 0 else "-" for q, f in zip(v, ref))
                             if v else "-")  # fmt: skip
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += ["", "Encoder parameters, analytic encoder GMACs per second of audio (10 s input), and encoder + head state "
              "size (packed weights + everything kept in fp):", "",
              "| encoder | params (M) | GMACs / s | " + " | ".join(f"{b}-bit" for b in bits) + " |",
              "|---|---|---|" + "---|" * len(bits)]  # fmt: skip
    for family, r in results.items():
        head = f"{r['params_m']:.2f} | {r['gmacs_per_s']:.3f}" if "params_m" in r else "- | -"
        lines.append(f"| {family} | {head} | " + " | ".join(f"{r['bytes'].get(b, 0) / 1e6:.2f} MB" for b in bits) + " |")
    lines += ["", f"Per-layer relative output error at {error_bits}-bit PTQ (mean over layers; "
              f"`{out_dir.name}/layer_error.png` plots it against depth):", ""]
    for family, r in results.items():
        e = r.get("layer_error") or {}
        parts = [f"{k} {sum(v) / len(v):.3f} (first {v[0]:.3f}, last {v[-1]:.3f})" for k, v in e.items()]
        lines.append(f"- {family}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


__all__ = ["FAMILIES", "bench_quant", "branch_errors", "plot_layer_errors", "quant_markdown"]
