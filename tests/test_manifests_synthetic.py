"""Tests for manifests.synthetic: sentence extraction, planning and synthesis (espeak-ng, flite, festival)."""

from __future__ import annotations

import gzip
import itertools
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from lhotse import CutSet

from manifests import synthetic
from manifests.synthetic import (
    Speaker,
    english_voices,
    load_sentences,
    normalize_sentence,
    plan_corpus,
    prepare_synthetic,
    split_sentences,
    voice_variants,
)

needs_espeak = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("espeak-ng", "flite", "festival", "text2wave", "sox")),
    reason="needs espeak-ng, flite, festival and sox (make setup installs them)",
)

VOICES_EN = """\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)
 3  en-uk           --/M      english-mb-en1     mb/mb-en1            (en-gb 3)(en 2)
 2  en-us           --/M      English_(America)  gmw/en-US            (en 3)
 5  en-gb-scotland  --/M      English_(Scotland) gmw/en-GB-scotland   (en 4)
 5  en-us           --/F      us-mbrola-1        mb/mb-us1            (en 8)
 9  en              --/F      en-german-1        mb/mb-de1-en
 5  variant         --/M      Storm              !v/Storm             (en-us 5)
 5  en-029          --/M      English_(Caribbean) gmw/en-029           (en 10)
"""
VOICES_VARIANT = """\
Pty Language       Age/Gender VoiceName          File                 Other Languages
 5  variant         --/M      Mr_Serious         !v/Mr serious
 5  variant         --/F      female2            !v/f2
 5  variant         --/M      klatt              !v/klatt
 5  variant         --/M      whisper            !v/whisper
 5  variant         70/M      male1              !v/m1
"""


def _fortune_sentences() -> list[str]:
    """40 distinct, speakable sentences."""
    subjects = ["the old cat", "a tired robot", "my neighbour", "the small bird", "our teacher"]
    actions = ["likes", "ignores", "watches", "remembers"]
    objects = ["the rain", "quiet mornings"]
    combos = itertools.product(subjects, actions, objects)
    return [f"{s.capitalize()} {a} {o}." for s, a, o in combos]


def write_fortunes(directory: Path) -> Path:
    """A small fortune directory shaped like Debian's, including files that must be ignored."""
    directory.mkdir(parents=True)
    sentences = _fortune_sentences()
    entries = [" ".join(sentences[i : i + 2]) for i in range(0, len(sentences), 2)]
    entries.append("Call 555 1234 today, it costs $5!\n\t\t-- An Advert")
    entries.append("We need more sleep.  Dr. Who agrees with that idea.\n\t\t-- Someone Famous")
    (directory / "sayings").write_text("\n%\n".join(entries) + "\n%\n")
    (directory / "sayings.dat").write_bytes(b"\x00\x02ignored index file says hello there friend")
    (directory / "sayings.u8").write_text("This copy should never be read.\n%\n")
    (directory / "off").mkdir()
    (directory / "off" / "rude").write_text("This offensive one is never read.\n%\n")
    return directory


# --------------------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Don't panic -- it's only a test.", "don't panic it's only a test"),
        ('"Hello there," she said.', "hello there she said"),
        ("Caf\u00e9 society is NOT dead!", "cafe society is not dead"),
        ("You\u2019re   welcome\tto stay.", "you're welcome to stay"),
        ("It is 5 o'clock somewhere.", None),  # digits are not spelled out
        ("Save 50% on C++ today.", None),  # symbols are not spelled out
        ("Go away.", None),  # too few words
        (" ".join(["word"] * 17) + ".", None),  # too many words
    ],
)
def test_normalize_sentence(raw: str, expected: str | None) -> None:
    assert normalize_sentence(raw) == expected


def test_split_sentences_keeps_abbreviations_and_drops_attribution() -> None:
    entry = "Mr. Smith went home. Did he sleep? Yes!\n\tHe did.\n\t\t-- J. R. Author"
    assert split_sentences(entry) == ["Mr. Smith went home.", "Did he sleep?", "Yes!", "He did."]


def test_load_sentences_reads_plain_files_only(tmp_path: Path) -> None:
    sentences = load_sentences(write_fortunes(tmp_path / "fortunes"))
    expected = sorted(normalize_sentence(s) for s in _fortune_sentences())
    expected += ["dr who agrees with that idea", "we need more sleep"]
    assert sentences == sorted(expected)
    assert not any("never" in s or "index" in s or "555" in s for s in sentences)


def test_load_sentences_missing_dir_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes fortunes-min"):
        load_sentences(tmp_path / "nowhere")


@pytest.mark.skipif(not synthetic.FORTUNE_DIR.is_dir(), reason="fortunes not installed")
def test_load_sentences_from_debian_fortunes() -> None:
    sentences = load_sentences()
    assert len(sentences) > 5000
    assert sentences == sorted(set(sentences))
    assert all(set(s) <= set("abcdefghijklmnopqrstuvwxyz' ") for s in sentences)
    assert all(3 <= len(s.split()) <= 16 for s in sentences)


# --------------------------------------------------------------------------- speakers


def test_parse_english_voices_without_mbrola_or_variants() -> None:
    assert english_voices(VOICES_EN) == ["en-029", "en-gb", "en-gb-scotland", "en-us"]


def test_parse_variants_keeps_natural_ones_in_order() -> None:
    assert voice_variants(VOICES_VARIANT) == ["m1", "f2", "klatt"]


# --------------------------------------------------------------------------- plan


SPEAKERS = [
    Speaker(voice, variant) for voice in ("en-gb", "en-us") for variant in ("m1", "m2", "f1", "f2")
]


POOL = [
    f"sentence number {letter} is here {when}"
    for letter in "abcdefghijklmnopqrstuvwxyz"
    for when in ("today", "again", "now", "later")
]


def _plan(seed: int = 0, hours: float = 0.05) -> list[synthetic.Utterance]:
    return plan_corpus(POOL, SPEAKERS, hours=hours, seed=seed, test_speakers=2)


def test_plan_is_deterministic_and_depends_on_seed() -> None:
    assert _plan(seed=0) == _plan(seed=0)
    assert _plan(seed=0) != _plan(seed=1)
    assert plan_corpus(["a b c", "d e f", "g h i"], SPEAKERS, 0.001, seed=3, test_speakers=2) == (
        plan_corpus(["g h i", "a b c", "d e f"], SPEAKERS[::-1], 0.001, seed=3, test_speakers=2)
    )


def test_plan_splits_by_sentence_and_holds_out_test_speakers() -> None:
    plan = _plan(hours=0.3)  # 104 sentences are too few: train repeats some
    by_split = {s: [u for u in plan if u.split == s] for s in ("train", "dev", "test")}
    assert all(by_split.values())
    texts = {s: {u.text for u in us} for s, us in by_split.items()}
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    assert len(by_split["train"]) > len(texts["train"])  # sentences reused ...
    assert len({u.id for u in plan}) == len(plan)  # ... but never the same utterance twice
    test_speakers = {u.speaker for u in by_split["test"]}
    assert len(test_speakers) <= 2
    assert not test_speakers & {u.speaker for u in by_split["train"] + by_split["dev"]}
    for u in plan:
        assert synthetic.SPEED_RANGE[0] <= u.speed <= synthetic.SPEED_RANGE[1]
        assert synthetic.PITCH_RANGE[0] <= u.pitch <= synthetic.PITCH_RANGE[1]


def test_plan_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError, match="test_speakers"):
        plan_corpus(["a b c"], SPEAKERS, 0.01, test_speakers=len(SPEAKERS))
    with pytest.raises(ValueError, match="not enough sentences"):
        plan_corpus(["a b c", "d e f"], SPEAKERS, 1.0, test_speakers=2)
    with pytest.raises(ValueError, match="hours"):
        plan_corpus(["a b c"], SPEAKERS, 0.0)


FLITE = [Speaker(voice, "", "flite") for voice in ("awb", "kal16", "rms", "slt")]
FESTIVAL = [Speaker(voice, "", "festival") for voice in ("ked_diphone", "cmu_us_slt_arctic_hts")]


def test_plan_two_engines_balanced_with_held_out_speakers_per_engine() -> None:
    plan = plan_corpus(POOL, SPEAKERS + FLITE, hours=0.3, seed=1, test_speakers=3)  # 2 of espeak-ng's, 1 of flite's
    train = [u for u in plan if u.split == "train"]
    flite_share = sum(u.speaker.engine == "flite" for u in train) / len(train)
    assert 0.35 < flite_share < 0.65  # 4 flite speakers vs 8 espeak-ng ones, drawn per engine
    test = {u.speaker for u in plan if u.split == "test"}
    rest = {u.speaker for u in plan if u.split != "test"}
    assert {s.engine for s in test} == {"espeak-ng", "flite"} and not test & rest
    synthetic.check_plan(plan)
    for u in plan:  # flite has no pitch control: no made-up pitch in the plan
        assert (u.pitch is None) == (u.speaker.engine == "flite")


def test_plan_small_engine_holds_out_no_voice_but_says_test_sentences() -> None:
    plan = plan_corpus(POOL, SPEAKERS + FLITE, hours=0.3, seed=1, test_speakers=1)  # flite's share rounds to 0
    by_split = {split: {u.speaker for u in plan if u.split == split} for split in ("train", "test")}
    flite_test = {s for s in by_split["test"] if s.engine == "flite"}
    espeak_test = {s for s in by_split["test"] if s.engine == "espeak-ng"}
    assert flite_test and flite_test <= by_split["train"]  # heard in training, new sentences
    assert len(espeak_test) == 1 and not espeak_test & by_split["train"]  # held out
    synthetic.check_plan(plan)
    # one engine either holds its test voices out or trains with all of them, never half and half
    leaky = [synthetic.Utterance("test", s, 150, 50, "x y z") for s in SPEAKERS[:2]] + [
        synthetic.Utterance("train", SPEAKERS[0], 150, 50, "a b c")
    ]
    with pytest.raises(RuntimeError, match="also occur in train"):
        synthetic.check_plan(leaky)


def test_plan_cross_engine_says_test_sentences_and_leaves_the_rest_alone() -> None:
    without = plan_corpus(POOL, SPEAKERS + FLITE, hours=0.1, seed=2, test_speakers=2)
    plan = plan_corpus(POOL, SPEAKERS + FLITE, hours=0.1, seed=2, test_speakers=2, cross_speakers=FESTIVAL)
    assert [u for u in plan if u.split != "cross"] == without
    test = [u for u in plan if u.split == "test"]
    cross = [u for u in plan if u.split == "cross"]
    assert [(u.text, u.speed) for u in cross] == [(u.text, u.speed) for u in test]
    assert {u.speaker.engine for u in cross} == {"festival"} and all(u.pitch is None for u in cross)
    synthetic.check_plan(plan)
    with pytest.raises(ValueError, match="engine not in training"):
        plan_corpus(POOL, SPEAKERS + FLITE, hours=0.1, cross_speakers=FLITE[:1])
    with pytest.raises(ValueError, match="would hold out"):
        plan_corpus(POOL, SPEAKERS + FLITE[:1], hours=0.1, test_speakers=8)


def test_engine_commands_carry_voice_and_speed(tmp_path: Path) -> None:
    raw = tmp_path / "raw.wav"
    espeak = synthetic.Utterance("train", Speaker("en-gb", "m3"), 175, 40, "hello there")
    flite = synthetic.Utterance("train", FLITE[0], 140, None, "hello there")
    festival = synthetic.Utterance("cross", FESTIVAL[0], 210, None, "hello there")
    argv, stdin = synthetic.get_engine("espeak-ng").command(espeak, raw)
    assert argv[:7] == ["espeak-ng", "-v", "en-gb+m3", "-s", "175", "-p", "40"] and stdin is None
    argv, _ = synthetic.get_engine("flite").command(flite, raw)
    assert argv[:5] == ["flite", "-voice", "awb", "--setf", "duration_stretch=1.25"]
    argv, stdin = synthetic.get_engine("festival").command(festival, raw)
    assert "(voice_ked_diphone)" in argv and "(Parameter.set 'Duration_Stretch 0.833)" in argv
    assert stdin == b"hello there" and argv[-1] == str(raw)
    with pytest.raises(ValueError, match="expected one of"):
        synthetic.get_engine("sam")


@needs_espeak
def test_festival_failure_is_a_synthesis_error(tmp_path: Path) -> None:
    # text2wave exits 0 on an unknown voice: the missing file must still be an error
    bad = synthetic.Utterance("cross", Speaker("no_such_voice", "", "festival"), 175, None, "hello there")
    with pytest.raises(synthetic.SynthesisError, match="produced no audio"):
        synthetic.synthesize_utterance(bad, tmp_path / "bad.wav")
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- synthesis


def _mtimes(out_dir: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted((out_dir / "wav").rglob("*.wav"))}


@pytest.fixture(scope="module")
def fortunes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fortunes(tmp_path_factory.mktemp("src") / "fortunes")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, fortunes: Path) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("synthetic") / "corpus"
    outputs = prepare_synthetic(out_dir, hours=0.01, seed=0, num_jobs=2, fortune_dir=fortunes)
    return out_dir, outputs


@needs_espeak
def test_tiny_corpus_layout(tiny_corpus: tuple[Path, dict]) -> None:
    out_dir, outputs = tiny_corpus
    assert set(outputs) == {"train", "dev", "test", "cross"}
    for split, paths in outputs.items():
        assert paths == {
            "cuts": out_dir / f"{split}_cuts.jsonl.gz",
            "manifest": out_dir / f"{split}.json",
        }
        assert paths["cuts"].is_file() and paths["manifest"].is_file()
    assert not (out_dir / "manifest.json").exists()
    summary = json.loads((out_dir / "corpus.json").read_text())
    assert summary["seed"] == 0 and summary["hours_requested"] == 0.01
    assert summary["engines"] == ["espeak-ng", "flite"] and summary["cross_engine"] == "festival"
    assert set(summary["synthesisers"]) == {"espeak-ng", "flite", "festival"}
    total = sum(s["hours"] for name, s in summary["splits"].items() if name != "cross")
    assert 0.005 < total < 0.02


@needs_espeak
def test_tiny_corpus_audio_is_16k_mono_pcm16(tiny_corpus: tuple[Path, dict]) -> None:
    out_dir, _ = tiny_corpus
    wavs = list((out_dir / "wav").rglob("*.wav"))
    assert wavs
    for wav in wavs:
        info = sf.info(str(wav))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), wav
        assert info.frames > 8000, wav
    assert not list(out_dir.rglob(".tmp*")) and not list(out_dir.rglob("*.tmp.wav"))


@needs_espeak
def test_tiny_corpus_cuts_match_manifest(tiny_corpus: tuple[Path, dict]) -> None:
    _, outputs = tiny_corpus
    texts, speakers, engines = {}, {}, {}
    for split, paths in outputs.items():
        cuts = CutSet.from_file(paths["cuts"]).to_eager()
        entries = [json.loads(line) for line in paths["manifest"].read_text().splitlines()]
        assert len(cuts) == len(entries) > 0
        for cut, entry in zip(cuts, entries):
            (sup,) = cut.supervisions
            assert entry["audio_filepath"] == cut.recording.sources[0].source
            assert Path(entry["audio_filepath"]).is_file()
            assert entry["duration"] == pytest.approx(cut.duration, abs=1e-6)
            assert "offset" not in entry
            assert entry["text"] == sup.text
            assert sup.language == "en" and sup.speaker == cut.id.rsplit("-", 1)[0]
            assert sf.info(entry["audio_filepath"]).frames == cut.recording.num_samples
        texts[split] = {c.supervisions[0].text for c in cuts}
        speakers[split] = {c.supervisions[0].speaker for c in cuts}
        engines[split] = {c.supervisions[0].custom["engine"] for c in cuts}
    assert not texts["train"] & (texts["dev"] | texts["test"])
    assert not texts["dev"] & texts["test"]
    assert not speakers["test"] & (speakers["train"] | speakers["dev"])
    # the cross split: the test sentences again, said by the engine no other split has
    assert texts["cross"] == texts["test"]
    assert engines["cross"] == {"festival"}
    assert engines["train"] == {"espeak-ng", "flite"} and "festival" not in engines["test"] | engines["dev"]


@needs_espeak
def test_second_call_skips_synthesis(
    tiny_corpus: tuple[Path, dict], fortunes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out_dir, outputs = tiny_corpus
    before = _mtimes(out_dir)
    manifests = {split: paths["manifest"].read_text() for split, paths in outputs.items()}

    def fail(*args: object) -> None:
        raise AssertionError("nothing should be synthesised again")

    monkeypatch.setattr(synthetic, "synthesize_utterance", fail)
    again = prepare_synthetic(out_dir, hours=0.01, seed=0, num_jobs=2, fortune_dir=fortunes)
    assert again == outputs
    assert _mtimes(out_dir) == before
    assert {split: paths["manifest"].read_text() for split, paths in again.items()} == manifests


@needs_espeak
def test_resumes_after_lost_or_broken_wav(tiny_corpus: tuple[Path, dict], fortunes: Path) -> None:
    out_dir, outputs = tiny_corpus
    before = _mtimes(out_dir)
    lost, broken = list(before)[:2]
    lost.unlink()
    broken.write_bytes(broken.read_bytes()[:100])
    prepare_synthetic(out_dir, hours=0.01, seed=0, num_jobs=1, fortune_dir=fortunes)
    after = _mtimes(out_dir)
    assert set(after) == set(before)
    changed = {p for p in before if after[p] != before[p]}
    assert changed == {lost, broken}
    assert sf.info(str(broken)).frames > 8000


@needs_espeak
def test_same_seed_same_corpus_elsewhere(
    tiny_corpus: tuple[Path, dict], fortunes: Path, tmp_path: Path
) -> None:
    _, outputs = tiny_corpus
    other = prepare_synthetic(
        tmp_path / "other", hours=0.01, seed=0, num_jobs=2, fortune_dir=fortunes
    )
    for split in outputs:
        ids = [c.id for c in CutSet.from_file(outputs[split]["cuts"])]
        assert ids == [c.id for c in CutSet.from_file(other[split]["cuts"])]
    with gzip.open(other["train"]["cuts"], "rt") as f:
        assert str(tmp_path / "other" / "wav") in f.readline()
