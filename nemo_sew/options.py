"""Typed encoder options that are not architecture: dropouts, the learned rate, fine-tuning masking.

Each is a frozen dataclass that checks itself and reads from / writes to plain dicts (the ``encoder:``
section of a NeMo config). The training-time profile sampler is :class:`nemo_sew.profile.ProfileSampler`.
Also here: :func:`upgrade_encoder_config`, which reads the encoder configs written before
:class:`~nemo_sew.arch.EncoderArch` existed (35 flat keyword arguments), so every old ``.nemo`` restores.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from nemo_sew.arch import (
    BLOCK_KINDS,
    BlockSpec,
    CompressorSpec,
    EncoderArch,
    FrontendSpec,
    checked_fields,
    wfe_c_layers,
    wfe_o_layers,
)
from nemo_sew.errors import UserError

log = logging.getLogger("nemo_sew.options")

T = TypeVar("T")


def _from(cls: type[T], data: Any, what: str) -> T:
    if isinstance(data, cls):
        return data
    return cls(**checked_fields(cls, data, f"{what} options"))


@dataclass(frozen=True)
class Dropout:
    """Dropout rates (fairseq names in brackets).

    Args:
        hidden: residual dropout in the blocks and after the squeeze (``dropout``).
        attention: attention-probability dropout (``attention_dropout``).
        activation: dropout after the FFN activation (``activation_dropout``).
        feature: dropout after the feature projection (``dropout_input``).
        layerdrop: probability of skipping a whole block while training (``encoder_layerdrop``).
    """

    hidden: float = 0.1
    attention: float = 0.1
    activation: float = 0.0
    feature: float = 0.0
    layerdrop: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = float(getattr(self, f.name))
            if not 0.0 <= value < 1.0:
                raise UserError(f"expected dropout.{f.name} in [0, 1), got {value}")
            object.__setattr__(self, f.name, value)

    @classmethod
    def of(cls, data: "Dropout | Mapping[str, Any] | None") -> "Dropout":
        return _from(cls, data, "dropout")


@dataclass(frozen=True)
class LearnedRate:
    """Learn the squeeze as a parameter (no grid search): ``s = min + (max - min) * sigmoid(theta)``.

    The downstream loss plus ``penalty * relu(target / s - 1)^2`` (spending more compute than the target's
    costs) is minimised; the penalty travels in ``EncoderOutput.aux_losses["rate_penalty"]``.

    Args:
        init: the starting rate (default: the trained squeeze), in ``[min, max]``.
        min, max: the range of the rate, ``1 <= min < max``.
        target: the rate whose compute is the budget (default: the trained squeeze), ``>= 1``.
        penalty: the penalty's weight, ``>= 0``.
    """

    init: float | None = None
    min: float = 1.0
    max: float = 8.0
    target: float | None = None
    penalty: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = float(self.min), float(self.max)
        if not 1.0 <= lo < hi:
            raise UserError(f"expected learned_rate 1 <= min < max, got min={lo}, max={hi}")
        if self.init is not None and not lo <= float(self.init) <= hi:
            raise UserError(f"expected learned_rate init in [min, max] = [{lo}, {hi}], got {self.init}")
        if self.target is not None and float(self.target) < 1.0:
            raise UserError(f"expected learned_rate target >= 1, got {self.target}")
        if float(self.penalty) < 0:
            raise UserError(f"expected learned_rate penalty >= 0, got {self.penalty}")

    @classmethod
    def of(cls, data: "LearnedRate | Mapping[str, Any] | None") -> "LearnedRate | None":
        return None if data is None else _from(cls, data, "learned_rate")

    def with_defaults(self, squeeze: int) -> "LearnedRate":
        """``init`` and ``target`` filled in with the trained squeeze, clipped into ``[min, max]``."""
        init = float(self.init) if self.init is not None else min(max(float(squeeze), self.min), self.max)
        target = float(self.target) if self.target is not None else float(squeeze)
        return dataclasses.replace(self, init=init, target=target)


@dataclass(frozen=True)
class Masking:
    """Fine-tuning-time masking of the 20 ms features (SEW / wav2vec 2.0 fine-tuning); training only.

    Time spans are replaced by the mask embedding (needs ``mask_emb``), channel spans are zeroed.

    Args:
        time_prob, time_length: span-start probability and span length of time masking.
        channel_prob, channel_length: the same for channel masking.
        min_masks: at least this many time spans per utterance.
    """

    time_prob: float = 0.0
    time_length: int = 10
    channel_prob: float = 0.0
    channel_length: int = 64
    min_masks: int = 2

    def __post_init__(self) -> None:
        for name in ("time_prob", "channel_prob"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                raise UserError(f"expected masking.{name} in [0, 1], got {getattr(self, name)}")
        for name in ("time_length", "channel_length", "min_masks"):
            value = getattr(self, name)
            if int(value) != value or value < (0 if name == "min_masks" else 1):
                raise UserError(f"expected masking.{name} to be an integer >= {0 if name == 'min_masks' else 1}, got {value}")
            object.__setattr__(self, name, int(value))

    @classmethod
    def of(cls, data: "Masking | Mapping[str, Any] | None") -> "Masking | None":
        if data is None:
            return None
        m = _from(cls, data, "masking")
        return m if m.active else None

    @property
    def active(self) -> bool:
        return self.time_prob > 0 or self.channel_prob > 0


@dataclass(frozen=True)
class Gates:
    """I3D gates on every attention, FFN and conformer-conv branch (:mod:`nemo_sew.nn.gates`).

    Args:
        kind: ``local`` (one predictor per branch, on the branch's input) or ``global`` (one predictor on the
            encoder input emits every gate before the blocks run).
        hidden: the predictors' hidden width (default 32 local, 64 global).
        threshold: the default inference threshold (``p > threshold`` opens); a profile's ``depth_threshold``
            overrides it. Stored in the ``.nemo``.
        tau: Gumbel-sigmoid temperature in training (the start of the annealing when ``tau_final`` is set).
        tau_final: anneal the temperature geometrically from ``tau`` to ``tau_final`` over ``anneal_steps``
            training steps (then hold it); None = a constant ``tau``. A hot start explores gate patterns per
            utterance before the samples harden.
        anneal_steps: the annealing's length in training steps (the trainer's global step).
        budget: ``macs`` (default: expected block MACs from :mod:`nemo_sew.cost`, as a fraction of the
            full-depth blocks' MACs at the same profile and lengths) or ``modules`` (expected fraction of open
            branches).
        target: the fraction the budget drives toward, in (0, 1].
        weight: the penalty's weight: ``weight * (mean_batch(fraction) - target)^2`` in
            ``EncoderOutput.aux_losses["gate_budget"]`` (the default ``penalty`` and ``per_utterance``).
        penalty: ``square`` (``(fraction - target)^2``) or ``hinge`` (``max(0, fraction - target)``: only spending
            more than the target costs, so an utterance may use less).
        per_utterance: apply the penalty to each utterance's own fraction and average (instead of to the batch
            mean): with ``hinge``, a per-utterance compute cap rather than a batch average.
        init_logit: the predictors' initial output bias (+3: p ~ 0.95, every branch starts open).
        max_logit: bound the predictors' logits to ``(-max_logit, max_logit)`` (``max * tanh(logit / max)``), so
            that gates cannot saturate and stop learning; None = unbounded.
    """

    kind: str = "local"
    hidden: int | None = None
    threshold: float = 0.5
    tau: float = 1.0
    budget: str = "macs"
    target: float = 0.7
    weight: float = 1.0
    init_logit: float = 3.0
    max_logit: float | None = None
    tau_final: float | None = None
    anneal_steps: int = 0
    penalty: str = "square"
    per_utterance: bool = False

    def __post_init__(self) -> None:
        if self.penalty not in ("square", "hinge"):
            raise UserError(f"expected gates.penalty 'square' or 'hinge', got {self.penalty!r}")
        if self.tau_final is not None and (float(self.tau_final) <= 0 or int(self.anneal_steps) < 1):
            raise UserError(
                f"expected gates.tau_final > 0 with gates.anneal_steps >= 1, got {self.tau_final}, {self.anneal_steps}"
            )
        if self.max_logit is not None and float(self.max_logit) <= 0:
            raise UserError(f"expected gates.max_logit > 0 or None, got {self.max_logit}")
        if self.kind not in ("local", "global"):
            raise UserError(f"expected gates.kind 'local' or 'global', got {self.kind!r}")
        if self.budget not in ("macs", "modules"):
            raise UserError(f"expected gates.budget 'macs' or 'modules', got {self.budget!r}")
        if self.hidden is None:
            object.__setattr__(self, "hidden", 32 if self.kind == "local" else 64)
        if int(self.hidden) < 1:
            raise UserError(f"expected gates.hidden >= 1, got {self.hidden}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise UserError(f"expected gates.threshold in [0, 1], got {self.threshold}")
        if not 0.0 < float(self.target) <= 1.0:
            raise UserError(f"expected gates.target in (0, 1], got {self.target}")
        if float(self.tau) <= 0 or float(self.weight) < 0:
            raise UserError(f"expected gates.tau > 0 and gates.weight >= 0, got {self.tau}, {self.weight}")

    @classmethod
    def of(cls, data: "Gates | Mapping[str, Any] | None") -> "Gates | None":
        return None if data is None else _from(cls, data, "gates")


# --------------------------------------------------------------------------------------------------
# the pre-EncoderArch encoder config (flat keyword arguments)

LEGACY_ARCH_KEYS = frozenset({
    "frontend", "feat_in", "conv_layers", "conv_norm", "conv_bias", "wfe_c", "wfe_l", "mel_stack", "d_model",
    "num_layers", "num_heads", "head_dim", "ffn_dim", "block", "layer_norm_first", "conv_kernel", "squeeze",
    "pos_conv_kernel", "pos_conv_groups", "upsample", "layer_norm_eps", "feature_layer_norm",
    "feature_projection", "expander", "cif_alpha",
})  # fmt: skip
LEGACY_DROPOUT_KEYS = {"dropout": "hidden", "attention_dropout": "attention", "activation_dropout": "activation",
                       "feature_dropout": "feature", "layerdrop": "layerdrop"}  # fmt: skip


def is_legacy_config(config: Mapping[str, Any]) -> bool:
    """True for an encoder config in the flat pre-``EncoderArch`` layout (no ``arch`` / ``preset`` key)."""
    keys = set(config) - {"_target_"}
    return bool(keys & (LEGACY_ARCH_KEYS | set(LEGACY_DROPOUT_KEYS) - {"dropout"})) or (
        "dropout" in keys and not isinstance(config["dropout"], Mapping)
    )


def _per_layer(value: Any, n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise UserError(f"expected {name} to be an int or a list of {n} ints, got {len(values)} values")
    return values


def legacy_arch(config: Mapping[str, Any]) -> EncoderArch:
    """The :class:`EncoderArch` of a flat pre-arch config (the old ``SqueezeEncoder`` defaults apply)."""
    c = {"frontend": "mel_stack", "feat_in": 80, "conv_layers": None, "conv_norm": "group_norm", "conv_bias": False,
         "wfe_c": 64, "wfe_l": 1, "mel_stack": 2, "d_model": 256, "num_layers": 4, "num_heads": 4, "head_dim": 64,
         "ffn_dim": 1024, "block": "transformer", "layer_norm_first": False, "conv_kernel": 31, "squeeze": 2,
         "pos_conv_kernel": 31, "pos_conv_groups": 16, "upsample": True, "layer_norm_eps": 1e-5,
         "feature_layer_norm": True, "feature_projection": None, "expander": None, "cif_alpha": False,
         **{k: v for k, v in config.items() if k in LEGACY_ARCH_KEYS}}  # fmt: skip
    kind = c["frontend"]
    if kind == "mel_stack":
        frontend = FrontendSpec("mel_stack", n_mels=int(c["feat_in"]), mel_stack=int(c["mel_stack"]))
    else:
        if int(c["feat_in"]) != 1:
            raise UserError(f"expected feat_in=1 for waveform front end {kind!r}, got {c['feat_in']}")
        layers = c["conv_layers"] or (wfe_c_layers(int(c["wfe_c"]), int(c["wfe_l"])) if kind == "wfe_c" else wfe_o_layers())
        frontend = FrontendSpec(kind, tuple(tuple(layer) for layer in layers), c["conv_norm"], bool(c["conv_bias"]))
    n = int(c["num_layers"])
    kind_b = c["block"]
    if kind_b not in BLOCK_KINDS:
        raise UserError(f"expected block 'transformer' or 'conformer', got {kind_b!r}")
    d = int(c["d_model"])
    blocks = tuple(
        BlockSpec(kind_b, h, int(c["head_dim"]), (f,) * BLOCK_KINDS[kind_b].ffns, d if kind_b == "conformer" else 0,
                  int(c["conv_kernel"]))
        for h, f in zip(_per_layer(c["num_heads"], n, "num_heads"), _per_layer(c["ffn_dim"], n, "ffn_dim"))
    )  # fmt: skip
    variable = config.get("squeeze_sampler") is not None or bool(c["cif_alpha"]) or config.get("learned_rate") is not None
    if not c["upsample"]:
        expander = "none"
    else:
        expander = c["expander"] or ("phase" if variable else "sew")
    return EncoderArch(
        frontend=frontend, d_model=d,
        compressor=CompressorSpec(int(c["squeeze"]), int(c["pos_conv_kernel"]), int(c["pos_conv_groups"]), bool(c["cif_alpha"])),
        expander=expander, blocks=blocks, layer_norm_first=bool(c["layer_norm_first"]),
        feature_layer_norm=bool(c["feature_layer_norm"]), feature_projection=c["feature_projection"],
        layer_norm_eps=float(c["layer_norm_eps"]),
    )  # fmt: skip


def upgrade_encoder_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat pre-arch encoder config in today's layout (``arch`` + typed options); others pass through."""
    config = dict(config)
    if not is_legacy_config(config):
        return config
    out: dict[str, Any] = {k: v for k, v in config.items() if k == "_target_"}
    out["arch"] = legacy_arch(config).to_dict()
    dropout = {new: config[old] for old, new in LEGACY_DROPOUT_KEYS.items() if old in config}
    if dropout:
        out["dropout"] = dropout
    for key in ("squeeze_sampler", "cif_lambda", "learned_rate", "mask_emb", "masking", "gates"):
        if key in config:
            out[key] = config[key]
    unknown = sorted(set(config) - set(out) - LEGACY_ARCH_KEYS - set(LEGACY_DROPOUT_KEYS))
    if unknown:
        raise UserError(f"unknown encoder arguments {unknown}")
    return out


def upgrade_encoder_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Encoder overrides (``model.encoder_overrides``) in today's layout: the flat dropout keys of old recipes
    (``dropout: 0.1``, ``attention_dropout``, ``layerdrop``, ...) become the ``dropout`` dict; flat arch keys
    are refused (an override of the architecture goes under ``arch:``)."""
    out = dict(overrides)
    dropout = dict(out["dropout"]) if isinstance(out.get("dropout"), Mapping) else {}
    for old, new in LEGACY_DROPOUT_KEYS.items():
        if old in out and not (old == "dropout" and isinstance(out[old], Mapping)):
            dropout[new] = out.pop(old)
    if dropout:
        out["dropout"] = dropout
    arch_keys = sorted(set(out) & LEGACY_ARCH_KEYS)
    if arch_keys:
        raise UserError(f"encoder overrides {arch_keys} change the architecture: give them under arch: {{...}}")
    return out
