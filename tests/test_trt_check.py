"""Static TensorRT check (no TensorRT): one small graph per rule, a real export that builds, ``--dry-run``."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from nemo_sew.export.trt_check import TRT10_ONNX_OPS, TRT10_ONNX_UNSUPPORTED, check_trt

TRT_DIR = Path(__file__).resolve().parents[1] / "trt"
F, I64 = TensorProto.FLOAT, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, elem_type, shape):
    return helper.make_tensor_value_info(name, elem_type, shape)


def _refused(model, *needles):
    report = check_trt(model)
    assert not report.ok, report.line()
    text = "; ".join(report.reasons)
    for needle in needles:
        assert needle in text, text
    assert report.line().startswith("g: refused: ")
    return report


def _int4(name, shape, block=None):
    """An INT4 weight initializer, its scale, and a DequantizeLinear of it (per channel, or blocks along axis 0)."""
    codes = (np.arange(int(np.prod(shape))) % 15 - 7).reshape(shape)
    w = helper.make_tensor(name, TensorProto.INT4, shape, codes.flatten().tolist())
    if block:
        scale = numpy_helper.from_array(np.full((shape[0] // block, *shape[1:]), 0.1, np.float32), f"{name}_s")
        dq = helper.make_node("DequantizeLinear", [name, f"{name}_s"], [f"{name}_dq"], name=f"{name}_DQ", axis=0,
                              block_size=block)  # fmt: skip
    else:
        scale = numpy_helper.from_array(np.full((shape[0],), 0.1, np.float32), f"{name}_s")
        dq = helper.make_node("DequantizeLinear", [name, f"{name}_s"], [f"{name}_dq"], name=f"{name}_DQ", axis=0)
    return [w, scale], dq


# ---------------------------------------------------------------------------------------------- one rule each


def test_op_list_is_the_documented_matrix():
    assert {"MatMul", "Range", "If", "LayerNormalization", "DequantizeLinear", "NonZero"} <= TRT10_ONNX_OPS
    assert {"Unique", "Compress", "BitShift", "MatMulInteger"} <= TRT10_ONNX_UNSUPPORTED
    assert not TRT10_ONNX_OPS & TRT10_ONNX_UNSUPPORTED and len(TRT10_ONNX_OPS) == 150
    with pytest.raises(ValueError, match="no TensorRT operator list"):
        check_trt(_model([], [], []), target="8.6")


def test_cast_to_double_is_refused():
    nodes = [
        helper.make_node("Cast", ["x"], ["x64"], name="to64", to=TensorProto.DOUBLE),
        helper.make_node("Cast", ["x64"], ["y"], name="to32", to=F),
    ]
    _refused(_model(nodes, [_vi("x", F, ["n"])], [_vi("y", F, ["n"])]), "DOUBLE", "Cast 'to64' to=DOUBLE")


def test_double_initializer_inside_if_branch_is_refused():
    then = helper.make_graph(
        [helper.make_node("Cast", ["w64"], ["w32"], to=F), helper.make_node("Add", ["x", "w32"], ["y_then"])],
        "then", [], [_vi("y_then", F, ["n"])], initializer=[numpy_helper.from_array(np.ones(1), "w64")],
    )  # fmt: skip
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["y_else"])], "else", [], [_vi("y_else", F, ["n"])])
    node = helper.make_node("If", ["c"], ["y"], name="gate", then_branch=then, else_branch=other)
    model = _model([node], [_vi("c", TensorProto.BOOL, []), _vi("x", F, ["n"])], [_vi("y", F, ["n"])])
    _refused(model, "DOUBLE", "If 'gate'.then_branch: initializer 'w64'")


def test_unsupported_op_is_refused():
    node = helper.make_node("Det", ["x"], ["y"], name="det")
    report = _refused(_model([node], [_vi("x", F, [3, 3])], [_vi("y", F, [])]), "op Det is marked unsupported", "'det'")
    assert report.line() == "g: refused: " + report.reasons[0]


def test_com_microsoft_op_is_refused_naming_its_domain():
    node = helper.make_node("MatMulNBits", ["a", "b", "s"], ["y"], name="mm4", domain="com.microsoft", K=8, N=4,
                            bits=4, block_size=8)  # fmt: skip
    b = numpy_helper.from_array(np.zeros((4, 1, 4), np.uint8), "b")
    s = numpy_helper.from_array(np.ones(4, np.float32), "s")
    model = _model([node], [_vi("a", F, ["n", 8])], [_vi("y", F, ["n", 4])], [b, s], extra_opsets=[("com.microsoft", 1)])
    _refused(model, "com.microsoft.MatMulNBits", "domain 'com.microsoft'", "'mm4'")


def test_range_limit_from_input_values_is_refused():
    nodes = [
        helper.make_node("ReduceMax", ["length"], ["longest"], name="longest", keepdims=0),
        helper.make_node("Range", ["zero", "longest", "one"], ["frames"], name="frames"),
    ]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("one", 1))]
    model = _model(nodes, [_vi("length", I64, ["batch"])], [_vi("frames", I64, ["t"])], consts)
    _refused(model, "data-dependent output shape", "Range 'frames' limit comes from the values of input length")


def test_nonzero_is_refused():
    node = helper.make_node("NonZero", ["x"], ["idx"], name="nz")
    _refused(_model([node], [_vi("x", F, ["n"])], [_vi("idx", I64, [1, "k"])]), "NonZero 'nz'", "input values")


def test_int4_dequantize_into_conv_is_refused():
    inits, dq = _int4("w", [4, 2, 3])
    conv = helper.make_node("Conv", ["x", "w_dq"], ["y"], name="conv")
    model = _model([dq, conv], [_vi("x", F, [1, 2, 10])], [_vi("y", F, [1, 4, 8])], inits, opset=21)
    _refused(model, "INT4 DequantizeLinear not feeding MatMul/Gemm", "Conv 'conv'")


def test_int4_dequantize_through_reshape_is_refused():
    inits, dq = _int4("w", [4, 6], block=2)
    shape = numpy_helper.from_array(np.array([4, 2, 3], np.int64), "shape")
    nodes = [dq, helper.make_node("Reshape", ["w_dq", "shape"], ["w3"], name="r"),
             helper.make_node("Conv", ["x", "w3"], ["y"], name="conv")]  # fmt: skip
    model = _model(nodes, [_vi("x", F, [1, 2, 10])], [_vi("y", F, [1, 4, 8])], [*inits, shape], opset=21)
    _refused(model, "INT4 DequantizeLinear", "Reshape 'r'")


def test_int4_dequantize_into_matmul_builds():
    inits, dq = _int4("w", [4, 8], block=2)  # (K, N) weight, blocks of 2 along K
    mm = helper.make_node("MatMul", ["x", "w_dq"], ["y"], name="mm")
    model = _model([dq, mm], [_vi("x", F, ["n", 4])], [_vi("y", F, ["n", 8])], inits, opset=21)
    report = check_trt(model)
    assert report.ok and report.line() == "g: builds", report.reasons
    assert not any("block" in n for n in report.notes), report.notes


def test_range_from_shape_and_length_masks_build():
    """Sizes from ``Shape`` are fine; ``length`` only feeds a mask (a comparison), not a size."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "one"], ["t"], axis=0),
        helper.make_node("Range", ["zero", "t", "one"], ["steps"], name="steps"),
        helper.make_node("Unsqueeze", ["steps", "axis0"], ["steps2"]),
        helper.make_node("Unsqueeze", ["length", "axis1"], ["length2"]),
        helper.make_node("Less", ["steps2", "length2"], ["mask"]),
        helper.make_node("Cast", ["mask"], ["maskf"], to=F),
        helper.make_node("Mul", ["x", "maskf"], ["y"]),
    ]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("one", 1))]
    consts += [numpy_helper.from_array(np.array([a], np.int64), f"axis{a}") for a in (0, 1)]
    model = _model(nodes, [_vi("x", F, ["batch", "time"]), _vi("length", I64, ["batch"])],
                   [_vi("y", F, ["batch", "time"])], consts)  # fmt: skip
    report = check_trt(model)
    assert report.ok, report.reasons


# ---------------------------------------------------------------------------------------------- real exports


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A two-layer tiny_mel encoder at squeeze 2 (parity-checked), and a graph refused for a float64 Cast."""
    from nemo_sew.encoder import build_encoder
    from nemo_sew.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("trt_check")
    good = export_onnx(build_encoder("tiny_mel", num_layers=2), d / "s2.onnx", profile={"squeeze": 2}, cases=1).path
    bad = d / "bad.onnx"
    node = helper.make_node("Cast", ["x"], ["y"], name="to64", to=TensorProto.DOUBLE)
    onnx.save(_model([node], [_vi("x", F, ["n"])], [_vi("y", TensorProto.DOUBLE, ["n"])]), str(bad))
    return good, bad


def test_exported_encoder_builds(exported):
    report = check_trt(exported[0])
    assert report.ok and report.line() == "s2.onnx: builds", report.reasons


def test_dry_run_script(exported):
    good, bad = exported
    script = [sys.executable, str(TRT_DIR / "build_engines.py"), "--dry-run"]
    proc = subprocess.run([*script, str(good)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "s2.onnx: builds", proc.stdout + proc.stderr
    proc = subprocess.run([*script, str(good), str(bad)], capture_output=True, text=True, timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 1 and lines[0] == "s2.onnx: builds", proc.stdout + proc.stderr
    assert lines[1].startswith("bad.onnx: refused: float64 (DOUBLE)") and "Traceback" not in proc.stderr


def test_cif_fractional_squeeze_report(tmp_path):
    """Fractional squeeze (CIF) graphs are being fixed separately: print the report, assert nothing about it."""
    from nemo_sew.encoder import build_encoder
    from nemo_sew.export.onnx import export_onnx

    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"squeeze": {"low": 1.0, "high": 4.0}})
    path = export_onnx(enc, tmp_path / "cif1.5.onnx", profile={"squeeze": 1.5}, check=False).path
    report = check_trt(path)
    print(report.line())
    for note in report.notes:
        print("note:", note)
