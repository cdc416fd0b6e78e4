"""Waveform front end: the masked norm's fast and masked paths, padding never leaking, 1x1 convs as GEMMs."""

import pytest
import torch
import torch.nn.functional as F

from nemo_sew.nn import ConvFeatureExtractor, FeedForward, MaskedInstanceNorm, time_mask, wfe_c_layers
from nemo_sew.nn import frontend
from nemo_sew.nn.frontend import ConvBlock

# WFE-O shaped but narrow (as the tiny_wfe_o preset): group norm after the first conv only
SMALL_WFE_O = [(64, 10, 5)] + [(64, 3, 2)] * 4 + [(64, 2, 2)] * 2


def _norm(channels: int = 16, seed: int = 0) -> MaskedInstanceNorm:
    torch.manual_seed(seed)
    norm = MaskedInstanceNorm(channels)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def _reference(norm: MaskedInstanceNorm, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per item, float64 GroupNorm over the valid frames only; padded frames left at 0."""
    y = torch.zeros_like(x, dtype=torch.float64)
    for i, n in enumerate(lengths.tolist()):
        xi = x[i : i + 1, :, :n].double()
        y[i, :, :n] = F.group_norm(xi, x.shape[1], norm.weight.double(), norm.bias.double(), norm.eps)[0]
    return y


def _garbage_padding(x: torch.Tensor, lengths: torch.Tensor, value: float = 1e3) -> torch.Tensor:
    return x.masked_fill(~time_mask(lengths, x.shape[-1])[:, None, :], value)


def test_fast_path_equals_masked_path_without_padding():
    norm = _norm()
    x = 3.0 * torch.randn(4, 16, 777) + 0.5
    full = torch.full((4,), 777)
    with torch.no_grad():
        fast, masked = norm(x, full), norm.masked(x, full)
        plain = torch.nn.GroupNorm(16, 16)
        plain.load_state_dict(norm.state_dict())
        assert (fast - masked).abs().max() <= 1e-5
        assert (fast - plain(x)).abs().max() <= 1e-5  # and both are nn.GroupNorm(C, C)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_padded_batch_matches_float64_per_item_reference(offset):
    # offset 1000 (mean >> std): E[x^2] - mean^2 in fp32 would be off by percents; the two-pass statistics
    # stay as close to the exact result as torch's own fp32 GroupNorm of the item alone
    norm = _norm()
    lengths = torch.tensor([500, 413, 77, 2])
    x = _garbage_padding(torch.randn(4, 16, 500) + offset, lengths)
    with torch.no_grad():
        y = norm(x, lengths)
        ref = _reference(norm, x, lengths)
        for i, n in enumerate(lengths.tolist()):
            torch_fp32 = F.group_norm(x[i : i + 1, :, :n], 16, norm.weight, norm.bias, norm.eps)[0]
            bound = max(1e-5, 3 * (torch_fp32.double() - ref[i, :, :n]).abs().max().item())
            assert (y[i, :, :n].double() - ref[i, :, :n]).abs().max() <= bound
    assert torch.isfinite(y).all()


def test_padded_batch_equals_each_item_alone():
    # batched (masked path) vs single (full length: fused path), within 1e-5
    norm = _norm()
    lengths = torch.tensor([300, 299, 128, 9])
    x = _garbage_padding(torch.randn(4, 16, 300), lengths)
    with torch.no_grad():
        y = norm(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = norm(x[i : i + 1, :, :n], lengths[i : i + 1])
            assert (y[i, :, :n] - alone[0]).abs().max() <= 1e-5


def test_padding_values_do_not_reach_valid_frames():
    norm = _norm()
    lengths = torch.tensor([200, 150, 60])
    x = torch.randn(3, 16, 200)
    with torch.no_grad():
        a = norm(_garbage_padding(x, lengths, 1e3), lengths)
        b = norm(_garbage_padding(x, lengths, -7.0), lengths)
    valid = time_mask(lengths, 200)[:, None, :]
    assert ((a - b).abs() * valid).max() <= 1e-6
    assert not torch.equal(x, _garbage_padding(x, lengths))  # the padding really differed


def test_norm_leaves_its_input_alone_and_grads_match_reference():
    norm = _norm()
    lengths = torch.tensor([120, 64])
    x = _garbage_padding(torch.randn(2, 16, 120), lengths, 5.0)
    before = x.clone()
    with torch.inference_mode():
        y_inference = norm(x, lengths)  # the in-place path
    assert torch.equal(x, before)

    xg = x.clone().requires_grad_()
    y = norm(xg, lengths)  # the out-of-place path (autograd needs the centred values)
    assert (y.detach() - y_inference).abs().max() <= 1e-6
    valid = time_mask(lengths, 120)[:, None, :]
    g = torch.randn_like(x) * valid
    (y * g).sum().backward()

    ref_norm = _norm()
    xr = x.clone().double().requires_grad_()
    w, b = ref_norm.weight.double().detach().requires_grad_(), ref_norm.bias.double().detach().requires_grad_()
    ref = torch.zeros_like(xr)
    for i, n in enumerate(lengths.tolist()):
        ref[i, :, :n] = F.group_norm(xr[i : i + 1, :, :n], 16, w, b, norm.eps)[0]
    (ref * g.double()).sum().backward()
    assert (xg.grad.double() - xr.grad).abs().max() <= 1e-4
    assert (norm.weight.grad.double() - w.grad).abs().max() <= 1e-3
    assert (norm.bias.grad.double() - b.grad).abs().max() <= 1e-3


def test_half_precision_keeps_dtype():
    norm = _norm()
    lengths = torch.tensor([64, 40])
    x = torch.randn(2, 16, 64)
    with torch.no_grad():
        for lens in (lengths, torch.full((2,), 64)):
            y = norm(x.bfloat16(), lens)
            assert y.dtype == torch.bfloat16
            valid = time_mask(lens, 64)[:, None, :]
            assert ((y.float() - norm(x.bfloat16().float(), lens)).abs() * valid).max() <= 0.05


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_1x1_conv_block_equals_conv1d(bias, channels_last, monkeypatch):
    monkeypatch.setattr(frontend, "CHANNELS_LAST", channels_last)
    torch.manual_seed(0)
    block = ConvBlock(24, 40, 1, 1, bias, None)
    if bias:
        torch.nn.init.normal_(block.conv.bias)
    x = torch.randn(3, 24, 50, requires_grad=True)
    y, lengths = block(x, torch.tensor([50, 30, 1]))
    ref = F.gelu(F.conv1d(x, block.conv.weight, block.conv.bias))
    assert lengths.tolist() == [50, 30, 1]
    # channels-first: one contiguous (B, C, T) GEMM output; channels-last: a view of (B, T, C) memory
    assert (y.transpose(1, 2) if channels_last else y).is_contiguous() and (y - ref).abs().max() <= 1e-5
    (y.sum() - ref.sum()).backward()  # grads reach the conv weight through the GEMM
    assert block.conv.weight.grad is not None and block.conv.weight.grad.abs().max() <= 1e-3


@pytest.mark.parametrize("layers", [SMALL_WFE_O, wfe_c_layers(16)], ids=["wfe_o", "wfe_c"])
def test_front_end_batched_equals_single_within_1e5(layers):
    torch.manual_seed(0)
    fe = ConvFeatureExtractor(layers).eval()
    lengths = torch.tensor([16000, 12345, 4000, 400])
    wav = torch.randn(4, 16000)
    wav = wav.masked_fill(~time_mask(lengths, 16000), 1e3)
    before = wav.clone()
    with torch.inference_mode():
        y, y_len = fe(wav, lengths)
        assert torch.equal(wav, before)
        for i, n in enumerate(lengths.tolist()):
            yi, yi_len = fe(wav[i : i + 1, :n], lengths[i : i + 1])
            t = int(yi_len)
            assert t == int(y_len[i])
            assert (y[i, :t] - yi[0]).abs().max() <= 1e-5


def test_front_end_inference_equals_autograd_forward():
    # inference overwrites temporaries (GELU, norm); with grads flowing every op is out of place
    torch.manual_seed(0)
    fe = ConvFeatureExtractor(wfe_c_layers(16))
    lengths = torch.tensor([8000, 5000])
    wav = torch.randn(2, 8000)
    with torch.inference_mode():
        y_inf, _ = fe(wav, lengths)
    y_grad, _ = fe(wav, lengths)
    y_grad.sum().backward()
    assert (y_inf - y_grad.detach()).abs().max() <= 1e-6
    assert all(p.grad is not None for p in fe.parameters())


def test_traced_front_end_keeps_the_masked_path():
    # traced on a full-length batch: the fused (no padding) branch must not be frozen into the graph
    torch.manual_seed(0)
    fe = ConvFeatureExtractor(SMALL_WFE_O).eval()
    wav = torch.randn(3, 8000)
    with torch.no_grad():
        traced = torch.jit.trace(fe, (wav, torch.full((3,), 8000)), check_trace=False)
        lengths = torch.tensor([8000, 6000, 2000])
        y_eager, len_eager = fe(wav, lengths)
        y_traced, len_traced = traced(wav, lengths)
    assert torch.equal(len_eager, len_traced)
    valid = time_mask(len_eager, y_eager.shape[1])[..., None]
    assert ((y_eager - y_traced).abs() * valid).max() <= 1e-5


@pytest.mark.parametrize("activation", ["gelu", "swish", "relu"])
def test_feed_forward_inplace_activation_equals_module(activation):
    torch.manual_seed(0)
    ffn = FeedForward(32, 64, activation=activation).eval()
    x = torch.randn(2, 7, 32)
    with torch.inference_mode():
        y = ffn(x)  # activation written into fc1's output
    ref = ffn.fc2(ffn.act(ffn.fc1(x)))  # grads enabled: the module itself
    assert torch.equal(y, ref.detach())
