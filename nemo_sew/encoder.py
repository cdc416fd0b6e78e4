"""SqueezeEncoder: the NeMo NeuralModule that builds the ``nemo_sew.nn`` parts from an :class:`EncoderArch`.

Data flow: front end (20 ms) -> feature projection -> compressor (squeeze s) -> blocks -> expander back
to 20 ms. Inside, one layout ``(B, T, C)`` + lengths; NeMo's ``(B, D, T)`` is converted in ``forward``
(the NeMo port) and nowhere else.

The model <-> encoder contract: the model decides what the encoder does in a training step (a
:class:`Draw` from the profile sampler, seeded by the global step) and passes it in; the encoder returns
an :class:`EncoderOutput` with its auxiliary losses (``rate_penalty``, ``gate_budget``, ``prune_budget``) and
stats (the factor it ran, ...). Nothing is written into the encoder by the model and nothing is read
back after a forward. Per forward, the profile becomes one :class:`~nemo_sew.nn.blocks.LayerPlan` per layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from nemo.core.classes import Exportable, NeuralModule, typecheck
from nemo.core.neural_types import (
    AcousticEncodedRepresentation,
    AudioSignal,
    LengthsType,
    NeuralType,
    SpectrogramType,
)
from torch import nn

from nemo_sew.arch import EncoderArch, resolve_arch
from nemo_sew.nn.blocks import BRANCH_COST, BlockOptions, LayerPlan, build_block, legacy_layer_keys, zero_touch
from nemo_sew.nn.compress import PhaseExpander, SEWUpsampler, SqueezeCompressor
from nemo_sew.cost import encoder_cost, ffn_columns, validate_profile
from nemo_sew.errors import UserError
from nemo_sew.nn.frontend import FeatureProjection, _tracing, build_frontend, frontend_layout, time_mask
from nemo_sew.nn.gates import GlobalGatePredictor, gate_decisions
from nemo_sew.nn.pooling import FrameMap, pooled_lengths
from nemo_sew.options import Dropout, Gates, LearnedRate, Masking, upgrade_encoder_config
from nemo_sew.profile import CompressionProfile, ProfileLike, ProfileSampler, as_profile
from nemo_sew.nn.units import FrontendPlan
from nemo_sew.quant.weights import apply_config as apply_quant_config, set_weight_bits, weights_at

log = logging.getLogger("nemo_sew.encoder")

# NeMo's types of the two input ports a front end can have (nemo_sew.nn.frontend.FrontendLayout.port)
_PORT_TYPES = {
    "waveform": NeuralType(("B", "C", "T"), AudioSignal()),
    "spectrogram": NeuralType(("B", "D", "T"), SpectrogramType()),
}


@dataclass(frozen=True)
class Draw:
    """What one forward runs at: a profile (its ``squeeze`` None = the trained or learned factor) and OFA's
    CIF lambda. In training the model makes one per step with :meth:`SqueezeEncoder.draw` (the same on
    every DDP rank); at inference :meth:`SqueezeEncoder.draw` returns the active profile."""

    profile: CompressionProfile
    cif_lambda: float = 1.0
    step: int | None = None  # the training step it was drawn for (I3D temperature annealing, pruning warm-up), if known
    seed: int = 0  # the run's seed: decisions every DDP rank must share (LayerDrop) are functions of (seed, step)


@dataclass
class EncoderOutput:
    """What the encoder returns (library layout).

    Args:
        hidden: ``(B, T, D)``.
        lengths: ``(B,)`` valid frames.
        aux_losses: scalar losses the training step adds to its objective (``rate_penalty``, ...).
        stats: values about this forward: ``squeeze`` (the factor run, float), ``cif_lambda``,
            ``q_pool`` / ``kv_pool`` (strides run), ``layers`` (blocks run); gate and pruning stats are detached
            tensors (no host synchronisation in a step): :meth:`plain_stats` for Python values.
    """

    hidden: torch.Tensor
    lengths: torch.Tensor
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def plain_stats(self) -> dict[str, Any]:
        """:attr:`stats` with tensors as Python numbers and lists (the one host synchronisation, for reports)."""
        return plain_stats(self.stats)


def plain_stats(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Tensors in a stats dict (also nested in dicts) -> Python floats (0-dim) and lists."""
    out: dict[str, Any] = {}
    for key, value in stats.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.tolist()
        elif isinstance(value, Mapping):
            out[key] = plain_stats(value)
        else:
            out[key] = value
    return out


@dataclass
class Front:
    """What :meth:`SqueezeEncoder.front` returns: projected (and, in fine-tuning, masked) 20 ms features."""

    hidden: torch.Tensor  # (B, T, D)
    lengths: torch.Tensor  # 20 ms frames (B,)
    input_lengths: torch.Tensor  # the input port's lengths (samples / 10 ms frames)
    units: dict[str, torch.Tensor] | None = None  # this forward's pruning-mask values (shared by every path)
    features: torch.Tensor | None = None  # (B, T, C_front): the front end's output, before the projection
    normed: torch.Tensor | None = None  # (B, T, C_front): after the feature LayerNorm (wav2vec 2.0's targets)


@dataclass
class Squeezed:
    """The compressor's output, before the blocks (see :meth:`SqueezeEncoder.squeeze`)."""

    hidden: torch.Tensor  # (B, T', D)
    lengths: torch.Tensor  # (B,)
    frame_map: FrameMap
    factor: float | torch.Tensor  # the squeeze run (a tensor in learned-rate training)
    cif_lambda: float
    frames: torch.Tensor  # 20 ms input lengths (B,)
    num_frames: int  # 20 ms padded length
    aux_losses: dict[str, torch.Tensor] = field(default_factory=dict)
    input_lengths: torch.Tensor | None = None  # the input port's lengths (samples / 10 ms frames), for the cost model
    units: dict[str, torch.Tensor] | None = None  # this forward's pruning-mask values, if the encoder has masks


def _plain(value: Any) -> Any:
    """OmegaConf containers (NeMo passes DictConfig values) -> plain dicts and lists."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with NeMo
        pass
    return value


class SqueezeEncoder(NeuralModule, Exportable):
    """A SEW-style squeezed speech encoder with NeMo's encoder interface, built from an :class:`EncoderArch`.

    ``forward(audio_signal (B, C, T), length (B,)) -> (encoded (B, D, T'), encoded_len (B,))``. For the
    waveform front ends ``C = 1`` and ``T`` is in samples (from :class:`nemo_sew.WaveformPreprocessor`);
    for ``mel_stack`` ``C = n_mels`` and ``T`` is in 10 ms frames (from NeMo's mel preprocessor).

    Args:
        preset: a name in :data:`nemo_sew.arch.PRESETS`; ``arch`` then holds overrides of its fields.
        arch: an :class:`EncoderArch`, a full arch dict (``EncoderArch.to_dict``, what ``.nemo`` files
            store), or, with ``preset``, overrides for :func:`nemo_sew.arch.build_arch` (e.g.
            ``{"d_model": 384, "blocks": {"conv_kernel": 15}, "compressor": {"squeeze": 4}}``).
        dropout: :class:`nemo_sew.options.Dropout` fields (``hidden``, ``attention``, ``activation``,
            ``feature``, ``layerdrop``).
        squeeze_sampler: training-time profile sampler (:class:`nemo_sew.profile.ProfileSampler` fields),
            e.g. ``{"squeeze": {"values": [1, 2, 3, 4]}}`` or ``{"squeeze": {"low": 1, "high": 4}}``; a bare
            ``{"values": ...}`` / ``{"low": ..., "high": ...}`` is taken as the squeeze spec.
        learned_rate: :class:`nemo_sew.options.LearnedRate` fields: learn the squeeze (no grid search).
        cif_lambda: OFA's lambda at inference when the arch has ``compressor.cif_alpha`` (0 = uniform
            weights, 1 = learned only).
        mask_emb: keep a learned mask embedding (``d_model``) for masked frames: created by self-supervised
            pre-training and reused by fine-tuning's time masking (wav2vec 2.0 ``mask_emb``).
        masking: :class:`nemo_sew.options.Masking` fields: fine-tuning-time masking (training only).
        gates: :class:`nemo_sew.options.Gates` fields: I3D input-dependent depth (``{"kind": "local"}`` or
            ``{"kind": "global"}``, a depth budget); None = every branch always runs.
        pruning: :class:`nemo_sew.prune.Pruning` fields: HardConcrete masks for structured pruning to a budget
            (``encoder.pruning``, penalty in ``aux_losses["prune_budget"]``); None = no masks.
        quant: :class:`nemo_sew.quant.QuantConfig` fields: the packed low-bit weights this encoder holds (and
            whether it holds fp weights), or QAT fake quantization; None = fp only. Written by
            ``nemo-sew quantize`` and :func:`nemo_sew.quant.prepare_qat`; a profile's ``weight_bits`` picks one.
        **legacy: the flat keyword arguments of configs written before ``EncoderArch`` (``frontend``,
            ``d_model``, ``num_layers``, ..., ``dropout=0.1``); read by
            :func:`nemo_sew.options.upgrade_encoder_config`, so every old ``.nemo`` restores.

    When the factor can vary (a sampler, CIF weights or a learned rate) and the arch's expander is SEW's
    factor-specific one, the factor-agnostic ``phase`` expander is used instead (as before the arch existed).
    """

    def __init__(
        self,
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
    ) -> None:
        super().__init__()
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
            _plain, (arch, squeeze_sampler, learned_rate, masking, dropout, gates, pruning)
        )
        self.arch = resolve_arch(preset, arch)
        if squeeze_sampler is not None and not ({"squeeze", "q_pool", "kv_pool", "cif_lambda", "seed"} & set(squeeze_sampler)):
            squeeze_sampler = {"squeeze": dict(squeeze_sampler)}  # a bare squeeze spec
        self.sampler = ProfileSampler(**squeeze_sampler) if squeeze_sampler is not None else None
        rate = LearnedRate.of(learned_rate)
        self.learned_rate = rate.with_defaults(self.arch.compressor.squeeze) if rate is not None else None
        variable = self.sampler is not None or self.arch.compressor.cif_alpha or self.learned_rate is not None
        if variable and self.arch.expander == "sew":
            self.arch = self.arch.replace(expander="phase")
        self.dropout_options = Dropout.of(dropout)
        self.masking = Masking.of(masking)
        self.gate_options = Gates.of(gates)
        self.cif_lambda = float(cif_lambda)
        self._build(mask_emb)
        self.pruning = None
        if pruning is not None:  # masks of the modules just built, applied through the plan (nemo_sew.prune.masks)
            from nemo_sew.prune.masks import Pruning, PruningMasks

            self.pruning = PruningMasks(self, Pruning.of(pruning))
        if self.masking is not None and self.masking.time_prob > 0 and self.mask_emb is None:
            raise ValueError("time masking replaces frames by the mask embedding: set mask_emb=True")
        # the step of a training forward made without a draw (stock NeMo models call forward() alone): counted
        # here and saved with the weights, so annealing, warm-ups and LayerDrop continue where a resumed run stopped
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self._train_step = 0  # its host copy (reading the buffer would synchronise with the device)
        self.quant_config = apply_quant_config(self, _plain(quant))  # parametrizations only; a state dict fills them
        # squeeze None = the trained (or learned) factor
        self._profile = CompressionProfile(weight_bits=self.quant_config.active if self.quant_config else 16)
        self._register_load_state_dict_pre_hook(_upgrade_legacy_state_dict)
        self.register_load_state_dict_post_hook(_sync_train_step)

    def _build(self, mask_emb: bool) -> None:
        a, d = self.arch, self.dropout_options
        self.frontend = build_frontend(a.frontend)
        self.layout = frontend_layout(a.frontend)
        self.projection = FeatureProjection(
            a.frontend.out_dim, a.d_model, d.feature, a.layer_norm_eps, a.feature_layer_norm, a.feature_projection
        )
        c = a.compressor
        self.compressor = SqueezeCompressor(a.d_model, c.pos_conv_kernel, c.pos_conv_groups, c.squeeze, c.cif_alpha)
        if self.learned_rate is not None:
            r = self.learned_rate  # squeeze = lo + (hi - lo) * sigmoid(theta)
            frac = min(max((r.init - r.min) / (r.max - r.min), 1e-4), 1 - 1e-4)
            self.rate_logit = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))
        self.norm = nn.LayerNorm(a.d_model, eps=a.layer_norm_eps)  # post-LN: before the blocks; pre-LN: after
        self.dropout = nn.Dropout(d.hidden)
        g = self.gate_options
        options = BlockOptions(
            a.d_model, a.layer_norm_first, d.hidden, d.attention, d.activation, a.layer_norm_eps,
            local_gate_hidden=g.hidden if g is not None and g.kind == "local" else 0,
            gate_init_logit=g.init_logit if g is not None else 3.0,
            gate_max_logit=g.max_logit if g is not None else None,
        )  # fmt: skip
        self.layers = nn.ModuleList([build_block(spec, options) for spec in a.blocks])
        # (layer, branch) of every gate, in the order the global predictor emits them
        self.gate_slots = [(i, name) for i, layer in enumerate(self.layers) for name in layer.branch_names] if g else []
        self.gate_predictor = (
            GlobalGatePredictor(a.d_model, len(self.gate_slots), g.hidden, g.init_logit, g.max_logit)
            if g and g.kind == "global"
            else None
        )
        expanders = {"none": lambda: None, "sew": lambda: SEWUpsampler(a.d_model, c.squeeze), "phase": lambda: PhaseExpander(a.d_model)}
        self.expander: nn.Module | None = expanders[a.expander]()
        self.mask_emb = nn.Parameter(torch.empty(a.d_model).uniform_()) if mask_emb else None  # fairseq init

    # ----------------------------------------------------------------------------------------------
    # config

    def config_dict(self) -> dict[str, Any]:
        """This encoder's constructor arguments in today's layout (the full arch): what a ``.nemo`` stores."""
        out: dict[str, Any] = {"arch": self.arch.to_dict(), "dropout": dataclasses.asdict(self.dropout_options)}
        if self.sampler is not None:
            out["squeeze_sampler"] = _plain_sampler(self.sampler)
        if self.learned_rate is not None:
            out["learned_rate"] = dataclasses.asdict(self.learned_rate)
        out["cif_lambda"] = self.cif_lambda
        out["mask_emb"] = self.mask_emb is not None
        out["masking"] = dataclasses.asdict(self.masking) if self.masking is not None else None
        if self.gate_options is not None:
            out["gates"] = dataclasses.asdict(self.gate_options)
        if self.pruning is not None:
            out["pruning"] = self.pruning.options.to_dict()
        if self.quant_config is not None:
            out["quant"] = self.quant_config.to_dict()
        return out

    @property
    def d_model(self) -> int:
        return self.arch.d_model

    @property
    def frontend_dim(self) -> int:
        return self.arch.frontend.out_dim

    @property
    def _feat_out(self) -> int:  # NeMo's encoder convention (decoders read feat_out)
        return self.arch.d_model

    @property
    def _feat_in(self) -> int:
        return self.layout.feat_in

    @property
    def layerdrop(self) -> float:
        return self.dropout_options.layerdrop

    # ----------------------------------------------------------------------------------------------
    # profile

    @property
    def profile(self) -> CompressionProfile:
        return self._profile

    @property
    def learned_squeeze(self) -> torch.Tensor | None:
        """The learned squeeze as a differentiable scalar (learned-rate mode), else None."""
        if self.learned_rate is None:
            return None
        lo, hi = self.learned_rate.min, self.learned_rate.max
        return lo + (hi - lo) * torch.sigmoid(self.rate_logit)

    @property
    def squeeze(self) -> float:
        """The active squeeze factor (int-valued for SEW's integer path)."""
        if self._profile.squeeze is not None:
            s = float(self._profile.squeeze)
        elif self.learned_rate is not None:
            s = float(self.learned_squeeze.detach())
        else:
            s = float(self.compressor.factor)
        return int(s) if s == int(s) else s

    @property
    def fixed_factor(self) -> bool:
        """True when only the trained factor can run (SEW's factor-specific upsampler)."""
        return isinstance(self.expander, SEWUpsampler)

    def supported_squeeze(self) -> str:
        if self.fixed_factor:
            return f"only {self.compressor.factor} (SEW's upsampler expands by exactly that factor)"
        return "any real factor >= 1 (integers through SEW's squeeze, others through CIF)"

    def set_profile(self, profile: ProfileLike) -> CompressionProfile:
        """Make ``profile`` the active one; fields this encoder cannot act on raise a clear error."""
        p = as_profile(profile)
        squeeze = p.squeeze
        validate_profile(self.arch, p)  # squeeze and pooling: the cost model's check too
        if p.depth_threshold is not None and not 0.0 <= float(p.depth_threshold) <= 1.0:
            raise UserError(f"expected depth_threshold in [0, 1], got {p.depth_threshold}")
        unsupported = {}
        if p.arch is not None:
            self._check_profile_arch(p.arch)
        for name in ("depth_threshold", "static_gates"):
            if getattr(p, name) is not None and self.gate_options is None:
                unsupported[name] = getattr(p, name)
        if p.static_gates is not None and self.gate_options is not None:
            slots = {f"{i}.{name}" for i, name in self.gate_slots}
            if set(p.static_gates) - slots:
                raise UserError(f"static_gates names unknown gates {sorted(set(p.static_gates) - slots)}; known: {sorted(slots)}")
        if p.weight_bits not in (self.quant_config.available if self.quant_config else (16,)):
            set_weight_bits(self, p.weight_bits, self.quant_config)  # raises: says what this encoder holds
        if unsupported:
            raise NotImplementedError(
                f"this encoder cannot act on profile fields {unsupported}; it acts on squeeze, q_pool and kv_pool"
                + (", depth_threshold" if self.gate_options is not None else " (depth_threshold needs an encoder built with gates)")
            )
        if self.quant_config is not None:
            set_weight_bits(self, p.weight_bits, self.quant_config)
            self.quant_config = dataclasses.replace(self.quant_config, active=p.weight_bits)
        self._profile = dataclasses.replace(p, squeeze=None if squeeze is None else float(squeeze))
        return self._profile

    def _check_profile_arch(self, arch: Any) -> None:
        """A profile's ``arch`` must name the arch these weights have (a pruned size is its own ``.nemo``)."""
        from nemo_sew.arch import build_arch

        try:
            wanted = arch if isinstance(arch, EncoderArch) else build_arch(self.arch, **dict(_plain(arch)))
        except (TypeError, ValueError) as err:
            raise UserError(f"profile arch {arch!r} is not an arch or arch overrides: {err}") from err
        if wanted != self.arch:
            raise UserError(
                "profile arch differs from the arch this model's weights have; weight shapes cannot change at run "
                "time, so each pruned size is a separate .nemo (see README: shipping pruned sizes). This model: "
                f"{self.arch.to_dict()}, profile: {wanted.to_dict()}"
            )

    def draw(self, step: int | None = None, seed: int = 0) -> Draw:
        """The profile one forward runs at.

        In training: with a sampler, the sampler's draw for global step ``step`` (a pure function of the step,
        so every DDP rank draws the same), else the active profile; the draw carries ``step``. ``step=None``
        in training takes the next value of this encoder's own step counter (``train_step``, saved with the
        weights), which is what stock NeMo models get (they call ``forward`` without a draw). At inference:
        the active profile.
        """
        if self.training and step is None:
            step = self._train_step
            self._train_step += 1
            self.train_step.fill_(self._train_step)  # a fill from a host value: no synchronisation
        if not (self.training and self.sampler is not None):
            return Draw(self._profile, self.cif_lambda, step, int(seed))
        drawn, lam = self.sampler.sample(int(step))
        if drawn.squeeze is None:
            drawn = dataclasses.replace(drawn, squeeze=self._profile.squeeze)
        return Draw(drawn, lam, int(step), int(seed))

    def _checked_draw(self, draw: Draw | None) -> Draw:
        """``draw``, or :meth:`draw` without a step; a training draw must carry its step (annealing, warm-ups
        and LayerDrop are functions of it), and its weight bits must be held."""
        if draw is None:
            draw = self.draw()
        elif self.training and draw.step is None:
            raise ValueError("a training forward's Draw must carry its step (Draw(step=...), or encoder.draw(step)): "
                             "gate annealing, the pruning warm-up and LayerDrop are functions of it")  # fmt: skip
        available = self.quant_config.available if self.quant_config is not None else (16,)
        if draw.profile.weight_bits not in available:
            set_weight_bits(self, draw.profile.weight_bits, self.quant_config)  # raises: says what this encoder holds
        return draw

    def _weights_at(self, bits: int):
        """The scope in which quantized weights read ``bits`` (nothing to scope without quantization state)."""
        return weights_at(bits) if self.quant_config is not None else contextlib.nullcontext()

    def layerdrop_decisions(self, draw: Draw, num_layers: int) -> frozenset[int]:
        """The blocks LayerDrop skips in this training forward: a pure function of ``(draw.seed, draw.step,
        layer)``, so every DDP rank (and a one-process run of the same recipe) drops the same blocks, and a
        resumed run repeats them. Drawn on the host from numpy's SeedSequence: no device tensor, no sync."""
        if draw.step is None:
            raise ValueError("LayerDrop needs the draw's step (Draw.step)")
        return layerdrop_decisions(self.layerdrop, int(draw.seed), int(draw.step), num_layers)

    def compile_blocks(self, **options: Any) -> None:
        """``torch.compile`` each block in place (regional compilation: ``nn.Module.compile``), for training
        (recipe ``compile: true``) and inference. The blocks see only a sequence and its lengths, so the squeeze
        factor a stochastic draw picks changes their input length, not their code: after the first length
        change the length is a dynamic dimension and later draws (integer or CIF) reuse the same graphs
        instead of recompiling every step. The front end, compressor (CIF's data-dependent length) and
        expander stay eager. ``options`` go to ``torch.compile`` (``backend``, ``mode``, ``fullgraph``)."""
        for layer in self.layers:
            layer.compile(**options)

    def disable_sampler(self) -> None:
        """Stop drawing training profiles (fine-tuning a stochastic model at one profile)."""
        self.sampler = None

    def depth_threshold(self, profile: CompressionProfile) -> float:
        """The I3D threshold a forward at ``profile`` uses (the profile's, else the encoder's default)."""
        if profile.depth_threshold is not None:
            return float(profile.depth_threshold)
        return self.gate_options.threshold if self.gate_options is not None else 0.5

    def gate_tau(self, step: int | None = None) -> float:
        """The Gumbel-sigmoid temperature at training ``step``: ``gates.tau``, annealed geometrically to
        ``gates.tau_final`` over ``gates.anneal_steps`` when set (``step`` None: the start)."""
        g = self.gate_options
        if g is None:
            return 1.0
        if g.tau_final is None or step is None:
            return float(g.tau)
        done = min(1.0, max(0, int(step)) / int(g.anneal_steps))
        return float(g.tau) * (float(g.tau_final) / float(g.tau)) ** done

    def plan(
        self,
        profile: CompressionProfile,
        gates: list[dict] | None = None,
        tau: float | None = None,
        units: Mapping[str, torch.Tensor] | None = None,
    ) -> list[LayerPlan]:
        """One :class:`LayerPlan` per layer for ``profile`` (worked out once per forward); ``gates``: the global
        predictor's decisions per layer; ``tau``: the gates' training temperature (default :meth:`gate_tau`);
        ``units``: this forward's pruning-mask values (:meth:`PruningMasks.sample`), which become each branch's
        :class:`~nemo_sew.nn.units.BranchPlan`."""
        n = len(self.layers)
        q_pool = profile.q_pool or (1,) * n
        kv_pool = profile.kv_pool or (1,) * n
        threshold = self.depth_threshold(profile)
        tau = self.gate_tau() if tau is None else tau
        gates = gates or [None] * n
        off: list[frozenset[str]] = [frozenset()] * n
        if profile.static_gates is not None and self.gate_options is not None:  # frozen: closed = off, no predictors
            closed = [k.split(".", 1) for k, v in profile.static_gates.items() if not v]
            off = [frozenset(name for layer, name in closed if int(layer) == i) for i in range(n)]
            gates = [{}] * n
        branches: list[dict | None] = [None] * n
        if self.pruning is not None and units is not None:
            branches = [
                {name: self.pruning.branch_plan(i, name, units, self.training) for name in layer.branch_names}
                for i, layer in enumerate(self.layers)
            ]
        return [
            LayerPlan(int(q), int(kv), o, weight_bits=profile.weight_bits, depth_threshold=threshold, gate_tau=tau,
                      gates=g, branches=b)  # fmt: skip
            for q, kv, o, g, b in zip(q_pool, kv_pool, off, gates, branches)
        ]

    # ----------------------------------------------------------------------------------------------
    # lengths

    def frame_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """20 ms front-end frames for input lengths (samples or 10 ms frames)."""
        return self.frontend.output_lengths(length)

    def output_lengths(self, length: torch.Tensor) -> torch.Tensor:
        """Encoder output frames for input lengths at the active profile (inference)."""
        frames = self.frame_lengths(length)
        if self.expander is not None:
            return frames
        lengths = SqueezeCompressor.output_lengths(frames, self.squeeze, keep_tail=True)
        for stride in self._profile.q_pool or ():
            lengths = pooled_lengths(lengths, stride)
        return lengths

    def min_input_length(self) -> int:
        """Shortest input (samples or 10 ms frames) that gives at least one squeezed frame."""
        return self.layout.min_input_length(self.squeeze)

    # ----------------------------------------------------------------------------------------------
    # NeMo ports

    @property
    def input_types(self) -> OrderedDict:
        return OrderedDict(audio_signal=_PORT_TYPES[self.layout.port], length=NeuralType(tuple("B"), LengthsType()))

    @property
    def output_types(self) -> OrderedDict:
        return OrderedDict(
            outputs=NeuralType(("B", "D", "T"), AcousticEncodedRepresentation()),
            encoded_lengths=NeuralType(tuple("B"), LengthsType()),
        )

    def input_example(self, max_batch: int = 2, max_dim: int = 32000) -> tuple[torch.Tensor, torch.Tensor]:
        """Example inputs for export: ``max_dim`` samples of audio (``max_dim / 160`` frames of a mel front end)."""
        param = next(self.parameters())
        length = max(self.layout.length(max_dim / 16000.0), self.min_input_length())
        signal = torch.randn(max_batch, self.layout.feat_in, length, device=param.device, dtype=param.dtype)
        lengths = torch.full((max_batch,), length, dtype=torch.int64, device=param.device)
        lengths[1:] = torch.randint(self.min_input_length(), length + 1, (max_batch - 1,))
        return signal, lengths

    def check_inputs(self, audio_signal: torch.Tensor, length: torch.Tensor) -> None:
        """Shape, NaN / inf and minimum-length checks with clear errors (skipped while tracing)."""
        feat_in = self.layout.feat_in
        if audio_signal.dim() != 3 or audio_signal.shape[1] != feat_in:
            raise ValueError(f"expected audio_signal of shape (B, {feat_in}, T), got {tuple(audio_signal.shape)}")
        if self.training or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            # data-dependent checks cannot be traced or compiled, and each costs a host synchronisation: training
            # data is checked in the data layer (manifest validation: audio content, minimum duration), so a
            # training step has none; eager inference on raw tensors keeps them
            return
        need = self.min_input_length()
        if not bool(torch.isfinite(audio_signal).all() & (length >= need).all()):  # one synchronisation; details below
            if not bool(torch.isfinite(audio_signal).all()):
                bad = (~torch.isfinite(audio_signal)).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"audio_signal contains NaN or inf values in batch items {bad}")
        else:
            return
        short = (length < need).nonzero().flatten().tolist()
        if short:
            raise ValueError(
                f"input too short for this encoder at squeeze {self.squeeze}: items {short} have lengths "
                f"{length[short].tolist()} {self.layout.unit}; the front end's receptive field and the squeeze "
                f"need at least {need}"
            )

    @typecheck()
    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.run(audio_signal, length)
        return out.hidden.transpose(1, 2), out.lengths  # (B, D, T_out): the only conversion to NeMo's layout

    # ----------------------------------------------------------------------------------------------
    # stages (library layout)

    def run(
        self, audio_signal: torch.Tensor, length: torch.Tensor, draw: Draw | None = None, measure: bool = False
    ) -> EncoderOutput:
        """The whole encoder on the input port ``(B, C, T)``: features, projection, fine-tuning masking
        (training), squeeze, blocks, expander. ``draw`` None: :meth:`draw` without a step. ``measure``: a gated
        encoder also reports each item's realised MACs (``stats["macs"]``; training with a MAC budget always
        does), which costs a cost-model call, so inference skips it unless asked."""
        draw = self._checked_draw(draw)
        return self.from_front(self.front(audio_signal, length, draw=draw), draw, measure=measure)

    def front(
        self,
        audio_signal: torch.Tensor,
        length: torch.Tensor,
        draw: Draw | None = None,
        masking: bool = True,
        feature_grad_mult: float = 1.0,
    ) -> Front:
        """The part of :meth:`run` no draw changes: features, projection and fine-tuning masking (training).
        Training steps that run several profiles (``nemo_sew.stochastic``: sandwich, in-place distillation)
        compute it once and pass it to :meth:`from_front` per profile, so every path sees the same masked
        features (and one pruning-mask sample) and the front end's forward and backward run once.

        Args:
            draw: whose weight bits the front end reads (None: the active profile's); a multi-path step passes
                its first path's.
            masking: apply fine-tuning masking in training (self-supervised objectives mask on their own).
            feature_grad_mult: scale of the gradient reaching the front end (wav2vec 2.0's ``feature_grad_mult``).
        """
        self.check_inputs(audio_signal, length)
        bits = draw.profile.weight_bits if draw is not None else self._profile.weight_bits
        units = self.pruning.sample() if self.pruning is not None else None  # one mask sample per forward
        fe_plan = self.pruning.frontend_plan(units) if units is not None else None
        with self._weights_at(bits):
            feats, frames = self.frontend.from_port(audio_signal, length, fe_plan)  # (B, T, C_front) at 20 ms
            if self.training and feature_grad_mult != 1.0:
                feats = _GradMultiply.apply(feats, float(feature_grad_mult))
            normed = self.projection.normalize(feats, fe_plan.feature_units if fe_plan is not None else None)
            x = self.projection.project(normed)  # (B, T, D)
        if masking and self.training and self.masking is not None:
            x = self.apply_masking(x, frames)
        return Front(x, frames, length, units, feats, normed)

    def from_front(
        self,
        front: Front,
        draw: Draw | None = None,
        measure: bool = False,
        num_layers: int | None = None,
        expand: bool = True,
    ) -> EncoderOutput:
        """The rest of :meth:`run` at ``draw`` (None: :meth:`draw` without a step): squeeze, blocks, expander on a
        :meth:`front`'s output (``num_layers``, ``expand``: see :meth:`context`)."""
        draw = self._checked_draw(draw)
        squeezed = self.squeeze_features(front.hidden, front.lengths, draw, input_lengths=front.input_lengths, units=front.units)
        return self.context(squeezed, draw, num_layers=num_layers, expand=expand, measure=measure)

    def features(
        self, audio_signal: torch.Tensor, length: torch.Tensor, plan: FrontendPlan | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Front-end features ``(B, T, C_front)`` at 20 ms and their lengths (before the projection), with the
        front end's plan ``plan`` (pruning's channel scales; None: unmasked)."""
        return self.frontend.from_port(audio_signal, length, plan)

    def apply_masking(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Fine-tuning masking of projected features ``(B, T, D)``: time spans -> ``mask_emb``, channel spans -> 0."""
        from nemo_sew.ssl.masking import channel_mask, span_mask

        m = self.masking
        if m is None:
            return x
        if m.time_prob > 0:
            spans = span_mask(lengths, x.shape[1], m.time_prob, m.time_length, m.min_masks)
            x = torch.where(spans[..., None], self.mask_emb.to(x.dtype), x)
        if m.channel_prob > 0:
            channels = channel_mask(x.shape[0], x.shape[2], m.channel_prob, m.channel_length, device=x.device)
            x = x.masked_fill(channels[:, None, :], 0.0)
        return x

    def squeeze_features(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        draw: Draw,
        input_lengths: torch.Tensor | None = None,
        units: dict[str, torch.Tensor] | None = None,
    ) -> Squeezed:
        """The compressor on projected 20 ms features ``(B, T, D)`` at the draw's factor (``input_lengths``: the
        input port's lengths, which the gates' MAC budget and stats need; ``units``: the forward's pruning-mask
        values from :meth:`front`, which the blocks' plans carry)."""
        profile, lam = draw.profile, draw.cif_lambda
        aux: dict[str, torch.Tensor] = {}
        factor: float | torch.Tensor = self.squeeze if profile.squeeze is None else float(profile.squeeze)
        if self.learned_rate is not None and profile.squeeze is None:
            factor = self.learned_squeeze if self.training else float(self.learned_squeeze.detach())
            if self.training:
                aux["rate_penalty"] = self._rate_penalty(factor)
        if not isinstance(factor, torch.Tensor) and factor == int(factor):
            factor = int(factor)
        with self._weights_at(profile.weight_bits):
            h, h_len, frame_map = self.compressor(x, lengths, factor, lam=lam, keep_tail=not self.training)  # (B, T', D)
        return Squeezed(h, h_len, frame_map, factor, lam, lengths, x.shape[1], aux, input_lengths, units)

    def context(
        self, squeezed: Squeezed, draw: Draw, num_layers: int | None = None, expand: bool = True, measure: bool = False
    ) -> EncoderOutput:
        """The blocks (with their :class:`LayerPlan`) and the expander on a :class:`Squeezed` sequence.

        Args:
            num_layers: run only the first ``num_layers`` blocks (HuBERT's targets from an inner layer).
            expand: False returns the squeezed (and pooled) sequence without the expander.
            measure: report a gated encoder's realised MACs (see :meth:`run`).
        """
        if self.quant_config is None:  # no quantized weight to read the width (and no context manager to compile)
            return self._context(squeezed, draw, num_layers, expand, measure)
        with weights_at(draw.profile.weight_bits):
            return self._context(squeezed, draw, num_layers, expand, measure)

    def _context(self, squeezed: Squeezed, draw: Draw, num_layers: int | None, expand: bool, measure: bool) -> EncoderOutput:
        h, h_len, frame_map = squeezed.hidden, squeezed.lengths, squeezed.frame_map
        units = squeezed.units
        if self.pruning is not None and units is None:  # squeezed without front(): draw this forward's masks here
            units = self.pruning.sample()
        if not self.arch.layer_norm_first:
            h = self.norm(h)
        h = self.dropout(h)
        static = draw.profile.static_gates is not None
        tau = self.gate_tau(draw.step if self.training else None)
        global_gates = self._global_gates(h, h_len, draw.profile, tau) if self.gate_predictor is not None and not static else None
        plans = self.plan(draw.profile, global_gates, tau, units)
        layers = list(self.layers) if num_layers is None else list(self.layers)[:num_layers]
        ran = 0
        decisions: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        dropped = self.layerdrop_decisions(draw, len(layers)) if self.training and self.layerdrop > 0 else ()
        for i, (layer, plan) in enumerate(zip(layers, plans)):
            if i in dropped and plan.q_stride == 1:
                # the block's parameters still get a (zero) gradient, so plain DDP (no unused-parameter search)
                # reduces the same buckets on every rank (NeMo's conformer runs the dropped layer times 0)
                h = h + zero_touch(layer.parameters()).to(h.dtype)
                continue
            h, h_len, taken = layer(h, h_len, plan)
            decisions.update({(i, name): d for name, d in taken.items()})
            if static and self.gate_options is not None:  # frozen gates: constant decisions, for the stats
                for name in layer.branch_names:
                    g = torch.full((h.shape[0],), float(plan.runs(name)), device=h.device)
                    decisions[(i, name)] = (g, g)
            frame_map = frame_map.pooled(plan.q_stride, h_len)
            ran += 1
        if self.arch.layer_norm_first and num_layers is None:
            h = self.norm(h)
        factor = squeezed.factor
        stats = {
            "squeeze": float(factor.detach()) if isinstance(factor, torch.Tensor) else float(factor),
            "cif_lambda": float(squeezed.cif_lambda),
            "q_pool": tuple(p.q_stride for p in plans),
            "kv_pool": tuple(p.kv_stride for p in plans),
            "layers": ran,
        }
        aux = dict(squeezed.aux_losses)
        if self.gate_options is not None and decisions and not _tracing():
            self._gate_outputs(decisions, squeezed, draw, stats, aux, measure)
        if self.pruning is not None and self.training:
            aux["prune_budget"], prune_stats = self.pruning.penalty(draw.step)
            stats.update(prune_stats)
        if self.expander is None or not expand:
            h = h.masked_fill(~time_mask(h_len, h.shape[1])[..., None], 0.0)
            return EncoderOutput(h, h_len, aux, stats)
        y, lengths = self.expander(h, h_len, frame_map, squeezed.frames, squeezed.num_frames)  # (B, T, D) at 20 ms
        return EncoderOutput(y, lengths, aux, stats)

    # ----------------------------------------------------------------------------------------------
    # I3D gates

    def _global_gates(self, h: torch.Tensor, lengths: torch.Tensor, profile: CompressionProfile, tau: float) -> list[dict]:
        """The global predictor's decisions, per layer ``{branch: (gates (B,), probabilities (B,))}``."""
        g, p = gate_decisions(self.gate_predictor(h, lengths), self.training, self.depth_threshold(profile), tau)
        per_layer: list[dict] = [{} for _ in self.layers]
        for k, (i, name) in enumerate(self.gate_slots):
            per_layer[i][name] = (g[:, k], p[:, k])
        return per_layer

    def _gate_outputs(self, decisions: dict, squeezed: Squeezed, draw: Draw, stats: dict, aux: dict, measure: bool) -> None:
        """Depth and MACs (expected from the probabilities, realised from the decisions), and the budget penalty."""
        hard = {k: g.detach().float() for k, (g, _) in decisions.items()}
        probs = {k: p.float() for k, (_, p) in decisions.items()}
        some = next(iter(probs.values()))
        weight = self._depth_weight(tuple(probs), some.device)  # each layer counts 1
        stacked_p, stacked_g = torch.stack(list(probs.values()), -1), torch.stack(list(hard.values()), -1)  # (B, G)
        depth_expected, depth = stacked_p @ weight, stacked_g @ weight  # (B,) in layers
        # stats stay tensors (no host synchronisation in a step); EncoderOutput.plain_stats() gives Python values
        stats["depth"] = depth.detach()
        stats["depth_expected"] = depth_expected.detach().mean()
        stats["gates_open"] = stacked_g.mean()
        nan = torch.full_like(some, float("nan"))  # a layer that did not run (LayerDrop, num_layers)
        stats["gate_probs"] = torch.stack([probs.get(k, nan) for k in self.gate_slots], -1).detach()
        fraction = stacked_p.mean(-1)  # expected fraction of open branches
        g = self.gate_options
        mac_budget = self.training and g.weight > 0 and g.budget == "macs"
        if mac_budget and squeezed.input_lengths is None:
            raise ValueError("gates.budget=macs needs the input lengths to count MACs: pass input_lengths to "
                             "squeeze_features (run() and front() do); without them the budget would silently "
                             "become a fraction of modules")  # fmt: skip
        if squeezed.input_lengths is not None and (measure or mac_budget):
            profile = dataclasses.replace(draw.profile, squeeze=stats["squeeze"], depth_threshold=None)
            # one cost-model call for the three keep patterns: every branch (full depth), probabilities, decisions
            keeps = [self._keep_tensors(v, some.shape[0], some.device) for v in ({}, probs, hard)]
            keep = {name: torch.stack([k[name] for k in keeps]) for name in keeps[0]}  # (3, B, L[, n_ffn])
            soft = None
            if self.pruning is not None:
                # the widths the pruning masks leave (expected in training, the deterministic masks' at inference),
                # detached: the gates' budget is over the pruned model and does not move the masks
                soft, pruned_keep = self.pruning.soft_widths(expected=self.training)
                soft = {k: v.detach() for k, v in soft.items()}
                keep = {k: v * pruned_keep[k].detach().to(v.dtype) for k, v in keep.items()}
            cost = encoder_cost(self.arch, profile, squeezed.input_lengths, soft=soft, keep=keep)
            blocks = cost.attention_proj + cost.attention_scores + cost.ffn + cost.conv_module  # (3, B)
            full_blocks, expected_blocks, realised_total = blocks[0], blocks[1], cost.total[2]
            stats["macs"] = realised_total.detach()
            stats["macs_expected"] = (expected_blocks.sum() / full_blocks.sum().clamp_min(1.0)).detach()
            if self.gate_options.budget == "macs":
                fraction = expected_blocks / full_blocks.clamp_min(1.0)
        if self.training:
            stats["gate_tau"] = self.gate_tau(draw.step)
        if self.training and g.weight > 0:
            excess = fraction.float() - g.target  # (B,): each utterance's expected fraction over the target
            if not g.per_utterance:
                excess = excess.mean()
            penalty = excess.pow(2) if g.penalty == "square" else excess.clamp_min(0.0)
            aux["gate_budget"] = g.weight * penalty.mean()

    def _depth_weight(self, slots: tuple[tuple[int, str], ...], device: torch.device) -> torch.Tensor:
        """``(G,)``: each gate slot's share of its layer (1 / branches in the layer), cached per slot set and
        device (built once, not copied from the host every step)."""
        cache = self.__dict__.setdefault("_depth_weights", {})
        key = (slots, str(device))
        if key not in cache:
            cache[key] = torch.tensor([1.0 / len(self.layers[i].branch_names) for i, _ in slots], device=device)
        return cache[key]

    def _keep_tensors(self, values: dict, batch: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Per-branch keep values ``{(layer, branch): (B,)}`` -> the cost model's ``keep`` tensors (1 elsewhere)."""
        n = len(self.layers)
        keep = {
            "attn": torch.ones(batch, n, device=device, dtype=torch.float64),
            "conv": torch.ones(batch, n, device=device, dtype=torch.float64),
            "ffn": torch.ones(batch, n, ffn_columns(self.arch), device=device, dtype=torch.float64),
        }
        for (i, name), v in values.items():
            key, column = BRANCH_COST[name]
            if key == "ffn":
                keep[key][:, i, column] = v
            else:
                keep[key][:, i] = v
        return keep

    def _rate_penalty(self, squeeze: torch.Tensor) -> torch.Tensor:
        r = self.learned_rate
        return r.penalty * F.relu(r.target / squeeze - 1.0) ** 2

    def learned_frame_period_ms(self, frame_ms: float = 20.0) -> float | None:
        """The learned frame period (learned-rate mode): ``frame_ms * squeeze``."""
        if self.learned_rate is None:
            return None
        return frame_ms * float(self.learned_squeeze.detach())


def layerdrop_decisions(p: float, seed: int, step: int, num_layers: int) -> frozenset[int]:
    """Indices of the layers LayerDrop skips at ``step``: each layer independently with probability ``p``, from
    a stream keyed by ``(seed, step)`` alone (the same on every rank and micro-batch)."""
    if p <= 0:
        return frozenset()
    u = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(step), 0x4C44]))).random(num_layers)
    return frozenset(int(i) for i in np.flatnonzero(u < p))


class _GradMultiply(torch.autograd.Function):
    """Scale the gradient into the front end (fairseq ``feature_grad_mult``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def _sync_train_step(module: "SqueezeEncoder", incompatible_keys) -> None:
    """After a state dict is loaded: the host copy of the step counter follows the loaded buffer."""
    module._train_step = int(module.train_step)


def _plain_sampler(sampler: ProfileSampler) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(sampler):
        value = getattr(sampler, f.name)
        out[f.name] = _plain(dict(value)) if isinstance(value, Mapping) else value
    return out


def _upgrade_legacy_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Rename the layer parameters of checkpoints written before blocks were residual branches; a checkpoint
    written before the encoder counted its own training steps starts the count at 0."""
    if any(k.startswith(prefix) for k in state_dict):
        state_dict.setdefault(prefix + "train_step", torch.zeros((), dtype=torch.long))
    layer_prefix = prefix + "layers."
    keys = [k for k in state_dict if k.startswith(layer_prefix)]
    legacy_markers = (".attention.", ".attn_norm.", ".ffn_norm.", ".ffn1_norm.", ".ffn2_norm.", ".conv.pre_norm.")
    if not any(marker in k[len(layer_prefix) :] for k in keys for marker in legacy_markers):
        return
    values = {key: state_dict.pop(key) for key in keys}  # all at once: an old name may be another's new name
    for key, value in values.items():
        index, _, local = key[len(layer_prefix) :].partition(".")  # "3", "attention.q_proj.weight"
        state_dict[f"{layer_prefix}{index}.{legacy_layer_keys(local)}"] = value


def upgrade_legacy_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict (keys relative to the encoder) in today's parameter names (a copy)."""
    state = dict(state)
    _upgrade_legacy_state_dict(state, "", {}, True, [], [], [])
    return state


def encoder_config(preset: str, **overrides: Any) -> dict[str, Any]:
    """The ``encoder:`` config (without ``_target_``) of preset ``preset`` with ``overrides``: arch fields
    (``d_model``, ``blocks``, ``compressor``, ``expander``, ...) go under ``arch``; the encoder's other
    arguments (``dropout``, ``squeeze_sampler``, ...) stay at the top level."""
    arch_fields = {f.name for f in dataclasses.fields(EncoderArch)} | {"num_layers", "blocks"}
    options = {"dropout", "squeeze_sampler", "learned_rate", "cif_lambda", "mask_emb", "masking", "gates", "pruning", "quant"}
    unknown = sorted(set(overrides) - arch_fields - options)
    if unknown:
        raise ValueError(f"unknown encoder arguments {unknown}; arch fields: {sorted(arch_fields)}, options: {sorted(options)}")
    arch = {k: v for k, v in overrides.items() if k in arch_fields}
    return {"preset": preset, "arch": arch, **{k: v for k, v in overrides.items() if k in options}}


def build_encoder(preset: str, **overrides: Any) -> SqueezeEncoder:
    """Build preset ``preset`` with overrides, e.g. ``build_encoder("sew_tiny", compressor={"squeeze": 4})``
    or ``build_encoder("tiny_mel", squeeze_sampler={"squeeze": {"values": [1, 2]}})``."""
    return SqueezeEncoder(**encoder_config(preset, **overrides))
