"""Command-line front-end for the data preparation.

``register(subparsers)`` adds the commands to another program's parser (the
``nemo-sew`` CLI does so); ``main()`` runs them on their own
(``python -m manifests``)::

    prepare synthetic OUT_DIR [--hours H] [--seed S] [--engines E ...] [--cross-engine E] [--shards N] [-j N]
    prepare librispeech CORPUS_DIR OUT_DIR [-p PART ...] [--shards N] [-j N]
    prepare librilight CORPUS_DIR OUT_DIR [-s SUBSET ...] [-j N]
    validate-manifest MANIFEST [--out PATH] [--sample-rate SR] [--min-duration S]
                      [--max-duration S] [--no-content-check] [-j N]

Every command sets ``func`` (called with the parsed arguments, returns the
exit status) and prints its outputs as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Sub-commands import their modules when they run, so that building the
# parser (e.g. for ``nemo-sew --help``) does not import lhotse.


def _print_json(data: Any) -> None:
    """Print ``data`` as indented JSON, paths as strings."""
    print(json.dumps(data, indent=2, default=str))


def run_synthetic(args: argparse.Namespace) -> int:
    """``prepare synthetic``: build the synthetic corpus (espeak-ng and flite, festival held out)."""
    from manifests.synthetic import prepare_synthetic

    outputs = prepare_synthetic(
        args.out_dir,
        hours=args.hours,
        seed=args.seed,
        num_jobs=args.num_jobs,
        test_speakers=args.test_speakers,
        engines=args.engines,
        cross_engine=None if args.cross_engine == "none" else args.cross_engine,
    )
    if args.shards is not None:
        from lhotse import CutSet

        from manifests.shar import write_shar

        for split, paths in outputs.items():
            directory = Path(args.out_dir) / "shar" / split
            write_shar(CutSet.from_file(paths["cuts"]), directory, args.shards, num_jobs=args.num_jobs or 1)
            outputs[split] = {**paths, "shar": directory}
    _print_json(outputs)
    return 0


def run_librispeech(args: argparse.Namespace) -> int:
    """``prepare librispeech``: prepare a local LibriSpeech copy."""
    from manifests.librispeech import prepare_librispeech_local

    outputs = prepare_librispeech_local(
        args.corpus_dir, args.out_dir, dataset_parts=args.parts or "auto", num_jobs=args.num_jobs, shards=args.shards
    )
    _print_json(outputs)
    return 0


def run_librilight(args: argparse.Namespace) -> int:
    """``prepare librilight``: prepare the Libri-light limited-supervision subsets."""
    from manifests.librilight import prepare_librilight_limited

    outputs = prepare_librilight_limited(
        args.corpus_dir, args.out_dir, subsets=args.subsets or ("10h",), num_jobs=args.num_jobs
    )
    _print_json(outputs)
    return 0


def run_validate(args: argparse.Namespace) -> int:
    """``validate-manifest``: filter a NeMo manifest; exit status 1 if nothing is kept."""
    from manifests.validate import validate_manifest

    report = validate_manifest(
        args.manifest,
        out_path=args.out,
        sample_rate=args.sample_rate or None,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        check_content=args.content_check,
        num_jobs=args.num_jobs,
    )
    _print_json(
        {"out_path": report.out_path, "kept": report.kept, "skipped": len(report.skipped)}
    )
    return 0 if report.kept else 1


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _add_jobs(parser: argparse.ArgumentParser, default: int | None, help_default: str) -> None:
    """Add the ``-j/--num-jobs`` option."""
    parser.add_argument(
        "-j", "--num-jobs", type=_positive_int, default=default,
        help=f"parallel processes (default: {help_default})",
    )  # fmt: skip


def _add_shards(parser: argparse.ArgumentParser, what: str) -> None:
    """Add the ``--shards`` option (Lhotse Shar output, :mod:`manifests.shar`)."""
    parser.add_argument(
        "--shards", type=_positive_int, default=None, metavar="N",
        help=f"also write each {what} as about N Lhotse Shar shards (FLAC audio) in OUT_DIR/shar/<{what}>/, "
        "for sequential reads on shared storage (default: none)",
    )  # fmt: skip


def _add_prepare(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare {synthetic,librispeech,librilight}``."""
    prepare = subparsers.add_parser("prepare", help="prepare a corpus: cuts and NeMo manifests")
    corpora = prepare.add_subparsers(dest="corpus", required=True, metavar="CORPUS")

    synthetic = corpora.add_parser(
        "synthetic", help="multi-speaker English corpus synthesised with espeak-ng, flite and festival"
    )
    synthetic.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    synthetic.add_argument("--hours", type=float, default=3.0, help="audio to synthesise (3.0)")
    synthetic.add_argument("--seed", type=int, default=0, help="plan seed (0)")
    synthetic.add_argument(
        "--test-speakers", type=int, default=6, help="speakers held out for test (6)"
    )
    synthetic.add_argument(
        "--engines", nargs="+", default=["espeak-ng", "flite"], metavar="ENGINE",
        help="engines for train/dev/test (espeak-ng flite)",
    )  # fmt: skip
    synthetic.add_argument(
        "--cross-engine", default="festival", metavar="ENGINE",
        help="engine held out of training, says the test sentences as the cross split (festival; none: no split)",
    )  # fmt: skip
    _add_shards(synthetic, "split")
    _add_jobs(synthetic, None, "number of CPUs")
    synthetic.set_defaults(func=run_synthetic)

    libri = corpora.add_parser("librispeech", help="a local, extracted LibriSpeech copy")
    libri.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    libri.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    libri.add_argument(
        "-p", "--part", dest="parts", action="append", metavar="PART",
        help="part to prepare, e.g. dev-clean; repeatable (default: all found)",
    )  # fmt: skip
    _add_shards(libri, "part")
    _add_jobs(libri, 1, "1")
    libri.set_defaults(func=run_librispeech)

    light = corpora.add_parser(
        "librilight", help="a local, extracted Libri-light fine-tuning archive (10min/1h/10h)"
    )
    light.add_argument("corpus_dir", type=Path, metavar="CORPUS_DIR")
    light.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    light.add_argument(
        "-s", "--subset", dest="subsets", action="append", metavar="SUBSET",
        choices=("10min", "1h", "10h"),
        help="10min, 1h or 10h; repeatable (default: 10h)",
    )  # fmt: skip
    _add_jobs(light, 1, "1")
    light.set_defaults(func=run_librilight)


def _add_validate(subparsers: argparse._SubParsersAction) -> None:
    """Add ``validate-manifest``."""
    validate = subparsers.add_parser(
        "validate-manifest", help="check a NeMo manifest and keep its usable lines"
    )
    validate.add_argument("manifest", type=Path, metavar="MANIFEST")
    validate.add_argument(
        "--out", type=Path, default=None,
        help="output manifest (default: <stem>.checked.json beside MANIFEST)",
    )  # fmt: skip
    validate.add_argument(
        "--sample-rate", type=int, default=16000, help="required sample rate, 0: any (16000)"
    )
    validate.add_argument("--min-duration", type=float, default=0.0, help="seconds (0)")
    validate.add_argument("--max-duration", type=float, default=None, help="seconds (none)")
    validate.add_argument(
        "--no-content-check", dest="content_check", action="store_false",
        help="read headers only, do not decode the samples",
    )  # fmt: skip
    _add_jobs(validate, 1, "1")
    validate.set_defaults(func=run_validate)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` and ``validate-manifest`` commands to ``subparsers``."""
    _add_prepare(subparsers)
    _add_validate(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """Stand-alone parser with every command of this package."""
    parser = argparse.ArgumentParser(
        prog="python -m manifests", description="Prepare and validate speech corpora."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit status.

    Bad input (missing files, invalid values) is reported in one line, exit status 1.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (OSError, ValueError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
