"""Encoder blocks as sequences of residual branches, built from a :class:`nemo_sew.arch.BlockSpec`.

A block is a list of :class:`Residual` branches (``Residual(norm, body)``: attention, FFN, conformer conv
module) plus, for conformers, a final LayerNorm. Pre-LN and post-LN are decided in one place,
:meth:`Residual.forward`:

* pre-LN:  ``x <- x + scale * dropout(body(norm(x)))``
* post-LN: ``x <- norm(x + scale * dropout(body(x)))``  (SEW, wav2vec 2.0 base)

A branch that is **switched off** (its :class:`BranchPlan`: a profile's static gates, pruning to width 0; an
I3D gate per item) is an exact identity
``x <- x`` in both layouts. For post-LN that means the branch's LayerNorm is skipped too: normalising
``x`` without adding anything would change the residual stream, so "off" skips ``norm(x + ...)`` as a
whole. (With query pooling the identity still pools the residual, so the time axis stays consistent.)

Per forward, the encoder turns its draw (profile, gate decisions, pruning-mask sample, weight bits) into one
:class:`LayerPlan` per layer holding one :class:`~nemo_sew.nn.units.BranchPlan` per branch; blocks and branch
bodies read their plan and nothing else (no hooks, no state written between forwards).

Adding a block kind: describe it in :data:`nemo_sew.arch.BLOCK_KINDS` (its FFNs, conv module, final norm) and write
one builder in :data:`BLOCK_BUILDERS` that returns its named branches. Adding a branch kind: its body here and its
declaration in :data:`BRANCH_KINDS` (the recipe: :class:`~nemo_sew.nn.units.BranchUnits`); pruning's masks,
materialisation and the cost model iterate over the declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.arch import BlockSpec
from nemo_sew.nn.frontend import _capturing, can_overwrite, time_mask
from nemo_sew.nn.gates import LocalGatePredictor, gate_decisions, gate_mix
from nemo_sew.nn.linear import Linear
from nemo_sew.nn.ort_ops import MultiHeadAttentionOp, contrib_ops_active
from nemo_sew.nn.pooling import masked_avg_pool
from nemo_sew.nn.units import OPEN, BranchPlan, BranchUnits, UnitSlice, layer_norm_over, scale_channels

CLOSED = BranchPlan(open=False)

GateDecision = tuple[torch.Tensor, torch.Tensor]  # (gates (B,) 0/1 with straight-through grads, probabilities (B,))


@dataclass(frozen=True)
class LayerPlan:
    """The per-forward decisions of one layer, worked out from the active profile once per forward.

    Args:
        q_stride: query pooling stride of the attention branch (shortens this and every later layer).
        kv_stride: key/value pooling stride (cuts attention cost only).
        off: names of branches switched off for this forward (an exact identity; see the module docstring).
        branches: per branch name, what pruning decided for it this forward (:class:`BranchPlan`: open or
            closed, unit scales, branch scale); a branch not named runs fully.
        weight_bits: weight-only quantization of this layer's weights (16 = full precision).
        depth_threshold: I3D inference threshold of the layer's gate predictors (``p > threshold`` opens).
        gate_tau: temperature of the Gumbel-sigmoid gate samples in training.
        gates: per-branch gate decisions made before the blocks ran (the global predictor; ``{}`` when a static
            profile froze them), else None (local predictors decide).
    """

    q_stride: int = 1
    kv_stride: int = 1
    off: frozenset[str] = frozenset()
    weight_bits: int = 16
    depth_threshold: float = 0.5
    gate_tau: float = 1.0
    gates: Mapping[str, GateDecision] | None = None
    branches: Mapping[str, BranchPlan] | None = None

    def runs(self, branch: str) -> bool:
        return branch not in self.off

    def branch(self, name: str) -> BranchPlan:
        """Branch ``name``'s plan this forward (switched off: closed)."""
        if name in self.off:
            return CLOSED
        return self.branches.get(name, OPEN) if self.branches else OPEN


def zero_touch(params) -> torch.Tensor:
    """``0 * sum(p.sum())`` over ``params``: a scalar zero whose backward gives every parameter a zero gradient.
    Added where a module is skipped in training (LayerDrop, a closed branch, a frozen encoder), so DDP without an
    unused-parameter search sees a gradient for every parameter in every step. One reduction per parameter, no
    host synchronisation."""
    total = None
    for p in params:
        if p.requires_grad:
            term = p.sum() * 0.0
            total = term if total is None else total + term
    return total if total is not None else torch.zeros(())


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        dim: model width.
        num_heads: heads in this layer (pruning changes it per layer).
        head_dim: width of one head; the inner width is ``num_heads * head_dim`` (wav2vec 2.0: 64).
        dropout: attention-probability dropout (fairseq ``attention_dropout``).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"expected num_heads >= 1, got {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.q_proj = Linear(dim, inner)
        self.k_proj = Linear(dim, inner)
        self.v_proj = Linear(dim, inner)
        self.out_proj = Linear(inner, dim)

    def attend(
        self, x: torch.Tensor, key_mask: torch.Tensor, kv: torch.Tensor | None = None, units: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: queries ``(B, Tq, C)``; kv: keys/values ``(B, Tk, C)`` (default ``x``); key_mask: ``(B, Tk)`` True = valid,
        or ``(B, Tq, Tk)`` per query; units: one scale per head on its context, before ``out_proj`` (pruning)."""
        kv = x if kv is None else kv
        b, tq, _ = x.shape
        tk = kv.shape[1]

        def heads(y: torch.Tensor, t: int) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

        if key_mask.dim() == 2 and contrib_ops_active():  # onnxruntime's fused kernel (export only, see ort_ops)
            inner = self.num_heads * self.head_dim
            y = MultiHeadAttentionOp.apply(self.q_proj(x), self.k_proj(kv), self.v_proj(kv), key_mask, self.num_heads, inner)
            return self.out_proj(scale_channels(y, units, repeat=self.head_dim))
        q, k, v = heads(self.q_proj(x), tq), heads(self.k_proj(kv), tk), heads(self.v_proj(kv), tk)
        # (B, 1, 1, Tk) broadcast over heads and queries, or a per-query mask (B, 1, Tq, Tk) (local attention)
        attn_mask = key_mask[:, None, None, :] if key_mask.dim() == 2 else key_mask[:, None]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, Tq, d)
        y = y.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim)  # (B, Tq, H*d)
        return self.out_proj(scale_channels(y, units, repeat=self.head_dim))

    forward = attend


def pooled_attention_inputs(
    x: torch.Tensor, lengths: torch.Tensor, q_stride: int, kv_stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MViT-style pooling attention inputs: (queries, query lengths, keys/values, key mask).

    Pooling the queries shortens the layer's output (and every later layer); pooling keys/values only
    cuts attention cost. Both use masked average pooling with ``ceil`` lengths.
    """
    xq, q_len = masked_avg_pool(x, lengths, q_stride)
    xkv, kv_len = masked_avg_pool(x, lengths, kv_stride)
    return xq, q_len, xkv, time_mask(kv_len, xkv.shape[1])


class FeedForward(nn.Module):
    """``Linear(C, F) -> act -> dropout -> Linear(F, C)`` (fairseq fc1/fc2; HF intermediate/output dense).

    The activation overwrites fc1's output when autograd does not need it (inference; see
    :func:`~nemo_sew.nn.frontend.can_overwrite`): same kernel, one ``(B, T, F)`` allocation fewer per layer.
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        acts = {"gelu": nn.GELU(), "swish": nn.SiLU(), "relu": nn.ReLU()}
        if activation not in acts:
            raise ValueError(f"expected activation in {sorted(acts)}, got {activation!r}")
        self.fc1 = Linear(dim, ffn_dim)
        self.act = acts[activation]
        self.dropout = nn.Dropout(dropout)
        self.fc2 = Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor, units: torch.Tensor | None = None) -> torch.Tensor:
        """``units``: one scale per intermediate unit, before ``fc2`` (pruning)."""
        return self.fc2(scale_channels(self.dropout(_activation(self.act, self.fc1(x))), units))


def _activation(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``act(h)``, written into ``h`` (a fresh temporary) when autograd does not need it and ``act`` has an
    in-place kernel (GELU, SiLU, ReLU)."""
    if not can_overwrite(h) or type(act) not in (nn.GELU, nn.SiLU, nn.ReLU):
        return act(h)
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(h, approximate=act.approximate)
    return F.silu(h, inplace=True) if type(act) is nn.SiLU else F.relu(h, inplace=True)


def band_mask(tq: int, tk: int, q_stride: int, kv_stride: int, window: int, device: torch.device) -> torch.Tensor:
    """``(Tq, Tk)`` True where query ``i`` may attend key ``j`` in local attention of width ``window``.

    Positions are in frames of the layer's input: query ``i`` covers ``[i*q_stride, (i+1)*q_stride)``, key ``j``
    ``[j*kv_stride, (j+1)*kv_stride)``; a key is in the band when its span comes within ``window // 2``
    frames of the query's (without pooling: ``|i - j| <= window // 2``). Built from ``arange`` on the traced
    shapes, so it exports to ONNX with dynamic lengths.
    """
    half = window // 2
    qi = torch.arange(tq, device=device)[:, None]  # (Tq, 1)
    kj = torch.arange(tk, device=device)[None, :]  # (1, Tk)
    return (kj * kv_stride < (qi + 1) * q_stride + half) & ((kj + 1) * kv_stride > qi * q_stride - half)


class AttentionBody(SelfAttention):
    """The attention branch's body: MViT-style pooling of its input, then :class:`SelfAttention`.

    Queries are pooled by ``plan.q_stride`` (the output has the pooled length), keys/values by
    ``plan.kv_stride``; the residual is pooled with the queries by :class:`Residual`. With ``window > 0`` the
    attention is local (:func:`band_mask`); padded queries see every valid key (their output is not used),
    so no softmax row is empty.
    """

    pools = True

    def __init__(self, dim: int, num_heads: int, head_dim: int = 64, dropout: float = 0.0, window: int = 0) -> None:
        super().__init__(dim, num_heads, head_dim, dropout)
        self.window = int(window)

    def forward(
        self, h: torch.Tensor, lengths: torch.Tensor, plan: LayerPlan, units: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hq, q_len, h_kv, kv_mask = pooled_attention_inputs(h, lengths, plan.q_stride, plan.kv_stride)
        if self.window:
            band = band_mask(hq.shape[1], h_kv.shape[1], plan.q_stride, plan.kv_stride, self.window, h.device)
            q_pad = ~time_mask(q_len, hq.shape[1])  # (B, Tq)
            kv_mask = kv_mask[:, None, :] & (band[None] | q_pad[:, :, None])  # (B, Tq, Tk)
        return self.attend(hq, kv_mask, h_kv, units), q_len


class FeedForwardBody(FeedForward):
    """The FFN branch's body (:class:`FeedForward` with the branch signature)."""

    pools = False

    def forward(
        self, h: torch.Tensor, lengths: torch.Tensor, plan: LayerPlan, units: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(h, units), lengths


class ConvModule(nn.Module):
    """Conformer convolution module body: pointwise (GLU) -> depthwise conv -> norm -> swish -> pointwise.

    ``channels`` is the module's inner width (``BlockSpec.conv_channels``; ``d_model`` in a full-size
    conformer). Padded frames are zeroed before the depthwise conv, so they cannot leak into valid frames.
    The norm is a channel LayerNorm (NeMo's ``conv_norm_type=layer_norm``) rather than BatchNorm, so
    training statistics do not depend on the padding or the batch either. Its pre-norm is the
    :class:`Residual`'s norm.
    """

    pools = False

    def __init__(self, dim: int, channels: int, kernel: int = 31, eps: float = 1e-5) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"expected an odd depthwise kernel, got {kernel}")
        self.pointwise1 = nn.Conv1d(dim, 2 * channels, 1)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=eps)
        self.pointwise2 = nn.Conv1d(channels, dim, 1)

    def forward(
        self, h: torch.Tensor, lengths: torch.Tensor, plan: LayerPlan, units: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``units``: one scale per inner channel (pruning): the norm takes its statistics over the kept channels
        and the scales multiply the input of ``pointwise2``."""
        mask = time_mask(lengths, h.shape[1])
        y = F.glu(self.pointwise1(h.transpose(1, 2)), dim=1)  # (B, C, T)
        y = y.masked_fill(~mask[:, None, :], 0.0)
        y = self.depthwise(y)  # (B, C, T)
        y = F.silu(layer_norm_over(y.transpose(1, 2), self.norm, units)).transpose(1, 2)  # (B, C, T)
        return self.pointwise2(scale_channels(y, units, dim=1)).transpose(1, 2), lengths  # (B, T, D)


class Residual(nn.Module):
    """One residual branch ``Residual(norm, body)``; pre-LN or post-LN is decided here and nowhere else.

    Args:
        norm: the branch's LayerNorm (before the body in pre-LN, after the sum in post-LN).
        body: ``body(h, lengths, plan) -> (y, lengths)``; a body whose class sets ``pools = True`` may
            shorten the time axis (query pooling), and the residual is pooled with it.
        post_norm: post-LN layout.
        scale: the branch output's weight (conformer FFNs: 0.5).
        dropout: residual dropout on the branch output.
    """

    def __init__(self, norm: nn.Module, body: nn.Module, post_norm: bool, scale: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm, self.body = norm, body
        self.post_norm, self.scale = post_norm, scale
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor,
        plan: LayerPlan,
        branch: BranchPlan = OPEN,
        gate: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``branch``: this branch's plan (:class:`~nemo_sew.nn.units.BranchPlan`): ``open=False`` makes it an exact
        identity; a 0-dim bool tensor (pruning masks that may close it, in training) runs it and selects branch or
        identity with ``torch.where``, without a host sync; its unit and branch scales go to the body.
        ``gate``: per-item I3D decisions ``(B,)`` (1 = run, 0 = identity), or None to run every item.

        In training every item is computed and mixed ``g * branch + (1 - g) * identity`` (straight-through
        gradients reach the gate). At inference a closed item is not computed: the branch runs on the rows
        whose gate is open only (gathered and trimmed to their longest length, then scattered back), and not
        at all when every gate is closed.
        """
        stride = plan.q_stride if getattr(self.body, "pools", False) else 1
        if branch.open is False:  # an exact identity (only the residual's pooling, when the branch pools)
            out, out_len = masked_avg_pool(x, lengths, stride)
            if self.training and torch.is_grad_enabled():
                # a closed branch (switched off, pruned to width 0) still gives its parameters, and the gate
                # predictor that decided on it, a zero gradient: plain DDP needs one for each
                touch = zero_touch(self.parameters())
                if gate is not None and gate.requires_grad:
                    touch = touch + gate.sum() * 0.0
                out = out + touch.to(out.dtype)
            return out, out_len
        if isinstance(branch.open, torch.Tensor):  # decided on the device: the closed side gets zero gradients
            out, out_len = self._run(x, lengths, plan, stride, branch)
            skip = masked_avg_pool(x, lengths, stride)[0]
            if gate is not None:
                out = gate_mix(gate, out, skip)
            return torch.where(branch.open, out, skip), out_len
        if gate is None:
            return self._run(x, lengths, plan, stride, branch)
        if self.training or _capturing():  # traced or compiled: masked; the ONNX export turns the mix into an If (export/conditional.py)
            out, out_len = self._run(x, lengths, plan, stride, branch)
            skip = masked_avg_pool(x, lengths, stride)[0]
            return gate_mix(gate, out, skip), out_len
        skip, skip_len = masked_avg_pool(x, lengths, stride)
        rows = (gate > 0.5).nonzero().flatten()
        if rows.numel() == 0:
            return skip, skip_len
        if rows.numel() == x.shape[0]:
            return self._run(x, lengths, plan, stride, branch)
        sub_len = lengths[rows]
        y, _ = self._run(x[rows, : int(sub_len.max())], sub_len, plan, stride, branch)
        out = skip.clone()
        out[rows, : y.shape[1]] = y
        return out, skip_len

    def _run(
        self, x: torch.Tensor, lengths: torch.Tensor, plan: LayerPlan, stride: int, branch: BranchPlan = OPEN
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = x if self.post_norm else self.norm(x)
        y, out_len = self.body(h, lengths, plan, branch.units)
        if branch.scale is not None:  # the whole-branch mask (pruning), folded into the body's output layer
            y = y * branch.scale.to(y.dtype)
        skip = x if stride == 1 else masked_avg_pool(x, lengths, stride)[0]
        y = self.dropout(y)
        out = skip + (y if self.scale == 1.0 else self.scale * y)
        return (self.norm(out) if self.post_norm else out), out_len


class Block(nn.Module):
    """One encoder layer: named :class:`Residual` branches run in order, then an optional final norm.

    Branch names (``attn``, ``ffn``, ``ffn1``, ``conv``, ``ffn2``) are what a :class:`LayerPlan` switches off
    and what I3D gates. A branch of width 0 in the spec is absent; a block without a pooling branch (no attention)
    still pools the residual stream when its plan pools queries. With ``local_gates``, every branch has a
    :class:`~nemo_sew.nn.gates.LocalGatePredictor` (``gates.<branch>``) on its own input.
    """

    def __init__(
        self, branches: dict[str, Residual], final_norm: nn.Module | None = None, local_gates: nn.ModuleDict | None = None
    ) -> None:
        super().__init__()
        self.branch_names = tuple(branches)
        for name, branch in branches.items():
            self.add_module(name, branch)
        # no branch pools the queries (no attention branch): the block pools the residual stream itself
        self.pools = any(getattr(b.body, "pools", False) for b in branches.values())
        self.final_norm = final_norm
        self.gates = local_gates

    def branches(self) -> dict[str, Residual]:
        return {name: getattr(self, name) for name in self.branch_names}

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, plan: LayerPlan
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, GateDecision]]:
        """x: ``(B, T, C)`` -> ``(B, ceil(T / q_stride), C)``, the new lengths, and the gate decisions taken
        (``{branch: (gates, probabilities)}``, empty for an ungated block)."""
        if plan.q_stride > 1 and not self.pools:
            x, lengths = masked_avg_pool(x, lengths, plan.q_stride)
        decisions: dict[str, GateDecision] = {}
        for name in self.branch_names:
            branch, gate = plan.branch(name), None
            active = branch.open is not False
            if active and plan.gates is not None:  # decided before the blocks (global predictor, frozen gates: {})
                if name in plan.gates:
                    decisions[name] = plan.gates[name]
            elif active and self.gates is not None:
                decisions[name] = gate_decisions(self.gates[name](x, lengths), self.training, plan.depth_threshold, plan.gate_tau)
            if name in decisions:
                gate = decisions[name][0]
            x, lengths = getattr(self, name)(x, lengths, plan, branch, gate)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, lengths, decisions


@dataclass(frozen=True)
class BlockOptions:
    """What a block needs besides its spec: the model width, the LN layout, dropouts and eps."""

    d_model: int
    layer_norm_first: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    local_gate_hidden: int = 0  # > 0: an I3D local gate predictor of this hidden width on every branch
    gate_init_logit: float = 3.0
    gate_max_logit: float | None = None

    def norm(self, dim: int | None = None) -> nn.LayerNorm:
        return nn.LayerNorm(self.d_model if dim is None else dim, eps=self.layer_norm_eps)


def _attn(spec: BlockSpec, o: BlockOptions, post_norm: bool) -> Residual:
    body = AttentionBody(o.d_model, spec.heads, spec.head_dim, o.attention_dropout, spec.window)
    return Residual(o.norm(), body, post_norm, dropout=o.dropout)


def _ffn(width: int, o: BlockOptions, post_norm: bool, activation: str, scale: float = 1.0) -> Residual:
    body = FeedForwardBody(o.d_model, width, o.activation_dropout, activation)
    return Residual(o.norm(), body, post_norm, scale=scale, dropout=o.dropout)


def transformer_branches(spec: BlockSpec, o: BlockOptions) -> tuple[dict[str, Residual], nn.Module | None]:
    """wav2vec 2.0 / SEW layer (fairseq ``TransformerSentenceEncoderLayer``): attention, FFN; pre- or post-LN."""
    post = not o.layer_norm_first
    branches: dict[str, Residual] = {}
    if spec.heads:
        branches["attn"] = _attn(spec, o, post)
    if spec.ffn_dims[0]:
        branches["ffn"] = _ffn(spec.ffn_dims[0], o, post, "gelu")
    return branches, None


def conformer_branches(spec: BlockSpec, o: BlockOptions) -> tuple[dict[str, Residual], nn.Module | None]:
    """Conformer layer (Gulati et al.): ``FFN/2, MHSA, Conv, FFN/2``, each pre-normed, then a LayerNorm.

    Positions come from the compressor's convolutional positional embedding, as in wav2vec 2.0-conformer
    with ``position_embeddings_type=None``.
    """
    branches: dict[str, Residual] = {}
    if spec.ffn_dims[0]:
        branches["ffn1"] = _ffn(spec.ffn_dims[0], o, False, "swish", scale=0.5)
    if spec.heads:
        branches["attn"] = _attn(spec, o, False)
    if spec.conv_channels:
        conv = ConvModule(o.d_model, spec.conv_channels, spec.conv_kernel, eps=o.layer_norm_eps)
        branches["conv"] = Residual(o.norm(), conv, False, dropout=o.dropout)
    if spec.ffn_dims[1]:
        branches["ffn2"] = _ffn(spec.ffn_dims[1], o, False, "swish", scale=0.5)
    return branches, o.norm()


BLOCK_BUILDERS: dict[str, Callable[[BlockSpec, BlockOptions], tuple[dict[str, Residual], nn.Module | None]]] = {
    "transformer": transformer_branches,
    "conformer": conformer_branches,
}


def build_block(spec: BlockSpec, options: BlockOptions) -> Block:
    """The module of one :class:`~nemo_sew.arch.BlockSpec`."""
    if spec.kind not in BLOCK_BUILDERS:
        raise ValueError(f"no builder for block kind {spec.kind!r}; known: {sorted(BLOCK_BUILDERS)}")
    branches, final_norm = BLOCK_BUILDERS[spec.kind](spec, options)
    local = None
    if options.local_gate_hidden > 0:
        local = nn.ModuleDict({
            name: LocalGatePredictor(options.d_model, options.local_gate_hidden, options.gate_init_logit, options.gate_max_logit)
            for name in branches
        })  # fmt: skip
    return Block(branches, final_norm, local)


# ------------------------------------------------------------------------------------------------------------------
# branch kinds: what each body declares about its prunable units and its cost (see nemo_sew.nn.units.BranchUnits for
# the recipe to add one). ``w``: widths (..., L[, columns]) as floats, ``keep``: keep probabilities (or 1.0), ``t``:
# nemo_sew.cost.LayerTimes. The MAC conventions are nemo_sew.cost's; each formula is checked against
# torch.utils.flop_counter and the built module's parameter count (tests/test_cost.py).


def _attention_macs(w, keep, t):
    dim = w * t.spec("head_dim")  # (..., L) inner width
    return {
        "attention_proj": 2 * t.c * dim * (t.t_q + t.t_k) * keep,  # q, out on queries; k, v on keys
        "attention_scores": 2 * dim * t.t_q * t.t_k * keep,  # QK^T and AV
    }


def _attention_params(w, t):
    dim, c = w * t.spec("head_dim"), t.c
    # q, k, v, out (+ biases), norm
    return {"attention_proj": (4 * c * dim + 3 * dim + t.exists("heads") * (c + 2 * c)).sum(-1)}


def _ffn_before_attention(spec: BlockSpec, traits) -> tuple[float, ...]:
    """1 for the FFNs of a block that run before its attention (before the layer's query pooling)."""
    return tuple(float(j < traits.ffns_before_attention) for j in range(len(spec.ffn_dims)))


def _ffn_macs(w, keep, t):
    before = t.constant(_ffn_before_attention)  # (L, n_ffn)
    t_ffn = before * t.t_in[..., None] + (1 - before) * t.t_q[..., None]  # (..., L, n_ffn)
    return {"ffn": (2 * t.c * w * t_ffn * keep).sum(-1)}  # fc1, fc2


def _ffn_params(w, t):
    c = t.c
    return {"ffn": (2 * c * w + w + t.exists("ffn_dims") * (c + 2 * c)).sum((-2, -1))}  # fc1, fc2 (+ biases), norm


def _conv_macs(w, keep, t):
    c = t.c
    # pointwise1 (GLU), depthwise, pointwise2
    return {"conv_module": t.t_q * (2 * c * w + w * t.spec("conv_kernel") + w * c) * keep}


def _conv_params(w, t):
    c, has = t.c, t.exists("conv_channels")
    return {
        "conv_module": (
            has * 2 * c  # pre-norm
            + (c * 2 * w + 2 * w)  # pointwise1 C -> 2cc (GLU)
            + (w * t.spec("conv_kernel") + w)  # depthwise
            + 2 * w  # norm
            + (w * c + has * c)  # pointwise2 cc -> C
        ).sum(-1)
    }


#: attention heads: ``head_dim`` rows of q/k/v each, ``head_dim`` input columns of ``out_proj``
ATTENTION = BranchUnits(
    name="attention", body=AttentionBody, branches={"attn": 0}, width="heads", unit="heads", keep="attn",
    per_unit="head_dim",
    slices=(UnitSlice(("q_proj", "k_proj", "v_proj"), 0, "group"), UnitSlice(("out_proj",), 1, "group")),
    output="out_proj", components=("attention_proj", "attention_scores"), macs=_attention_macs,
    params=_attention_params,
)  # fmt: skip
#: FFN intermediate units: rows of ``fc1``, input columns of ``fc2``; a block's FFNs are columns of ``ffn_dims``
FFN = BranchUnits(
    name="ffn", body=FeedForwardBody, branches={"ffn": 0, "ffn1": 0, "ffn2": 1}, width="ffn_dims", columns=True,
    unit="ffn", keep="ffn", init_drop="ffn_init_drop", slices=(UnitSlice(("fc1",), 0), UnitSlice(("fc2",), 1)),
    output="fc2", components=("ffn",), macs=_ffn_macs, params=_ffn_params,
)  # fmt: skip
#: conformer conv-module channels: both GLU halves of ``pointwise1``, ``depthwise`` and ``norm``; ``pointwise2``'s
#: inputs
CONV_MODULE = BranchUnits(
    name="conv_module", body=ConvModule, branches={"conv": 0}, width="conv_channels", unit="conv", keep="conv",
    present="conv_module",
    slices=(UnitSlice(("pointwise1",), 0, "glu"), UnitSlice(("depthwise", "norm"), 0), UnitSlice(("pointwise2",), 1)),
    output="pointwise2", components=("conv_module",), macs=_conv_macs, params=_conv_params,
)  # fmt: skip

#: every branch kind, in the cost model's order; a block builder's branch names are each declared by exactly one
BRANCH_KINDS: tuple[BranchUnits, ...] = (ATTENTION, FFN, CONV_MODULE)


def branch_kind(name: str) -> tuple[BranchUnits, int]:
    """The declaration of branch ``name`` (``attn``, ``ffn``, ``ffn1``, ...) and its column in the kind's width."""
    for kind in BRANCH_KINDS:
        if name in kind.branches:
            return kind, kind.branches[name]
    known = sorted(n for k in BRANCH_KINDS for n in k.branches)
    raise KeyError(f"branch {name!r} has no declared kind (nemo_sew.nn.blocks.BRANCH_KINDS); declared: {known}")
