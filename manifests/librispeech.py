"""Prepare a local (already downloaded and extracted) LibriSpeech copy.

Uses lhotse's LibriSpeech recipe, then writes per part::

    librispeech_{recordings,supervisions}_<part>.jsonl.gz   lhotse recipe output
    <part>_cuts.jsonl.gz                                    CutSet, one cut per utterance
    <part>.json                                             NeMo manifest
    shar/<part>/{cuts,recording}.NNNNNN.*                   with ``shards``: Lhotse Shar shards (audio as FLAC)

with transcripts normalised to lowercase ``a-z``, apostrophes and spaces.
Parts whose cuts and manifest already exist are skipped (their shards are written from the existing cuts
if missing or stale, see :func:`manifests.shar.write_shar`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lhotse import CutSet
from lhotse.recipes import prepare_librispeech
from lhotse.recipes.librispeech import LIBRISPEECH, MINI_LIBRISPEECH

from manifests import LOGGER_NAME
from manifests.io import write_cuts
from manifests.nemo_manifest import cuts_to_nemo_manifest
from manifests.text import normalize_transcript

LOGGER = logging.getLogger(LOGGER_NAME)

KNOWN_PARTS = tuple(LIBRISPEECH) + tuple(MINI_LIBRISPEECH)


def find_corpus_root(corpus_dir: Path) -> Path:
    """The directory holding the parts (``dev-clean/`` ...): ``corpus_dir`` or its ``LibriSpeech/``.

    Raises :class:`FileNotFoundError` if ``corpus_dir`` does not exist.
    """
    if not corpus_dir.is_dir():
        raise FileNotFoundError(
            f"{corpus_dir}: LibriSpeech directory not found; expected the extracted corpus "
            "(a directory with parts such as dev-clean/, or its parent holding LibriSpeech/)"
        )
    nested = corpus_dir / "LibriSpeech"
    if nested.is_dir() and not any((corpus_dir / part).is_dir() for part in KNOWN_PARTS):
        return nested
    return corpus_dir


def resolve_parts(root: Path, dataset_parts: str | Sequence[str]) -> list[str]:
    """The parts to prepare; ``"auto"`` means every known part present under ``root``.

    Raises :class:`FileNotFoundError` naming missing parts, or if none is found.
    """
    if dataset_parts == "auto":
        parts = [part for part in KNOWN_PARTS if (root / part).is_dir()]
        if not parts:
            raise FileNotFoundError(
                f"{root}: expected at least one LibriSpeech part directory "
                f"({', '.join(KNOWN_PARTS)}), found none"
            )
        return parts
    parts = [dataset_parts] if isinstance(dataset_parts, str) else list(dataset_parts)
    missing = [part for part in parts if not (root / part).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: expected part directories {missing}, not found")
    return parts


def output_paths(out_dir: Path, part: str) -> dict[str, Path]:
    """Where the cuts and the NeMo manifest of ``part`` go."""
    return {"cuts": out_dir / f"{part}_cuts.jsonl.gz", "manifest": out_dir / f"{part}.json"}


def shar_dir(out_dir: Path, part: str) -> Path:
    """Where the Lhotse Shar shards of ``part`` go (a directory of shards only: the recipes' ``shar_path``)."""
    return out_dir / "shar" / part


def _one_supervision_per_cut(cuts: CutSet) -> CutSet:
    """Trim cuts to their supervisions unless each already spans exactly one."""
    if all(
        len(cut.supervisions) == 1
        and cut.supervisions[0].start == 0
        and abs(cut.supervisions[0].duration - cut.duration) < 1e-3
        for cut in cuts
    ):
        return cuts
    return cuts.trim_to_supervisions(keep_overlapping=False)


def build_cuts(manifests: Mapping[str, Any], part: str) -> CutSet:
    """CutSet of one part from the recipe's recordings and supervisions, text normalised.

    Cuts are sorted by id, so the outputs do not depend on directory order.
    """
    supervisions = manifests["supervisions"].transform_text(normalize_transcript)
    cuts = CutSet.from_manifests(recordings=manifests["recordings"], supervisions=supervisions)
    cuts = _one_supervision_per_cut(cuts)
    cuts = CutSet.from_cuts(sorted(cuts, key=lambda cut: cut.id))  # independent of file order
    if len(cuts) == 0:
        raise ValueError(f"{part}: expected utterances, the recipe found none")
    return cuts


def prepare_part(root: Path, out_dir: Path, part: str, num_jobs: int) -> dict[str, Path]:
    """Run the lhotse recipe for one part and write its cuts and NeMo manifest."""
    paths = output_paths(out_dir, part)
    manifests = prepare_librispeech(
        root, output_dir=out_dir, dataset_parts=[part], normalize_text="lower", num_jobs=num_jobs
    )
    if part not in manifests:
        raise ValueError(
            f"{root / part}: expected the lhotse recipe to return {part!r}, it did not"
        )
    cuts = build_cuts(manifests[part], part)
    write_cuts(cuts, paths["cuts"])
    cuts_to_nemo_manifest(cuts, paths["manifest"])
    LOGGER.info("%s: %d utterances -> %s", part, len(cuts), paths["manifest"])
    return paths


def prepare_librispeech_local(
    corpus_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dataset_parts: str | Sequence[str] = "auto",
    num_jobs: int = 1,
    shards: int | None = None,
) -> dict[str, dict[str, Path]]:
    """Prepare the LibriSpeech parts found in ``corpus_dir`` into ``out_dir``.

    ``corpus_dir`` is the extracted ``LibriSpeech/`` directory or its parent.
    ``dataset_parts`` is ``"auto"`` (all parts present) or part names such as
    ``"dev-clean"``. ``shards`` (None: none) also writes each part as about that many
    Lhotse Shar shards in ``out_dir/shar/<part>/`` (:func:`manifests.shar.write_shar`,
    ``num_jobs`` processes). Returns ``{part: {"cuts": path, "manifest": path}}``, with
    ``"shar": directory`` added when ``shards`` is set.
    """
    if num_jobs < 1:
        raise ValueError(f"num_jobs: expected >= 1, got {num_jobs}")
    if shards is not None and shards < 1:
        raise ValueError(f"shards: expected >= 1, got {shards}")
    root = find_corpus_root(Path(corpus_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {}
    for part in resolve_parts(root, dataset_parts):
        paths = output_paths(out_dir, part)
        if all(path.is_file() for path in paths.values()):
            LOGGER.info("%s: already prepared in %s, skipping", part, out_dir)
            outputs[part] = paths
        else:
            outputs[part] = prepare_part(root, out_dir, part, num_jobs)
        if shards is not None:
            outputs[part] = {**outputs[part], "shar": write_part_shar(out_dir, part, shards, num_jobs)}
    return outputs


def write_part_shar(out_dir: Path, part: str, shards: int, num_jobs: int = 1) -> Path:
    """Write the prepared cuts of ``part`` as Lhotse Shar shards (kept if up to date); returns their directory."""
    from manifests.shar import write_shar

    cuts = CutSet.from_file(output_paths(out_dir, part)["cuts"])
    directory = shar_dir(out_dir, part)
    write_shar(cuts, directory, shards, num_jobs=num_jobs)
    return directory
