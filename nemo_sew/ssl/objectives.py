"""Pre-training objectives of :class:`nemo_sew.models.ssl.SqueezeSSLModel`: one class per ``cfg.objective``.

The model runs what all objectives share (the front end, masking at 20 ms or on the squeezed sequence,
the encoder, the feature penalty); an objective adds what differs:

* its **parts** (heads, quantizer, labeler, ...), built from its config section (``cfg.wav2vec2`` /
  ``cfg.hubert`` merged with its :attr:`SSLObjective.defaults`), the encoder's ``frontend_dim`` and
  ``d_model`` and the sample rate;
* :meth:`SSLObjective.target_source`: what the targets are computed from, ``(B, T, F)`` at 20 ms (the
  model pools it to the squeezed rate with ``compressed_targets``);
* :meth:`SSLObjective.loss`: the loss on the encoder's outputs at the masked frames, its accuracy and the
  parts of the loss to log;
* :meth:`SSLObjective.on_train_step` / :meth:`SSLObjective.train_logs`: per-step schedules and their logs;
* :attr:`SSLObjective.feature_penalty_weight`: the weight of the model's ``mean(features^2)`` penalty.

The objective is an ordinary submodule of the model (``model.objective``) that owns its parts, so they are in
the model's state dict as ``objective.quantizer.*``, ``objective.final_proj.*``, ``objective.label_emb``, ...
(the model renames the top-level keys of ``.nemo`` files and checkpoints written before objectives were
classes when it loads them).

``OBJECTIVES`` maps ``cfg.objective`` to its class; :func:`objective_class` looks a name up.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from nemo.collections.asr.parts.submodules.ssl_quantizers import GumbelVectorQuantizer
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from nemo_sew.nn.frontend import time_mask
from nemo_sew.ssl.heads import MLPHead
from nemo_sew.ssl.losses import contrastive_loss, masked_prediction_loss, sample_negatives
from nemo_sew.ssl.targets import KMeansLabeler, build_target_features

W2V2_DEFAULTS = {
    "final_dim": 256,
    "head_hidden": 4096,  # SEW's MLP heads; 0 = wav2vec 2.0's linear heads
    "num_negatives": 100,
    "temperature": 0.1,
    "codebook": {"groups": 2, "num_vars": 320, "dim": 256, "temp": [2.0, 0.5, 0.999995]},
    "diversity_weight": 0.1,
    "feature_penalty_weight": 10.0,
    "target_dropout": 0.1,  # fairseq dropout_features
}
HUBERT_DEFAULTS = {
    "features": "mfcc",  # or the path of a teacher .nemo (iteration 2)
    "layer": None,  # teacher blocks to run (None = all)
    "num_clusters": 100,
    "feature_dim": None,  # filled in from the features
    "centroids": None,  # .npy from `nemo-sew kmeans`; stored in the state dict afterwards
    "final_dim": 256,
    "head_hidden": 0,
    "temperature": 0.1,
    "unmasked_weight": 0.0,
    "feature_penalty_weight": 10.0,
}


class SSLObjective(nn.Module):
    """One pre-training objective (see the module docstring). Subclasses set :attr:`name` and :attr:`defaults`.

    Its options are read from the config section once, at construction (NeMo's rule: a model's config
    is not re-read after the model is built).
    """

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]]

    def __init__(
        self, cfg: DictConfig, frontend_dim: int, d_model: int, sample_rate: int = 16000, restoring: bool = False
    ) -> None:
        """``cfg``: the objective's section, with :meth:`with_defaults` applied. ``restoring``: a state dict
        follows (learned or fitted state need not be loaded from elsewhere)."""
        super().__init__()
        self.feature_penalty_weight = float(cfg.feature_penalty_weight)

    @classmethod
    def with_defaults(cls, section: DictConfig | dict | None) -> DictConfig:
        """The objective's config section with the defaults of the options it leaves out."""
        return OmegaConf.merge(cls.defaults, section or {})

    # ---------------------------------------------------------------------------------- interface

    def target_source(
        self,
        normed_features: torch.Tensor,
        input_signal: torch.Tensor,
        input_signal_length: torch.Tensor,
        num_frames: int,
    ) -> torch.Tensor:
        """What the targets are computed from, ``(B, num_frames, F)`` at 20 ms.

        ``normed_features``: the front end's features after the encoder's normalisation, ``(B, T, C_front)``;
        ``input_signal`` / ``input_signal_length``: the batch's waveforms ``(B, N)``.
        """
        raise NotImplementedError

    def loss(
        self, y: torch.Tensor, mask: torch.Tensor, target_src: torch.Tensor, out_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's loss on the encoder's outputs.

        Args:
            y: ``(B, T, D)`` the encoder's outputs (at 20 ms, or at the squeezed rate with compressed targets).
            mask: ``(B, T)`` the masked (scored) frames; at least one is True.
            target_src: ``(B, T, F)`` :meth:`target_source`, at the rate of ``y``.
            out_len: ``(B,)`` valid frames of ``y``.

        Returns the loss (without the feature penalty), the accuracy, and detached parts to log by name.
        """
        raise NotImplementedError

    def on_train_step(self, step: int) -> None:
        """Called at the start of every training step with the trainer's global step."""

    def train_logs(self) -> dict[str, float]:
        """Values to log at every training step (after the step's forward)."""
        return {}


class Wav2Vec2Objective(SSLObjective):
    """wav2vec 2.0 as SEW uses it: InfoNCE of the masked outputs against Gumbel-quantized unmasked front-end
    features, distractors from the same utterance, plus ``diversity_weight * diversity``.

    Parts: ``quantizer`` (NeMo's ``GumbelVectorQuantizer``), ``project_q`` and ``final_proj`` (MLP heads),
    ``target_dropout`` (fairseq ``dropout_features``, no state).
    """

    name = "wav2vec2"
    defaults = W2V2_DEFAULTS

    def __init__(
        self, cfg: DictConfig, frontend_dim: int, d_model: int, sample_rate: int = 16000, restoring: bool = False
    ) -> None:
        super().__init__(cfg, frontend_dim, d_model, sample_rate, restoring)
        cb = cfg.codebook
        self.quantizer = GumbelVectorQuantizer(
            dim=frontend_dim, num_vars=int(cb.num_vars), temp=tuple(cb.temp), groups=int(cb.groups),
            combine_groups=False, vq_dim=int(cb.dim), time_first=True,
        )  # fmt: skip
        self.project_q = MLPHead(int(cb.dim), int(cfg.final_dim), int(cfg.head_hidden))
        self.target_dropout = nn.Dropout(float(cfg.target_dropout))
        self.final_proj = MLPHead(d_model, int(cfg.final_dim), int(cfg.head_hidden))
        self.num_negatives = int(cfg.num_negatives)
        self.temperature = float(cfg.temperature)
        self.diversity_weight = float(cfg.diversity_weight)

    def target_source(self, normed_features, input_signal, input_signal_length, num_frames):
        return self.target_dropout(normed_features)  # the unmasked features, (B, T, C_front)

    def loss(self, y, mask, target_src, out_len):
        predictions = self.final_proj(y[mask])  # (N, final_dim)
        q, diversity, _ = self.quantizer(target_src[mask][None])  # (1, N, cb_dim)
        targets = self.project_q(q[0])
        utterance = mask.nonzero()[:, 0]
        negatives = sample_negatives(utterance, self.num_negatives)
        loss, accuracy = contrastive_loss(predictions, targets, negatives, self.temperature)
        parts = {"contrastive_loss": loss.detach(), "diversity_loss": diversity.detach()}
        return loss + self.diversity_weight * diversity, accuracy, parts

    def on_train_step(self, step: int) -> None:
        self.quantizer.set_num_updates(step)  # the Gumbel temperature schedule

    def train_logs(self) -> dict[str, float]:
        return {"codebook_temp": float(self.quantizer.curr_temp)}


class HuBERTObjective(SSLObjective):
    """HuBERT: cross-entropy over k-means cluster ids of MFCC features (iteration 1) or a teacher model's
    layer (iteration 2) at the masked frames, logits by cosine to label embeddings; optionally
    ``unmasked_weight`` times the same loss at the unmasked frames.

    Parts: ``target_features`` (frozen MFCC or teacher), ``labeler`` (the centroids, a buffer),
    ``label_emb`` and ``final_proj``. Writes ``feature_dim`` (the features' size) into its config section.
    """

    name = "hubert"
    defaults = HUBERT_DEFAULTS

    def __init__(
        self, cfg: DictConfig, frontend_dim: int, d_model: int, sample_rate: int = 16000, restoring: bool = False
    ) -> None:
        super().__init__(cfg, frontend_dim, d_model, sample_rate, restoring)
        self.target_features = build_target_features(str(cfg.features), int(sample_rate), cfg.layer)
        with open_dict(cfg):
            cfg.feature_dim = int(self.target_features.out_dim)
        self.labeler = KMeansLabeler(int(cfg.num_clusters), int(cfg.feature_dim))
        if restoring:
            pass  # the centroids come with the state dict
        elif cfg.centroids:
            self.labeler.load(str(cfg.centroids))
        else:
            raise ValueError("hubert.centroids is not set: fit them first with `nemo-sew kmeans`")
        self.label_emb = nn.Parameter(torch.randn(int(cfg.num_clusters), int(cfg.final_dim)) * 0.02)
        self.final_proj = MLPHead(d_model, int(cfg.final_dim), int(cfg.head_hidden))
        self.temperature = float(cfg.temperature)
        self.unmasked_weight = float(cfg.unmasked_weight)

    def target_source(self, normed_features, input_signal, input_signal_length, num_frames):
        feats, _ = self.target_features(input_signal, input_signal_length)
        return _fit_time(feats, num_frames)

    def loss(self, y, mask, target_src, out_len):
        predictions = self.final_proj(y[mask])  # (N, final_dim)
        labels = self.labeler(target_src)  # (B, T or T')
        loss, accuracy = masked_prediction_loss(predictions, self.label_emb, labels[mask], self.temperature)
        total = loss
        if self.unmasked_weight > 0:
            keep = time_mask(out_len, mask.shape[1]) & ~mask
            unmasked, _ = masked_prediction_loss(
                self.final_proj(y[keep]), self.label_emb, labels[keep], self.temperature
            )
            total = total + self.unmasked_weight * unmasked
        return total, accuracy, {"masked_loss": loss.detach()}


OBJECTIVES: dict[str, type[SSLObjective]] = {"wav2vec2": Wav2Vec2Objective, "hubert": HuBERTObjective}


def objective_class(name: str) -> type[SSLObjective]:
    """The class of ``cfg.objective``; a ValueError listing the known ones for any other name."""
    try:
        return OBJECTIVES[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in OBJECTIVES)
        raise ValueError(f"unknown SSL objective {name!r}: expected one of {known}") from None


def _fit_time(x: torch.Tensor, t: int) -> torch.Tensor:
    """Trim or pad (repeating the last frame) ``(B, T_x, F)`` to ``t`` frames: target features computed
    from the waveform may differ from the front end's frame count by a frame."""
    if x.shape[1] >= t:
        return x[:, :t]
    return F.pad(x.transpose(1, 2), (0, t - x.shape[1]), mode="replicate").transpose(1, 2)
