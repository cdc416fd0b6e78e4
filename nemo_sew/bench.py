"""Benchmarks that write ``BENCHMARKS.md`` rows with the command, machine and date.

    nemo-sew bench squeeze --preset sew_small --seconds 10 --factors 1 2 4

Latency is the median of ``runs`` timed forwards after ``warmup`` untimed ones, all in one process, so
ratios between rows of one run are the numbers to quote.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from nemo_sew.evaluate import encoder_gmacs_per_second
from nemo_sew.presets import build_encoder
from nemo_sew.profile import CompressionProfile

log = logging.getLogger("nemo_sew.bench")


def machine_line() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}"
    )


def median_latency_ms(fn, warmup: int = 3, runs: int = 10) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@dataclass
class SqueezeRow:
    squeeze: float
    gmacs_per_s: float
    latency_ms: float


def bench_squeeze(
    preset: str = "sew_small", factors: Sequence[float] = (1, 2, 4), seconds: float = 10.0, batch: int = 1,
    warmup: int = 3, runs: int = 10,
) -> list[SqueezeRow]:  # fmt: skip
    """Encoder latency and MACs of one stochastic (any-factor) encoder at several squeeze factors."""
    enc = build_encoder(preset, squeeze_sampler={"low": 1.0, "high": max(4.0, max(factors))}).eval()
    samples = int(seconds * 16000)
    if enc.frontend_kind == "mel_stack":
        x = torch.randn(batch, enc._feat_in, int(seconds * 100))
    else:
        x = torch.randn(batch, 1, samples) * 0.1
    lengths = torch.full((batch,), x.shape[-1], dtype=torch.int64)
    rows = []
    for s in factors:
        enc.set_profile(CompressionProfile(squeeze=float(s)))
        gmacs = encoder_gmacs_per_second(enc, seconds=seconds)
        lat = median_latency_ms(lambda: enc(audio_signal=x, length=lengths), warmup, runs)
        rows.append(SqueezeRow(float(s), gmacs, lat))
    return rows


def squeeze_markdown(rows: list[SqueezeRow], preset: str, seconds: float, command: str) -> str:
    base = rows[0]
    lines = [
        f"### Squeeze speed-up: `{preset}`, {seconds:g} s of audio, batch 1, fp32 eager",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}",
        "",
        "| squeeze | encoder GMACs / s audio | median latency (ms) | MACs ratio vs first | latency ratio vs first | latency ratio / MACs ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mac_ratio = base.gmacs_per_s / r.gmacs_per_s
        lat_ratio = base.latency_ms / r.latency_ms
        lines.append(
            f"| {r.squeeze:g} | {r.gmacs_per_s:.3f} | {r.latency_ms:.1f} | {mac_ratio:.2f}x | {lat_ratio:.2f}x | {lat_ratio / mac_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def append_benchmark(section: str, path: str | Path = "BENCHMARKS.md") -> None:
    """Append a section to BENCHMARKS.md (created with a header if missing)."""
    path = Path(path)
    if not path.exists():
        path.write_text("# nemo-sew benchmarks\n\nEvery section names the command that produced it; ratios are within one run.\n\n")
    with path.open("a") as f:
        f.write(section + "\n")


def bench_stochastic_table(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    steps: int = 800,
    finetune_steps: int = 200,
    fixed: Sequence[int] = (1, 2, 4),
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
) -> str:
    """The mini paper table: fixed-squeeze models vs one stochastic model at equal steps, then fine-tuned.

    Every model uses ``recipe`` with ``trainer.max_steps=steps`` and no time limit; the stochastic one
    draws its squeeze from ``sampler_values`` each step and is evaluated at every fixed factor; then it
    is fine-tuned for ``finetune_steps`` at s = 2 (``recipes/finetune_profile.yaml``).
    """
    from manifests.synthetic import prepare_synthetic

    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    common = [
        f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}",
        f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "exp_manager.create_checkpoint_callback=false", *extra,
    ]  # fmt: skip
    test = splits["test"]["manifest"]

    def wer_at(model, s: float) -> float:
        hyps, refs = transcribe_manifest(model, test, profile=s)
        return error_rates(hyps, refs)[0]

    fixed_wer = {}
    for s in fixed:
        cfg = load_config(recipe, [*common, f"model.encoder.squeeze={s}", f"model.profile.squeeze={s}",
                                   f"exp_manager.exp_dir={out_dir / f'fixed_s{s}'}"])  # fmt: skip
        fixed_wer[s] = wer_at(train(cfg), s)
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    stoch_path = out_dir / "stochastic.nemo"
    cfg = load_config(recipe, [*common, "model.encoder.expander=phase",
                               f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}}}",
                               f"exp_manager.exp_dir={out_dir / 'stochastic'}", f"save_to={stoch_path}"])  # fmt: skip
    stochastic = train(cfg)
    stoch_wer = {s: wer_at(stochastic, s) for s in fixed}
    ft_cfg = load_config(
        Path(recipe).parent / "finetune_profile.yaml",
        [*common, f"init_from_nemo={stoch_path}", "profile.squeeze=2", f"trainer.max_steps={finetune_steps}",
         f"exp_manager.exp_dir={out_dir / 'finetuned_s2'}"],
    )  # fmt: skip
    ft_wer = wer_at(train(ft_cfg), 2)

    lines = [
        f"### Stochastic squeeze vs fixed squeeze (synthetic corpus, {steps} steps each)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipe: `{recipe}`; stochastic sampler: squeeze ~ U{values}; test = held-out voices and sentences",
        "",
        "| squeeze | fixed model WER | stochastic model WER | relative | stochastic fine-tuned at s=2 ({} steps) | relative |".format(finetune_steps),
        "|---|---|---|---|---|---|",
    ]
    for s in fixed:
        rel = stoch_wer[s] / fixed_wer[s] - 1 if fixed_wer[s] else float("nan")
        ft = f"{ft_wer:.3f} | {ft_wer / fixed_wer[s] - 1:+.1%}" if s == 2 else "- | -"
        lines.append(f"| {s} | {fixed_wer[s]:.3f} | {stoch_wer[s]:.3f} | {rel:+.1%} | {ft} |")
    return "\n".join(lines) + "\n"


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
    import json

    from manifests.synthetic import prepare_synthetic

    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.ssl.targets import kmeans_from_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    train_manifest, dev, test = (splits[k]["manifest"] for k in ("train", "dev", "test"))
    labelled = out_dir / "labelled.json"
    total, lines = 0.0, []
    for line in Path(train_manifest).read_text().splitlines():
        if total >= labelled_minutes * 60:
            break
        lines.append(line)
        total += float(json.loads(line)["duration"])
    labelled.write_text("\n".join(lines) + "\n")

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
    metrics = {k: float(v) for k, v in pretrained.trainer.callback_metrics.items() if k.startswith("val_")}

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


def pnmi(labels: torch.Tensor, clusters: torch.Tensor) -> float:
    """Phone-normalised mutual information (HuBERT, Hsu et al. 2021): ``I(label; cluster) / H(label)``
    over paired frame ids; 0 = the clusters say nothing about the labels, 1 = they determine them."""
    labels, clusters = labels.long().flatten(), clusters.long().flatten()
    if labels.numel() == 0 or labels.shape != clusters.shape:
        raise ValueError(f"pnmi needs paired, non-empty frame ids, got {tuple(labels.shape)} and {tuple(clusters.shape)}")
    joint = torch.zeros(int(labels.max()) + 1, int(clusters.max()) + 1, dtype=torch.float64)
    joint.index_put_((labels, clusters), torch.ones_like(labels, dtype=torch.float64), accumulate=True)
    p = joint / joint.sum()
    p_label, p_cluster = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * (p[nz] / (p_label[:, None] * p_cluster[None])[nz]).log()).sum()
    h = -(p_label[p_label > 0] * p_label[p_label > 0].log()).sum()
    return float(mi / h) if h > 0 else 0.0


def ctc_frame_labels(model, wave: torch.Tensor) -> torch.Tensor:
    """Approximate per-frame character ids of one utterance from a CTC model's greedy spikes: each output
    frame takes the character of the nearest non-blank frame (all blank -> the blank id)."""
    with torch.no_grad():
        log_probs, lengths, _ = model.forward(input_signal=wave[None], input_signal_length=torch.tensor([wave.shape[0]]))
    ids = log_probs[0, : int(lengths[0])].argmax(-1)
    blank = log_probs.shape[-1] - 1
    spikes = (ids != blank).nonzero().flatten()
    if spikes.numel() == 0:
        return torch.full_like(ids, blank)
    t = torch.arange(ids.shape[0])
    nearest = (t[:, None] - spikes[None]).abs().argmin(-1)
    return ids[spikes[nearest]]


def bench_target_purity(
    aligner: str | Path,
    manifest: str | Path,
    targets: Sequence[str],
    fit_manifest: str | Path,
    out_dir: str | Path,
    clusters: int = 100,
    fit_hours: float = 0.5,
    sample_rate: int = 16000,
    command: str = "",
) -> str:
    """How much do HuBERT targets say about the characters? PNMI of k-means cluster ids vs characters aligned
    by a trained CTC model (``aligner``), on ``manifest``.

    ``targets``: ``mfcc=CENTROIDS.npy`` (MFCC clusters already fitted), ``mfcc``, or a ``.nemo`` path
    (k-means on that model's encoder output, fitted on ``fit_hours`` of ``fit_manifest``: HuBERT's
    iteration-2 features, so a pre-trained encoder that learned phonetic structure scores above MFCC).
    """
    from manifests.audio import AudioError, load_audio

    from nemo_sew.evaluate import read_manifest
    from nemo_sew.models.ctc import SqueezeCTCModel
    from nemo_sew.ssl.targets import KMeansLabeler, build_target_features, kmeans_from_manifest

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = SqueezeCTCModel.restore_from(str(aligner), map_location="cpu").eval()
    waves = []
    for entry in read_manifest(manifest):
        try:
            wave, _ = load_audio(entry["audio_filepath"], expected_sample_rate=sample_rate)
        except (AudioError, OSError, ValueError) as e:
            log.warning("purity: skipping %s (%s)", entry["audio_filepath"], e)
            continue
        waves.append(torch.from_numpy(wave.astype("float32")))
    chars = [ctc_frame_labels(model, w) for w in waves]
    rows = []
    for spec in targets:
        source, _, centroids = spec.partition("=")
        features = build_target_features(source, sample_rate).eval()
        if not centroids:
            centroids = str(out_dir / f"{Path(source).stem}_km{clusters}.npy")
            kmeans_from_manifest(fit_manifest, centroids, source, num_clusters=clusters, max_hours=fit_hours)
        labeler = KMeansLabeler(clusters, int(features.out_dim))
        labeler.load(centroids)
        ids_c, ids_k = [], []
        with torch.no_grad():
            for w, c in zip(waves, chars):
                f, frames = features(w[None], torch.tensor([w.shape[0]]))
                k = labeler(f[:, : int(frames[0])])[0]
                n = min(k.shape[0], c.shape[0])
                ids_c.append(c[:n])
                ids_k.append(k[:n])
        rows.append((source, pnmi(torch.cat(ids_c), torch.cat(ids_k)), sum(x.numel() for x in ids_c)))
    lines = [
        "### HuBERT target purity: k-means clusters vs characters (PNMI)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Characters per 20 ms frame: greedy CTC spikes of `{aligner}` (nearest spike), on `{manifest}`; "
        f"{clusters} clusters; encoder features clustered on {fit_hours} h of `{fit_manifest}`",
        "",
        "| cluster source | PNMI vs characters | frames |",
        "|---|---|---|",
        *[f"| {name} | {value:.3f} | {frames} |" for name, value, frames in rows],
    ]
    return "\n".join(lines) + "\n"
