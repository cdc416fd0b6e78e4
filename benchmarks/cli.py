"""The ``nemo-sew bench ...`` subcommands: their options and handlers.

The library's command (:mod:`nemo_sew.cli`) does not name this package: it calls :func:`register` through the
``nemo_sew.cli`` entry point group declared in ``pyproject.toml``. Every subcommand takes its shared options
(``--warmup/--runs/--threads/--write``) from one argparse parent, :func:`bench_options`, built with that
subcommand's defaults.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from nemo_sew.cli import command_line, emit

_OMIT = "omit"
"""A :func:`bench_options` default meaning: this subcommand has no such option."""


@functools.cache
def bench_options(warmup: int | None | str = _OMIT, runs: int | None | str = _OMIT,
                  threads: int | None | str = _OMIT) -> argparse.ArgumentParser:  # fmt: skip
    """The options the bench subcommands share, as an argparse parent (``parents=[...]``): ``--write`` always;
    ``--warmup``, ``--runs`` and ``--threads`` with the given defaults (``None``: the benchmark's own, or torch's
    threads), left out where not given. One parser per set of defaults, shared by the subcommands that use it."""
    parent = argparse.ArgumentParser(add_help=False)
    if warmup != _OMIT:
        parent.add_argument("--warmup", type=int, default=warmup,
                            help=f"untimed rounds first (default: {_default(warmup)})")  # fmt: skip
    if runs != _OMIT:
        parent.add_argument("--runs", type=int, default=runs,
                            help=f"timed rounds, each variant once per round (default: {_default(runs)})")  # fmt: skip
    if threads != _OMIT:
        parent.add_argument("--threads", type=int, default=threads,
                            help=f"torch (and onnxruntime) intra-op threads of the timed runs "
                                 f"(default: {_default(threads, TORCH_THREADS)})")  # fmt: skip
    parent.add_argument("--write", default=None, help="append the section to this file (e.g. BENCHMARKS.md)")
    return parent


TORCH_THREADS = "torch's current setting"


def _default(value: int | None, none: str = "the benchmark's") -> str:
    return none if value is None else str(value)


def _cmd_bench_train_step(args: argparse.Namespace) -> int:
    from benchmarks.train_step import bench_train_step

    return emit(bench_train_step(args.preset, args.seconds, args.batch, args.warmup, args.runs, args.threads), args)


def _cmd_bench_compile(args: argparse.Namespace) -> int:
    from benchmarks.train_step import bench_compile

    return emit(bench_compile(args.preset, args.seconds, args.batch, args.squeeze, args.warmup, args.runs, args.threads), args)


def _cmd_bench_gates(args: argparse.Namespace) -> int:
    from benchmarks.gates import bench_gates, gates_markdown

    result = bench_gates(args.preset, args.seconds, args.close, warmup=args.warmup, runs=args.runs)
    return emit(gates_markdown(result, command_line(args)), args)


def _cmd_bench_prune(args: argparse.Namespace) -> int:
    from benchmarks.prune import bench_prune, prune_markdown

    result = bench_prune(args.preset, args.target, args.budget, args.seconds, warmup=args.warmup, runs=args.runs,
                         threads=args.threads, channels_first=args.channels_first,
                         onednn_linear=args.onednn_linear)  # fmt: skip
    goal = 0.55 if args.target == 0.5 else None
    return emit(prune_markdown(result, command_line(args), goal), args)


def _cmd_bench_squeeze(args: argparse.Namespace) -> int:
    from benchmarks.squeeze import bench_squeeze, squeeze_markdown

    rows = bench_squeeze(args.preset, args.factors, args.seconds, warmup=args.warmup, runs=args.runs,
                         frontend_macs=args.frontend_macs, threads=args.threads,
                         channels_first=args.channels_first, onednn_linear=args.onednn_linear)  # fmt: skip
    section = squeeze_markdown(rows, args.preset, args.seconds, command_line(args), args.frontend_macs,
                               onednn_linear=args.onednn_linear)  # fmt: skip
    return emit(section, args)


def _cmd_bench_stochastic(args: argparse.Namespace) -> int:
    from benchmarks.stochastic import bench_stochastic_methods, bench_stochastic_table

    if args.factor_losses:
        from benchmarks.stochastic import factor_losses

        section = factor_losses(args.factor_losses, args.data, factors=args.sampler_factors, batches=args.loss_batches,
                                hours=args.hours, command=command_line(args))  # fmt: skip
        return emit(section, args)
    if args.methods and args.step_cost:
        from benchmarks.stochastic import method_step_costs

        section = method_step_costs(args.data, recipe=args.recipe, methods=args.methods, rounds=args.step_cost,
                                    hours=args.hours, extra=args.overrides, command=command_line(args))  # fmt: skip
        return emit(section, args)
    if args.methods:
        section = bench_stochastic_methods(
            args.data, args.out, recipe=args.recipe, methods=args.methods, steps=args.steps, seeds=args.seeds,
            factors=args.factors, equal_time=not args.no_equal_time, fixed=not args.no_fixed,
            finetune_steps=args.finetune_steps if args.finetune else 0, finetune_factor=args.finetune_factor,
            cost_rounds=args.cost_rounds, hours=args.hours,
            extra=args.overrides, command=command_line(args),
        )  # fmt: skip
        return emit(section, args)
    section = bench_stochastic_table(
        args.data, args.out, recipe=args.recipe, steps=args.steps, finetune_steps=args.finetune_steps,
        hours=args.hours, extra=args.overrides, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_generalisation(args: argparse.Namespace) -> int:
    import os

    # the demo's fixed-step arithmetic (nemo_sew.cli._cmd_demo): the same fp32 results on any x86 CPU
    os.environ.setdefault("MKL_CBWR", "AVX2")
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import torch

    from benchmarks.generalisation import bench_generalisation

    torch.set_num_threads(args.threads)
    # `--recipe a.yaml b.yaml key=value`: argparse gives the overrides to --recipe; they are overrides
    recipes = [r for r in args.recipe if "=" not in r]
    overrides = [r for r in args.recipe if "=" in r] + list(args.overrides)
    section = bench_generalisation(
        recipes, args.engines_held_out, data_root=args.data, out=args.out, steps=args.train_steps, hours=args.hours,
        seed=args.seed, num_jobs=args.num_jobs, overrides=overrides, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_i3d(args: argparse.Namespace) -> int:
    from benchmarks.i3d import bench_i3d_table

    section = bench_i3d_table(
        args.data, args.out, recipe=args.recipe, i3d_recipe=args.i3d_recipe, steps=args.steps,
        prune_finetune_steps=args.prune_finetune_steps, thresholds=args.thresholds, prune_to=args.prune_to,
        hours=args.hours, extra=args.overrides, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_i3d_analysis(args: argparse.Namespace) -> int:
    from benchmarks.i3d_analysis import analyse_i3d, analysis_markdown
    from nemo_sew.safe_load import restore

    model = restore(args.model)
    result = analyse_i3d(
        model, args.manifest, args.out, threshold=args.threshold, snrs=args.snr, noise_utterances=args.noise_utterances,
        model_name=Path(args.model).name, max_utterances=args.max_utterances,
    )  # fmt: skip
    return emit(analysis_markdown(result, command_line(args), Path(args.model).name), args)


def _cmd_bench_ssl_curve(args: argparse.Namespace) -> int:
    from benchmarks.ssl_curve import bench_ssl_curve

    section = bench_ssl_curve(
        args.data, args.out, objectives=args.objectives, pretrain_steps=args.pretrain_steps,
        labelled_minutes=args.labelled_minutes, finetune_steps=args.finetune_steps, seeds=args.seeds,
        clusters=args.clusters, iter2_layer=args.iter2_layer, hours=args.hours, extra_pretrain=args.pretrain_override,
        extra_finetune=args.finetune_override, finetune_tag=args.finetune_tag, plot=args.plot,
        command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_ssl_stochastic(args: argparse.Namespace) -> int:
    from benchmarks.ssl_stochastic import bench_ssl_stochastic

    section = bench_ssl_stochastic(
        args.data, args.out, objective=args.objective, pretrain_steps=args.pretrain_steps,
        labelled_minutes=args.labelled_minutes, finetune_steps=args.finetune_steps, factors=args.factors,
        sampler_values=args.sampler_values, finetune_method=args.finetune_method, seeds=args.seeds,
        clusters=args.clusters, hours=args.hours, extra_pretrain=args.pretrain_override,
        extra_finetune=args.finetune_override, command=command_line(args),
        random_init=not args.no_random_init,
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_ssl(args: argparse.Namespace) -> int:
    from benchmarks.ssl import bench_ssl_table

    section = bench_ssl_table(
        args.data, args.out, objective=args.objective, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, labelled_minutes=args.labelled_minutes, clusters=args.clusters,
        hours=args.hours, extra_pretrain=args.pretrain_override, extra_finetune=args.finetune_override,
        command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_quant(args: argparse.Namespace) -> int:
    from benchmarks.quant import bench_quant

    section, _ = bench_quant(
        args.data, args.out, families=args.families, bits=args.bits, pretrain_steps=args.pretrain_steps,
        finetune_steps=args.finetune_steps, qat_steps=args.qat_steps, hours=args.hours, clusters=args.clusters,
        distill=args.qat_distill, fast_paths_threads=args.threads if args.fast_paths else None, extra=args.override,
        finetune_extra=args.finetune_override, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_prune_table(args: argparse.Namespace) -> int:
    from benchmarks.prune_table import bench_prune_table

    section, _ = bench_prune_table(
        args.model, args.data, args.out, budgets=args.budgets, targets=args.targets, prune_steps=args.prune_steps,
        scratch=args.scratch, scratch_steps=args.scratch_steps, distill=args.distill, control=not args.no_control,
        threads=args.threads,
        extra=args.override, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_purity(args: argparse.Namespace) -> int:
    from benchmarks.purity import bench_target_purity

    section = bench_target_purity(
        args.aligner, args.manifest, args.target, args.fit_manifest, args.out, clusters=args.clusters,
        fit_hours=args.fit_hours, command=command_line(args),
    )  # fmt: skip
    return emit(section, args)


def _cmd_bench_cpu(args: argparse.Namespace) -> int:
    import dataclasses

    from benchmarks.cpu import CpuBenchSettings, bench_cpu, cpu_markdown

    settings = CpuBenchSettings.quick() if args.quick else CpuBenchSettings()
    given = {k: getattr(args, k) for k in ("presets", "seconds", "batches", "warmup", "runs", "threads", "seed")}
    given["torchao"] = args.torchao or None
    settings = dataclasses.replace(settings, **{k: tuple(v) if isinstance(v, list) else v
                                                for k, v in given.items() if v is not None})  # fmt: skip
    result = bench_cpu(settings, command=command_line(args), profile=args.profile_ops,
                       log=lambda msg: print(f"[bench cpu] {msg}", file=sys.stderr, flush=True))  # fmt: skip
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=2))
    return emit(cpu_markdown(result), args)


def _cmd_bench_fast_paths(args: argparse.Namespace) -> int:
    from benchmarks.quant_paths import fast_paths, fast_paths_markdown
    from nemo_sew.measure import machine_line, torch_threads

    threads = args.threads or 1
    rows = fast_paths(args.model, args.manifest, Path(args.out), threads=threads, seconds=args.seconds,
                      runs=args.runs, calibration=args.calibration,
                      calibration_utterances=args.calibration_utterances)  # fmt: skip
    name = Path(args.model).stem
    with torch_threads(threads):  # the machine line names the threads the rows were timed with
        machine = machine_line()
    section = "\n".join([
        f"### CPU fast paths of {Path(args.model).name}: fp32, onnxruntime fp32 and the quantized forms (one run)", "",
        f"`{command_line(args)}` ({machine}; calibration: the first {args.calibration_utterances} "
        f"utterances of {Path(args.calibration).name if args.calibration else '(none: int8 static left out)'})",
        *fast_paths_markdown({name: rows}, threads, args.seconds), "",
    ])  # fmt: skip
    return emit(section, args)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``nemo-sew`` command (the ``nemo_sew.cli`` entry point)."""
    bench = sub.add_parser("bench", help="benchmarks that write BENCHMARKS.md rows")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")

    def _add(name: str, help: str, **timing: int | None) -> argparse.ArgumentParser:
        return bench_sub.add_parser(name, help=help, parents=[bench_options(**timing)])

    p = _add("squeeze", "encoder latency vs MACs across squeeze factors of one stochastic model",
             warmup=3, runs=10, threads=None)  # fmt: skip
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--frontend-macs", type=float, default=None, help="prune the front end to this fraction of its MACs first")
    p.add_argument("--channels-first", action="store_true", help="also time the channels-first front end (A/B)")
    p.add_argument("--onednn-linear", action="store_true", help="run nn.Linear through oneDNN (nemo_sew.nn.onednn)")
    p.set_defaults(func=_cmd_bench_squeeze)

    p = _add("fast-paths", "a trained .nemo's WER, CER, size and latency as fp32 eager, onnxruntime fp32 and every "
             "quantized onnxruntime form (int8 static calibrated on --calibration)", runs=10, threads=1)  # fmt: skip
    p.add_argument("model", metavar="MODEL.nemo")
    p.add_argument("--manifest", required=True, help="the test manifest (WER / CER)")
    p.add_argument("--calibration", default=None, help="int8 static: utterances to calibrate on (not the test set)")
    p.add_argument("--calibration-utterances", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="audio per timed utterance")
    p.add_argument("--out", default="outputs/bench_fast_paths", help="folder for the ONNX files")
    p.set_defaults(func=_cmd_bench_fast_paths)

    p = _add("train-step", "CTC training step time, encoder trained vs frozen (freeze_encoder_steps)",
             warmup=2, runs=8, threads=None)  # fmt: skip
    p.add_argument("--preset", default="sew_tiny")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=4)
    p.set_defaults(func=_cmd_bench_train_step)

    p = _add("compile", "encoder inference, eager vs torch.compile (inductor) on CPU", warmup=3, runs=10, threads=None)
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--squeeze", type=float, default=2.0)
    p.set_defaults(func=_cmd_bench_compile)

    p = _add("gates", "I3D: eager latency vs MACs with a fraction of the branches skipped", warmup=2, runs=10)
    p.add_argument("--preset", default="sew_small")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--close", type=float, default=0.4, help="fraction of the branches closed")
    p.set_defaults(func=_cmd_bench_gates)

    p = _add("prune", "pruned vs unpruned encoder: eager CPU latency vs MACs (random weights)",
             warmup=2, runs=10, threads=None)  # fmt: skip
    p.add_argument("--preset", default="w2v2_base")
    p.add_argument("--target", type=float, default=0.5, help="kept fraction of the budget's cost")
    p.add_argument("--budget", default="sepmac", choices=["size", "mac", "sepmac"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--channels-first", action="store_true", help="also time both models with the channels-first front end (A/B)")
    p.add_argument("--onednn-linear", action="store_true", help="run nn.Linear through oneDNN (nemo_sew.nn.onednn)")
    p.set_defaults(func=_cmd_bench_prune)

    p = _add("stochastic", "mini paper table: stochastic vs fixed squeeze at equal steps")
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
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    p.set_defaults(func=_cmd_bench_stochastic)

    p = _add("generalisation", "leave-one-engine-out: train on two synthesisers, test on the third (trains models)",
             threads=2)  # fmt: skip
    p.add_argument("--recipe", nargs="+", default=["recipes/ctc_char_tiny_mel.yaml",
                                                   "recipes/ctc_char_tiny_mel_voiceaug.yaml"],
                   help="recipes trained on every split; the first is the in-domain baseline of the others")  # fmt: skip
    p.add_argument("--engines-held-out", nargs="+", default=["espeak-ng", "flite", "festival"],
                   choices=["espeak-ng", "flite", "festival"], metavar="ENGINE",
                   help="the splits: each engine named is left out of training and tested on (default: all three)")
    p.add_argument("--train-steps", type=int, default=2000, help="fp32 training steps per model (the demo's 2000)")
    p.add_argument("--hours", type=float, default=3.5, help="hours of each split's corpus")
    p.add_argument("--data", default="data/generalisation", help="root of the split corpora (one folder each)")
    p.add_argument("--out", default="outputs/bench_generalisation", help="models, results and the kept results")
    p.add_argument("--seed", type=int, default=0,
                   help="the corpora's plan (sentences, voices); training's seed is the recipe's (override seed=N)")
    p.add_argument("-j", "--num-jobs", type=int, default=None, help="synthesis processes (default: the CPU count)")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value (every training run)")
    p.set_defaults(func=_cmd_bench_generalisation)

    p = _add("i3d", "I3D local/global vs full depth, layer pruning and a shallow model at equal steps")
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
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value (every training run)")
    p.set_defaults(func=_cmd_bench_i3d)

    p = _add("i3d-analysis", "I3D: gate-open heat map and realised depth vs duration, speaking rate and added noise")
    p.add_argument("model", metavar="MODEL.nemo", help="a trained model with I3D gates")
    p.add_argument("--manifest", required=True, help="utterances to analyse (e.g. the synthetic test split)")
    p.add_argument("--out", default="benchmarks/i3d_analysis", help="the pictures and analysis.json")
    p.add_argument("--threshold", type=float, default=None, help="inference threshold (default: the model's profile)")
    p.add_argument("--snr", type=lambda text: [float(v) for v in text.split(",")], default=[20.0, 10.0, 5.0, 0.0],
                   help="comma-separated SNRs (dB) of the added white noise (default 20,10,5,0)")
    p.add_argument("--noise-utterances", type=int, default=60, help="utterances run at each noise level")
    p.add_argument("--max-utterances", type=int, default=None, help="analyse only the manifest's first N utterances")
    p.set_defaults(func=_cmd_bench_i3d_analysis)

    p = _add("ssl", "pre-training vs random init: fine-tune both on a small labelled subset")
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
    p.set_defaults(func=_cmd_bench_ssl)

    p = _add("ssl-curve", "pre-training pays? fine-tuned CER vs pre-training steps, per objective")
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
    p.set_defaults(func=_cmd_bench_ssl_curve)

    p = _add("ssl-stochastic", "stochastic squeeze pre-trained then fine-tuned vs fixed squeeze")
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
    p.set_defaults(func=_cmd_bench_ssl_stochastic)

    p = _add("purity", "PNMI of HuBERT k-means targets vs characters aligned by a CTC model")
    p.add_argument("--aligner", required=True, help="a trained SqueezeCTCModel .nemo (e.g. outputs/demo/model.nemo)")
    p.add_argument("--manifest", default="data/synthetic/test.json")
    p.add_argument("--fit-manifest", default="data/synthetic/train.json")
    p.add_argument("--target", action="append", required=True,
                   help="mfcc=CENTROIDS.npy, mfcc, or MODEL.nemo (k-means on its encoder output); repeatable")  # fmt: skip
    p.add_argument("--clusters", type=int, default=100)
    p.add_argument("--fit-hours", type=float, default=0.5)
    p.add_argument("--out", default="outputs/bench_purity")
    p.set_defaults(func=_cmd_bench_purity)

    p = _add("prune-table", "HJ-Pruning of a trained model to MAC budgets vs the shape from scratch (trains models)",
             threads=2)  # fmt: skip
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
    p.add_argument("--override", nargs="*", default=[], help="overrides for every training run key=value")
    p.set_defaults(func=_cmd_bench_prune_table)

    p = _add("quant", "attention-only vs conformer under 8/4/2/1-bit PTQ and QAT (trains models)", threads=2)
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
    p.add_argument("--clusters", type=int, default=50)
    p.add_argument("--override", nargs="*", default=[], help="overrides for every training run key=value")
    p.set_defaults(func=_cmd_bench_quant)

    p = _add("cpu", "CPU inference: our encoder (eager, onnxruntime) vs transformers and NeMo Conformer",
             warmup=None, runs=None, threads=None)  # None: CpuBenchSettings' (or --quick's) values
    p.add_argument("--presets", nargs="+", default=None, help="waveform presets (default sew_tiny w2v2_base)")
    p.add_argument("--seconds", type=float, default=None, help="audio per item (default 10)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 8)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="tiny configs, 1 s audio, few runs (tests)")
    p.add_argument("--profile-ops", action="store_true", help="torch.profiler op groups of our eager encoder")
    p.add_argument("--torchao", action="store_true",
                   help="add torchao's PT2E int8 + torch.compile row beside the onnxruntime forms (needs torchao)")
    p.add_argument("--json", default=None, help="write the raw numbers to this JSON file")
    p.set_defaults(func=_cmd_bench_cpu)
