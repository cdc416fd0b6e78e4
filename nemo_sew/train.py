"""Training entry point: NeMo's script shape (trainer, exp_manager, model, fit) for any nemo_sew model.

    nemo-sew train recipes/ctc_char_tiny_mel.yaml model.train_ds.manifest_filepath=... save_to=model.nemo

Multi-node: set ``trainer.num_nodes``, ``trainer.devices`` and ``trainer.strategy=ddp`` and launch one
process per GPU with ``srun`` or ``torchrun`` (see ``recipes/launch/``); Lightning detects both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from nemo.core.classes import ModelPT
from nemo.utils.exp_manager import exp_manager
from nemo.utils.model_utils import import_class_by_path
from nemo.utils.trainer_utils import resolve_trainer_cfg
from omegaconf import DictConfig, OmegaConf

import nemo_sew  # noqa: F401  (registers the _target_ prefix)

log = logging.getLogger("nemo_sew.train")
DEFAULT_TARGET = "nemo_sew.models.ctc.SqueezeCTCModel"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Read a recipe YAML and apply ``key=value`` overrides (Hydra's dotted syntax)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe not found: {path}")
    cfg = OmegaConf.load(path)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"expected overrides of the form key=value, got {bad}")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def build_model(cfg: DictConfig, trainer: pl.Trainer | None = None) -> ModelPT:
    """Instantiate ``cfg.model.target`` (default: the char CTC model) from ``cfg.model``."""
    target = cfg.model.get("target", DEFAULT_TARGET)
    cls = import_class_by_path(target)
    if not issubclass(cls, ModelPT):
        raise TypeError(f"model target {target} is not a NeMo ModelPT")
    return cls(cfg=cfg.model, trainer=trainer)


def train(cfg: DictConfig) -> ModelPT:
    """Fit ``cfg.model`` with ``cfg.trainer`` and ``cfg.exp_manager``; write ``cfg.save_to`` (.nemo) if set."""
    trainer = pl.Trainer(**resolve_trainer_cfg(cfg.trainer))
    exp_manager(trainer, cfg.get("exp_manager", None))
    model = build_model(cfg, trainer)
    model.maybe_init_from_pretrained_checkpoint(cfg)
    trainer.fit(model)
    save_to = cfg.get("save_to")
    if save_to and trainer.is_global_zero:
        Path(save_to).parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(save_to))
        log.info("saved %s", save_to)
    return model
