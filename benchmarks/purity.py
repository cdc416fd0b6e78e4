"""``nemo-sew bench purity``: PNMI of HuBERT k-means targets vs characters aligned by a trained CTC model.

    nemo-sew bench purity --aligner outputs/demo/model.nemo --target mfcc --target PRETRAINED.nemo
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from benchmarks.report import machine_line

log = logging.getLogger("benchmarks.purity")


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
    for i, spec in enumerate(targets):
        source, _, centroids = spec.partition("=")
        features = build_target_features(source, sample_rate).eval()
        if not centroids:
            # numbered: two models of the same file name (run/ssl.nemo, other_run/ssl.nemo) keep their own centroids
            centroids = str(out_dir / f"target{i}_{Path(source).stem}_km{clusters}.npy")
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


__all__ = ["bench_target_purity", "ctc_frame_labels", "pnmi"]
