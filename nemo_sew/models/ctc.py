"""NeMo CTC models around :class:`nemo_sew.SqueezeEncoder`, with the compression-profile API.

They subclass NeMo's own ``EncDecCTCModel`` (characters) and ``EncDecCTCModelBPE`` (SentencePiece), so
``.nemo`` save/restore, ``transcribe()``, exp_manager, NeMo's training scripts and
``examples/asr/transcribe_speech.py`` work as for any NeMo model. The default profile is stored in the
model config (``cfg.profile``), named profiles in ``cfg.profiles``.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

import nemo_sew.augment  # noqa: F401  (registers the nemo_sew_speed perturbation a train_ds.augmentor may name)
from nemo_sew.arch import resolve_arch
from nemo_sew.distill import teacher_distillation
from nemo_sew.encoder import EncoderOutput, SqueezeEncoder
from nemo_sew.nn.blocks import zero_touch
from nemo_sew.nn.frontend import frontend_layout
from nemo_sew.options import upgrade_encoder_config
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile
from nemo_sew.stochastic import run_seed

log = logging.getLogger("nemo_sew.models")


def _as_dictconfig(config: DictConfig | dict | None) -> DictConfig | None:
    return OmegaConf.create(config) if isinstance(config, dict) else config


def _is_ours(encoder_cfg: Any) -> bool:
    return encoder_cfg is not None and str(encoder_cfg.get("_target_", "")).startswith("nemo_sew.")


def upgraded_model_config(cfg: DictConfig | dict) -> DictConfig:
    """``cfg`` with a pre-``EncoderArch`` (flat) ``encoder:`` section rewritten to today's layout, so every
    ``.nemo`` written before the arch existed restores (see :func:`nemo_sew.options.upgrade_encoder_config`)."""
    cfg = _as_dictconfig(cfg)
    if not _is_ours(cfg.get("encoder")):
        return cfg
    encoder = OmegaConf.to_container(cfg.encoder, resolve=True)
    upgraded = upgrade_encoder_config(encoder)
    if upgraded == encoder:
        return cfg
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.encoder = upgraded
    return cfg


class ProfileAPIMixin:
    """The profile API of every nemo_sew model (``self.encoder`` is a :class:`SqueezeEncoder`)."""

    # ---------------------------------------------------------------------------------- profiles

    def _init_profile(self) -> None:
        if not isinstance(self.encoder, SqueezeEncoder):
            return  # a stock encoder: nothing to set
        self.sync_encoder_config(profile=False)  # the .nemo stores the full arch, not only a preset name
        profile = self.cfg.get("profile")
        if profile is not None:
            self.encoder.set_profile(CompressionProfile.from_dict(OmegaConf.to_container(profile)))
        self._write_profile_to_cfg(self.encoder.profile)

    def sync_encoder_config(self, profile: bool = True) -> None:
        """Write the encoder's constructor arguments (its arch, sampler, masks, quantization state) and, with
        ``profile``, its active profile into ``cfg``: the one place the config follows a changed encoder, so a
        saved ``.nemo`` rebuilds it."""
        with open_dict(self._cfg):
            self._cfg.encoder = {"_target_": self.cfg.encoder._target_, **self.encoder.config_dict()}
        if profile:
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

    def save_to(self, save_path: str) -> None:
        """NeMo's ``save_to``, atomic: the ``.nemo`` is written to a temporary file beside ``save_path`` and
        renamed over it, so a kill during the save leaves the previous file intact (NeMo writes the tar in place)."""
        import os

        path = Path(save_path).expanduser().resolve()
        partial = path.with_name(f".{path.stem}.partial-{os.getpid()}.nemo")
        try:
            super().save_to(str(partial))
            if partial.exists():  # NeMo writes on global rank 0 only
                os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)

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

    checks_vocabulary = True  # character CTC: skip transcripts the labels cannot spell (nemo_sew.vocab_check)

    def min_input_seconds(self) -> float:
        """Shortest clip (seconds) the encoder can run at its active profile."""
        encoder = getattr(self, "encoder", None)  # NeMo sets up data before it builds the encoder
        if isinstance(encoder, SqueezeEncoder):
            layout, need = encoder.layout, encoder.min_input_length()
        elif _is_ours(self.cfg.get("encoder")):
            enc_cfg = upgrade_encoder_config(OmegaConf.to_container(self.cfg.encoder, resolve=True))
            arch = resolve_arch(enc_cfg.get("preset"), enc_cfg.get("arch"))
            squeeze = (self.cfg.get("profile") or {}).get("squeeze") or arch.compressor.squeeze
            layout = frontend_layout(arch.frontend)
            need = layout.min_input_length(squeeze)
        else:
            return 0.0  # a stock NeMo encoder: no known minimum
        hop = float(self.cfg.preprocessor.get("window_stride", 0.01) or 0.01)
        return layout.seconds(need, int(self.cfg.get("sample_rate", 16000)), hop)

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
            out_path = report.out_path
            labels = config.get("labels") or self.cfg.get("labels")
            if labels and self.checks_vocabulary and config.get("check_vocabulary", True):  # transcripts the labels spell
                from nemo_sew.vocab_check import drop_out_of_vocabulary

                out_path, _ = drop_out_of_vocabulary(out_path, list(labels), str(config.get("parser", "en") or "en"))
            checked.append(str(out_path))
        config = config.copy()
        with open_dict(config):
            config.manifest_filepath = checked if len(checked) > 1 else checked[0]
        return config

    def _make_train_resumable(self, config: DictConfig | None) -> None:
        """Swap NeMo's training loader for a resumable one (same batches; the order fixed by ``seed`` and the
        epoch, the position stored in checkpoints): see :mod:`nemo_sew.resume`."""
        from nemo_sew.resume import make_resumable

        if getattr(self, "_train_dl", None) is None or config is None or not config.get("resumable", True):
            return
        seed = config.get("seed")
        seed = int(seed) if seed is not None else torch.initial_seed()  # seed_everything's seed in `nemo-sew train`
        self._train_dl = make_resumable(self._train_dl, seed=seed, rank=self.global_rank, world=self.world_size)

    def on_train_batch_start(self, batch, batch_idx, unused: int = 0):
        from nemo_sew.resume import consumed_one_batch

        trainer = getattr(self, "_trainer", None)
        consumed_one_batch(trainer.train_dataloader if trainer is not None else self._train_dl)
        pruning = getattr(self.encoder, "pruning", None) if isinstance(self.encoder, SqueezeEncoder) else None
        if pruning is not None and getattr(self, "_optimizer", None) is not None:
            from nemo_sew.prune.masks import hold_reg_lr

            hold_reg_lr(self._optimizer, pruning)
        return super().on_train_batch_start(batch, batch_idx)

    # training, validation and test data are validated; transcription inputs are checked in transcribe()
    def setup_training_data(self, train_data_config: DictConfig | dict | None):
        config = self._validated(_as_dictconfig(train_data_config))
        out = super().setup_training_data(config)
        self._make_train_resumable(config)
        return out

    def setup_validation_data(self, val_data_config: DictConfig | dict | None):
        return super().setup_validation_data(self._validated(_as_dictconfig(val_data_config)))

    def setup_test_data(self, test_data_config: DictConfig | dict | None):
        return super().setup_test_data(self._validated(_as_dictconfig(test_data_config)))


def log_gate_stats(module, stats: dict, prefix: str = "train_") -> None:
    """Log an I3D encoder's per-step depth and MAC statistics (expected from the gate probabilities, realised
    from the decisions); nothing for an ungated encoder."""
    if "depth" not in stats:
        return
    # tensors: Lightning reads their values when it writes the logs, not in the step
    module.log(f"{prefix}depth", torch.as_tensor(stats["depth"]).float().mean())
    module.log(f"{prefix}depth_expected", torch.as_tensor(stats["depth_expected"]))
    module.log(f"{prefix}gates_open", torch.as_tensor(stats["gates_open"]))
    if "gate_tau" in stats:
        module.log(f"{prefix}gate_tau", stats["gate_tau"])
    if "macs" in stats:
        module.log(f"{prefix}gmacs", torch.as_tensor(stats["macs"]).float().mean() / 1e9)
        module.log(f"{prefix}block_macs_expected_fraction", torch.as_tensor(stats["macs_expected"]))


def log_prune_stats(module, stats: dict, prefix: str = "train_") -> None:
    """Log a pruning encoder's per-step budget state: expected and target kept fraction and the multipliers per
    budget group, and the expected kept units per unit kind (nothing without masks)."""
    for key, value in stats.items():
        if key.startswith("prune_") and key != "prune_kept":
            module.log(prefix + key, value if isinstance(value, torch.Tensor) else float(value))
    pruning = getattr(module.encoder, "pruning", None)
    if "prune_kept" in stats and pruning is not None:
        totals: dict[str, float] = {}
        for slot in pruning.slots:
            totals[slot.unit] = totals.get(slot.unit, 0.0) + stats["prune_kept"][slot.key]
        for unit, value in totals.items():
            module.log(f"{prefix}prune_kept_{unit}", value)


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
                # mono at the model's rate, as training and evaluation require (AudioError naming the file)
                wav, sr = load_audio(path, expected_sample_rate=int(self.cfg.get("sample_rate", 16000)))
                if len(wav) / sr < min_seconds:
                    raise ValueError(
                        f"{path}: {len(wav) / sr:.3f} s is shorter than this model's minimum input "
                        f"of {min_seconds:.3f} s (front-end receptive field and squeeze {self.encoder.squeeze})"
                    )
        with self.profile_scope(profile):
            return super().transcribe(audio, *args, **kwargs)

    def forward(
        self, input_signal=None, input_signal_length=None, processed_signal=None, processed_signal_length=None
    ):
        """NeMo's forward (log-probs, encoded lengths, greedy predictions) at the active profile."""
        log_probs, encoded_len, predictions, _ = self.forward_with_draw(
            input_signal, input_signal_length, processed_signal, processed_signal_length
        )
        return log_probs, encoded_len, predictions

    def forward_with_draw(
        self, input_signal=None, input_signal_length=None, processed_signal=None, processed_signal_length=None, draw=None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, EncoderOutput | None]:
        """NeMo's forward with an explicit encoder :class:`~nemo_sew.encoder.Draw`, also returning the
        :class:`~nemo_sew.encoder.EncoderOutput` (its ``aux_losses`` and ``stats``); stock encoders give None."""
        if not isinstance(self.encoder, SqueezeEncoder):
            return (*super().forward(input_signal=input_signal, input_signal_length=input_signal_length,
                                     processed_signal=processed_signal,
                                     processed_signal_length=processed_signal_length), None)  # NeMo's typed: kwargs
        return self.forward_with_draws(input_signal, input_signal_length, processed_signal, processed_signal_length,
                                       draws=[draw])[0]  # fmt: skip

    def forward_with_draws(
        self, input_signal=None, input_signal_length=None, processed_signal=None, processed_signal_length=None, draws=()
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, EncoderOutput]]:
        """:meth:`forward_with_draw` at each of ``draws`` (a :class:`~nemo_sew.encoder.Draw` or None), sharing
        what no draw changes: the preprocessor, SpecAugment and the encoder's :meth:`~SqueezeEncoder.front` run
        once, so every path sees the same augmented input and the front end's backward runs once."""
        if processed_signal is None:
            if input_signal is None or input_signal_length is None:
                raise ValueError("expected input_signal and input_signal_length, or processed_signal and its lengths")
            processed_signal, processed_signal_length = self.preprocessor(input_signal=input_signal, length=input_signal_length)
        if self.spec_augmentation is not None and self.training:
            processed_signal = self.spec_augmentation(input_spec=processed_signal, length=processed_signal_length)
        frozen = self.encoder_frozen()
        with torch.no_grad() if frozen else contextlib.nullcontext():
            # the shared front end reads the first path's weight bits
            front = self.encoder.front(processed_signal, processed_signal_length, draw=next(iter(draws), None))
            encoded = [self.encoder.from_front(front, draw) for draw in draws]
        if frozen:  # no encoder backward; a zero gradient per encoder parameter keeps plain DDP's buckets complete
            encoded[0].hidden = encoded[0].hidden + zero_touch(self.encoder.parameters()).to(encoded[0].hidden.dtype)
        outputs = []
        for out in encoded:
            log_probs = self.decoder(encoder_output=out.hidden.transpose(1, 2))  # NeMo's (B, D, T) at the boundary
            outputs.append((log_probs, out.lengths, log_probs.argmax(dim=-1), out))
        return outputs

    def encoder_frozen(self) -> bool:
        """True in the training steps of ``finetune.freeze_encoder_steps`` (only the CTC head learns): the encoder
        then runs without autograd, so its backward (the larger part of a step) is not computed at all."""
        steps = int((self.cfg.get("finetune") or {}).get("freeze_encoder_steps") or 0)
        trainer = getattr(self, "_trainer", None)
        return bool(steps) and self.training and trainer is not None and int(trainer.global_step) < steps

    def stochastic_trainer(self):
        """How a sampled model trains (``cfg.stochastic``, :mod:`nemo_sew.stochastic`), built on first use."""
        from nemo_sew.stochastic import StochasticOptions, StochasticTrainer

        if getattr(self, "_stochastic_trainer", None) is None:
            options = self.cfg.get("stochastic")
            options = OmegaConf.to_container(options, resolve=True) if isinstance(options, DictConfig) else options
            self._stochastic_trainer = StochasticTrainer(StochasticOptions.from_config(options))
        return self._stochastic_trainer

    def training_step(self, batch, batch_nb):
        if not isinstance(self.encoder, SqueezeEncoder):  # a stock encoder: NeMo's step (InterCTC included)
            return super().training_step(batch, batch_nb)
        signal, signal_len, transcript, transcript_len = batch
        step = int(self.trainer.global_step)
        stochastic = self.stochastic_trainer()
        if self.encoder.sampler is not None and stochastic.method != "uniform":  # several profiles per step
            loss, log_probs, encoded_len, predictions, out, path_logs = stochastic.loss(
                self, signal, signal_len, transcript, transcript_len, step
            )
            for name, value in path_logs.items():
                self.log(name, value)
        else:
            draw = self.encoder.draw(step, seed=run_seed(self))  # the same profile (and LayerDrop) on every DDP rank
            log_probs, encoded_len, predictions, out = self.forward_with_draw(signal, signal_len, draw=draw)
            loss = self.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len, target_lengths=transcript_len)
        loss = self.add_auxiliary_losses(loss)  # NeMo's registry (adapters etc.), as in its training_step
        for name, value in out.aux_losses.items():
            loss = loss + value
            self.log(name, value.detach())
        if self.encoder.learned_rate is not None:
            self.log("learned_frame_period_ms", 20.0 * self.encoder.learned_squeeze.detach())
        if self.encoder.sampler is not None:
            self.log("train_squeeze", out.stats["squeeze"])
        log_gate_stats(self, out.stats)
        log_prune_stats(self, out.stats)
        distill = teacher_distillation(self, signal, signal_len, log_probs, encoded_len)
        if distill is not None:  # pruning_distill / qat_distill (nemo_sew.distill)
            loss = loss + distill
            self.log("distill_loss", distill.detach())
        logs = {"train_loss": loss.detach(), "learning_rate": self._optimizer.param_groups[0]["lr"],
                "global_step": torch.tensor(step, dtype=torch.float32)}  # fmt: skip
        self.last_step_stats = out.stats  # what this rank ran at this step (read by callbacks.StepRecorder)
        every = self._trainer.log_every_n_steps if getattr(self, "_trainer", None) is not None else 1
        if (batch_nb + 1) % every == 0:  # NeMo's training WER, on the same schedule as its training_step
            self.wer.update(predictions=log_probs, targets=transcript, targets_lengths=transcript_len,
                            predictions_lengths=encoded_len)  # fmt: skip
            wer, _, _ = self.wer.compute()
            self.wer.reset()
            logs["training_batch_wer"] = wer
        if not torch.isfinite(loss):
            # DDP-safe skip: a zero loss still touches every parameter, so all ranks reduce the same grads
            log.warning("non-finite training loss at step %d; this batch is skipped", step)
            loss = sum(p.sum() * 0.0 for p in self.parameters() if p.requires_grad)
        return {"loss": loss, "log": logs}  # the form NeMo's training_step returns

    def setup_optimizer_param_groups(self):
        """NeMo's param groups; with pruning masks, the mask logits and the Lagrange multipliers get their own
        groups (``reg_lr``, no weight decay; the multipliers' group maximises: gradient ascent)."""
        super().setup_optimizer_param_groups()
        pruning = getattr(self.encoder, "pruning", None) if isinstance(self.encoder, SqueezeEncoder) else None
        if pruning is not None and self._optimizer_param_groups is not None:
            from nemo_sew.prune.masks import optimizer_groups

            self._optimizer_param_groups = optimizer_groups(self, self._optimizer_param_groups, pruning)

    # ---------------------------------------------------------------------------------- fine-tuning

    def _refuse_interctc(self) -> None:
        """NeMo's InterCTC (``cfg.interctc``) reads the layer outputs an encoder captures through NeMo's access
        registry; :class:`SqueezeEncoder` captures none, so NeMo's step would fail at the first batch. Say so when
        the model is built."""
        if isinstance(self.encoder, SqueezeEncoder) and self.is_interctc_enabled():
            raise ValueError(
                "model.interctc: InterCTC needs an encoder that captures its intermediate layer outputs, and "
                "nemo_sew.SqueezeEncoder does not; remove model.interctc (or set its loss_weights to [])"
            )

    def _init_finetuning(self) -> None:
        """SEW's fine-tuning options from ``cfg.finetune``: ``freeze_frontend`` (fairseq
        ``feature_grad_mult=0``) and ``freeze_encoder_steps`` (``freeze_finetune_updates``: only the CTC
        head learns for that many steps). The encoder's fine-tuning masking is ``cfg.encoder.masking``."""
        encoder = self.encoder if isinstance(self.encoder, SqueezeEncoder) else None
        if encoder is None:
            return
        opts = self.cfg.get("finetune") or {}
        if encoder.mask_emb is not None and (encoder.masking is None or encoder.masking.time_prob <= 0):
            encoder.mask_emb.requires_grad_(False)  # unused without time masking (DDP needs every trainable grad)
        if opts.get("freeze_frontend"):
            encoder.frontend.requires_grad_(False)

    def on_after_backward(self) -> None:
        super().on_after_backward()
        if self.encoder_frozen():
            # the encoder ran without autograd (its gradients are the zeros that keep DDP's buckets complete);
            # dropping them leaves it untouched by the optimiser (Adam skips parameters without a grad, so no
            # weight decay or moments either)
            for p in self.encoder.parameters():
                p.grad = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        period = self.encoder.learned_frame_period_ms() if isinstance(self.encoder, SqueezeEncoder) else None
        if period is not None:
            checkpoint["learned_frame_period_ms"] = period
        trainer = getattr(self, "_stochastic_trainer", None)
        if trainer is not None and trainer.ema_loss:  # the weighted method's averages: a resumed run keeps them
            checkpoint["stochastic_ema_loss"] = {str(k): float(v) for k, v in trainer.ema_loss.items()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("stochastic_ema_loss")
        if saved:
            self.stochastic_trainer().ema_loss.update({float(k): float(v) for k, v in saved.items()})


class SqueezeCTCModel(SqueezeProfileMixin, EncDecCTCModel):
    """Character CTC model (NeMo ``EncDecCTCModel``) with the compression-profile API."""

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        super().__init__(cfg=upgraded_model_config(cfg), trainer=trainer)
        self._init_profile()
        self._refuse_interctc()
        self._init_finetuning()


class SqueezeCTCModelBPE(SqueezeProfileMixin, EncDecCTCModelBPE):
    """SentencePiece CTC model (NeMo ``EncDecCTCModelBPE``) with the compression-profile API.

    As for every NeMo BPE model, ``transcribe()`` needs ``cfg.validation_ds`` to exist.
    """

    def __init__(self, cfg: DictConfig, trainer=None) -> None:
        super().__init__(cfg=upgraded_model_config(cfg), trainer=trainer)
        self._init_profile()
        self._refuse_interctc()
        self._init_finetuning()
