"""NeMo CTC models around :class:`nemo_sew.SqueezeEncoder`, with the compression-profile API.

They subclass NeMo's own ``EncDecCTCModel`` (characters) and ``EncDecCTCModelBPE`` (SentencePiece), so
``.nemo`` save/restore, ``transcribe()``, exp_manager, NeMo's training scripts and
``examples/asr/transcribe_speech.py`` work as for any NeMo model. The default profile is stored in the
model config (``cfg.profile``), named profiles in ``cfg.profiles``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import torch
from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile

log = logging.getLogger("nemo_sew.models")


def _as_dictconfig(config: DictConfig | dict | None) -> DictConfig | None:
    return OmegaConf.create(config) if isinstance(config, dict) else config


class ProfileAPIMixin:
    """The profile API of every nemo_sew model (``self.encoder`` is a :class:`SqueezeEncoder`)."""

    # ---------------------------------------------------------------------------------- profiles

    def _init_profile(self) -> None:
        if not isinstance(self.encoder, SqueezeEncoder):
            return  # a stock encoder: nothing to set
        profile = self.cfg.get("profile")
        if profile is not None:
            self.encoder.set_profile(CompressionProfile.from_dict(OmegaConf.to_container(profile)))
        self._write_profile_to_cfg(self.encoder.profile)

    def _write_profile_to_cfg(self, profile: CompressionProfile) -> None:
        with open_dict(self._cfg):
            self._cfg.profile = profile.to_dict()

    def _resolve_profile(self, profile: ProfileLike | str) -> CompressionProfile:
        if isinstance(profile, str):
            named = self.cfg.get("profiles") or {}
            if profile not in named:
                raise KeyError(f"no profile named {profile!r} in this model; named profiles: {sorted(named)}")
            fields = OmegaConf.to_container(named[profile])
            return CompressionProfile.from_dict({**fields, "name": profile})
        return as_profile(profile)

    @property
    def profile(self) -> CompressionProfile:
        return self.encoder.profile

    def set_profile(self, profile: ProfileLike | str, default: bool = True) -> CompressionProfile:
        """Run the encoder at ``profile`` (a CompressionProfile, a dict, a squeeze factor or a named profile).

        With ``default=True`` it is also written to ``cfg.profile``, so a saved ``.nemo`` (and NeMo's
        ``transcribe_speech.py`` on it) uses it.
        """
        active = self.encoder.set_profile(self._resolve_profile(profile))
        if default:
            self._write_profile_to_cfg(active)
        return active

    @contextlib.contextmanager
    def profile_scope(self, profile: ProfileLike | str | None) -> Iterator[None]:
        """Temporarily run at ``profile`` (None: keep the active one)."""
        if profile is None:
            yield
            return
        previous = self.encoder.profile
        self.set_profile(profile, default=False)
        try:
            yield
        finally:
            self.encoder.set_profile(previous)


class DataGuardMixin:
    """Manifest validation before NeMo reads training, validation and test data (logged skips)."""

    def min_input_seconds(self) -> float:
        """Shortest clip (seconds) the encoder can run at its active profile."""
        encoder = getattr(self, "encoder", None)  # NeMo sets up data before it builds the encoder
        if isinstance(encoder, SqueezeEncoder):
            need, frontend = encoder.min_input_length(), encoder.frontend_kind
        elif str(self.cfg.encoder.get("_target_", "")).startswith("nemo_sew."):
            enc_cfg = OmegaConf.to_container(self.cfg.encoder, resolve=True)
            squeeze = (self.cfg.get("profile") or {}).get("squeeze") or enc_cfg.get("squeeze", 2)
            need = SqueezeEncoder.min_input_length_for(**{**enc_cfg, "squeeze": math.ceil(float(squeeze))})
            frontend = enc_cfg.get("frontend", "mel_stack")
        else:
            return 0.0  # a stock NeMo encoder: no known minimum
        if frontend == "mel_stack":
            return need * float(self.cfg.preprocessor.get("window_stride", 0.01))
        return need / float(self.cfg.get("sample_rate", 16000))

    def _validated(self, config: DictConfig) -> DictConfig:
        """Validate NeMo JSON manifests before NeMo reads them: bad lines become logged skips."""
        if config is None or config.get("is_tarred") or not config.get("manifest_filepath"):
            return config
        if not config.get("validate_manifest", True):
            return config
        from manifests.validate import validate_manifest

        paths = config.manifest_filepath
        if isinstance(paths, str):
            paths = [p.strip() for p in paths.split(",")]
        elif isinstance(paths, ListConfig):
            paths = list(paths)
        if not all(isinstance(p, str) for p in paths):
            return config  # NeMo's nested (bucketed) manifest lists: left to NeMo
        checked = []
        for path in paths:
            report = validate_manifest(
                path,
                sample_rate=int(self.cfg.get("sample_rate", 16000)),
                min_duration=self.min_input_seconds(),
                max_duration=config.get("max_duration"),
                check_content=bool(config.get("validate_audio", True)),
            )
            report.raise_if_empty()
            if report.skipped:
                log.warning("%s: skipped %d bad entries (see warnings above)", path, len(report.skipped))
            checked.append(str(report.out_path))
        config = config.copy()
        with open_dict(config):
            config.manifest_filepath = checked if len(checked) > 1 else checked[0]
        return config

    # training, validation and test data are validated; transcription inputs are checked in transcribe()
    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        return super().setup_training_data(self._validated(_as_dictconfig(train_data_config)))

    def setup_validation_data(self, val_data_config: DictConfig | dict | None):
        return super().setup_validation_data(self._validated(_as_dictconfig(val_data_config)))

    def setup_test_data(self, test_data_config: DictConfig | dict | None):
        return super().setup_test_data(self._validated(_as_dictconfig(test_data_config)))


class SqueezeProfileMixin(ProfileAPIMixin, DataGuardMixin):
    """The profile API, input guards and training-step additions shared by the char and BPE CTC models."""

    def transcribe(self, audio: Any, *args: Any, profile: ProfileLike | str | None = None, **kwargs: Any):
        """NeMo's ``transcribe`` (returns ``Hypothesis`` objects), optionally at a given ``profile``.

        Audio file paths are checked first, so a missing, empty, corrupt or NaN file raises an
        ``AudioError`` naming it instead of failing deep inside a data-loader worker.
        """
        paths = [audio] if isinstance(audio, (str, Path)) else audio
        if isinstance(paths, (list, tuple)) and paths and all(isinstance(p, (str, Path)) for p in paths):
            from manifests.audio import load_audio

            min_seconds = self.min_input_seconds()
            for path in paths:
                if str(path).endswith((".json", ".jsonl")):
                    continue  # a manifest: NeMo reads it
                wav, sr = load_audio(path, expected_sample_rate=None)
                if len(wav) / sr < min_seconds:
                    raise ValueError(
                        f"{path}: {len(wav) / sr:.3f} s is shorter than this model's minimum input "
                        f"of {min_seconds:.3f} s (front-end receptive field and squeeze {self.encoder.squeeze})"
                    )
        with self.profile_scope(profile):
            return super().transcribe(audio, *args, **kwargs)

    def training_step(self, batch, batch_nb):
        encoder = self.encoder if isinstance(self.encoder, SqueezeEncoder) else None
        if encoder is not None:
            encoder.sampler_step = int(self.trainer.global_step)  # same profile draw on every DDP rank
        out = super().training_step(batch, batch_nb)
        if encoder is not None and encoder.learned_rate is not None and encoder.last_rate_penalty is not None:
            out["loss"] = out["loss"] + encoder.last_rate_penalty
            self.log("rate_penalty", encoder.last_rate_penalty.detach())
            self.log("learned_frame_period_ms", encoder.learned_frame_period_ms())
        loss = out["loss"]
        if not torch.isfinite(loss):
            # DDP-safe skip: a zero loss still touches every parameter, so all ranks reduce the same grads
            log.warning("non-finite training loss at step %d; this batch is skipped", self.trainer.global_step)
            out["loss"] = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        return out


    # ---------------------------------------------------------------------------------- fine-tuning

    def _init_finetuning(self) -> None:
        """SEW's fine-tuning options from ``cfg.finetune``: ``freeze_frontend`` (fairseq
        ``feature_grad_mult=0``) and ``freeze_encoder_steps`` (``freeze_finetune_updates``: only the CTC
        head learns for that many steps). The encoder's fine-tuning masking is ``cfg.encoder.masking``."""
        encoder = self.encoder if isinstance(self.encoder, SqueezeEncoder) else None
        if encoder is None:
            return
        opts = self.cfg.get("finetune") or {}
        if encoder.mask_emb is not None and encoder.masking.get("time_prob", 0.0) <= 0:
            encoder.mask_emb.requires_grad_(False)  # unused without time masking (DDP needs every trainable grad)
        if opts.get("freeze_frontend"):
            encoder.frontend.requires_grad_(False)

    def on_after_backward(self) -> None:
        super().on_after_backward()
        steps = int((self.cfg.get("finetune") or {}).get("freeze_encoder_steps") or 0)
        if steps and self.trainer is not None and self.trainer.global_step < steps:
            # gradients were already all-reduced by DDP; dropping them leaves the encoder untouched by the
            # optimiser (Adam skips parameters without a grad, so no weight decay or moments either)
            for p in self.encoder.parameters():
                p.grad = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        period = self.encoder.learned_frame_period_ms() if isinstance(self.encoder, SqueezeEncoder) else None
        if period is not None:
            checkpoint["learned_frame_period_ms"] = period


class SqueezeCTCModel(SqueezeProfileMixin, EncDecCTCModel):
    """Character CTC model (NeMo ``EncDecCTCModel``) with the compression-profile API."""

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        super().__init__(cfg=cfg, trainer=trainer)
        self._init_profile()
        self._init_finetuning()


class SqueezeCTCModelBPE(SqueezeProfileMixin, EncDecCTCModelBPE):
    """SentencePiece CTC model (NeMo ``EncDecCTCModelBPE``) with the compression-profile API.

    As for every NeMo BPE model, ``transcribe()`` needs ``cfg.validation_ds`` to exist.
    """

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        super().__init__(cfg=cfg, trainer=trainer)
        self._init_profile()
        self._init_finetuning()
