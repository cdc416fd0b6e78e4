"""Pruning and quantization together: a materialised pruned ``.nemo`` (heterogeneous per layer, one layer with
its attention branch pruned to 0 heads) -> PTQ (8-bit per channel, 4-bit per group) -> ``.nemo`` round trip ->
``set_profile`` between widths -> ONNX (QDQ, MatMulNBits, int8 dynamic) -> cost and bytes. Quantizing a model
that still has live pruning masks is refused; a gated (I3D) model quantizes and exports."""

import dataclasses

import numpy as np
import pytest
import torch
from nemo.collections.asr.models import ASRModel

from nemo_sew import CompressionProfile, build_encoder
from nemo_sew.cli import main
from nemo_sew.cost import encoder_cost, encoder_params
from nemo_sew.evaluate import count_macs
from nemo_sew.quant import prepare_qat, quantize_encoder, storage_bytes, weight_bits_table
from nemo_sew.quant.model import logprobs, quantize_model, quantize_nemo
from nemo_sew.quant.schemes import packed_numel
from nemo_sew.quant.weights import held_weights
from test_prune import ROOT, _ctc_model, _randomise

AUDIO = torch.randn(2, 12000, generator=torch.Generator().manual_seed(1))
LENGTHS = torch.tensor([12000, 8000])


def _restore(path):
    return ASRModel.restore_from(str(path), map_location="cpu").eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """masked.nemo (live masks, l0's attention fully pruned), pruned.nemo (``nemo-sew prune``), q84.nemo (8 and
    4 bits, no fp weights) and q4.nemo (4 bits only), all from one tiny wav2vec 2.0-shaped CTC model."""
    tmp = tmp_path_factory.mktemp("prune_quant")
    torch.manual_seed(0)
    model = _ctc_model(("frontend", "heads", "ffn"))
    _randomise(model.encoder)
    with torch.no_grad():
        model.encoder.pruning.gates["l0_attn"].log_alpha.fill_(-30.0)
    paths = {k: tmp / f"{k}.nemo" for k in ("masked", "pruned", "q84", "q4")}
    model.save_to(str(paths["masked"]))
    assert main(["prune", str(paths["masked"]), "--out", str(paths["pruned"]), "--name", "mac60"]) == 0
    paths["info84"] = quantize_nemo(paths["pruned"], paths["q84"], (8, 4), keep_fp=False)
    paths["info4"] = quantize_nemo(paths["pruned"], paths["q4"], (4,), keep_fp=False)
    paths["tmp"] = tmp
    return paths


def test_quantizing_live_pruning_masks_is_refused(files, capsys):
    out = files["tmp"] / "x.nemo"
    assert main(["quantize", str(files["masked"]), "--bits", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and not out.exists()
    assert "masked.nemo" in err and "pruning masks" in err and "nemo-sew prune" in err, err
    masked = _restore(files["masked"]).encoder
    for fn in (lambda e: quantize_encoder(e, 8), lambda e: prepare_qat(e, 4)):
        with pytest.raises(ValueError, match="live pruning masks.*nemo-sew prune"):
            fn(masked)
    assert masked.quant_config is None and all(bits == 32 for *_, bits in weight_bits_table(masked))
    with pytest.raises(ValueError, match="live pruning masks"):  # a config asking for both (e.g. init_from_nemo)
        build_encoder("tiny_wfe_o", pruning={"units": ["heads"]}, quant={"held": [4], "fp": False, "active": 4})


def test_pruned_then_quantized_nemo_round_trip_and_profiles(files):
    pruned = _restore(files["pruned"])
    arch = pruned.encoder.arch
    assert arch.blocks[0].heads == 0 and "attn" not in pruned.encoder.layers[0].branch_names
    assert len({(b.heads, b.ffn_dims) for b in arch.blocks}) > 1  # heterogeneous per layer
    dense = _restore(files["masked"]).encoder.arch
    assert len({c for c, _, _ in arch.frontend.conv_layers}) > 1 and arch.frontend != dense.frontend
    ref = logprobs(pruned, AUDIO, LENGTHS)

    q = _restore(files["q84"])
    assert q.profile.weight_bits == 4 and q.encoder.arch == arch
    in_memory = _restore(files["pruned"])
    quantize_model(in_memory, (8, 4), keep_fp=False)
    outs = {}
    for bits in (4, 8, 4):  # switching back and forth, each equal to the in-memory quantized model
        q.set_profile({"weight_bits": bits})
        in_memory.set_profile({"weight_bits": bits})
        outs[bits] = logprobs(q, AUDIO, LENGTHS)
        torch.testing.assert_close(outs[bits], logprobs(in_memory, AUDIO, LENGTHS), rtol=0, atol=0)
    rel = {b: float((y - ref).norm() / ref.norm()) for b, y in outs.items()}
    assert 0 < rel[8] < rel[4] < 0.5, rel
    # 8-bit per output channel; 4-bit per group of 32 where the columns allow (pruned widths may not: per channel)
    grouped = 0
    for name, _, held in held_weights(q.encoder):
        assert held.codes(8)[1].shape[1] == 1, name
        cols = int(np.prod(held.shape[1:]))
        assert held.codes(4)[1].shape[1] == (cols // 32 if cols % 32 == 0 else 1), name
        grouped += cols % 32 == 0
    assert grouped > 0
    with pytest.raises(ValueError, match="holds only packed \\[8, 4\\]-bit weights"):
        q.set_profile({"weight_bits": 16})


def test_profile_arch_with_weight_bits(files):
    """``CompressionProfile(arch=..., weight_bits=...)``: the arch must be this file's own (each pruned size is
    its own .nemo), the bits one it holds; the ``--name`` label written by ``nemo-sew prune`` stays runnable
    after quantization (it asked for the default 16 bits, which the file no longer holds)."""
    q = _restore(files["q84"])
    own = q.encoder.arch.to_dict()
    assert q.cfg.profiles["mac60"]["weight_bits"] == 4 and q.cfg.profiles["mac60"]["arch"] == own
    assert q.set_profile("mac60").weight_bits == 4
    assert q.set_profile(CompressionProfile(arch=own, weight_bits=8)).weight_bits == 8
    dense = _restore(files["masked"]).encoder.arch.to_dict()
    with pytest.raises(ValueError, match="separate .nemo"):
        q.set_profile(CompressionProfile(arch=dense, weight_bits=8))
    with pytest.raises(ValueError, match="cannot run at weight_bits=2"):
        q.set_profile(CompressionProfile(arch=own, weight_bits=2))
    assert q.profile.weight_bits == 8  # a refused profile leaves the active one
    pruned = _restore(files["pruned"])  # not quantized: bits are refused with what to run
    with pytest.raises(ValueError, match="run `nemo-sew quantize"):
        pruned.set_profile(CompressionProfile(arch=own, weight_bits=4))
    assert _restore(files["pruned"]).cfg.profiles["mac60"].get("weight_bits", 16) == 16


def test_cli_export_qdq_of_a_pruned_quantized_model(files, capsys):
    """``nemo-sew export q.nemo --profiles recipes/profiles/weight_bits.yaml --quant-form qdq``: one parity-checked
    QDQ graph per width (INT8 / INT4 DequantizeLinear weights), every held weight replaced."""
    import json

    import onnx

    from nemo_sew.quant.onnx import QDQ_TOLERANCE

    out = files["tmp"] / "onnx_qdq"
    profiles = str(ROOT / "recipes" / "profiles" / "weight_bits.yaml")
    assert main(["export", str(files["q84"]), "--profiles", profiles, "--quant-form", "qdq", "--out", str(out)]) == 0
    index = json.loads((out / "export.json").read_text())
    n_weights = len(weight_bits_table(_restore(files["q84"]).encoder))
    for name, dtype in (("w8", onnx.TensorProto.INT8), ("w4", onnx.TensorProto.INT4)):
        entry = index["profiles"][name]
        assert entry["quant_form"] == "qdq" and entry["parity"]["passed"]
        assert entry["parity"]["max_abs_diff"] <= QDQ_TOLERANCE
        proto = onnx.load(str(out / entry["file"]))
        inits = {t.name: t.data_type for t in proto.graph.initializer}
        dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"]
        assert len(dq) == n_weights and all(inits[n.input[0]] == dtype for n in dq)
        assert {p.key: p.value for p in proto.metadata_props}["weight_bits"] == name[1:]
    capsys.readouterr()
    # fp16 activations are the TensorRT QDQ form; the onnxruntime CPU forms refuse them, saying which form to use
    out16 = files["tmp"] / "onnx_qdq_fp16"
    assert main(["export", str(files["q84"]), "--profiles", profiles, "--quant-form", "qdq", "--precision", "fp16",
                 "--out", str(out16)]) == 0  # fmt: skip
    index16 = json.loads((out16 / "export.json").read_text())
    assert all(e["parity"]["passed"] and e["tensorrt"] == "builds" for e in index16["profiles"].values()), index16
    capsys.readouterr()
    assert main(["export", str(files["q84"]), "--quant-form", "matmul_nbits", "--precision", "fp16", "--out", str(out)]) == 2
    assert "drop --precision fp16" in capsys.readouterr().err
    # without --quant-form, a low-bit profile is exported as what it runs (QDQ), not as a full-size fp32 graph
    plain = files["tmp"] / "onnx_default_form"
    assert main(["export", str(files["q84"]), "--profiles", profiles, "--out", str(plain)]) == 0
    default = json.loads((plain / "export.json").read_text())["profiles"]
    assert default["w4"]["quant_form"] == "qdq" and default["w4"]["parity"]["passed"]
    assert (plain / "w4.onnx").stat().st_size == (out / "w4.onnx").stat().st_size


@pytest.mark.parametrize("form,bits", [("matmul_nbits", 4), ("int8_dynamic", 8)])
def test_onnx_ort_native_forms_of_a_pruned_quantized_model(files, form, bits):
    from nemo_sew.quant.onnx import ORT_TOLERANCE, export_quantized_onnx

    q = _restore(files["q84"])
    q.set_profile({"weight_bits": bits})
    result = export_quantized_onnx(q, files["tmp"] / f"{form}{bits}.onnx", form, cases=1)
    assert result.parity.passed and result.parity.relative_error <= ORT_TOLERANCE[form], result.parity
    if form == "matmul_nbits":  # MatMulNBits where the 4-bit groups allow, QDQ for the rest: every weight
        assert sorted(result.replaced) == sorted(n for n, *_ in weight_bits_table(q.encoder))


def test_cost_and_bytes_of_a_pruned_quantized_model(files):
    """MACs: the analytic cost of the pruned arch equals torch's count on the quantized model (weight_bits does
    not change MACs). Parameters: the pruned arch's count equals the quantized model's fp values (held weights
    counted by their shapes). Bytes: packed codes at the stored widths plus fp32 scales and fp32 rest; the 4-bit
    file is <= 0.3 x the pruned fp32 file."""
    q = _restore(files["q4"])
    enc, arch = q.encoder, q.encoder.arch
    n = 16123
    x = torch.randn(1, 1, n)
    measured = count_macs(lambda: enc(audio_signal=x, length=torch.tensor([n])))
    assert float(encoder_cost(arch, q.profile, n).total) == pytest.approx(measured, rel=0.02)
    pruned = _restore(files["pruned"]).encoder
    assert float(encoder_params(arch)["total"]) == sum(p.numel() for p in pruned.parameters())

    state = enc.state_dict()
    held = {f"{name}.parametrizations.weight.0": h for name, _, h in held_weights(enc)}
    table = {name.removesuffix(".weight"): shape for name, shape, _ in weight_bits_table(enc)}
    # (train_step: the encoder's int64 step counter, not a weight)
    fp_values = sum(v.numel() for k, v in state.items() if not any(k.startswith(h) for h in held) and k != "train_step")
    # the positional conv's weight norm (g of shape (1, 1, K) and v) is baked into one held weight
    k = arch.compressor.pos_conv_kernel
    assert fp_values + sum(int(np.prod(s)) for s in table.values()) == float(encoder_params(arch)["total"]) - k
    expected = 4 * fp_values + 8 + sum(packed_numel(h.shape, 4) + 4 * h.codes(4)[1].numel() for h in held.values())
    assert storage_bytes(enc) == expected
    assert all(bits == 4 for *_, bits in weight_bits_table(enc))
    info = files["info4"]
    assert info["file_ratio"] <= 0.3, info
    i84 = files["info84"]
    print(f"\npruned fp32 .nemo {info['src_bytes'] / 1e6:.2f} MB; 8+4-bit {i84['out_bytes'] / 1e6:.2f} MB "
          f"({i84['file_ratio']:.2f} x); 4-bit {info['out_bytes'] / 1e6:.2f} MB ({info['file_ratio']:.2f} x)")


def test_gated_model_quantizes_switches_and_exports(tmp_path):
    """I3D gates with weight_bits: the gate predictors' weights are quantized with the rest, the depth threshold
    and the bits switch independently, the ``.nemo`` round trip is exact and QDQ ONNX (the gated branches' weights
    inside the ``If`` subgraphs) matches the eager model."""
    from nemo_sew.quant.model import build_tiny_ctc
    from nemo_sew.quant.onnx import QDQ_TOLERANCE, export_quantized_onnx, read_metadata

    model = build_tiny_ctc("tiny_mel_conformer", num_layers=1, gates={"kind": "local"})
    model.save_to(str(tmp_path / "fp.nemo"))
    quantize_nemo(tmp_path / "fp.nemo", tmp_path / "q.nemo", (8, 4), keep_fp=True)
    q = _restore(tmp_path / "q.nemo")
    names = [n for n, _, bits in weight_bits_table(q.encoder) if bits == 4]
    assert any(".gates." in n for n in names) and any(".body." in n for n in names)
    quantize_model(model, (8, 4), keep_fp=True)
    audio, lengths = torch.randn(2, 16000), torch.tensor([16000, 11000])
    for profile in ({"weight_bits": 4, "depth_threshold": 0.0}, {"weight_bits": 8, "depth_threshold": 0.5},
                    {"weight_bits": 16, "depth_threshold": 1.0}, {"weight_bits": 4}):  # fmt: skip
        q.set_profile(profile)
        model.set_profile(profile)
        assert q.profile.weight_bits == profile["weight_bits"]
        torch.testing.assert_close(logprobs(q, audio, lengths), logprobs(model, audio, lengths), rtol=0, atol=0)
    q.set_profile(dataclasses.replace(q.profile, depth_threshold=0.5))
    result = export_quantized_onnx(q, tmp_path / "g.onnx", "qdq", cases=1)
    assert read_metadata(result.path)["conditional_branches"] == len(q.encoder.gate_slots) > 0  # one If per branch
    assert result.parity.passed and result.parity.max_abs_diff <= QDQ_TOLERANCE
    assert sorted(result.replaced) == sorted(n for n, *_ in weight_bits_table(q.encoder))


def test_pruned_conformer_encoder_quantizes_and_exports(tmp_path):
    """Conformer conv channels pruned (a depthwise conv of a pruned width) and whole branches removed (layer 0 with
    0 heads, layer 1 without its conv module): 4-bit QDQ of the materialised encoder matches the eager one."""
    from test_prune import _encoder

    from nemo_sew.prune import materialize_encoder
    from nemo_sew.quant.onnx import QDQ_TOLERANCE, export_quantized_onnx

    enc = _randomise(_encoder("sew_conformer"), mean=1.5)
    with torch.no_grad():
        enc.pruning.gates["l0_attn"].log_alpha.fill_(-30.0)
        enc.pruning.gates["l1_conv"].log_alpha.fill_(-30.0)
    pruned = materialize_encoder(enc.eval()).eval()
    blocks = pruned.arch.blocks
    assert blocks[0].heads == 0 and blocks[1].conv_channels == 0 and 0 < blocks[0].conv_channels < 96
    quantize_encoder(pruned, 4, keep_fp=False)
    assert "layers.0.conv.body.depthwise.weight" in {n for n, *_ in weight_bits_table(pruned)}
    result = export_quantized_onnx(pruned, tmp_path / "c4.onnx", "qdq", cases=1)
    assert result.parity.passed and result.parity.max_abs_diff <= QDQ_TOLERANCE
    assert sorted(result.replaced) == sorted(n for n, *_ in weight_bits_table(pruned))
