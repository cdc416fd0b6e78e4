"""The encoder's configuration at the YAML edge: the ``encoder:`` section of a NeMo config <-> typed options.

:func:`parse_options` reads the constructor arguments of :class:`~nemo_sew.SqueezeEncoder` (OmegaConf containers,
bare squeeze specs, the flat keyword arguments of configs written before :class:`~nemo_sew.arch.EncoderArch`) into
one :class:`EncoderOptions` that the torch core is built from; :func:`config_dict` writes an encoder's options back
in today's layout (what a ``.nemo`` stores, and what ``sync_encoder_config`` puts into a model's config);
:func:`encoder_config` spells a preset with overrides as such a section. Everything about configs is here, and
nothing else is: the core never sees a config dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from nemo_sew.arch import EncoderArch, resolve_arch
from nemo_sew.options import Dropout, Gates, LearnedRate, Masking, upgrade_encoder_config
from nemo_sew.profile import ProfileSampler

#: the encoder's constructor arguments other than the arch (``encoder_config`` keeps them at the top level)
OPTIONS = ("dropout", "squeeze_sampler", "learned_rate", "cif_lambda", "mask_emb", "masking", "gates", "pruning", "quant")
_SAMPLER_FIELDS = {"squeeze", "q_pool", "kv_pool", "cif_lambda", "seed", "weight_bits"}


@dataclass(frozen=True)
class EncoderOptions:
    """Everything an encoder is built from, typed and checked (see :class:`~nemo_sew.SqueezeEncoder` for each).

    ``arch`` is final: when the factor can vary (a sampler, CIF weights or a learned rate) and the arch's expander is
    SEW's factor-specific one, it already names the factor-agnostic ``phase`` expander (as before the arch existed).
    """

    arch: EncoderArch
    dropout: Dropout
    sampler: ProfileSampler | None = None
    learned_rate: LearnedRate | None = None  # with init and target filled in
    cif_lambda: float = 1.0
    mask_emb: bool = False
    masking: Masking | None = None
    gates: Gates | None = None
    pruning: Any = None  # nemo_sew.prune.Pruning
    quant: Mapping[str, Any] | None = None  # nemo_sew.quant.QuantConfig fields


def plain(value: Any) -> Any:
    """OmegaConf containers (NeMo passes DictConfig values) -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with NeMo
        pass
    return value


def parse_options(
    preset: str | None = None,
    arch: EncoderArch | Mapping[str, Any] | None = None,
    dropout: Dropout | Mapping[str, float] | None = None,
    squeeze_sampler: Mapping[str, Any] | None = None,
    learned_rate: LearnedRate | Mapping[str, float] | None = None,
    cif_lambda: float = 1.0,
    mask_emb: bool = False,
    masking: Masking | Mapping[str, float] | None = None,
    gates: Gates | Mapping[str, Any] | None = None,
    pruning: Mapping[str, Any] | None = None,
    quant: Mapping[str, Any] | None = None,
    **legacy: Any,
) -> EncoderOptions:
    """The :class:`~nemo_sew.SqueezeEncoder` constructor's arguments (documented there) as :class:`EncoderOptions`."""
    if legacy or isinstance(dropout, (int, float)):
        if preset is not None or arch is not None:
            raise ValueError(f"unknown SqueezeEncoder arguments {sorted(legacy)} (give arch fields under arch=)")
        old = {**legacy, "squeeze_sampler": squeeze_sampler, "learned_rate": learned_rate,
               "cif_lambda": cif_lambda, "mask_emb": mask_emb, "masking": masking}  # fmt: skip
        if dropout is not None:
            old["dropout"] = dropout
        new = upgrade_encoder_config(old)
        arch, dropout = new["arch"], new.get("dropout")
    arch, squeeze_sampler, learned_rate, masking, dropout, gates, pruning = map(
        plain, (arch, squeeze_sampler, learned_rate, masking, dropout, gates, pruning)
    )
    resolved = resolve_arch(preset, arch)
    if squeeze_sampler is not None and not (_SAMPLER_FIELDS & set(squeeze_sampler)):
        squeeze_sampler = {"squeeze": dict(squeeze_sampler)}  # a bare squeeze spec
    sampler = ProfileSampler(**squeeze_sampler) if squeeze_sampler is not None else None
    rate = LearnedRate.of(learned_rate)
    rate = rate.with_defaults(resolved.compressor.squeeze) if rate is not None else None
    draws_shape = sampler is not None and any(getattr(sampler, f) is not None for f in ("squeeze", "q_pool", "kv_pool", "cif_lambda"))
    variable = draws_shape or resolved.compressor.cif_alpha or rate is not None  # a bits-only sampler keeps the factor
    if variable and resolved.expander == "sew":
        resolved = resolved.replace(expander="phase")
    dropout_options = Dropout.of(dropout)
    masking_options = Masking.of(masking)
    gate_options = Gates.of(gates)
    pruning_options = None
    if pruning is not None:
        from nemo_sew.prune.masks import Pruning

        pruning_options = Pruning.of(pruning)
    if masking_options is not None and masking_options.time_prob > 0 and not mask_emb:
        raise ValueError("time masking replaces frames by the mask embedding: set mask_emb=True")
    return EncoderOptions(
        resolved, dropout_options, sampler, rate, float(cif_lambda), bool(mask_emb), masking_options, gate_options,
        pruning_options, plain(quant),
    )  # fmt: skip


def config_dict(encoder: Any) -> dict[str, Any]:
    """``encoder``'s constructor arguments in today's layout (the full arch): what a ``.nemo`` stores."""
    out: dict[str, Any] = {"arch": encoder.arch.to_dict(), "dropout": dataclasses.asdict(encoder.dropout_options)}
    if encoder.sampler is not None:
        out["squeeze_sampler"] = plain_sampler(encoder.sampler)
    if encoder.learned_rate is not None:
        out["learned_rate"] = dataclasses.asdict(encoder.learned_rate)
    out["cif_lambda"] = encoder.cif_lambda
    out["mask_emb"] = encoder.mask_emb is not None
    out["masking"] = dataclasses.asdict(encoder.masking) if encoder.masking is not None else None
    if encoder.gate_options is not None:
        out["gates"] = dataclasses.asdict(encoder.gate_options)
    if encoder.pruning is not None:
        out["pruning"] = encoder.pruning.options.to_dict()
    if encoder.quant_config is not None:
        out["quant"] = encoder.quant_config.to_dict()
    return out


def plain_sampler(sampler: ProfileSampler) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(sampler):
        value = getattr(sampler, f.name)
        if f.name == "weight_bits" and value is None:
            continue  # configs without a bits sampler stay as they were written before it existed
        out[f.name] = plain(dict(value)) if isinstance(value, Mapping) else value
    return out


def encoder_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The ``encoder:`` config (without ``_target_``) of preset ``preset`` with ``overrides``: arch fields
    (``d_model``, ``blocks``, ``compressor``, ``expander``, ...) go under ``arch``; the encoder's other
    arguments (``dropout``, ``squeeze_sampler``, ...) stay at the top level."""
    arch_fields = {f.name for f in dataclasses.fields(EncoderArch)} | {"num_layers", "blocks"}
    options = set(OPTIONS)
    unknown = sorted(set(overrides) - arch_fields - options)
    if unknown:
        raise ValueError(f"unknown encoder arguments {unknown}; arch fields: {sorted(arch_fields)}, options: {sorted(options)}")
    arch = {k: v for k, v in overrides.items() if k in arch_fields}
    return {"preset": preset, "arch": arch, **{k: v for k, v in overrides.items() if k in options}}
