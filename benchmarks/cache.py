"""Keeping a benchmark run's result with the settings that made it, so that a re-run (or another process of the
same benchmark) reuses it: processes that share an output folder (seeds or objectives run side by side) compute
each run once, the others wait for it and take its result. :func:`kept_result` keeps a JSON result,
:func:`kept_file` a file a run writes (a model). Keys are the run's recipe path, overrides and inputs, not the recipes' contents:
after editing a recipe, give the benchmark a fresh ``--out``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from manifests.io import locked


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (a model a run starts from is part of its key: retrained, it is another input)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def kept_result(path: Path, settings: dict, work: Callable[[], Any]) -> Any:
    """``work()``'s result, computed once per ``settings``: kept in ``path`` (JSON) with them, and returned from
    there when a later call gives the same settings (JSON-equal). A lock file beside ``path`` serialises processes
    on the same run: a second process waits for the first and reuses its result instead of training the same
    model into the same folder."""
    settings = json.loads(json.dumps(settings))
    with locked(path):
        if path.is_file():
            kept = json.loads(path.read_text())
            if kept.get("settings") == settings:
                return kept["result"]
        result = json.loads(json.dumps(work()))  # the kept form (string keys)
        write_json_atomic(path, {"settings": settings, "result": result})
        return result


def kept_file(path: Path, settings: dict, make: Callable[[], Any]) -> Path:
    """``path``, a file (a trained model) that ``make()`` writes, made once per ``settings``: its settings and
    SHA-256 are kept in ``path`` + ``.json``, and a later call with the same settings reuses the file if it is
    still there unchanged; otherwise ``make()`` runs again. Same lock as :func:`kept_result`."""
    settings = json.loads(json.dumps(settings))
    meta = path.with_name(path.name + ".json")
    with locked(path):
        if meta.is_file() and path.is_file():
            kept = json.loads(meta.read_text())
            if kept.get("settings") == settings and kept.get("sha256") == file_digest(path):
                return path
        make()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run that makes it finished without writing it")
        write_json_atomic(meta, {"settings": settings, "sha256": file_digest(path)})
        return path


__all__ = ["file_digest", "kept_file", "kept_result", "write_json_atomic"]
