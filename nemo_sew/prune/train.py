"""Task-specific pruning of a fine-tuned CTC model (HJ-Pruning's setting): restore it, add masks, fine-tune with
the task loss (plus an optional distillation loss from the unpruned model) and the Lagrangian budget.

A recipe sets ``init_from_nemo`` (a fine-tuned CTC ``.nemo``: trained here or converted with
``nemo-sew convert`` from transformers / fairseq) and ``pruning`` (:class:`nemo_sew.prune.Pruning` fields);
``pruning_distill.weight > 0`` adds ``weight * KL(teacher || student)`` on the frame posteriors, with the
unpruned model as the teacher. ``pruned_save_to`` writes the materialised model after training.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("nemo_sew.prune")


def pruning_model(cfg: DictConfig, trainer):
    """The model ``cfg.init_from_nemo`` rebuilt with masks ``cfg.pruning`` (every weight copied), with data and
    optimiser settings from ``cfg.model`` (as :func:`nemo_sew.train.finetune_model` does)."""
    from nemo_sew.safe_load import restore

    if not cfg.get("init_from_nemo"):
        raise ValueError("pruning needs init_from_nemo: the fine-tuned (or converted) CTC model to prune")
    source = restore(cfg.init_from_nemo)
    model_cfg = source.cfg.copy()
    with open_dict(model_cfg):
        model_cfg.encoder.pruning = OmegaConf.to_container(cfg.pruning, resolve=True)
        # a stochastic model keeps its squeeze sampler: the pruned model is fine-tuned over the same factors, so
        # every factor it served still works (encoder_overrides.squeeze_sampler: null fine-tunes at one factor)
        for key in ("train_ds", "validation_ds", "optim", "finetune"):
            if key in cfg.model:
                override = OmegaConf.to_container(cfg.model[key], resolve=True)
                if key.endswith("_ds") and "labels" in override:  # the vocabulary is the pruned model's own
                    override["labels"] = list(source.decoder.vocabulary)
                model_cfg[key] = OmegaConf.merge(model_cfg.get(key) or {}, override)
        overrides = cfg.model.get("encoder_overrides")
        overrides = OmegaConf.to_container(overrides, resolve=True) if overrides is not None else {}
        if "squeeze_sampler" in overrides:
            model_cfg.encoder.squeeze_sampler = overrides["squeeze_sampler"]
        if "dropout" in overrides:
            model_cfg.encoder.dropout = OmegaConf.merge(model_cfg.encoder.get("dropout") or {}, overrides["dropout"])
        if overrides.get("masking") and model_cfg.encoder.get("mask_emb"):  # time masking needs the model's mask_emb
            model_cfg.encoder.masking = overrides["masking"]
    model = type(source)(cfg=model_cfg, trainer=trainer)
    missing, unexpected = model.load_state_dict(source.state_dict(), strict=False)
    bad = [k for k in missing if not k.startswith("encoder.pruning.")] + list(unexpected)
    if bad:
        raise ValueError(f"{cfg.init_from_nemo}: weights do not match the model to prune: {bad[:8]}")
    distill = cfg.get("pruning_distill") or {}
    if float(distill.get("weight", 0.0)) > 0:
        from nemo_sew.distill import attach_teacher

        attach_teacher(model, source, float(distill["weight"]), float(distill.get("temperature", 1.0)))
    model.setup_optimization(model.cfg.optim)
    return model


def save_pruned(cfg: DictConfig, model) -> None:
    """``cfg.pruned_save_to``: the materialised model (``cfg.pruned_name`` labels its arch in ``cfg.profiles``)."""
    from pathlib import Path

    from nemo_sew.prune.masks import realised_fraction
    from nemo_sew.prune.materialize import materialize_model

    pruned = materialize_model(model, cfg.get("pruned_name"))
    Path(cfg.pruned_save_to).parent.mkdir(parents=True, exist_ok=True)
    pruned.save_to(str(cfg.pruned_save_to))
    fractions = realised_fraction(pruned.encoder.arch, model.encoder.arch, model.encoder.pruning.options)
    log.info("saved pruned model %s (kept fraction of the budget's cost: %s)", cfg.pruned_save_to, fractions)
