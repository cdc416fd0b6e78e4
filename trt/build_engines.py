"""Build one TensorRT engine per exported ONNX file (one file = one compression profile).

    nemo-sew export model.nemo --profiles recipes/profiles/fixed_s2.yaml --out exported/
    python trt/build_engines.py exported/*.onnx --out engines/ --precision fp16 \\
        --batch 1,8,32 --seconds 0.5,10,40 --workspace-gb 8
    python trt/build_engines.py --dry-run exported/*.onnx      # no TensorRT needed: "builds" / "refused: why"

Writes ``engines/<stem>.<precision>.plan``, a ``.json`` beside each (TensorRT version, GPU, shapes, the
ONNX metadata) and ``engines/engines.json``. The optimisation profile covers both inputs
(``audio_signal`` and ``length``) for ``--batch`` and ``--seconds`` (min,opt,max; default 0.5,10,40: LibriSpeech
utterances reach 35 s); seconds become samples or 10 ms feature frames through the graph's metadata.

``--dry-run`` builds nothing and imports no TensorRT: it prints one line per graph from the static check
(``nemo_sew.export.trt_check``: float64 tensors, operators outside TensorRT 10's ONNX parser, data-dependent
output shapes, INT4 placement) and exits 0 when every graph builds, 1 otherwise.

I3D models: a graph with input-dependent gates (``If`` per branch) is skipped with a line saying so; build its
static profile (``<name>_static``: gates frozen at their mean decisions, ``nemo-sew export --static-gates``),
or pass ``--conditional`` to try TensorRT's If conditionals.

Precision: on TensorRT 10, fp16/bf16 from an fp32 ONNX use the builder flags (weak typing); an ONNX
already in the asked precision builds strongly typed. TensorRT 11 has only strongly typed networks:
the ONNX must hold the precision (``nemo-sew export --precision fp16``) or ModelOpt AutoCast converts it
here when ``nvidia-modelopt`` is installed. Engines are specific to the GPU and TensorRT version.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from common import (  # trt/ is on sys.path as the script dir
    DEFAULT_BATCH,
    DEFAULT_SECONDS,
    autocast_onnx,
    conditional_skip,
    have_modelopt,
    load_trt_check,
    parse_triple,
    precision_plan,
    read_onnx_metadata,
    require_tensorrt,
    run_main,
    shape_ranges,
    trt_major,
)


METADATA_KEYS = ("graph", "input", "profile", "input_rate", "sample_rate", "min_input_length", "gates")


def build_engine(
    trt: Any,
    onnx_path: Path,
    out_dir: Path,
    precision: str = "fp32",
    batch: Sequence[int] = (1, 8, 32),
    seconds: Sequence[float] = (0.5, 10.0, 40.0),
    workspace_gb: float = 8.0,
    opt_level: int = 3,
    tf32: bool = False,
    timing_cache: Path | None = None,
) -> dict[str, Any]:
    """Build ``out_dir/<stem>.<precision>.plan`` from ``onnx_path``; returns what the sidecar JSON holds."""
    import torch

    meta = read_onnx_metadata(onnx_path)
    major = trt_major(trt)
    plan = precision_plan(major, precision, meta.get("precision", "fp32"), have_modelopt(), meta.get("quant_form"))
    source = onnx_path
    if plan.convert_to:
        source = autocast_onnx(onnx_path, out_dir / f"{onnx_path.stem}.{precision}.onnx", plan.convert_to)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if major == 10 and plan.strongly_typed:  # 11.x: always strongly typed, no flag needed
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{source}: TensorRT could not parse the ONNX file: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    config.builder_optimization_level = int(opt_level)
    if plan.builder_flag:
        config.set_flag(getattr(trt.BuilderFlag, plan.builder_flag))
    if precision == "fp32" and not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 (TF32 is on by default on Ampere+)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape) for i in range(network.num_inputs)}
    if "audio_signal" not in inputs:
        raise ValueError(f"{onnx_path}: expected an input named audio_signal, got {sorted(inputs)}")
    ranges = shape_ranges(meta, inputs["audio_signal"], batch, seconds)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in ranges.items():
        if name in inputs:  # an input the graph does not use is pruned at export
            profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build the engine (see the log above)")
    plan_path = out_dir / f"{onnx_path.stem}.{precision}.plan"
    plan_path.write_bytes(bytes(serialized))
    if cache is not None:
        timing_cache.write_bytes(bytes(cache.serialize()))
    info = {
        "engine": plan_path.name,
        "onnx": onnx_path.name,
        "onnx_path": str(onnx_path.resolve()),  # bench_engines.py checks the engine against it in onnxruntime
        "precision": precision,
        "strongly_typed": plan.strongly_typed,
        "builder_flag": plan.builder_flag,
        "autocast": plan.convert_to,
        "quant_form": meta.get("quant_form"),
        "weight_bits": meta.get("weight_bits"),
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "build_seconds": round(time.perf_counter() - start, 2),
        "shapes": {name: {"min": r[0], "opt": r[1], "max": r[2]} for name, r in ranges.items() if name in inputs},
        "batch": list(batch),
        "seconds": list(seconds),
        "metadata": {k: meta[k] for k in METADATA_KEYS if k in meta},
    }
    plan_path.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def dry_run(paths: Sequence[Path], allow_conditional: bool = False) -> int:
    """Print one line per graph from the static TensorRT check (no TensorRT); 0 when every graph builds, else 1.

    A graph the real run would skip (input-dependent I3D gates, without ``--conditional``) is printed as skipped
    and does not fail the run, as in a real build."""
    trt_check = load_trt_check()
    refused = 0
    for path in paths:
        reason = conditional_skip(read_onnx_metadata(path), allow_conditional)
        if reason is not None:
            print(f"{path.name}: skipped: {reason}")
            continue
        report = trt_check.check_trt(path)
        print(report.line(), flush=True)
        refused += not report.ok
    return 1 if refused else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", nargs="+", type=Path, help="ONNX files from `nemo-sew export`")
    parser.add_argument("--out", type=Path, default=None, help="output directory (required unless --dry-run)")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="build nothing, no TensorRT needed: print 'builds' or 'refused: <reason>' per graph from a static check; "
        "exit 0 when all build, 1 otherwise",
    )  # fmt: skip
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--batch", default=DEFAULT_BATCH, help="MIN,OPT,MAX batch size")
    parser.add_argument("--seconds", default=DEFAULT_SECONDS, help="MIN,OPT,MAX audio duration in seconds")
    parser.add_argument("--workspace-gb", type=float, default=8.0, help="builder workspace limit (GiB)")
    parser.add_argument("--opt-level", type=int, default=3, choices=range(6), help="builder optimisation level")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 kernels in fp32 engines")
    parser.add_argument("--timing-cache", type=Path, default=None, help="shared timing cache file (faster rebuilds)")
    parser.add_argument(
        "--conditional", action="store_true",
        help="also build I3D graphs with input-dependent gates (If nodes); default: skip them for their static profile",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        batch, seconds = parse_triple(args.batch, int), parse_triple(args.seconds, float)
    except ValueError as e:
        parser.error(str(e))
    missing = [str(p) for p in args.onnx if not p.is_file()]
    if args.dry_run:
        if missing:
            parser.error(f"ONNX files not found: {missing}")
        return dry_run(args.onnx, args.conditional)
    if args.out is None:
        parser.error("--out is required (except with --dry-run)")
    trt = require_tensorrt()
    if missing:
        parser.error(f"ONNX files not found: {missing}")
    args.out.mkdir(parents=True, exist_ok=True)
    built = []
    for path in args.onnx:
        reason = conditional_skip(read_onnx_metadata(path), args.conditional)
        if reason is not None:
            print(f"{path.name}: skipped: {reason}")
            built.append({"onnx": path.name, "skipped": reason})
            continue
        info = build_engine(
            trt, path, args.out, args.precision, batch, seconds, args.workspace_gb, args.opt_level, args.tf32,
            args.timing_cache,
        )  # fmt: skip
        print(f"{path.name} -> {info['engine']} ({info['build_seconds']} s)")
        built.append(info)
    (args.out / "engines.json").write_text(json.dumps(built, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
