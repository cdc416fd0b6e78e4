"""Mixed precision on CPU autocast (the code paths a GPU's bf16-mixed / 16-mixed training runs) for every encoder
family and the model-level ones (SSL wav2vec 2.0 and HuBERT, a stochastic sandwich step), pure-bf16
inference (NeMo's transcribe_speech.py on bf16 GPUs), the pruning-aware LayerNorm's fp32 statistics and
``pack()`` on the weights' device (issue 31, item 5).

Tolerances: one training step's loss within 3% (bf16) / 1% (fp16) of fp32 and every gradient finite; pure-bf16
encoder outputs within 0.1 relative RMS of fp32 (bf16 keeps 8 bits of mantissa: ~0.4% per op).
"""

from __future__ import annotations

import pytest
import torch
from test_ddp_families import FAMILIES, Step, _encoder, _halves

TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_autocast_training_step_is_finite_and_close_to_fp32(family, dtype):
    x, lengths = _halves(0)[0]
    losses = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("mixed", torch.autocast("cpu", dtype=dtype))):
        enc = _encoder(family)
        torch.manual_seed(3)  # the same gate / mask / LayerDrop samples in both runs
        with ctx:
            loss = Step(enc)(x, lengths, step=1)
        loss.float().backward()
        losses[name] = float(loss)
        bad = [n for n, p in enc.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"{family} {name}: non-finite gradients in {bad[:5]}"
    assert abs(losses["mixed"] - losses["fp32"]) <= TOLERANCE[dtype] * abs(losses["fp32"]), losses


@pytest.mark.parametrize("preset", ["tiny_mel", "tiny_mel_conformer", "tiny_wfe_o"])
def test_pure_bf16_inference_matches_fp32(preset):
    from nemo_sew.encoder import build_encoder

    torch.manual_seed(0)
    enc = build_encoder(preset, num_layers=2).eval()
    feat = enc.layout.feat_in
    x = torch.randn(2, feat, enc.layout.length(1.5)) * (0.1 if feat == 1 else 1.0)
    lengths = torch.tensor([x.shape[-1], x.shape[-1] * 2 // 3])
    with torch.no_grad():
        ref = enc.run(x, lengths).hidden
        out = enc.to(torch.bfloat16).run(x.to(torch.bfloat16), lengths).hidden
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    rel = float((out.float() - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())
    assert rel < 0.1, f"{preset}: pure bf16 differs from fp32 by {rel:.3f} relative RMS"


def test_pruning_layer_norm_keeps_fp32_statistics():
    """In bf16 the masked LayerNorm is as accurate as torch's own (whose statistics are fp32), and fp16 inputs
    whose sum of squares passes 65504 stay finite."""
    from torch import nn

    from nemo_sew.prune.masks import support_layer_norm

    torch.manual_seed(0)
    norm = nn.LayerNorm(256)
    x = torch.randn(4, 50, 256) * 3 + 1
    support = torch.arange(256) < 200  # a pruned LayerNorm: statistics over the 200 kept channels
    ref = support_layer_norm(x, support, norm)[..., support]
    ours = (support_layer_norm(x.bfloat16(), support, norm.bfloat16())[..., support].float() - ref).abs().max()
    kept = nn.LayerNorm(200).bfloat16()
    torchs = (kept(x[..., support].bfloat16()).float() - ref).abs().max()  # torch's own, on the kept channels
    assert ours <= torchs * 1.01 + 1e-6, (float(ours), float(torchs))
    big = (torch.randn(2, 3, 256) * 200).half()
    assert torch.isfinite(support_layer_norm(big, support, norm.half())).all()


def test_pack_runs_on_the_weights_device():
    """``pack``/``unpack`` build their shifts where the codes are (the meta device stands in for a GPU here: a
    CPU constant mixed with meta codes raises, as it would with CUDA codes)."""
    from nemo_sew.quant.schemes import pack, unpack

    codes = torch.randint(-8, 8, (64, 32), dtype=torch.int8)
    for bits in (4, 2):
        c = codes.clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        packed = pack(c.to("meta"), bits)
        assert packed.device.type == "meta"
        assert unpack(pack(c, bits), bits, tuple(c.shape)).equal(c)
        assert unpack(packed, bits, tuple(c.shape)).device.type == "meta"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("family", ["ssl_wav2vec2", "ssl_hubert", "ctc_sandwich"])
def test_one_autocast_model_step_is_finite_and_close_to_fp32(family, dtype):
    """The model-level families (SSL objectives, a sandwich step) under CPU autocast: finite, close to fp32. The
    SSL losses sit near log(1 + negatives) / log(clusters), so the same relative tolerance is a tight check."""
    from test_ddp_families import MODEL_FAMILIES, _audio

    x, lengths = _audio(0)
    losses = {}
    for name, ctx in (("fp32", torch.autocast("cpu", enabled=False)), ("mixed", torch.autocast("cpu", dtype=dtype))):
        step = MODEL_FAMILIES[family]()
        torch.manual_seed(3)
        with ctx:
            loss = step(x[:2], lengths[:2], 1)
        loss.float().backward()
        losses[name] = float(loss)
        bad = [n for n, p in step.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad, f"{family} {name}: non-finite gradients in {bad[:5]}"
    assert abs(losses["mixed"] - losses["fp32"]) <= TOLERANCE[dtype] * abs(losses["fp32"]), losses
