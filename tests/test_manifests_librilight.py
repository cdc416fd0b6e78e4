"""Tests for manifests.librilight on a tiny librispeech_finetuning-shaped directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from manifests import LOGGER_NAME, librilight
from manifests.cli import main
from manifests.librilight import prepare_librilight_limited

SR = 16000
# split directory -> {utterance id: (transcript as the archive writes it, seconds)}
SPLITS = {
    "1h/0/clean": {
        "103-1240-0000": ("CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED", 0.5),
        "103-1240-0001": ("THAT HAD ITS SOURCE AWAY BACK IN THE WOODS", 0.3),
    },
    "1h/0/other": {"1688-142285-0000": ("THERE'S IRON THEY SAY IN ALL OUR BLOOD", 0.4)},
    "1h/1/clean": {"1069-133699-0000": ("\"HE HAD NEVER BEEN\" SO HAPPY", 0.6)},
    "1h/1/other": {"2506-11267-0000": ("OLD MISTER WILLIAMSON'S DOG", 0.35)},
    "9h/clean": {
        "1034-121119-0000": ("A STORY OF THE SEA", 0.45),
        "1034-121119-0001": ("AND OF THOSE WHO SAIL", 0.25),
    },
    "9h/other": {"1195-130164-0000": ("IT WAS A DARK NIGHT", 0.55)},
}
# skipped: a transcript line without audio, an audio file without a transcript line
GHOST = ("1h/0/other", "1688-142285-0009", "THIS LINE HAS NO AUDIO")
ORPHAN = ("9h/clean", "1034-121119-0007", 0.2)
EXPECTED_TEXT = {
    "103-1240-0000": "chapter one missus rachel lynde is surprised",
    "103-1240-0001": "that had its source away back in the woods",
    "1688-142285-0000": "there's iron they say in all our blood",
    "1069-133699-0000": "he had never been so happy",
    "2506-11267-0000": "old mister williamson's dog",
    "1034-121119-0000": "a story of the sea",
    "1034-121119-0001": "and of those who sail",
    "1195-130164-0000": "it was a dark night",
}
SECONDS = {utt: seconds for utts in SPLITS.values() for utt, (_, seconds) in utts.items()}
SUBSET_IDS = {
    "10min": {utt for split, utts in SPLITS.items() if split.startswith("1h/0/") for utt in utts},
    "1h": {utt for split, utts in SPLITS.items() if split.startswith("1h/") for utt in utts},
    "10h": set(SECONDS),
}


def _chapter_dir(root: Path, split: str, utt_id: str) -> Path:
    speaker, chapter, _ = utt_id.split("-")
    path = root / split / speaker / chapter
    path.mkdir(parents=True, exist_ok=True)
    return path


def _write_flac(path: Path, seconds: float, rng: np.random.Generator) -> None:
    samples = (0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
    sf.write(str(path), samples, SR)


def write_finetuning(parent: Path, splits: dict = SPLITS, extras: bool = True) -> Path:
    """``parent/librispeech_finetuning/`` with flac files and one transcript per chapter.

    With ``extras``, adds :data:`GHOST` (a line without audio) and :data:`ORPHAN`
    (audio without a line).
    """
    rng = np.random.default_rng(0)
    root = parent / "librispeech_finetuning"
    transcripts: dict[Path, list[str]] = {}
    for split, utts in splits.items():
        for utt_id, (text, seconds) in utts.items():
            chapter_dir = _chapter_dir(root, split, utt_id)
            _write_flac(chapter_dir / f"{utt_id}.flac", seconds, rng)
            trans = chapter_dir / f"{'-'.join(utt_id.split('-')[:2])}.trans.txt"
            transcripts.setdefault(trans, []).append(f"{utt_id} {text}")
    if extras:
        split, utt_id, text = GHOST
        speaker, chapter, _ = utt_id.split("-")
        trans = _chapter_dir(root, split, utt_id) / f"{speaker}-{chapter}.trans.txt"
        transcripts.setdefault(trans, []).append(f"{utt_id} {text}")
        split, utt_id, seconds = ORPHAN
        _write_flac(_chapter_dir(root, split, utt_id) / f"{utt_id}.flac", seconds, rng)
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    return root


def cut_ids(path: Path) -> set[str]:
    return {cut.supervisions[0].recording_id for cut in CutSet.from_file(path)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    parent = tmp_path_factory.mktemp("librilight")
    corpus = write_finetuning(parent)
    out_dir = parent / "prepared"
    # the parent of librispeech_finetuning/ is accepted too
    outputs = prepare_librilight_limited(parent, out_dir, subsets=("10min", "1h", "10h"))
    return corpus, out_dir, outputs


def test_outputs_per_subset(prepared: tuple[Path, Path, dict]) -> None:
    _, out_dir, outputs = prepared
    assert outputs == {
        subset: {
            "cuts": out_dir / f"ll{subset}_cuts.jsonl.gz",
            "manifest": out_dir / f"ll{subset}.json",
        }
        for subset in ("10min", "1h", "10h")
    }
    assert all(path.is_file() for paths in outputs.values() for path in paths.values())


def test_subsets_nest(prepared: tuple[Path, Path, dict]) -> None:
    _, _, outputs = prepared
    ids = {subset: cut_ids(paths["cuts"]) for subset, paths in outputs.items()}
    assert ids == SUBSET_IDS
    assert ids["10min"] < ids["1h"] < ids["10h"]
    assert [len(ids[s]) for s in ("10min", "1h", "10h")] == [3, 5, 8]


def test_cuts_have_durations_normalised_text_and_sources(
    prepared: tuple[Path, Path, dict],
) -> None:
    corpus, _, outputs = prepared
    cuts = CutSet.from_file(outputs["10h"]["cuts"]).to_eager()
    assert len(cuts) == len(SECONDS)
    assert [cut.id for cut in cuts] == sorted(cut.id for cut in cuts)
    for cut in cuts:
        (sup,) = cut.supervisions
        utt_id = sup.recording_id
        assert sup.text == EXPECTED_TEXT[utt_id]
        assert sup.speaker == utt_id.split("-")[0]
        assert cut.duration == pytest.approx(SECONDS[utt_id], abs=1e-3)
        assert sup.start == 0 and sup.duration == pytest.approx(cut.duration, abs=1e-6)
        source = Path(cut.recording.sources[0].source)
        assert source.is_absolute()
        (split,) = [split for split, utts in SPLITS.items() if utt_id in utts]
        expected = _chapter_dir(corpus, split, utt_id) / f"{utt_id}.flac"
        assert source == expected.resolve()


def test_manifest_matches_cuts(prepared: tuple[Path, Path, dict]) -> None:
    _, _, outputs = prepared
    for subset, paths in outputs.items():
        cuts = CutSet.from_file(paths["cuts"]).to_eager()
        entries = [json.loads(line) for line in paths["manifest"].read_text().splitlines()]
        assert len(entries) == len(cuts) == len(SUBSET_IDS[subset])
        for cut, entry in zip(cuts, entries):
            utt_id = cut.supervisions[0].recording_id
            assert set(entry) == {"audio_filepath", "duration", "text"}
            audio = Path(entry["audio_filepath"])
            assert audio.is_absolute() and audio.is_file() and audio.stem == utt_id
            assert entry["duration"] == pytest.approx(SECONDS[utt_id], abs=1e-3)
            assert entry["text"] == EXPECTED_TEXT[utt_id]


def test_prepared_subsets_are_skipped(
    prepared: tuple[Path, Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, out_dir, outputs = prepared
    before = {p: p.stat().st_mtime_ns for paths in outputs.values() for p in paths.values()}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a prepared subset should not be read again")

    monkeypatch.setattr(librilight, "find_utterances", fail)
    monkeypatch.setattr(librilight, "build_cuts", fail)
    again = prepare_librilight_limited(corpus, out_dir, subsets=("10h", "1h", "10min"))
    assert again == outputs
    after = {p: p.stat().st_mtime_ns for paths in outputs.values() for p in paths.values()}
    assert after == before


def test_only_unfinished_subset_is_redone(
    prepared: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    corpus, _, outputs = prepared
    out_dir = tmp_path / "out"
    first = prepare_librilight_limited(corpus, out_dir, subsets=("10min", "10h"))
    before = {p: p.stat().st_mtime_ns for p in first["10h"].values()}
    first["10min"]["manifest"].unlink()
    second = prepare_librilight_limited(corpus, out_dir, subsets=("10min", "10h"))
    assert second == first
    assert {p: p.stat().st_mtime_ns for p in first["10h"].values()} == before
    assert first["10min"]["manifest"].read_text() == outputs["10min"]["manifest"].read_text()


def test_unmatched_files_are_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corpus = write_finetuning(tmp_path)
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    outputs = prepare_librilight_limited(corpus, tmp_path / "out", subsets="10h")
    assert cut_ids(outputs["10h"]["cuts"]) == SUBSET_IDS["10h"]
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER_NAME]
    assert any(
        "1h/0: skipped 1 transcript lines without audio" in m and GHOST[1] in m for m in messages
    ), messages
    assert any(
        "9h: skipped 1 audio files without a transcript line" in m and ORPHAN[1] in m
        for m in messages
    ), messages


def test_parallel_reading_gives_the_same_outputs(
    prepared: tuple[Path, Path, dict], tmp_path: Path
) -> None:
    corpus, _, outputs = prepared
    parallel = prepare_librilight_limited(corpus, tmp_path / "out", subsets="1h", num_jobs=2)
    assert parallel["1h"]["manifest"].read_text() == outputs["1h"]["manifest"].read_text()


def test_relative_corpus_dir_gives_absolute_sources(
    prepared: tuple[Path, Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, _, _ = prepared
    monkeypatch.chdir(corpus.parent)
    outputs = prepare_librilight_limited(corpus.name, tmp_path / "out", subsets="10min")
    for cut in CutSet.from_file(outputs["10min"]["cuts"]):
        source = Path(cut.recording.sources[0].source)
        assert source.is_absolute() and source.is_relative_to(corpus.resolve())


def test_missing_corpus_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Libri-light fine-tuning directory not found"):
        prepare_librilight_limited(tmp_path / "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_split_unknown_subset_and_bad_jobs(tmp_path: Path) -> None:
    only_1h = {split: utts for split, utts in SPLITS.items() if split.startswith("1h/")}
    corpus = write_finetuning(tmp_path, only_1h, extras=False)
    with pytest.raises(FileNotFoundError, match=r"expected split directories \['9h'\]"):
        prepare_librilight_limited(corpus, tmp_path / "out", subsets="10h")
    with pytest.raises(FileNotFoundError, match="expected the directory 1h/"):
        prepare_librilight_limited(corpus / "1h", tmp_path / "out", subsets="1h")
    with pytest.raises(ValueError, match=r"expected one of \['10min', '1h', '10h'\], got '100h'"):
        prepare_librilight_limited(corpus, tmp_path / "out", subsets="100h")
    with pytest.raises(ValueError, match="num_jobs: expected >= 1, got 0"):
        prepare_librilight_limited(corpus, tmp_path / "out", num_jobs=0)


def test_empty_subset_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "librispeech_finetuning"
    chapter_dir = _chapter_dir(root, "1h/0/clean", "103-1240-0000")
    (chapter_dir / "103-1240.trans.txt").write_text("103-1240-0000 NO AUDIO HERE\n")
    with pytest.raises(ValueError, match="10min: expected utterances .* found none"):
        prepare_librilight_limited(root, tmp_path / "out", subsets="10min")
    assert not (tmp_path / "out" / "ll10min.json").exists()


def test_cli_prepare_librilight(
    prepared: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus, _, outputs = prepared
    out_dir = tmp_path / "out"
    argv = ["prepare", "librilight", str(corpus), str(out_dir), "-s", "10min", "-s", "1h"]
    assert main([*argv, "-j", "2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        subset: {
            "cuts": str(out_dir / f"ll{subset}_cuts.jsonl.gz"),
            "manifest": str(out_dir / f"ll{subset}.json"),
        }
        for subset in ("10min", "1h")
    }
    for subset in ("10min", "1h"):
        made = (out_dir / f"ll{subset}.json").read_text()
        assert made == outputs[subset]["manifest"].read_text()
    assert not (out_dir / "ll10h.json").exists()


def test_cli_defaults_to_10h_and_reports_errors_in_one_line(
    prepared: tuple[Path, Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    corpus, _, _ = prepared
    assert main(["prepare", "librilight", str(corpus), str(tmp_path / "out")]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"10h"}
    assert main(["prepare", "librilight", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "nowhere: Libri-light fine-tuning directory not found" in err
    assert "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["prepare", "librilight", str(corpus), str(tmp_path / "o"), "-s", "100h"])
