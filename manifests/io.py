"""Atomic file writing: outputs are either complete or absent, never half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lhotse import CutSet


def temporary_sibling(path: Path) -> Path:
    """A per-process temporary name beside ``path`` that keeps its suffixes."""
    return path.with_name(f".tmp{os.getpid()}-{path.name}")


def write_text_atomic(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_cuts(cuts: CutSet, path: Path) -> Path:
    """Write a lhotse CutSet to ``path`` (format from its suffix) atomically."""
    tmp = temporary_sibling(path)
    try:
        cuts.to_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
