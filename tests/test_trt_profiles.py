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
# known refusals, each with the reason the check must give (anything else must build)
REFUSED = {("weight_bits", "w4"): "INT4"}


def _profiles(name: str) -> dict:
    return yaml.safe_load((PROFILES / f"{name}.yaml").read_text())


def test_every_profile_file_is_covered():
    assert {p.stem for p in PROFILES.glob("*.yaml")} == {"stochastic", "fixed_s2", "i3d", "weight_bits"}


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
