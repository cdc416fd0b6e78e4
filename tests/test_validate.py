"""Tests for manifests.audio (strict loading) and manifests.validate (manifest filtering)."""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests import LOGGER_NAME, validate
from manifests.audio import AudioError, AudioFileNotFoundError, audio_info, load_audio
from manifests import cli
from manifests.cli import main
from manifests.validate import ValidationReport, validate_manifest

SR = 16000


def _tone(seconds: float, sample_rate: int = SR, channels: int = 1) -> np.ndarray:
    """A quiet sine of the given length, shape (frames,) or (frames, channels)."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return wave if channels == 1 else np.stack([wave] * channels, axis=1)


def _write_wav(
    path: Path, samples: np.ndarray, sample_rate: int = SR, subtype: str = "PCM_16"
) -> Path:
    sf.write(str(path), samples, sample_rate, subtype=subtype)
    return path


def make_bad_audio(directory: Path) -> dict[str, tuple[Path, str]]:
    """One file per failure mode: name -> (path, expected words in the reason)."""
    good = _write_wav(directory / "source.wav", _tone(1.0))
    raw = good.read_bytes()
    (directory / "truncated.wav").write_bytes(raw[: len(raw) // 2])
    (directory / "empty.wav").write_bytes(b"")
    (directory / "not_audio.wav").write_text("this is a text file, not audio\n")
    nan = _tone(1.0)
    nan[100:110] = np.nan
    _write_wav(directory / "nan.wav", nan, subtype="FLOAT")
    _write_wav(directory / "zero_samples.wav", np.zeros(0, dtype=np.float32))
    _write_wav(directory / "rate8k.wav", _tone(1.0, sample_rate=8000), sample_rate=8000)
    _write_wav(directory / "stereo.wav", _tone(1.0, channels=2))
    return {
        "missing": (directory / "missing.wav", "not found"),
        "truncated": (directory / "truncated.wav", "truncated"),
        "empty": (directory / "empty.wav", "empty file"),
        "not_audio": (directory / "not_audio.wav", "not an audio file"),
        "nan": (directory / "nan.wav", "NaN/inf"),
        "zero_samples": (directory / "zero_samples.wav", "0 samples"),
        "wrong_rate": (directory / "rate8k.wav", "wrong sample rate: expected 16000 Hz, got 8000"),
        "stereo": (directory / "stereo.wav", "expected 1 (mono), got 2"),
    }


BAD_AUDIO = [
    "missing", "truncated", "empty", "not_audio", "nan", "zero_samples", "wrong_rate", "stereo",
]  # fmt: skip


# --------------------------------------------------------------------------- load_audio


def test_load_audio_returns_mono_float32(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "ok.wav", _tone(0.5))
    samples, sample_rate = load_audio(path)
    assert sample_rate == SR
    assert samples.dtype == np.float32
    assert samples.shape == (SR // 2,)
    assert np.isfinite(samples).all()


def test_load_audio_accepts_any_rate_when_not_expected(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "r8k.wav", _tone(0.5, sample_rate=8000), sample_rate=8000)
    samples, sample_rate = load_audio(path, expected_sample_rate=None)
    assert (samples.shape, sample_rate) == ((4000,), 8000)


@pytest.mark.parametrize("case", BAD_AUDIO)
def test_load_audio_rejects_bad_file(tmp_path: Path, case: str) -> None:
    path, expected = make_bad_audio(tmp_path)[case]
    with pytest.raises(AudioError) as info:
        load_audio(path)
    assert path.name in str(info.value)
    assert expected in info.value.reason
    assert info.value.path == path


def test_missing_audio_is_also_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        load_audio(tmp_path / "missing.wav")
    assert issubclass(AudioFileNotFoundError, AudioError)


def test_truncated_flac_fails_on_content_only(tmp_path: Path) -> None:
    flac = tmp_path / "whole.flac"
    noise = 0.01 * np.random.default_rng(0).standard_normal(SR).astype(np.float32)
    sf.write(str(flac), _tone(1.0) + noise, SR)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(flac.read_bytes()[: flac.stat().st_size // 2])
    assert audio_info(cut).frames == SR  # the header cannot tell
    with pytest.raises(AudioError, match="cut.flac"):
        load_audio(cut)


def test_audio_info_reads_header(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "stereo.wav", _tone(0.25, channels=2))
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.frames) == (SR, 2, SR // 4)
    assert info.duration == pytest.approx(0.25)


@pytest.mark.parametrize("case", ["missing", "truncated", "empty", "not_audio", "zero_samples"])
def test_audio_info_rejects_bad_header(tmp_path: Path, case: str) -> None:
    path, expected = make_bad_audio(tmp_path)[case]
    with pytest.raises(AudioError, match=path.name) as info:
        audio_info(path)
    assert expected in info.value.reason


# --------------------------------------------------------------------------- validate_manifest


def _line(audio: str, duration: float = 1.0, text: str = "hello world", **extra: object) -> str:
    return json.dumps({"audio_filepath": audio, "duration": duration, "text": text, **extra})


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, object]:
    """A manifest mixing good lines with one line per failure mode."""
    data = tmp_path / "data"
    audio_dir = data / "audio"
    audio_dir.mkdir(parents=True)
    bad = make_bad_audio(audio_dir)
    _write_wav(audio_dir / "good1.wav", _tone(1.0))
    _write_wav(audio_dir / "good2.wav", _tone(2.0))
    _write_wav(audio_dir / "short.wav", _tone(0.05))
    _write_wav(audio_dir / "long.wav", _tone(3.0))
    good_lines = [
        _line("audio/good1.wav"),  # relative to the manifest's directory
        _line(str(audio_dir / "good2.wav"), duration=1.5, offset=0.5, text="absolute path"),
        _line("audio/good2.wav", duration=2.0, text="second good line"),
    ]
    lines = [
        good_lines[0],
        '{"audio_filepath": "audio/good1.wav", "duration": 1.0, "text": "oops"',
        json.dumps({"audio_filepath": "audio/good1.wav", "duration": 1.0}),
        _line("audio/missing.wav"),
        _line("audio/empty.wav"),
        _line("audio/zero_samples.wav"),
        _line("audio/truncated.wav"),
        _line("audio/not_audio.wav"),
        _line("audio/nan.wav"),
        good_lines[1],
        _line("audio/rate8k.wav"),
        _line("audio/stereo.wav"),
        "",
        _line("audio/short.wav", duration=0.05),
        _line("audio/long.wav", duration=3.0),
        _line("audio/good1.wav", duration=1.0, offset=0.5),
        good_lines[2],
    ]
    manifest = data / "train.json"
    manifest.write_text("\n".join(lines) + "\n")
    expected = {
        2: ("train.json", "malformed JSON"),
        3: ("train.json", "missing key(s) ['text']"),
        4: ("missing.wav", "not found"),
        5: ("empty.wav", "empty file"),
        6: ("zero_samples.wav", "0 samples"),
        7: ("truncated.wav", "truncated"),
        8: ("not_audio.wav", "not an audio file"),
        9: ("nan.wav", "NaN/inf"),
        11: ("rate8k.wav", "wrong sample rate: expected 16000 Hz, got 8000"),
        12: ("stereo.wav", "expected 1 (mono), got 2"),
        14: ("short.wav", "shorter than min_duration"),
        15: ("long.wav", "longer than max_duration"),
        16: ("good1.wav", "exceeds the audio length"),
    }
    return {"manifest": manifest, "good_lines": good_lines, "expected": expected, "bad": bad}


def _validate(manifest: Path, **kwargs: object) -> ValidationReport:
    return validate_manifest(manifest, min_duration=0.1, max_duration=2.5, **kwargs)


def test_validate_skips_each_bad_line_with_reason(
    corpus: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    manifest = corpus["manifest"]
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        report = _validate(manifest)
    assert report.kept == len(corpus["good_lines"])
    assert report.out_path == manifest.with_name("train.checked.json")
    assert report.out_path.read_text().splitlines() == corpus["good_lines"]
    skipped = {skip.line_no: skip for skip in report.skipped}
    assert sorted(skipped) == sorted(corpus["expected"])
    for line_no, (file_name, reason) in corpus["expected"].items():
        skip = skipped[line_no]
        assert Path(skip.path).name == file_name, skip
        assert reason in skip.reason, skip
        prefix = f"{manifest}:{line_no}:"
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]
        assert len(logged) == 1, (line_no, logged)
        assert file_name in logged[0] and reason in logged[0]
        assert caplog.records[0].name == LOGGER_NAME


def test_validate_header_only_misses_nan(corpus: dict[str, object]) -> None:
    report = _validate(corpus["manifest"], check_content=False)
    reasons = {skip.line_no: skip.reason for skip in report.skipped}
    assert 9 not in reasons  # the NaN samples are only found by decoding them
    assert "truncated" in reasons[7]  # header checks still catch a truncated WAV
    assert report.kept == len(corpus["good_lines"]) + 1


def test_validate_uses_cache_until_manifest_changes(corpus: dict[str, object]) -> None:
    manifest = corpus["manifest"]
    first = _validate(manifest)
    second = _validate(manifest)
    assert not first.from_cache and second.from_cache
    assert second.kept == first.kept
    assert second.skipped == first.skipped
    assert second.out_path == first.out_path
    assert not _validate(manifest, check_content=False).from_cache  # other options
    manifest.write_text(manifest.read_text() + _line("audio/good1.wav", text="appended") + "\n")
    third = _validate(manifest)
    assert not third.from_cache
    assert third.kept == first.kept + 1


def test_validate_in_parallel_matches_serial(corpus: dict[str, object], tmp_path: Path) -> None:
    data = tmp_path / "data"
    serial = _validate(corpus["manifest"], out_path=data / "serial.json")
    parallel = _validate(corpus["manifest"], out_path=data / "parallel.json", num_jobs=2)
    assert parallel.skipped == serial.skipped
    assert parallel.out_path.read_text() == serial.out_path.read_text()


def test_validate_falls_back_to_temp_dir(
    corpus: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validate, "_dir_is_writable", lambda directory: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    report = _validate(corpus["manifest"])
    assert report.out_path.parent.parent == tmp_path / "tmp"
    entries = [json.loads(line) for line in report.out_path.read_text().splitlines()]
    assert len(entries) == report.kept == len(corpus["good_lines"])
    # relative audio paths no longer resolve from the new directory: made absolute
    audio = [Path(entry["audio_filepath"]) for entry in entries]
    assert all(path.is_absolute() and path.is_file() for path in audio)


def test_raise_if_empty_names_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "bad.json"
    manifest.write_text(_line("nowhere.wav") + "\nnot json\n")
    report = validate_manifest(manifest)
    assert report.kept == 0 and len(report.skipped) == 2
    with pytest.raises(ValueError, match="bad.json"):
        report.raise_if_empty()


def test_raise_if_empty_passes_with_kept_lines(corpus: dict[str, object]) -> None:
    _validate(corpus["manifest"]).raise_if_empty()


def test_validate_rejects_bad_arguments(corpus: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent.json"):
        validate_manifest(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="out_path"):
        validate_manifest(corpus["manifest"], out_path=corpus["manifest"])
    with pytest.raises(ValueError, match="max_duration"):
        validate_manifest(corpus["manifest"], min_duration=2.0, max_duration=1.0)


def test_cli_validate_manifest(
    corpus: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "cli.json"
    manifest = str(corpus["manifest"])
    status = main(["validate-manifest", manifest, "--out", str(out), "--min-duration", "0.1"])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out_path"] == str(out)
    assert printed["kept"] == len(out.read_text().splitlines()) == len(corpus["good_lines"]) + 1


def test_cli_registers_into_another_parser() -> None:
    parser = argparse.ArgumentParser(prog="nemo-sew")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args("prepare synthetic out --hours 0.5 --seed 3 -j 2".split())
    assert (args.command, args.func, args.hours, args.seed, args.num_jobs) == (
        "prepare", cli.run_synthetic, 0.5, 3, 2,
    )
    assert args.out_dir == Path("out")
    assert (args.engines, args.cross_engine) == (["espeak-ng", "flite"], "festival")
    args = parser.parse_args("prepare synthetic out --engines espeak-ng --cross-engine flite".split())
    assert (args.engines, args.cross_engine) == (["espeak-ng"], "flite")
    args = parser.parse_args("prepare librispeech corpus out -p dev-clean -p test-clean".split())
    assert args.func == cli.run_librispeech
    assert (args.parts, args.num_jobs) == (["dev-clean", "test-clean"], 1)
    args = parser.parse_args("validate-manifest m.json --no-content-check --sample-rate 8".split())
    assert args.func == cli.run_validate
    assert (args.content_check, args.sample_rate, args.out) == (False, 8, None)
    with pytest.raises(SystemExit):
        parser.parse_args(["prepare"])  # a corpus is required
