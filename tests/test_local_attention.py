"""Local (banded) self-attention and the quantization study's matched attention-only / conformer presets."""

import pytest
import torch

from nemo_sew import build_encoder
from nemo_sew.arch import BlockSpec, build_arch
from nemo_sew.cost import encoder_cost, encoder_params
from nemo_sew.nn.blocks import band_mask

STUDY = ("study_conformer", "study_attn_deep_narrow", "study_attn_shallow_wide")


def _pair(window: int, layers: int = 2):
    full = build_encoder("tiny_mel", num_layers=layers).eval()
    local = build_encoder("tiny_mel", num_layers=layers, blocks={"window": window}).eval()
    local.load_state_dict(full.state_dict())
    return full, local


def _run(enc, x, lengths):
    with torch.no_grad():
        return enc(audio_signal=x, length=lengths)


def test_band_mask():
    m = band_mask(6, 6, 1, 1, 3, torch.device("cpu"))
    i, j = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    assert torch.equal(m, (i - j).abs() <= 1)
    pooled = band_mask(5, 10, 2, 1, 1, torch.device("cpu"))  # query i covers frames 2i, 2i+1
    assert pooled.any(-1).all() and pooled[2].nonzero().flatten().tolist() == [4, 5]
    with pytest.raises(ValueError, match="expected window >= 0"):
        BlockSpec(window=-1)


def test_banded_equals_full_attention_when_the_window_covers_the_sequence():
    full, local = _pair(window=1000)
    x, lengths = torch.randn(2, 80, 300), torch.tensor([300, 217])
    a, b = _run(full, x, lengths)[0], _run(local, x, lengths)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    _, narrow = _pair(window=5)
    assert not torch.allclose(_run(narrow, x, lengths)[0], a, atol=1e-3), "a narrow band changes the output"


@pytest.mark.parametrize("profile", [None, {"kv_pool": [2, 1]}])
def test_local_attention_batched_equals_single(profile):
    _, local = _pair(window=7)
    if profile:
        local.set_profile(profile)
    lengths = torch.tensor([300, 171, 64])
    x = torch.randn(3, 80, 300)
    out, out_len = _run(local, x, lengths)
    assert torch.isfinite(out).all()
    for i, n in enumerate(lengths.tolist()):
        ref, ref_len = _run(local, x[i : i + 1, :, :n], torch.tensor([n]))
        t = int(ref_len)
        assert int(out_len[i]) == t
        torch.testing.assert_close(out[i, :, :t], ref[0, :, :t], rtol=0, atol=1e-5)


def test_local_attention_onnx_parity(tmp_path):
    from nemo_sew.export import TOLERANCE, export_onnx

    _, local = _pair(window=9, layers=1)
    result = export_onnx(local, tmp_path / "local.onnx", cases=3)
    assert result.parity.passed and result.parity.max_abs_diff <= TOLERANCE["fp32"]


def test_study_presets_match_in_params_and_macs():
    ref = build_arch("study_conformer")
    p0, c0 = float(encoder_params(ref)["total"]), float(encoder_cost(ref, None, 1000).total)  # 10 s of 10 ms frames
    for name in STUDY[1:]:
        arch = build_arch(name)
        assert all(b.kind == "transformer" and b.window > 0 and b.conv_channels == 0 for b in arch.blocks)
        p, c = float(encoder_params(arch)["total"]), float(encoder_cost(arch, None, 1000).total)
        assert abs(p / p0 - 1) <= 0.10, (name, p, p0)
        assert abs(c / c0 - 1) <= 0.15, (name, c, c0)
    deep, wide = build_arch(STUDY[1]), build_arch(STUDY[2])
    assert deep.num_layers > ref.num_layers > wide.num_layers and deep.d_model < ref.d_model < wide.d_model
    assert build_encoder("study_attn_shallow_wide").arch.blocks[0].window == 33
