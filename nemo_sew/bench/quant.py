"""``nemo-sew bench quant``: attention-only vs conformer encoders under low-bit weight quantization (trains models).

    nemo-sew bench quant --pretrain-steps 300 --finetune-steps 300 --qat-steps 100 --write BENCHMARKS.md

The seed question (arXiv 2311.02772): does an attention-only encoder degrade less than a conformer at low
weight bit widths? On the synthetic corpus, for each family (``study_conformer``, ``study_attn_deep_narrow``,
``study_attn_shallow_wide``: matched parameters and MACs, see ``tests/test_local_attention.py``):

1. HuBERT pre-training (``recipes/ssl_tiny_mel.yaml``, MFCC k-means targets), the same steps for all;
2. CTC fine-tuning (``recipes/ctc_char_finetune_tiny_mel.yaml``), the same steps;
3. PTQ at 8/4/2/1 bits (every encoder weight; CTC head fp) and QAT from the fp model
   (``recipes/qat_finetune.yaml``, ``qat_steps``) at the same widths; test WER/CER of each;
4. the hypothesis: per-layer relative output error of each branch (attention, conv module, FFN) of the PTQ
   model against fp, on test audio, plotted against depth (``layer_error.png``).

Table 2 (size, MACs, CPU latency per width) comes from the packed ``.nemo`` sizes here and
``nemo-sew bench cpu`` for latency (only where kernels exist: int8 and 4-bit through onnxruntime).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from nemo_sew.bench.report import machine_line

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
    extra: Sequence[str] = (),
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
    if not centroids.exists():
        kmeans_from_manifest(train_m, centroids, "mfcc", num_clusters=clusters, max_hours=0.5)
    common = ["trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false", *extra]
    audio, lengths = _test_batch(test)
    results: dict[str, Any] = {}
    started = time.perf_counter()
    for family in families:
        fam_dir = out_dir / family
        ssl_path, fp_path = fam_dir / "ssl.nemo", fam_dir / "fp.nemo"
        if not fp_path.exists():
            train(load_config("recipes/ssl_tiny_mel.yaml", [
                f"model.train_ds.manifest_filepath={train_m}", f"model.validation_ds.manifest_filepath={dev}",
                f"model.encoder.preset={family}", f"model.hubert.centroids={centroids}",
                f"model.hubert.num_clusters={clusters}", f"trainer.max_steps={pretrain_steps}",
                f"exp_manager.exp_dir={fam_dir / 'ssl'}", f"save_to={ssl_path}", *common]))  # fmt: skip
            train(load_config("recipes/ctc_char_finetune_tiny_mel.yaml", [
                f"init_from_ssl={ssl_path}", f"model.train_ds.manifest_filepath={train_m}",
                f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={finetune_steps}",
                f"exp_manager.exp_dir={fam_dir / 'ctc'}", f"save_to={fp_path}", *common]))  # fmt: skip
        fp = ASRModel.restore_from(str(fp_path), map_location="cpu").eval()
        row: dict[str, Any] = {"fp": _rates(fp, test), "ptq": {}, "qat": {}, "bytes": {16: storage_bytes(fp)}}
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
                train(load_config("recipes/qat_finetune.yaml", [
                    f"init_from_nemo={fp_path}", f"qat.bits={b}", f"profile.weight_bits={b}",
                    f"model.train_ds.manifest_filepath={train_m}", f"model.validation_ds.manifest_filepath={dev}",
                    f"trainer.max_steps={qat_steps}", f"exp_manager.exp_dir={fam_dir / f'qat{b}'}",
                    f"save_to={qat_path}", *common]))  # fmt: skip
                qm = ASRModel.restore_from(str(qat_path), map_location="cpu").eval()
                quantize_model(qm, b, keep_fp=False)
                row["qat"][b] = _rates(qm, test)
        results[family] = row
    minutes = (time.perf_counter() - started) / 60
    errors = {f: r["layer_error"] for f, r in results.items() if "layer_error" in r}
    if errors:
        plot_layer_errors(errors, out_dir / "layer_error.png", error_bits)
    (out_dir / "bench_quant.json").write_text(json.dumps(results, indent=1, default=str))
    return quant_markdown(results, bits, pretrain_steps, finetune_steps, qat_steps, error_bits, minutes, command, out_dir), results


def quant_markdown(results: dict[str, Any], bits: Sequence[int], pre: int, ft: int, qat: int, error_bits: int,
                   minutes: float, command: str, out_dir: Path) -> str:  # fmt: skip
    widths = [b for b in bits if b != 16]
    lines = [
        "### Attention-only vs conformer under low-bit weight quantization (synthetic corpus)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}; one run, {minutes:.0f} min  ",
        f"HuBERT pre-training {pre} steps, CTC fine-tuning {ft} steps, QAT {qat} steps from the fp model; test WER / CER.",
        "",
        "| encoder | fp | " + " | ".join(f"PTQ {b}-bit | QAT {b}-bit" for b in widths) + " |",
        "|---|---|" + "---|---|" * len(widths),
    ]
    for family, r in results.items():
        cells = [f"{r['fp'][0]:.3f} / {r['fp'][1]:.3f}"]
        for b in widths:
            for kind in ("ptq", "qat"):
                v = r[kind].get(b)
                cells.append(f"{v[0]:.3f} / {v[1]:.3f}" if v else "-")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    lines += ["", "Encoder + head state size (bytes, packed weights + everything kept in fp):", "",
              "| encoder | " + " | ".join(f"{b}-bit" for b in bits) + " |", "|---|" + "---|" * len(bits)]
    for family, r in results.items():
        lines.append(f"| {family} | " + " | ".join(f"{r['bytes'].get(b, 0) / 1e6:.2f} MB" for b in bits) + " |")
    lines += ["", f"Per-layer relative output error at {error_bits}-bit PTQ (mean over layers; "
              f"`{out_dir.name}/layer_error.png` plots it against depth):", ""]
    for family, r in results.items():
        e = r.get("layer_error") or {}
        parts = [f"{k} {sum(v) / len(v):.3f} (first {v[0]:.3f}, last {v[-1]:.3f})" for k, v in e.items()]
        lines.append(f"- {family}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


__all__ = ["FAMILIES", "bench_quant", "branch_errors", "plot_layer_errors", "quant_markdown"]
