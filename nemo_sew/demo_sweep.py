"""The demo's last step: the trained model's profile sweep and one parity-checked ONNX file per profile.

    nemo-sew profile-sweep outputs/demo/model.nemo --manifest data/synthetic/test.json --out DIR [--utterances 100]

(what ``nemo-sew demo`` runs after its evaluation, for any trained ``.nemo``).

Which profiles a model can run is read from the model itself (:func:`demo_profiles`):

- squeeze: a model trained with a squeeze sampler (``recipes/ctc_char_stochastic_tiny_mel.yaml``) runs the
  sampler's factors (every integer in a ``{low, high}`` range); a fixed-factor model with the factor-agnostic
  ``phase`` expander runs 2, 3 and 4, off its training point except the trained one; a model with SEW's
  factor-specific upsampler (the fixed squeeze-2 demo recipe) runs only its trained factor;
- weight bits 8 and 4: post-training quantization (:func:`nemo_sew.quant.model.quantize_model`) of a copy
  restored from the ``.nemo``, at the default squeeze;
- I3D depth thresholds, when the model has gates.

The sweep itself is :func:`nemo_sew.sweep.sweep_rows` / :func:`nemo_sew.sweep.write_sweep` (table and Pareto
PNG); the exports are :func:`nemo_sew.export.export_onnx` (fp32) and
:func:`nemo_sew.quant.onnx.export_quantized_onnx` (QDQ), each followed by its onnxruntime parity check.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from nemo_sew.profile import CompressionProfile

log = logging.getLogger("nemo_sew.demo")

WEIGHT_BITS = (8, 4)
DEPTH_THRESHOLDS = (0.5, 0.7, 0.9)  # the thresholds of recipes/profiles/i3d.yaml (0 = every gate open)
OFF_GRID_SQUEEZE = (2, 3, 4)  # what a factor-agnostic model without a sampler is swept at


@dataclass
class ProfilePlan:
    """The profiles to sweep: ``fp`` on the trained model, ``quantized`` on its PTQ copy; ``notes`` say why."""

    fp: dict[str, CompressionProfile]
    quantized: dict[str, CompressionProfile]
    notes: list[str] = field(default_factory=list)
    off_training: list[str] = field(default_factory=list)  # profile names off the model's training point


@dataclass
class OnnxFile:
    profile: str
    path: Path
    bytes: int
    form: str  # "fp32" | "qdq int8" | "qdq int4"
    max_abs_diff: float
    tolerance: float
    passed: bool
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (an unmeasured difference, when the output lengths differ, is None)."""
        diff = self.max_abs_diff if math.isfinite(self.max_abs_diff) else None
        return {**self.__dict__, "path": str(self.path), "max_abs_diff": diff}


@dataclass
class DemoSweep:
    rows: list[dict]
    onnx: list[OnnxFile]
    plan: ProfilePlan
    manifest: str  # the (bounded) manifest swept
    utterances: int
    test_utterances: int
    sweep_seconds: float
    export_seconds: float


def _fmt(value: float) -> str:
    return f"{value:g}"


def _squeeze_factors(encoder) -> tuple[list[float], str, bool]:
    """The factors to sweep, a note, and whether factors other than the trained one are off the training point."""
    trained = float(encoder.squeeze)
    sampler = encoder.sampler
    if sampler is not None and sampler.squeeze is not None:
        spec = dict(sampler.squeeze)
        if "values" in spec:
            factors = sorted({float(v) for v in spec["values"]})
            drawn = f"the values {', '.join(_fmt(v) for v in factors)}"
        else:
            low, high = float(spec["low"]), float(spec["high"])
            factors = sorted({float(v) for v in range(math.ceil(low), math.floor(high) + 1)} | {trained})
            drawn = f"the range {_fmt(low)}-{_fmt(high)} (swept at its integers)"
        return factors, f"The model was trained with a squeeze sampler over {drawn}: every factor swept is a " \
                        "training point of this one model.", False
    if encoder.fixed_factor:
        return [trained], (
            f"The model was trained at a fixed squeeze of {_fmt(trained)} with SEW's factor-specific upsampler, "
            f"so it runs only s={_fmt(trained)}; squeeze 3 and 4 need the factor-agnostic (phase) expander. "
            "A stochastic model (a squeeze sampler, `recipes/ctc_char_stochastic_tiny_mel.yaml`) runs every "
            "factor with one set of weights; that is the model this sweep is made for."
        ), True
    factors = sorted({trained, *(float(s) for s in OFF_GRID_SQUEEZE)})
    return factors, (
        f"The model was trained at a fixed squeeze of {_fmt(trained)}: the other factors are off its training "
        "point (expect a higher error there). A stochastic model (a squeeze sampler, "
        "`recipes/ctc_char_stochastic_tiny_mel.yaml`) is trained at every factor and fixes this."
    ), True


def demo_profiles(model, weight_bits: Sequence[int] = WEIGHT_BITS,
                  thresholds: Sequence[float] = DEPTH_THRESHOLDS) -> ProfilePlan:
    """The profiles ``model`` can run (see the module docstring), named ``s2``, ``s2_w8``, ``s2_t0.5``."""
    encoder = model.encoder
    base = replace(model.profile, name=None)
    trained = float(encoder.squeeze)
    factors, note, off_grid = _squeeze_factors(encoder)
    plan = ProfilePlan(fp={}, quantized={}, notes=[note])
    for s in factors:
        name = f"s{_fmt(s)}"
        plan.fp[name] = replace(base, squeeze=s, name=name)
        if off_grid and s != trained:
            plan.off_training.append(name)
    tag = f"s{_fmt(trained)}"
    if getattr(encoder, "gate_options", None) is not None:
        for t in thresholds:
            name = f"{tag}_t{_fmt(t)}"
            plan.fp[name] = replace(base, squeeze=trained, depth_threshold=float(t), name=name)
        plan.notes.append(f"I3D depth thresholds {', '.join(_fmt(t) for t in thresholds)} at s={_fmt(trained)} "
                          "(a branch runs where its gate's probability exceeds the threshold).")  # fmt: skip
    if getattr(encoder, "quant_config", None) is not None:
        plan.notes.append("The model already holds quantized weights: no post-training quantization profiles.")
    else:
        for b in weight_bits:
            name = f"{tag}_w{b}"
            plan.quantized[name] = replace(base, squeeze=trained, weight_bits=int(b), name=name)
        if weight_bits:
            plan.notes.append(
                f"Weight bits {', '.join(str(b) for b in weight_bits)}: post-training quantization of every encoder "
                f"weight (`nemo-sew quantize`, min-max scales, 4-bit in groups of 32; the CTC head stays fp32) at "
                f"s={_fmt(trained)}. Eager PyTorch dequantizes them to fp32, so their latency is the fp model's; "
                "what they save is size (the ONNX files below)."
            )
    return plan


def bounded_manifest(manifest: str | Path, max_utterances: int | None, out: Path) -> tuple[Path, int, int]:
    """``manifest`` itself, or (more than ``max_utterances`` lines) ``out`` holding evenly spaced lines of it;
    the path, the lines kept and the lines of ``manifest``."""
    from nemo_sew.evaluate import read_manifest

    entries = read_manifest(manifest)  # audio paths made absolute
    total = len(entries)
    if not max_utterances or total <= max_utterances:
        return Path(manifest), total, total
    keep = [entries[(i * total) // max_utterances] for i in range(max_utterances)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in keep))
    return out, len(keep), total


def _export_checked(name: str, profile: CompressionProfile, onnx_dir: Path, qmodel=None, model=None) -> OnnxFile:
    """One ONNX file: fp32 (``model``, :func:`nemo_sew.export.export_onnx`) or QDQ (``qmodel`` at ``profile``,
    :func:`nemo_sew.quant.onnx.export_quantized_onnx`). The exporter's own parity check runs with an infinite
    tolerance and the exporter's stated one is applied here, so a failure is a row and not a crash."""
    from nemo_sew.export import TOLERANCE, ParityError, export_onnx
    from nemo_sew.quant.onnx import QDQ_TOLERANCE, export_quantized_onnx

    path = onnx_dir / f"{name}.onnx"
    quantized = qmodel is not None
    tol, form = (QDQ_TOLERANCE, f"qdq int{profile.weight_bits}") if quantized else (TOLERANCE["fp32"], "fp32")
    try:
        if quantized:
            qmodel.set_profile(profile, default=False)
            result = export_quantized_onnx(qmodel, path, "qdq", tolerance=math.inf)
        else:
            result = export_onnx(model, path, profile=profile, tolerance=math.inf)
        diff, error = result.parity.max_abs_diff, None
    except ParityError as e:  # output lengths differ
        diff, error = math.inf, str(e)
    return OnnxFile(name, path, path.stat().st_size, form, diff, tol, diff <= tol, error)


def run_profile_sweep(
    model,
    model_path: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    max_utterances: int | None = 100,
    weight_bits: Sequence[int] = WEIGHT_BITS,
    command: str = "",
) -> DemoSweep:
    """Sweep ``model`` (saved at ``model_path``) over :func:`demo_profiles` on at most ``max_utterances``
    evenly spaced lines of ``manifest``; write ``sweep.{json,md}`` and ``pareto.png`` in ``out_dir``, one ONNX
    file per profile in ``out_dir/onnx`` and their parity results in ``out_dir/onnx/export.json`` (the layout of ``nemo-sew export``'s index)."""
    from nemo_sew.quant.model import quantize_model
    from nemo_sew.safe_load import restore
    from nemo_sew.sweep import sweep_rows, write_sweep

    out_dir = Path(out_dir)
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    plan = demo_profiles(model, weight_bits)
    swept, kept, total = bounded_manifest(manifest, max_utterances, out_dir / "sweep_data" / "test_subset.json")
    log.info("profile sweep: %d profiles on %d of %d test utterances", len(plan.fp) + len(plan.quantized), kept, total)
    start = time.perf_counter()
    model.eval()
    rows = sweep_rows(model, swept, plan.fp)
    qmodel = None
    if plan.quantized:
        qmodel = restore(model_path).eval()  # a second copy (the PTQ replaces its weights)
        quantize_model(qmodel, tuple(sorted(weight_bits, reverse=True)), keep_fp=False)
        rows += sweep_rows(qmodel, swept, plan.quantized)
    write_sweep(rows, out_dir, command)
    sweep_seconds = time.perf_counter() - start

    start = time.perf_counter()
    files = [_export_checked(name, p, onnx_dir, model=model) for name, p in plan.fp.items()]
    files += [_export_checked(name, p, onnx_dir, qmodel=qmodel) for name, p in plan.quantized.items()]
    export_seconds = time.perf_counter() - start
    # the same index file name and layout as `nemo-sew export` (export.json: profiles by name)
    index = {"model": Path(model_path).name, "graph": "ctc",
             "profiles": {f.profile: {"file": f.path.name, **f.to_dict()} for f in files}}  # fmt: skip
    (onnx_dir / "export.json").write_text(json.dumps(index, indent=2) + "\n")
    for f in files:
        (log.info if f.passed else log.error)("ONNX %s: %.2f MB, parity max abs diff %.3g (tolerance %g): %s",
                                               f.path.name, f.bytes / 1e6, f.max_abs_diff, f.tolerance,
                                               "pass" if f.passed else "FAIL")  # fmt: skip
    return DemoSweep(rows, files, plan, str(swept), kept, total, sweep_seconds, export_seconds)


def sweep_section(result: DemoSweep, out_dir: str | Path) -> str:
    """The end of ``results.md``: notes, the sweep table, the ONNX files, the Pareto PNG (relative links)."""
    out_dir = Path(out_dir)
    table = (out_dir / "sweep.md").read_text().splitlines()
    table = [line for line in table if not line.startswith("Command:")]
    while table and not table[0].strip():
        table.pop(0)
    swept = Path(result.manifest)
    swept = swept.relative_to(out_dir) if swept.is_relative_to(out_dir) else Path(swept.name)
    subset = (f"{result.utterances} evenly spaced utterances of the {result.test_utterances} of the test set "
              f"(`{swept}`)" if result.utterances < result.test_utterances
              else f"the whole test set ({result.utterances} utterances)")  # fmt: skip
    lines = [
        "## Profile sweep: one model, many budgets",
        "",
        f"The trained model evaluated at every profile it can run, on {subset}"
        + ("" if result.utterances == result.test_utterances else
           ", so its default profile's row may differ from an evaluation on the whole test set")
        + f". This run's time: sweep {result.sweep_seconds:.0f} s, ONNX "
        f"export and parity checks {result.export_seconds:.0f} s. Latency as above (batch 1, 10 s of audio, eager "
        "PyTorch, median of 7 runs): on a shared machine it moves with the load. Files: `sweep.json`, `sweep.md`, "
        "`pareto.png`, `onnx/` (`onnx/export.json`: size and parity per file).",
        "",
        *(f"- {note}" for note in result.plan.notes),
    ]
    if result.plan.off_training:
        lines.append(f"- Off the training point: {', '.join(result.plan.off_training)}.")
    lines += ["", *table, ""]
    lines += [
        "### ONNX, one file per profile",
        "",
        "Each file is parity-checked against the eager model in onnxruntime (CPU) on random padded batches: max abs "
        "difference of the CTC log-probs on valid frames; tolerance as the exporter states it "
        "(`nemo_sew.export.TOLERANCE` fp32, `nemo_sew.quant.onnx.QDQ_TOLERANCE` QDQ against the quantized model).",
        "",
        "| profile | file | form | size (MB) | parity max abs diff | tolerance | parity |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in result.onnx:
        rel = f.path.relative_to(out_dir) if f.path.is_relative_to(out_dir) else f.path
        lines.append(f"| {f.profile} | [`{rel}`]({rel}) | {f.form} | {f.bytes / 1e6:.2f} | {f.max_abs_diff:.3g} | "
                     f"{f.tolerance:g} | {'pass' if f.passed else 'FAIL'} |")  # fmt: skip
    lines += ["", "WER against latency per profile (the dashed line is the Pareto front):", "",
              "![WER vs latency per profile](pareto.png)", ""]
    return "\n".join(lines)


def register(sub: Any) -> None:
    """Add the ``profile-sweep`` subcommand to the ``nemo-sew`` parser."""
    p = sub.add_parser("profile-sweep", help="the demo's sweep of every profile a model can run + ONNX per profile")
    p.add_argument("model", metavar="MODEL.nemo")
    p.add_argument("--manifest", required=True, help="test manifest (NeMo JSON lines)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep.{json,md}, pareto.png, onnx/, profile_sweep.md")
    p.add_argument("--utterances", type=int, default=100, help="evenly spaced manifest lines to evaluate; 0 = all")
    p.add_argument("--bits", type=int, nargs="*", default=list(WEIGHT_BITS), choices=(8, 4, 2, 1),
                   help="post-training quantization widths to sweep (none: no quantized profiles)")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    from nemo_sew.cli import command_line
    from nemo_sew.safe_load import restore

    start = time.perf_counter()
    model = restore(args.model)
    result = run_profile_sweep(model, args.model, args.manifest, args.out, args.utterances or None, tuple(args.bits),
                               command=command_line(args))  # fmt: skip
    section = sweep_section(result, args.out)
    (Path(args.out) / "profile_sweep.md").write_text(section)
    print(section)
    print(f"profile-sweep: {time.perf_counter() - start:.0f} s in all (restore, sweep {result.sweep_seconds:.0f} s, "
          f"export {result.export_seconds:.0f} s)")  # fmt: skip
    return 0 if all(f.passed for f in result.onnx) else 1


__all__ = ["DemoSweep", "OnnxFile", "ProfilePlan", "bounded_manifest", "demo_profiles", "run_profile_sweep",
           "sweep_section"]  # fmt: skip
