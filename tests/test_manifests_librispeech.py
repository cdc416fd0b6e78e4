"""Tests for manifests.librispeech on a tiny LibriSpeech-shaped directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from manifests import librispeech
from manifests.cli import main
from manifests.librispeech import prepare_librispeech_local

SR = 16000
# (speaker, chapter, utterance) -> (transcript as LibriSpeech writes it, seconds)
UTTERANCES = {
    ("1272", "128104", "0000"): ("MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", 0.6),
    ("1272", "128104", "0001"): ("NOR IS MISTER QUILTER'S MANNER LESS INTERESTING", 0.5),
    ("2277", "149896", "0000"): ("HE WAS IN A FEVERED STATE OF MIND", 0.4),
    ("2277", "149896", "0001"): ("THE PLACE SEEMED FRAGRANT WITH ALL THE RICHES", 0.7),
}
EXPECTED_TEXT = {
    "1272-128104-0000": "mister quilter is the apostle of the middle classes",
    "1272-128104-0001": "nor is mister quilter's manner less interesting",
    "2277-149896-0000": "he was in a fevered state of mind",
    "2277-149896-0001": "the place seemed fragrant with all the riches",
}


def write_librispeech(root: Path, part: str = "dev-clean") -> Path:
    """``root/LibriSpeech/<part>/<spk>/<chapter>/`` with flac files and a transcript each."""
    rng = np.random.default_rng(0)
    transcripts: dict[Path, list[str]] = {}
    for (speaker, chapter, utt), (text, seconds) in UTTERANCES.items():
        chapter_dir = root / "LibriSpeech" / part / speaker / chapter
        chapter_dir.mkdir(parents=True, exist_ok=True)
        utt_id = f"{speaker}-{chapter}-{utt}"
        samples = (0.05 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        sf.write(str(chapter_dir / f"{utt_id}.flac"), samples, SR)
        trans = chapter_dir / f"{speaker}-{chapter}.trans.txt"
        transcripts.setdefault(trans, []).append(f"{utt_id} {text}")
    for path, lines in transcripts.items():
        path.write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("libri")
    corpus = write_librispeech(root)
    out_dir = root / "prepared"
    # the parent of LibriSpeech/ is accepted too
    return corpus, out_dir, prepare_librispeech_local(root, out_dir)


def test_outputs_per_part(prepared: tuple[Path, Path, dict]) -> None:
    _, out_dir, outputs = prepared
    assert outputs == {
        "dev-clean": {
            "cuts": out_dir / "dev-clean_cuts.jsonl.gz",
            "manifest": out_dir / "dev-clean.json",
        }
    }
    assert all(path.is_file() for path in outputs["dev-clean"].values())


def test_cuts_have_normalised_text_and_speakers(prepared: tuple[Path, Path, dict]) -> None:
    corpus, _, outputs = prepared
    cuts = CutSet.from_file(outputs["dev-clean"]["cuts"]).to_eager()
    assert len(cuts) == len(UTTERANCES)
    for cut in cuts:
        (sup,) = cut.supervisions
        assert sup.recording_id in EXPECTED_TEXT
        assert sup.text == EXPECTED_TEXT[sup.recording_id]
        assert sup.speaker == sup.recording_id.split("-")[0]
        speaker, chapter, utt = sup.recording_id.split("-")
        assert cut.duration == pytest.approx(UTTERANCES[(speaker, chapter, utt)][1], abs=1e-3)
        source = Path(cut.recording.sources[0].source)
        expected = corpus / "dev-clean" / speaker / chapter / f"{sup.recording_id}.flac"
        assert source.resolve() == expected.resolve()


def test_manifest_matches_cuts(prepared: tuple[Path, Path, dict]) -> None:
    _, _, outputs = prepared
    cuts = CutSet.from_file(outputs["dev-clean"]["cuts"]).to_eager()
    lines = outputs["dev-clean"]["manifest"].read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == len(cuts)
    for cut, entry in zip(cuts, entries):
        assert set(entry) == {"audio_filepath", "duration", "text"}
        audio = Path(entry["audio_filepath"])
        assert audio.is_absolute() and audio.is_file()
        assert Path(entry["audio_filepath"]).stem == cut.supervisions[0].recording_id
        assert entry["duration"] == pytest.approx(cut.duration, abs=1e-6)
        assert entry["text"] == EXPECTED_TEXT[cut.supervisions[0].recording_id]
        assert entry["text"] == entry["text"].lower()


def test_prepared_part_is_skipped(
    prepared: tuple[Path, Path, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, out_dir, outputs = prepared
    before = {p: p.stat().st_mtime_ns for p in outputs["dev-clean"].values()}

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the recipe should not run for a prepared part")

    monkeypatch.setattr(librispeech, "prepare_librispeech", fail)
    assert prepare_librispeech_local(corpus, out_dir, dataset_parts=["dev-clean"]) == outputs
    assert {p: p.stat().st_mtime_ns for p in outputs["dev-clean"].values()} == before


def test_missing_corpus_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LibriSpeech directory not found"):
        prepare_librispeech_local(tmp_path / "nowhere", tmp_path / "out")


def test_missing_part_is_named(prepared: tuple[Path, Path, dict], tmp_path: Path) -> None:
    corpus, _, _ = prepared
    with pytest.raises(FileNotFoundError, match="test-other"):
        prepare_librispeech_local(
            corpus, tmp_path / "out", dataset_parts=["dev-clean", "test-other"]
        )
    with pytest.raises(FileNotFoundError, match="found none"):
        prepare_librispeech_local(tmp_path, tmp_path / "out")


def test_cli_prepare_librispeech(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    corpus = write_librispeech(tmp_path / "src", part="dev-other")
    out_dir = tmp_path / "out"
    assert main(["prepare", "librispeech", str(corpus), str(out_dir), "-p", "dev-other"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {
        "dev-other": {
            "cuts": str(out_dir / "dev-other_cuts.jsonl.gz"),
            "manifest": str(out_dir / "dev-other.json"),
        }
    }
    assert len((out_dir / "dev-other.json").read_text().splitlines()) == len(UTTERANCES)


def test_cli_reports_missing_corpus_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["prepare", "librispeech", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "nowhere: LibriSpeech directory not found" in err
    assert "Traceback" not in err
