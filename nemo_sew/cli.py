"""The ``nemo-sew`` command.

    nemo-sew prepare synthetic data/synthetic --hours 3.5
    nemo-sew prepare librispeech /data/LibriSpeech-root data/librispeech -p train-clean-100 -p dev-clean
    nemo-sew validate-manifest data/synthetic/train.json
    nemo-sew train recipes/ctc_char_tiny_mel.yaml model.train_ds.manifest_filepath=... save_to=model.nemo
    nemo-sew evaluate model.nemo --manifest data/synthetic/test.json [--cross data/synthetic/cross.json] [--profile 2]
    nemo-sew demo [--product]
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
    result = evaluate(model, args.manifest, batch_size=args.batch_size, profile=args.profile, cross_manifest=args.cross,
                      max_utterances=args.utterances or None)  # fmt: skip
    print(result.summary())
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(result.to_json() + "\n")
        print(f"wrote {args.json}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import os

    if args.train_minutes is None:
        # the same fp32 arithmetic on every x86 CPU: MKL's conditional numerical reproducibility and oneDNN capped
        # at AVX2 (set before torch first calls them: nothing above has imported torch), and a fixed thread count
        os.environ.setdefault("MKL_CBWR", "AVX2")
        os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
        import torch

        torch.set_num_threads(args.threads)
    common = dict(data_dir=args.data, hours=args.hours, train_minutes=args.train_minutes, seed=args.seed,
                  overrides=args.overrides, command=command_line(args), sweep_utterances=args.sweep_utterances or None)
    if args.product:
        from nemo_sew.demo_product import PRODUCT_RECIPE, PRODUCT_STEPS, run_product_demo
        from nemo_sew.errors import UserError

        if args.no_sweep:
            raise UserError("--product sweeps its profile grid: leave out --no-sweep")
        run_product_demo(out_dir=args.out or "outputs/demo_product", recipe=args.recipe or PRODUCT_RECIPE,
                         train_steps=PRODUCT_STEPS if args.train_steps is None else args.train_steps, **common)
        return 0
    from nemo_sew.demo import DEMO_STEPS, run_demo

    run_demo(out_dir=args.out or "outputs/demo", recipe=args.recipe or "recipes/ctc_char_tiny_mel.yaml",
             train_steps=DEMO_STEPS if args.train_steps is None else args.train_steps, sweep=not args.no_sweep, **common)
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from nemo_sew.profile import load_profiles
    from nemo_sew.safe_load import restore
    from nemo_sew.sweep import sweep

    model = restore(args.model)
    rows = sweep(
        model, args.manifest, load_profiles(args.profiles), args.out, batch_size=args.batch_size,
        command=command_line(args), engines=args.engines, max_utterances=args.utterances or None, source=args.profiles,
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

    row = pick(args.sweep, max_latency_ms=args.max_latency_ms, min_rtfx=args.min_rtfx, max_gmacs=args.max_gmacs)
    print(json.dumps({"name": row["name"], "profile": row["profile"], "wer": row["wer"], "cer": row["cer"],
                      "encoder_gmacs_per_s": row["encoder_gmacs_per_s"], "latency_ms_10s": row["latency_ms_10s"],
                      "rtfx": row["rtfx"]}, indent=2))  # fmt: skip
    if args.write:
        if not args.model:
            from nemo_sew.errors import UserError

            raise UserError("--write needs --model MODEL.nemo")
        write_default_profile(args.model, row, args.write)
        print(f"wrote {args.write}: {args.model} with profile {row['name']} as its default")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (``nemo-sew`` and its arguments), for the reports that name what made them."""
    return "nemo-sew " + " ".join(args.argv)


def emit(section: str, args: argparse.Namespace) -> int:
    """Print a benchmark section and append it to ``--write`` (e.g. BENCHMARKS.md) when given."""
    from nemo_sew.measure import append_benchmark

    print(section)
    if args.write:
        append_benchmark(section, args.write)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nemo_sew.doctor import doctor

    if args.gpu:  # make gpu-check: bf16 steps per family, sync count, DDP, throughput (skips without CUDA)
        from nemo_sew.gpu_check import gpu_check

        section, ok = gpu_check(args.preset, args.batch, args.seconds)
        if section.startswith("skip:"):
            print(section)
            return 0
        emit(section, args)
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


PLUGIN_GROUP = "nemo_sew.cli"
"""Entry point group of subcommands other packages add: ``name = "module:register"``, ``register(sub)`` adding its
parsers to the ``nemo-sew`` subparsers. ``pyproject.toml`` declares ``bench`` there (:mod:`benchmarks.cli`, the
package beside this library), so the library never names the benchmarks."""


def _register_plugins(sub: argparse._SubParsersAction) -> None:
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda ep: ep.name):
        try:
            register = ep.load()
        except ModuleNotFoundError as err:  # declared by an installed distribution whose code is gone: say so, go on
            print(f"nemo-sew: the {ep.name!r} subcommands are unavailable ({ep.value}: {err})", file=sys.stderr)
            continue
        register(sub)


def build_parser() -> argparse.ArgumentParser:
    from manifests import cli as manifests_cli

    parser = argparse.ArgumentParser(prog="nemo-sew", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    manifests_cli.register(sub)
    for module in ("nemo_sew.export.cli", "nemo_sew.convert.cli", "nemo_sew.prune.cli", "nemo_sew.quant.cli",
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
    p.add_argument("--utterances", type=int, default=0, help="evaluate at most N evenly spaced utterances (0 = all)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the full result (per-utterance MACs, skipped lines, profile) as JSON")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("sweep", help="evaluate a model at every named profile: table + Pareto plot")
    p.add_argument("model")
    p.add_argument("--manifest", required=True)
    p.add_argument("--profiles", required=True, help="YAML of named profiles (recipes/profiles/)")
    p.add_argument("--out", default="outputs/sweep")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--utterances", type=int, default=0, help="evaluate at most N evenly spaced utterances (0 = all)")
    p.add_argument("--engines", default=None, metavar="BENCH.json",
                   help="join per-profile TensorRT numbers from trt/bench_engines.py --out (matched by profile name)")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("pick", help="best-WER profile on the measured Pareto front that meets a target")
    p.add_argument("sweep", help="sweep.json or its directory")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--max-latency-ms", type=float)
    target.add_argument("--min-rtfx", type=float)
    target.add_argument("--max-gmacs", type=float, help="encoder GMACs per second of audio (independent of the machine)")
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

    _register_plugins(sub)  # nemo-sew bench ... (the benchmarks package)

    p = sub.add_parser("demo", help="synthetic corpus -> CPU training -> evaluation (what `make demo` runs)")
    p.add_argument("--out", default=None, help="default outputs/demo (--product: outputs/demo_product)")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--recipe", default=None,
                   help="default recipes/ctc_char_tiny_mel.yaml (--product: recipes/all_dials_tiny_mel.yaml)")
    p.add_argument("--hours", type=float, default=3.5)
    p.add_argument("--product", action="store_true",
                   help="the product demo: train the all-dials recipe, quantize --bits 8 4 --keep-fp, sweep "
                        "recipes/profiles/product.yaml (squeeze x depth threshold x bits) with one ONNX per profile")
    p.add_argument("--train-steps", type=int, default=None,
                   help="training steps (default 2000, --product 400; fp32 from the recipe's seed: the same model "
                        "on any machine)")
    p.add_argument("--threads", type=int, default=2,
                   help="torch threads of the fixed-step demo (part of what makes its result the same everywhere)")
    p.add_argument("--train-minutes", type=float, default=None,
                   help="train for a time budget instead (the step reached, and so the result, depends on the machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sweep-utterances", type=int, default=100,
                   help="test utterances (evenly spaced) the profile sweep evaluates; 0 = the whole test set")
    p.add_argument("--no-sweep", action="store_true", help="skip the profile sweep and the ONNX files per profile")
    p.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    p.set_defaults(func=_cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors a user's input causes, reported as one line without a traceback: the project's own
    :class:`~nemo_sew.errors.UserError`, a missing file, and audio that does not meet the requirements
    (:class:`manifests.audio.AudioError`). Anything else (an internal ``ValueError`` or ``KeyError`` included)
    is a bug and keeps its traceback."""
    from manifests.audio import AudioError
    from nemo_sew.errors import UserError

    return (UserError, FileNotFoundError, AudioError)


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _quiet_libraries() -> None:
    """Without ``--verbose``: NeMo's info and warning lines (config dumps, "restored from", data loader
    warnings) and NeMo's telemetry (``nv_one_logger``) are not printed, so a command's output is its result.
    Filters on the loggers themselves (NeMo sets its logger's level when it is imported, later than this)."""
    only_errors = _OnlyErrors()
    logging.getLogger("nemo_logger").addFilter(only_errors)
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: not r.name.startswith("nv_one_logger") or r.levelno >= logging.ERROR)


def _refuse_unknown_options(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Name an option the command does not have (``--manfest``: did you mean ``--manifest``?) before argparse
    would report the required option it stands for as missing."""
    import difflib

    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command = next((a for a in argv if not a.startswith("-")), None)
    if sub is None or command not in sub.choices:
        return
    cmd_parser = sub.choices[command]
    known = set(cmd_parser._option_string_actions) | set(parser._option_string_actions)
    rest = argv[argv.index(command) + 1 :]
    if any(isinstance(a, argparse._SubParsersAction) for a in cmd_parser._actions):  # nested (bench KIND ...)
        nested = next(a for a in cmd_parser._actions if isinstance(a, argparse._SubParsersAction))
        inner = next((a for a in rest if not a.startswith("-")), None)
        if inner not in nested.choices:
            return
        cmd_parser = nested.choices[inner]
        known |= set(cmd_parser._option_string_actions)
        command = f"{command} {inner}"
    for token in rest:
        if token == "--":
            break
        name = token.split("=", 1)[0]
        if name.startswith("--") and name not in known:
            close = difflib.get_close_matches(name, sorted(o for o in known if o.startswith("--")), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            cmd_parser.error(f"unknown option {name}{hint}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv  # accepted after the command too
    parser = build_parser()
    argv_ = [a for a in argv if a != "--verbose"]
    _refuse_unknown_options(parser, argv_)
    args = parser.parse_args(argv_)
    args.verbose = args.verbose or verbose
    args.argv = argv
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not args.verbose:
        _quiet_libraries()
    try:
        return int(args.func(args) or 0)
    except _user_errors() as err:
        if args.verbose:
            raise
        message = " ".join(str(err).split())
        print(f"nemo-sew {args.command}: error: {message} ({type(err).__name__}; --verbose for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
