"""The onnxruntime CPU int8 static form (issue 27 item 6): the contrib-op graph it starts from, its calibration,
its checks, and the CLI that writes it."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from nemo_sew.encoder import build_encoder
from nemo_sew.errors import UserError
from nemo_sew.export import ParityError, export_onnx
from nemo_sew.quant.model import build_tiny_ctc, quantize_model
from nemo_sew.quant.onnx import STATIC_TOLERANCE, calibration_feeds, check_static_error, export_quantized_onnx


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _waves(n: int = 4, seconds: float = 1.2, seed: int = 0) -> list[np.ndarray]:
    """Speech-like stand-ins for calibration: noise bursts with a slow envelope (real speech in the CLI test)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(16000 * seconds * (0.5 + 0.5 * (i + 1) / n))
        env = 0.05 + 0.1 * np.abs(np.sin(np.linspace(0, 6 * np.pi, t)))
        out.append((env * rng.standard_normal(t)).astype(np.float32))
    return out


@pytest.mark.parametrize(
    "preset,overrides",
    [
        ("tiny_wfe_c", {}),  # waveform front end with 1x1 convs (they become Conv nodes)
        ("tiny_mel_conformer", {}),  # conformer blocks: attention beside the conv module
        ("tiny_wfe_o", {"profile": {"q_pool": (1, 2), "kv_pool": (2, 2)}}),  # pooled queries and keys: Tq != Tk
    ],
)
def test_contrib_graph_equals_eager_over_the_whole_length_range(preset, overrides, tmp_path):
    """Attention as onnxruntime's MultiHeadAttention (key padding mask) and 1x1 convs as Conv: parity with the
    eager encoder at fp32 tolerance over random padded batches and 0.5-40 s (export_onnx's own check)."""
    enc = build_encoder(preset, **{k: v for k, v in overrides.items() if k != "profile"}).eval()
    if "profile" in overrides:
        enc.set_profile(overrides["profile"])
    result = export_onnx(enc, tmp_path / "c.onnx", contrib_ops=True, opset=20)
    assert result.parity.passed and result.parity.max_abs_diff <= 1e-4
    ops = _ops(result.path)
    assert ops["MultiHeadAttention"] == len(enc.arch.blocks), ops
    assert result.metadata["contrib_ops"] == "1"
    plain = _ops(export_onnx(enc, tmp_path / "p.onnx", check=False).path)
    assert plain["MultiHeadAttention"] == 0 and plain["Softmax"] == len(enc.arch.blocks)
    if preset == "tiny_wfe_c":  # its extra 1x1 layers: MatMul (bmm) in the plain graph, Conv here
        ones = sum(1 for c in enc.arch.frontend.conv_layers if c[1] == 1 and c[2] == 1)
        assert ones > 0 and ops["Conv"] == plain["Conv"] + ones


def test_local_attention_keeps_the_standard_nodes(tmp_path):
    """A per-query mask (local attention) is not a key padding mask: those layers keep SDPA's nodes."""
    enc = build_encoder("tiny_mel", num_layers=2, blocks={"window": 8}).eval()
    result = export_onnx(enc, tmp_path / "c.onnx", contrib_ops=True, opset=20, cases=2)
    assert result.parity.passed
    assert _ops(result.path)["MultiHeadAttention"] == 0


def test_contrib_graphs_are_refused_by_the_tensorrt_check(tmp_path):
    from nemo_sew.export.trt_check import check_trt

    enc = build_encoder("tiny_wfe_c").eval()
    path = export_onnx(enc, tmp_path / "c.onnx", contrib_ops=True, opset=20, check=False).path
    report = check_trt(path)
    assert not report.ok and "MultiHeadAttention" in " ".join(report.reasons)


@pytest.fixture(scope="module")
def int8_model():
    model = build_tiny_ctc("tiny_mel", num_layers=2)
    quantize_model(model, (8,), keep_fp=False)
    model.set_profile({"weight_bits": 8})
    return model


def test_int8_static_quantizes_every_conv_and_weight_matmul(int8_model, tmp_path):
    feeds = calibration_feeds(int8_model, _waves())
    assert feeds[0]["audio_signal"].shape[1] == 80  # the model's own mel features, not the waveform
    result = export_quantized_onnx(int8_model, tmp_path / "s.onnx", "int8_static", calibration=feeds)
    assert result.parity["worst_relative_error"] <= STATIC_TOLERANCE
    assert result.parity["utterances"] == len(feeds)
    proto = onnx.load(str(result.path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["quant_form"] == "int8_static" and meta["contrib_ops"] == "1" and "minmax" in meta["calibration"]
    produced = {o: n for n in proto.graph.node for o in n.output}
    weights = {t.name for t in proto.graph.initializer}

    def dequantized(name: str) -> bool:
        return name in produced and produced[name].op_type == "DequantizeLinear"

    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]
    assert convs and matmuls
    for node in convs + matmuls:  # activations and weights both arrive through DequantizeLinear
        assert dequantized(node.input[0]) and dequantized(node.input[1]), node.name
        assert not set(node.input[:2]) & weights
    assert not (tmp_path / "s.dequantized.onnx").exists()


def test_the_static_check_catches_a_graph_of_other_weights(int8_model, tmp_path):
    """The relative-error check compares with the eager model: weights changed after export are caught."""
    feeds = calibration_feeds(int8_model, _waves())
    path = export_quantized_onnx(int8_model, tmp_path / "s.onnx", "int8_static", calibration=feeds, check=False).path
    other = build_tiny_ctc("tiny_mel", num_layers=2)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.5 * torch.randn_like(p))
    quantize_model(other, (8,), keep_fp=False)
    other.set_profile({"weight_bits": 8})
    with pytest.raises(ParityError, match="mean relative error"):
        check_static_error(other, path, feeds, STATIC_TOLERANCE, False)


def test_int8_static_needs_calibration_and_8_bit_weights(int8_model, tmp_path):
    with pytest.raises(UserError, match="calibrat"):
        export_quantized_onnx(int8_model, tmp_path / "s.onnx", "int8_static")
    with pytest.raises(UserError, match="calibration_method"):
        export_quantized_onnx(int8_model, tmp_path / "s.onnx", "int8_static", calibration=[{}], calibration_method="x")
    model = build_tiny_ctc("tiny_mel", num_layers=1)
    quantize_model(model, (4,), keep_fp=False)
    model.set_profile({"weight_bits": 4})
    with pytest.raises(ValueError, match="runs 8-bit weights; the model runs 4-bit"):
        export_quantized_onnx(model, tmp_path / "s.onnx", "int8_static", calibration=[{}])


def test_cli_exports_int8_static_calibrated_on_a_manifest(tiny_ctc_nemo, tiny_corpus, tmp_path):
    """``nemo-sew quantize`` then ``nemo-sew export --quant-form int8_static --calibration``: a checked file,
    indexed in export.json, and a one-line error without --calibration."""
    import subprocess
    import sys

    q = tmp_path / "q.nemo"
    run = lambda *a: subprocess.run([sys.executable, "-m", "nemo_sew.cli", *a], capture_output=True, text=True)  # noqa: E731
    done = run("quantize", str(tiny_ctc_nemo), "--bits", "8", "--out", str(q))
    assert done.returncode == 0, done.stderr[-2000:]
    train = str(tiny_corpus["train"]["manifest"])
    profiles = tmp_path / "p.yaml"
    profiles.write_text("w8: {weight_bits: 8}\n")
    done = run("export", str(q), "--profiles", str(profiles), "--out", str(tmp_path / "onnx"), "--quant-form",
               "int8_static", "--calibration", train, "--calibration-utterances", "6")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    index = json.loads((tmp_path / "onnx" / "export.json").read_text())
    entry = index["profiles"]["w8"]
    assert entry["quant_form"] == "int8_static" and entry["parity"]["utterances"] == 6
    assert entry["parity"]["worst_relative_error"] <= STATIC_TOLERANCE
    assert entry["tensorrt"].startswith("refused: ") and "MultiHeadAttention" in entry["tensorrt"]  # onnxruntime only
    done = run("export", str(q), "--profiles", str(profiles), "--out", str(tmp_path / "x"), "--quant-form", "int8_static")
    assert done.returncode != 0 and "--calibration" in done.stderr and "Traceback" not in done.stderr


def test_int8_static_quantizes_a_gated_graph(tmp_path):
    """An I3D model with input-dependent gates (If nodes) quantizes statically and keeps its branches."""
    model = build_tiny_ctc("tiny_mel", num_layers=2, gates={"kind": "local"})
    quantize_model(model, (8,), keep_fp=False)
    model.set_profile({"weight_bits": 8, "depth_threshold": 0.5})
    result = export_quantized_onnx(model, tmp_path / "g.onnx", "int8_static", calibration=calibration_feeds(model, _waves(3)))
    assert result.parity["worst_relative_error"] <= STATIC_TOLERANCE
    ops = _ops(result.path)
    assert ops["If"] > 0 and ops["DequantizeLinear"] > 0  # the gated branches, and int8 where they are not
