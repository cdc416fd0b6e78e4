"""Atomic file writing: outputs are either complete or absent, never half-written; and a lock for files that
processes side by side make once and share."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from lhotse import CutSet


def temporary_sibling(path: Path) -> Path:
    """A per-process temporary name beside ``path`` that keeps its suffixes."""
    return path.with_name(f".tmp{os.getpid()}-{path.name}")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` + ``.lock`` (released by the kernel if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
