"""``nemo-sew bench ssl-curve``: test CER after fine-tuning against pre-training steps, per pre-training objective
and labelled-data size, with random initialisation as the reference (trains models).

    nemo-sew bench ssl-curve --objectives hubert hubert2 wav2vec2 --pretrain-steps 600 1200 2400 \\
        --labelled-minutes 20 60 --finetune-steps 1000 --plot benchmarks/ssl_curve.png --write BENCHMARKS.md

Objectives:

- ``hubert``: HuBERT iteration 1, k-means on MFCC features of the training audio;
- ``hubert2``: HuBERT iteration 2, a fresh model whose targets are k-means clusters of the final ``hubert``
  model's features (its first ``iter2_layer`` blocks), trained for the same steps; its x position is its own
  steps (the iteration-1 run it needs comes on top);
- ``wav2vec2``: the wav2vec 2.0 contrastive objective with a quantised codebook.

Each objective pre-trains once, to the largest of ``pretrain_steps``, and writes a ``.nemo`` snapshot at each
listed step (``save_at_steps``, so every point of a curve shares one LR schedule). Every snapshot, and a random
initialisation, is fine-tuned on the first ``labelled_minutes`` of the training manifest for each size and seed.
Every run's result is kept in ``out_dir/<run>/result.json`` with the settings that made it (and the bytes of the
model it starts from) and reused by a later call with the same settings (:mod:`benchmarks.cache`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

from benchmarks.cache import file_digest, kept_result
from benchmarks.report import machine_line, mean_spread

OBJECTIVES = ("hubert", "hubert2", "wav2vec2")


def labelled_subset(train_manifest: str | Path, minutes: float, out: Path) -> tuple[Path, float]:
    """The first ``minutes`` of audio of ``train_manifest`` as a manifest; (path, seconds it holds)."""
    total, lines = 0.0, []
    for line in Path(train_manifest).read_text().splitlines():
        if not line.strip():
            continue
        if total >= minutes * 60:
            break
        lines.append(line)
        total += float(json.loads(line)["duration"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out, total


def pretrain_ssl(
    run_dir: Path,
    recipe: str | Path,
    steps: Sequence[int],
    train_manifest: str,
    dev: str,
    features: str | None = "mfcc",
    layer: int | None = None,
    clusters: int = 100,
    extra: Sequence[str] = (),
    kmeans_dir: Path | None = None,
) -> dict:
    """One pre-training run of ``recipe`` to the largest of ``steps`` (seed 0), a ``.nemo`` snapshot at each
    (``save_at_steps``, one LR schedule); kept in ``run_dir/result.json`` and reused.

    ``features``: HuBERT, with k-means targets on these features (``mfcc``, or a ``.nemo`` model whose first
    ``layer`` blocks give them: iteration 2), fitted on 1 h of ``train_manifest`` and kept in ``kmeans_dir``
    (default ``run_dir``; runs that share it share the targets); ``None``: the wav2vec 2.0 objective. Returns the
    kept result plus ``nemo``: ``{str(step): snapshot path}``.
    """
    from nemo_sew.callbacks import validation_metrics
    from nemo_sew.ssl.targets import kmeans_from_manifest
    from nemo_sew.train import load_config, train

    steps = sorted({int(s) for s in steps})
    final = run_dir / "ssl.nemo"
    overrides = [f"model.train_ds.manifest_filepath={train_manifest}", f"model.validation_ds.manifest_filepath={dev}",
                 f"trainer.max_steps={steps[-1]}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
                 "exp_manager.create_checkpoint_callback=false", f"exp_manager.exp_dir={run_dir}", "seed=0",
                 f"save_to={final}", f"+save_at_steps=[{','.join(str(s) for s in steps[:-1])}]" if steps[:-1] else None]  # fmt: skip
    overrides = [o for o in overrides if o]
    inputs = {}
    if features is not None:
        km_dir = kmeans_dir or run_dir
        km_settings = {"manifest": train_manifest, "features": features, "layer": layer, "clusters": clusters,
                       "max_hours": 1.0, **({"teacher_sha256": file_digest(features)} if features != "mfcc" else {})}  # fmt: skip
        centroids = km_dir / f"km{clusters}.npy"
        inputs = kept_result(km_dir / "kmeans.json", km_settings, lambda: {
            **kmeans_from_manifest(train_manifest, centroids, features, layer=layer, num_clusters=clusters, max_hours=1.0),
            "centroids_sha256": file_digest(centroids)})  # fmt: skip
        overrides += ["model.objective=hubert", f"model.hubert.features={features}", f"model.hubert.centroids={centroids}",
                      f"model.hubert.num_clusters={clusters}", f"++model.hubert.layer={'null' if layer is None else layer}"]  # fmt: skip
    else:
        overrides.append("model.objective=wav2vec2")
    overrides += list(extra)

    snapshots = {str(s): str(final.with_name(f"ssl_step{s}.nemo")) for s in steps[:-1]}
    snapshots[str(steps[-1])] = str(final)

    def work() -> dict:
        for path in snapshots.values():  # an earlier run's files are not this run's
            Path(path).unlink(missing_ok=True)
        start = time.perf_counter()
        model = train(load_config(recipe, overrides))
        metrics = validation_metrics(model.trainer)
        return {"minutes": (time.perf_counter() - start) / 60, "val": metrics}

    result = kept_result(run_dir / "result.json", {"recipe": str(recipe), "overrides": overrides,
                                                   "targets": inputs.get("centroids_sha256")}, work)  # fmt: skip
    missing = [p for p in snapshots.values() if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"pre-training snapshots missing (delete {run_dir / 'result.json'} to re-run): {missing}")
    return {**result, "nemo": snapshots}


def finetune_ctc(
    run_dir: Path,
    recipe: str | Path,
    init: str | None,
    labelled: str | Path,
    dev: str,
    test: str,
    steps: int,
    seed: int,
    extra: Sequence[str] = (),
    factors: Sequence[float] | None = None,
    save: bool = False,
) -> dict:
    """Fine-tune ``recipe`` (CTC) from the pre-trained ``init`` (``None``: random initialisation) on ``labelled``
    for ``steps`` steps, then test WER and CER: ``{"wer", "cer"}`` at the model's profile, or with ``factors``
    ``{"wer": {str(s): ...}, "cer": {...}}`` at each squeeze factor. Kept in ``run_dir/result.json`` (the key
    holds the bytes of ``init``) and reused; with ``save``, the model too (``run_dir/model.nemo``)."""
    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.train import load_config, train

    overrides = [f"model.train_ds.manifest_filepath={labelled}", f"model.validation_ds.manifest_filepath={dev}",
                 f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
                 "exp_manager.create_checkpoint_callback=false", f"exp_manager.exp_dir={run_dir}", f"seed={seed}",
                 *([f"init_from_ssl={init}"] if init else []), *([f"save_to={run_dir / 'model.nemo'}"] if save else []),
                 *extra]  # fmt: skip

    def work() -> dict:
        model = train(load_config(recipe, overrides))
        if factors is None:
            wer, cer = error_rates(*transcribe_manifest(model, test))
            return {"wer": wer, "cer": cer}
        got = {s: error_rates(*transcribe_manifest(model, test, profile=s)) for s in factors}
        return {"wer": {s: w for s, (w, _) in got.items()}, "cer": {s: c for s, (_, c) in got.items()}}

    settings = {"recipe": str(recipe), "overrides": overrides, "test": test,
                "init_sha256": file_digest(init) if init else None,
                **({"factors": list(factors)} if factors is not None else {})}  # fmt: skip
    return kept_result(run_dir / "result.json", settings, work)


def bench_ssl_curve(
    data_dir: str | Path,
    out_dir: str | Path,
    objectives: Sequence[str] = OBJECTIVES,
    pretrain_steps: Sequence[int] = (600, 1200, 2400),
    labelled_minutes: Sequence[float] = (20.0, 60.0),
    finetune_steps: int = 1000,
    seeds: Sequence[int] = (0,),
    clusters: int = 100,
    iter2_layer: int | None = 2,
    pretrain_recipe: str | Path = "recipes/ssl_tiny_mel.yaml",
    finetune_recipe: str | Path = "recipes/ctc_char_finetune_tiny_mel.yaml",
    hours: float = 3.5,
    extra_pretrain: Sequence[str] = (),
    extra_finetune: Sequence[str] = (),
    finetune_tag: str = "",
    plot: str | Path | None = None,
    command: str = "",
    splits: dict | None = None,
) -> str:
    """The curve: a markdown section (and, with ``plot``, a PNG of CER against pre-training steps).

    ``seeds`` are the fine-tuning seeds (pre-training runs once, seed 0); each cell is their mean ± half their
    range. The random-initialisation row builds the fine-tuning recipe's own encoder: an encoder override in
    ``extra_pretrain`` belongs in ``extra_finetune`` too, or the baseline is another architecture. ``splits``: an already prepared corpus (:func:`manifests.synthetic.prepare_synthetic`'s return
    value) instead of ``data_dir``. ``finetune_tag``: a name for this set of fine-tunings (``ft_<tag>_...`` run
    folders, ``bench_ssl_curve_<tag>.json``), so that another fine-tuning recipe or override set is kept beside
    the first on the same pre-trained snapshots instead of replacing it.
    """
    from manifests.synthetic import prepare_synthetic

    bad = [o for o in objectives if o not in OBJECTIVES]
    if bad or not objectives:
        raise ValueError(f"objectives: expected some of {OBJECTIVES}, got {list(objectives)}")
    steps = sorted({int(s) for s in pretrain_steps})
    if not steps or steps[0] <= 0 or not labelled_minutes or not seeds:
        raise ValueError("expected positive pretrain_steps, and at least one labelled size and one seed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    train_manifest, dev, test = (str(splits[k]["manifest"]) for k in ("train", "dev", "test"))

    def pretrain(objective: str) -> dict:
        features = {"hubert": "mfcc", "wav2vec2": None}.get(objective)
        if objective == "hubert2":  # iteration 2: targets from the final iteration-1 model
            features = pretrain("hubert")["nemo"][str(steps[-1])]
        layer = iter2_layer if objective == "hubert2" else None
        return pretrain_ssl(out_dir / f"pretrain_{objective}", pretrain_recipe, steps, train_manifest, dev, features,
                            layer, clusters, extra_pretrain)  # fmt: skip

    subsets = {m: labelled_subset(train_manifest, m, out_dir / f"labelled_{m:g}min.json") for m in labelled_minutes}

    def finetune(init: str | None, minutes: float, seed: int, name: str) -> dict:
        tag = f"{finetune_tag}_" if finetune_tag else ""
        return finetune_ctc(out_dir / f"ft_{tag}{name}_{minutes:g}min_seed{seed}", finetune_recipe, init, subsets[minutes][0],
                            dev, test, finetune_steps, seed, extra_finetune)  # fmt: skip

    pre = {o: pretrain(o) for o in objectives}
    rows: dict[tuple[str, int, float], list[dict]] = {}
    for minutes in labelled_minutes:
        for seed in seeds:
            rows.setdefault(("random init", 0, minutes), []).append(finetune(None, minutes, seed, "random"))
            for o in objectives:
                for s in steps:
                    rows.setdefault((o, s, minutes), []).append(finetune(pre[o]["nemo"][str(s)], minutes, seed, f"{o}_{s}"))
    raw = {f"{o} | {s} | {m:g}": runs for (o, s, m), runs in rows.items()}
    (out_dir / f"bench_ssl_curve{'_' + finetune_tag if finetune_tag else ''}.json").write_text(json.dumps({"pretrain": pre, "finetune": raw}, indent=2) + "\n")

    def mean(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    def cell(runs: list[dict], key: str) -> str:
        return mean_spread(r[key] for r in runs)

    lines = [
        "### Pre-training pays? Test CER after fine-tuning vs pre-training steps (synthetic corpus)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Pre-training: `{pretrain_recipe}` on all {hours:g} h of training audio (no labels), seed 0, one run per "
        f"objective to {steps[-1]} steps with snapshots at {', '.join(str(s) for s in steps)}; "
        + ", ".join(f"{o} {pre[o]['minutes']:.1f} min" for o in objectives)
        + (f"; hubert2: k-means ({clusters}) on the final hubert model's first {iter2_layer} blocks" if "hubert2" in objectives else "")
        + "  ",
        f"Fine-tuning: `{finetune_recipe}`, {finetune_steps} steps on the first "
        + " / ".join(f"{m:g} min ({subsets[m][1] / 60:.1f} min)" for m in labelled_minutes)
        + f" of labelled training audio, seeds {list(seeds)}; test = held-out voices and sentences. Cells: test CER "
        "(WER), mean over seeds ± half their range; relative: CER against random initialisation.",
        "",
        "| initialisation | pre-training steps | " + " | ".join(f"{m:g} min: CER (WER) | relative" for m in labelled_minutes) + " |",
        "|---|---|" + "---|---|" * len(labelled_minutes),
    ]  # fmt: skip
    for name, s in [("random init", 0)] + [(o, s) for o in objectives for s in steps]:
        cells = []
        for m in labelled_minutes:
            runs, ref = rows[(name, s, m)], rows[("random init", 0, m)]
            rel = "-" if name == "random init" else f"{mean(runs, 'cer') / mean(ref, 'cer') - 1:+.1%}"
            cells.append(f"{cell(runs, 'cer')} ({cell(runs, 'wer')}) | {rel}")
        lines.append(f"| {name} | {s if s else '-'} | " + " | ".join(cells) + " |")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labelled_minutes), figsize=(5 * len(labelled_minutes), 4), squeeze=False)
        for ax, m in zip(axes[0], labelled_minutes):
            for o in objectives:
                ax.plot(steps, [mean(rows[(o, s, m)], "cer") for s in steps], marker="o", label=o)
            ax.axhline(mean(rows[("random init", 0, m)], "cer"), color="gray", linestyle="--", label="random init")
            ax.set(title=f"fine-tuned on {m:g} min", xlabel="pre-training steps", ylabel="test CER")
            ax.legend()
        fig.tight_layout()
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=100)
        plt.close(fig)
        lines += ["", f"![test CER vs pre-training steps]({Path(plot).as_posix()})"]
    return "\n".join(lines) + "\n"


__all__ = ["OBJECTIVES", "bench_ssl_curve", "finetune_ctc", "labelled_subset", "pretrain_ssl"]
