"""Guards of the encoder's building blocks (issue 30): what a user of ``nemo_sew.nn`` relies on from
:mod:`nemo_sew.nn.blocks`, :mod:`nemo_sew.nn.units`, :mod:`nemo_sew.nn.onednn` and the feature projection of
:mod:`nemo_sew.nn.frontend`, checked against independent references.

* local attention's band (:func:`~nemo_sew.nn.blocks.band_mask`): a key is in the band exactly when its frame span
  comes within ``window // 2`` frames of the query's, written out frame by frame, for every stride and window; the
  mask lives on the requested device (the meta device stands in for a GPU); a local :class:`AttentionBody` computes
  ``softmax(QK^T / sqrt(d))V`` over the valid keys of the band, its valid frames do not depend on padded content,
  and a padded query sees every valid key (no empty softmax row);
* each branch kind's parameter count (``BRANCH_KINDS[...].params``, what ``encoder_params`` and the pruning budget
  read) equals, component by component, the ``numel`` of the modules :func:`build_block` builds, for transformer,
  conformer and non-uniform blocks with absent branches, and keeps the leading (batch) dims of soft widths;
* :class:`~nemo_sew.nn.units.UnitSlice`: every documented axis / channel mapping is accepted, anything else is
  refused with a message naming the choices; ``channel_index`` for ``unit``, ``group`` (default one channel per
  unit) and ``glu`` channels, on the device of the indices;
* :class:`~nemo_sew.nn.frontend.FeatureProjection` with pruning's unit scales: LayerNorm statistics over the kept
  channels, the scales, then the linear map;
* :func:`~nemo_sew.nn.onednn.packed_linear`: equal to ``F.linear`` on a module that never saw it, the weight packed
  once per weight (also when it is handed a fresh view of its source parameter each call), and repacked when the
  module's weight is replaced by another tensor;
* :meth:`FrontendLayout.seconds` (samples at the sample rate, spectrogram frames at the hop);
* :func:`~nemo_sew.nn.blocks.zero_touch` (zero value, zero gradients for trainable parameters only) and
  :meth:`LayerPlan.runs`.

Fast (single blocks and tiny archs, no encoder forward): part of ``make mutation``'s ``nn`` module.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import NON_UNIFORM_ARCHS
from nemo_sew.arch import build_arch
from nemo_sew.cost import encoder_params
from nemo_sew.nn import onednn
from nemo_sew.nn.blocks import (
    BRANCH_KINDS,
    AttentionBody,
    BlockOptions,
    LayerPlan,
    band_mask,
    branch_kind,
    build_block,
    zero_touch,
)
from nemo_sew.nn.frontend import FeatureProjection, frontend_layout
from nemo_sew.nn.linear import Linear
from nemo_sew.nn.units import UnitSlice

CPU = torch.device("cpu")

# --------------------------------------------------------------------------------------------------
# local attention


def _reference_band(tq: int, tk: int, q_stride: int, kv_stride: int, window: int) -> torch.Tensor:
    """Frame by frame: query ``i`` covers frames ``[i*q_stride, (i+1)*q_stride)``, key ``j`` frames
    ``[j*kv_stride, (j+1)*kv_stride)``; ``j`` is in ``i``'s band when some frame of each are at most ``window // 2``
    apart."""
    half = window // 2
    out = torch.zeros(tq, tk, dtype=torch.bool)
    for i in range(tq):
        q_frames = range(i * q_stride, (i + 1) * q_stride)
        for j in range(tk):
            k_frames = range(j * kv_stride, (j + 1) * kv_stride)
            out[i, j] = any(abs(a - b) <= half for a in q_frames for b in k_frames)
    return out


@pytest.mark.parametrize("q_stride", [1, 2, 3])
@pytest.mark.parametrize("kv_stride", [1, 2, 3])
def test_band_mask_is_the_frame_distance_rule(q_stride: int, kv_stride: int):
    t = 11
    tq, tk = math.ceil(t / q_stride), math.ceil(t / kv_stride)
    for window in (0, 1, 2, 3, 4, 5, 6, 7, 9, 12):
        got = band_mask(tq, tk, q_stride, kv_stride, window, CPU)
        assert got.dtype == torch.bool and got.shape == (tq, tk)
        assert torch.equal(got, _reference_band(tq, tk, q_stride, kv_stride, window)), (window, q_stride, kv_stride)
        assert bool(got.any(-1).all()), "every query has a key in its band"


def test_band_mask_is_built_on_the_requested_device():
    meta = torch.device("meta")
    m = band_mask(5, 7, 2, 1, 4, meta)
    assert m.device == meta and m.shape == (5, 7) and m.dtype == torch.bool


def _local_reference(body: AttentionBody, h: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Single-head-by-head softmax attention of one unpadded item over the keys within ``window // 2`` frames."""
    x = h[:n]
    hd = body.head_dim
    q, k, v = body.q_proj(x), body.k_proj(x), body.v_proj(x)
    i = torch.arange(n)
    allowed = (i[:, None] - i[None, :]).abs() <= window // 2
    ctx = []
    for head in range(body.num_heads):
        sl = slice(head * hd, (head + 1) * hd)
        s = q[:, sl] @ k[:, sl].T / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf"))
        ctx.append(torch.softmax(s, -1) @ v[:, sl])
    return body.out_proj(torch.cat(ctx, -1))


def test_local_attention_body_matches_a_hand_written_band_and_ignores_padding():
    torch.manual_seed(0)
    window = 4
    body = AttentionBody(16, num_heads=2, head_dim=8, window=window).eval()
    lengths = torch.tensor([12, 7])
    h = torch.randn(2, 12, 16)
    with torch.no_grad():
        y, out_len = body(h, lengths, LayerPlan())
        assert torch.equal(out_len, lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(y[b, :n], _local_reference(body, h[b], n, window), rtol=0, atol=1e-5)
        # padded content never reaches a valid frame
        h2 = h.clone()
        h2[1, 7:] = 1e3 * torch.randn(5, 16)
        y2, _ = body(h2, lengths, LayerPlan())
        torch.testing.assert_close(y2[1, :7], y[1, :7], rtol=0, atol=1e-5)
        # a padded query (outside every valid key's band) still sees the valid keys: a finite output
        assert bool(torch.isfinite(y).all())


# --------------------------------------------------------------------------------------------------
# parameters of each branch kind against the built modules

COMPONENT_OF_BRANCH = {"attn": "attention_proj", "ffn": "ffn", "ffn1": "ffn", "ffn2": "ffn", "conv": "conv_module"}

ARCHS = {  # build_arch(preset, **kwargs)
    "transformer": ("tiny_wfe_c", {}),
    "conformer": ("tiny_conformer", {}),
    "conformer_head_dim_32_kernel_15": ("tiny_conformer", {"blocks": {"head_dim": 32, "conv_kernel": 15}}),
    **NON_UNIFORM_ARCHS,
}


def _module_components(arch) -> dict[str, int]:
    counts = {"attention_proj": 0, "ffn": 0, "conv_module": 0}
    options = BlockOptions(d_model=arch.d_model)
    for spec in arch.blocks:
        block = build_block(spec, options)
        for name, branch in block.branches().items():
            counts[COMPONENT_OF_BRANCH[name]] += sum(p.numel() for p in branch.parameters())
    return counts


@pytest.mark.parametrize("case", list(ARCHS))
def test_branch_parameter_counts_equal_the_built_modules(case: str):
    preset, kwargs = ARCHS[case]
    arch = build_arch(preset, **kwargs)
    parts = encoder_params(arch)
    for component, count in _module_components(arch).items():
        assert float(parts[component]) == count, component


def test_branch_parameter_counts_keep_the_leading_dims_of_soft_widths():
    """Two candidate widths at once (a leading dim of 2): each row counts its own widths."""
    arch = build_arch("tiny_conformer")
    c = float(arch.d_model)
    hard = encoder_params(arch)
    heads = torch.tensor([float(b.heads) for b in arch.blocks])
    ffn = torch.tensor([[float(x) for x in b.ffn_dims] for b in arch.blocks])
    conv = torch.tensor([float(b.conv_channels) for b in arch.blocks])
    soft = {"heads": torch.stack([heads, heads - 1]), "ffn_dims": torch.stack([ffn, ffn / 2]),
            "conv_channels": torch.stack([conv, conv / 4])}  # fmt: skip
    parts = encoder_params(arch, soft=soft)
    n = arch.num_layers
    hd, kernel = arch.blocks[0].head_dim, arch.blocks[0].conv_kernel
    for component in ("attention_proj", "ffn", "conv_module"):
        assert parts[component].shape == (2,), component
        assert float(parts[component][0]) == float(hard[component]), component
    # removing one head per layer removes its q, k, v rows (+ biases) and its out_proj columns
    assert float(parts["attention_proj"][1]) == float(hard["attention_proj"]) - n * (4 * c * hd + 3 * hd)
    # halving the FFNs halves their width-dependent parameters (fc1, fc2 weights; fc1 bias)
    ffn_width = float(ffn.sum())
    assert float(parts["ffn"][1]) == float(hard["ffn"]) - (2 * c + 1) * ffn_width / 2
    conv_width = float(conv.sum())
    per_channel = 2 * c + 2 + kernel + 1 + 2 + c  # pointwise1 (2 rows + biases), depthwise, norm, pointwise2
    assert float(parts["conv_module"][1]) == float(hard["conv_module"]) - per_channel * conv_width * 3 / 4
    assert parts["total"].shape == (2,)


def test_every_branch_name_has_one_kind():
    for kind in BRANCH_KINDS:
        for name, column in kind.branches.items():
            assert branch_kind(name) == (kind, column)
    with pytest.raises(KeyError, match="'cgmlp' has no declared kind"):
        branch_kind("cgmlp")


# --------------------------------------------------------------------------------------------------
# unit slices


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("channels", ["unit", "group", "glu"])
def test_unit_slice_accepts_every_documented_mapping(axis: int, channels: str):
    s = UnitSlice(("fc",), axis, channels)
    assert (s.axis, s.channels) == (axis, channels)


@pytest.mark.parametrize(
    "axis, channels", [(2, "unit"), (-1, "group"), (0, "GLU"), (1, "units"), (0, "heads"), (3, "x")]
)
def test_unit_slice_refuses_anything_else(axis: int, channels: str):
    with pytest.raises(ValueError, match=r"expected axis 0 or 1 and channels 'unit', 'group' or 'glu', got UnitSlice"):
        UnitSlice(("fc",), axis, channels)


def test_unit_slice_channel_index():
    idx = torch.tensor([0, 2])
    ch, owner = UnitSlice(("fc",), 0, "unit").channel_index(idx, 4)
    assert ch.tolist() == [0, 2] and owner.tolist() == [0, 2]
    ch, owner = UnitSlice(("fc",), 0, "group").channel_index(idx, 4)  # default: one channel per unit
    assert ch.tolist() == [0, 2] and owner.tolist() == [0, 2]
    ch, owner = UnitSlice(("q",), 0, "group").channel_index(idx, 4, per_unit=3)
    assert ch.tolist() == [0, 1, 2, 6, 7, 8] and owner.tolist() == [0, 0, 0, 2, 2, 2]
    ch, owner = UnitSlice(("pw",), 0, "glu").channel_index(idx, 4)
    assert ch.tolist() == [0, 2, 4, 6] and owner.tolist() == [0, 2, 0, 2]
    meta = torch.device("meta")
    ch, owner = UnitSlice(("q",), 0, "group").channel_index(torch.tensor([0, 2], device=meta), 4, per_unit=3)
    assert ch.device == meta and owner.device == meta and ch.shape == (6,)


# --------------------------------------------------------------------------------------------------
# feature projection with pruning's unit scales


def test_feature_projection_normalises_over_kept_channels_then_scales():
    torch.manual_seed(0)
    proj = FeatureProjection(6, 4).eval()
    with torch.no_grad():
        proj.layer_norm.weight.uniform_(0.5, 1.5)
        proj.layer_norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 6)
    units = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.0, 2.0])
    kept = units != 0
    xk = x[..., kept]
    mean, var = xk.mean(-1, keepdim=True), xk.var(-1, unbiased=False, keepdim=True)
    normed = torch.zeros_like(x)
    normed[..., kept] = (xk - mean) / torch.sqrt(var + 1e-5) * proj.layer_norm.weight[kept] + proj.layer_norm.bias[kept]
    ref = F.linear(normed * units, proj.projection.weight, proj.projection.bias)
    with torch.no_grad():
        got = proj(x, units)
        plain = proj(x)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(plain, proj.projection(proj.layer_norm(x)), rtol=0, atol=1e-6)


def test_frontend_layout_converts_input_lengths_to_seconds():
    wave = frontend_layout(build_arch("tiny_wfe_c").frontend)
    assert wave.seconds(16000) == 1.0 and wave.seconds(4000) == 0.25
    assert wave.seconds(8000, sample_rate=8000) == 1.0 and wave.seconds(8000, 8000) == 1.0
    assert wave.seconds(16000, hop_seconds=0.02) == 1.0  # a waveform's unit is the sample, whatever the hop
    mel = frontend_layout(build_arch("tiny_mel").frontend)
    assert mel.seconds(100) == 1.0 and mel.seconds(250) == 2.5
    assert mel.seconds(50, hop_seconds=0.02) == 1.0 and mel.seconds(50, 8000, 0.02) == 1.0
    assert mel.seconds(100, sample_rate=8000) == 1.0  # spectrogram frames: the hop decides, not the sample rate


# --------------------------------------------------------------------------------------------------
# oneDNN linear

needs_onednn = pytest.mark.skipif(not onednn.onednn_available(), reason="torch built without oneDNN")


@needs_onednn
def test_packed_linear_on_a_module_that_never_saw_it():
    torch.manual_seed(0)
    owner, w, b, x = nn.Module(), torch.randn(5, 8), torch.randn(5), torch.randn(3, 8)
    with torch.no_grad():
        y = onednn.packed_linear(owner, x, w, b)
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=0, atol=1e-5)


@needs_onednn
def test_packed_linear_packs_once_per_weight_and_follows_a_replaced_weight():
    torch.manual_seed(0)
    lin, other = Linear(8, 5), Linear(8, 5)
    assert onednn.use_onednn_linear(lin) == 1
    x = torch.randn(3, 8)
    with torch.no_grad():
        lin(x)
        packed = lin._onednn_weight
        lin(x)
        assert lin._onednn_weight is packed, "the weight is packed once, not per call"
        # another tensor at the same version: the packed weight is rebuilt from it
        assert lin.weight._version == other.weight._version
        keep_alive = lin.weight  # the old weight stays alive: the new one cannot take over its id
        lin.weight = other.weight
        y = lin(x)
    torch.testing.assert_close(y, F.linear(x, other.weight, lin.bias), rtol=0, atol=1e-5)
    assert keep_alive is not lin.weight


@needs_onednn
def test_packed_linear_keys_its_cache_on_the_source_parameter():
    """A 1x1 conv hands a fresh ``(C_out, C_in)`` view of its ``(C_out, C_in, 1)`` weight each call: packed once."""
    torch.manual_seed(0)
    owner, p, x = nn.Module(), nn.Parameter(torch.randn(5, 8, 1)), torch.randn(3, 8)
    with torch.no_grad():
        v1, v2 = p[:, :, 0], p[:, :, 0]
        ref = F.linear(x, p[:, :, 0])
        y1 = onednn.packed_linear(owner, x, v1, None, source=p)
        packed = owner._onednn_weight
        y2 = onednn.packed_linear(owner, x, v2, None, source=p)
        assert owner._onednn_weight is packed
        p.mul_(2.0)  # an optimizer step: the source's version changes, the cache follows
        y3 = onednn.packed_linear(owner, x, p[:, :, 0], None, source=p)
    torch.testing.assert_close(y1, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(y2, y1, rtol=0, atol=0)
    torch.testing.assert_close(y3, 2 * y1, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# zero_touch and LayerPlan


def test_zero_touch_gives_trainable_parameters_a_zero_gradient():
    a, b = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(2, 2))
    frozen = nn.Parameter(torch.randn(4), requires_grad=False)
    z = zero_touch([a, frozen, b])
    assert z.shape == () and float(z.detach()) == 0.0 and z.requires_grad
    z.backward()
    assert torch.equal(a.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(2, 2)) and frozen.grad is None
    none = zero_touch([frozen])
    assert none.shape == () and float(none) == 0.0 and not none.requires_grad
    assert float(zero_touch([])) == 0.0


def test_layer_plan_runs_every_branch_not_switched_off():
    plan = LayerPlan(off=frozenset({"ffn"}))
    assert plan.runs("attn") and not plan.runs("ffn")
    assert plan.branch("ffn").open is False and plan.branch("attn").open is True
    assert LayerPlan().runs("ffn")
