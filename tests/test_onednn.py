"""Opt-in oneDNN Linear (``nemo_sew.nn.onednn``): equal to ``F.linear``, autograd falls back, weight changes repack."""

import pytest
import torch

from nemo_sew.encoder import build_encoder
from nemo_sew.nn import onednn
from nemo_sew.nn.linear import Linear

pytestmark = pytest.mark.skipif(not onednn.onednn_available(), reason="torch built without oneDNN")


def _enc():
    torch.manual_seed(0)
    return build_encoder("tiny_wfe_c").eval()


def test_encoder_output_equals_plain_linear(monkeypatch):
    enc = _enc()
    x, lengths = torch.randn(2, 1, 16000) * 0.1, torch.tensor([16000, 9000])
    with torch.inference_mode():
        ref, _ = enc(audio_signal=x, length=lengths)
    n = onednn.use_onednn_linear(enc)
    one_by_one = [b for b in enc.frontend.blocks if b.kernel == 1]
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    assert all(isinstance(m, Linear) for m in linears)  # every linear layer of the encoder has a backend
    assert one_by_one and n == len(linears) + len(one_by_one)
    assert all(m.backend == "onednn" for m in linears) and type(linears[0]).forward is Linear.forward  # not patched
    with torch.inference_mode():
        got, _ = enc(audio_signal=x, length=lengths)
    switched = linears + one_by_one
    assert all(m._onednn_weight is not None for m in switched)  # the oneDNN path ran
    assert (got - ref).abs().max() <= 1e-5


def test_autograd_falls_back_and_weight_changes_repack():
    lin = Linear(16, 8)
    assert onednn.use_onednn_linear(lin) == 1 and onednn.use_onednn_linear(torch.nn.Linear(16, 8)) == 0
    x = torch.randn(3, 16)
    y = lin(x)  # grad enabled, weight requires grad: F.linear
    assert y.requires_grad and lin._onednn_weight is None
    y.sum().backward()
    assert lin.weight.grad is not None
    with torch.no_grad():
        first = lin(x)
        lin.weight.mul_(2.0)  # in place: a new version of the same tensor
        second = lin(x)
    ref = torch.nn.functional.linear(x, lin.weight, lin.bias)
    assert (second - ref).abs().max() <= 1e-5 and (first - second).abs().max() > 1e-3
