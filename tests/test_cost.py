"""nemo_sew.cost: analytic MACs and parameters against the built modules (count_macs, numel)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from conftest import NON_UNIFORM_ARCHS
from nemo_sew import CompressionProfile, SqueezeEncoder, build_encoder
from nemo_sew.arch import PRESETS, EncoderArch, build_arch
from nemo_sew.cost import COMPONENTS, encoder_cost, encoder_params, frame_lengths, macs_per_second
from nemo_sew.evaluate import count_macs, encoder_gmacs_per_second

REL_TOL = 0.02  # the contract with count_macs on every preset
EXACT = 1e-12  # what the small encoders of the option tests hold to (the model counts what torch counts)
WAVE_SAMPLES = 16123  # about 1 s, not a multiple of any stride
MEL_FRAMES = 123


def _input_length(arch: EncoderArch) -> int:
    return MEL_FRAMES if arch.frontend.kind == "mel_stack" else WAVE_SAMPLES


def _module_params(encoder: torch.nn.Module) -> int:
    return sum(p.numel() for p in encoder.parameters())


def measured_macs(encoder: SqueezeEncoder, arch: EncoderArch, profile: CompressionProfile, n: int) -> float:
    """count_macs of one eval forward at batch 1 on ``n`` input samples / frames."""
    encoder.set_profile(profile)
    encoder.eval()
    x = torch.randn(1, arch.frontend.feat_in, n)
    return count_macs(lambda: encoder(audio_signal=x, length=torch.tensor([n])))


def assert_matches_module(
    arch: EncoderArch,
    encoder: SqueezeEncoder,
    profiles: list[CompressionProfile],
    n: int | None = None,
    tol: float = REL_TOL,
) -> list[float]:
    """The helper every arch test goes through: exact parameters, and MACs within ``tol`` of ``count_macs``
    for each profile. Returns the relative MAC errors.

    Add non-uniform archs (mixed block kinds, per-layer head_dim / conv channels) here once the encoder
    builds from an ``EncoderArch`` (see :func:`test_non_uniform_archs`).
    """
    assert float(encoder_params(arch)["total"]) == _module_params(encoder)
    n = _input_length(arch) if n is None else n
    errors = []
    for profile in profiles:
        measured = measured_macs(encoder, arch, profile, n)
        predicted = float(encoder_cost(arch, profile, n).total)
        err = abs(predicted - measured) / measured
        assert err <= tol, f"{profile}: predicted {predicted:.6g} MACs, count_macs {measured:.6g} ({err:.2%})"
        errors.append(err)
    return errors


# --------------------------------------------------------------------------------------------------
# every preset, built once per module


@dataclass
class Built:
    """A preset as built (its own expander) and, lazily, with the factor-agnostic ``phase`` expander."""

    name: str
    arch: EncoderArch
    encoder: SqueezeEncoder
    _phase: tuple[EncoderArch, SqueezeEncoder] | None = field(default=None, repr=False)

    def phase(self) -> tuple[EncoderArch, SqueezeEncoder]:
        if self.arch.expander != "sew":  # w2v2 (no expander) runs every profile as it is
            return self.arch, self.encoder
        if self._phase is None:
            self._phase = (build_arch(self.name, expander="phase"), build_encoder(self.name, expander="phase"))
        return self._phase


@pytest.fixture(scope="module", params=list(PRESETS))
def built(request) -> Built:
    name = request.param
    return Built(name, PRESETS[name], build_encoder(name))


def _grid() -> list[tuple[float, bool]]:
    return [(s, pool) for s in (1, 2, 4) for pool in (False, True)] + [(2.5, False)]


def _pooling(n_layers: int) -> dict[str, tuple[int, ...]]:
    q_pool = tuple(2 if i == n_layers // 2 else 1 for i in range(n_layers))
    return {"q_pool": q_pool, "kv_pool": (2,) * n_layers}


def test_params_match_module(built: Built):
    assert float(encoder_params(built.arch)["total"]) == _module_params(built.encoder)
    arch, encoder = built.phase()
    parts = encoder_params(arch)
    assert float(parts["total"]) == _module_params(encoder)
    assert float(sum(v for k, v in parts.items() if k != "total")) == float(parts["total"])
    assert float(parts["attention_scores"]) == 0.0


def test_macs_match_count_macs(built: Built):
    """Squeeze 1, 2, 4 with and without q/kv pooling, and a real squeeze (CIF), against count_macs."""
    n_layers = built.arch.num_layers
    errors = []
    for squeeze, pool in _grid():
        profile = CompressionProfile(squeeze=squeeze, **(_pooling(n_layers) if pool else {}))
        trained = built.arch.expander == "sew" and squeeze == built.arch.compressor.squeeze and not pool
        arch, encoder = (built.arch, built.encoder) if trained else built.phase()
        errors += assert_matches_module(arch, encoder, [profile])
    if built.arch.expander == "sew":  # key/value pooling leaves the rate alone: SEW's expander runs it
        errors += assert_matches_module(built.arch, built.encoder, [CompressionProfile(kv_pool=(2,) * n_layers)])
    assert max(errors) <= REL_TOL


def test_query_pooling_needs_a_factor_agnostic_expander(built: Built):
    n_layers = built.arch.num_layers
    q_pool = CompressionProfile(q_pool=_pooling(n_layers)["q_pool"])
    if built.arch.expander == "sew":
        with pytest.raises(ValueError, match="query pooling"):
            built.encoder.set_profile(q_pool)
        with pytest.raises(ValueError, match="query pooling"):
            encoder_cost(built.arch, q_pool, 16000)
        with pytest.raises(ValueError, match="squeeze"):
            encoder_cost(built.arch, CompressionProfile(squeeze=4), 16000)
    arch, encoder = built.phase()
    encoder.set_profile(q_pool)
    assert float(encoder_cost(arch, q_pool, _input_length(arch)).total) > 0


# --------------------------------------------------------------------------------------------------
# options the presets do not cover (small encoders)

OPTIONS = {  # preset, build_arch overrides
    "feature_projection": ("tiny_wfe_c", dict(feature_projection=True)),
    "no_feature_layer_norm": ("tiny_mel", dict(feature_layer_norm=False)),
    "cif_alpha": ("tiny_wfe_c", dict(expander="phase", compressor={"cif_alpha": True})),
    "cif_alpha_mel_conformer": ("tiny_mel_conformer", dict(expander="phase", compressor={"cif_alpha": True})),
    "layer_norm_extractor": ("tiny_wfe_c", dict(frontend={"conv_norm": "layer_norm", "conv_bias": True})),
    "trained_squeeze_3": ("tiny_mel", dict(compressor={"squeeze": 3})),
    "even_pos_conv_kernel": ("tiny_wfe_c", dict(expander="phase", compressor={"pos_conv_kernel": 32})),
    "head_dim_32": ("tiny_conformer", dict(blocks={"head_dim": 32})),
    "conv_kernel_15": ("tiny_conformer", dict(blocks={"conv_kernel": 15})),
    "mel_stack_3": ("tiny_mel", dict(frontend={"mel_stack": 3})),
    "per_layer_heads_ffn": (
        "tiny_mel_conformer",
        dict(blocks=[{"heads": 1, "ffn_dims": [256, 256]}, {"heads": 3, "ffn_dims": [768, 768]},
                     {"heads": 2, "ffn_dims": [128, 128]}, {"heads": 3, "ffn_dims": [512, 512]}]),
    ),  # fmt: skip
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_options_match_module(option: str):
    name, arch_kwargs = OPTIONS[option]
    arch = build_arch(name, **arch_kwargs)
    encoder = SqueezeEncoder(arch=arch)
    assert encoder.arch == arch
    n = arch.num_layers
    if arch.expander == "sew":
        profiles = [CompressionProfile(), CompressionProfile(kv_pool=(2,) * n)]
    else:
        profiles = [CompressionProfile(squeeze=s, **_pooling(n)) for s in (1, 2, 2.5)]
    assert_matches_module(arch, encoder, profiles, tol=EXACT)


def _build_from_arch(arch: EncoderArch) -> SqueezeEncoder:
    return SqueezeEncoder(arch=arch.to_dict())


@pytest.mark.parametrize("case", list(NON_UNIFORM_ARCHS))
def test_non_uniform_archs(case: str):
    """Archs today's encoder cannot build (per-layer kinds, head_dim, conv channels, absent branches)."""
    preset, kwargs = NON_UNIFORM_ARCHS[case]
    arch = build_arch(preset, **kwargs)
    encoder = _build_from_arch(arch)
    n = arch.num_layers
    assert_matches_module(arch, encoder, [CompressionProfile(squeeze=s, **_pooling(n)) for s in (1, 2, 2.5)])


# --------------------------------------------------------------------------------------------------
# lengths


@pytest.mark.parametrize("name", ["tiny_mel_conformer", "tiny_conformer", "w2v2_base"])
@pytest.mark.parametrize("squeeze, pool", [(2, False), (3, True), (2.5, True), (1.7, False)])
def test_per_utterance_lengths(name: str, squeeze: float, pool: bool):
    arch = build_arch(name, expander="none" if PRESETS[name].expander == "none" else "phase")
    profile = CompressionProfile(squeeze=squeeze, **(_pooling(arch.num_layers) if pool else {}))
    base = _input_length(arch)
    lengths = torch.tensor([base, base // 2 + 7, base * 3 // 2 - 1, base // 3, base + 1])
    batch = encoder_cost(arch, profile, lengths)
    assert batch.total.shape == lengths.shape
    for i, n in enumerate(lengths.tolist()):
        alone = encoder_cost(arch, profile, n)
        for key in COMPONENTS + ("total",):
            assert float(getattr(batch, key)[i]) == float(getattr(alone, key)), key
        assert int(batch.frames[i]) == int(alone.frames) and int(batch.output_frames[i]) == int(alone.output_frames)
        assert torch.equal(batch.per_layer[i], alone.per_layer)
    # longer input never costs less (component by component)
    sweep = torch.arange(base // 4, 2 * base, 37 if arch.frontend.kind == "mel_stack" else 97)
    cost = encoder_cost(arch, profile, sweep)
    for key in COMPONENTS + ("total",):
        assert bool((getattr(cost, key).diff() >= 0).all()), key
    blocks = cost.attention_proj + cost.attention_scores + cost.ffn + cost.conv_module
    assert torch.allclose(cost.per_layer.sum(-1), blocks)


def test_padded_batch_costs_more_than_real_lengths():
    """count_macs counts padded shapes; the cost model charges real lengths (equal when nothing is padded)."""
    arch, encoder = build_arch("tiny_wfe_c", expander="phase"), build_encoder("tiny_wfe_c", expander="phase")
    profile = CompressionProfile(squeeze=2.5)
    encoder.set_profile(profile)
    encoder.eval()
    for lengths in (torch.tensor([16000, 16000]), torch.tensor([16000, 9000])):
        x = torch.randn(2, 1, int(lengths.max()))
        measured = count_macs(lambda: encoder(audio_signal=x, length=lengths))
        predicted = float(encoder_cost(arch, profile, lengths).total.sum())
        if bool((lengths == lengths.max()).all()):
            assert predicted == measured
        else:
            assert predicted < measured


def test_frame_lengths_match_module():
    for name in ("tiny_wfe_o", "tiny_wfe_c", "tiny_mel"):
        encoder = build_encoder(name)
        lengths = torch.tensor([0, 1, 399, 400, 401, 16000, 16123, 32001])
        assert torch.equal(frame_lengths(PRESETS[name], lengths), encoder.frame_lengths(lengths))
        cost = encoder_cost(PRESETS[name], None, lengths[3:])
        assert torch.equal(cost.output_frames, encoder.output_lengths(lengths[3:]))


# --------------------------------------------------------------------------------------------------
# soft widths and keep probabilities


def _integer_widths(arch: EncoderArch) -> dict[str, torch.Tensor]:
    """The arch's widths as float32 leaves (soft widths at their integer values)."""
    n_ffn = max(len(b.ffn_dims) for b in arch.blocks)
    ffn = [list(b.ffn_dims) + [0] * (n_ffn - len(b.ffn_dims)) for b in arch.blocks]
    return {
        "heads": torch.tensor([float(b.heads) for b in arch.blocks], requires_grad=True),
        "ffn_dims": torch.tensor(ffn, dtype=torch.float32, requires_grad=True),
        "conv_channels": torch.tensor([float(b.conv_channels) for b in arch.blocks], requires_grad=True),
        "frontend_channels": torch.tensor([float(c) for c, _, _ in arch.frontend.conv_layers], requires_grad=True),
    }


def test_soft_widths_and_keep_are_exact_and_differentiable():
    arch = build_arch("tiny_conformer", expander="phase")
    profile = CompressionProfile(squeeze=2.5, q_pool=(2, 1), kv_pool=(2, 2))
    lengths = torch.tensor([16000, 12345, 20011])
    hard = encoder_cost(arch, profile, lengths)
    soft = _integer_widths(arch)
    keep = {
        "attn": torch.ones(3, 2, requires_grad=True),
        "ffn": torch.ones(3, 2, 2, requires_grad=True),
        "conv": torch.ones(2, requires_grad=True),
    }
    cost = encoder_cost(arch, profile, lengths, soft=soft, keep=keep)
    for key in COMPONENTS + ("total",):
        assert torch.equal(getattr(cost, key), getattr(hard, key)), key
    cost.total.sum().backward()
    for name, value in {**soft, **{f"keep_{k}": v for k, v in keep.items()}}.items():
        assert value.grad is not None and bool((value.grad != 0).any()), name
    assert bool((soft["heads"].grad > 0).all()) and bool((keep["attn"].grad > 0).all())

    params_hard = encoder_params(arch)
    soft = _integer_widths(arch)
    params = encoder_params(arch, soft=soft)
    for key in params_hard:
        assert torch.equal(params[key], params_hard[key]), key
    params["total"].backward()
    for name, value in soft.items():
        assert value.grad is not None and bool((value.grad != 0).any()), name


def test_soft_widths_and_keep_scale_the_cost():
    arch = build_arch("tiny_mel_conformer", expander="phase")
    n = arch.num_layers
    full = encoder_cost(arch, 2, 200)
    half_heads = encoder_cost(arch, 2, 200, soft={"heads": torch.tensor([b.heads / 2 for b in arch.blocks])})
    assert torch.allclose(half_heads.attention_proj, full.attention_proj / 2)
    assert torch.allclose(half_heads.attention_scores, full.attention_scores / 2)
    assert torch.equal(half_heads.ffn, full.ffn)
    gated = encoder_cost(arch, 2, 200, keep={"attn": torch.zeros(n), "ffn": torch.full((n, 2), 0.25)})
    assert float(gated.attention_proj) == 0.0 and float(gated.attention_scores) == 0.0
    assert torch.allclose(gated.ffn, full.ffn / 4)
    assert torch.equal(gated.conv_module, full.conv_module)
    # ffn_dims of a transformer block's missing second FFN are ignored
    mixed = build_arch("tiny_mel_conformer", blocks=[{"kind": "transformer"}] * 2 + [{}] * 2)
    widths = torch.tensor([[768.0, 999.0]] * 2 + [[768.0, 768.0]] * 2)
    ignored = encoder_cost(mixed, None, 200, soft={"ffn_dims": widths})
    assert torch.equal(ignored.ffn, encoder_cost(mixed, None, 200).ffn)
    with pytest.raises(ValueError, match="soft heads"):
        encoder_cost(arch, 2, 200, soft={"heads": torch.ones(n + 1)})
    with pytest.raises(ValueError, match="unknown keep"):
        encoder_cost(arch, 2, 200, keep={"layers": torch.ones(n)})


# --------------------------------------------------------------------------------------------------
# conveniences


def test_profile_arch_overrides_and_macs_per_second():
    pruned = CompressionProfile(arch={"blocks": {"heads": 1, "ffn_dims": [256]}})
    assert float(encoder_cost("tiny_mel", pruned, 500).total) == float(
        encoder_cost(build_arch("tiny_mel", blocks={"heads": 1, "ffn_dims": [256]}), None, 500).total
    )
    encoder = build_encoder("tiny_mel")
    gmacs = macs_per_second("tiny_mel", seconds=4.0)
    assert gmacs == pytest.approx(encoder_gmacs_per_second(encoder, seconds=4.0), rel=1e-9)
    assert gmacs == pytest.approx(float(encoder_cost("tiny_mel", None, 400).total) / 4e9, rel=1e-12)
    with pytest.raises(TypeError, match="input_lengths"):
        encoder_cost("tiny_mel")


def test_evaluate_reports_macs_of_each_real_utterance():
    """``evaluate`` and ``sweep`` charge each test utterance its own length: equal to counting that utterance
    alone (not a padded batch, not a fixed 10 s example)."""
    from nemo_sew.evaluate import utterance_macs

    encoder = build_encoder("tiny_mel_conformer", squeeze_sampler={"values": [1, 3]}).eval()
    encoder.set_profile(CompressionProfile(squeeze=3, kv_pool=(2, 1, 2, 1)))
    durations = [1.37, 0.52, 2.0]
    per_utt = utterance_macs(encoder, durations)
    for seconds, macs in zip(durations, per_utt.tolist()):
        n = encoder.layout.length(seconds)
        measured = count_macs(lambda: encoder(audio_signal=torch.randn(1, 80, n), length=torch.tensor([n])))
        assert macs == pytest.approx(measured, rel=1e-12)
    assert per_utt[2] > per_utt[0] > per_utt[1]
