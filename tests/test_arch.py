"""EncoderArch as data: presets are values, YAML round trips, overrides, non-uniform blocks, residual
branches switched off (pre- and post-LN), typed options, and the pre-arch config / checkpoint layout."""

import dataclasses

import pytest
import torch
import yaml

import nemo_sew
from nemo_sew import PRESETS, CompressionProfile, EncoderArch, build_arch, build_encoder
from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.nn.blocks import CLOSED, BlockOptions, LayerPlan, build_block
from nemo_sew.options import LearnedRate, Masking, upgrade_encoder_config, upgrade_encoder_overrides


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_yaml(name):
    arch = PRESETS[name]
    text = yaml.safe_dump(arch.to_dict())
    assert EncoderArch.from_dict(yaml.safe_load(text)) == arch
    assert build_arch(name) == arch


def test_overrides_change_only_what_they_name():
    base = PRESETS["sew_tiny"]
    arch = build_arch("sew_tiny", compressor={"squeeze": 4}, blocks={"ffn_dims": [1024]})
    assert arch.compressor == dataclasses.replace(base.compressor, squeeze=4)
    assert all(b.ffn_dims == (1024,) and b.heads == 8 for b in arch.blocks)
    assert arch.frontend == base.frontend and arch.d_model == base.d_model
    # a width override rescales what the preset derived from the width: sew_small at 512 is sew_tiny
    assert build_arch("sew_small", d_model=512) == PRESETS["sew_tiny"]
    # a kind change brings that kind's defaults (two FFNs, a conv module of d_model channels)
    conformer = build_arch("tiny_mel", blocks={"kind": "conformer"})
    assert conformer.blocks[0].ffn_dims == (768, 768) and conformer.blocks[0].conv_channels == 192
    with pytest.raises(ValueError, match="unknown encoder arch fields \\['num_heads'\\]"):
        build_arch("sew_tiny", num_heads=4)
    with pytest.raises(ValueError, match="unknown block fields"):
        build_arch("sew_tiny", blocks={"ffn_dim": 4})
    with pytest.raises(ValueError, match="ffn_dims with that many entries"):
        build_arch("tiny_mel_conformer", blocks={"ffn_dims": [256]})
    with pytest.raises(ValueError, match="odd depthwise kernel"):
        build_arch("tiny_mel_conformer", blocks={"conv_kernel": 14})


def test_recipes_name_presets_instead_of_copying_numbers():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "recipes"
    for path in list(root.glob("*.yaml")) + list((root / "librispeech").glob("*.yaml")):
        encoder = (yaml.safe_load(path.read_text()).get("model") or {}).get("encoder") or {}
        copied = sorted(set(encoder) & {"d_model", "num_layers", "num_heads", "ffn_dim", "frontend", "wfe_c", "squeeze"})
        assert not copied, f"{path.name} copies preset numbers {copied}; name a preset and override arch fields"


def _run(enc, lengths):
    x = torch.randn(len(lengths), enc.layout.feat_in, max(lengths))
    with torch.no_grad():
        batched, b_len = enc(audio_signal=x, length=torch.tensor(lengths))
        worst = 0.0
        for i, n in enumerate(lengths):
            y, _ = enc(audio_signal=x[i : i + 1, :, :n], length=torch.tensor([n]))
            worst = max(worst, (y[0] - batched[i, :, : y.shape[-1]]).abs().max().item())
    return batched, b_len, worst


@pytest.mark.parametrize("kind", ["transformer", "conformer"])
def test_non_uniform_blocks_build_and_keep_padding_out(kind):
    blocks = [
        {"kind": kind, "heads": 3, "ffn_dims": [96] * (1 if kind == "transformer" else 2)},
        {"kind": kind, "heads": 0},  # no attention branch
        {"kind": kind, "heads": 1, "head_dim": 16, "ffn_dims": [0] * (1 if kind == "transformer" else 2)},
    ]
    if kind == "conformer":
        blocks[2]["conv_channels"] = 24
    arch = build_arch("tiny_mel", num_layers=3, d_model=64, blocks=blocks)
    enc = SqueezeEncoder(arch=arch, squeeze_sampler={"values": [1, 2]}).eval()
    assert [sorted(layer.branch_names) for layer in enc.layers][1] == sorted({"transformer": ["ffn"], "conformer": ["ffn1", "conv", "ffn2"]}[kind])
    assert "ffn" not in enc.layers[2].branch_names and "ffn1" not in enc.layers[2].branch_names
    if kind == "conformer":
        assert enc.layers[2].conv.body.depthwise.weight.shape[0] == 24
    for profile in (CompressionProfile(squeeze=2), CompressionProfile(squeeze=1, q_pool=(1, 2, 1), kv_pool=(2, 2, 2))):
        enc.set_profile(profile)
        _, _, worst = _run(enc, [301, 157, 41])
        assert worst <= 1e-4


@pytest.mark.parametrize("post_norm", [False, True], ids=["pre-LN", "post-LN"])
@pytest.mark.parametrize("kind", ["transformer", "conformer"])
def test_a_switched_off_branch_is_an_exact_identity(kind, post_norm):
    spec = build_arch("tiny_mel", d_model=64, blocks={"kind": kind}).blocks[0]
    block = build_block(spec, BlockOptions(64, layer_norm_first=not post_norm, dropout=0.0, attention_dropout=0.0)).eval()
    x, lengths = torch.randn(2, 9, 64), torch.tensor([9, 6])
    names = block.branch_names
    with torch.no_grad():
        for name in names:
            branch = block.branches()[name]
            y, y_len = branch(x, lengths, LayerPlan(), CLOSED)
            assert torch.equal(y, x) and torch.equal(y_len, lengths), name  # bit-exact, norm included
            on, _ = branch(x, lengths, LayerPlan())
            assert not torch.allclose(on, x)  # switched on, it changes the stream
        # every branch off: the block is its final norm (conformer) or nothing (transformer)
        y, _, taken = block(x, lengths, LayerPlan(off=frozenset(names)))
        assert taken == {}  # an ungated block takes no gate decisions
        expected = block.final_norm(x) if block.final_norm is not None else x
        assert torch.equal(y, expected)
        # with query pooling, an off attention branch still pools the residual stream
        y, y_len = block.branches()["attn"](x, lengths, LayerPlan(q_stride=2), CLOSED)
        assert y.shape[1] == 5 and y_len.tolist() == [5, 3]


def test_post_ln_branch_norm_is_after_the_sum_and_pre_ln_before():
    spec = build_arch("tiny_mel", d_model=32, blocks={"heads": 1, "head_dim": 32}).blocks[0]
    x, lengths = torch.randn(1, 5, 32) * 3 + 1, torch.tensor([5])
    post = build_block(spec, BlockOptions(32, layer_norm_first=False, dropout=0.0, attention_dropout=0.0)).eval()
    pre = build_block(spec, BlockOptions(32, layer_norm_first=True, dropout=0.0, attention_dropout=0.0)).eval()
    with torch.no_grad():
        y_post, _ = post.ffn(x, lengths, LayerPlan())
        y_pre, _ = pre.ffn(x, lengths, LayerPlan())
    assert torch.allclose(y_post.mean(-1), torch.zeros(1, 5), atol=1e-5)  # normalised output
    assert not torch.allclose(y_pre.mean(-1), torch.zeros(1, 5), atol=1e-2)  # residual stream keeps its scale


def test_learned_rate_and_masking_check_themselves():
    with pytest.raises(ValueError, match="1 <= min < max"):
        LearnedRate(min=0.5, max=4.0)
    with pytest.raises(ValueError, match="init in \\[min, max\\]"):
        LearnedRate(init=5.0, min=1.0, max=4.0)
    with pytest.raises(ValueError, match="target >= 1"):
        LearnedRate(target=0.5)
    with pytest.raises(ValueError, match="unknown learned_rate options"):
        build_encoder("tiny_mel", learned_rate={"initial": 2.0})
    with pytest.raises(ValueError, match="1 <= min < max"):
        build_encoder("tiny_mel", learned_rate={"init": 2.0, "min": 0.5, "max": 4.0})
    assert LearnedRate(max=4.0).with_defaults(2) == LearnedRate(init=2.0, max=4.0, target=2.0)
    with pytest.raises(ValueError, match="time_prob in \\[0, 1\\]"):
        Masking(time_prob=1.5)
    with pytest.raises(ValueError, match="mask embedding"):
        build_encoder("tiny_mel", masking={"time_prob": 0.5})
    assert Masking.of({"time_prob": 0.0}) is None  # nothing to do


def test_encoder_takes_few_arguments():
    import inspect

    params = [p for p in inspect.signature(SqueezeEncoder.__init__).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert len(params) - 1 <= 12


# --------------------------------------------------------------------------------------------------
# the pre-arch layout

LEGACY_DEMO_ENCODER = {  # recipes/ctc_char_tiny_mel.yaml before EncoderArch (flat SqueezeEncoder arguments)
    "_target_": "nemo_sew.SqueezeEncoder", "frontend": "mel_stack", "feat_in": 80, "mel_stack": 2, "d_model": 64,
    "num_layers": 2, "num_heads": 2, "head_dim": 32, "ffn_dim": 128, "block": "conformer", "conv_kernel": 15,
    "layer_norm_first": True, "squeeze": 2, "pos_conv_kernel": 31, "pos_conv_groups": 16, "upsample": True,
    "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0, "feature_dropout": 0.0, "layerdrop": 0.0,
}  # fmt: skip


def _legacy_local(key: str) -> str:
    """Today's layer-parameter name -> its name before blocks were residual branches (the test's own table)."""
    for new, old in (("attn.body.", "attention."), ("attn.norm.", "attn_norm."), ("ffn.body.", "ffn."),
                     ("ffn.norm.", "ffn_norm."), ("ffn1.body.", "ffn1."), ("ffn1.norm.", "ffn1_norm."),
                     ("ffn2.body.", "ffn2."), ("ffn2.norm.", "ffn2_norm."), ("conv.norm.", "conv.pre_norm."),
                     ("conv.body.", "conv.")):  # fmt: skip
        if key.startswith(new):
            return old + key[len(new):]
    return key


def _legacy_state_dict(state: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in state.items():
        if key.startswith(prefix + "layers."):
            index, _, local = key[len(prefix + "layers."):].partition(".")
            key = f"{prefix}layers.{index}.{_legacy_local(local)}"
        out[key] = value
    return out


def test_legacy_flat_config_builds_the_same_arch():
    new = upgrade_encoder_config(LEGACY_DEMO_ENCODER)
    assert set(new) == {"_target_", "arch", "dropout"}
    arch = EncoderArch.from_dict(new["arch"])
    expected = build_arch("tiny_mel_conformer", num_layers=2, d_model=64,
                          blocks={"heads": 2, "head_dim": 32, "ffn_dims": [128, 128], "conv_kernel": 15})  # fmt: skip
    assert arch == expected
    # a stochastic legacy config got the factor-agnostic expander when none was named
    stochastic = upgrade_encoder_config({**LEGACY_DEMO_ENCODER, "squeeze_sampler": {"values": [1, 2]}})
    assert stochastic["arch"]["expander"] == "phase"
    assert upgrade_encoder_overrides({"dropout": 0.1, "layerdrop": 0.05, "mask_emb": True}) == {
        "dropout": {"hidden": 0.1, "layerdrop": 0.05}, "mask_emb": True}
    with pytest.raises(ValueError, match="under arch"):
        upgrade_encoder_overrides({"d_model": 96})


def test_legacy_state_dict_loads_with_the_same_outputs():
    torch.manual_seed(0)
    enc = SqueezeEncoder(**{k: v for k, v in LEGACY_DEMO_ENCODER.items() if k != "_target_"}).eval()
    legacy = _legacy_state_dict(enc.state_dict())
    assert any(".attention." in k for k in legacy) and any(".conv.pre_norm." in k for k in legacy)
    fresh = SqueezeEncoder(**{k: v for k, v in LEGACY_DEMO_ENCODER.items() if k != "_target_"}).eval()
    fresh.load_state_dict(legacy)
    x, lengths = torch.randn(2, 80, 160), torch.tensor([160, 97])
    with torch.no_grad():
        torch.testing.assert_close(fresh(audio_signal=x, length=lengths)[0], enc(audio_signal=x, length=lengths)[0], rtol=0, atol=0)


def test_nemo_file_in_the_pre_arch_layout_restores_with_the_same_outputs(tmp_path):
    """Build a .nemo as the code before EncoderArch wrote it (flat encoder config, old parameter names), by
    rewriting one saved today, and restore it with NeMo's own restore_from."""
    import tarfile

    from omegaconf import OmegaConf

    from nemo_sew.models.ctc import SqueezeCTCModel

    labels = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]
    cfg = OmegaConf.create({
        "sample_rate": 16000, "labels": labels,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "features": 80, "window_stride": 0.01, "dither": 0.0, "pad_to": 0},
        "spec_augment": None, "encoder": LEGACY_DEMO_ENCODER,
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 64,
                    "num_classes": len(labels), "vocabulary": labels},
        "profile": {"squeeze": 2.0},
    })  # fmt: skip
    torch.manual_seed(0)
    model = SqueezeCTCModel(cfg=cfg).eval()
    assert "arch" in model.cfg.encoder and "d_model" not in model.cfg.encoder  # stored in today's layout
    today = tmp_path / "today.nemo"
    model.save_to(str(today))
    # rewrite it into the old layout: flat encoder config, old parameter names
    unpacked = tmp_path / "unpacked"
    with tarfile.open(today) as tar:
        tar.extractall(unpacked)
    config_path = next(unpacked.rglob("model_config.yaml"))
    old_cfg = OmegaConf.load(config_path)
    old_cfg.encoder = LEGACY_DEMO_ENCODER
    OmegaConf.save(old_cfg, config_path)
    weights_path = next(unpacked.rglob("model_weights.ckpt"))
    torch.save(_legacy_state_dict(torch.load(weights_path, weights_only=True), "encoder."), weights_path)
    old = tmp_path / "pre_arch.nemo"
    with tarfile.open(old, "w") as tar:
        for item in unpacked.iterdir():
            tar.add(item, arcname=f"./{item.name}")
    restored = nemo_sew.SqueezeCTCModel.restore_from(str(old), map_location="cpu").eval()
    assert EncoderArch.from_dict(OmegaConf.to_container(restored.cfg.encoder.arch)) == model.encoder.arch
    wave, lengths = torch.randn(2, 16000), torch.tensor([16000, 9000])
    with torch.no_grad():
        a = model(input_signal=wave, input_signal_length=lengths)[0]
        b = restored(input_signal=wave, input_signal_length=lengths)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_new_block_kind_is_one_traits_entry_and_one_builder(monkeypatch):
    """A 'macaron' block (FFN/2, attention, FFN/2, final norm: a conformer without its conv module) needs
    only its BlockTraits and a builder; the encoder, the cost model and the parameter count follow."""
    from nemo_sew import arch as arch_module
    from nemo_sew.arch import BlockTraits
    from nemo_sew.cost import encoder_cost, encoder_params
    from nemo_sew.evaluate import count_macs
    from nemo_sew.nn import blocks

    def macaron(spec, o):
        return {
            "ffn1": blocks._ffn(spec.ffn_dims[0], o, False, "swish", scale=0.5),
            "attn": blocks._attn(spec, o, False),
            "ffn2": blocks._ffn(spec.ffn_dims[1], o, False, "swish", scale=0.5),
        }, o.norm()

    monkeypatch.setitem(arch_module.BLOCK_KINDS, "macaron", BlockTraits(ffns=2, ffns_before_attention=1, final_norm=True))
    monkeypatch.setitem(blocks.BLOCK_BUILDERS, "macaron", macaron)
    arch = build_arch("tiny_mel", num_layers=2, d_model=64, expander="phase", blocks=[{"kind": "macaron", "heads": 1}, {}])
    assert arch.blocks[0].ffn_dims == (256, 256) and arch.blocks[0].conv_channels == 0
    enc = SqueezeEncoder(arch=arch).eval()
    assert enc.layers[0].branch_names == ("ffn1", "attn", "ffn2")
    assert float(encoder_params(arch)["total"]) == sum(p.numel() for p in enc.parameters())
    enc.set_profile(CompressionProfile(squeeze=2, q_pool=(2, 1), kv_pool=(1, 2)))
    x = torch.randn(1, 80, 150)
    measured = count_macs(lambda: enc(audio_signal=x, length=torch.tensor([150])))
    assert float(encoder_cost(arch, enc.profile, 150).total) == pytest.approx(measured, rel=1e-9)


def test_fine_tuning_reads_a_pre_arch_checkpoint_and_adds_gates(tmp_path):
    """init_from_ssl on a Lightning .ckpt with the old parameter names: the weights land in today's names,
    and I3D gate predictors added for fine-tuning may be missing from it."""
    from omegaconf import OmegaConf

    from nemo_sew.train import init_encoder_from

    torch.manual_seed(0)
    source = SqueezeEncoder(**{k: v for k, v in LEGACY_DEMO_ENCODER.items() if k != "_target_"})
    state = {f"encoder.{k}": v for k, v in _legacy_state_dict(source.state_dict()).items()}
    path = tmp_path / "pre_arch.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": OmegaConf.create({"encoder": LEGACY_DEMO_ENCODER})}}, path)

    class Holder(torch.nn.Module):  # what init_encoder_from reads: model.encoder
        def __init__(self):
            super().__init__()
            self.encoder = SqueezeEncoder(
                **{k: v for k, v in LEGACY_DEMO_ENCODER.items() if k != "_target_"}, gates={"kind": "local"}
            )

    model = Holder()
    init_encoder_from(model, path)
    for key, value in source.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
