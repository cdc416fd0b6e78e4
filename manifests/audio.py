"""Strict audio loading: every way an audio file can be unusable is an error.

:func:`audio_info` checks what the header says (cheap); :func:`load_audio`
also decodes the samples and checks them. Both raise :class:`AudioError`
(a :class:`ValueError`) whose message names the file.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

# WAV data-chunk sizes that streaming writers put in the header when they do
# not know the final length; such files are not truncated, just unsized.
_WAV_STREAMING_SIZES = frozenset({0, 0x7FFFFFFF, 0xFFFFFFFF})


class AudioError(ValueError):
    """An audio file is missing, unreadable or does not meet the requirements.

    The message is ``"<path>: <reason>"``; both parts are also attributes.
    """

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        """Record the offending file and what is wrong with it."""
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[Path, str]]:
        """Pickle with both constructor arguments (for multiprocessing)."""
        return type(self), (self.path, self.reason)


class AudioFileNotFoundError(AudioError, FileNotFoundError):
    """The audio file does not exist (also a :class:`FileNotFoundError`)."""


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header says about it."""

    path: Path
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _check_exists(path: Path) -> None:
    """Raise if ``path`` is not an existing, non-empty regular file."""
    if not path.exists():
        raise AudioFileNotFoundError(path, "audio file not found")
    if not path.is_file():
        raise AudioError(path, "expected an audio file, found a directory or special file")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes), expected audio")


def _wav_data_chunk(path: Path) -> tuple[int, int] | None:
    """Return ``(offset, declared_size)`` of a RIFF/WAVE file's ``data`` chunk.

    Returns None for files that are not RIFF/WAVE or whose chunk list ends
    before a ``data`` chunk (libsndfile reports those itself).
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                return f.tell(), size
            f.seek(size + (size & 1), os.SEEK_CUR)


def _check_not_truncated(path: Path) -> None:
    """Raise if a WAV header promises more sample bytes than the file holds."""
    chunk = _wav_data_chunk(path)
    if chunk is None:
        return
    offset, declared = chunk
    if declared in _WAV_STREAMING_SIZES:
        return
    available = path.stat().st_size - offset
    if available < declared:
        raise AudioError(
            path,
            f"truncated WAV file: header declares {declared} bytes of samples, "
            f"file holds {available}"
        )


def _read_header(path: Path) -> AudioInfo:
    """Return libsndfile's view of ``path``'s header; failures become :class:`AudioError`."""
    try:
        header = sf.info(str(path))
    except (RuntimeError, TypeError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        raise AudioError(path, f"unreadable or not an audio file ({exc})") from exc
    return AudioInfo(
        path=path, sample_rate=header.samplerate, channels=header.channels, frames=header.frames
    )


def _check_format(
    info: AudioInfo, expected_sample_rate: int | None, expected_channels: int | None
) -> None:
    """Raise if the header's sample rate, channel count or length are unacceptable."""
    if info.frames <= 0:
        raise AudioError(info.path, "empty audio (0 samples)")
    if expected_sample_rate is not None and info.sample_rate != expected_sample_rate:
        raise AudioError(
            info.path,
            f"wrong sample rate: expected {expected_sample_rate} Hz, "
            f"got {info.sample_rate} Hz"
        )
    if expected_channels is not None and info.channels != expected_channels:
        raise AudioError(
            info.path,
            f"wrong number of channels: expected {expected_channels} (mono), "
            f"got {info.channels}"
        )


def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Read only the header of an audio file.

    Raises :class:`AudioError` (naming the file) if it is missing, empty,
    not audio, a truncated WAV, or has 0 samples. Sample rate and channel
    count are reported, not checked (see :func:`check_audio_header`).
    """
    path = Path(path)
    _check_exists(path)
    _check_not_truncated(path)
    info = _read_header(path)
    _check_format(info, expected_sample_rate=None, expected_channels=None)
    return info


def check_audio_header(
    path: str | os.PathLike[str], expected_sample_rate: int | None = 16000
) -> AudioInfo:
    """Like :func:`audio_info`, and also require mono and (if given) the sample rate."""
    info = audio_info(path)
    _check_format(info, expected_sample_rate=expected_sample_rate, expected_channels=1)
    return info


def _decode(path: Path) -> np.ndarray:
    """Decode every sample of ``path`` as float32 with shape (frames, channels)."""
    try:
        samples, _ = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as exc:
        raise AudioError(path, f"corrupt audio, decoding failed ({exc})") from exc
    return samples


def _check_samples(path: Path, samples: np.ndarray, expected_frames: int) -> None:
    """Raise if the decoded samples are fewer than the header says, or not finite."""
    if samples.shape[0] == 0:
        raise AudioError(path, "empty audio (0 samples decoded)")
    if samples.shape[0] < expected_frames:
        raise AudioError(
            path,
            f"truncated audio: header declares {expected_frames} samples, "
            f"decoded {samples.shape[0]}"
        )
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise AudioError(path, f"{bad} NaN/inf sample(s), expected finite values")


def load_audio(
    path: str | os.PathLike[str], expected_sample_rate: int | None = 16000
) -> tuple[np.ndarray, int]:
    """Load a mono audio file as float32 samples of shape ``(N,)``.

    Returns ``(samples, sample_rate)``. Raises :class:`AudioError` naming the
    file if it is missing (:class:`AudioFileNotFoundError`), unreadable,
    corrupt, not audio, truncated, empty, not mono, has a sample rate other
    than ``expected_sample_rate`` (unless that is None), or holds NaN/inf.
    """
    info = check_audio_header(path, expected_sample_rate=expected_sample_rate)
    samples = _decode(info.path)
    _check_samples(info.path, samples, expected_frames=info.frames)
    return samples[:, 0], info.sample_rate
