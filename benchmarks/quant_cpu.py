"""Quantized CPU rows of ``nemo-sew bench cpu``: the onnxruntime int8 and 4-bit fast paths of our encoder.

For each waveform preset, our encoder (the same weights as the transformers peer) is quantized (PTQ, 8-bit per
channel and 4-bit groups of 32, every weight) and exported in the onnxruntime-native forms of
:mod:`nemo_sew.quant.onnx`:

* ``int8_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per channel, activations
  quantized per batch; MatMuls only, the front-end convs stay fp32);
* ``qdq`` 8-bit: INT8 ``DequantizeLinear`` weights, which onnxruntime fuses into ``MatMulNBits`` (8-bit,
  int8 compute at its default accuracy level);
* ``matmul_nbits`` 4-bit: ``MatMulNBits`` built from our codes, int8 compute (``accuracy_level=4``).

Batch 1, timed in the same interleaved rounds as the matmul probes. The int8 matmul peak is
``torch._int_mm`` on ``n x n`` int8 matrices, timed in rounds interleaved with the fp32 matmul.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path
from typing import Any, Callable

import torch

from nemo_sew.measure import interleaved_ms

QUANT_FORMS = (
    ("onnxruntime int8 dynamic (W8 per channel, A8 per batch)", "int8_dynamic", 8),
    ("onnxruntime QDQ int8 weights (fused MatMulNBits, int8 compute)", "qdq", 8),
    ("onnxruntime MatMulNBits 4-bit g32 (int8 compute)", "matmul_nbits", 4),
)
QUANT_GOAL = 2.0  # issue 13: a quantized CPU path >= 2x faster than transformers' fp32 model, batch 1


def int8_matmul_peak(probe: Any, runs: int = 10) -> dict[str, Any]:
    """int8 x int8 -> int32 ``torch._int_mm`` on the fp32 probe's ``n x n`` shapes, timed in rounds interleaved
    with the fp32 probe (same load): GOP/s (2 n^3 per product), the fp32 GFLOP/s of those rounds, their ratio."""
    n = probe.n
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (n, n), generator=gen, dtype=torch.int8)
    b = torch.randint(-127, 128, (n, n), generator=gen, dtype=torch.int8)
    try:
        torch._int_mm(a, b)
    except (RuntimeError, AttributeError) as err:  # pragma: no cover - depends on the torch build
        return {"n": n, "gflops": None, "error": str(err)}
    t = interleaved_ms({"int8": lambda: torch._int_mm(a, b), "fp32": probe}, 2, max(runs, 5), 30.0)
    probe.times_ms += t["fp32"]
    ops = 2 * n**3
    int8, fp32 = ops / (statistics.median(t["int8"]) / 1e3) / 1e9, ops / (statistics.median(t["fp32"]) / 1e3) / 1e9
    return {"n": n, "gflops": int8, "best_gflops": ops / (min(t["int8"]) / 1e3) / 1e9, "fp32_gflops": fp32,
            "ratio": int8 / fp32, "samples": len(t["int8"])}  # fmt: skip


def quant_rows(ours: torch.nn.Module, inputs: Callable, preset: str, s: Any, probe: Any, threads: int, work_dir: Path,
               log: Callable[[str], None], macs: float) -> list:  # fmt: skip
    """Batch-1 rows of the quantized forms of ``ours`` (see the module docstring)."""
    from benchmarks.cpu import _max_abs_diff, _ort_session, _params_m, _row
    from nemo_sew.quant import quantize_encoder
    from nemo_sew.quant.onnx import export_quantized_onnx

    q = copy.deepcopy(ours).eval()
    quantize_encoder(q, (8, 4), keep_fp=False, group_size=32)
    x, lengths = inputs(1)
    feeds = {"audio_signal": x.numpy(), "length": lengths.numpy()}
    with torch.inference_mode():
        ref = ours(audio_signal=x, length=lengths)[0]
    sessions, diffs = {}, {}
    for label, form, bits in QUANT_FORMS:
        q.set_profile({"weight_bits": bits})
        path = export_quantized_onnx(q, work_dir / f"{preset}_{form}_{bits}.onnx", form, check=False).path
        sessions[label] = _ort_session(path, threads)
        diffs[label] = _max_abs_diff(sessions[label].run(None, feeds)[0], ref)
    log(f"{preset} batch 1: timing quantized onnxruntime forms")
    fns = {label: (lambda sess=sess: sess.run(None, feeds)) for label, sess in sessions.items()}
    t = interleaved_ms({**fns, "matmul": probe}, max(0, s.warmup - 1), s.runs, s.max_timed_s)
    probe.times_ms += t["matmul"]
    name = f"ours {preset} PTQ"
    params = _params_m(ours)
    return [_row(name, label, preset, params, macs, s.seconds, 1, t[label], diffs[label]) for label, *_ in QUANT_FORMS]


def quant_ratios(rows: list, presets: Any) -> list:
    """Quantized rows vs the transformers fp32 peer and vs our fp32 onnxruntime, batch 1."""
    from benchmarks.cpu import Ratio

    out = []
    for preset in presets:
        mine = [r for r in rows if r.preset == preset and r.batch == 1]
        peer = next((r for r in mine if r.model.startswith("transformers")), None)
        fp_ort = next((r for r in mine if r.runtime == "onnxruntime fp32"), None)
        for r in (r for r in mine if r.model.endswith("PTQ")):
            if peer is not None:
                v = peer.latency_ms / r.latency_ms
                out.append(Ratio(f"{preset}: {r.runtime} vs {peer.model.split(' (')[0]} fp32, batch 1", v, QUANT_GOAL,
                                 v >= QUANT_GOAL, f"{peer.latency_ms:.1f} ms / {r.latency_ms:.1f} ms"))  # fmt: skip
            if fp_ort is not None:
                v = fp_ort.latency_ms / r.latency_ms
                out.append(Ratio(f"{preset}: {r.runtime} vs our onnxruntime fp32, batch 1", v, 1.0, v >= 1.0,
                                 f"{fp_ort.latency_ms:.1f} ms / {r.latency_ms:.1f} ms"))  # fmt: skip
    return out
