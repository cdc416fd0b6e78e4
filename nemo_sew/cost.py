"""Analytic encoder cost: multiply-accumulates (MACs) and parameters of an :class:`~nemo_sew.arch.EncoderArch`.

The numbers come from the architecture, the compression profile and the input lengths alone (never from a
built module), so they serve pruning searches, reports and budgets without building the encoder.

MAC conventions (those of :func:`nemo_sew.evaluate.count_macs`, i.e. ``torch.utils.flop_counter`` with
CPU SDPA counted, MACs = FLOPs / 2):

* counted: every matmul (linear layers, the front end's 1x1 convs, CIF's segment means ``(K, T) x (T, C)``),
  every convolution (front-end convs, the positional conv, the conformer conv module, the CIF weight
  predictor) as ``out_frames * out_channels * in_channels / groups * kernel``, where ``out_frames`` is what
  the conv computes on the utterance, padding frames included (the strided positional conv runs on the
  whole 20 ms sequence), and attention's two ``T_q x T_k`` products (``QK^T`` and ``AV``);
* not counted: biases, element-wise ops and activations, norms (weight norm included), softmax, average
  and masked average pooling, gathers, and the mel preprocessor;
* lengths: each utterance is charged from its own real length, i.e. what ``count_macs`` gives for that
  utterance alone at batch 1. (``count_macs`` on a padded batch counts the padded shapes; reports should
  use the MACs of the real inputs.)

The blocks' MACs and parameters are counted by each branch kind's declaration
(:data:`nemo_sew.nn.blocks.BRANCH_KINDS`, :class:`~nemo_sew.nn.units.BranchUnits`), from its widths and keep
probabilities; this module supplies the time axis (:class:`LayerTimes`) and the rest of the encoder.

Everything is computed with torch ops in float64, so the cost is differentiable with respect to *soft
widths* (expected widths under pruning masks) and *keep probabilities* (I3D gates), and exact for integer
widths (float64 holds integers up to 2**53).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from nemo_sew.arch import BLOCK_KINDS, BlockSpec, BlockTraits, EncoderArch, build_arch
from nemo_sew.errors import UserError
from nemo_sew.nn.blocks import BRANCH_KINDS, branch_kind
from nemo_sew.nn.compress import cif_lengths  # the compressor's own count: one formula
from nemo_sew.nn.frontend import frontend_layout
from nemo_sew.nn.units import BranchUnits
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile

#: the cost components, in data-flow order (``total`` is their sum)
COMPONENTS: tuple[str, ...] = (
    "frontend", "projection", "compressor", "attention_proj", "attention_scores", "ffn", "conv_module", "expander",
)  # fmt: skip
#: the soft widths :func:`encoder_cost` takes: one per branch kind (its width field), and the front end's channels
SOFT_KEYS: tuple[str, ...] = tuple(k.width for k in BRANCH_KINDS) + ("frontend_channels",)
#: the keep probabilities it takes: one per branch kind
KEEP_KEYS: tuple[str, ...] = tuple(k.keep for k in BRANCH_KINDS)
ALPHA_KERNEL = 5  # conv kernel of the once-for-all CIF weight predictor

_F64 = torch.float64
ArchLike = EncoderArch | str | Mapping[str, Any]


@dataclass
class Cost:
    """MACs of one encoder forward per utterance, by component (float64 tensors of the batch shape).

    Attributes:
        frontend, projection, compressor, attention_proj, attention_scores, ffn, conv_module, expander: see
            :data:`COMPONENTS`; ``attention_proj`` is the q/k/v/out projections, ``attention_scores`` the
            ``T_q x T_k`` part (``QK^T`` and ``AV``), ``conv_module`` the conformer conv modules, ``compressor``
            the positional conv (plus CIF's segment means and weight predictor at real rates).
        total: the sum of the components.
        per_layer: ``(..., L)`` MACs of each block (attention, FFNs, conv module).
        frames: 20 ms frames after the front end (long).
        squeezed_frames: frames after the compressor, before the blocks (long).
        output_frames: frames the encoder outputs (20 ms with an expander, else the squeezed and pooled rate).
    """

    frontend: torch.Tensor
    projection: torch.Tensor
    compressor: torch.Tensor
    attention_proj: torch.Tensor
    attention_scores: torch.Tensor
    ffn: torch.Tensor
    conv_module: torch.Tensor
    expander: torch.Tensor
    total: torch.Tensor
    per_layer: torch.Tensor
    frames: torch.Tensor
    squeezed_frames: torch.Tensor
    output_frames: torch.Tensor

    def components(self) -> dict[str, torch.Tensor]:
        """The breakdown and ``total`` as a dict (for reports: ``{k: float(v) for k, v in ...}`` at batch 1)."""
        return {name: getattr(self, name) for name in COMPONENTS + ("total",)}


# --------------------------------------------------------------------------------------------------
# inputs


def _as_arch(arch: ArchLike) -> EncoderArch:
    if isinstance(arch, EncoderArch):
        return arch
    return build_arch(arch)  # a preset name or a full arch dict


def validate_profile(arch: EncoderArch, p: CompressionProfile) -> int | float:
    """The squeeze ``p`` runs on ``arch`` (int for integer rates), or the error saying why ``arch`` cannot run
    ``p``'s squeeze and pooling. The one check of those fields: the encoder's ``set_profile`` and the cost model
    both call it."""
    s: int | float = arch.compressor.squeeze if p.squeeze is None else float(p.squeeze)
    if s < 1:
        raise UserError(f"expected a squeeze factor >= 1, got {s}")
    s = int(s) if float(s) == int(s) else float(s)
    trained = arch.compressor.squeeze
    if arch.expander == "sew" and s != trained:
        kind = "an integer" if float(s) == int(s) else "a fractional rate"
        raise UserError(
            f"this encoder cannot run at squeeze {p.squeeze} ({kind}): it was built with a fixed squeeze of {trained}; "
            f"supported: only {trained} (SEW's upsampler expands by exactly that factor). Train with a "
            f"squeeze_sampler (factor-agnostic expander, expander='phase') to run other factors"
        )
    n = arch.num_layers
    for name in ("q_pool", "kv_pool"):
        strides = getattr(p, name)
        if strides is None:
            continue
        if len(strides) != n or min(strides, default=1) < 1:
            raise UserError(f"expected {name} to list {n} strides >= 1 (one per layer), got {list(strides)}")
        if name == "q_pool" and arch.expander == "sew" and max(strides, default=1) > 1:
            raise UserError("query pooling changes the output rate; SEW's fixed upsampler cannot expand it")
    return s


def resolve(arch: ArchLike, profile: ProfileLike = None) -> tuple[EncoderArch, CompressionProfile, int | float]:
    """The arch a profile runs (``profile.arch``, if any, as :func:`~nemo_sew.arch.build_arch` overrides),
    the profile, and the active squeeze (int for integer rates). Raises what the encoder's ``set_profile``
    raises for profiles the arch cannot run (another squeeze or query pooling with SEW's expander).
    """
    arch = _as_arch(arch)
    p = as_profile(profile)
    if p.arch is not None:
        arch = p.arch if isinstance(p.arch, EncoderArch) else build_arch(arch, **dict(p.arch))
    s = validate_profile(arch, p)
    return arch, p, s


def _lengths(input_lengths: int | torch.Tensor | None) -> torch.Tensor:
    if input_lengths is None:
        raise TypeError("input_lengths is required: samples (wfe_c, wfe_o) or 10 ms frames (mel_stack)")
    if isinstance(input_lengths, torch.Tensor):
        if input_lengths.is_floating_point():
            raise TypeError(f"expected integer input lengths, got dtype {input_lengths.dtype}")
        return input_lengths.detach().long()
    return torch.tensor(int(input_lengths), dtype=torch.long)


def _device(*sources: Mapping[str, Any] | torch.Tensor | None) -> torch.device:
    """The device of the first tensor among the soft widths, keep probabilities and lengths (else CPU)."""
    for source in sources:
        values = source.values() if isinstance(source, Mapping) else [source]
        for value in values:
            if isinstance(value, torch.Tensor):
                return value.device
    return torch.device("cpu")


@functools.lru_cache(maxsize=512)
def _constant(arch: EncoderArch, name: str | Callable[[BlockSpec, BlockTraits], Any], dev: torch.device) -> torch.Tensor:
    """A constant float64 tensor of ``arch`` on ``dev``, built once per (arch, device): the cost model runs in
    training steps (the gates' MAC budget, pruning), where building ~10 tensors from Python lists per call would
    mean ~10 host-to-device copies per step on a GPU. Read-only. Always an ordinary tensor: one first built in
    inference mode (Lightning's validation and sanity check run there) is cached and must still enter a training
    step's autograd afterwards. ``name``: see :func:`_arch_constant`."""
    with torch.inference_mode(False):
        return _arch_constant(arch, name, dev)


def _arch_constant(arch: EncoderArch, name: str | Callable[[BlockSpec, BlockTraits], Any], dev: torch.device) -> torch.Tensor:
    """The tensor :func:`_constant` caches.

    ``name``: ``frontend_channels`` ``(n_conv,)``; ``spec:<field>`` (a :class:`~nemo_sew.arch.BlockSpec` field per
    layer: ``(L,)``, or ``(L, columns)`` for a tuple field such as ``ffn_dims``, 0 where a block has fewer entries);
    ``has:<field>`` (the same, 1 where > 0); ``columns:<field>`` (1 where a block has that entry of a tuple field);
    ``traits:<field>`` (a :class:`~nemo_sew.arch.BlockTraits` field of each layer's block kind, ``(L,)``); or a
    function ``fn(spec, traits)`` of one block (a number, or a tuple padded with 0 like a tuple field)."""
    if name == "frontend_channels":
        return torch.tensor([c for c, _, _ in arch.frontend.conv_layers], dtype=_F64, device=dev)
    if callable(name):
        values = [name(b, BLOCK_KINDS[b.kind]) for b in arch.blocks]
    else:
        what, _, field = name.partition(":")
        if what == "traits":
            values = [float(getattr(BLOCK_KINDS[b.kind], field)) for b in arch.blocks]
        elif what in ("spec", "has", "columns"):
            raw = [getattr(b, field) for b in arch.blocks]
            pick = {"spec": float, "has": lambda v: float(v > 0), "columns": lambda v: 1.0}[what]
            values = [tuple(pick(v) for v in r) if isinstance(r, tuple) else pick(r) for r in raw]
        else:
            raise KeyError(f"unknown arch constant {name!r}")
    if not values and isinstance(name, str) and _tuple_field(name):  # no blocks: a tuple field still has a column
        return torch.zeros(0, 1, dtype=_F64, device=dev)
    if any(isinstance(v, tuple) for v in values):
        n = max((len(v) for v in values), default=1)
        rows = [[float(v[j]) if j < len(v) else 0.0 for j in range(n)] for v in values]
        return torch.tensor(rows, dtype=_F64, device=dev).reshape(arch.num_layers, n)
    return torch.tensor([float(v) for v in values], dtype=_F64, device=dev)


def _tuple_field(name: str) -> bool:
    """Whether ``spec:<field>`` names a tuple field of BlockSpec (an arch without blocks still gets its columns)."""
    return isinstance(getattr(BlockSpec(), name.partition(":")[2], None), tuple)


def ffn_columns(arch: EncoderArch) -> int:
    """Columns of ``ffn_dims`` tensors: the most FFNs a block of ``arch`` has (2 with any conformer block)."""
    return max((BLOCK_KINDS[b.kind].ffns for b in arch.blocks), default=1)


def _width_shape(arch: EncoderArch, kind: BranchUnits) -> tuple[int, ...]:
    """The shape of kind ``kind``'s widths and keep probabilities: ``(L,)``, or ``(L, columns)``."""
    n = arch.num_layers
    if not kind.columns:
        return (n,)
    return (n, max((len(getattr(b, kind.width)) for b in arch.blocks), default=1))


def branch_keep(
    arch: EncoderArch, values: Mapping[tuple[int, str], torch.Tensor], batch: int, device: torch.device
) -> dict[str, torch.Tensor]:
    """Per-branch keep values ``{(layer, branch name): (B,)}`` (I3D gate probabilities or decisions) -> the ``keep``
    tensors of :func:`encoder_cost`, ``(B, L[, columns])`` each, 1 for every branch not named."""
    keep = {k.keep: torch.ones((batch,) + _width_shape(arch, k), device=device, dtype=_F64) for k in BRANCH_KINDS}
    for (i, name), v in values.items():
        kind, column = branch_kind(name)
        if kind.columns:
            keep[kind.keep][:, i, column] = v
        else:
            keep[kind.keep][:, i] = v
    return keep


def _checked(value: Any, want: tuple[int, ...], what: str, dev: torch.device) -> torch.Tensor:
    value = torch.as_tensor(value).to(dev, _F64)
    if value.dim() < len(want) or tuple(value.shape[value.dim() - len(want) :]) != want:
        raise ValueError(f"expected {what} of shape (..., {', '.join(map(str, want))}), got {tuple(value.shape)}")
    return value


def _widths(arch: EncoderArch, soft: Mapping[str, Any] | None, dev: torch.device) -> dict[str, torch.Tensor]:
    """Float64 widths, one per branch kind's width field (``heads (L,)``, ``ffn_dims (L, n_ffn)``,
    ``conv_channels (L,)``) and ``frontend_channels (n_conv,)``: the arch's integers, overridden by ``soft``
    (which may carry leading dims). Entries a block does not have (a transformer's second FFN, a transformer's
    conv module) are zeroed."""
    unknown = sorted(set(soft or {}) - set(SOFT_KEYS))
    if unknown:
        raise ValueError(f"unknown soft widths {unknown}; expected a subset of {list(SOFT_KEYS)}")
    out = {k.width: _constant(arch, f"spec:{k.width}", dev) for k in BRANCH_KINDS}
    out["frontend_channels"] = _constant(arch, "frontend_channels", dev)
    for name, value in (soft or {}).items():
        out[name] = _checked(value, tuple(out[name].shape), f"soft {name}", dev)
    for k in BRANCH_KINDS:
        if k.columns:
            out[k.width] = out[k.width] * _constant(arch, f"columns:{k.width}", dev)
        if k.present:
            out[k.width] = out[k.width] * _constant(arch, f"traits:{k.present}", dev)
    return out


def _keep(arch: EncoderArch, keep: Mapping[str, Any] | None, dev: torch.device) -> dict[str, torch.Tensor | float]:
    unknown = sorted(set(keep or {}) - set(KEEP_KEYS))
    if unknown:
        raise ValueError(f"unknown keep probabilities {unknown}; expected a subset of {list(KEEP_KEYS)}")
    shapes = {k.keep: _width_shape(arch, k) for k in BRANCH_KINDS}
    out: dict[str, torch.Tensor | float] = {name: 1.0 for name in KEEP_KEYS}
    for name, value in (keep or {}).items():
        out[name] = _checked(value, shapes[name], f"keep {name}", dev)
    return out


@dataclass
class LayerTimes:
    """What a branch kind's cost functions (:attr:`nemo_sew.nn.units.BranchUnits.macs`, ``params``) read: the model
    width, each layer's frame counts per utterance (``(..., L)``; None when counting parameters) and the arch's
    per-layer constants (cached per arch and device)."""

    arch: EncoderArch
    device: torch.device
    c: float
    t_in: torch.Tensor | None = None  # frames into the layer (before its query pooling)
    t_q: torch.Tensor | None = None  # frames out of the layer (queries after pooling)
    t_k: torch.Tensor | None = None  # keys / values in the layer's attention

    def spec(self, field: str) -> torch.Tensor:
        """BlockSpec ``field`` of every layer (``(L,)`` or ``(L, columns)``)."""
        return _constant(self.arch, f"spec:{field}", self.device)

    def exists(self, field: str) -> torch.Tensor:
        """1 where the arch's integer ``field`` is > 0 (the branch exists), else 0."""
        return _constant(self.arch, f"has:{field}", self.device)

    def constant(self, fn: Callable[[BlockSpec, BlockTraits], Any]) -> torch.Tensor:
        """``fn(spec, traits)`` of every layer (see :func:`_constant`)."""
        return _constant(self.arch, fn, self.device)


# --------------------------------------------------------------------------------------------------
# time axis (the rules of the modules, on per-utterance lengths)


def _conv_frames(t: torch.Tensor, kernel: int, stride: int, padding: int = 0) -> torch.Tensor:
    """Output frames of a conv over ``t`` frames: ``floor((t + 2p - k) / s) + 1``, at least 0."""
    return torch.clamp(torch.div(t + 2 * padding - kernel, stride, rounding_mode="floor") + 1, min=0)


def _ceil_div(t: torch.Tensor, stride: int) -> torch.Tensor:
    return torch.div(t + stride - 1, stride, rounding_mode="floor")


def cif_frames(frames: torch.Tensor, squeeze: float, keep_tail: bool = True) -> torch.Tensor:
    """CIF output frames: ``floor(T / s)``, plus the tail frame when ``keep_tail`` and its mass is >= 0.5.

    At least 1 (the compressor clamps). ``keep_tail=True`` is the inference rule (what is counted here).
    """
    return cif_lengths(frames, float(squeeze), keep_tail).clamp_min(1)


def frame_lengths(arch: ArchLike, input_lengths: int | torch.Tensor) -> torch.Tensor:
    """20 ms front-end frames for input lengths (samples, or 10 ms frames for ``mel_stack``)."""
    arch = _as_arch(arch)
    t = _lengths(input_lengths)
    if not arch.frontend.conv_layers:  # mel stacking
        return torch.div(t, arch.frontend.mel_stack, rounding_mode="floor")
    for _, k, s in arch.frontend.conv_layers:
        t = _conv_frames(t, k, s)
    return t


# --------------------------------------------------------------------------------------------------
# MACs


def encoder_cost(
    arch: ArchLike,
    profile: ProfileLike = None,
    input_lengths: int | torch.Tensor | None = None,
    *,
    soft: Mapping[str, Any] | None = None,
    keep: Mapping[str, Any] | None = None,
) -> Cost:
    """MACs of one inference forward of the encoder ``arch`` at ``profile``, per utterance.

    Args:
        arch: an :class:`~nemo_sew.arch.EncoderArch` (or a preset name, or an arch dict).
        profile: a :class:`~nemo_sew.profile.CompressionProfile` (or a bare squeeze, or a dict); acts on
            ``squeeze`` (integer: SEW's squeeze; real: CIF, tail kept as at inference), ``q_pool``,
            ``kv_pool`` and ``arch`` (:func:`~nemo_sew.arch.build_arch` overrides). ``depth_threshold``
            is data-dependent: pass the gates' probabilities as ``keep`` instead. ``weight_bits`` does not
            change MACs.
        input_lengths: an int (scalar results) or a LongTensor ``(B,)`` (results of shape ``(B,)``), in the
            front end's input units: samples for ``wfe_c`` / ``wfe_o``, 10 ms frames for ``mel_stack``.
        soft: float tensors overriding the integer widths (e.g. expected widths under pruning masks):
            ``heads (L,)``, ``ffn_dims (L, n_ffn)`` (``n_ffn`` = 2 when any block is a conformer, else 1;
            columns a block does not have are ignored), ``conv_channels (L,)``, ``frontend_channels (n_conv,)``
            (the last one also sets the projection's input width).
        keep: probabilities that a branch runs (I3D gates), each with optional leading dims (e.g. the
            batch): ``attn (..., L)``, ``ffn (..., L, n_ffn)``, ``conv (..., L)``; a branch's MACs are
            scaled by its probability.

    Returns:
        A :class:`Cost`; every tensor broadcasts the lengths' shape with the leading dims of ``keep`` / ``soft``.
    """
    arch, p, s = resolve(arch, profile)
    lengths = _lengths(input_lengths)
    dev = _device(soft, keep, lengths)
    lengths = lengths.to(dev)
    w = _widths(arch, soft, dev)
    kp = _keep(arch, keep, dev)
    c = float(arch.d_model)
    fe = arch.frontend

    # front end -> 20 ms frames
    if not fe.conv_layers:  # mel stacking: no MACs
        frames = torch.div(lengths, fe.mel_stack, rounding_mode="floor")
        frontend = torch.zeros((), dtype=_F64, device=dev)
        front_dim: torch.Tensor | float = float(fe.out_dim)
    else:
        t, c_in = lengths, torch.ones((), dtype=_F64, device=dev)
        frontend = torch.zeros((), dtype=_F64, device=dev)
        for i, (_, k, stride) in enumerate(fe.conv_layers):
            t = _conv_frames(t, k, stride)
            c_out = w["frontend_channels"][..., i]
            frontend = frontend + t.to(_F64) * c_out * c_in * k
            c_in = c_out
        frames, front_dim = t, c_in
    t20 = frames.to(_F64)

    # feature projection
    project = arch.feature_projection if arch.feature_projection is not None else fe.out_dim != arch.d_model
    projection = t20 * front_dim * c if project else torch.zeros((), dtype=_F64, device=dev)

    # compressor
    comp = arch.compressor
    k, pad = comp.pos_conv_kernel, comp.pos_conv_kernel // 2
    conv_per_frame = c * (arch.d_model // comp.pos_conv_groups) * k
    if isinstance(s, int) and not comp.cif_alpha:
        squeezed = torch.div(frames, s, rounding_mode="floor")
        compressor = _conv_frames(frames, k, s, pad).to(_F64) * conv_per_frame  # the strided conv sees all frames
    else:  # CIF: segment means (K, T) x (T, C), the stride-1 positional conv, the weight predictor
        squeezed = cif_frames(frames, float(s), keep_tail=True)
        compressor = squeezed.to(_F64) * t20 * c + _conv_frames(frames, k, 1, pad).to(_F64) * conv_per_frame
        if comp.cif_alpha:
            compressor = compressor + t20 * (c * c * ALPHA_KERNEL + c)

    # blocks: per-layer lengths (queries pooled for good, keys/values inside the layer only)
    n = arch.num_layers
    q_pool = p.q_pool or (1,) * n
    kv_pool = p.kv_pool or (1,) * n
    t_in, t_q, t_k = [], [], []
    t = squeezed
    for q_stride, kv_stride in zip(q_pool, kv_pool):
        t_in.append(t)
        t_k.append(_ceil_div(t, kv_stride))
        t = _ceil_div(t, q_stride)
        t_q.append(t)
    pooled = t
    if n:
        t_in_, t_q_, t_k_ = (torch.stack(v, dim=-1).to(_F64) for v in (t_in, t_q, t_k))  # (..., L)
    else:
        t_in_ = t_q_ = t_k_ = torch.zeros(squeezed.shape + (0,), dtype=_F64, device=dev)
    # every branch kind counts its own MACs per layer from its widths (nemo_sew.nn.blocks.BRANCH_KINDS)
    times = LayerTimes(arch, dev, c, t_in_, t_q_, t_k_)
    layer_parts: dict[str, torch.Tensor] = {}
    for kind in BRANCH_KINDS:
        for name, value in kind.macs(w[kind.width], kp[kind.keep], times).items():
            layer_parts[name] = layer_parts[name] + value if name in layer_parts else value  # (..., L)
    per_layer = functools.reduce(lambda a, b: a + b, layer_parts.values())

    # expander
    t_out = pooled.to(_F64)
    if arch.expander == "sew":
        expander = t_out * c * (s * c)
        output_frames = frames
    elif arch.expander == "phase":
        expander = t_out * c * c + t20 * c  # Linear(C, C) on squeezed frames + Linear(1, C) on the phases
        output_frames = frames
    else:
        expander = torch.zeros((), dtype=_F64, device=dev)
        output_frames = pooled

    zero = torch.zeros((), dtype=_F64, device=dev)
    computed = {"frontend": frontend, "projection": projection, "compressor": compressor, "expander": expander}
    computed.update({name: value.sum(-1) for name, value in layer_parts.items()})
    parts = {name: computed.get(name, zero) for name in COMPONENTS}
    total = sum(parts.values())
    shape = torch.broadcast_shapes(*(v.shape for v in parts.values()), total.shape)
    parts = {name: v.expand(shape) for name, v in parts.items()}
    return Cost(
        **parts,
        total=total.expand(shape),
        per_layer=per_layer,
        frames=frames,
        squeezed_frames=squeezed,
        output_frames=output_frames,
    )


def macs_per_second(
    arch: ArchLike,
    profile: ProfileLike = None,
    seconds: float = 10.0,
    sample_rate: int = 16000,
    hop_seconds: float = 0.01,
) -> float:
    """Encoder GMACs per second of audio on one utterance of ``seconds`` (the analytic
    :func:`nemo_sew.evaluate.encoder_gmacs_per_second`)."""
    arch = _as_arch(arch)
    n = frontend_layout(arch.frontend).length(seconds, sample_rate, hop_seconds)
    return float(encoder_cost(arch, profile, n).total) / 1e9 / seconds


# --------------------------------------------------------------------------------------------------
# parameters


def encoder_params(
    arch: ArchLike, *, soft: Mapping[str, Any] | None = None, mask_emb: bool = False
) -> dict[str, torch.Tensor]:
    """Parameters of the encoder ``arch``, by component (float64 tensors; ``total`` is their sum).

    Keys: :data:`COMPONENTS` (``attention_scores`` is always 0), ``mask_emb``, ``other`` and ``total``.
    Norms and biases count in their component: the attention's and FFNs' (pre- or post-) LayerNorms in
    ``attention_proj`` / ``ffn``, the conv module's two LayerNorms in ``conv_module``, the front-end norms
    in ``frontend``, the feature LayerNorm in ``projection``, the weight-normed positional conv (``g`` of
    shape ``(1, 1, K)`` and ``v``) and the CIF weight predictor in ``compressor``. ``other``: the encoder's
    LayerNorm and the conformer blocks' final LayerNorms. A branch of width 0 has no parameters at all
    (its norm and output bias go with it).

    Args:
        arch: an :class:`~nemo_sew.arch.EncoderArch` (or a preset name, or an arch dict).
        soft: float widths as in :func:`encoder_cost`; parameters are linear in each width, so the count is
            differentiable. Width-independent terms (output biases, norms over ``d_model``) count when the
            arch's integer width is > 0.
        mask_emb: count the learned mask embedding (``d_model``; self-supervised pre-training).
    """
    arch = _as_arch(arch)
    dev = _device(soft)
    w = _widths(arch, soft, dev)
    c = float(arch.d_model)
    fe = arch.frontend
    zero = torch.zeros((), dtype=_F64, device=dev)

    frontend, front_dim = zero, float(fe.out_dim)
    if fe.conv_layers:
        c_in: torch.Tensor | float = 1.0
        for i, (_, k, _) in enumerate(fe.conv_layers):
            c_out = w["frontend_channels"][..., i]
            frontend = frontend + c_out * c_in * k + (c_out if fe.conv_bias else 0.0)
            if fe.conv_norm == "layer_norm" or i == 0:
                frontend = frontend + 2 * c_out
            c_in = c_out
        front_dim = c_in

    project = arch.feature_projection if arch.feature_projection is not None else fe.out_dim != arch.d_model
    projection = zero + (2 * front_dim if arch.feature_layer_norm else 0.0) + (front_dim * c + c if project else 0.0)

    comp = arch.compressor
    k = comp.pos_conv_kernel
    compressor = zero + k + c * (arch.d_model // comp.pos_conv_groups) * k + c  # g (1, 1, K), v, bias
    if comp.cif_alpha:
        compressor = compressor + (c * c * ALPHA_KERNEL + c) + 2 * c + (c + 1)  # conv, LayerNorm, Linear(C, 1)

    # every branch kind counts its own parameters from its widths (nemo_sew.nn.blocks.BRANCH_KINDS)
    times = LayerTimes(arch, dev, c)
    block_parts: dict[str, torch.Tensor] = {}
    for kind in BRANCH_KINDS:
        for name, value in kind.params(w[kind.width], times).items():
            block_parts[name] = block_parts[name] + value if name in block_parts else value

    s = arch.compressor.squeeze
    expander = {"sew": c * s * c + s * c, "phase": c * c + c + c, "none": 0.0}[arch.expander]
    final_norms = sum(BLOCK_KINDS[b.kind].final_norm for b in arch.blocks)
    other = 2 * c + final_norms * 2 * c  # the encoder's LayerNorm, the blocks' final LayerNorms (conformer)

    computed = {"frontend": frontend, "projection": projection, "compressor": compressor, "expander": zero + expander}
    computed.update(block_parts)
    parts = {name: computed.get(name, zero) for name in COMPONENTS}
    parts["mask_emb"] = zero + (c if mask_emb else 0.0)
    parts["other"] = zero + other
    parts["total"] = sum(parts.values())
    return parts
