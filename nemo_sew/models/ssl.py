"""Self-supervised pre-training of a squeezed encoder: wav2vec 2.0 as SEW uses it, and HuBERT.

``SqueezeSSLModel`` is a NeMo ``ModelPT``. What it reuses from NeMo: the model/trainer/exp_manager plumbing,
``.nemo`` save/restore, the char audio dataset and its loaders (JSON manifests with semi-sorted batching,
tarred, or lhotse with duration bucketing: ``EncDecCTCModel``'s loader; transcripts are read but unused),
and NeMo's Gumbel vector quantizer (``GumbelVectorQuantizer``, a port of fairseq's). What does not fit,
and why it is written here: NeMo's ``SpeechEncDecSelfSupervisedModel`` masks spectrogram patches *before*
the encoder and quantizes spectrogram patches inside ``ContrastiveLoss``; SEW masks 20 ms front-end
features *inside* the encoder (between the front end and the squeeze) and quantizes those features, so
the masking, the heads and the losses (:mod:`nemo_sew.ssl`) are ours.

Objectives (``cfg.objective``, classes in :mod:`nemo_sew.ssl.objectives`, looked up in its ``OBJECTIVES``):

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
from nemo.collections.asr.models import EncDecCTCModel
from nemo.core.classes import ModelPT
from nemo.core.classes.common import PretrainedModelInfo
from omegaconf import DictConfig, open_dict

from nemo_sew.encoder import Draw, SqueezeEncoder
from nemo_sew.models.ctc import DataGuardMixin, ProfileAPIMixin, _as_dictconfig, upgraded_model_config
from nemo_sew.nn.frontend import time_mask
from nemo_sew.ssl.masking import span_mask
from nemo_sew.stochastic import run_seed
from nemo_sew.ssl.objectives import HUBERT_DEFAULTS, OBJECTIVES, W2V2_DEFAULTS, SSLObjective, objective_class

__all__ = ["SqueezeSSLModel", "OBJECTIVES", "W2V2_DEFAULTS", "HUBERT_DEFAULTS"]

log = logging.getLogger("nemo_sew.models")

ENGLISH_CHARS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]


class SqueezeSSLModel(ProfileAPIMixin, DataGuardMixin, ModelPT):
    """Self-supervised pre-training of a :class:`nemo_sew.SqueezeEncoder` (see the module docstring)."""

    checks_vocabulary = False  # transcripts are not trained on

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        cfg = upgraded_model_config(cfg)
        with open_dict(cfg):
            cfg.setdefault("labels", ENGLISH_CHARS)  # the char dataset parses transcripts; they are unused
            cfg.encoder.mask_emb = True
            cfg.encoder.masking = None
            name = cfg.setdefault("objective", "wav2vec2")
            objective_cls = objective_class(name)  # a ValueError listing the known ones
            cfg[name] = objective_cls.with_defaults(cfg.get(name))
            cfg.setdefault("masking", {"prob": 0.65, "length": 10, "min_masks": 2})
            cfg.setdefault("compressed_targets", False)
            cfg.setdefault("feature_grad_mult", 0.1)
        super().__init__(cfg=cfg, trainer=trainer)
        self.preprocessor = self.from_config_dict(self.cfg.preprocessor)
        self.encoder = self.from_config_dict(self.cfg.encoder)
        if not isinstance(self.encoder, SqueezeEncoder):
            raise TypeError(f"SqueezeSSLModel needs a nemo_sew.SqueezeEncoder, got {type(self.encoder).__name__}")
        self.compressed = bool(self.cfg.compressed_targets)
        if not self.compressed and self.encoder.expander is None:
            raise ValueError("SEW-style pre-training scores 20 ms frames: the encoder needs upsample=true "
                             "(or set compressed_targets=true for the once-for-all variant)")
        name = str(self.cfg.objective)
        self.objective: SSLObjective = objective_cls(
            self.cfg[name], frontend_dim=int(self.encoder.frontend_dim), d_model=int(self.encoder.d_model),
            sample_rate=int(self.cfg.sample_rate), restoring=self._is_model_being_restored(),
        )  # fmt: skip
        self._register_load_state_dict_pre_hook(_upgrade_legacy_state_dict)
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
        if name == "train":
            self._make_train_resumable(config)

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
        front = enc.front(signal, signal_len, draw=draw, masking=False, feature_grad_mult=float(self.cfg.feature_grad_mult))
        feats, frames, normed, x = front.features, front.lengths, front.normed, front.hidden  # x: (B, T, D)
        t = feats.shape[1]
        valid = time_mask(frames, t)
        feature_pen = feats.float().pow(2)[valid].mean()

        objective = self.objective
        target_src = objective.target_source(normed, input_signal, input_signal_length, t)  # (B, T, F)
        m = self.cfg.masking
        if not self.compressed:
            mask, out_len = span_mask(frames, t, float(m.prob), int(m.length), int(m.get("min_masks", 2))), frames
            x = torch.where(mask[..., None], enc.mask_emb.to(x.dtype), x)
            encoded = enc.from_front(dataclasses.replace(front, hidden=x), draw)  # (B, T, D) back at 20 ms
        else:
            squeezed = enc.squeeze_features(x, frames, draw, input_lengths=signal_len, units=front.units)
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

        total, accuracy, out = objective.loss(y, mask, target_src, out_len)
        total = total + objective.feature_penalty_weight * feature_pen
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
        self.objective.on_train_step(step)
        out = self(*self._batch_audio(batch), draw=self.encoder.draw(step, seed=run_seed(self)))  # the same draw on every DDP rank
        loss = out["loss"]
        if not torch.isfinite(loss):
            log.warning("non-finite training loss at step %d; this batch is skipped", self.trainer.global_step)
            loss = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        self.log_dict({f"train_{k}": v for k, v in out.items() if k != "loss"}, on_step=True)
        self.log("train_loss", loss.detach(), prog_bar=True)
        if self.trainer.optimizers:
            self.log("learning_rate", self.trainer.optimizers[0].param_groups[0]["lr"])
        for name, value in self.objective.train_logs().items():
            self.log(name, value)
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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if any(k.split(".", 1)[0] in LEGACY_OBJECTIVE_PARTS for k in checkpoint.get("state_dict", {})):
            # a checkpoint written before objectives were submodules: its weights are renamed on loading,
            # and the optimizer state it holds follows the order the parameters had then
            for state in checkpoint.get("optimizer_states", []):
                self._reorder_legacy_optimizer_state(state)

    def _reorder_legacy_optimizer_state(self, state: dict) -> None:
        """Map an optimizer state saved when the objective's own parameters (``label_emb``) were the model's
        (first in ``parameters()``) to the order of ``parameters()`` now (after the encoder's)."""
        names = [n for n, _ in self.named_parameters()]
        own = [i for i, n in enumerate(names) if n.startswith("objective.") and n.count(".") == 1]
        legacy_order = own + [i for i in range(len(names)) if i not in own]  # legacy position -> position now
        groups = state.get("param_groups", [])
        if legacy_order == list(range(len(names))) or not groups:
            return
        if len(groups) != 1 or len(groups[0]["params"]) != len(names):
            log.warning("optimizer state of a checkpoint written before objectives were submodules: its "
                        "parameter groups do not match the model's, left as they are")  # fmt: skip
            return
        saved = groups[0]["params"]
        reordered = [None] * len(saved)
        for old_pos, new_pos in enumerate(legacy_order):
            reordered[new_pos] = saved[old_pos]
        groups[0]["params"] = reordered

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        period = self.encoder.learned_frame_period_ms()
        if period is not None:
            checkpoint["learned_frame_period_ms"] = period


# the top-level names of the objective's parts in state dicts written before the objective was a submodule
LEGACY_OBJECTIVE_PARTS = ("quantizer", "project_q", "final_proj", "labeler", "label_emb", "target_features")


def _upgrade_legacy_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Rename the objective's parts of ``.nemo`` files / checkpoints written before the objective was a
    submodule: ``quantizer.*`` -> ``objective.quantizer.*``, ``label_emb`` -> ``objective.label_emb``, ..."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix) :]
        if local.split(".", 1)[0] in LEGACY_OBJECTIVE_PARTS:
            state_dict[f"{prefix}objective.{local}"] = state_dict.pop(key)
