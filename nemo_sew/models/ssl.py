"""Self-supervised pre-training of a squeezed encoder: wav2vec 2.0 as SEW uses it, and HuBERT.

``SqueezeSSLModel`` is a NeMo ``ModelPT``. What it reuses from NeMo: the model/trainer/exp_manager plumbing,
``.nemo`` save/restore, the char audio dataset and its loaders (JSON manifests with semi-sorted batching,
tarred, or lhotse with duration bucketing: ``EncDecCTCModel``'s loader; transcripts are read but unused),
and NeMo's Gumbel vector quantizer (``GumbelVectorQuantizer``, a port of fairseq's). What does not fit,
and why it is written here: NeMo's ``SpeechEncDecSelfSupervisedModel`` masks spectrogram patches *before*
the encoder and quantizes spectrogram patches inside ``ContrastiveLoss``; SEW masks 20 ms front-end
features *inside* the encoder (between the front end and the squeeze) and quantizes those features, so
the masking, the heads and the losses (:mod:`nemo_sew.ssl`) are ours.

Objectives (``cfg.objective``):

* ``wav2vec2`` (SEW): span masking at 20 ms, the encoder (squeezed, possibly with a stochastic squeeze
  sampler) and its expander back to 20 ms, MLP heads, InfoNCE against Gumbel-quantized unmasked features
  with distractors from the same utterance, plus ``diversity_weight * diversity + feature_penalty_weight *
  mean(features^2)``.
* ``hubert``: the same masking and encoder; cross-entropy over k-means cluster ids of MFCC features
  (iteration 1) or a teacher model's layer (iteration 2), logits by cosine to label embeddings.

``compressed_targets: true`` is the once-for-all variant: no expander, masking on the squeezed
sequence, and targets pooled to the squeezed rate with the compressor's own weights
(:meth:`nemo_sew.nn.compress.SqueezeCompressor.integrate`) instead of upsampling the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch
import torch.nn.functional as F
from nemo.collections.asr.models import EncDecCTCModel
from nemo.collections.asr.parts.submodules.ssl_quantizers import GumbelVectorQuantizer
from nemo.core.classes import ModelPT
from nemo.core.classes.common import PretrainedModelInfo
from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_sew.encoder import Draw, SqueezeEncoder
from nemo_sew.models.ctc import DataGuardMixin, ProfileAPIMixin, _as_dictconfig, upgraded_model_config
from nemo_sew.nn.frontend import time_mask
from nemo_sew.ssl.heads import MLPHead
from nemo_sew.ssl.losses import contrastive_loss, masked_prediction_loss, sample_negatives
from nemo_sew.ssl.masking import span_mask
from nemo_sew.ssl.targets import KMeansLabeler, build_target_features

log = logging.getLogger("nemo_sew.models")

ENGLISH_CHARS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]

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


class _GradMultiply(torch.autograd.Function):
    """Scale the gradient into the front end (fairseq ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


class SqueezeSSLModel(ProfileAPIMixin, DataGuardMixin, ModelPT):
    """Self-supervised pre-training of a :class:`nemo_sew.SqueezeEncoder` (see the module docstring)."""

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        cfg = upgraded_model_config(cfg)
        with open_dict(cfg):
            cfg.setdefault("labels", ENGLISH_CHARS)  # the char dataset parses transcripts; they are unused
            cfg.encoder.mask_emb = True
            cfg.encoder.masking = None
            objective = cfg.setdefault("objective", "wav2vec2")
            if objective not in ("wav2vec2", "hubert"):
                raise ValueError(f"expected objective 'wav2vec2' or 'hubert', got {objective!r}")
            defaults = W2V2_DEFAULTS if objective == "wav2vec2" else HUBERT_DEFAULTS
            cfg[objective] = OmegaConf.merge(defaults, cfg.get(objective) or {})
            cfg.setdefault("masking", {"prob": 0.65, "length": 10, "min_masks": 2})
            cfg.setdefault("compressed_targets", False)
            cfg.setdefault("feature_grad_mult", 0.1)
        super().__init__(cfg=cfg, trainer=trainer)
        self.preprocessor = self.from_config_dict(self.cfg.preprocessor)
        self.encoder = self.from_config_dict(self.cfg.encoder)
        if not isinstance(self.encoder, SqueezeEncoder):
            raise TypeError(f"SqueezeSSLModel needs a nemo_sew.SqueezeEncoder, got {type(self.encoder).__name__}")
        self.objective = str(self.cfg.objective)
        self.compressed = bool(self.cfg.compressed_targets)
        if not self.compressed and self.encoder.expander is None:
            raise ValueError("SEW-style pre-training scores 20 ms frames: the encoder needs upsample=true "
                             "(or set compressed_targets=true for the once-for-all variant)")
        d_model = int(self.encoder.d_model)
        front_dim = int(self.encoder.frontend_dim)
        if self.objective == "wav2vec2":
            o = self.cfg.wav2vec2
            cb = o.codebook
            self.quantizer = GumbelVectorQuantizer(
                dim=front_dim, num_vars=int(cb.num_vars), temp=tuple(cb.temp), groups=int(cb.groups),
                combine_groups=False, vq_dim=int(cb.dim), time_first=True,
            )  # fmt: skip
            self.project_q = MLPHead(int(cb.dim), int(o.final_dim), int(o.head_hidden))
            self.target_dropout = torch.nn.Dropout(float(o.target_dropout))
        else:
            o = self.cfg.hubert
            self.target_features = build_target_features(str(o.features), int(self.cfg.sample_rate), o.layer)
            with open_dict(self.cfg):
                self.cfg.hubert.feature_dim = int(self.target_features.out_dim)
            self.labeler = KMeansLabeler(int(o.num_clusters), int(self.cfg.hubert.feature_dim))
            if self._is_model_being_restored():
                pass  # the centroids come with the state dict
            elif o.centroids:
                self.labeler.load(str(o.centroids))
            else:
                raise ValueError("hubert.centroids is not set: fit them first with `nemo-sew kmeans`")
            self.label_emb = torch.nn.Parameter(torch.randn(int(o.num_clusters), int(o.final_dim)) * 0.02)
        self.final_proj = MLPHead(d_model, int(o.final_dim), int(o.head_hidden))
        self._init_profile()

    @classmethod
    def list_available_models(cls) -> list[PretrainedModelInfo]:
        return []  # no hub models: checkpoints come from local files

    # ---------------------------------------------------------------------------------- data

    def _setup_dataloader_from_config(self, config: DictConfig):
        # NeMo's char CTC loader: JSON / tarred / lhotse, semi-sorted batching; reads self.cfg.labels only
        return EncDecCTCModel._setup_dataloader_from_config(self, config)

    def _setup_split(self, data_config: DictConfig | dict | None, name: str, shuffle: bool) -> None:
        """Validate the manifest (logged skips), record the config as ``cfg.{name}_ds``, set ``self._{name}_dl``."""
        config = self._validated(_as_dictconfig(data_config))
        if config is None:
            return
        with open_dict(config):
            config.setdefault("shuffle", shuffle)
        self._update_dataset_config(dataset_name=name, config=config)
        setattr(self, f"_{name}_dl", self._setup_dataloader_from_config(config))

    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        self._setup_split(train_data_config, "train", shuffle=True)

    def setup_validation_data(self, val_data_config: DictConfig | dict | None):
        self._setup_split(val_data_config, "validation", shuffle=False)

    def setup_test_data(self, test_data_config: DictConfig | dict | None):
        self._setup_split(test_data_config, "test", shuffle=False)

    # ---------------------------------------------------------------------------------- forward

    def forward(
        self, input_signal: torch.Tensor, input_signal_length: torch.Tensor, draw: Draw | None = None
    ) -> dict[str, torch.Tensor]:
        """Waveforms ``(B, N)`` -> the loss and its parts (a dict of scalars).

        ``draw``: the encoder's profile for this step (:meth:`SqueezeEncoder.draw`); None = the active one.
        """
        enc = self.encoder
        draw = draw if draw is not None else enc.draw()
        signal, signal_len = self.preprocessor(input_signal=input_signal, length=input_signal_length)
        enc.check_inputs(signal, signal_len)
        feats, frames = enc.features(signal, signal_len)  # (B, T, C_front) at 20 ms
        if self.training and float(self.cfg.feature_grad_mult) != 1.0:
            feats = _GradMultiply.apply(feats, float(self.cfg.feature_grad_mult))
        t = feats.shape[1]
        valid = time_mask(frames, t)
        feature_pen = feats.float().pow(2)[valid].mean()
        normed = enc.projection.normalize(feats)
        x = enc.projection.project(normed)  # (B, T, D): the encoder's own projection

        if self.objective == "wav2vec2":
            target_src = self.target_dropout(normed)  # unmasked features, (B, T, C_front)
        else:
            target_src, _ = self.target_features(input_signal, input_signal_length)
            target_src = _fit_time(target_src, t)
        m = self.cfg.masking
        if not self.compressed:
            mask, out_len = span_mask(frames, t, float(m.prob), int(m.length), int(m.get("min_masks", 2))), frames
            x = torch.where(mask[..., None], enc.mask_emb.to(x.dtype), x)
            encoded = enc.context(enc.squeeze_features(x, frames, draw), draw)  # (B, T, D) back at 20 ms
        else:
            squeezed = enc.squeeze_features(x, frames, draw)
            h, out_len = squeezed.hidden, squeezed.lengths
            mask = span_mask(out_len, h.shape[1], float(m.prob), int(m.length), int(m.get("min_masks", 2)))
            squeezed = dataclasses.replace(squeezed, hidden=torch.where(mask[..., None], enc.mask_emb.to(h.dtype), h))
            encoded = enc.context(squeezed, draw, expand=False)  # (B, T', D)
            if encoded.hidden.shape[1] != mask.shape[1]:
                raise ValueError("compressed_targets needs an output at the squeezed rate: no q_pool in its profiles")
            # the targets are pooled at the factor this forward ran at (a tensor for a learned rate)
            target_src, _ = enc.compressor.integrate(
                target_src, x, frames, squeezed.factor, squeezed.cif_lambda, keep_tail=not self.training
            )
        y = encoded.hidden
        if not bool(mask.any()):  # possible with min_masks=0: score one frame per item rather than stop the run
            log.warning("no frame was masked in this batch; scoring the first frame of each utterance")
            mask = torch.zeros_like(mask)
            mask[:, 0] = time_mask(out_len, mask.shape[1])[:, 0]

        out: dict[str, torch.Tensor] = {}
        predictions = self.final_proj(y[mask])  # (N, final_dim)
        if self.objective == "wav2vec2":
            o = self.cfg.wav2vec2
            q, diversity, _ = self.quantizer(target_src[mask][None])  # (1, N, cb_dim)
            targets = self.project_q(q[0])
            utterance = mask.nonzero()[:, 0]
            negatives = sample_negatives(utterance, int(o.num_negatives))
            loss, accuracy = contrastive_loss(predictions, targets, negatives, float(o.temperature))
            out.update(contrastive_loss=loss.detach(), diversity_loss=diversity.detach())
            total = loss + float(o.diversity_weight) * diversity
        else:
            o = self.cfg.hubert
            labels = self.labeler(target_src)  # (B, T or T')
            loss, accuracy = masked_prediction_loss(predictions, self.label_emb, labels[mask], float(o.temperature))
            out.update(masked_loss=loss.detach())
            total = loss
            if float(o.unmasked_weight) > 0:
                keep = time_mask(out_len, mask.shape[1]) & ~mask
                unmasked, _ = masked_prediction_loss(self.final_proj(y[keep]), self.label_emb, labels[keep], float(o.temperature))
                total = total + float(o.unmasked_weight) * unmasked
        total = total + float(o.feature_penalty_weight) * feature_pen
        for name, value in encoded.aux_losses.items():  # the learned rate's penalty, ...
            total = total + value
            out[name] = value.detach()
        out["squeeze"] = torch.tensor(encoded.stats["squeeze"])
        out.update(loss=total, accuracy=accuracy.detach(), feature_penalty=feature_pen.detach(),
                   masked_fraction=mask.float().sum() / time_mask(out_len, mask.shape[1]).float().sum())  # fmt: skip
        return out

    # ---------------------------------------------------------------------------------- steps

    def _batch_audio(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(batch, (list, tuple)):
            return batch[0], batch[1]
        return batch.audio, batch.audio_lens  # lhotse / newer NeMo batch objects

    def training_step(self, batch: Any, batch_idx: int):
        step = int(self.trainer.global_step)
        if self.objective == "wav2vec2":
            self.quantizer.set_num_updates(step)
        out = self(*self._batch_audio(batch), draw=self.encoder.draw(step))  # the same draw on every DDP rank
        loss = out["loss"]
        if not torch.isfinite(loss):
            log.warning("non-finite training loss at step %d; this batch is skipped", self.trainer.global_step)
            loss = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        self.log_dict({f"train_{k}": v for k, v in out.items() if k != "loss"}, on_step=True)
        self.log("train_loss", loss.detach(), prog_bar=True)
        if self.trainer.optimizers:
            self.log("learning_rate", self.trainer.optimizers[0].param_groups[0]["lr"])
        if self.objective == "wav2vec2":
            self.log("codebook_temp", float(self.quantizer.curr_temp))
        if self.encoder.learned_rate is not None:
            self.log("learned_frame_period_ms", self.encoder.learned_frame_period_ms())
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0):
        with torch.no_grad():
            out = self(*self._batch_audio(batch))
        self.validation_step_outputs.append({k: v.detach() for k, v in out.items()})
        return out

    def on_validation_epoch_end(self):
        outputs = self.validation_step_outputs
        if outputs:
            for key in outputs[0]:
                self.log(f"val_{key}", torch.stack([o[key] for o in outputs]).mean(), sync_dist=True)
        self.validation_step_outputs.clear()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        period = self.encoder.learned_frame_period_ms()
        if period is not None:
            checkpoint["learned_frame_period_ms"] = period


def _fit_time(x: torch.Tensor, t: int) -> torch.Tensor:
    """Trim or pad (repeating the last frame) ``(B, T_x, F)`` to ``t`` frames: target features computed
    from the waveform may differ from the front end's frame count by a frame."""
    if x.shape[1] >= t:
        return x[:, :t]
    return F.pad(x.transpose(1, 2), (0, t - x.shape[1]), mode="replicate").transpose(1, 2)
