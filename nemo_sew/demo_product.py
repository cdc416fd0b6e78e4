"""The product demo (``nemo-sew demo --product``): one model that serves every budget.

    nemo-sew demo --product --out outputs/demo_product [--train-steps N | --train-minutes M] [--sweep-utterances 100]

Steps: the demo's corpus, training of ``recipes/all_dials_tiny_mel.yaml`` (stochastic squeeze with the sandwich
rule and an interior middle factor, I3D local gates; fixed fp32 seeded steps, pinned as ``make demo`` pins them),
evaluation at the default profile (:func:`nemo_sew.demo.train_and_evaluate`), then

- ``nemo-sew quantize --bits 8 4 --keep-fp`` (:func:`nemo_sew.quant.model.quantize_nemo`): ``model_q.nemo`` holds
  fp, 8- and 4-bit encoder weights;
- the product sweep over ``recipes/profiles/product.yaml`` (squeeze x depth threshold x weight bits) on that one
  file (:func:`nemo_sew.sweep.sweep_rows`, ``sweep.json`` for ``nemo-sew pick``, ``pareto.png``), one
  parity-checked ONNX file per profile (fp32 graphs for the fp profiles, QDQ for 8 and 4 bits;
  :func:`nemo_sew.demo_sweep.run_profile_sweep`'s exporters);
- ``results.md`` opening with the one-line answer: the default profile's CER, latency and MACs, and the best
  profile at <= 50% of its encoder MACs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from nemo_sew.profile import CompressionProfile

log = logging.getLogger("nemo_sew.demo")

PRODUCT_RECIPE = "recipes/all_dials_tiny_mel.yaml"
# A sandwich step runs three gated paths: 4-7 s/step in a 10-step fp32 probe at 2 threads on the shared 2-core machine
# under load (load average 5-7), so 400 steps is about 30 min of training there (docs/demo.md, "The product demo").
PRODUCT_STEPS = 400
PRODUCT_BITS = (8, 4)
MAC_SHARE = 0.5  # the goal's compute point: <= 50% of the default profile's encoder MACs
CER_MARGIN = 0.10  # ... within +10% of its CER
CER_TARGET = 0.15  # the default profile's goal


def product_profiles_path(recipe: str | Path) -> Path:
    """``profiles/product.yaml`` beside the recipe (``recipes/profiles/product.yaml``)."""
    return Path(recipe).parent / "profiles" / "product.yaml"


@dataclass
class ProductSweep:
    rows: list[dict]
    default: str  # the row of the model's default profile
    quantized_path: Path
    quantize_info: dict
    sweep: object  # nemo_sew.demo_sweep.DemoSweep (the ONNX files and timings)


def default_profile_name(model, profiles: dict[str, CompressionProfile]) -> str:
    """The name in ``profiles`` of the model's default profile: its squeeze, its gates' trained threshold, fp."""
    active = model.profile
    squeeze = float(active.squeeze if active.squeeze is not None else model.encoder.squeeze)
    gates = getattr(model.encoder, "gate_options", None)
    threshold = active.depth_threshold
    if threshold is None and gates is not None:
        threshold = float(getattr(gates, "threshold", 0.5))
    for name, p in profiles.items():
        if (p.squeeze is not None and float(p.squeeze) == squeeze and p.weight_bits == 16
                and (p.depth_threshold is None or threshold is None or math.isclose(p.depth_threshold, threshold))):
            return name
    raise ValueError(f"expected a profile with squeeze {squeeze:g}, threshold {threshold}, fp weights in the profile "
                     f"file, got {sorted(profiles)}")  # fmt: skip


def cheap_point(rows: list[dict], default: str, share: float = MAC_SHARE) -> dict | None:
    """The best-CER row at <= ``share`` of the default row's encoder GMACs per second (None if there is none)."""
    base = next(r for r in rows if r["name"] == default)
    cheap = [r for r in rows if r["encoder_gmacs_per_s"] <= share * base["encoder_gmacs_per_s"]]
    return min(cheap, key=lambda r: (r["cer"], r["encoder_gmacs_per_s"])) if cheap else None


def _cheapest(rows: list[dict]) -> dict:
    """The row with the fewest encoder GMACs per second (the best CER among equals)."""
    return min(rows, key=lambda r: (r["encoder_gmacs_per_s"], r["cer"]))


def _describe(row: dict) -> str:
    p = row.get("profile") or {}
    bits = p.get("weight_bits", 16)
    return (f"{row['name']} (squeeze {p.get('squeeze')}, depth threshold {p.get('depth_threshold')}, "
            f"{'fp32' if bits == 16 else f'{bits}-bit'} weights)")


def answer_line(rows: list[dict], default: str) -> str:
    """The one line ``results.md`` opens with."""
    base = next(r for r in rows if r["name"] == default)
    line = (f"**Answer:** at its default profile {_describe(base)} the model gives test CER {base['cer']:.3f} at "
            f"{base['latency_ms_10s']:.1f} ms per 10 s of audio and {base['encoder_gmacs_per_s']:.3f} encoder GMACs/s")
    cheap = cheap_point(rows, default)
    if cheap is None:
        low = _cheapest(rows)
        return (line + f"; no profile runs at <= {MAC_SHARE:.0%} of those MACs (the cheapest, {_describe(low)}: "
                f"{low['encoder_gmacs_per_s'] / base['encoder_gmacs_per_s']:.0%} of them, CER {low['cer']:.3f}, "
                f"{low['latency_ms_10s']:.1f} ms).")
    rel = cheap["cer"] / base["cer"] - 1 if base["cer"] > 0 else math.inf
    return (line + f"; at <= {MAC_SHARE:.0%} of those MACs, {_describe(cheap)} gives CER {cheap['cer']:.3f} "
            f"({rel:+.1%}) at {cheap['latency_ms_10s']:.1f} ms and {cheap['encoder_gmacs_per_s']:.3f} GMACs/s "
            f"({cheap['encoder_gmacs_per_s'] / base['encoder_gmacs_per_s']:.0%} of the default's).")


def goals(rows: list[dict], default: str) -> list[str]:
    """The goal lines (issue 29.2): default CER <= 0.15; a profile at <= 50% of its MACs within +10% CER."""
    base = next(r for r in rows if r["name"] == default)
    cheap = cheap_point(rows, default)
    lines = [f"- Default profile {default}: test CER {base['cer']:.3f} (goal <= {CER_TARGET}): "
             f"**{'met' if base['cer'] <= CER_TARGET else 'not met'}**."]
    if cheap is None:
        low = _cheapest(rows)
        lines.append(f"- No profile at <= {MAC_SHARE:.0%} of the default's encoder MACs (the cheapest, {low['name']}, "
                     f"runs {low['encoder_gmacs_per_s'] / base['encoder_gmacs_per_s']:.0%} of them at CER "
                     f"{low['cer']:.3f}, {low['cer'] / base['cer'] - 1:+.1%}): **not met**.")  # fmt: skip
    else:
        ok = cheap["cer"] <= (1 + CER_MARGIN) * base["cer"]
        lines.append(f"- Best profile at <= {MAC_SHARE:.0%} of the default's encoder MACs: {cheap['name']}, CER "
                     f"{cheap['cer']:.3f} against {base['cer']:.3f} ({cheap['cer'] / base['cer'] - 1:+.1%}; goal "
                     f"<= +{CER_MARGIN:.0%}): **{'met' if ok else 'not met'}**.")  # fmt: skip
    return lines


def run_product_sweep(
    model_path: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    profiles_path: str | Path,
    max_utterances: int | None = 100,
    bits: Sequence[int] = PRODUCT_BITS,
    command: str = "",
) -> ProductSweep:
    """Quantize ``model_path`` keeping fp (``model_q.nemo``), sweep every profile of ``profiles_path`` on that one
    file, export one parity-checked ONNX per swept profile. Writes ``sweep.{json,md}``, ``pareto.png``, ``onnx/``."""
    from nemo_sew.demo_sweep import DemoSweep, OnnxFile, ProfilePlan, _export_checked, bounded_manifest
    from nemo_sew.profile import load_profiles
    from nemo_sew.quant.model import quantize_nemo
    from nemo_sew.safe_load import restore
    from nemo_sew.sweep import sweep_rows, write_sweep

    out_dir, model_path = Path(out_dir), Path(model_path)
    onnx_dir = out_dir / "onnx"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    qpath = out_dir / "model_q.nemo"
    log.info("product: nemo-sew quantize %s --bits %s --keep-fp -> %s", model_path, " ".join(map(str, bits)), qpath)
    info = quantize_nemo(model_path, qpath, tuple(sorted(bits, reverse=True)), keep_fp=True)
    profiles = load_profiles(profiles_path)
    qmodel = restore(qpath).eval()
    default = default_profile_name(qmodel, profiles)
    swept, kept, total = bounded_manifest(manifest, max_utterances, out_dir / "sweep_data" / "test_subset.json")
    log.info("product sweep: %d profiles of %s on %d of %d test utterances", len(profiles), profiles_path, kept, total)
    start = time.perf_counter()
    rows = sweep_rows(qmodel, swept, profiles, source=str(profiles_path))
    write_sweep(rows, out_dir, command)
    sweep_seconds = time.perf_counter() - start

    start = time.perf_counter()
    fp_model = restore(model_path).eval()  # the fp32 graphs come from the trained fp weights (what --keep-fp keeps)
    files = []
    for row in rows:
        name, p = row["name"], profiles[row["name"]]
        try:
            if p.weight_bits == 16:
                files.append(_export_checked(name, p, onnx_dir, model=fp_model))
            else:
                files.append(_export_checked(name, p, onnx_dir, qmodel=qmodel))
        except Exception as err:  # noqa: BLE001 - one profile's export failure is a row of the report, not a crash
            log.error("ONNX %s: export failed: %s", name, err)
            form = "fp32" if p.weight_bits == 16 else f"qdq int{p.weight_bits}"
            path = onnx_dir / f"{name}.onnx"
            files.append(OnnxFile(name, path, path.stat().st_size if path.exists() else 0, form, math.inf, math.nan,
                                  False, f"{type(err).__name__}: {' '.join(str(err).split())}"))  # fmt: skip
    export_seconds = time.perf_counter() - start
    index = {"model": qpath.name, "graph": "ctc",
             "profiles": {f.profile: {"file": f.path.name, **f.to_dict()} for f in files}}  # fmt: skip
    (onnx_dir / "export.json").write_text(json.dumps(index, indent=2, default=str) + "\n")
    notes = [
        f"One model: `{model_path.name}` trained with the squeeze sampler and I3D gates, then "
        f"`nemo-sew quantize {model_path.name} --bits {' '.join(map(str, bits))} --keep-fp` -> `{qpath.name}` "
        f"({info['src_bytes'] / 1e6:.2f} -> {info['out_bytes'] / 1e6:.2f} MB; it holds fp, "
        f"{' and '.join(f'{b}-bit' for b in bits)} weights). Every row below is that one file at a profile of "
        f"`{profiles_path}` (squeeze x depth threshold x weight bits; threshold 0 runs every gated branch).",
        "Weight bits in eager PyTorch are dequantized to fp32, so their latency is the fp profile's; what they save is "
        "size (the ONNX files below).",
    ]
    skipped = sorted(set(profiles) - {r["name"] for r in rows})
    if skipped:
        notes.append(f"Profiles the model could not run (logged with the reason): {', '.join(skipped)}.")
    plan = ProfilePlan(fp={n: p for n, p in profiles.items() if p.weight_bits == 16},
                       quantized={n: p for n, p in profiles.items() if p.weight_bits != 16}, notes=notes)  # fmt: skip
    demo_sweep = DemoSweep(rows, files, plan, str(swept), kept, total, sweep_seconds, export_seconds)
    for f in files:
        (log.info if f.passed else log.error)("ONNX %s: %.2f MB, parity max abs diff %.3g (tolerance %g): %s",
                                               f.path.name, f.bytes / 1e6, f.max_abs_diff, f.tolerance,
                                               "pass" if f.passed else "FAIL")  # fmt: skip
    return ProductSweep(rows, default, qpath, info, demo_sweep)


def product_section(result: ProductSweep, out_dir: str | Path) -> str:
    """The product part of ``results.md``: the goals, then :func:`nemo_sew.demo_sweep.sweep_section`."""
    from nemo_sew.demo_sweep import sweep_section

    failed = [f for f in result.sweep.onnx if f.error]
    lines = ["## Goals (issue 29.2), on the sweep's utterances", "", *goals(result.rows, result.default), ""]
    if failed:
        lines += ["ONNX exports that failed (the table below says FAIL):", "",
                  *(f"- {f.profile}: {f.error}" for f in failed), ""]  # fmt: skip
    return "\n".join(lines) + "\n" + sweep_section(result.sweep, out_dir)


def run_product_demo(
    out_dir: str | Path = "outputs/demo_product",
    data_dir: str | Path = "data/synthetic",
    recipe: str | Path = PRODUCT_RECIPE,
    hours: float = 3.5,
    train_minutes: float | None = None,
    seed: int = 0,
    train_steps: int | None = PRODUCT_STEPS,
    num_jobs: int | None = None,
    overrides: list[str] | None = None,
    command: str = "nemo-sew demo --product",
    sweep_utterances: int | None = 100,
    profiles_path: str | Path | None = None,
    splits: dict | None = None,
) -> ProductSweep:
    """The demo's steps 1-4 on the all-dials recipe, then quantize, product sweep, ONNX per profile, results.md.
    ``splits``: a corpus already built (see :func:`nemo_sew.demo.train_and_evaluate`)."""
    from nemo_sew.demo import _num, train_and_evaluate, write_results

    out_dir, data_dir = Path(out_dir), Path(data_dir)
    profiles_path = Path(profiles_path) if profiles_path else product_profiles_path(recipe)
    if not profiles_path.is_file():
        raise FileNotFoundError(f"profiles file not found: {profiles_path}")
    run = train_and_evaluate(out_dir, data_dir, recipe, hours, train_minutes, seed, train_steps, num_jobs, overrides,
                             command, splits=splits)  # fmt: skip
    log.info("step 5/5: quantize --keep-fp, product sweep over %s, one ONNX file per profile", profiles_path)
    result = run_product_sweep(run.model_path, run.splits["test"]["manifest"], out_dir, profiles_path,
                               max_utterances=sweep_utterances, command=command)  # fmt: skip
    write_results(out_dir / "results.md", run.result, run.train_seconds, run.steps, run.split_hours, command,
                  run.flow_wer, product_section(result, out_dir), data_note=run.data_note, engines=run.engines,
                  cross_engine=run.cross_engine,
                  answer=answer_line(result.rows, result.default))  # fmt: skip
    log.info("test CER %.3f at the default profile (cross-engine %s); %s", run.result.cer, _num(run.result.cross_cer),
             answer_line(result.rows, result.default))  # fmt: skip
    return result


__all__ = ["PRODUCT_RECIPE", "PRODUCT_STEPS", "ProductSweep", "answer_line", "cheap_point", "default_profile_name",
           "goals", "product_profiles_path", "product_section", "run_product_demo", "run_product_sweep"]  # fmt: skip
