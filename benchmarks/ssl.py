"""``nemo-sew bench ssl``: pre-trained vs randomly initialised encoder, fine-tuned on a small labelled subset
(trains models).

    nemo-sew bench ssl --write BENCHMARKS.md
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from benchmarks.report import machine_line


def bench_ssl_table(
    data_dir: str | Path,
    out_dir: str | Path,
    pretrain_recipe: str | Path = "recipes/ssl_tiny_mel.yaml",
    finetune_recipe: str | Path = "recipes/ctc_char_finetune_tiny_mel.yaml",
    objective: str = "hubert",
    pretrain_steps: int = 600,
    finetune_steps: int = 500,
    labelled_minutes: float = 20.0,
    clusters: int = 100,
    hours: float = 3.5,
    extra_pretrain: Sequence[str] = (),
    extra_finetune: Sequence[str] = (),
    command: str = "",
) -> str:
    """Does pre-training help? Pre-train on all (unlabelled) training audio, fine-tune on a small labelled
    subset, and compare with the same fine-tuning from random initialisation at equal steps.

    The labelled subset is the first ``labelled_minutes`` of the training manifest; the test split has
    held-out voices and sentences. Returns a markdown section.
    """

    from manifests.synthetic import prepare_synthetic

    from benchmarks.ssl_curve import labelled_subset
    from nemo_sew.callbacks import validation_metrics
    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.ssl.targets import kmeans_from_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    train_manifest, dev, test = (splits[k]["manifest"] for k in ("train", "dev", "test"))
    labelled, total = labelled_subset(train_manifest, labelled_minutes, out_dir / "labelled.json")

    started = time.perf_counter()
    pre_overrides = [
        f"model.train_ds.manifest_filepath={train_manifest}", f"model.validation_ds.manifest_filepath={dev}",
        f"model.objective={objective}", f"trainer.max_steps={pretrain_steps}", "trainer.enable_progress_bar=false",
        f"exp_manager.exp_dir={out_dir / 'pretrain'}", f"save_to={out_dir / 'pretrained.nemo'}",
    ]  # fmt: skip
    if objective == "hubert":
        centroids = out_dir / f"mfcc_km{clusters}.npy"
        kmeans_from_manifest(train_manifest, centroids, "mfcc", num_clusters=clusters, max_hours=1.0)
        pre_overrides += [f"model.hubert.centroids={centroids}", f"model.hubert.num_clusters={clusters}"]
    pretrained = train(load_config(pretrain_recipe, [*pre_overrides, *extra_pretrain]))
    pretrain_minutes = (time.perf_counter() - started) / 60
    metrics = validation_metrics(pretrained.trainer)

    results = {}
    for name, init in (("pre-trained", out_dir / "pretrained.nemo"), ("random init", None)):
        overrides = [
            f"model.train_ds.manifest_filepath={labelled}", f"model.validation_ds.manifest_filepath={dev}",
            f"trainer.max_steps={finetune_steps}", "trainer.enable_progress_bar=false",
            f"exp_manager.exp_dir={out_dir / name.replace(' ', '_')}", "exp_manager.create_checkpoint_callback=false",
            *([f"init_from_ssl={init}"] if init else []), *extra_finetune,
        ]  # fmt: skip
        model = train(load_config(finetune_recipe, overrides))
        hyps, refs = transcribe_manifest(model, test)
        results[name] = error_rates(hyps, refs)

    key = "val_accuracy"
    lines = [
        f"### Pre-training vs random initialisation (synthetic corpus, {objective})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Pre-training: `{pretrain_recipe}`, {pretrain_steps} steps on all {hours} h of training audio (no labels), "
        f"{pretrain_minutes:.1f} min; final {key} {metrics.get(key, float('nan')):.3f}, val_loss {metrics.get('val_loss', float('nan')):.3f}  ",
        f"Fine-tuning: `{finetune_recipe}`, {finetune_steps} steps on {total / 60:.1f} min of labelled audio; "
        "test = held-out voices and sentences",
        "",
        "| initialisation | test WER | test CER |",
        "|---|---|---|",
    ]
    for name, (wer, cer) in results.items():
        lines.append(f"| {name} | {wer:.3f} | {cer:.3f} |")
    ratio = results["pre-trained"][1] / results["random init"][1] if results["random init"][1] else float("nan")
    lines += ["", f"CER ratio pre-trained / random: {ratio:.2f}"]
    return "\n".join(lines) + "\n"


__all__ = ["bench_ssl_table"]
