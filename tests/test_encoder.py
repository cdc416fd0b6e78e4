"""SqueezeEncoder properties: padding does not leak, lengths, gradients, presets, profile errors."""

import pytest
import torch

import nemo_sew
from nemo_sew import CompressionProfile, build_encoder
from nemo_sew.nn import SqueezeCompressor, conv_out_lengths

FAMILIES = ["tiny_mel", "tiny_mel_conformer", "tiny_wfe_c", "tiny_wfe_o", "tiny_conformer"]


def _inputs(enc, lengths):
    n = max(lengths)
    x = torch.randn(len(lengths), enc._feat_in, n)
    return x, torch.tensor(lengths)


def _lengths_for(enc):
    if enc.layout.port == "spectrogram":
        return [301, 157, 40, 9]
    return [24000, 13377, 5120, 1000]


def _batched_vs_single(enc, lengths):
    x, lens = _inputs(enc, lengths)
    # make the padding garbage: it must not matter
    for i, n in enumerate(lengths):
        x[i, :, n:] = 1e3
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=lens)
        worst = 0.0
        for i, n in enumerate(lengths):
            yi, yi_len = enc(audio_signal=x[i : i + 1, :, :n], length=lens[i : i + 1])
            assert int(yi_len) == int(y_len[i])
            t = int(yi_len)
            worst = max(worst, (y[i, :, :t] - yi[0, :, :t]).abs().max().item())
            assert torch.all(y[i, :, t:] == 0), "frames past the length must be zeros"
    return worst


@pytest.mark.parametrize("preset", FAMILIES)
def test_batched_equals_single_tiny(preset):
    enc = build_encoder(preset).eval()
    assert _batched_vs_single(enc, _lengths_for(enc)) <= 1e-4


@pytest.mark.parametrize("preset", ["sew_tiny", "w2v2_base"])
def test_batched_equals_single_full_size_waveform(preset):
    enc = build_encoder(preset).eval()
    assert _batched_vs_single(enc, [32000, 21111, 4000]) <= 1e-4


def test_padding_leak_is_detected_without_masked_norm():
    # the check above can fail: a plain GroupNorm over padded time leaks padding into valid frames
    enc = build_encoder("tiny_wfe_o").eval()
    block = enc.frontend.blocks[0]
    plain = torch.nn.GroupNorm(block.conv.out_channels, block.conv.out_channels)
    block.norm = plain
    assert _batched_vs_single(enc, [24000, 5000]) > 1e-3


@pytest.mark.parametrize("preset", FAMILIES + ["sew_tiny", "w2v2_base"])
def test_output_lengths_match_forward(preset):
    enc = build_encoder(preset).eval()
    lengths = _lengths_for(enc)
    x, lens = _inputs(enc, lengths)
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=lens)
    assert y_len.tolist() == enc.output_lengths(lens).tolist()
    assert y.shape[1] == enc._feat_out
    assert y.shape[2] >= int(y_len.max())


def test_waveform_frames_are_20ms():
    enc = build_encoder("sew_tiny")
    assert enc.frontend.stride == 320 and enc.frontend.receptive_field == 400
    # 1 s of 16 kHz audio: floor((16000 - 400) / 320) + 1 = 49 frames at 20 ms
    assert enc.frame_lengths(torch.tensor([16000, 400, 399])).tolist() == [49, 1, 0]


def test_conv_and_squeeze_length_rules():
    lens = torch.arange(0, 200)
    for k, s in [(10, 5), (3, 2), (2, 2), (1, 1)]:
        expected = [max(0, (n - k) // s + 1) for n in lens.tolist()]
        assert conv_out_lengths(lens, k, s).tolist() == expected
    comp = SqueezeCompressor(32, kernel=31, groups=16, factor=2)
    for s in (1, 2, 3, 4):
        for t in (s, 7, 31, 64, 65):
            x = torch.randn(1, t, 32)
            y, y_len, _ = comp(x, torch.tensor([t]), s)
            assert y.shape[1] == t // s == int(y_len)


def test_w2v2_pos_conv_is_squeeze_one():
    # with s = 1 and an even kernel the compressor is wav2vec 2.0's x + GELU(SamePad(conv(x)))
    comp = SqueezeCompressor(32, kernel=8, groups=4, factor=1)
    x = torch.randn(2, 20, 32)
    y, _, _ = comp(x, torch.tensor([20, 20]), 1)
    conv = comp.conv(x.transpose(1, 2))[..., :-1]
    ref = x + torch.nn.functional.gelu(conv).transpose(1, 2)
    torch.testing.assert_close(y, ref)


@pytest.mark.parametrize("preset", FAMILIES)
def test_gradients_reach_every_parameter(preset):
    enc = build_encoder(preset, dropout={"hidden": 0.0, "attention": 0.0}).train()
    x, lens = _inputs(enc, _lengths_for(enc)[:2])
    y, y_len = enc(audio_signal=x, length=lens)
    (y.pow(2).sum()).backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_every_preset_builds():
    for name in nemo_sew.PRESETS:
        assert isinstance(build_encoder(name), nemo_sew.SqueezeEncoder)


def test_per_layer_lists():
    blocks = [{"heads": 1, "ffn_dims": [64]}, {"heads": 2, "ffn_dims": [128]}, {"heads": 3, "ffn_dims": [256]}]
    enc = build_encoder("tiny_mel", num_layers=3, blocks=blocks)
    assert [layer.attn.body.num_heads for layer in enc.layers] == [1, 2, 3]
    assert [layer.ffn.body.fc1.out_features for layer in enc.layers] == [64, 128, 256]
    with pytest.raises(ValueError, match="one block override per layer"):
        build_encoder("tiny_mel", num_layers=3, blocks=blocks[:2])


def test_set_profile_errors():
    enc = build_encoder("tiny_mel")
    assert enc.set_profile(CompressionProfile(squeeze=2)).squeeze == 2
    with pytest.raises(ValueError, match="cannot run at squeeze 3"):
        enc.set_profile(CompressionProfile(squeeze=3))
    with pytest.raises(ValueError, match="squeeze 1.5 \\(a fractional rate\\).*fixed squeeze of 2"):
        enc.set_profile(CompressionProfile(squeeze=1.5))
    with pytest.raises(ValueError, match="squeeze >= 1"):
        CompressionProfile(squeeze=0.5)
    with pytest.raises(ValueError, match="expected q_pool to list 6 strides"):
        enc.set_profile(CompressionProfile(q_pool=(1, 2)))
    with pytest.raises(ValueError, match="SEW's fixed upsampler cannot expand it"):
        enc.set_profile(CompressionProfile(q_pool=(1, 2, 1, 1, 1, 1)))
    with pytest.raises(NotImplementedError, match="depth_threshold"):
        enc.set_profile(CompressionProfile(depth_threshold=0.5))
    with pytest.raises(ValueError, match="unknown encoder preset"):
        build_encoder("sew_huge")


def test_short_and_nan_inputs_raise_clear_errors():
    enc = build_encoder("tiny_wfe_c").eval()
    need = enc.min_input_length()
    assert need == 400 + 320  # receptive field plus one more frame for squeeze 2
    with pytest.raises(ValueError, match=r"input too short.*items \[1\]"):
        enc(audio_signal=torch.randn(2, 1, 2000), length=torch.tensor([2000, need - 1]))
    x = torch.randn(2, 1, 2000)
    x[1, 0, 5] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf values in batch items \[1\]"):
        enc(audio_signal=x, length=torch.tensor([2000, 2000]))
    with pytest.raises(ValueError, match=r"expected audio_signal of shape \(B, 1, T\)"):
        enc(audio_signal=torch.randn(2, 2, 2000), length=torch.tensor([2000, 2000]))
