"""Validate a NeMo JSON-lines manifest and keep only its usable lines.

Each line of a NeMo manifest is a JSON object with ``audio_filepath``,
``duration`` (seconds) and ``text``, and optionally ``offset`` (seconds).
Relative audio paths are resolved against the manifest's directory, as NeMo
does. Every unusable line is skipped with a warning on the
``nemo_sew.manifests`` logger that names the line number, the file and the
reason; usable lines are copied unchanged to the output manifest.

Results are cached in a sidecar report (``<out stem>.report.json``) keyed by
the manifest's path, size and modification time and by the options, so
validating an unchanged manifest again only reads that report. Changes to
the audio files alone are not noticed: pass ``use_cache=False`` after them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from manifests import LOGGER_NAME
from manifests.audio import AudioError, check_audio_header, load_audio
from manifests.io import temporary_sibling, write_text_atomic

from nemo_sew.errors import UserError

LOGGER = logging.getLogger(LOGGER_NAME)

REQUIRED_KEYS = ("audio_filepath", "duration", "text")
#: How far ``offset + duration`` may run past the end of the audio (seconds).
DURATION_TOLERANCE_S = 0.1
_CACHE_VERSION = 1
_CHUNK_SIZE = 32


class Skip(NamedTuple):
    """One skipped manifest line: its number (1-based), file and the reason."""

    line_no: int
    path: str
    reason: str


@dataclass
class ValidationReport:
    """Outcome of :func:`validate_manifest`.

    ``skipped`` holds ``(line_no, path, reason)`` tuples, where ``path`` is the
    audio file when the line names one and the manifest otherwise.
    """

    manifest: Path
    out_path: Path
    kept: int
    skipped: list[Skip] = field(default_factory=list)
    from_cache: bool = False

    def raise_if_empty(self) -> None:
        """Raise :class:`ValueError` naming the manifest if no line was kept."""
        if self.kept == 0:
            reasons = Counter(skip.reason.split(":")[0] for skip in self.skipped)
            raise UserError(
                f"{self.manifest}: expected at least one usable line, found none "
                f"({len(self.skipped)} skipped: {dict(reasons)})"
            )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (paths as strings)."""
        return {
            "manifest": str(self.manifest),
            "out_path": str(self.out_path),
            "kept": self.kept,
            "skipped": [list(skip) for skip in self.skipped],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], from_cache: bool = False) -> ValidationReport:
        """Inverse of :meth:`to_json`."""
        return cls(
            manifest=Path(data["manifest"]),
            out_path=Path(data["out_path"]),
            kept=int(data["kept"]),
            skipped=[Skip(int(n), str(p), str(r)) for n, p, r in data["skipped"]],
            from_cache=from_cache,
        )


@dataclass(frozen=True)
class CheckOptions:
    """What a manifest line must satisfy (see :func:`validate_manifest`)."""

    manifest_dir: Path
    sample_rate: int | None = 16000
    min_duration: float = 0.0
    max_duration: float | None = None
    check_content: bool = True


class LineResult(NamedTuple):
    """Result of checking one line: ``reason`` is None for a usable line."""

    line_no: int
    line: str
    audio_path: str
    reason: str | None


class LineError(ValueError):
    """A manifest line is unusable; ``audio_path`` is set once known."""

    def __init__(self, reason: str, audio_path: str = "") -> None:
        """Record why the line is unusable and, if known, its audio file."""
        super().__init__(reason)
        self.reason = reason
        self.audio_path = audio_path


def resolve_audio_path(audio_filepath: str, manifest_dir: Path) -> Path:
    """Resolve a manifest's ``audio_filepath`` against the manifest's directory."""
    path = Path(audio_filepath).expanduser()
    return path if path.is_absolute() else manifest_dir / path


def parse_line(line: str) -> dict[str, Any]:
    """Parse one manifest line into an entry, raising :class:`LineError` if malformed."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as exc:
        raise LineError(f"malformed JSON ({exc})") from exc
    if not isinstance(entry, dict):
        raise LineError(f"malformed entry: expected a JSON object, got {type(entry).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise LineError(f"missing key(s) {missing}: expected all of {list(REQUIRED_KEYS)}")
    return entry


def _number(entry: dict[str, Any], key: str, default: float | None = None) -> float:
    """Return ``entry[key]`` as a finite, non-negative float or raise :class:`LineError`."""
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LineError(f"invalid {key}: expected a finite number, got {value!r}")
    if value < 0:
        raise LineError(f"invalid {key}: expected >= 0, got {value!r}")
    return float(value)


def check_fields(entry: dict[str, Any]) -> tuple[str, float, float]:
    """Check the field types; return ``(audio_filepath, offset, duration)``."""
    audio_filepath = entry["audio_filepath"]
    if not isinstance(audio_filepath, str) or not audio_filepath:
        raise LineError(
            f"invalid audio_filepath: expected a non-empty string, got {audio_filepath!r}"
        )
    if not isinstance(entry["text"], str):
        raise LineError(
            f"invalid text: expected a string, got {entry['text']!r}", audio_path=audio_filepath
        )
    try:
        return audio_filepath, _number(entry, "offset", 0.0), _number(entry, "duration")
    except LineError as exc:
        raise LineError(exc.reason, audio_path=audio_filepath) from exc


def check_duration(duration: float, options: CheckOptions) -> None:
    """Raise :class:`LineError` if ``duration`` is outside the allowed range."""
    if duration < options.min_duration:
        raise LineError(
            f"too short: duration {duration:g} s is shorter than min_duration "
            f"{options.min_duration:g} s"
        )
    if options.max_duration is not None and duration > options.max_duration:
        raise LineError(
            f"too long: duration {duration:g} s is longer than max_duration "
            f"{options.max_duration:g} s"
        )


def check_audio(path: Path, offset: float, duration: float, options: CheckOptions) -> None:
    """Check the audio file behind a line (header always, samples if asked).

    Raises :class:`~manifests.audio.AudioError` or :class:`LineError`.
    """
    info = check_audio_header(path, expected_sample_rate=options.sample_rate)
    if offset + duration > info.duration + DURATION_TOLERANCE_S:
        raise LineError(
            f"offset + duration ({offset + duration:g} s) exceeds the audio length "
            f"({info.duration:g} s)"
        )
    if options.check_content:
        load_audio(path, expected_sample_rate=options.sample_rate)


def check_entry(entry: dict[str, Any], options: CheckOptions) -> None:
    """Check one parsed manifest entry; raise :class:`LineError` if unusable."""
    audio_filepath, offset, duration = check_fields(entry)
    path = resolve_audio_path(audio_filepath, options.manifest_dir)
    try:
        check_duration(duration, options)
        check_audio(path, offset, duration, options)
    except AudioError as exc:
        raise LineError(exc.reason, audio_path=str(path)) from exc
    except LineError as exc:
        raise LineError(exc.reason, audio_path=str(path)) from exc


def check_line(item: tuple[int, bytes], options: CheckOptions) -> LineResult:
    """Check one raw manifest line ``(line_no, bytes)``; never raises for bad data."""
    line_no, raw = item
    try:
        line = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        return LineResult(line_no, "", "", f"malformed line: not valid UTF-8 ({exc})")
    try:
        check_entry(parse_line(line), options)
    except LineError as exc:
        return LineResult(line_no, line, exc.audio_path, exc.reason)
    return LineResult(line_no, line, "", None)


def _read_lines(manifest: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_no, raw_line)`` for the non-blank lines of ``manifest``."""
    with open(manifest, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                yield line_no, raw


def _check_all(
    lines: Iterable[tuple[int, bytes]], options: CheckOptions, num_jobs: int
) -> Iterator[LineResult]:
    """Check ``lines`` in order, in ``num_jobs`` processes when more than one."""
    worker = functools.partial(check_line, options=options)
    if num_jobs <= 1:
        yield from map(worker, lines)
        return
    with multiprocessing.Pool(num_jobs) as pool:
        yield from pool.imap(worker, lines, chunksize=_CHUNK_SIZE)


def _dir_is_writable(directory: Path) -> bool:
    """True if new files can be created in ``directory``."""
    return directory.is_dir() and os.access(directory, os.W_OK | os.X_OK)


def _fallback_dir() -> Path:
    """Per-user directory under the system temp dir for outputs that cannot go elsewhere."""
    directory = Path(tempfile.gettempdir()) / f"nemo_sew_manifests_{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def default_out_path(manifest: Path) -> Path:
    """``<stem>.checked.json`` beside the manifest, or in a temp dir if that is read-only."""
    name = f"{manifest.stem}.checked.json"
    if _dir_is_writable(manifest.parent):
        return manifest.with_name(name)
    digest = hashlib.sha1(str(manifest.resolve()).encode()).hexdigest()[:10]
    out_path = _fallback_dir() / f"{manifest.stem}-{digest}.checked.json"
    LOGGER.warning(
        "%s: directory is not writable, writing the checked manifest to %s", manifest, out_path
    )
    return out_path


def report_path(out_path: Path) -> Path:
    """Sidecar report / cache file that belongs to an output manifest."""
    return out_path.with_name(f"{out_path.stem}.report.json")


def _cache_key(manifest: Path, out_path: Path, options: CheckOptions) -> dict[str, Any]:
    """Everything that determines the validation result, as a JSON-able dict."""
    stat = manifest.stat()
    opts = asdict(options)
    opts["manifest_dir"] = str(options.manifest_dir)
    return {
        "version": _CACHE_VERSION,
        "manifest": str(manifest.resolve()),
        "manifest_size": stat.st_size,
        "manifest_mtime_ns": stat.st_mtime_ns,
        "out_path": str(out_path.resolve()),
        "options": opts,
    }


def _out_stamp(out_path: Path) -> list[int]:
    """Size and modification time of the output manifest."""
    stat = out_path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def load_cached_report(key: dict[str, Any], out_path: Path) -> ValidationReport | None:
    """Return the cached report for ``key`` if it and the output are still current."""
    sidecar = report_path(out_path)
    try:
        cached = json.loads(sidecar.read_text())
        if cached.get("key") != key or cached.get("out_stamp") != _out_stamp(out_path):
            return None
        return ValidationReport.from_json(cached["report"], from_cache=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None



def save_report(key: dict[str, Any], report: ValidationReport) -> None:
    """Store ``report`` in the sidecar file of its output manifest."""
    data = {"key": key, "out_stamp": _out_stamp(report.out_path), "report": report.to_json()}
    write_text_atomic(report_path(report.out_path), json.dumps(data, indent=1) + "\n")


def _relocated(line: str, manifest_dir: Path) -> str:
    """Return ``line`` with a relative ``audio_filepath`` made absolute."""
    entry = json.loads(line)
    path = Path(entry["audio_filepath"]).expanduser()
    if path.is_absolute():
        return line
    entry["audio_filepath"] = str((manifest_dir / path).resolve())
    return json.dumps(entry, ensure_ascii=False)


def _log_skip(manifest: Path, skip: Skip) -> None:
    """Log one skipped line."""
    LOGGER.warning("%s:%d: skipping %s: %s", manifest, skip.line_no, skip.path, skip.reason)


def _to_skip(manifest: Path, result: LineResult) -> Skip:
    """The :class:`Skip` for an unusable line; the path falls back to the manifest."""
    return Skip(result.line_no, result.audio_path or str(manifest), result.reason or "")


def _run_validation(
    manifest: Path, out_path: Path, options: CheckOptions, num_jobs: int
) -> ValidationReport:
    """Check every line and write the usable ones to ``out_path``."""
    relocate = out_path.parent.resolve() != options.manifest_dir.resolve()
    report = ValidationReport(manifest=manifest, out_path=out_path, kept=0)
    tmp = temporary_sibling(out_path)
    with open(tmp, "w", encoding="utf-8") as out:
        for result in _check_all(_read_lines(manifest), options, num_jobs):
            if result.reason is not None:
                skip = _to_skip(manifest, result)
                _log_skip(manifest, skip)
                report.skipped.append(skip)
                continue
            line = _relocated(result.line, options.manifest_dir) if relocate else result.line
            out.write(line + "\n")
            report.kept += 1
    os.replace(tmp, out_path)
    return report


def _log_summary(report: ValidationReport) -> None:
    """Log how many lines were kept and why the others were skipped."""
    reasons = Counter(skip.reason.split(":")[0].split(" (")[0] for skip in report.skipped)
    LOGGER.info(
        "%s: kept %d line(s), skipped %d%s -> %s%s",
        report.manifest,
        report.kept,
        len(report.skipped),
        f" {dict(reasons)}" if reasons else "",
        report.out_path,
        " (cached)" if report.from_cache else "",
    )


def _check_arguments(
    manifest: Path, out_path: Path, min_duration: float, max_duration: float | None, num_jobs: int
) -> None:
    """Raise for arguments that cannot work."""
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: manifest not found")
    if out_path.resolve() == manifest.resolve():
        raise UserError(f"{manifest}: out_path must differ from the manifest, got the same file")
    if min_duration < 0:
        raise UserError(f"min_duration: expected >= 0, got {min_duration}")
    if max_duration is not None and max_duration < min_duration:
        raise UserError(
            f"max_duration: expected >= min_duration ({min_duration}), got {max_duration}"
        )
    if num_jobs < 1:
        raise UserError(f"num_jobs: expected >= 1, got {num_jobs}")


def validate_manifest(
    path: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    sample_rate: int | None = 16000,
    min_duration: float = 0.0,
    max_duration: float | None = None,
    check_content: bool = True,
    num_jobs: int = 1,
    use_cache: bool = True,
) -> ValidationReport:
    """Validate the NeMo manifest at ``path`` and write its usable lines to ``out_path``.

    A line is skipped (with a logged warning naming line, file and reason) if
    it is malformed JSON, lacks ``audio_filepath``/``duration``/``text``, has
    invalid field values, its audio is missing, unreadable, corrupt, empty,
    truncated, not mono, not at ``sample_rate`` Hz (None: any rate), shorter
    than its ``offset + duration``, or its ``duration`` is below
    ``min_duration`` or above ``max_duration``. With ``check_content`` every
    sample is decoded and must be finite; otherwise only headers are read.

    ``out_path`` defaults to ``<stem>.checked.json`` beside the manifest (a
    per-user temp dir if that directory is not writable). Kept lines are
    written unchanged, except that relative audio paths are made absolute when
    the output lives in another directory. ``num_jobs`` > 1 checks lines in
    that many processes. An unchanged manifest validated again with the same
    options returns the cached report (``from_cache=True``) and logs its
    skips again.
    """
    manifest = Path(path)
    out = Path(out_path) if out_path is not None else default_out_path(manifest)
    _check_arguments(manifest, out, min_duration, max_duration, num_jobs)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = CheckOptions(
        manifest_dir=manifest.parent.resolve(),
        sample_rate=sample_rate,
        min_duration=float(min_duration),
        max_duration=None if max_duration is None else float(max_duration),
        check_content=check_content,
    )
    key = _cache_key(manifest, out, options)
    report = load_cached_report(key, out) if use_cache else None
    if report is None:
        report = _run_validation(manifest, out, options, num_jobs)
        save_report(key, report)
    else:
        for skip in report.skipped:
            _log_skip(manifest, skip)
    _log_summary(report)
    return report
