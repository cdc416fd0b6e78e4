"""The ``nemo-sew`` command.

    nemo-sew prepare synthetic data/synthetic --hours 3.5
    nemo-sew prepare librispeech /data/LibriSpeech-root data/librispeech -p train-clean-100 -p dev-clean
    nemo-sew validate-manifest data/synthetic/train.json
    nemo-sew train recipes/ctc_char_tiny_mel.yaml model.train_ds.manifest_filepath=... save_to=model.nemo
    nemo-sew evaluate model.nemo --manifest data/synthetic/test.json [--cross data/synthetic/cross.json] [--profile 2]
    nemo-sew demo
    nemo-sew doctor [manifests...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path
from typing import Sequence


def _cmd_train(args: argparse.Namespace) -> int:
    from nemo_sew.train import load_config, train

    train(load_config(args.recipe, args.overrides))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from nemo_sew.evaluate import evaluate
    from nemo_sew.safe_load import restore

    model = restore(args.model)
    result = evaluate(model, args.manifest, batch_size=args.batch_size, profile=args.profile, cross_manifest=args.cross)
    print(result.to_json())
    if result.cross_cer is not None:
        print(f"in-domain CER {result.cer:.4f}, cross-engine CER {result.cross_cer:.4f} "
              f"({result.cross_ratio:.2f}x; goal <= 2x)", file=sys.stderr)  # fmt: skip
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from nemo_sew.demo import run_demo

    run_demo(
        out_dir=args.out,
        data_dir=args.data,
        recipe=args.recipe,
        hours=args.hours,
        train_minutes=args.train_minutes,
        seed=args.seed,
        overrides=args.overrides,
        command="nemo-sew " + " ".join(args.argv),
        sweep=not args.no_sweep,
        sweep_utterances=args.sweep_utterances or None,
    )
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nemo_sew.profile import load_profiles
    from nemo_sew.safe_load import restore
    from nemo_sew.sweep import sweep

    model = restore(args.model)
    rows = sweep(
        model, args.manifest, load_profiles(args.profiles), args.out, batch_size=args.batch_size,
        command="nemo-sew " + " ".join(args.argv), engines=args.engines,
    )  # fmt: skip
    print((Path(args.out) / "sweep.md").read_text())
    return 0 if rows else 1


def _cmd_kmeans(args: argparse.Namespace) -> int:
    import json

    import nemo_sew  # noqa: F401
    from nemo_sew.ssl.targets import kmeans_from_manifest

    summary = kmeans_from_manifest(
        args.manifest, args.out, features=args.features, layer=args.layer, num_clusters=args.clusters,
        max_hours=args.max_hours, seed=args.seed,
    )  # fmt: skip
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_pick(args: argparse.Namespace) -> int:
    from nemo_sew.sweep import pick, write_default_profile

    row = pick(args.sweep, max_latency_ms=args.max_latency_ms, min_rtfx=args.min_rtfx)
    print(json.dumps({"name": row["name"], "profile": row["profile"], "wer": row["wer"],
                      "latency_ms_10s": row["latency_ms_10s"], "rtfx": row["rtfx"]}, indent=2))  # fmt: skip
    if args.write:
        if not args.model:
            raise SystemExit("--write needs --model MODEL.nemo")
        write_default_profile(args.model, row, args.write)
    return 0


def _emit(section: str, args: argparse.Namespace) -> int:
    """Print a benchmark section and append it to ``--write`` (e.g. BENCHMARKS.md) when given."""
    from nemo_sew.bench import append_benchmark

    print(section)
    if args.write:
        append_benchmark(section, args.write)
    return 0


def _cmd_bench_train_step(args: argparse.Namespace) -> int:
    from nemo_sew.bench.train_step import bench_train_step

    return _emit(bench_train_step(args.preset, args.seconds, args.batch, args.warmup, args.runs, args.threads), args)


def _cmd_bench_compile(args: argparse.Namespace) -> int:
    from nemo_sew.bench.train_step import bench_compile

    return _emit(bench_compile(args.preset, args.seconds, args.batch, args.squeeze, args.warmup, args.runs, args.threads), args)


def _cmd_bench_gates(args: argparse.Namespace) -> int:
    from nemo_sew.bench.gates import bench_gates, gates_markdown

    result = bench_gates(args.preset, args.seconds, args.close, warmup=args.warmup, runs=args.runs)
    return _emit(gates_markdown(result, "nemo-sew " + " ".join(args.argv)), args)


def _cmd_bench_prune(args: argparse.Namespace) -> int:
    from nemo_sew.bench.prune import bench_prune, prune_markdown

    result = bench_prune(args.preset, args.target, args.budget, args.seconds, warmup=args.warmup, runs=args.runs,
                         threads=args.threads, channels_first=args.channels_first,
                         onednn_linear=args.onednn_linear)  # fmt: skip
    goal = 0.55 if args.target == 0.5 else None
    return _emit(prune_markdown(result, "nemo-sew " + " ".join(args.argv), goal), args)


def _cmd_bench_squeeze(args: argparse.Namespace) -> int:
    from nemo_sew.bench.squeeze import bench_squeeze, squeeze_markdown

    rows = bench_squeeze(args.preset, args.factors, args.seconds, warmup=args.warmup, runs=args.runs,
                         frontend_macs=args.frontend_macs, threads=args.threads,
                         channels_first=args.channels_first, onednn_linear=args.onednn_linear)  # fmt: skip
    section = squeeze_markdown(rows, args.preset, args.seconds, "nemo-sew " + " ".join(args.argv), args.frontend_macs,
                               onednn_linear=args.onednn_linear)  # fmt: skip
    return _emit(section, args)


def _cmd_bench_stochastic(args: argparse.Namespace) -> int:
    from nemo_sew.bench.stochastic import bench_stochastic_methods, bench_stochastic_table

    if args.factor_losses:
        from nemo_sew.bench.stochastic import factor_losses

        section = factor_losses(args.factor_losses, args.data, factors=args.sampler_factors, batches=args.loss_batches,
                                hours=args.hours, command="nemo-sew " + " ".join(args.argv))  # fmt: skip
        return _emit(section, args)
    if args.methods and args.step_cost:
        from nemo_sew.bench.stochastic import method_step_costs

        section = method_step_costs(args.data, recipe=args.recipe, methods=args.methods, rounds=args.step_cost,
                                    hours=args.hours, extra=args.overrides, command="nemo-sew " + " ".join(args.argv))  # fmt: skip
        return _emit(section, args)
    if args.methods:
        section = bench_stochastic_methods(
            args.data, args.out, recipe=args.recipe, methods=args.methods, steps=args.steps, seeds=args.seeds,
            factors=args.factors, equal_time=not args.no_equal_time, fixed=not args.no_fixed,
            finetune_steps=args.finetune_steps if args.finetune else 0, finetune_factor=args.finetune_factor,
            cost_rounds=args.cost_rounds, hours=args.hours,
            extra=args.overrides, command="nemo-sew " + " ".join(args.argv),
        )  # fmt: skip
        return _emit(section, args)
    section = bench_stochastic_table(
        args.data, args.out, recipe=args.recipe, steps=args.steps, finetune_steps=args.finetune_steps,
        hours=args.hours, extra=args.overrides, command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_i3d(args: argparse.Namespace) -> int:
    from nemo_sew.bench.i3d import bench_i3d_table

    section = bench_i3d_table(
        args.data, args.out, recipe=args.recipe, i3d_recipe=args.i3d_recipe, steps=args.steps,
        prune_finetune_steps=args.prune_finetune_steps, thresholds=args.thresholds, prune_to=args.prune_to,
        hours=args.hours, extra=args.overrides, command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_i3d_analysis(args: argparse.Namespace) -> int:
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    from nemo_sew.bench.i3d_analysis import analyse_i3d, analysis_markdown

    model = ASRModel.restore_from(args.model, map_location="cpu")
    result = analyse_i3d(
        model, args.manifest, args.out, threshold=args.threshold, snrs=args.snr, noise_utterances=args.noise_utterances,
        model_name=Path(args.model).name, max_utterances=args.max_utterances,
    )  # fmt: skip
    return _emit(analysis_markdown(result, "nemo-sew " + " ".join(args.argv), Path(args.model).name), args)


def _cmd_bench_ssl_curve(args: argparse.Namespace) -> int:
    from nemo_sew.bench.ssl_curve import bench_ssl_curve

    section = bench_ssl_curve(
        args.data, args.out, objectives=args.objectives, pretrain_steps=args.pretrain_steps,
        labelled_minutes=args.labelled_minutes, finetune_steps=args.finetune_steps, seeds=args.seeds,
        clusters=args.clusters, iter2_layer=args.iter2_layer, hours=args.hours, extra_pretrain=args.pretrain_override,
        extra_finetune=args.finetune_override, finetune_tag=args.finetune_tag, plot=args.plot,
        command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_ssl_stochastic(args: argparse.Namespace) -> int:
    from nemo_sew.bench.ssl_stochastic import bench_ssl_stochastic

    section = bench_ssl_stochastic(
        args.data, args.out, objective=args.objective, pretrain_steps=args.pretrain_steps,
        labelled_minutes=args.labelled_minutes, finetune_steps=args.finetune_steps, factors=args.factors,
        sampler_values=args.sampler_values, finetune_method=args.finetune_method, seeds=args.seeds,
        clusters=args.clusters, hours=args.hours, extra_pretrain=args.pretrain_override,
        extra_finetune=args.finetune_override, command="nemo-sew " + " ".join(args.argv),
        random_init=not args.no_random_init,
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_ssl(args: argparse.Namespace) -> int:
    from nemo_sew.bench.ssl import bench_ssl_table

    section = bench_ssl_table(
        args.data, args.out, objective=args.objective, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, labelled_minutes=args.labelled_minutes, clusters=args.clusters,
        hours=args.hours, extra_pretrain=args.pretrain_override, extra_finetune=args.finetune_override,
        command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_quant(args: argparse.Namespace) -> int:
    from nemo_sew.bench.quant import bench_quant

    section, _ = bench_quant(
        args.data, args.out, families=args.families, bits=args.bits, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, qat_steps=args.qat_steps, hours=args.hours, clusters=args.clusters,
        distill=args.qat_distill, fast_paths_threads=args.threads if args.fast_paths else None, extra=args.override,
        finetune_extra=args.finetune_override, command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_prune_table(args: argparse.Namespace) -> int:
    from nemo_sew.bench.prune_table import bench_prune_table

    section, _ = bench_prune_table(
        args.model, args.data, args.out, budgets=args.budgets, targets=args.targets, prune_steps=args.prune_steps,
        scratch=args.scratch, scratch_steps=args.scratch_steps, distill=args.distill, control=not args.no_control,
        threads=args.threads,
        extra=args.override, command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_purity(args: argparse.Namespace) -> int:
    from nemo_sew.bench.purity import bench_target_purity

    section = bench_target_purity(
        args.aligner, args.manifest, args.target, args.fit_manifest, args.out, clusters=args.clusters,
        fit_hours=args.fit_hours, command="nemo-sew " + " ".join(args.argv),
    )  # fmt: skip
    return _emit(section, args)


def _cmd_bench_cpu(args: argparse.Namespace) -> int:
    import dataclasses

    from nemo_sew.bench.cpu import CpuBenchSettings, bench_cpu, cpu_markdown

    settings = CpuBenchSettings.quick() if args.quick else CpuBenchSettings()
    given = {k: getattr(args, k) for k in ("presets", "seconds", "batches", "warmup", "runs", "threads", "seed")}
    settings = dataclasses.replace(settings, **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in given.items() if v is not None})  # fmt: skip
    result = bench_cpu(settings, command="nemo-sew " + " ".join(args.argv), profile=args.profile_ops,
                       log=lambda msg: print(f"[bench cpu] {msg}", file=sys.stderr, flush=True))  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    return _emit(cpu_markdown(result), args)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nemo_sew.doctor import doctor

    if args.gpu:  # make gpu-check: bf16 steps per family, sync count, DDP, throughput (skips without CUDA)
        from nemo_sew.gpu_check import gpu_check

        section, ok = gpu_check(args.preset, args.batch, args.seconds)
        if section.startswith("skip:"):
            print(section)
            return 0
        _emit(section, args)
        return 0 if ok else 1
    findings = doctor(args.manifests, sample_rate=args.sample_rate)
    for finding in findings:
        print(finding.line())
    return 1 if any(f.level == "FAIL" for f in findings) else 0


def _profile_arg(text: str):
    try:
        return float(text)
    except ValueError:
        return text  # a named profile


def build_parser() -> argparse.ArgumentParser:
    from manifests import cli as manifests_cli

    parser = argparse.ArgumentParser(prog="nemo-sew", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    manifests_cli.register(sub)
    for module in ("nemo_sew.export.cli", "nemo_sew.convert.cli", "nemo_sew.prune.cli", "nemo_sew.quant.model",
                   "nemo_sew.demo_sweep"):
        importlib.import_module(module).register(sub)

    p = sub.add_parser("doctor", help="check the environment (packages, CUDA, bf16, corpus tools) and manifests")
    p.add_argument("manifests", nargs="*", help="NeMo manifests to validate as training would")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--gpu", action="store_true", help="the GPU check (make gpu-check): bf16 training steps of every "
                   "family, host-sync count, a 2-GPU DDP step, throughput and MFU; skips without CUDA")  # fmt: skip
    p.add_argument("--preset", default="sew_tiny", help="--gpu: the encoder size")
    p.add_argument("--batch", type=int, default=8, help="--gpu: utterances per step")
    p.add_argument("--seconds", type=float, default=10.0, help="--gpu: seconds per utterance")
    p.add_argument("--write", default=None, help="--gpu: append the table to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("train", help="train a recipe YAML (NeMo trainer + exp_manager)")
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=100 save_to=m.nemo")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="WER, CER, GMACs/s, latency and RTFx of a .nemo model on a manifest")
    p.add_argument("model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--cross", default=None, metavar="MANIFEST",
                   help="cross-engine test (the synthetic corpus's cross.json): also its WER and CER")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--profile", type=_profile_arg, default=None, help="squeeze factor or named profile")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", help="evaluate a model at every named profile: table + Pareto plot")
    p.add_argument("model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--profiles", required=True, help="YAML of named profiles (recipes/profiles/)")
    p.add_argument("--out", default="outputs/sweep")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--engines", default=None, metavar="BENCH.json",
                   help="join per-profile TensorRT numbers from trt/bench_engines.py --out (matched by profile name)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("pick", help="best-WER profile on the measured Pareto front that meets a target")
    p.add_argument("sweep", help="sweep.json or its directory")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--max-latency-ms", type=float)
    target.add_argument("--min-rtfx", type=float)
    p.add_argument("--model", help="the swept .nemo (for --write)")
    p.add_argument("--write", help="write a copy of --model with the picked profile as its default")
    p.set_defaults(func=_cmd_pick)

    p = sub.add_parser("kmeans", help="fit HuBERT k-means targets (MFCC or a teacher model's layer) on a manifest")
    p.add_argument("--manifest", required=True, help="NeMo JSON manifest of (unlabelled) training audio")
    p.add_argument("--out", required=True, help="centroids .npy (set it as model.hubert.centroids)")
    p.add_argument("--features", default="mfcc", help="'mfcc' (iteration 1) or a teacher .nemo (iteration 2)")
    p.add_argument("--layer", type=int, default=None, help="teacher blocks to run (default: all)")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--max-hours", type=float, default=10.0, help="audio used for fitting")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_kmeans)

    bench = sub.add_parser("bench", help="benchmarks that write BENCHMARKS.md rows")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench_sub.add_parser("squeeze", help="encoder latency vs MACs across squeeze factors of one stochastic model")
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--frontend-macs", type=float, default=None, help="prune the front end to this fraction of its MACs first")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--channels-first", action="store_true", help="also time the channels-first front end (A/B)")
    p.add_argument("--onednn-linear", action="store_true", help="run nn.Linear through oneDNN (nemo_sew.nn.onednn)")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_squeeze)

    p = bench_sub.add_parser("train-step", help="CTC training step time, encoder trained vs frozen (freeze_encoder_steps)")
    p.add_argument("--preset", default="sew_tiny")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_train_step)

    p = bench_sub.add_parser("compile", help="encoder inference, eager vs torch.compile (inductor) on CPU")
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--squeeze", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_compile)

    p = bench_sub.add_parser("gates", help="I3D: eager latency vs MACs with a fraction of the branches skipped")
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--close", type=float, default=0.4, help="fraction of the branches closed")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_gates)

    p = bench_sub.add_parser("prune", help="pruned vs unpruned encoder: eager CPU latency vs MACs (random weights)")
    p.add_argument("--preset", default="w2v2_base")
    p.add_argument("--target", type=float, default=0.5, help="kept fraction of the budget's cost")
    p.add_argument("--budget", default="sepmac", choices=["size", "mac", "sepmac"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--channels-first", action="store_true", help="also time both models with the channels-first front end (A/B)")
    p.add_argument("--onednn-linear", action="store_true", help="run nn.Linear through oneDNN (nemo_sew.nn.onednn)")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_prune)

    p = bench_sub.add_parser("stochastic", help="mini paper table: stochastic vs fixed squeeze at equal steps")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="outputs/bench_stochastic")
    p.add_argument("--recipe", default="recipes/ctc_char_tiny_mel.yaml")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="compare training methods (uniform sandwich inplace_distill weighted sandwich_interior) at equal steps and time")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="--methods: seeds per cell (0 1)")
    p.add_argument("--factors", nargs="+", type=int, default=[1, 2, 4], help="--methods: squeeze factors evaluated")
    p.add_argument("--no-equal-time", action="store_true", help="--methods: equal steps only")
    p.add_argument("--finetune", action="store_true",
                   help="--methods: also fine-tune each method's model and the fixed model --finetune-steps at --finetune-factor")
    p.add_argument("--finetune-factor", type=int, default=2, help="--methods --finetune: the squeeze factor (2)")
    p.add_argument("--cost-rounds", type=int, default=8, help="--methods: timed rounds of the per-step cost (equal time)")
    p.add_argument("--no-fixed", action="store_true", help="--methods: no fixed-squeeze models")
    p.add_argument("--step-cost", type=int, default=0, metavar="ROUNDS",
                   help="--methods: only time one training step of each method (ROUNDS interleaved steps), no training")
    p.add_argument("--factor-losses", nargs="+", default=None, metavar="MODEL",
                   help="no training: each .nemo's CTC loss per squeeze factor on training batches of --data, and the "
                        "draw probabilities stochastic.method=weighted gives them")
    p.add_argument("--sampler-factors", nargs="+", type=float, default=[1, 2, 3, 4],
                   help="--factor-losses: the factors (the sampler's values)")
    p.add_argument("--loss-batches", type=int, default=6, help="--factor-losses: training batches per factor")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    p.set_defaults(func=_cmd_bench_stochastic)

    p = bench_sub.add_parser("i3d", help="I3D local/global vs full depth, layer pruning and a shallow model at equal steps")
    p.add_argument("--data", "--corpus-dir", dest="data", default="data/synthetic", help="synthetic corpus directory")
    p.add_argument("--out", default="outputs/bench_i3d", help="models, bench_i3d.json and the pictures")
    p.add_argument("--recipe", default="recipes/ctc_char_tiny_mel.yaml", help="the full-depth recipe")
    p.add_argument("--i3d-recipe", default="recipes/i3d_tiny_mel.yaml")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--steps", type=int, default=1500, help="training steps of every model")
    p.add_argument("--prune-finetune-steps", type=int, default=300, help="fine-tuning after each removed layer")
    p.add_argument("--prune-to", type=int, default=None,
                   help="layers of the pruned and shallow models (default: I3D local's mean depth on dev, rounded)")
    p.add_argument("--thresholds", type=lambda text: [float(v) for v in text.split(",")], default=[0.3, 0.5, 0.7],
                   help="comma-separated I3D inference thresholds (default 0.3,0.5,0.7)")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value (every training run)")
    p.set_defaults(func=_cmd_bench_i3d)

    p = bench_sub.add_parser(
        "i3d-analysis", help="I3D: gate-open heat map and realised depth vs duration, speaking rate and added noise",
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL.nemo", help="a trained model with I3D gates")
    p.add_argument("--manifest", required=True, help="utterances to analyse (e.g. the synthetic test split)")
    p.add_argument("--out", default="benchmarks/i3d_analysis", help="the pictures and analysis.json")
    p.add_argument("--threshold", type=float, default=None, help="inference threshold (default: the model's profile)")
    p.add_argument("--snr", type=lambda text: [float(v) for v in text.split(",")], default=[20.0, 10.0, 5.0, 0.0],
                   help="comma-separated SNRs (dB) of the added white noise (default 20,10,5,0)")
    p.add_argument("--noise-utterances", type=int, default=60, help="utterances run at each noise level")
    p.add_argument("--max-utterances", type=int, default=None, help="analyse only the manifest's first N utterances")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_i3d_analysis)

    p = bench_sub.add_parser("ssl", help="pre-training vs random init: fine-tune both on a small labelled subset")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="outputs/bench_ssl")
    p.add_argument("--objective", choices=["hubert", "wav2vec2"], default="hubert")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--finetune-steps", type=int, default=500)
    p.add_argument("--labelled-minutes", type=float, default=20.0)
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--pretrain-override", nargs="*", default=[], help="pre-training recipe overrides key=value")
    p.add_argument("--finetune-override", nargs="*", default=[], help="fine-tuning recipe overrides key=value")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_ssl)

    p = bench_sub.add_parser("ssl-curve", help="pre-training pays? fine-tuned CER vs pre-training steps, per objective")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="outputs/bench_ssl_curve")
    p.add_argument("--objectives", nargs="+", default=["hubert", "hubert2", "wav2vec2"],
                   help="hubert (iteration 1, MFCC k-means), hubert2 (k-means on the final hubert model), wav2vec2")
    p.add_argument("--pretrain-steps", type=int, nargs="+", default=[600, 1200, 2400],
                   help="one pre-training run per objective to the largest, a snapshot at each")
    p.add_argument("--labelled-minutes", type=float, nargs="+", default=[20.0, 60.0])
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds per cell")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--iter2-layer", type=lambda v: None if v == "all" else int(v), default=2,
                   help="hubert2: k-means on the output of this many blocks of the hubert model ('all': every block)")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--pretrain-override", nargs="*", default=[], help="pre-training recipe overrides key=value")
    p.add_argument("--finetune-override", nargs="*", default=[], help="fine-tuning recipe overrides key=value")
    p.add_argument("--finetune-tag", default="",
                   help="name this set of fine-tunings (another recipe or overrides on the same snapshots, kept beside)")
    p.add_argument("--plot", default="benchmarks/ssl_curve.png", help="PNG of CER vs pre-training steps")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_ssl_curve)

    p = bench_sub.add_parser("ssl-stochastic", help="stochastic squeeze pre-trained then fine-tuned vs fixed squeeze")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="outputs/bench_ssl_stochastic")
    p.add_argument("--objective", choices=["hubert", "wav2vec2"], default="hubert")
    p.add_argument("--pretrain-steps", type=int, default=1200)
    p.add_argument("--labelled-minutes", type=float, default=20.0)
    p.add_argument("--finetune-steps", type=int, default=1000)
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4], help="squeeze factors compared")
    p.add_argument("--sampler-values", type=float, nargs="+", default=[1, 2, 3, 4],
                   help="the squeeze factors the stochastic pre-training draws from")
    p.add_argument("--finetune-method", default="sandwich",
                   help="how the stochastic fine-tuning uses the sampler (uniform sandwich inplace_distill weighted sandwich_interior)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds per cell")
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--pretrain-override", nargs="*", default=[], help="pre-training recipe overrides key=value")
    p.add_argument("--finetune-override", nargs="*", default=[], help="fine-tuning recipe overrides key=value")
    p.add_argument("--no-random-init", action="store_true", help="leave out the fine-tuning from random weights at each s")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_ssl_stochastic)

    p = bench_sub.add_parser("purity", help="PNMI of HuBERT k-means targets vs characters aligned by a CTC model")
    p.add_argument("--aligner", required=True, help="a trained SqueezeCTCModel .nemo (e.g. outputs/demo/model.nemo)")
    p.add_argument("--manifest", default="data/synthetic/test.json")
    p.add_argument("--fit-manifest", default="data/synthetic/train.json")
    p.add_argument("--target", action="append", required=True,
                   help="mfcc=CENTROIDS.npy, mfcc, or MODEL.nemo (k-means on its encoder output); repeatable")  # fmt: skip
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--fit-hours", type=float, default=0.5)
    p.add_argument("--out", default="outputs/bench_purity")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_purity)

    p = bench_sub.add_parser("prune-table", help="HJ-Pruning of a trained model to MAC budgets vs the shape from scratch (trains models)")
    p.add_argument("--model", default="outputs/demo/model.nemo", help="the trained CTC model to prune (the demo's)")
    p.add_argument("--data", default="data/synthetic", help="corpus directory with train/dev/test.json")
    p.add_argument("--out", default="outputs/bench_prune_table")
    p.add_argument("--budgets", nargs="+", default=["size", "sepmac"], help="size mac sepmac transformer frontend")
    p.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6, 0.5])
    p.add_argument("--prune-steps", type=int, default=400)
    p.add_argument("--scratch", type=float, nargs="*", default=[0.6], help="targets whose sepmac shape is trained from scratch")
    p.add_argument("--scratch-steps", type=int, default=None, help="the base model's steps + --prune-steps")
    p.add_argument("--distill", type=float, default=0.0, help="pruning_distill.weight (KL from the unpruned model)")
    p.add_argument("--no-control", action="store_true", help="no 'unpruned + --prune-steps steps' control row")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the latency rounds")
    p.add_argument("--override", nargs="*", default=[], help="overrides for every training run key=value")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_prune_table)

    p = bench_sub.add_parser("quant", help="attention-only vs conformer under 8/4/2/1-bit PTQ and QAT (trains models)")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--out", default="outputs/bench_quant")
    p.add_argument("--families", nargs="+", default=["study_conformer", "study_attn_deep_narrow", "study_attn_shallow_wide"])
    p.add_argument("--bits", type=int, nargs="+", default=[16, 8, 4, 2, 1])
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--pretrain-steps", type=int, default=300)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--qat-steps", type=int, default=100, help="0 = PTQ only")
    p.add_argument("--finetune-override", nargs="*", default=[], help="overrides for the CTC fine-tuning only key=value")
    p.add_argument("--qat-distill", type=float, default=1.0, help="QAT's KL weight toward the fp model (0 = CTC only)")
    p.add_argument("--fast-paths", action="store_true",
                   help="also transcribe and time the onnxruntime int8 / 4-bit forms of each fp model")
    p.add_argument("--threads", type=int, default=2, help="--fast-paths: torch / onnxruntime intra-op threads")
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--override", nargs="*", default=[], help="overrides for every training run key=value")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.set_defaults(func=_cmd_bench_quant)

    p = bench_sub.add_parser("cpu", help="CPU inference: our encoder (eager, onnxruntime) vs transformers and NeMo Conformer")
    p.add_argument("--presets", nargs="+", default=None, help="waveform presets (default sew_tiny w2v2_base)")
    p.add_argument("--seconds", type=float, default=None, help="audio per item (default 10)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--runs", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime intra-op threads")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny configs, 1 s audio, few runs (tests)")
    p.add_argument("--profile-ops", action="store_true", help="torch.profiler op groups of our eager encoder")
    p.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    p.add_argument("--json", default=None, help="write the raw numbers to this JSON file")
    p.set_defaults(func=_cmd_bench_cpu)

    p = sub.add_parser("demo", help="synthetic corpus -> CPU training -> evaluation (what `make demo` runs)")
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--recipe", default="recipes/ctc_char_tiny_mel.yaml")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--train-minutes", type=float, default=18.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep-utterances", type=int, default=100,
                   help="test utterances (evenly spaced) the profile sweep evaluates; 0 = the whole test set")
    p.add_argument("--no-sweep", action="store_true", help="skip the profile sweep and the ONNX files per profile")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    p.set_defaults(func=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user's input causes (a missing or bad file, a wrong option or override): one line, no traceback."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from omegaconf.errors import OmegaConfBaseException

    from manifests.audio import AudioError

    return (OSError, ValueError, KeyError, AudioError, OmegaConfBaseException, MisconfigurationException)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv  # accepted after the command too
    args = build_parser().parse_args([a for a in argv if a != "--verbose"])
    args.verbose = args.verbose or verbose
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except _user_errors() as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split()) if not isinstance(err, KeyError) else f"missing key {err}"
        print(f"nemo-sew {args.command}: error: {message} ({type(err).__name__}; --verbose for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
