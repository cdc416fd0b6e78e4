"""The encoder's torch core: the modules built from an :class:`~nemo_sew.arch.EncoderArch`, the profile, and the
forward over one plan per layer. Pure PyTorch (no NeMo): :class:`~nemo_sew.SqueezeEncoder` is this core with
NeMo's ports on top (:mod:`nemo_sew.encoder.neural_module`).

Data flow: front end (20 ms) -> feature projection -> compressor (squeeze s) -> blocks -> expander back to 20 ms,
in one layout ``(B, T, C)`` + lengths. Per forward, the draw (profile, gate decisions, pruning-mask sample, weight
bits) becomes one :class:`~nemo_sew.nn.blocks.LayerPlan` per layer, which the blocks apply; after the blocks, every
policy of the encoder (:mod:`nemo_sew.encoder.policies`: learned rate, gate budget, pruning budget) adds its
auxiliary losses and stats from the record of the forward (:class:`~nemo_sew.encoder.policies.ForwardRun`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from nemo_sew.arch import EncoderArch
from nemo_sew.cost import validate_profile
from nemo_sew.encoder.config import EncoderOptions, config_dict, plain
from nemo_sew.encoder.legacy import upgrade_legacy_state_dict
from nemo_sew.encoder.policies import ForwardRun, GateBudget, Policy, RatePenalty
from nemo_sew.encoder.records import Draw, EncoderOutput, Front, Squeezed
from nemo_sew.errors import UserError
from nemo_sew.nn.blocks import BlockOptions, LayerPlan, build_block, zero_touch
from nemo_sew.nn.compress import PhaseExpander, SEWUpsampler, SqueezeCompressor
from nemo_sew.nn.frontend import FeatureProjection, build_frontend, frontend_layout, time_mask
from nemo_sew.nn.gates import GlobalGatePredictor, gate_decisions
from nemo_sew.nn.pooling import pooled_lengths
from nemo_sew.nn.units import FrontendPlan
from nemo_sew.options import Gates, LearnedRate
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile
from nemo_sew.quant.weights import apply_config as apply_quant_config, set_weight_bits, weights_at


class EncoderCore(nn.Module):
    """A SEW-style squeezed speech encoder built from :class:`~nemo_sew.encoder.config.EncoderOptions`
    (see :class:`~nemo_sew.SqueezeEncoder` for the options and the NeMo interface).

    ``forward(audio_signal (B, C, T), length (B,), draw=None) -> EncoderOutput`` (library layout ``(B, T, D)``);
    the stages :meth:`front`, :meth:`squeeze_features`, :meth:`context` (and :meth:`from_front`) serve training
    steps that share a front end across several profiles and the self-supervised objectives.
    """

    def __init__(self, options: EncoderOptions) -> None:
        super().__init__()
        self.arch = options.arch
        self.sampler = options.sampler
        self.rate_policy = RatePenalty(options.learned_rate) if options.learned_rate is not None else None
        self.gate_budget: GateBudget | None = None
        self._gates = options.gates
        self.dropout_options = options.dropout
        self.masking = options.masking
        self.cif_lambda = options.cif_lambda
        self._build(options.mask_emb)
        self.gate_options = options.gates
        self.pruning = None
        if options.pruning is not None:  # masks of the modules just built, applied through the plan (nemo_sew.prune.masks)
            from nemo_sew.prune.masks import PruningMasks

            self.pruning = PruningMasks(self, options.pruning)
        # the step of a training forward made without a draw (stock NeMo models call forward() alone): counted
        # here and saved with the weights, so annealing, warm-ups and LayerDrop continue where a resumed run stopped
        self.register_buffer("train_step", torch.zeros((), dtype=torch.long))
        self._train_step = 0  # its host copy (reading the buffer would synchronise with the device)
        self.quant_config = apply_quant_config(self, options.quant)  # parametrizations only; a state dict fills them
        # squeeze None = the trained (or learned) factor
        self._profile = CompressionProfile(weight_bits=self.quant_config.active if self.quant_config else 16)
        self._register_load_state_dict_pre_hook(upgrade_legacy_state_dict)
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
        if self.rate_policy is not None:  # squeeze = lo + (hi - lo) * sigmoid(theta)
            self.rate_logit = nn.Parameter(torch.tensor(self.rate_policy.init_logit()))
        self.norm = nn.LayerNorm(a.d_model, eps=a.layer_norm_eps)  # post-LN: before the blocks; pre-LN: after
        self.dropout = nn.Dropout(d.hidden)
        g = self._gates
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
    # options and policies

    @property
    def learned_rate(self) -> LearnedRate | None:
        """The learned rate's options (``init`` and ``target`` filled in), else None."""
        return self.rate_policy.options if self.rate_policy is not None else None

    @property
    def gate_options(self) -> Gates | None:
        """The I3D gates' options, else None."""
        return self._gates

    @gate_options.setter
    def gate_options(self, value: Gates | Mapping[str, Any] | None) -> None:
        """New budget options for the gates this encoder was built with (its predictors stay as built)."""
        self._gates = Gates.of(value)
        self.gate_budget = GateBudget(self._gates, self.arch, self.gate_slots) if self._gates is not None else None

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The mechanisms that add auxiliary losses and stats to a forward, in the order they report them."""
        return tuple(p for p in (self.rate_policy, self.gate_budget, self.pruning) if p is not None)

    def config_dict(self) -> dict[str, Any]:
        """This encoder's constructor arguments in today's layout (the full arch): what a ``.nemo`` stores."""
        return config_dict(self)

    @property
    def d_model(self) -> int:
        return self.arch.d_model

    @property
    def frontend_dim(self) -> int:
        return self.arch.frontend.out_dim

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
        return self.rate_policy.squeeze(self.rate_logit) if self.rate_policy is not None else None

    @property
    def squeeze(self) -> float:
        """The active squeeze factor (int-valued for SEW's integer path)."""
        if self._profile.squeeze is not None:
            s = float(self._profile.squeeze)
        elif self.rate_policy is not None:
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
            wanted = arch if isinstance(arch, EncoderArch) else build_arch(self.arch, **dict(plain(arch)))
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
        if not self.sampler.draws_weight_bits():  # the active width (QAT trains at it), not the profile default fp
            drawn = dataclasses.replace(drawn, weight_bits=self._profile.weight_bits)
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

    # ----------------------------------------------------------------------------------------------
    # stages (library layout)

    def forward(
        self, audio_signal: torch.Tensor, length: torch.Tensor, draw: Draw | None = None, measure: bool = False
    ) -> EncoderOutput:
        return self.run(audio_signal, length, draw, measure)

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
        factor: float | torch.Tensor = self.squeeze if profile.squeeze is None else float(profile.squeeze)
        if self.rate_policy is not None and profile.squeeze is None:
            factor = self.learned_squeeze if self.training else float(self.learned_squeeze.detach())
        if not isinstance(factor, torch.Tensor) and factor == int(factor):
            factor = int(factor)
        with self._weights_at(profile.weight_bits):
            h, h_len, frame_map = self.compressor(x, lengths, factor, lam=lam, keep_tail=not self.training)  # (B, T', D)
        return Squeezed(h, h_len, frame_map, factor, lam, lengths, x.shape[1], input_lengths, units)

    def context(
        self, squeezed: Squeezed, draw: Draw, num_layers: int | None = None, expand: bool = True, measure: bool = False
    ) -> EncoderOutput:
        """The blocks (with their :class:`LayerPlan`) and the expander on a :class:`Squeezed` sequence, then the
        policies' auxiliary losses and stats.

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
        run = ForwardRun(draw, squeezed, plans, decisions, dict(stats), self.training, tau, measure, self.pruning)
        aux: dict[str, torch.Tensor] = {}
        for policy in self.policies:
            losses, values = policy.outputs(run)
            aux.update(losses)
            stats.update(values)
        if self.expander is None or not expand:
            h = h.masked_fill(~time_mask(h_len, h.shape[1])[..., None], 0.0)
            return EncoderOutput(h, h_len, aux, stats)
        y, lengths = self.expander(h, h_len, frame_map, squeezed.frames, squeezed.num_frames)  # (B, T, D) at 20 ms
        return EncoderOutput(y, lengths, aux, stats)

    def _global_gates(self, h: torch.Tensor, lengths: torch.Tensor, profile: CompressionProfile, tau: float) -> list[dict]:
        """The global predictor's decisions, per layer ``{branch: (gates (B,), probabilities (B,))}``."""
        g, p = gate_decisions(self.gate_predictor(h, lengths), self.training, self.depth_threshold(profile), tau)
        per_layer: list[dict] = [{} for _ in self.layers]
        for k, (i, name) in enumerate(self.gate_slots):
            per_layer[i][name] = (g[:, k], p[:, k])
        return per_layer

    def _rate_penalty(self, squeeze: torch.Tensor) -> torch.Tensor:
        return self.rate_policy.penalty(squeeze)

    def learned_frame_period_ms(self, frame_ms: float = 20.0) -> float | None:
        """The learned frame period (learned-rate mode): ``frame_ms * squeeze``."""
        if self.rate_policy is None:
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


def _sync_train_step(module: EncoderCore, incompatible_keys) -> None:
    """After a state dict is loaded: the host copy of the step counter follows the loaded buffer."""
    module._train_step = int(module.train_step)
