"""``nemo-sew bench cpu --quick``: every column, parity with transformers and onnxruntime, op profile, MAC count.

Not a timed test: latencies are only checked to be positive; the numbers that matter come from the full
benchmark (BENCHMARKS.md). Tolerance for ours vs transformers and ours vs onnxruntime: 1e-4 max abs (fp32).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from nemo_sew.cli import main  # noqa: E402
from benchmarks.quant_cpu import INT8_GOAL, PEER_RUNTIME  # noqa: E402
from nemo_sew.convert.transformers import transformers_config  # noqa: E402
from nemo_sew.evaluate import count_macs  # noqa: E402

TOL = 1e-4
COLUMNS = ["model", "runtime", "params (M)", "GMACs / s audio", "batch", "median latency (ms)", "RTFx", "GFLOP/s",
           "% of matmul peak", "max abs diff vs ours eager"]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_cpu")
    json_path, md_path = out / "bench.json", out / "BENCHMARKS.md"
    threads = torch.get_num_threads()
    # 1 thread: tiny ops on a busy machine, where a second thread mostly waits at OpenMP barriers
    argv = ["bench", "cpu", "--quick", "--threads", "1", "--profile-ops", "--json", str(json_path), "--write", str(md_path)]
    rc = main(argv)
    assert torch.get_num_threads() == threads  # restored
    return rc, json.loads(json_path.read_text()), md_path.read_text()


def test_quick_run_writes_every_row_and_column(quick_run):
    rc, data, markdown = quick_run
    assert rc == 0
    settings = data["settings"]
    rows = data["rows"]
    # per preset: ours eager, ours onnxruntime, transformers, at every batch, and 4 quantized forms plus the
    # transformers peer timed in their rounds at batch 1; then the Conformer at every batch
    assert len(rows) == (3 * len(settings["presets"]) + 1) * len(settings["batches"]) + 5 * len(settings["presets"])
    runtimes = {(r["model"].split(" ")[0], r["runtime"]) for r in rows if not r["model"].endswith("PTQ")}
    assert runtimes == {("ours", "PyTorch eager"), ("ours", "onnxruntime fp32"), ("transformers", "PyTorch eager"),
                        ("transformers", PEER_RUNTIME), ("NeMo", "PyTorch eager")}  # fmt: skip
    for r in rows:
        for key in ("params_m", "gmacs_per_s", "latency_ms", "rtfx", "gflops", "peak_fraction"):
            assert math.isfinite(r[key]) and r[key] > 0, (r["model"], key, r[key])
        achieved = 2 * r["gmacs_per_s"] * settings["seconds"] * r["batch"] / (r["latency_ms"] / 1e3)  # GFLOP/s
        assert r["gflops"] == pytest.approx(achieved, rel=1e-6)
    assert data["threads"] == 1 and data["matmul"]["gflops"] > 0 and data["matmul"]["samples"] > 10
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in markdown
    assert sum(line.startswith("| ") for line in markdown.splitlines()) >= len(rows) + 2
    assert data["command"].startswith("nemo-sew bench cpu --quick")
    # three kinds of ratio per preset, each stated against its goal
    names = [q["name"] for q in data["ratios"]]
    assert any("vs transformers SEWModel" in n for n in names) and any("onnxruntime vs ours eager" in n for n in names)
    assert any("fraction of matmul peak" in n for n in names)
    assert markdown.count("**met**") + markdown.count("**not met**") == len(data["ratios"])


def test_quick_run_parity_with_transformers_and_onnxruntime(quick_run):
    _, data, _ = quick_run
    compared = [r for r in data["rows"] if not r["model"].endswith("PTQ") and r["runtime"] != PEER_RUNTIME
                and (r["model"].startswith("transformers") or r["runtime"].startswith("onnx"))]  # fmt: skip
    assert len(compared) == 2 * len(data["settings"]["presets"]) * len(data["settings"]["batches"])
    for r in compared:
        assert r["max_abs_diff"] <= TOL, (r["model"], r["runtime"], r["batch"], r["max_abs_diff"])
    # our parameter count equals the transformers model's: the same weights, masked_spec_embed -> our mask_emb
    for preset in data["settings"]["presets"]:
        ours = next(r for r in data["rows"] if r["preset"] == preset and r["model"].startswith("ours"))
        peer = next(r for r in data["rows"] if r["preset"] == preset and r["model"].startswith("transformers"))
        assert peer["params_m"] == pytest.approx(ours["params_m"])
        assert transformers_config(preset).mask_time_prob > 0  # so both models hold the mask embedding


def test_op_profile_groups(quick_run):
    _, data, markdown = quick_run
    profile = data["op_profile"]
    assert profile["batch"] == max(data["settings"]["batches"])
    groups = profile["groups"]
    assert {"front end", "attention", "FFN", "weight norm", "other"} <= set(groups)
    assert sum(g["share"] for g in groups.values()) == pytest.approx(1.0)
    assert "| group | self CPU (ms / forward) | share | top ops (ms) |" in markdown


def test_count_macs_includes_cpu_attention():
    q = torch.randn(2, 3, 50, 16)  # (B, H, T, d)
    mask = torch.ones(2, 1, 1, 50, dtype=torch.bool)
    macs = count_macs(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask))
    assert macs == 2 * 2 * 3 * 50 * 50 * 16  # scores and weighted values, B * H * T * T * d each


def test_transformers_config_rejects_mel_presets():
    with pytest.raises(ValueError, match="expected a waveform preset"):
        transformers_config("tiny_mel")


def test_quantized_rows_and_int8_peak(quick_run):
    _, data, markdown = quick_run
    ptq = [r for r in data["rows"] if r["model"].endswith("PTQ")]
    assert {r["batch"] for r in ptq} == {1} and len(ptq) == 4 * len(data["settings"]["presets"])
    assert any("MatMulNBits 4-bit" in r["runtime"] for r in ptq) and any("int8 dynamic" in r["runtime"] for r in ptq)
    assert any("int8 static" in r["runtime"] for r in ptq)
    # the quantized forms are compared with the transformers peer timed in their own rounds, against the int8 goal
    for preset in data["settings"]["presets"]:
        peer = next(r for r in data["rows"] if r["preset"] == preset and r["runtime"] == PEER_RUNTIME)
        static = next(q for q in data["ratios"] if q["name"].startswith(f"{preset}: onnxruntime int8 static")
                      and "vs transformers" in q["name"])  # fmt: skip
        assert static["detail"].startswith(f"{peer['latency_ms']:.1f} ms /") and static["goal"] == INT8_GOAL
    for r in ptq:  # the quantization error shows, but the output is the same encoder's
        assert 0 < r["max_abs_diff"] < 10 and r["latency_ms"] > 0  # random weights: 4-bit error is O(1)
    assert data["matmul"]["int8"]["gflops"] > 0 and data["matmul"]["int8"]["ratio"] > 0 and "int8 matmul (torch._int_mm" in markdown
    names = [q["name"] for q in data["ratios"]]
    assert sum("vs transformers" in n and "PTQ" not in n and "onnxruntime" in n and "batch 1" in n for n in names) >= 3
    # regression: the fp32 ratios use the fp32 onnxruntime row, not a quantized one
    for preset in data["settings"]["presets"]:
        fp_ort = next(r for r in data["rows"] if r["preset"] == preset and r["runtime"] == "onnxruntime fp32" and r["batch"] == 1)
        ratio = next(q for q in data["ratios"] if q["name"] == f"{preset}: onnxruntime vs ours eager, batch 1")
        assert ratio["detail"].endswith(f"/ {fp_ort['latency_ms']:.1f} ms")
