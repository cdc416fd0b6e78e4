"""The analytic cost model's contract (issue 30): what the gates' MAC budget, ``pick --max-gmacs``, the sweep's GMACs
columns and the pruning budget trust from :mod:`nemo_sew.cost`.

* exact MAC counts: the documented conventions written out by hand in Python integers (a long utterance, counts far
  above 2**24, so float32 anywhere on the way would show), and an encoder without blocks against ``count_macs``;
* float64 results of the inputs' batch shape, on the device of the inputs (the meta device stands in for a GPU:
  the budget is computed inside training steps, where a tensor left on the CPU would cost a copy or fail);
* parameters: the built module's ``numel`` for transformer and conformer blocks, each front end, pruned widths,
  the mask embedding, and an encoder above 2**24 parameters built on the meta device;
* the keep tensors I3D gates hand in (:func:`~nemo_sew.cost.branch_keep`), :func:`~nemo_sew.cost.ffn_columns`,
  :meth:`~nemo_sew.cost.Cost.components`, :func:`~nemo_sew.cost.macs_per_second`'s documented defaults;
* every error names what is wrong (the profile checks the encoder's ``set_profile`` shares, bad lengths, shapes).
"""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction

import pytest
import torch

import nemo_sew.cost as cost_module
from nemo_sew import CompressionProfile, SqueezeEncoder
from nemo_sew.arch import BLOCK_KINDS, PRESETS, EncoderArch, build_arch
from nemo_sew.cost import (
    COMPONENTS,
    Cost,
    branch_keep,
    encoder_cost,
    encoder_params,
    ffn_columns,
    macs_per_second,
    validate_profile,
)
from nemo_sew.errors import UserError
from nemo_sew.evaluate import count_macs
from nemo_sew.nn.blocks import ATTENTION, BRANCH_KINDS, FFN

F64 = torch.float64
META = torch.device("meta")
CPU = torch.device("cpu")
FLOAT_FIELDS = COMPONENTS + ("total", "per_layer")
FRAME_FIELDS = ("frames", "squeezed_frames", "output_frames")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# exact counts: the conventions of nemo_sew.cost's docstring, by hand, in Python integers


def hand_macs(arch: EncoderArch, n: int, squeeze: float | None = None, q_pool=None, kv_pool=None) -> dict[str, int]:
    """MACs of one utterance of ``n`` input units, and its frame counts, from the documented conventions: convs as
    ``out_frames * out_channels * in_channels / groups * kernel``, matmuls, attention's two ``T_q x T_k`` products."""
    d, fe, comp = arch.d_model, arch.frontend, arch.compressor
    if fe.conv_layers:
        t, c_in, frontend = n, 1, 0
        for c, k, s in fe.conv_layers:
            t = max((t - k) // s + 1, 0)
            frontend += t * c * c_in * k
            c_in = c
        frames, front_dim = t, c_in
    else:
        frames, front_dim, frontend = n // fe.mel_stack, fe.out_dim, 0
    project = arch.feature_projection if arch.feature_projection is not None else front_dim != d
    k, pad = comp.pos_conv_kernel, comp.pos_conv_kernel // 2
    per_frame = d * (d // comp.pos_conv_groups) * k
    s = Fraction(comp.squeeze if squeeze is None else squeeze)
    if s.denominator == 1 and not comp.cif_alpha:  # SEW: the strided positional conv over every frame
        squeezed = frames // int(s)
        compressor = ((frames + 2 * pad - k) // int(s) + 1) * per_frame
    else:  # CIF: segment means, the stride-1 positional conv (and the weight predictor)
        q = Fraction(frames) / s
        squeezed = max(1, math.floor(q) + (q - math.floor(q) >= Fraction(1, 2)))
        compressor = squeezed * frames * d + (frames + 2 * pad - k + 1) * per_frame
        if comp.cif_alpha:
            compressor += frames * (d * d * 5 + d)
    out = dict(frontend=frontend, projection=frames * front_dim * d if project else 0, compressor=compressor)
    out.update(attention_proj=0, attention_scores=0, ffn=0, conv_module=0)
    t, per_layer = squeezed, []
    for b, qs, ks in zip(arch.blocks, q_pool or (1,) * arch.num_layers, kv_pool or (1,) * arch.num_layers):
        traits = BLOCK_KINDS[b.kind]
        t_in, t_k, t_q = t, -(-t // ks), -(-t // qs)
        inner = b.heads * b.head_dim
        layer = dict(
            attention_proj=2 * d * inner * (t_q + t_k),  # q, out on the queries; k, v on the keys
            attention_scores=2 * inner * t_q * t_k,
            ffn=sum(2 * d * f * (t_in if j < traits.ffns_before_attention else t_q) for j, f in enumerate(b.ffn_dims)),
            conv_module=t_q * (2 * d * b.conv_channels + b.conv_channels * b.conv_kernel + b.conv_channels * d),
        )
        for key, v in layer.items():
            out[key] += v
        per_layer.append(sum(layer.values()))
        t = t_q
    out["expander"] = {"sew": t * d * int(s) * d, "phase": t * d * d + frames * d, "none": 0}[arch.expander]
    out["total"] = sum(out[key] for key in COMPONENTS)
    out.update(per_layer=per_layer, frames=frames, squeezed_frames=squeezed)
    out["output_frames"] = t if arch.expander == "none" else frames
    return out


ODD_BLOCKS = {"heads": 3, "head_dim": 37, "ffn_dims": [1001]}  # odd widths: products keep their odd factors
ODD_CONFORMER = {"kind": "conformer", "heads": 3, "head_dim": 37, "ffn_dims": [1001, 999], "conv_channels": 101,
                 "conv_kernel": 15}  # fmt: skip
ODD_COMPRESSOR = {"pos_conv_kernel": 31, "pos_conv_groups": 13}
ODD_WFE = [[13, 10, 5], [27, 3, 2], [27, 3, 2], [55, 3, 2], [55, 3, 2], [101, 2, 2], [101, 2, 2]]
HOUR_FRAMES, HOUR_SAMPLES = 360_007, 57_600_123  # about an hour of 10 ms frames / 16 kHz samples

EXACT_CASES = {  # arch, profile, input length
    "mel_sew_squeeze_3": (
        lambda: build_arch("tiny_mel", d_model=221, num_layers=2, frontend={"n_mels": 81},
                           compressor={**ODD_COMPRESSOR, "squeeze": 3}, blocks=ODD_BLOCKS),
        CompressionProfile(), HOUR_FRAMES,
    ),
    "mel_phase_integer_squeeze_pooled": (
        lambda: build_arch("tiny_mel", d_model=221, num_layers=3, expander="phase", frontend={"n_mels": 81},
                           compressor=ODD_COMPRESSOR, blocks=ODD_BLOCKS),
        CompressionProfile(squeeze=2, q_pool=(1, 2, 1), kv_pool=(2, 1, 3)), HOUR_FRAMES,
    ),
    "mel_conformer_cif_pooled": (
        lambda: build_arch("tiny_mel", d_model=221, num_layers=2, expander="phase", frontend={"n_mels": 81},
                           compressor=ODD_COMPRESSOR, blocks=ODD_CONFORMER),
        CompressionProfile(squeeze=2.5, q_pool=(2, 1), kv_pool=(1, 2)), HOUR_FRAMES,
    ),
    "wfe_cif_alpha": (
        lambda: build_arch("tiny_wfe_c", d_model=221, num_layers=1, expander="phase", frontend={"conv_layers": ODD_WFE},
                           compressor={**ODD_COMPRESSOR, "cif_alpha": True}, blocks=ODD_BLOCKS),
        CompressionProfile(squeeze=1.7), HOUR_SAMPLES,
    ),
    "wfe_no_expander_pooled": (
        lambda: build_arch("tiny_wfe_o", d_model=221, num_layers=2, frontend={"conv_layers": ODD_WFE},
                           compressor=ODD_COMPRESSOR, blocks=ODD_BLOCKS),
        CompressionProfile(q_pool=(1, 2), kv_pool=(2, 2)), HOUR_SAMPLES,
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EXACT_CASES))
def test_macs_are_exact_in_float64_far_above_2_24(case: str):
    """An hour of audio: every component equals the hand count exactly (float32 anywhere would round it), for
    each utterance of a batch on its own length."""
    make, profile, n = EXACT_CASES[case]
    arch = make()
    lengths = [n, n // 3 + 1, n // 7 - 2]
    cost = encoder_cost(arch, profile, torch.tensor(lengths))
    for i, length in enumerate(lengths):
        want = hand_macs(arch, length, profile.squeeze, profile.q_pool, profile.kv_pool)
        for key in COMPONENTS + ("total",):
            got = getattr(cost, key)
            assert got.dtype == F64 and got.shape == (3,), key
            assert float(got[i]) == want[key], (key, length, float(got[i]) - want[key])
        assert cost.per_layer[i].tolist() == want["per_layer"]
        for key in FRAME_FIELDS:
            assert getattr(cost, key).dtype == torch.long and int(getattr(cost, key)[i]) == want[key], key
    want = hand_macs(arch, n, profile.squeeze, profile.q_pool, profile.kv_pool)
    assert want["total"] > 2**24 and any(float(torch.tensor(v, dtype=torch.float32)) != v for k, v in want.items()
                                         if k in COMPONENTS and v)  # fmt: skip
    alone = encoder_cost(arch, profile, n)  # an int length: 0-dim results
    assert alone.total.shape == () and float(alone.total) == want["total"]


def test_an_encoder_without_blocks_costs_what_count_macs_counts():
    """Front end, compressor and expander alone (no blocks; empty pooling lists are its only valid ones)."""
    for arch, profiles, n in (
        (build_arch("tiny_mel", num_layers=0), [CompressionProfile(q_pool=(), kv_pool=())], 123),
        (build_arch("tiny_wfe_c", num_layers=0, expander="phase"), [CompressionProfile(), CompressionProfile(squeeze=2.5)], 16123),
    ):  # fmt: skip
        encoder = SqueezeEncoder(arch=arch.to_dict()).eval()
        for profile in profiles:
            encoder.set_profile(profile)
            x = torch.randn(1, arch.frontend.feat_in, n)
            measured = count_macs(lambda: encoder(audio_signal=x, length=torch.tensor([n])))
            cost = encoder_cost(arch, profile, torch.tensor([n, n // 2]))
            assert float(cost.total[0]) == measured == hand_macs(arch, n, profile.squeeze)["total"]
            assert cost.per_layer.shape == (2, 0) and cost.per_layer.dtype == F64
            for key in ("attention_proj", "attention_scores", "ffn", "conv_module"):
                assert getattr(cost, key).tolist() == [0.0, 0.0], key


# --------------------------------------------------------------------------------------------------
# dtype and device


def _soft_widths(arch: EncoderArch, batch: int | None = None) -> dict[str, torch.Tensor]:
    """The arch's integer widths as soft widths (with a leading batch dim when ``batch``)."""
    n_ffn = ffn_columns(arch)
    widths = {
        "heads": [float(b.heads) for b in arch.blocks],
        "ffn_dims": [[float(f) for f in b.ffn_dims] + [0.0] * (n_ffn - len(b.ffn_dims)) for b in arch.blocks],
        "conv_channels": [float(b.conv_channels) for b in arch.blocks],
        "frontend_channels": [float(c) for c, _, _ in arch.frontend.conv_layers],
    }
    out = {k: torch.tensor(v, dtype=F64) for k, v in widths.items()}
    out["ffn_dims"] = out["ffn_dims"].reshape(arch.num_layers, n_ffn)
    if batch is not None:
        out = {k: v.expand((batch,) + v.shape) for k, v in out.items()}
    return out


def _keep(arch: EncoderArch, batch: int) -> dict[str, torch.Tensor]:
    n = arch.num_layers
    return {"attn": torch.ones(batch, n), "ffn": torch.ones(batch, n, ffn_columns(arch)), "conv": torch.ones(batch, n)}


DEVICE_ARCHS = {  # arch, profile
    "mel_sew": (lambda: build_arch("tiny_mel"), CompressionProfile()),
    "mel_without_projection": (lambda: build_arch("tiny_mel", frontend={"n_mels": 96}), CompressionProfile()),
    "wfe_cif": (lambda: build_arch("tiny_wfe_c", expander="phase"), CompressionProfile(squeeze=2.5)),
    "wfe_no_expander": (lambda: build_arch("tiny_wfe_o"), CompressionProfile(kv_pool=(2, 2))),
    "conformer_pooled": (
        lambda: build_arch("tiny_mel_conformer", expander="phase"),
        CompressionProfile(squeeze=3, q_pool=(1, 2, 1, 1), kv_pool=(2, 1, 1, 2)),
    ),
    "no_blocks": (lambda: build_arch("tiny_wfe_c", num_layers=0), CompressionProfile()),
}  # fmt: skip


def _length(arch: EncoderArch) -> int:
    return 16123 if arch.frontend.conv_layers else 203


def _check_cost(cost: Cost, device: torch.device, shape: tuple[int, ...], arch: EncoderArch, frames_shape=None) -> None:
    """Every field on ``device``; MACs float64 of ``shape`` (``per_layer``: one more axis), frames long of the
    lengths' shape (``frames_shape``, default ``shape``)."""
    for key in FLOAT_FIELDS + FRAME_FIELDS:
        value = getattr(cost, key)
        assert value.device.type == device.type, (key, value.device)
        assert value.dtype == (torch.long if key in FRAME_FIELDS else F64), (key, value.dtype)
        want = shape + (arch.num_layers,) if key == "per_layer" else shape
        if key in FRAME_FIELDS and frames_shape is not None:
            want = frames_shape
        assert value.shape == want, (key, value.shape)


@pytest.mark.parametrize("source", ["lengths", "soft", "keep", "lists"])
@pytest.mark.parametrize("case", list(DEVICE_ARCHS))
def test_results_are_float64_on_the_device_of_the_inputs(case: str, source: str):
    """The device comes from the first tensor among the soft widths, keep probabilities and lengths; lengths and
    widths given on the CPU or as Python lists join it. Every field: float64 (frames: long), the batch shape."""
    make, profile = DEVICE_ARCHS[case]
    arch = make()
    n = _length(arch)
    lengths = torch.tensor([n, n // 2, n - 7])
    for device in (CPU, META):
        if source == "lengths":
            kwargs = dict(input_lengths=lengths.to(device))
        elif source == "soft":  # soft widths with a leading batch dim, an int length
            kwargs = dict(input_lengths=n, soft={k: v.to(device) for k, v in _soft_widths(arch, 3).items()})
        elif source == "keep":  # keep probabilities on the device, lengths on the CPU
            kwargs = dict(input_lengths=lengths, keep={k: v.to(device) for k, v in _keep(arch, 3).items()})
        else:  # one tensor decides; lists join it
            keep = _keep(arch, 3)
            kwargs = dict(
                input_lengths=n,
                keep={"attn": keep["attn"].to(device), **{k: keep[k].tolist() for k in ("ffn", "conv") if keep[k].numel()}},
                soft={k: v.tolist() for k, v in _soft_widths(arch).items() if v.numel()},  # (no list has shape (0, 1))
            )
        cost = encoder_cost(arch, profile, **kwargs)
        _check_cost(cost, device, (3,), arch, frames_shape=tuple(torch.as_tensor(kwargs["input_lengths"]).shape))
        if device == CPU:  # the integer widths and all-ones keep change nothing
            plain = encoder_cost(arch, profile, lengths if source in ("lengths", "keep") else n)
            for key in COMPONENTS + ("total",):
                assert torch.equal(getattr(cost, key), getattr(plain, key).expand(3)), key


def test_soft_float32_widths_with_leading_dims_count_in_float64():
    """Pruning's expected widths come in float32; a leading dim keeps them from being promoted by 0-dim float64
    tensors, so the cost model casts them: exact float64 results (the front end's channels are the case)."""
    arch = build_arch("tiny_wfe_c", expander="phase")
    soft = {k: v.to(torch.float32) for k, v in _soft_widths(arch, 2).items()}
    soft["frontend_channels"] = soft["frontend_channels"] + torch.tensor([[0.0], [0.1]])  # one fractional width
    n = 16123
    cost = encoder_cost(arch, 2.5, n, soft=soft)
    params = encoder_params(arch, soft=soft)
    for key in COMPONENTS + ("total",):
        assert cost.components()[key].dtype == F64 and params[key].dtype == F64, key
    plain = encoder_cost(arch, 2.5, n)
    assert torch.equal(cost.total[0], plain.total) and torch.equal(params["total"][0], encoder_params(arch)["total"])
    c = soft["frontend_channels"][1].to(F64)  # the float32 value 0.1 off each width, exactly in float64
    t, c_in, want = n, 1.0, 0.0
    for i, (_, k, s) in enumerate(arch.frontend.conv_layers):
        t = (t - k) // s + 1
        want += t * float(c[i]) * c_in * k
        c_in = float(c[i])
    assert float(cost.frontend[1]) == pytest.approx(want, rel=1e-15)


def test_params_are_float64_on_the_device_of_the_soft_widths():
    for arch in (build_arch("tiny_mel_conformer"), build_arch("tiny_wfe_c", num_layers=0)):
        for device in (CPU, META):
            soft = {k: v.to(device) for k, v in _soft_widths(arch).items()}
            parts = encoder_params(arch, soft=soft, mask_emb=True)
            for key, value in parts.items():
                assert value.device.type == device.type and value.dtype == F64 and value.shape == (), key
        plain = encoder_params(arch)
        assert all(v.device == CPU and v.dtype == F64 for v in plain.values())


# --------------------------------------------------------------------------------------------------
# parameters


PARAM_ARCHS = {
    "mel_transformer_sew": lambda: build_arch("tiny_mel"),
    "mel_no_projection_no_feature_norm": lambda: build_arch("tiny_mel", frontend={"n_mels": 96}, feature_layer_norm=False),
    "wfe_o_layer_norm_bias": lambda: build_arch("tiny_wfe_o", frontend={"conv_norm": "layer_norm", "conv_bias": True}),
    "wfe_c_conformer_phase": lambda: build_arch("tiny_conformer", expander="phase"),
    "materialised_widths": lambda: build_arch(
        "tiny_mel_conformer", expander="phase",
        blocks=[{"heads": 0, "ffn_dims": [0, 96]}, {"heads": 1, "conv_channels": 0}, {"ffn_dims": [64, 0]},
                {"heads": 2, "head_dim": 16, "conv_channels": 48}],
    ),
    "mixed_kinds_cif_alpha": lambda: build_arch(
        "tiny_wfe_c", num_layers=3, expander="phase", compressor={"cif_alpha": True},
        blocks=[{"kind": "conformer", "conv_channels": 64}, {"heads": 0}, {"head_dim": 32, "ffn_dims": [96]}],
    ),
    "no_blocks": lambda: build_arch("tiny_mel", num_layers=0),
}  # fmt: skip


@pytest.mark.parametrize("case", list(PARAM_ARCHS))
def test_params_match_the_built_encoder(case: str):
    arch = PARAM_ARCHS[case]()
    for mask_emb in (False, True):
        parts = encoder_params(arch, mask_emb=mask_emb)
        assert list(parts) == [*COMPONENTS, "mask_emb", "other", "total"]
        assert float(parts["total"]) == _numel(SqueezeEncoder(arch=arch.to_dict(), mask_emb=mask_emb))
        assert float(parts["total"]) == float(sum(v for k, v in parts.items() if k != "total"))
        assert float(parts["mask_emb"]) == (arch.d_model if mask_emb else 0)
        conformers = sum(b.kind == "conformer" for b in arch.blocks)
        assert float(parts["other"]) == 2 * arch.d_model * (1 + conformers)  # encoder norm, conformer final norms
        assert float(parts["attention_scores"]) == 0.0


@pytest.mark.parametrize("name", ["w2v2_base", "conformer_sew_small"])
def test_params_of_large_encoders_are_exact(name: str):
    """Beyond 2**24 parameters (built on the meta device: shapes only)."""
    with torch.device("meta"):
        encoder = SqueezeEncoder(arch=PRESETS[name].to_dict(), mask_emb=True)
    total = encoder_params(name, mask_emb=True)["total"]
    assert total.dtype == F64 and float(total) == _numel(encoder) > 2**24


# --------------------------------------------------------------------------------------------------
# branch kinds: the recipe (nemo_sew.nn.units.BranchUnits) adds a kind's MACs and parameters to its components


def test_branch_kinds_add_into_their_components_and_a_component_nobody_counts_is_zero(monkeypatch):
    arch = build_arch("tiny_mel_conformer", expander="phase")
    lengths = torch.tensor([400, 311])
    base, base_params = encoder_cost(arch, 2, lengths), encoder_params(arch)
    # a second kind counting into ``ffn`` (a twin of the FFN declaration): the two add up
    monkeypatch.setattr(cost_module, "BRANCH_KINDS", BRANCH_KINDS + (dataclasses.replace(FFN, name="ffn_twin"),))
    twin, twin_params = encoder_cost(arch, 2, lengths), encoder_params(arch)
    assert torch.equal(twin.ffn, 2 * base.ffn) and torch.equal(twin.total, base.total + base.ffn)
    assert torch.equal(twin.attention_proj, base.attention_proj) and torch.equal(twin.conv_module, base.conv_module)
    assert torch.allclose(twin.per_layer.sum(-1), base.per_layer.sum(-1) + base.ffn, rtol=1e-15)
    assert float(twin_params["ffn"]) == 2 * float(base_params["ffn"])
    assert float(twin_params["total"]) == float(base_params["total"] + base_params["ffn"])
    # no kind counts ``conv_module``: a float64 zero of the batch shape, on the inputs' device
    monkeypatch.setattr(cost_module, "BRANCH_KINDS", (ATTENTION, FFN))
    for device in (CPU, META):
        no_conv = encoder_cost(arch, 2, lengths.to(device))
        _check_cost(no_conv, device, (2,), arch)
    no_conv, no_conv_params = encoder_cost(arch, 2, lengths), encoder_params(arch)
    assert no_conv.conv_module.tolist() == [0.0, 0.0] and torch.equal(no_conv.total, base.total - base.conv_module)
    assert float(no_conv_params["conv_module"]) == 0.0
    assert float(no_conv_params["total"]) == float(base_params["total"] - base_params["conv_module"])


# --------------------------------------------------------------------------------------------------
# what I3D gates hand in, and the shapes they must have


def test_branch_keep_places_each_branch_and_opens_the_rest():
    arch = build_arch("tiny_mel_conformer", expander="phase")  # 4 conformer layers: attn, ffn1, ffn2, conv
    values = {
        (0, "attn"): torch.tensor([0.0, 0.5, 1.0], dtype=F64),
        (1, "ffn2"): torch.tensor([0.25, 0.25, 0.25], dtype=F64),
        (2, "ffn1"): torch.tensor([1.0, 0.0, 1.0], dtype=F64),
        (3, "conv"): torch.tensor([0.0, 0.0, 1.0], dtype=F64),
    }
    keep = branch_keep(arch, values, 3, CPU)
    assert {k: tuple(v.shape) for k, v in keep.items()} == {"attn": (3, 4), "ffn": (3, 4, 2), "conv": (3, 4)}
    assert all(v.dtype == F64 and v.device == CPU for v in keep.values())
    want = {k: torch.ones_like(v) for k, v in keep.items()}
    want["attn"][:, 0] = values[(0, "attn")]
    want["ffn"][:, 1, 1] = values[(1, "ffn2")]
    want["ffn"][:, 2, 0] = values[(2, "ffn1")]
    want["conv"][:, 3] = values[(3, "conv")]
    for name in keep:
        assert torch.equal(keep[name], want[name]), name
    # what it means for the cost: uniform layers without pooling, so each branch is an equal share of its component
    n = 400
    full, gated = encoder_cost(arch, 2, n), encoder_cost(arch, 2, torch.tensor([n] * 3), keep=keep)
    assert torch.allclose(gated.attention_proj, full.attention_proj * torch.tensor([3 / 4, 7 / 8, 1.0], dtype=F64))
    assert torch.allclose(gated.ffn, full.ffn * (1 - torch.tensor([0.75, 0.75 + 1, 0.75], dtype=F64) / 8))
    assert torch.allclose(gated.conv_module, full.conv_module * torch.tensor([3 / 4, 3 / 4, 1.0], dtype=F64))
    # a transformer's one FFN is its column 0; the device is the caller's
    transformer = build_arch("tiny_mel")
    keep = branch_keep(transformer, {(5, "ffn"): torch.zeros(2, device=META)}, 2, META)
    assert {k: tuple(v.shape) for k, v in keep.items()} == {"attn": (2, 6), "ffn": (2, 6, 1), "conv": (2, 6)}
    assert all(v.device.type == "meta" and v.dtype == F64 for v in keep.values())
    ffn = branch_keep(transformer, {(5, "ffn"): torch.zeros(2, dtype=F64)}, 2, CPU)["ffn"]
    assert ffn[:, 5, 0].tolist() == [0.0, 0.0] and bool((ffn[:, :5] == 1).all())


def test_ffn_columns_and_the_shapes_of_an_encoder_without_blocks():
    assert ffn_columns(build_arch("tiny_mel")) == 1
    assert ffn_columns(build_arch("tiny_mel_conformer")) == 2
    assert ffn_columns(build_arch("tiny_mel_conformer", blocks=[{"kind": "transformer"}] + [{}] * 3)) == 2
    empty = build_arch("tiny_mel", num_layers=0)
    assert ffn_columns(empty) == 1
    keep = branch_keep(empty, {}, 2, CPU)
    assert {k: tuple(v.shape) for k, v in keep.items()} == {"attn": (2, 0), "ffn": (2, 0, 1), "conv": (2, 0)}
    plain = encoder_cost(empty, None, 300)
    given = encoder_cost(empty, None, 300, keep=keep, soft={"heads": torch.zeros(0), "ffn_dims": torch.zeros(0, 1)})
    assert torch.equal(given.total, plain.total.expand(2)) and given.per_layer.shape == (2, 0)
    with pytest.raises(ValueError, match=re.escape("expected keep ffn of shape (..., 0, 1), got (2, 0, 2)")):
        encoder_cost(empty, None, 300, keep={"ffn": torch.zeros(2, 0, 2)})


def test_components_are_the_breakdown_and_total_in_data_flow_order():
    arch = build_arch("tiny_wfe_c", expander="phase")
    cost = encoder_cost(arch, 2.5, torch.tensor([16000, 8000]))
    parts = cost.components()
    assert list(parts) == [*COMPONENTS, "total"]
    assert all(parts[k] is getattr(cost, k) for k in parts)
    assert torch.equal(sum(parts[k] for k in COMPONENTS), parts["total"])
    # the frames the blocks see (reports print them beside the MACs)
    assert cost.squeezed_frames.tolist() == [hand_macs(arch, n, 2.5)["squeezed_frames"] for n in (16000, 8000)]


# --------------------------------------------------------------------------------------------------
# profiles: the checks the encoder's set_profile shares (every message names the problem)


def test_sew_expander_runs_only_its_trained_squeeze():
    with pytest.raises(UserError, match=re.escape(
        "this encoder cannot run at squeeze 4.0 (an integer): it was built with a fixed squeeze of 2; supported: "
        "only 2 (SEW's upsampler expands by exactly that factor). Train with a squeeze_sampler"
    )):  # fmt: skip
        encoder_cost("tiny_mel", 4, 100)
    with pytest.raises(UserError, match=re.escape("cannot run at squeeze 2.5 (a fractional rate): it was built")):
        encoder_cost("tiny_mel", 2.5, 100)
    assert float(encoder_cost("tiny_mel", 2.0, 100).total) == float(encoder_cost("tiny_mel", None, 100).total)


def test_a_squeeze_below_one_is_refused_by_the_shared_check():
    """``CompressionProfile`` refuses it first; ``validate_profile`` (what ``set_profile`` and the cost model call)
    still names it for a profile that skipped that check."""
    profile = CompressionProfile()
    object.__setattr__(profile, "squeeze", 0.5)
    with pytest.raises(UserError, match=r"^expected a squeeze factor >= 1, got 0\.5$"):
        validate_profile(PRESETS["tiny_mel"], profile)


def test_pooling_strides_are_checked_per_layer():
    arch = PRESETS["tiny_mel"]  # 6 layers, SEW's expander
    unpooled = float(encoder_cost(arch, None, 500).total)
    assert float(encoder_cost(arch, CompressionProfile(q_pool=(1,) * 6), 500).total) == unpooled  # strides of 1
    assert float(encoder_cost(arch, CompressionProfile(kv_pool=(2,) * 6), 500).total) < unpooled
    for profile, message in (
        (CompressionProfile(q_pool=(1, 1)), "expected q_pool to list 6 strides >= 1 (one per layer), got [1, 1]"),
        (CompressionProfile(kv_pool=(2, 2)), "expected kv_pool to list 6 strides >= 1 (one per layer), got [2, 2]"),
        (CompressionProfile(kv_pool=(1, 1, 1, 1, 1, 0)),
         "expected kv_pool to list 6 strides >= 1 (one per layer), got [1, 1, 1, 1, 1, 0]"),
        (CompressionProfile(q_pool=(1, 1, 2, 1, 1, 1)),
         "query pooling changes the output rate; SEW's fixed upsampler cannot expand it"),
    ):  # fmt: skip
        with pytest.raises(UserError, match="^" + re.escape(message) + "$"):
            encoder_cost(arch, profile, 500)
    empty = build_arch("tiny_mel", num_layers=0)  # no layers: empty stride lists are the valid ones
    assert float(encoder_cost(empty, CompressionProfile(q_pool=(), kv_pool=()), 500).total) == float(
        encoder_cost(empty, None, 500).total
    )


def test_a_profile_may_carry_the_arch_it_runs():
    pruned = build_arch("tiny_mel", blocks={"heads": 1, "ffn_dims": [256]})
    for arch in (pruned, {"blocks": {"heads": 1, "ffn_dims": [256]}}):
        cost = encoder_cost("tiny_mel", CompressionProfile(arch=arch), 500)
        assert float(cost.total) == float(encoder_cost(pruned, None, 500).total)
    assert float(cost.total) < float(encoder_cost("tiny_mel", None, 500).total)


def test_bad_inputs_name_the_problem():
    arch = build_arch("tiny_mel_conformer")  # 4 layers, 2 FFN columns
    with pytest.raises(TypeError, match=r"^input_lengths is required: samples \(wfe_c, wfe_o\) or 10 ms frames \(mel_stack\)$"):
        encoder_cost(arch, None)
    with pytest.raises(TypeError, match=r"^expected integer input lengths, got dtype torch\.float32$"):
        encoder_cost(arch, None, torch.tensor([400.0]))
    with pytest.raises(ValueError, match=re.escape(
        "unknown soft widths ['head']; expected a subset of ['heads', 'ffn_dims', 'conv_channels', 'frontend_channels']"
    )):  # fmt: skip
        encoder_cost(arch, None, 400, soft={"head": torch.ones(4)})
    with pytest.raises(ValueError, match=re.escape("expected soft ffn_dims of shape (..., 4, 2), got (4, 1)")):
        encoder_cost(arch, None, 400, soft={"ffn_dims": torch.ones(4, 1)})
    with pytest.raises(ValueError, match=re.escape("expected keep attn of shape (..., 4), got (3, 5)")):
        encoder_cost(arch, None, 400, keep={"attn": torch.ones(3, 5)})
    with pytest.raises(ValueError, match=re.escape("unknown keep probabilities ['layers']; expected a subset of")):
        encoder_cost(arch, None, 400, keep={"layers": torch.ones(4)})


# --------------------------------------------------------------------------------------------------
# macs_per_second: documented defaults (10 s at 16 kHz, 10 ms hops) and the profile


def test_macs_per_second_defaults_and_profile():
    wave, mel = build_arch("tiny_wfe_c", expander="phase"), PRESETS["tiny_mel"]
    per_second = lambda arch, profile, n, seconds=10.0: float(encoder_cost(arch, profile, n).total) / 1e9 / seconds  # noqa: E731
    assert macs_per_second(wave) == per_second(wave, None, 160_000)  # 10 s of 16 kHz samples
    assert macs_per_second(mel) == per_second(mel, None, 1000)  # 10 s of 10 ms frames
    assert macs_per_second(wave, sample_rate=8000) == per_second(wave, None, 80_000)
    assert macs_per_second(mel, hop_seconds=0.02) == per_second(mel, None, 500)
    assert macs_per_second(mel, seconds=3.0) == per_second(mel, None, 300, 3.0)
    profile = CompressionProfile(squeeze=3, kv_pool=(2, 2))
    assert macs_per_second(wave, profile) == per_second(wave, profile, 160_000)
    assert macs_per_second(wave, profile) < macs_per_second(wave)
