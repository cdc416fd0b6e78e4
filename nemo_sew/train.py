"""Training entry point: NeMo's script shape (trainer, exp_manager, model, fit) for any nemo_sew model.

    nemo-sew train recipes/ctc_char_tiny_mel.yaml model.train_ds.manifest_filepath=... save_to=model.nemo

Multi-node: set ``trainer.num_nodes``, ``trainer.devices`` and ``trainer.strategy=ddp`` and launch one
process per GPU with ``srun`` or ``torchrun`` (see ``recipes/launch/``); Lightning detects both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as pl
from nemo.core.classes import ModelPT
from nemo.utils.exp_manager import exp_manager
from nemo.utils.model_utils import import_class_by_path
from nemo.utils.trainer_utils import resolve_trainer_cfg
from omegaconf import DictConfig, OmegaConf, open_dict

import nemo_sew  # noqa: F401  (registers the _target_ prefix)
from nemo_sew.callbacks import ProgressLogger, SaveAtSteps, StepRecorder, TimeBudgetAnnealing, ValidationHistory, parse_max_time
from nemo_sew.errors import UserError
from nemo_sew.resume import StepSeed

log = logging.getLogger("nemo_sew.train")
DEFAULT_TARGET = "nemo_sew.models.ctc.SqueezeCTCModel"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a recipe YAML and apply ``key=value`` overrides (Hydra's dotted syntax)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    cfg = _compose(path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"expected overrides of the form key=value, got {bad}")
    # Hydra's "+key=value" (add a key) and "key=value" mean the same here
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))


def _compose(path: Path) -> DictConfig:
    """Load a YAML, honouring a Hydra-style ``defaults: [other_recipe, _self_]`` list (same directory).

    The same files work with Hydra (``recipes/train_ctc.py``) and with ``nemo-sew train``.
    """
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", None)
    if not defaults:
        return cfg
    merged = OmegaConf.create()
    for item in defaults:
        if item == "_self_":
            merged = OmegaConf.merge(merged, cfg)
        else:
            merged = OmegaConf.merge(merged, _compose(path.parent / f"{item}.yaml"))
    return merged if "_self_" in defaults else OmegaConf.merge(merged, cfg)


def build_model(cfg: DictConfig, trainer: pl.Trainer | None = None) -> ModelPT:
    """Instantiate ``cfg.model.target`` (default: the char CTC model) from ``cfg.model``."""
    target = cfg.model.get("target", DEFAULT_TARGET)
    cls = import_class_by_path(target)
    if not issubclass(cls, ModelPT):
        raise TypeError(f"model target {target} is not a NeMo ModelPT")
    return cls(cfg=cfg.model, trainer=trainer)


def finetune_model(cfg: DictConfig, trainer: pl.Trainer) -> ModelPT:
    """Restore ``cfg.init_from_nemo`` and prepare it to fine-tune at the fixed profile ``cfg.profile``.

    For a stochastic checkpoint: the sampler is switched off (and removed from the saved config), the
    weights and the factor-agnostic expander are kept, data and optimiser come from ``cfg.model``.
    """
    from omegaconf import open_dict

    from nemo_sew.safe_load import restore

    model = restore(cfg.init_from_nemo)
    model.encoder.disable_sampler()  # the stored arch keeps the factor-agnostic expander
    if cfg.get("qat"):  # QAT: fake-quantize every encoder weight (straight-through); `nemo-sew quantize` packs after
        from nemo_sew.quant import prepare_qat

        prepare_qat(model.encoder, **OmegaConf.to_container(cfg.qat, resolve=True))
    model.sync_encoder_config(profile=False)  # no sampler; the QAT state
    with open_dict(model.cfg):
        for key in ("train_ds", "validation_ds", "optim"):
            if key in cfg.model:
                override = OmegaConf.to_container(cfg.model[key], resolve=True)  # resolve ${model.*} here
                model.cfg[key] = OmegaConf.merge(model.cfg.get(key) or {}, override)
                if "augmentor" in override:  # replaced, not merged: no stored perturbation survives
                    model.cfg[key].augmentor = override["augmentor"]
    profile = OmegaConf.to_container(cfg.profile, resolve=True)
    model.set_profile(profile)
    distill = cfg.get("qat_distill") or {}
    # distil from the full-precision model (BiT's setting for 1-bit); without qat, the same loss continues the fp
    # model (the control that gives fp the steps QAT trains)
    if float(distill.get("weight", 0.0)) > 0:
        from nemo_sew.distill import attach_teacher

        teacher = restore(cfg.init_from_nemo)
        teacher.encoder.disable_sampler()
        teacher.set_profile({k: v for k, v in dict(profile).items() if k != "weight_bits"}, default=False)
        attach_teacher(model, teacher, float(distill["weight"]), float(distill.get("temperature", 1.0)))
    model.set_trainer(trainer)
    model.setup_training_data(model.cfg.train_ds)
    model.setup_validation_data(model.cfg.validation_ds)
    model.setup_optimization(model.cfg.optim)
    return model


def _load_checkpoint(path: str | Path) -> tuple[DictConfig, dict]:
    """(model config, state dict) of a ``.nemo`` file or a Lightning ``.ckpt``."""
    from nemo_sew.safe_load import load_checkpoint, restore

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pre-trained checkpoint not found: {path}")
    if path.suffix == ".nemo":
        model = restore(path)
        return model.cfg, model.state_dict()
    ckpt = load_checkpoint(path)  # weights_only=True with the plain-data globals of Lightning checkpoints
    if "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint (no state_dict / hyper_parameters)")
    hp = ckpt["hyper_parameters"]
    return OmegaConf.create(hp.get("cfg", hp)), ckpt["state_dict"]


def inherit_encoder_config(cfg: DictConfig) -> DictConfig:
    """With ``cfg.init_from_ssl`` set: ``model.encoder`` and ``model.preprocessor`` are replaced by the
    checkpoint's (the features and the architecture must be the pre-trained ones). Fine-tuning changes
    (dropouts, masking, a squeeze sampler) go in ``model.encoder_overrides``, see :func:`apply_encoder_overrides`."""
    from omegaconf import open_dict

    ssl_cfg, _ = _load_checkpoint(cfg.init_from_ssl)
    cfg = cfg.copy()
    with open_dict(cfg):
        for key in ("encoder", "preprocessor"):
            inherited = OmegaConf.to_container(ssl_cfg[key], resolve=True)
            if key == "encoder":
                inherited.pop("masking", None)  # pre-training masks in the model, not the encoder
            cfg.model[key] = inherited
    return cfg


def apply_encoder_overrides(cfg: DictConfig) -> DictConfig:
    """Merge ``model.encoder_overrides`` into ``model.encoder`` (and drop the key)."""
    from omegaconf import open_dict

    overrides = cfg.model.get("encoder_overrides")
    if overrides is None:
        return cfg
    from nemo_sew.options import upgrade_encoder_config, upgrade_encoder_overrides

    base = upgrade_encoder_config(OmegaConf.to_container(cfg.model.encoder, resolve=True))  # an old .nemo's layout too
    overrides = upgrade_encoder_overrides(OmegaConf.to_container(overrides, resolve=True))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model.encoder = OmegaConf.merge(base, overrides)
        del cfg.model["encoder_overrides"]
    return cfg


def init_encoder_from(model: ModelPT, path: str | Path) -> None:
    """Copy the encoder weights of a pre-trained ``.nemo`` / ``.ckpt`` into ``model.encoder`` (nothing else).

    Strict: every encoder tensor must be there with the same shape (a clear error otherwise), so an
    architecture mismatch cannot silently leave a randomly initialised encoder. The mask embedding is
    optional (a model pre-trained without one), and so are I3D gate predictors (gates added for fine-tuning
    start from their own initialisation). Checkpoints written before blocks were residual branches are read
    in today's parameter names.
    """
    from nemo_sew.encoder import upgrade_legacy_encoder_state

    _, state = _load_checkpoint(path)
    encoder_state = upgrade_legacy_encoder_state({k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")})
    if not encoder_state:
        raise ValueError(f"{path}: no encoder weights in this checkpoint")
    own = model.encoder.state_dict()
    new_here = ("mask_emb", "gate_predictor.", "pruning.")  # also every layer's gates.<branch>.*

    def optional(key: str) -> bool:
        return key.startswith(new_here) or ".gates." in key

    missing = sorted(k for k in own if k not in encoder_state and not optional(k))
    shape = sorted(k for k in own if k in encoder_state and encoder_state[k].shape != own[k].shape)
    if missing or shape:
        raise ValueError(
            f"{path}: the encoder does not match the model's: missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"shape mismatch {shape[:8]}; fine-tune with the pre-trained encoder config (init_from_ssl inherits it)"
        )
    unexpected = sorted(k for k in encoder_state if k not in own)
    model.encoder.load_state_dict({k: v for k, v in encoder_state.items() if k in own}, strict=False)
    log.info("encoder initialised from %s (%d tensors; ignored %s)", path, len(own), unexpected)


def cpu_precision(trainer_kwargs: dict, bf16_supported: bool | None = None) -> dict:
    """bf16-mixed on a CPU without native bf16 (AVX512-BF16 / AMX) is emulated and slower than fp32:
    fall back to 32-bit there, with a warning. GPU runs and other precisions are left as they are."""
    import torch

    precision = str(trainer_kwargs.get("precision", "32"))
    accelerator = trainer_kwargs.get("accelerator", "auto")
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu or not precision.startswith("bf16"):
        return trainer_kwargs
    if bf16_supported is None:  # oneDNN's own check (torch has no public one)
        bf16_supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not bf16_supported:
        log.warning("trainer.precision=%s: this CPU has no native bf16, training in 32-bit instead", precision)
        trainer_kwargs = {**trainer_kwargs, "precision": "32"}
    return trainer_kwargs


def _resume_from_newest_checkpoint(trainer: pl.Trainer, em_cfg: Any, log_dir: Any) -> None:
    """exp_manager's ``resume_if_exists`` resumes from a ``*last.ckpt`` only. A run killed after a checkpoint
    was written but before Lightning wrote ``last.ckpt`` beside it would train from scratch; resume from the
    newest finished checkpoint instead (NeMo's own unfinished-checkpoint filter decides what is finished)."""
    from nemo.utils.exp_manager import _filter_out_unfinished_checkpoints

    if not em_cfg or not em_cfg.get("resume_if_exists") or trainer.ckpt_path or log_dir is None:
        return
    dirpath = (em_cfg.get("checkpoint_callback_params") or {}).get("dirpath")
    ckpt_dir = Path(dirpath) if dirpath else Path(log_dir) / "checkpoints"
    found = _filter_out_unfinished_checkpoints(list(ckpt_dir.glob("*.ckpt"))) if ckpt_dir.is_dir() else []
    if found:
        newest = max(found, key=lambda p: p.stat().st_mtime)
        log.warning("no last checkpoint in %s: resuming from the newest checkpoint %s", ckpt_dir, newest.name)
        trainer.ckpt_path = str(newest)


def train(cfg: DictConfig) -> ModelPT:
    """Fit ``cfg.model`` with ``cfg.trainer`` and ``cfg.exp_manager``; write ``cfg.save_to`` (.nemo) if set.

    With ``init_from_nemo`` set, fine-tunes that model at ``cfg.profile`` instead (see :func:`finetune_model`;
    ``cfg.qat: {bits: 4, group_size: 32}`` makes it quantization-aware training);
    with ``init_from_ssl`` (a pre-trained ``.nemo`` or ``.ckpt``), builds ``cfg.model`` with that encoder's
    config and weights (see :func:`inherit_encoder_config`, :func:`init_encoder_from`);
    ``model.encoder_overrides`` is merged into the encoder config either way; a top-level ``augment``
    section becomes ``model.train_ds.augmentor`` (:func:`nemo_sew.augment.apply_augment`).
    """
    from nemo_sew.augment import apply_augment

    cfg = apply_augment(cfg)
    if cfg.get("seed") is not None:
        # python, numpy and torch RNGs, and each data-loader worker's: model init, shuffling, NeMo's semi-sorted
        # batching, SpecAugment and masking all draw from these (with trainer.deterministic=true, fp32 CPU
        # training is then repeatable to the bit; tests/test_recipes.py)
        pl.seed_everything(int(cfg.seed), workers=True)
    trainer_kwargs = cpu_precision(resolve_trainer_cfg(cfg.trainer))
    every = cfg.get("progress_log_every", 25)
    if every:
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), ProgressLogger(int(every))]
    trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), ValidationHistory()]
    if cfg.get("seed") is not None:  # each step's draws depend on (seed, step, rank) only: exact resume
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), StepSeed(int(cfg.seed))]
    if cfg.get("step_log"):
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), StepRecorder(cfg.step_log)]
    if cfg.get("save_at_steps"):
        if not cfg.get("save_to"):
            raise ValueError("save_at_steps: set save_to too (the snapshots are named after it)")
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), SaveAtSteps(cfg.save_to, cfg.save_at_steps)]
    budget = parse_max_time(cfg.trainer.get("max_time"))
    if cfg.get("anneal_to_max_time") and budget:
        trainer_kwargs["callbacks"] = [*(trainer_kwargs.get("callbacks") or []), TimeBudgetAnnealing(budget)]
    trainer = pl.Trainer(**trainer_kwargs)
    log_dir = exp_manager(trainer, cfg.get("exp_manager", None))
    _resume_from_newest_checkpoint(trainer, cfg.get("exp_manager", None), log_dir)
    if cfg.get("pruning") is not None:  # prune a fine-tuned CTC model (nemo_sew.prune.train)
        from nemo_sew.prune.train import pruning_model

        model = pruning_model(cfg, trainer)
    elif cfg.get("init_from_nemo"):
        model = finetune_model(cfg, trainer)
    else:
        if cfg.get("init_from_ssl"):
            cfg = inherit_encoder_config(cfg)
        cfg = apply_encoder_overrides(cfg)
        model = build_model(cfg, trainer)
        if cfg.get("init_from_ssl"):
            init_encoder_from(model, cfg.init_from_ssl)
        model.maybe_init_from_pretrained_checkpoint(cfg)
    if cfg.get("compile"):  # opt-in torch.compile of the encoder's blocks (SqueezeEncoder.compile_blocks)
        options = OmegaConf.to_container(cfg.compile, resolve=True) if isinstance(cfg.compile, DictConfig) else {}
        model.encoder.compile_blocks(**options)  # `compile: true`, or torch.compile options: {backend: ..., mode: ...}
    if cfg.get("seed") is not None and getattr(model, "_cfg", None) is not None:
        # the draws' seed (LayerDrop and other decisions every rank shares: nemo_sew.stochastic.run_seed)
        with open_dict(model._cfg):
            model._cfg.seed = int(cfg.seed)
    trainer.fit(model)
    save_to = cfg.get("save_to")
    if save_to and trainer.is_global_zero:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(save_to))
        log.info("saved %s", save_to)
    if cfg.get("pruned_save_to") and trainer.is_global_zero:
        from nemo_sew.prune.train import save_pruned

        save_pruned(cfg, model)
    return model
