"""CPU inference benchmark: our encoder (PyTorch eager and onnxruntime) against its peers, in one run.

    nemo-sew bench cpu --threads 1 --write BENCHMARKS.md --json outputs/bench_cpu.json --profile-ops
    nemo-sew bench cpu --quick --json outputs/bench_cpu_quick.json     # tiny configs, 1 s audio (tests)

For every preset (default ``sew_tiny`` and ``w2v2_base``) a randomly initialised transformers model of the
same size (``SEWModel`` for ``wfe_c`` presets, ``Wav2Vec2Model`` for ``wfe_o``; config from
:func:`nemo_sew.convert.transformers.transformers_config`) is built and converted with
:func:`nemo_sew.convert.from_transformers`, so our encoder has identical weights; the converted encoder
runs at its own profile (SEW: squeeze 2, wav2vec 2.0: squeeze 1). On ``seconds`` of 16 kHz audio at every
batch size it measures, in one process and at one thread count:

* our encoder in PyTorch eager, our fp32 ONNX export (:func:`nemo_sew.export.export_onnx`) in onnxruntime
  (intra-op threads = torch threads), the transformers model in eager;
* once per run, a NeMo ``ConformerEncoder`` (Conformer-CTC settings, fitted to the first preset's parameter
  count) on the same duration of 80-bin log-mel features;
* the machine's fp32 matmul throughput (median of timed ``n x n`` matmuls), the reference for "% of peak".

The runtimes of one model and batch (and a matmul) are timed in interleaved rounds
(:func:`nemo_sew.measure.interleaved_ms`), so load from other work on the machine affects them alike;
the matmul samples pool over the whole run.
``threads`` sets torch's and onnxruntime's intra-op threads (default: torch's current setting). On a machine
busy with other work, 1 thread is the steadier choice: with 2 threads on 2 busy cores every parallel op
waits for a descheduled thread, which slows small-op eager code far more than matmuls.

Every row has: parameters, encoder GMACs per second of audio (``torch.utils.flop_counter``, with the CPU
SDPA kernel counted, see :func:`nemo_sew.evaluate.count_macs`), median latency, RTFx, achieved GFLOP/s
(``2 * MACs / latency``), its fraction of the matmul throughput and the max abs output difference against
our eager encoder on the benchmark input. Ratios against the goals of issue 5 are computed within the run
(:data:`GOALS`).

``profile_ops`` attributes torch.profiler self CPU time of our eager encoder to front end / weight norm /
squeeze / attention / FFN / expander / other, by module scopes added with hooks for the profiled forward only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from benchmarks.report import machine_line
from nemo_sew.convert.transformers import transformers_config
from nemo_sew.cost import encoder_cost
from nemo_sew.evaluate import count_macs
from nemo_sew.measure import interleaved_ms, timed_ms

SAMPLE_RATE = 16000
MEL_FRAMES_PER_SECOND = 100  # NeMo's default 10 ms hop
GOALS = {"eager_vs_transformers": 1.3, "onnxruntime_vs_eager": 1.5, "matmul_peak_fraction": 0.40}
"""Issue 5 targets: our eager vs the transformers peer (latency ratio), onnxruntime vs our eager (latency
ratio), achieved GFLOP/s of our encoder at the largest batch as a fraction of the measured matmul throughput."""

# NeMo Conformer-CTC encoder settings (examples/asr/conf/conformer/conformer_ctc_bpe.yaml); the number of
# layers is fitted to the parameter count of the first preset, the width is a setting
CONFORMER_CTC = dict(
    feat_in=80, subsampling="striding", subsampling_factor=4, ff_expansion_factor=4, self_attention_model="rel_pos",
    conv_kernel_size=31, xscaling=True, untie_biases=True, dropout=0.0, dropout_pre_encoder=0.0, dropout_emb=0.0,
    dropout_att=0.0,
)  # fmt: skip


@dataclass
class CpuBenchSettings:
    """What ``nemo-sew bench cpu`` measures; :meth:`quick` is the tiny version the tests run."""

    presets: tuple[str, ...] = ("sew_tiny", "w2v2_base")  # waveform presets (nemo_sew.arch.PRESETS)
    seconds: float = 10.0  # audio per utterance
    batches: tuple[int, ...] = (1, 8)
    warmup: int = 1  # untimed rounds (for our encoder and its peers: the parity forwards)
    runs: int = 5  # timed rounds (fewer once max_timed_s per runtime is spent, never fewer than 3)
    max_timed_s: float = 30.0
    threads: int | None = None  # torch and onnxruntime intra-op threads; None = torch's current setting
    matmul_n: int = 2048
    conformer_d_model: int = 256  # Conformer-CTC medium width; heads = d_model / 64
    perturb: float = 0.02  # std of noise added to every random weight (exercises constant-initialised ones)
    seed: int = 0
    quant: bool = True  # batch-1 rows of the quantized onnxruntime forms + the int8 matmul peak (issue 13)
    torchao: bool = False  # and torchao's PT2E int8 + torch.compile row (issue 27; compiling takes a minute or more)

    @classmethod
    def quick(cls) -> "CpuBenchSettings":
        return cls(presets=("tiny_wfe_c", "tiny_wfe_o"), seconds=1.0, batches=(1, 8), warmup=1, runs=2,
                   max_timed_s=5.0, matmul_n=512, conformer_d_model=64)  # fmt: skip


@dataclass
class Row:
    """One model x runtime x batch measurement."""

    model: str
    runtime: str
    preset: str | None
    params_m: float
    gmacs_per_s: float  # encoder GMACs per second of audio (batch 1)
    batch: int
    latency_ms: float  # median
    latencies_ms: list[float]
    rtfx: float
    gflops: float  # achieved: 2 * batch * MACs / latency
    peak_fraction: float  # gflops / matmul GFLOP/s
    max_abs_diff: float | None  # against our eager encoder on the same input (None for the references)


@dataclass
class Ratio:
    name: str
    value: float
    goal: float
    met: bool
    detail: str


@dataclass
class CpuBenchResult:
    settings: CpuBenchSettings
    command: str
    machine: str
    threads: int
    load_average: dict[str, list[float]]
    matmul: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    op_profile: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------------
# the matmul reference (timing: nemo_sew.measure)


class MatmulProbe:
    """fp32 ``n x n @ n x n`` matmuls, timed before the models and inside every round of model timings.

    The pooled median is the run's matmul throughput under the same conditions as the models (the "peak"
    that achieved GFLOP/s are compared with); the best sample is kept as well.
    """

    def __init__(self, n: int = 2048) -> None:
        gen = torch.Generator().manual_seed(0)
        self.n = n
        self.a, self.b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
        self.times_ms: list[float] = []

    def __call__(self) -> torch.Tensor:
        return torch.mm(self.a, self.b)

    def measure(self, warmup: int = 3, runs: int = 10) -> None:
        self.times_ms += timed_ms(self, warmup, runs)

    def summary(self) -> dict[str, Any]:
        flops = 2 * self.n**3
        median = statistics.median(self.times_ms)
        return {"n": self.n, "gflops": flops / (median / 1e3) / 1e9, "best_gflops": flops / (min(self.times_ms) / 1e3) / 1e9,
                "median_ms": median, "samples": len(self.times_ms), "times_ms": list(self.times_ms)}  # fmt: skip


def _params_m(module: nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def _max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a, b = torch.as_tensor(np.asarray(a, dtype=np.float32)), torch.as_tensor(np.asarray(b, dtype=np.float32))
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------------------
# models


def random_transformers_model(preset: str, perturb: float = 0.02, seed: int = 0) -> nn.Module:
    """A randomly initialised ``SEWModel`` / ``Wav2Vec2Model`` of the preset's size, in eval mode.

    ``perturb`` adds Gaussian noise to every weight, so that zero biases and unit LayerNorm weights differ and
    a mistake in the name map would show in the parity numbers.
    """
    import transformers

    config = transformers_config(preset)
    cls = transformers.SEWModel if config.model_type == "sew" else transformers.Wav2Vec2Model
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(perturb * torch.randn_like(p))
    return model.eval()


def conformer_encoder(target_params_m: float, d_model: int, seed: int = 0) -> tuple[nn.Module, int]:
    """NeMo ``ConformerEncoder`` (:data:`CONFORMER_CTC`, width ``d_model``) with the layer count whose
    parameter count is closest to ``target_params_m``; returns the encoder (eval mode) and the layer count."""
    from nemo.collections.asr.modules import ConformerEncoder

    def build(layers: int) -> nn.Module:
        return ConformerEncoder(**CONFORMER_CTC, n_layers=layers, d_model=d_model, n_heads=max(1, d_model // 64))

    torch.manual_seed(seed)
    one, two = _params_m(build(1)), _params_m(build(2))
    per_layer, base = two - one, 2 * one - two
    layers = max(1, int(round((target_params_m - base) / per_layer)))
    torch.manual_seed(seed)
    return build(layers).eval(), layers


# ------------------------------------------------------------------------------------------------------
# onnxruntime


def _ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------------------------
# op profile of our eager encoder


SCOPE = "benchmarks::"


def _our_scopes(encoder: nn.Module) -> dict[str, list[nn.Module]]:
    """Module groups of a :class:`~nemo_sew.SqueezeEncoder` for :func:`profile_ops` (innermost scope wins)."""
    from torch.nn.utils.parametrize import ParametrizationList

    layers = list(getattr(encoder, "layers", []))
    expander = getattr(encoder, "expander", None)
    return {
        "front end": [encoder.frontend, encoder.projection],
        "squeeze + pos conv": [encoder.compressor],
        "weight norm": [m for m in encoder.modules() if isinstance(m, ParametrizationList)],
        "attention": [b.body for layer in layers for n, b in layer.branches().items() if n == "attn"],
        "FFN": [b.body for layer in layers for n, b in layer.branches().items() if n.startswith("ffn")],
        "conv module": [b.body for layer in layers for n, b in layer.branches().items() if n == "conv"],
        "expander": [expander] if expander is not None else [],
    }  # fmt: skip


@contextlib.contextmanager
def _record_scopes(groups: dict[str, list[nn.Module]]) -> Iterator[None]:
    """Wrap every listed module's forward in a ``record_function`` named after its group (hooks, removed after)."""
    stack: list[Any] = []
    handles = []

    def pre(name: str):
        def hook(module, args):
            scope = torch.profiler.record_function(SCOPE + name)
            scope.__enter__()
            stack.append(scope)

        return hook

    def post(module, args, output):
        stack.pop().__exit__(None, None, None)

    for name, modules in groups.items():
        for m in modules:
            handles += [m.register_forward_pre_hook(pre(name)), m.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_ops(
    encoder: nn.Module, x: torch.Tensor, lengths: torch.Tensor, top: int = 5, forwards: int = 2
) -> dict[str, Any]:
    """Self CPU time of our encoder per group and per op (torch.profiler, ``forwards`` forwards after a warm-up).

    Every op's self time goes to the innermost group scope around it ("other": layer norms, residuals,
    masks, NeMo's type checks); a scope's own self time (Python and dispatch between ops) is listed as
    ``[python]`` in its group.
    """
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        encoder(audio_signal=x, length=lengths)
        with _record_scopes(_our_scopes(encoder)), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(forwards):
                encoder(audio_signal=x, length=lengths)
    per_op: dict[tuple[str, str], list[float]] = {}
    for event in prof.events():
        name = event.name
        group, parent = "other", event.cpu_parent
        while parent is not None:
            if parent.name.startswith(SCOPE):
                group = parent.name[len(SCOPE) :]
                break
            parent = parent.cpu_parent
        if name.startswith(SCOPE):
            group, name = name[len(SCOPE) :], "[python]"
        entry = per_op.setdefault((group, name), [0.0, 0])
        entry[0] += event.self_cpu_time_total / 1e3 / forwards  # ms per forward
        entry[1] += 1
    total = sum(v[0] for v in per_op.values())
    groups: dict[str, dict[str, Any]] = {}
    for (group, name), (ms, calls) in per_op.items():
        g = groups.setdefault(group, {"ms": 0.0, "ops": []})
        g["ms"] += ms
        g["ops"].append({"op": name, "ms": ms, "calls": calls // forwards})
    for g in groups.values():
        g["share"] = g["ms"] / total if total else 0.0
        g["ops"] = sorted(g["ops"], key=lambda o: -o["ms"])[:top]
    ops = sorted(({"group": g, "op": n, "ms": v[0], "share": v[0] / total if total else 0.0} for (g, n), v in per_op.items()),
                 key=lambda o: -o["ms"])  # fmt: skip
    return {
        "batch": int(x.shape[0]), "forwards": forwards, "total_ms": total,
        "groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["ms"])), "top_ops": ops[: 3 * top],
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------------
# the benchmark


def _row(model: str, runtime: str, preset: str | None, params_m: float, macs: float, seconds: float, batch: int,
         times: list[float], diff: float | None) -> Row:  # fmt: skip
    median = statistics.median(times)
    gflops = 2 * macs * batch / (median / 1e3) / 1e9
    return Row(model=model, runtime=runtime, preset=preset, params_m=params_m, gmacs_per_s=macs / 1e9 / seconds,
               batch=batch, latency_ms=median, latencies_ms=times, rtfx=batch * seconds / (median / 1e3),
               gflops=gflops, peak_fraction=float("nan"), max_abs_diff=diff)  # fmt: skip


def _bench_family(
    preset: str, s: CpuBenchSettings, probe: MatmulProbe, threads: int, work_dir: Path, log: Callable[[str], None]
) -> tuple[list[Row], nn.Module, Callable]:
    """Rows of one preset (ours eager, ours onnxruntime, the transformers model); our encoder and its inputs(batch)."""
    from nemo_sew.convert import from_transformers
    from nemo_sew.export import export_onnx

    hf = random_transformers_model(preset, s.perturb, s.seed)
    hf_name = f"transformers {type(hf).__name__} ({hf.config._attn_implementation})"
    ours = from_transformers(hf).eval()
    squeeze = ours.squeeze
    our_name = f"ours {preset} (s={squeeze:g})"
    onnx_path = work_dir / f"{preset}.onnx"
    export_onnx(ours, onnx_path, check=False)
    session = _ort_session(onnx_path, threads)
    n = int(round(s.seconds * SAMPLE_RATE))
    gen = torch.Generator().manual_seed(s.seed + 1)
    audio = 0.1 * torch.randn(max(s.batches), n, generator=gen)  # (B_max, N)

    def inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return audio[:batch, None, :].contiguous(), torch.full((batch,), n, dtype=torch.int64)  # (B, 1, N), (B,)

    x1, l1 = inputs(1)
    our_macs = float(encoder_cost(ours.arch, None, n).total)  # the analytic cost model (== count_macs, tested)
    hf_macs = count_macs(lambda: hf(input_values=x1[:, 0]))
    our_params, hf_params = _params_m(ours), _params_m(hf)
    rows: list[Row] = []
    for batch in s.batches:
        x, lengths = inputs(batch)
        feeds = {"audio_signal": x.numpy(), "length": lengths.numpy()}
        with torch.inference_mode():
            ref = ours(audio_signal=x, length=lengths)[0]  # (B, D, T)
            hf_out = hf(input_values=x[:, 0]).last_hidden_state.transpose(1, 2)  # (B, T, D) -> (B, D, T)
            ort_out = session.run(None, feeds)[0]
        log(f"{preset} batch {batch}: timing ours eager, onnxruntime, {hf_name} (interleaved)")
        # one warm-up round fewer: the parity forwards above were the first
        t = interleaved_ms(
            {"ours": lambda: ours(audio_signal=x, length=lengths), "ort": lambda: session.run(None, feeds),
             "hf": lambda: hf(input_values=x[:, 0]), "matmul": probe},
            max(0, s.warmup - 1), s.runs, s.max_timed_s,
        )  # fmt: skip
        probe.times_ms += t["matmul"]
        rows += [
            _row(our_name, "PyTorch eager", preset, our_params, our_macs, s.seconds, batch, t["ours"], None),
            _row(our_name, "onnxruntime fp32", preset, our_params, our_macs, s.seconds, batch, t["ort"],
                 _max_abs_diff(ort_out, ref)),
            _row(hf_name, "PyTorch eager", preset, hf_params, hf_macs, s.seconds, batch, t["hf"],
                 _max_abs_diff(hf_out, ref)),
        ]  # fmt: skip
    if s.quant and 1 in s.batches:
        from benchmarks.quant_cpu import quant_rows

        x1q = inputs(1)[0][:, 0]
        peer = (hf_name, hf_params, hf_macs, lambda: hf(input_values=x1q))
        rows += quant_rows(ours, inputs, preset, s, probe, threads, work_dir, log, our_macs, peer)
    return rows, ours, inputs


def _bench_conformer(
    target_params_m: float, s: CpuBenchSettings, probe: MatmulProbe, log: Callable[[str], None]
) -> tuple[list[Row], str]:
    encoder, layers = conformer_encoder(target_params_m, s.conformer_d_model, s.seed)
    name = f"NeMo ConformerEncoder (d={s.conformer_d_model}, {layers} layers, 80-mel)"
    frames = int(round(s.seconds * MEL_FRAMES_PER_SECOND))
    gen = torch.Generator().manual_seed(s.seed + 2)
    feats = torch.randn(max(s.batches), CONFORMER_CTC["feat_in"], frames, generator=gen)  # (B_max, 80, T)

    def call(batch: int):
        x = feats[:batch]
        lengths = torch.full((batch,), frames, dtype=torch.int64)
        return lambda: encoder(audio_signal=x, length=lengths)

    macs = count_macs(call(1))
    params = _params_m(encoder)
    rows = []
    for batch in s.batches:
        log(f"conformer batch {batch}: timing")
        t = interleaved_ms({"conformer": call(batch), "matmul": probe}, s.warmup, s.runs, s.max_timed_s)
        probe.times_ms += t["matmul"]
        rows.append(_row(name, "PyTorch eager", None, params, macs, s.seconds, batch, t["conformer"], None))
    return rows, name


def _ratios(rows: list[Row], presets: Sequence[str], batches: Sequence[int]) -> list[Ratio]:
    out: list[Ratio] = []
    big = max(batches)
    for preset in presets:
        mine = [r for r in rows if r.preset == preset and not r.model.endswith("PTQ")]  # PTQ rows: quant_ratios
        ours = {r.batch: r for r in mine if r.model.startswith("ours") and r.runtime == "PyTorch eager"}
        ort = {r.batch: r for r in mine if r.runtime.startswith("onnxruntime")}
        peer = {r.batch: r for r in mine if r.model.startswith("transformers") and r.runtime == "PyTorch eager"}
        for b in batches:
            v = peer[b].latency_ms / ours[b].latency_ms
            g = GOALS["eager_vs_transformers"]
            out.append(Ratio(f"{preset}: ours eager vs {peer[b].model.split(' (')[0]}, batch {b}", v, g, v >= g,
                             f"{peer[b].latency_ms:.1f} ms / {ours[b].latency_ms:.1f} ms"))  # fmt: skip
        for b in batches:
            v = ours[b].latency_ms / ort[b].latency_ms
            g = GOALS["onnxruntime_vs_eager"]
            out.append(Ratio(f"{preset}: onnxruntime vs ours eager, batch {b}", v, g, v >= g,
                             f"{ours[b].latency_ms:.1f} ms / {ort[b].latency_ms:.1f} ms"))  # fmt: skip
        for r in (ours[big], ort[big]):
            g = GOALS["matmul_peak_fraction"]
            out.append(Ratio(f"{preset}: {r.runtime} fraction of matmul peak, batch {big}", r.peak_fraction, g,
                             r.peak_fraction >= g, f"{r.gflops:.1f} GFLOP/s"))  # fmt: skip
    return out


def bench_cpu(settings: CpuBenchSettings | None = None, command: str = "", profile: bool = False,
              log: Callable[[str], None] = lambda msg: None) -> CpuBenchResult:  # fmt: skip
    """Run the CPU benchmark described in the module docstring; ``profile`` adds :func:`profile_ops` at the
    largest batch on the first preset."""
    s = settings or CpuBenchSettings()
    previous_threads = torch.get_num_threads()
    if s.threads:
        torch.set_num_threads(int(s.threads))
    try:
        return _bench_cpu(s, command, profile, log)
    finally:
        torch.set_num_threads(previous_threads)


def _bench_cpu(s: CpuBenchSettings, command: str, profile: bool, log: Callable[[str], None]) -> CpuBenchResult:
    threads = torch.get_num_threads()
    load_start = list(os.getloadavg())
    log(f"matmul {s.matmul_n}x{s.matmul_n} at {threads} threads")
    probe = MatmulProbe(s.matmul_n)
    probe.measure()
    result = CpuBenchResult(settings=s, command=command, machine=machine_line(), threads=threads,
                            load_average={"start": load_start}, matmul={})  # fmt: skip
    first: tuple[nn.Module, Callable] | None = None
    with tempfile.TemporaryDirectory(prefix="benchmarks_cpu_") as tmp:
        for preset in s.presets:
            rows, ours, inputs = _bench_family(preset, s, probe, threads, Path(tmp), log)
            result.rows += rows
            if first is None:
                first = (ours, inputs)
    conformer_rows, _ = _bench_conformer(result.rows[0].params_m, s, probe, log)
    result.rows += conformer_rows
    result.matmul = probe.summary()
    for row in result.rows:
        row.peak_fraction = row.gflops / result.matmul["gflops"]
    result.ratios = _ratios(result.rows, s.presets, s.batches)
    if s.quant:
        from benchmarks.quant_cpu import int8_matmul_peak, quant_ratios

        result.matmul["int8"] = int8_matmul_peak(probe, s.runs)
        result.ratios += quant_ratios(result.rows, s.presets)
    if profile and first is not None:
        log("profiling our eager encoder")
        x, lengths = first[1](max(s.batches))
        result.op_profile = {"preset": s.presets[0], **profile_ops(first[0], x, lengths)}
    result.load_average["end"] = list(os.getloadavg())
    result.notes += [
        "GMACs: ours from the analytic cost model (nemo_sew.cost, equal to torch.utils.flop_counter's count in "
        "tests/test_cost.py); peers counted by torch.utils.flop_counter with CPU SDPA attention included "
        "(nemo_sew.evaluate.count_macs); onnxruntime rows reuse our eager count.",
        "max abs diff: against our eager encoder's output on the same benchmark input, (B, D, T).",
        f"{s.seconds:g} s of 16 kHz audio per item (Conformer: {s.seconds:g} s of 80-bin features, 10 ms hop); "
        f"median of up to {s.runs} timed forwards (at least 3; fewer once {s.max_timed_s:g} s per runtime are "
        f"spent) after {s.warmup} warm-up, in rounds interleaving the runtimes of one model and batch with a "
        f"matmul; all rows at {threads} torch / onnxruntime intra-op threads.",
        "% of matmul peak: achieved GFLOP/s over the median of all matmul samples of the run (taken inside the "
        "same rounds, so under the same load).",
    ]
    if s.quant:
        result.notes.append(
            "PTQ rows (benchmarks.quant_cpu): our encoder with every weight quantized (8-bit per channel, 4-bit "
            "groups of 32), batch 1; % of matmul peak is against the fp32 peak; max abs diff is against our fp32 "
            "eager (the quantization error, not a runtime mismatch)."
        )
    return result


# ------------------------------------------------------------------------------------------------------
# report


def _fmt_diff(d: float | None) -> str:
    return "reference" if d is None else f"{d:.2e}"


def cpu_markdown(result: CpuBenchResult) -> str:
    s = result.settings
    load = result.load_average
    mm = result.matmul
    lines = [
        f"### CPU inference: ours (eager, onnxruntime) vs transformers and NeMo Conformer, {s.seconds:g} s audio, fp32",
        "",
        f"Command: `{result.command}`  ",
        f"Machine: {result.machine}; load average (1 min) {load['start'][0]:.2f} at start, "
        f"{load.get('end', [float('nan')])[0]:.2f} at end  ",
        f"Matmul peak: {mm['gflops']:.1f} GFLOP/s (median of {mm['samples']} fp32 {mm['n']}x{mm['n']} matmuls "
        f"timed through the run, best {mm['best_gflops']:.1f}; {result.threads} threads)"
        + (f"; int8 matmul (torch._int_mm, same n) {mm['int8']['gflops']:.1f} GOP/s vs fp32 {mm['int8']['fp32_gflops']:.1f} "
           f"GFLOP/s timed in the same interleaved rounds: {mm['int8']['ratio']:.2f}x"
           if (mm.get("int8") or {}).get("gflops") else ""),
        "",
        "| model | runtime | params (M) | GMACs / s audio | batch | median latency (ms) | RTFx | GFLOP/s "
        "| % of matmul peak | max abs diff vs ours eager |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.model} | {r.runtime} | {r.params_m:.2f} | {r.gmacs_per_s:.3f} | {r.batch} | {r.latency_ms:.1f} | "
            f"{r.rtfx:.1f} | {r.gflops:.1f} | {100 * r.peak_fraction:.1f}% | {_fmt_diff(r.max_abs_diff)} |"
        )
    lines += ["", "Ratios (same run; goals from issue 5, and issue 13 for the PTQ rows):", ""]
    for q in result.ratios:
        if "peak" in q.name:
            shown = f"{100 * q.value:.1f}% (goal >= {100 * q.goal:.0f}%)"
        else:
            shown = f"{q.value:.2f}x (goal >= {q.goal:g}x)"
        lines.append(f"- {q.name}: {shown}, {q.detail}: **{'met' if q.met else 'not met'}**")
    lines += [""] + [f"Note: {n}  " for n in result.notes]
    if result.op_profile:
        p = result.op_profile
        lines += [
            "",
            f"Where our eager encoder spends its time (`{p['preset']}`, batch {p['batch']}, torch.profiler self CPU "
            f"time, {p['total_ms']:.0f} ms per forward including profiler overhead):",
            "",
            "| group | self CPU (ms / forward) | share | top ops (ms) |",
            "|---|---|---|---|",
        ]
        for name, g in p["groups"].items():
            ops = ", ".join(f"{o['op']} {o['ms']:.1f}" for o in g["ops"][:4])
            lines.append(f"| {name} | {g['ms']:.1f} | {100 * g['share']:.1f}% | {ops} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "CONFORMER_CTC", "GOALS", "CpuBenchResult", "CpuBenchSettings", "MatmulProbe", "Ratio", "Row", "bench_cpu",
    "conformer_encoder", "cpu_markdown", "profile_ops", "random_transformers_model",
]  # fmt: skip
