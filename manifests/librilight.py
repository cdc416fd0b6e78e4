"""Prepare the Libri-light limited-supervision fine-tuning sets (already extracted).

The ``librispeech_finetuning`` archive holds LibriSpeech-style chapters::

    1h/0/{clean,other}/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + .trans.txt
    ...                 (1h/0 .. 1h/5: six 10-minute splits)
    9h/{clean,other}/<speaker>/<chapter>/...

and the standard subsets are ``10min`` (``1h/0``), ``1h`` (all of ``1h/``) and
``10h`` (``1h/`` and ``9h/``). lhotse's ``prepare_librilight`` covers only the
unlabelled small/medium/large sets, so recordings and supervisions are built
here from lhotse's own classes. Per subset this writes::

    ll<subset>_cuts.jsonl.gz   CutSet, one cut per utterance
    ll<subset>.json            NeMo manifest

with transcripts normalised to lowercase ``a-z``, apostrophes and spaces.
Subsets whose cuts and manifest already exist are skipped. Transcript lines
without audio, and audio files without a transcript line, are skipped and
counted in the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from lhotse.audio.utils import AudioLoadingError

from manifests import LOGGER_NAME
from manifests.io import write_cuts
from manifests.librispeech import output_paths
from manifests.nemo_manifest import cuts_to_nemo_manifest
from manifests.text import normalize_transcript

LOGGER = logging.getLogger(LOGGER_NAME)

#: Subset names, smallest first.
SUBSETS = ("10min", "1h", "10h")
#: Splits of ``1h/`` in the released archive.
ONE_HOUR_SPLITS = tuple(str(index) for index in range(6))
_ARCHIVE_NAME = "librispeech_finetuning"
_EXAMPLES_LOGGED = 5

# (utterance id, audio path, normalised transcript)
Utterance = tuple[str, Path, str]


def find_corpus_root(corpus_dir: Path) -> Path:
    """The directory holding ``1h/`` and ``9h/``: ``corpus_dir`` or its ``librispeech_finetuning/``.

    Raises :class:`FileNotFoundError` if ``corpus_dir`` does not exist.
    """
    if not corpus_dir.is_dir():
        raise FileNotFoundError(
            f"{corpus_dir}: Libri-light fine-tuning directory not found; expected the extracted "
            f"archive (a directory holding 1h/ and 9h/, or its parent holding {_ARCHIVE_NAME}/)"
        )
    nested = corpus_dir / _ARCHIVE_NAME
    if nested.is_dir() and not any((corpus_dir / name).is_dir() for name in ("1h", "9h")):
        return nested
    return corpus_dir


def output_name(subset: str) -> str:
    """Base name of the outputs of ``subset``: ``ll10h``, ``ll1h``, ``ll10min``."""
    return f"ll{subset}"


def _one_hour_splits(root: Path) -> list[str]:
    """The splits under ``1h/`` (``"1h/0"`` ...), in numeric order."""
    one_hour = root / "1h"
    if not one_hour.is_dir():
        raise FileNotFoundError(f"{root}: expected the directory 1h/, not found")
    found = sorted(
        (path.name for path in one_hour.iterdir() if path.is_dir() and path.name.isdigit()),
        key=int,
    )
    if not found:
        raise FileNotFoundError(f"{one_hour}: expected split directories 0..5, found none")
    if tuple(found) != ONE_HOUR_SPLITS:
        LOGGER.warning(
            "%s: expected splits %s, found %s; the 1h and 10h subsets use those found",
            one_hour, list(ONE_HOUR_SPLITS), found,
        )  # fmt: skip
    return [f"1h/{name}" for name in found]


def subset_splits(root: Path, subset: str) -> list[str]:
    """The split directories (relative to ``root``) that make up ``subset``.

    Raises :class:`ValueError` for an unknown subset and :class:`FileNotFoundError`
    naming a missing split directory.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset: expected one of {list(SUBSETS)}, got {subset!r}")
    if subset == "10min":
        splits = ["1h/0"]
    elif subset == "1h":
        splits = _one_hour_splits(root)
    else:
        splits = _one_hour_splits(root) + ["9h"]
    missing = [split for split in splits if not (root / split).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root}: expected split directories {missing}, not found")
    return splits


def _log_skipped(split: str, what: str, names: Sequence[str]) -> None:
    """Warn once about ``names`` skipped from ``split``, with a few examples."""
    if names:
        examples = ", ".join(names[:_EXAMPLES_LOGGED])
        LOGGER.warning("%s: skipped %d %s (e.g. %s)", split, len(names), what, examples)


def find_utterances(root: Path, split: str) -> list[Utterance]:
    """Pair every transcript line under ``root / split`` with its flac file.

    Transcripts are normalised with :func:`~manifests.text.normalize_transcript`.
    A line whose ``<utt-id>.flac`` is not beside its ``.trans.txt``, a line
    whose text normalises to nothing, and an audio file no line names are
    skipped and logged with counts. Sorted by utterance id.
    """
    split_dir = root / split
    audio = set(split_dir.rglob("*.flac"))
    named: set[Path] = set()
    utterances, no_audio, no_text = [], [], []
    for trans in sorted(split_dir.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt_id, _, raw = line.strip().partition(" ")
            if not utt_id:
                continue
            path = trans.parent / f"{utt_id}.flac"
            named.add(path)
            text = normalize_transcript(raw)
            if path not in audio:
                no_audio.append(utt_id)
            elif not text:
                no_text.append(utt_id)
            else:
                utterances.append((utt_id, path, text))
    orphans = sorted(path.stem for path in audio - named)
    _log_skipped(split, "transcript lines without audio", no_audio)
    _log_skipped(split, "transcript lines without text", no_text)
    _log_skipped(split, "audio files without a transcript line", orphans)
    return sorted(utterances)


def _read_recording(utterance: Utterance) -> Recording:
    """The lhotse Recording of one utterance; :class:`ValueError` if unreadable."""
    utt_id, path, _ = utterance
    try:
        return Recording.from_file(path.resolve(), recording_id=utt_id)
    except AudioLoadingError as exc:
        raise ValueError(f"{path}: expected a readable audio file: {exc}") from exc


def _supervision(utterance: Utterance, recording: Recording) -> SupervisionSegment:
    """One supervision spanning the whole recording."""
    utt_id, _, text = utterance
    return SupervisionSegment(
        id=utt_id,
        recording_id=utt_id,
        start=0.0,
        duration=recording.duration,
        channel=0,
        text=text,
        language="English",
        speaker=utt_id.split("-")[0],
    )


def build_cuts(utterances: Iterable[Utterance], subset: str, num_jobs: int = 1) -> CutSet:
    """CutSet with one cut per utterance, sorted by id.

    Raises :class:`ValueError` if an utterance id occurs twice or there are none.
    """
    seen: dict[str, Path] = {}
    utterances = list(utterances)
    for utt_id, path, _ in utterances:
        if utt_id in seen:
            raise ValueError(
                f"{subset}: expected unique utterance ids, {utt_id} is both "
                f"{seen[utt_id]} and {path}"
            )
        seen[utt_id] = path
    if not utterances:
        raise ValueError(f"{subset}: expected utterances with audio and transcript, found none")
    with ThreadPoolExecutor(num_jobs) as executor:
        recordings = list(executor.map(_read_recording, utterances))
    supervisions = [_supervision(u, r) for u, r in zip(utterances, recordings)]
    cuts = CutSet.from_manifests(
        recordings=RecordingSet.from_recordings(recordings),
        supervisions=SupervisionSet.from_segments(supervisions),
    )
    return CutSet.from_cuts(sorted(cuts, key=lambda cut: cut.id))  # independent of file order


def prepare_librilight_limited(
    corpus_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    subsets: str | Sequence[str] = ("10h",),
    num_jobs: int = 1,
) -> dict[str, dict[str, Path]]:
    """Prepare Libri-light limited-supervision subsets from ``corpus_dir`` into ``out_dir``.

    ``corpus_dir`` is the extracted ``librispeech_finetuning/`` directory or its
    parent; ``subsets`` holds names from :data:`SUBSETS`. Each split directory is
    read once however many subsets use it. Returns
    ``{subset: {"cuts": path, "manifest": path}}``.
    """
    if num_jobs < 1:
        raise ValueError(f"num_jobs: expected >= 1, got {num_jobs}")
    subsets = [subsets] if isinstance(subsets, str) else list(subsets)
    if not subsets:
        raise ValueError(f"subsets: expected at least one of {list(SUBSETS)}, got none")
    root = find_corpus_root(Path(corpus_dir))
    splits = {subset: subset_splits(root, subset) for subset in subsets}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, list[Utterance]] = {}  # per split, shared by the subsets
    outputs = {}
    for subset in subsets:
        paths = output_paths(out_dir, output_name(subset))
        if all(path.is_file() for path in paths.values()):
            LOGGER.info("%s: already prepared in %s, skipping", subset, out_dir)
            outputs[subset] = paths
            continue
        for split in splits[subset]:
            if split not in found:
                found[split] = find_utterances(root, split)
        utterances = [u for split in splits[subset] for u in found[split]]
        cuts = build_cuts(utterances, subset, num_jobs)
        write_cuts(cuts, paths["cuts"])
        cuts_to_nemo_manifest(cuts, paths["manifest"])
        hours = sum(cut.duration for cut in cuts) / 3600
        LOGGER.info(
            "%s: %d utterances, %.2f h -> %s", subset, len(cuts), hours, paths["manifest"]
        )
        outputs[subset] = paths
    return outputs
