"""The channels-last CPU forms of the waveform front end and the positional conv equal the channels-first ones.

Same weights, same inputs (padded batches included), ``nemo_sew.nn.frontend.CHANNELS_LAST`` switched per call:
the two paths must agree within fp32 rounding (1e-5), the front end must hand the encoder contiguous
``(B, T, C)`` frames on the channels-last path, and gradients must agree as well (CPU training takes it too).
"""

import pytest
import torch

from nemo_sew.encoder import build_encoder
from nemo_sew.nn import ConvFeatureExtractor, frontend, time_mask, wfe_c_layers
from nemo_sew.nn.compress import SqueezeCompressor
from nemo_sew.profile import CompressionProfile

SMALL_WFE_O = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2
# odd widths, as pruning leaves them; layer_norm mode; bias
ODD_WFE_O = [(37, 10, 5), (45, 3, 2), (45, 3, 2), (61, 3, 2), (29, 2, 2)]


def _both(fn, monkeypatch):
    out = {}
    for channels_last in (False, True):
        monkeypatch.setattr(frontend, "CHANNELS_LAST", channels_last)
        out[channels_last] = fn()
    return out[False], out[True]


@pytest.mark.parametrize(
    "layers, norm, bias",
    [(SMALL_WFE_O, "group_norm", False), (wfe_c_layers(16), "group_norm", False), (ODD_WFE_O, "layer_norm", True)],
    ids=["wfe_o", "wfe_c", "odd_layer_norm_bias"],
)
def test_front_end_channels_last_equals_channels_first(layers, norm, bias, monkeypatch):
    torch.manual_seed(0)
    fe = ConvFeatureExtractor(layers, norm=norm, conv_bias=bias).eval()
    if bias:
        for b in fe.blocks:
            torch.nn.init.normal_(b.conv.bias, std=0.1)
    lengths = torch.tensor([16000, 11111, 3000])
    wav = torch.randn(3, 16000)

    def run():
        with torch.inference_mode():
            return fe(wav, lengths)

    (ref, ref_len), (y, y_len) = _both(run, monkeypatch)
    assert torch.equal(ref_len, y_len)
    assert y.is_contiguous()  # the encoder gets (B, T, C) memory
    valid = time_mask(y_len, y.shape[1])[..., None]
    assert ref.abs().max() > 0.1
    assert ((y - ref).abs() * valid).max() <= 1e-5


def test_front_end_channels_last_gradients_match(monkeypatch):
    torch.manual_seed(0)
    fe = ConvFeatureExtractor(SMALL_WFE_O)
    wav, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])

    def grads():
        fe.zero_grad()
        y, y_len = fe(wav, lengths)
        (y * time_mask(y_len, y.shape[1])[..., None]).square().sum().backward()
        return [p.grad.clone() for p in fe.parameters()]

    ref, got = _both(grads, monkeypatch)
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-4 * max(1.0, a.abs().max().item())


@pytest.mark.parametrize("kernel", [31, 128])
def test_positional_conv_channels_last_equals_channels_first(kernel, monkeypatch):
    torch.manual_seed(0)
    sq = SqueezeCompressor(64, kernel=kernel, groups=16).eval()
    x = torch.randn(2, 90, 64)
    lengths = torch.tensor([90, 61])
    for s in (1, 2, 3):

        def run():
            with torch.inference_mode():
                return sq(x, lengths, s)[0]

        ref, got = _both(run, monkeypatch)
        assert (got - ref).abs().max() <= 1e-5, s


@pytest.mark.parametrize("preset", ["tiny_wfe_c", "tiny_wfe_o"])
def test_encoder_channels_last_equals_channels_first(preset, monkeypatch):
    torch.manual_seed(0)
    enc = build_encoder(preset, squeeze_sampler={"low": 1.0, "high": 4.0}).eval()
    x, lengths = torch.randn(2, 1, 24000) * 0.1, torch.tensor([24000, 15000])
    for s in (1, 4):
        enc.set_profile(CompressionProfile(squeeze=float(s)))

        def run():
            with torch.inference_mode():
                return enc(audio_signal=x, length=lengths)

        (ref, ref_len), (y, y_len) = _both(run, monkeypatch)
        assert torch.equal(ref_len, y_len)
        assert (y - ref).abs().max() <= 1e-5
