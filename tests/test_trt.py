"""TensorRT scripts: the requirement check and its message, shape and precision rules on CPU, real builds on a GPU."""

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

TRT_DIR = Path(__file__).resolve().parents[1] / "trt"


@pytest.fixture()
def trt_scripts(monkeypatch):
    """The scripts' modules, imported as when run from trt/ (the script directory is on sys.path)."""
    monkeypatch.syspath_prepend(str(TRT_DIR))
    import bench_engines
    import build_engines
    import common

    yield types.SimpleNamespace(common=common, build=build_engines, bench=bench_engines)
    for name in ("common", "build_engines", "bench_engines"):
        sys.modules.pop(name, None)


def _missing() -> str | None:
    """Why real TensorRT tests cannot run here (None: they can)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install nemo-sew[trt])"
    if not torch.cuda.is_available():
        return "no CUDA GPU found"
    return None


# ---------------------------------------------------------------------------------------------- requirement check


def test_requirement_check_without_tensorrt(trt_scripts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    message = r"TensorRT is not installed \(pip install nemo-sew\[trt\]"
    with pytest.raises(trt_scripts.common.RequirementError, match=message):
        trt_scripts.common.require_tensorrt()


def test_requirement_check_without_gpu(trt_scripts, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.13.3"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(trt_scripts.common.RequirementError, match=r"no CUDA GPU found"):
        trt_scripts.common.require_tensorrt()


@pytest.mark.parametrize("script", ["build_engines.py", "bench_engines.py"])
def test_scripts_exit_with_one_clear_line(script, tmp_path):
    reason = _missing()
    if reason is None:
        pytest.skip("TensorRT and a GPU are present: the scripts would run")
    target = tmp_path / ("model.onnx" if script.startswith("build") else "model.plan")
    target.write_bytes(b"")
    argv = [str(target), "--out", str(tmp_path / "out")] if script.startswith("build") else [str(target)]
    proc = subprocess.run([sys.executable, str(TRT_DIR / script), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and reason.split(" (")[0] in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------------------------- rules (CPU)


def test_shape_ranges_from_exported_metadata(trt_scripts, tmp_path):
    from nemo_sew import build_encoder
    from nemo_sew.export import to_onnx

    enc = build_encoder("tiny_wfe_o")
    meta = trt_scripts.common.read_onnx_metadata(to_onnx(enc, tmp_path / "e.onnx", check=False))
    ranges = trt_scripts.common.shape_ranges(meta, (-1, 1, -1), (1, 8, 32), (0.01, 10, 30))
    assert ranges["audio_signal"] == ((1, 1, enc.min_input_length()), (8, 1, 160000), (32, 1, 480000))
    assert ranges["length"] == ((1,), (8,), (32,))
    mel = {"input": "features", "input_rate": "100.0", "min_input_length": "4"}
    assert trt_scripts.common.shape_ranges(mel, (-1, 80, -1), (1, 1, 4), (1, 2, 3))["audio_signal"][2] == (4, 80, 300)
    wave = {"input": "waveform", "input_rate": "16000.0", "min_input_length": "400"}
    assert trt_scripts.common.shape_ranges(wave, (-1, -1), (2, 2, 2), (1, 1, 1))["audio_signal"][0] == (2, 16000)
    with pytest.raises(ValueError, match="MIN,OPT,MAX"):
        trt_scripts.common.parse_triple("8,1,32")


def test_precision_rules_tensorrt_10_and_11(trt_scripts):
    plan, err = trt_scripts.common.precision_plan, trt_scripts.common.RequirementError
    assert plan(10, "fp16", "fp32", False) == trt_scripts.common.PrecisionPlan(False, "FP16", None)
    assert plan(10, "bf16", "fp32", False).builder_flag == "BF16"
    assert plan(10, "fp16", "fp16", False).strongly_typed and plan(11, "fp16", "fp16", False).builder_flag is None
    assert plan(11, "fp32", "fp32", False) == trt_scripts.common.PrecisionPlan(True)
    assert plan(11, "bf16", "fp32", True).convert_to == "bf16"
    with pytest.raises(err, match="strongly typed networks only .* --precision fp16"):
        plan(11, "fp16", "fp32", False)
    with pytest.raises(ValueError, match="the ONNX file is fp16 but fp32 was asked for"):
        plan(10, "fp32", "fp16", False)


def test_weight_only_qdq_is_built_strongly_typed(trt_scripts):
    plan = trt_scripts.common.precision_plan
    for major in (10, 11):  # no FP16/INT8 flags: the Q/DQ types decide
        assert plan(major, "fp32", "fp32", False, "qdq") == trt_scripts.common.PrecisionPlan(True)
    with pytest.raises(ValueError, match="onnxruntime-only 'matmul_nbits' form"):
        plan(11, "fp32", "fp32", False, "matmul_nbits")
    with pytest.raises(ValueError, match="built as exported"):
        plan(10, "fp16", "fp32", False, "qdq")


def test_markdown_table(trt_scripts):
    rows = [
        {"engine": "s2.fp16.plan", "profile": "s2", "precision": "fp16", "batch": 1, "seconds": 10.0, "p50_ms": 1.5,
         "p90_ms": 1.7, "throughput_utt_s": 666.7, "rtfx": 6666.7, "engine_memory_mb": 12.0, "io_memory_mb": 3.1},
        {"engine": "s2.fp16.plan", "profile": "s2", "precision": "fp16", "batch": 64, "seconds": 10.0,
         "skipped": "outside the profile"},
    ]  # fmt: skip
    table = trt_scripts.bench.to_markdown(rows, "header").splitlines()
    assert table[2].startswith("| engine | profile |") and len({line.count("|") for line in table[2:]}) == 1
    assert "| 6666.7 |" in table[4] and "skipped: outside the profile" in table[5]


def _gated_exports(tmp_path):
    """A tiny I3D encoder exported input-dependent (If nodes) and as its static profile."""
    from nemo_sew import CompressionProfile, build_encoder
    from nemo_sew.export import to_onnx
    from nemo_sew.export.static_gates import freeze_gates

    torch.manual_seed(0)
    enc = build_encoder("tiny_wfe_c", gates={"kind": "global", "init_logit": 0.0}).eval()
    base = CompressionProfile(depth_threshold=0.5, name="t0.5")
    x, lengths = torch.randn(2, 1, 16000), torch.tensor([16000, 11000])
    static = freeze_gates(enc, [(x, lengths)], profile=base)
    return to_onnx(enc, tmp_path / "t0.5.onnx", profile=base, cases=1), to_onnx(enc, tmp_path / "s.onnx", profile=static, cases=1)


def test_build_skips_input_dependent_gates_for_the_static_profile(trt_scripts, tmp_path):
    conditional, static = _gated_exports(tmp_path)
    read, skip = trt_scripts.common.read_onnx_metadata, trt_scripts.common.conditional_skip
    reason = skip(read(conditional))
    assert reason is not None and "t0.5_static" in reason and "--static-gates" in reason
    assert skip(read(conditional), allow_conditional=True) is None
    assert skip(read(static)) is None and read(static)["gates"] == "static"


# ---------------------------------------------------------------------------------------------- real engines (GPU)


def test_static_gates_profile_builds_an_engine(trt_scripts, tmp_path):
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    _, static = _gated_exports(tmp_path)
    trt = trt_scripts.common.require_tensorrt()
    info = trt_scripts.build.build_engine(trt, static, tmp_path, "fp32", (1, 2, 4), (0.5, 1.0, 2.0), workspace_gb=1)
    assert (tmp_path / info["engine"]).is_file() and info["metadata"]["gates"] == "static"


def test_build_and_bench_engine_matches_onnxruntime(trt_scripts, tmp_path):
    reason = _missing()
    if reason is not None:
        pytest.skip(reason)
    import onnxruntime as ort

    from nemo_sew import build_encoder
    from nemo_sew.export import to_onnx

    enc = build_encoder("tiny_wfe_c")
    onnx_path = to_onnx(enc, tmp_path / "s2.onnx", profile=2)
    trt = trt_scripts.common.require_tensorrt()
    info = trt_scripts.build.build_engine(trt, onnx_path, tmp_path, "fp32", (1, 2, 4), (0.5, 1.0, 2.0), workspace_gb=1)
    plan = tmp_path / info["engine"]
    rows = trt_scripts.bench.bench_engine(trt, plan, [1, 4, 8], [1.0], warmup=2, iters=5)
    assert [r["batch"] for r in rows if "skipped" not in r] == [1, 4] and "skipped" in rows[2]
    assert all(r["p50_ms"] > 0 and r["rtfx"] > 0 for r in rows[:2])

    # numbers: the engine agrees with onnxruntime on one padded batch
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    context = engine.create_execution_context()
    x = torch.randn(2, 1, 16000)
    lengths = torch.tensor([16000, 11000])
    ref, ref_len = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(
        None, {"audio_signal": x.numpy(), "length": lengths.numpy()}
    )
    io = {"audio_signal": x.cuda(), "length": lengths.cuda()}
    for name, t in io.items():
        context.set_input_shape(name, tuple(t.shape))
        context.set_tensor_address(name, t.data_ptr())
    for name in ("encoded", "encoded_len"):
        dtype = trt_scripts.common.torch_dtype(trt, engine.get_tensor_dtype(name))
        io[name] = torch.empty(tuple(context.get_tensor_shape(name)), device="cuda", dtype=dtype)
        context.set_tensor_address(name, io[name].data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    assert io["encoded_len"].cpu().tolist() == ref_len.tolist()
    t = int(ref_len[1])
    np.testing.assert_allclose(io["encoded"][1, :, :t].cpu().numpy(), ref[1, :, :t], atol=1e-3)


def test_engine_parity_counts_valid_frames_only_and_the_sweep_joins_engine_rows(trt_scripts, tmp_path):
    """bench_engines' parity against onnxruntime ignores padding but sees any valid frame; ``nemo-sew sweep
    --engines`` adds each profile's TensorRT latency, RTFx, engine size and parity by profile name."""
    import json

    from nemo_sew.sweep import _markdown, join_engines

    bench = trt_scripts.bench
    ref = np.zeros((2, 5, 3), dtype=np.float32)  # (B, T, V): a CTC graph's time axis 1
    got = ref.copy()
    got[1, 4] = 1.0  # padding of item 1 (length 4)
    assert bench.valid_max_abs_diff(got, ref, [5, 4], time_axis=1) == 0.0
    got[1, 3, 2] = 0.5  # its last valid frame
    assert bench.valid_max_abs_diff(got, ref, [5, 4], time_axis=1) == 0.5
    assert bench.valid_max_abs_diff(got[:, :4], ref, [5, 4], time_axis=1) == float("inf")
    (tmp_path / "s2.onnx").write_bytes(b"")
    assert bench.onnx_for(tmp_path / "s2.fp16.plan", {"onnx": "s2.onnx"}) == tmp_path / "s2.onnx"
    assert bench.onnx_for(tmp_path / "x.plan", {"onnx": "missing.onnx"}) is None

    rows = [{"name": "s2", "profile": {"squeeze": 2.0, "q_pool": None, "kv_pool": None}, "wer": 0.5, "cer": 0.2,
             "encoder_gmacs_per_s": 1.0, "latency_ms_10s": 50.0, "rtfx": 200.0},
            {"name": "s4", "profile": {"squeeze": 4.0, "q_pool": None, "kv_pool": None}, "wer": 0.6, "cer": 0.3,
             "encoder_gmacs_per_s": 0.5, "latency_ms_10s": 30.0, "rtfx": 330.0}]  # fmt: skip
    engine_rows = [{"profile": "s2", "batch": b, "seconds": s, "p50_ms": 1.0 * b * s, "rtfx": 100.0 / b,
                    "engine_mb": 12.5, "parity_vs_onnxruntime": 0.004} for b in (1, 16) for s in (10.0, 40.0)]
    engine_rows.append({"profile": "s2", "batch": 1, "seconds": 60.0, "skipped": "outside the profile"})
    (tmp_path / "bench.json").write_text(json.dumps({"rows": engine_rows}))
    joined = join_engines(rows, tmp_path / "bench.json")
    assert joined[0]["trt_p50_ms_b1"] == 40.0 and joined[0]["trt_p50_ms_b16"] == 640.0 and joined[0]["trt_seconds"] == 40.0
    assert joined[0]["trt_engine_mb"] == 12.5 and joined[0]["trt_parity"] == 0.004
    assert "trt_p50_ms_b1" not in joined[1]  # no engine for s4
    table = _markdown(joined, "nemo-sew sweep ...")
    header, rule, first = table.splitlines()[2:5]
    assert header.count("|") == rule.count("|") == first.count("|")
    assert "trt_p50_ms_b16" in header and "| 640.0 |" in first
