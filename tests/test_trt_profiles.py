"""Every profile of every ``recipes/profiles/*.yaml`` is either TensorRT-ready by the static check
(:mod:`nemo_sew.export.trt_check`, what ``trt/build_engines.py --dry-run`` runs) or refused with its reason
(issue 27, item 2). Each file is exported from the tiny model its comment names: a 4-layer stochastic model
(stochastic, fixed_s2), a gated one (i3d), a quantized one in the QDQ form (weight_bits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nemo_sew.encoder import build_encoder
from nemo_sew.export.onnx import export_onnx
from nemo_sew.export.trt_check import check_trt

PROFILES = Path(__file__).resolve().parents[1] / "recipes" / "profiles"
STOCHASTIC = {"num_layers": 4, "squeeze_sampler": {"squeeze": {"low": 1.0, "high": 4.0}}}
# known refusals, each with the reason the check must give (anything else must build): the onnxruntime QDQ form
# (fp32 activations) keeps INT4 on convolutions; the TensorRT form (precision fp16) builds, tested below
REFUSED = {("weight_bits", "w4"): "INT4"}


def _profiles(name: str) -> dict:
    return yaml.safe_load((PROFILES / f"{name}.yaml").read_text())


def test_every_profile_file_is_covered():
    assert {p.stem for p in PROFILES.glob("*.yaml")} == {"stochastic", "fixed_s2", "i3d", "weight_bits", "product"}


@pytest.mark.parametrize("name", ["stochastic", "fixed_s2"])
def test_squeeze_and_pooling_profiles_build(name, tmp_path):
    enc = build_encoder("tiny_mel", **STOCHASTIC)
    for profile, fields in _profiles(name).items():
        path = export_onnx(enc, tmp_path / f"{profile}.onnx", profile=fields, cases=1, check=profile == "s1_5").path
        report = check_trt(path)
        assert report.ok, report.line()


def test_i3d_profiles_build(tmp_path):
    enc = build_encoder("tiny_mel", num_layers=2, gates={"kind": "local"}, **{k: v for k, v in STOCHASTIC.items()
                                                                              if k != "num_layers"})  # fmt: skip
    for profile, fields in _profiles("i3d").items():
        path = export_onnx(enc, tmp_path / f"{profile}.onnx", profile=fields, check=False).path
        report = check_trt(path)
        assert report.ok, report.line()


@pytest.mark.parametrize("preset", ["tiny_mel", "tiny_conformer"])
def test_tensorrt_qdq_form_builds_and_matches_eager_in_fp16(preset, tmp_path):
    """The TensorRT QDQ form (``--quant-form qdq --precision fp16``): fp16 activations, INT4 weights only on
    MatMul (DequantizeLinear straight into it, blocks along K), convolutions in fp16 or per-channel INT8; every
    weight-bits profile builds, within the fp16 tolerance of the eager quantized model from 0.5 to 40 s."""
    import onnx

    from nemo_sew.export.onnx import TOLERANCE
    from nemo_sew.quant.model import build_tiny_ctc, quantize_model
    from nemo_sew.quant.onnx import export_quantized_onnx

    model = build_tiny_ctc(preset, num_layers=2)
    quantize_model(model, (8, 4))
    for profile, fields in _profiles("weight_bits").items():
        model.set_profile(fields, default=False)
        result = export_quantized_onnx(model, tmp_path / f"{profile}.onnx", form="qdq", precision="fp16", cases=1)
        assert check_trt(result.path).ok, check_trt(result.path).line()
        assert result.parity.max_abs_diff <= TOLERANCE["fp16"] and max(c.max_len for c in result.parity.cases) > 3000
        graph = onnx.load(str(result.path)).graph
        int4 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT4}
        assert bool(int4) == (fields["weight_bits"] == 4)


def test_weight_bits_profiles_build_or_are_refused_with_their_reason(tmp_path):
    from nemo_sew.quant.model import build_tiny_ctc, quantize_model
    from nemo_sew.quant.onnx import export_quantized_onnx

    model = build_tiny_ctc("tiny_mel", num_layers=2)
    quantize_model(model, (8, 4))
    for profile, fields in _profiles("weight_bits").items():
        model.set_profile(fields, default=False)
        path = tmp_path / f"{profile}.onnx"
        export_quantized_onnx(model, path, form="qdq", check=False)
        report = check_trt(path)
        expected = REFUSED.get(("weight_bits", profile))
        if expected is None:
            assert report.ok, report.line()
        else:
            assert not report.ok and expected in report.line(), report.line()


@pytest.mark.slow
def test_product_profiles_build(tmp_path):
    """The product grid (squeeze x depth threshold x weight bits) of one gated, stochastic, quantized model: fp
    rows as fp32 graphs, 8- and 4-bit rows in the TensorRT QDQ form (fp16 activations); every profile builds."""
    from nemo_sew.quant.model import build_tiny_ctc, quantize_model
    from nemo_sew.quant.onnx import export_quantized_onnx

    model = build_tiny_ctc("tiny_mel", num_layers=2, gates={"kind": "local"},
                           squeeze_sampler={"squeeze": {"values": [1, 2, 3, 4]}})  # fmt: skip
    quantize_model(model, (8, 4), keep_fp=True)
    profiles = _profiles("product")
    assert {f["weight_bits"] for f in profiles.values()} == {16, 8, 4}
    for profile, fields in profiles.items():
        model.set_profile(fields, default=False)
        path = tmp_path / f"{profile}.onnx"
        if fields["weight_bits"] == 16:
            export_onnx(model, path, check=False)
        else:
            export_quantized_onnx(model, path, form="qdq", precision="fp16", check=False)
        report = check_trt(path)
        assert report.ok, report.line()
