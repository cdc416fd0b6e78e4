"""Quantized CPU rows of ``nemo-sew bench cpu``: the onnxruntime int8 and 4-bit fast paths of our encoder.

For each waveform preset, our encoder (the same weights as the transformers peer) is quantized (PTQ, 8-bit per
channel and 4-bit groups of 32, every weight) and exported in the onnxruntime-native forms of
:mod:`nemo_sew.quant.onnx`:

* ``int8_dynamic``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per channel, activations
  quantized per batch; MatMuls only, the front-end convs stay fp32);
* ``qdq`` 8-bit: INT8 ``DequantizeLinear`` weights, which onnxruntime fuses into ``MatMulNBits`` (8-bit,
  int8 compute at its default accuracy level);
* ``matmul_nbits`` 4-bit: ``MatMulNBits`` built from our codes, int8 compute (``accuracy_level=4``).

* ``int8_static``: ``onnxruntime.quantization.quantize_static`` (QDQ, int8 weights per channel, uint8
  activations with calibrated scales) of every Conv and weight MatMul, attention as onnxruntime's fused
  ``MultiHeadAttention`` (:mod:`nemo_sew.nn.ort_ops`). These encoders have random weights, so the calibration
  utterances are random waveforms (0.1 RMS, 2-10 s); on a trained model they are real speech
  (``nemo-sew bench quant --fast-paths``, ``nemo-sew export --quant-form int8_static --calibration``).
* with ``--torchao``: torchao's PT2E int8 static quantization for x86 (``X86InductorQuantizer``: int8 convs and
  linears, per-channel weights) of the exported encoder at the benchmark's input shape, compiled by inductor
  with freezing (oneDNN's int8 kernels): the torch alternative to the onnxruntime forms.

Batch 1, timed in the same interleaved rounds as the matmul probes and the transformers fp32 peer (so the
ratios to it come from one set of rounds). The int8 matmul peak is
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
    ("onnxruntime int8 static (W8 per channel, A8 calibrated, fused attention)", "int8_static", 8),
    ("onnxruntime int8 dynamic (W8 per channel, A8 per batch)", "int8_dynamic", 8),
    ("onnxruntime QDQ int8 weights (fused MatMulNBits, int8 compute)", "qdq", 8),
    ("onnxruntime MatMulNBits 4-bit g32 (int8 compute)", "matmul_nbits", 4),
)
QUANT_GOAL = 2.0  # issue 13: a quantized CPU path >= 2x faster than transformers' fp32 model, batch 1
INT8_GOAL = 3.0  # issue 27: the CPU int8 path >= 3x transformers' fp32 model on sew_tiny, batch 1
TORCHAO_LABEL = "torchao PT2E int8 static (X86InductorQuantizer) + torch.compile"
PEER_RUNTIME = "PyTorch eager, timed in the quantized rounds"


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


def _calibration_waves(seconds: float, seed: int) -> list:
    """Random 0.1-RMS waveforms of 0.2x-1x ``seconds`` (random-weight encoders have no speech to calibrate on)."""
    gen = torch.Generator().manual_seed(seed + 4241)
    lengths = [max(1, int(16000 * seconds * f)) for f in (1.0, 0.2, 0.6, 0.4, 0.8, 1.0)]
    return [(0.1 * torch.randn(n, generator=gen)).numpy() for n in lengths]


def _plain_linears(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each :class:`nemo_sew.nn.linear.Linear` replaced by a ``torch.nn.Linear`` holding the same
    parameters: torchao's ``X86InductorQuantizer`` annotates only exact ``torch.nn.Linear`` modules (with our
    subclass it left every linear layer in fp32: 1.02x transformers instead of 1.87x, one run)."""
    from nemo_sew.nn.linear import Linear

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is Linear:
                plain = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
                plain.weight, plain.bias = child.weight, child.bias
                setattr(parent, name, plain)
    return model


def torchao_int8(ours: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, calibration: list) -> Callable:
    """torchao's PT2E x86 int8 static quantization of ``ours`` at ``x``'s shape, compiled (see the module
    docstring); returns the compiled callable after its first (compiling) call. Raises ImportError without
    torchao."""
    import torch._inductor.config as inductor_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    model = _plain_linears(copy.deepcopy(ours).eval())
    with torch.no_grad():
        graph = torch.export.export(model, (), {"audio_signal": x, "length": lengths}, strict=False).module()
        quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
        prepared = prepare_pt2e(graph, quantizer)
        for wave in calibration:  # the exported graph has x's shape: each utterance is cut or zero-padded to it
            xc = torch.zeros_like(x)
            n = min(x.shape[-1], wave.shape[-1])
            xc[..., :n] = torch.from_numpy(wave[:n])
            prepared(audio_signal=xc, length=torch.full_like(lengths, n))
        converted = convert_pt2e(prepared)
    # compiled and first called as the timed rounds call it (inference mode): a change of grad mode between the
    # compiling call and the timed ones would recompile there, outside the freezing patch (unpacked int8 weights)
    with inductor_config.patch(freezing=True), torch.inference_mode():
        compiled = torch.compile(converted)
        compiled(audio_signal=x, length=lengths)
    return lambda: compiled(audio_signal=x, length=lengths)


def quant_rows(ours: torch.nn.Module, inputs: Callable, preset: str, s: Any, probe: Any, threads: int, work_dir: Path,
               log: Callable[[str], None], macs: float, peer: tuple[str, float, float, Callable] | None = None) -> list:  # fmt: skip
    """Batch-1 rows of the quantized forms of ``ours`` (see the module docstring). ``peer``: (name, params M,
    GMACs, call) of the transformers fp32 model, timed in the same rounds (a row of its own)."""
    from benchmarks.cpu import _max_abs_diff, _ort_session, _params_m, _row
    from nemo_sew.quant import quantize_encoder
    from nemo_sew.quant.onnx import calibration_feeds, export_quantized_onnx

    q = copy.deepcopy(ours).eval()
    quantize_encoder(q, (8, 4), keep_fp=False, group_size=32)
    x, lengths = inputs(1)
    feeds = {"audio_signal": x.numpy(), "length": lengths.numpy()}
    with torch.inference_mode():
        ref = ours(audio_signal=x, length=lengths)[0]
    waves = _calibration_waves(s.seconds, s.seed)
    calls, diffs = {}, {}
    for label, form, bits in QUANT_FORMS:
        q.set_profile({"weight_bits": bits})
        extra = {"calibration": calibration_feeds(q, waves)} if form == "int8_static" else {}
        path = export_quantized_onnx(q, work_dir / f"{preset}_{form}_{bits}.onnx", form, check=False, **extra).path
        session = _ort_session(path, threads)
        diffs[label] = _max_abs_diff(session.run(None, feeds)[0], ref)
        calls[label] = lambda sess=session: sess.run(None, feeds)
    if getattr(s, "torchao", False):
        log(f"{preset} batch 1: torchao PT2E int8 + torch.compile (compiling)")
        try:
            calls[TORCHAO_LABEL] = torchao_int8(ours, x, lengths, waves)
            with torch.inference_mode():
                diffs[TORCHAO_LABEL] = _max_abs_diff(calls[TORCHAO_LABEL]()[0], ref)
        except ImportError as err:
            log(f"torchao row skipped: {err}")
    peer_label = None
    if peer is not None:
        peer_label = f"{peer[0]}::peer"
        calls[peer_label] = peer[3]
    log(f"{preset} batch 1: timing quantized forms" + (" and the fp32 peer" if peer else "") + " (interleaved)")
    with torch.inference_mode():
        t = interleaved_ms({**calls, "matmul": probe}, max(0, s.warmup - 1), s.runs, s.max_timed_s)
    probe.times_ms += t["matmul"]
    name = f"ours {preset} PTQ"
    params = _params_m(ours)
    rows = [_row(name, label, preset, params, macs, s.seconds, 1, t[label], diffs[label]) for label in calls
            if label != peer_label]  # fmt: skip
    if peer is not None:
        rows.append(_row(peer[0], PEER_RUNTIME, preset, peer[1], peer[2], s.seconds, 1, t[peer_label], None))
    return rows


def quant_ratios(rows: list, presets: Any) -> list:
    """Quantized rows vs the transformers fp32 peer and vs our fp32 onnxruntime, batch 1."""
    from benchmarks.cpu import Ratio

    out = []
    for preset in presets:
        mine = [r for r in rows if r.preset == preset and r.batch == 1]
        # the peer timed in the quantized forms' own rounds when there is one (same rounds, same load)
        peers = [r for r in mine if r.model.startswith("transformers")]
        peer = next((r for r in peers if r.runtime == PEER_RUNTIME), peers[0] if peers else None)
        fp_ort = next((r for r in mine if r.runtime == "onnxruntime fp32"), None)
        for r in (r for r in mine if r.model.endswith("PTQ")):
            if peer is not None:
                v = peer.latency_ms / r.latency_ms
                goal = INT8_GOAL if "int8" in r.runtime else QUANT_GOAL
                out.append(Ratio(f"{preset}: {r.runtime} vs {peer.model.split(' (')[0]} fp32, batch 1", v, goal,
                                 v >= goal, f"{peer.latency_ms:.1f} ms / {r.latency_ms:.1f} ms"))  # fmt: skip
            if fp_ort is not None:
                v = fp_ort.latency_ms / r.latency_ms
                out.append(Ratio(f"{preset}: {r.runtime} vs our onnxruntime fp32, batch 1", v, 1.0, v >= 1.0,
                                 f"{fp_ort.latency_ms:.1f} ms / {r.latency_ms:.1f} ms"))  # fmt: skip
    return out
