"""Write a lhotse CutSet as Lhotse Shar shards: sequential reads for large corpora.

A Shar directory holds, per shard ``NNNNNN``::

    cuts.NNNNNN.jsonl.gz     the shard's cuts (metadata, supervisions; audio replaced by placeholders)
    recording.NNNNNN.tar     their audio, one FLAC file (and a small JSON manifest) per cut, in cut order

so a data-loader worker reads a few large files front to back instead of one small audio file per
utterance. NeMo's lhotse data loader reads the directory with ``shar_path`` (an ``input_cfg`` entry
``{type: lhotse_shar, shar_path: DIR}``), as an iterable dataset whose every worker reads the shards
in its own shuffled order.

The cuts are shuffled before they are split (``shuffle_seed``, fixed by default): a loader reads a shard
front to back, and a prepared corpus is sorted by id (LibriSpeech: speaker, chapter), so unshuffled shards
would each hold a handful of speakers. Shuffling at write time makes every shard a sample of the corpus.

Writing goes through a temporary sibling directory that is renamed into place, so a Shar directory is
either complete or absent; a directory that already holds the same cuts (ids and order) in the same
number of shards is kept as it is. Nothing else may live in a Shar directory: lhotse treats every file
in it as a field (``CutSet.from_shar(in_dir=...)``).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

from lhotse import CutSet

from manifests import LOGGER_NAME

LOGGER = logging.getLogger(LOGGER_NAME)

#: How the audio is stored in the shards (lossless; exact for 16-bit sources such as LibriSpeech).
AUDIO_FORMAT = "flac"
#: The fields written: the cuts themselves and their audio.
FIELDS = ("cuts", "recording")
_SHARD_NAME = re.compile(r"^(cuts|recording)\.(\d{6})\.(jsonl\.gz|tar)$")


def shard_size_for(num_cuts: int, shards: int) -> int:
    """Cuts per shard that split ``num_cuts`` cuts into ``shards`` shards.

    lhotse fills every shard but the last to the same size, so the split gives exactly ``shards``
    shards when ``num_cuts`` is large against ``shards`` (at least about ``shards**2`` cuts), else a
    few fewer, the last one smaller. Raises :class:`ValueError` unless both are >= 1.
    """
    if shards < 1:
        raise ValueError(f"shards: expected >= 1, got {shards}")
    if num_cuts < 1:
        raise ValueError(f"expected at least one cut to shard, got {num_cuts}")
    return -(-num_cuts // shards)


def num_shards(num_cuts: int, shards: int) -> int:
    """How many shards :func:`write_shar` makes of ``num_cuts`` cuts when asked for ``shards``."""
    return -(-num_cuts // shard_size_for(num_cuts, shards))


def shar_paths(shar_dir: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """The shards in ``shar_dir`` per field, sorted: ``{"cuts": [...], "recording": [...]}``.

    Raises :class:`ValueError` naming the directory if it holds files that are not shards of these
    fields, or if the fields' shards do not pair up (lhotse could not read it).
    """
    shar_dir = Path(shar_dir)
    paths: dict[str, list[Path]] = {field: [] for field in FIELDS}
    numbers: dict[str, list[str]] = {field: [] for field in FIELDS}
    others = []
    for path in sorted(shar_dir.iterdir()):
        match = _SHARD_NAME.match(path.name)
        if match is None or (match.group(1) == "cuts") != (match.group(3) == "jsonl.gz"):
            others.append(path.name)
            continue
        paths[match.group(1)].append(path)
        numbers[match.group(1)].append(match.group(2))
    if others:
        raise ValueError(f"{shar_dir}: expected only Shar shards ({', '.join(FIELDS)}), found also {others[:5]}")
    if numbers["cuts"] != numbers["recording"]:
        raise ValueError(
            f"{shar_dir}: expected a recording shard for every cuts shard, got {len(paths['cuts'])} cuts and "
            f"{len(paths['recording'])} recording shards"
        )
    return paths


def shar_cut_ids(shar_dir: str | os.PathLike[str]) -> list[str]:
    """The ids of the cuts in ``shar_dir``, in shard order (reads the cuts shards only, not the audio)."""
    ids = []
    for path in shar_paths(shar_dir)["cuts"]:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids.extend(json.loads(line)["id"] for line in f if line.strip())
    return ids


def _scan(cuts: CutSet) -> list[str]:
    """The cut ids of ``cuts`` in order; raises :class:`ValueError` on a cut without audio or a repeated id."""
    ids, seen = [], set()
    for cut in cuts:
        if not cut.has_recording:
            raise ValueError(f"cut {cut.id}: expected a cut with a recording to shard, found none")
        if cut.id in seen:
            raise ValueError(f"cut {cut.id}: expected unique cut ids, found it twice")
        seen.add(cut.id)
        ids.append(cut.id)
    if not ids:
        raise ValueError("expected at least one cut to shard, got an empty CutSet")
    return ids


def _is_up_to_date(out_dir: Path, ids: list[str], expected_shards: int) -> bool:
    """Whether ``out_dir`` already holds exactly ``ids`` (in order) in ``expected_shards`` shards."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir}: expected a directory of Shar shards (or nothing), found a file")
    paths = shar_paths(out_dir)  # raises if the directory holds anything else: never replaced
    return len(paths["cuts"]) == expected_shards and shar_cut_ids(out_dir) == ids


def write_shar(
    cuts: CutSet,
    out_dir: str | os.PathLike[str],
    shards: int,
    num_jobs: int = 1,
    shuffle_seed: int | None = 0,
) -> dict[str, list[Path]]:
    """Write ``cuts`` as about ``shards`` Lhotse Shar shards in ``out_dir``, the audio as FLAC.

    ``cuts`` is any CutSet whose cuts have recordings. With ``shuffle_seed`` (default 0) the cuts are
    first shuffled with ``random.Random(shuffle_seed)`` (the CutSet is loaded into memory; metadata only);
    ``None`` keeps their order (a lazy CutSet then stays lazy and is iterated twice). Each cut's audio is
    read (``cut.load_audio()``, so trimmed cuts keep only their span) and stored in the shards: the shards
    need none of the original files. The shard size is :func:`shard_size_for`; ``num_jobs`` > 1 writes
    shards in parallel processes.

    If ``out_dir`` already holds the same cut ids in the same order in the same number of shards it is
    kept; if it holds other shards it is replaced (only ever a directory of Shar shards, see
    :func:`shar_paths`). Returns ``{"cuts": [paths], "recording": [paths]}``, shard order.
    Raises :class:`ValueError` for ``shards`` or ``num_jobs`` < 1, an empty CutSet, a cut without
    audio, or repeated cut ids.
    """
    if shards < 1:
        raise ValueError(f"shards: expected >= 1, got {shards}")
    if num_jobs < 1:
        raise ValueError(f"num_jobs: expected >= 1, got {num_jobs}")
    out_dir = Path(out_dir)
    if shuffle_seed is not None:
        cuts = cuts.to_eager().shuffle(rng=random.Random(shuffle_seed))
    ids = _scan(cuts)
    shard_size = shard_size_for(len(ids), shards)
    expected = num_shards(len(ids), shards)
    if _is_up_to_date(out_dir, ids, expected):
        LOGGER.info("%s: %d cuts in %d shards already written, skipping", out_dir, len(ids), expected)
        return shar_paths(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".tmp{os.getpid()}-{out_dir.name}")
    old = out_dir.with_name(f".old{os.getpid()}-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        cuts.to_shar(tmp, fields={"recording": AUDIO_FORMAT}, shard_size=shard_size, num_jobs=num_jobs)
        if out_dir.exists():  # stale shards (other cuts or another shard count): replace them
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    paths = shar_paths(out_dir)
    LOGGER.info("%s: %d cuts in %d shards of up to %d", out_dir, len(ids), len(paths["cuts"]), shard_size)
    return paths
