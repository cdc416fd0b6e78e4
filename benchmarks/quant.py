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
transcribed and timed (:mod:`benchmarks.quant_paths`).

Every trained model is kept in ``OUT/<family>/`` with the settings that made it, and each family's results in
``OUT/<family>/result.json`` with the models they measured (:mod:`benchmarks.cache`): a re-run resumes where a
stopped one left off and retrains only what its settings change (other bit widths or QAT steps reuse the
pre-trained and fp models), and families can run as separate processes (``--families``) before one run over all of
them writes the report.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.cache import file_digest, kept_file, kept_result
from benchmarks.report import machine_line
from nemo_sew.cost import macs_per_second

log = logging.getLogger("benchmarks.quant")

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


def _int_keys(row: dict[str, Any]) -> dict[str, Any]:
    """A kept family row with its per-width tables keyed by int again (JSON keeps string keys)."""
    return {**row, **{k: {int(b): v for b, v in row[k].items()} for k in ("ptq", "qat", "bytes")}}


def _trained(path: Path, recipe: str, overrides: list[str], init: Path | None = None) -> Path:
    """``path``, a model ``recipe`` trains with ``overrides`` (:func:`benchmarks.cache.kept_file`: reused while
    the recipe path, the overrides and the model it starts from are the same; a second process waits for it). The
    training's minutes are kept beside it (:func:`_training_minutes`), so a report counts reused models too."""
    from nemo_sew.train import load_config, train

    def make() -> None:
        started = time.perf_counter()
        train(load_config(recipe, [*overrides, f"save_to={path}"]))
        _minutes_file(path).write_text(f"{(time.perf_counter() - started) / 60:.4f}\n")

    settings = {"recipe": recipe, "overrides": overrides, "init_sha256": file_digest(init) if init else None}
    return kept_file(path, settings, make)


def _minutes_file(path: Path) -> Path:
    return path.with_name(path.name + ".minutes")


def _training_minutes(path: Path) -> float:
    """Wall-clock minutes of the run that trained ``path`` (0 when unknown)."""
    try:
        return float(_minutes_file(path).read_text())
    except (OSError, ValueError):
        return 0.0


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
    splits: dict | None = None,
) -> tuple[str, dict[str, Any]]:
    """Run the study (see the module docstring); returns the markdown section and the raw results. ``splits``:
    an existing corpus (``prepare_synthetic``'s result) instead of ``data_dir``."""
    from nemo.collections.asr.models import ASRModel

    from manifests.synthetic import prepare_synthetic
    from nemo_sew.quant.model import quantize_model
    from nemo_sew.quant.weights import storage_bytes
    from nemo_sew.ssl.targets import kmeans_from_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    train_m, dev, test = (splits[k]["manifest"] for k in ("train", "dev", "test"))
    centroids = out_dir / f"mfcc_km{clusters}.npy"
    kept_file(centroids, {"manifest": str(train_m), "features": "mfcc", "clusters": clusters, "max_hours": 0.5},
              lambda: kmeans_from_manifest(train_m, centroids, "mfcc", num_clusters=clusters, max_hours=0.5))  # fmt: skip
    common = ["trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false", *extra]
    data = [f"model.train_ds.manifest_filepath={train_m}", f"model.validation_ds.manifest_filepath={dev}"]
    audio, lengths = _test_batch(test)
    results: dict[str, Any] = {}
    for family in families:
        fam_dir = out_dir / family
        # every model is kept on its own: a change of bits or QAT steps reuses the pre-trained and fp models
        ssl_path = _trained(fam_dir / "ssl.nemo", "recipes/ssl_tiny_mel.yaml", [
            *data, f"model.encoder.preset={family}", f"model.hubert.centroids={centroids}",
            f"model.hubert.num_clusters={clusters}", f"trainer.max_steps={pretrain_steps}",
            f"exp_manager.exp_dir={fam_dir / 'ssl'}", *common], init=centroids)  # fmt: skip
        fp_path = _trained(fam_dir / "fp.nemo", "recipes/ctc_char_finetune_tiny_mel.yaml", [
            f"init_from_ssl={ssl_path}", *data, f"trainer.max_steps={finetune_steps}",
            f"exp_manager.exp_dir={fam_dir / 'ctc'}", *common, *finetune_extra], init=ssl_path)  # fmt: skip

        def qat_model(name: str, qat_overrides: list[str]) -> Path:
            return _trained(fam_dir / f"{name}.nemo", "recipes/qat_finetune.yaml", [
                f"init_from_nemo={fp_path}", *qat_overrides, f"qat_distill.weight={distill}", *data,
                f"trainer.max_steps={qat_steps}", f"exp_manager.exp_dir={fam_dir / name}", *common], init=fp_path)  # fmt: skip

        # the control for QAT's extra steps: the fp model trained qat_steps more without quantization
        more_path = qat_model("fp_more", ["qat=null", "profile.weight_bits=16"]) if qat_steps > 0 else None
        qat_paths = {b: qat_model(f"qat{b}", [f"qat.bits={b}", f"profile.weight_bits={b}"])
                     for b in bits if b != 16 and qat_steps > 0}  # fmt: skip

        def measure() -> dict[str, Any]:
            started = time.perf_counter()
            fp = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
            row: dict[str, Any] = {"fp": _rates(fp, test), "ptq": {}, "qat": {}, "bytes": {16: storage_bytes(fp)},
                                   "params_m": sum(p.numel() for p in fp.encoder.parameters()) / 1e6,
                                   "gmacs_per_s": macs_per_second(fp.encoder.arch, fp.encoder.profile)}  # fmt: skip
            if more_path is not None:
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
                if b in qat_paths:
                    qm = ASRModel.restore_from(str(qat_paths[b]), map_location="cpu").eval()
                    quantize_model(qm, b, keep_fp=False)
                    row["qat"][b] = _rates(qm, test)
            trained = [ssl_path, fp_path, *(p for p in (more_path, *qat_paths.values()) if p is not None)]
            row["minutes"] = sum(map(_training_minutes, trained)) + (time.perf_counter() - started) / 60
            return row

        models = {"fp": fp_path, "fp_more": more_path, **{f"qat{b}": p for b, p in qat_paths.items()}}
        settings = {"test": str(test), "bits": sorted(int(b) for b in bits), "error_bits": error_bits,
                    **{f"{k}_sha256": file_digest(p) for k, p in models.items() if p is not None}}  # fmt: skip
        results[family] = _int_keys(kept_result(fam_dir / "result.json", settings, measure))
    minutes = sum(float(r.get("minutes", 0.0)) for r in results.values())
    errors = {f: r["layer_error"] for f, r in results.items() if "layer_error" in r}
    if errors:
        plot_layer_errors(errors, out_dir / "layer_error.png", error_bits)
    fast = None
    if fast_paths_threads:  # the onnxruntime int8 / 4-bit forms of each fp model: WER and latency
        from benchmarks.quant_paths import family_rows

        fast = family_rows(list(results), out_dir, test, fast_paths_threads, calibration=dev)
    (out_dir / "bench_quant.json").write_text(json.dumps({"families": results, "fast_paths": fast}, indent=1, default=str))
    section = quant_markdown(results, bits, pretrain_steps, finetune_steps, qat_steps, error_bits, minutes, command,
                             out_dir, distill)  # fmt: skip
    if fast:
        from benchmarks.quant_paths import fast_paths_markdown

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
        f"Machine: {machine_line()}; one run per cell, {minutes:.0f} min of training (every model's own run, kept ones "
        "included) and evaluation  ",
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
