"""Convert lhotse CutSets to NeMo JSON-lines manifests."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lhotse import CutSet
from lhotse.cut import Cut

from manifests.io import temporary_sibling

from nemo_sew.errors import UserError

_DECIMALS = 6


def cut_audio_path(cut: Cut) -> str:
    """Absolute path of the single audio file behind ``cut``.

    Raises :class:`ValueError` naming the cut if it has no recording or its
    audio is not exactly one file (NeMo manifests can only point at files).
    """
    recording = getattr(cut, "recording", None)
    if recording is None:
        raise UserError(f"cut {cut.id}: expected a cut with a recording, found none")
    sources = recording.sources
    if len(sources) != 1 or sources[0].type != "file":
        kinds = [source.type for source in sources]
        raise UserError(
            f"cut {cut.id}: expected exactly one audio source of type 'file', got {kinds}"
        )
    return str(Path(sources[0].source).resolve())


def cut_text(cut: Cut) -> str:
    """The texts of ``cut``'s supervisions, joined by single spaces."""
    texts = (sup.text.strip() for sup in cut.supervisions if sup.text)
    return " ".join(text for text in texts if text)


def cut_to_entry(cut: Cut) -> dict[str, Any]:
    """One NeMo manifest entry for ``cut`` (``offset`` only when non-zero)."""
    entry: dict[str, Any] = {"audio_filepath": cut_audio_path(cut)}
    if cut.start:
        entry["offset"] = round(cut.start, _DECIMALS)
    entry["duration"] = round(cut.duration, _DECIMALS)
    entry["text"] = cut_text(cut)
    return entry


def cuts_to_nemo_manifest(cuts: CutSet, path: str | os.PathLike[str]) -> Path:
    """Write ``cuts`` as a NeMo manifest at ``path``, one JSON line per cut.

    Each line holds ``audio_filepath`` (absolute), ``offset`` (if non-zero),
    ``duration`` and ``text`` (supervision texts joined by spaces). The file
    is written through a temporary name and renamed, so it is either complete
    or absent. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    with open(tmp, "w", encoding="utf-8") as f:
        for cut in cuts:
            f.write(json.dumps(cut_to_entry(cut), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def read_nemo_manifest(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a NeMo manifest; raise :class:`ValueError` naming file and line if malformed."""
    path = Path(path)
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_no}: expected a JSON object, got {line!r}") from exc
    return entries
