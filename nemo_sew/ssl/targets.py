"""HuBERT targets: frame features (MFCC or a teacher encoder's layer) -> k-means cluster ids.

Iteration 1 clusters MFCC features, iteration 2 clusters features of an inner layer of the model
pre-trained in iteration 1 (HuBERT). Targets are computed on the fly from the batch's waveforms by
frozen modules held by the SSL model (:class:`TargetFeatures` + :class:`KMeansLabeler`), so any NeMo
data loader (JSON manifests or lhotse) works and no label files have to stay in sync with manifests.
The centroids are fitted once by :func:`fit_kmeans` (``nemo-sew kmeans``) and stored in the model's
state dict, so a saved ``.nemo`` carries them.

MFCC: Kaldi-style 13 coefficients from 23 mel bands (25 ms window, 10 ms hop) with deltas and
delta-deltas (39 dims, as HuBERT's ``dump_mfcc_feature.py``), normalised per utterance (mean and
variance over its valid frames: a deviation that keeps k-means from spending its clusters on loudness),
and two 10 ms frames stacked per 20 ms frame (78 dims), the model's frame rate.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.nn.frontend import time_mask

log = logging.getLogger("nemo_sew.ssl")


def _dct_matrix(n_mfcc: int, n_mels: int) -> torch.Tensor:
    # orthonormal DCT-II, (n_mels, n_mfcc): written by hand (3 lines) rather than pulling in torchaudio
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    dct = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    dct[0] /= math.sqrt(2.0)
    return dct.T.float()


def _deltas(x: torch.Tensor, width: int = 2) -> torch.Tensor:
    """Regression deltas over time of ``(B, T, F)`` (Kaldi/HTK, window +-width, edge frames repeated)."""
    denom = 2 * sum(i * i for i in range(1, width + 1))
    padded = F.pad(x.transpose(1, 2), (width, width), mode="replicate")  # (B, F, T + 2w)
    t = x.shape[1]
    out = sum(i * (padded[..., width + i : width + i + t] - padded[..., width - i : width - i + t]) for i in range(1, width + 1))
    return (out / denom).transpose(1, 2)


class MFCCFeatures(nn.Module):
    """Waveform ``(B, N)`` + lengths -> MFCC+deltas ``(B, T, 78)`` at 20 ms, lengths ``ceil``-free ``T``.

    ``T = (N // hop + 1) // 2`` per item, the same count as NeMo's mel preprocessor stacked by 2.
    """

    def __init__(self, sample_rate: int = 16000, n_mfcc: int = 13, n_mels: int = 23, stack: int = 2) -> None:
        super().__init__()
        import librosa  # a NeMo dependency

        self.hop = int(0.010 * sample_rate)
        self.win = int(0.025 * sample_rate)
        self.n_fft = 1 << (self.win - 1).bit_length()
        self.stack = stack
        fb = librosa.filters.mel(sr=sample_rate, n_fft=self.n_fft, n_mels=n_mels, fmin=20.0, htk=True)
        self.register_buffer("fbank", torch.from_numpy(fb).float(), persistent=False)  # (n_mels, F)
        self.register_buffer("dct", _dct_matrix(n_mfcc, n_mels), persistent=False)
        self.register_buffer("window", torch.hann_window(self.win), persistent=False)
        self.out_dim = 3 * n_mfcc * stack

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # one utterance at a time (cheap next to the encoder): the STFT's edge padding, the deltas and the
        # normalisation then see exactly what they would see for the utterance alone
        frames = torch.div(torch.div(lengths, self.hop, rounding_mode="floor") + 1, self.stack, rounding_mode="floor")
        t_max = int((wave.shape[1] // self.hop + 1) // self.stack)
        out = wave.new_zeros(wave.shape[0], t_max, self.out_dim, dtype=torch.float32)
        with torch.autocast(device_type=wave.device.type, enabled=False):  # fp32 targets under bf16-mixed too
            for i, n in enumerate(lengths.tolist()):
                feats = self._one(wave[i, :n].float())
                out[i, : feats.shape[0]] = feats
        return out, frames

    def _one(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True)
        mel = torch.log((self.fbank @ spec.abs().pow(2)).clamp_min(1e-10)).T  # (T10, n_mels)
        mfcc = (mel @ self.dct)[None]  # (1, T10, n_mfcc)
        feats = torch.cat([mfcc, _deltas(mfcc), _deltas(_deltas(mfcc))], dim=-1)[0]  # (T10, 39)
        feats = (feats - feats.mean(0)) * torch.rsqrt(feats.var(0, unbiased=False) + 1e-5)
        t20 = feats.shape[0] // self.stack
        return feats[: t20 * self.stack].reshape(t20, -1)  # (T, 39 * stack)


class TeacherFeatures(nn.Module):
    """Features of the first ``layer`` blocks of a frozen nemo_sew model's encoder, at 20 ms.

    The teacher is any ``.nemo`` with a :class:`nemo_sew.SqueezeEncoder` (an SSL model of the previous
    HuBERT iteration, or a CTC model); it runs at its default profile, in eval mode, without gradients.
    """

    def __init__(self, model_path: str | Path, layer: int | None = None) -> None:
        super().__init__()
        from nemo.core.classes import ModelPT

        from nemo_sew.safe_load import restore

        teacher = restore(model_path, model_class=ModelPT)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.preprocessor = teacher.preprocessor
        self.encoder = teacher.encoder
        self.layer = layer
        self.out_dim = int(self.encoder.d_model)

    def train(self, mode: bool = True) -> "TeacherFeatures":
        return super().train(False)  # always frozen

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        signal, signal_len = self.preprocessor(input_signal=wave, length=lengths)
        enc = self.encoder
        draw = enc.draw()  # the teacher's active profile (it is always in eval mode)
        front = enc.front(signal, signal_len, draw=draw, masking=False)
        return enc.from_front(front, draw, num_layers=self.layer).hidden, front.lengths


def build_target_features(spec: str, sample_rate: int = 16000, layer: int | None = None) -> nn.Module:
    """``"mfcc"`` or the path of a teacher ``.nemo``."""
    if spec == "mfcc":
        return MFCCFeatures(sample_rate)
    if not Path(spec).is_file():
        raise FileNotFoundError(f"target features: expected 'mfcc' or an existing teacher .nemo file, got {spec!r}")
    return TeacherFeatures(spec, layer)


class KMeansLabeler(nn.Module):
    """Nearest-centroid cluster ids; the centroids are a buffer (saved with the model)."""

    def __init__(self, num_clusters: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(num_clusters, dim))

    def load(self, path: str | Path) -> None:
        c = torch.from_numpy(np.load(path)).float()
        if c.shape != self.centroids.shape:
            raise ValueError(f"{path}: expected centroids of shape {tuple(self.centroids.shape)}, got {tuple(c.shape)}")
        self.centroids.copy_(c)

    @torch.no_grad()
    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """``(B, T, F) -> (B, T)`` cluster ids."""
        flat = feats.reshape(-1, feats.shape[-1]).float()
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin. In fp32 even under a
        # bf16-mixed trainer: bf16 distances flip the nearest centroid of many frames.
        with torch.autocast(device_type=flat.device.type, enabled=False):
            dist = -2.0 * flat @ self.centroids.T + (self.centroids**2).sum(-1)[None]
        return dist.argmin(-1).reshape(feats.shape[:-1])


def fit_kmeans(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    features: nn.Module,
    num_clusters: int,
    seed: int = 0,
    max_frames: int = 1_000_000,
) -> tuple[np.ndarray, float]:
    """Fit k-means (scikit-learn's MiniBatchKMeans) on the features of ``(wave, lengths)`` batches.

    Returns the centroids ``(K, F)`` and the mean squared distance of the frames to their centroid.
    """
    from sklearn.cluster import MiniBatchKMeans

    chunks, total = [], 0
    for wave, lengths in batches:
        feats, frames = features(wave, lengths)
        valid = time_mask(frames, feats.shape[1])
        chunk = feats[valid].cpu().numpy()
        chunks.append(chunk)
        total += len(chunk)
        if total >= max_frames:
            break
    data = np.concatenate(chunks)[:max_frames]
    if len(data) < num_clusters:
        raise ValueError(f"k-means needs at least {num_clusters} frames, got {len(data)}")
    km = MiniBatchKMeans(n_clusters=num_clusters, random_state=seed, batch_size=10000, n_init=3, max_iter=100)
    km.fit(data)
    inertia = float(km.inertia_) / len(data)
    log.info("k-means: %d clusters on %d frames, mean squared distance %.4f", num_clusters, len(data), inertia)
    return km.cluster_centers_.astype(np.float32), inertia


def kmeans_from_manifest(
    manifest: str | Path,
    out: str | Path,
    features: str = "mfcc",
    layer: int | None = None,
    num_clusters: int = 100,
    max_hours: float = 10.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> dict:
    """Fit HuBERT k-means centroids on the audio of a NeMo manifest; write them as ``.npy``.

    Bad entries (missing, corrupt, wrong rate, NaN) are logged and skipped. Returns a summary dict.
    """
    from manifests.audio import AudioError, load_audio

    from nemo_sew.evaluate import read_manifest

    extractor = build_target_features(features, sample_rate, layer)
    entries = read_manifest(manifest)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(entries))
    budget = max_hours * 3600.0
    skipped: list[str] = []

    def batches():
        used = 0.0
        for i in order:
            path = entries[i]["audio_filepath"]
            try:
                wav, _ = load_audio(path, expected_sample_rate=sample_rate)
            except (AudioError, OSError, ValueError) as e:
                log.warning("k-means: skipping %s (%s)", path, e)
                skipped.append(path)
                continue
            if len(wav) < 2 * 400:
                skipped.append(path)
                continue
            used += len(wav) / sample_rate
            yield torch.from_numpy(np.asarray(wav, dtype=np.float32))[None], torch.tensor([len(wav)])
            if used >= budget:
                return

    centroids, inertia = fit_kmeans(batches(), extractor, num_clusters, seed=seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, centroids)
    return {"centroids": str(out), "clusters": num_clusters, "dim": int(centroids.shape[1]),
            "mean_sq_distance": inertia, "skipped": len(skipped)}  # fmt: skip
