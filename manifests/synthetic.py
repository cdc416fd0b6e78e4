"""A multi-speaker, multi-engine English corpus synthesised from Debian's fortunes.

Sentences come from the plain fortune files (``apt-get install fortunes
fortunes-min``), normalised to lowercase ``a-z``, apostrophes and spaces.
Three Debian speech synthesisers ("engines") say them:

- ``espeak-ng`` (formant synthesis): a speaker is an English voice combined
  with a voice variant (``en-gb-scotland+m3``); each utterance gets its own
  speed and pitch;
- ``flite`` (CMU's diphone and clustergen voices ``awb``, ``kal16``, ``rms``,
  ``slt``): a speaker is a voice (``flite-awb``); each utterance its own speed;
- ``festival`` (the ``ked_diphone`` and HTS ``cmu_us_slt_arctic_hts`` voices):
  a speaker is a voice (``festival-ked_diphone``).

The training engines (``engines``, default espeak-ng and flite) give train,
dev and test; the engine named by ``cross_engine`` (default festival) never
occurs in them and says the *test sentences* again as the ``cross`` split, so
test vs cross compares the same sentences in an engine heard in training and
in one never heard (flite and festival share CMU's lexicon and letter-to-sound
rules, and festival's HTS voice is the ``slt`` speaker that flite's clustergen
``slt`` was trained from: the cross split is a new engine and synthesis method,
one of its voices a new speaker too).

The plan (which sentence, speaker, speed and pitch per utterance) depends
only on ``seed``, ``hours`` and the installed fortunes and voices. Splits are
disjoint by sentence (cross repeats test's), the training engines are drawn
equally often, and each training engine holds out its share of the test
speakers, who never occur in train or dev; an engine too small for a share
(flite) says test sentences with the voices it trains with.
Synthesis runs in a process pool; every wav is named after a hash of what it
contains, written under a temporary name and renamed, and skipped when it
already exists and is valid, so an interrupted run resumes and a repeated
run only rewrites the (small) manifests.

Output layout under ``out_dir``::

    wav/<speaker>/<utterance id>.wav   16 kHz mono 16-bit PCM
    {train,dev,test,cross}_cuts.jsonl.gz  lhotse CutSets
    {train,dev,test,cross}.json           NeMo manifests
    corpus.json                        summary: hours and speakers per split, seed
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from lhotse import CutSet, MonoCut, Recording, SupervisionSegment
from lhotse.audio import AudioSource

from manifests import LOGGER_NAME
from manifests.audio import AudioError, check_audio_header
from manifests.io import temporary_sibling, write_cuts, write_text_atomic
from manifests.nemo_manifest import cuts_to_nemo_manifest
from manifests.text import normalize_transcript, strip_accents

LOGGER = logging.getLogger(LOGGER_NAME)

#: Where Debian's ``fortunes`` and ``fortunes-min`` packages install their files.
FORTUNE_DIR = Path("/usr/share/games/fortunes")
SAMPLE_RATE = 16000
SPLITS = ("train", "dev", "test", "cross")
#: Engines that say train, dev and test by default; the cross-engine split's engine.
DEFAULT_ENGINES = ("espeak-ng", "flite")
DEFAULT_CROSS_ENGINE = "festival"
#: espeak-ng variants that sound like (synthetic) people rather than effects.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4",
)  # fmt: skip
SPEED_RANGE = (140, 210)  # words per minute (espeak-ng -s; flite / festival: a duration stretch of 175 / speed)
PITCH_RANGE = (30, 70)  # espeak-ng -p, 0-99, default 50
DEFAULT_TEST_SPEAKERS = 6
PROGRESS_EVERY = 200

_FORTUNE_SKIP_SUFFIXES = frozenset({".dat", ".u8"})
# Fortune files that are mostly not English ("translate-me": Latin, French, ...).
_FORTUNE_SKIP_NAMES = frozenset({"translate-me"})
_ENTRY_SEPARATOR = re.compile(r"^%\s*$", re.MULTILINE)
_ATTRIBUTION = re.compile(r"^\s*(--|\u2014|\u2013)")
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[\"'\u201d\u2019)\]]*\s+")
# Sentences may contain letters, whitespace and ordinary punctuation only:
# digits and symbols would be read out by espeak-ng ("%" -> "percent").
_SPEAKABLE = re.compile(r"[A-Za-z\s.,;:!?'\"()\-\u2018\u2019\u201c\u201d\u2013\u2014]+")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr vs etc prof gen col capt lt sgt rev hon mt ft e.g i.e".split()
)


class SynthesisError(RuntimeError):
    """A synthesiser or sox failed to produce a valid wav."""


# --------------------------------------------------------------------------- sentences


def fortune_files(fortune_dir: Path) -> list[Path]:
    """The plain fortune files directly in ``fortune_dir``.

    Index (``.dat``) and UTF-8 duplicate (``.u8``) files, sub-directories such
    as the offensive ``off/``, and non-English files are left out.
    """
    if not fortune_dir.is_dir():
        raise FileNotFoundError(
            f"{fortune_dir}: fortune directory not found; install the sentence source "
            "with `apt-get install fortunes fortunes-min`"
        )
    files, seen = [], set()
    for path in sorted(fortune_dir.iterdir()):
        real = path.resolve()
        if path.name.startswith(".") or path.name in _FORTUNE_SKIP_NAMES:
            continue
        if path.suffix in _FORTUNE_SKIP_SUFFIXES:
            continue
        if not real.is_file() or real in seen:
            continue
        seen.add(real)
        files.append(path)
    if not files:
        raise FileNotFoundError(
            f"{fortune_dir}: expected fortune files, found none; "
            "install them with `apt-get install fortunes fortunes-min`"
        )
    return files


def split_entries(text: str) -> list[str]:
    """Split the contents of a fortune file into entries (separated by ``%`` lines)."""
    return [entry for entry in _ENTRY_SEPARATOR.split(text) if entry.strip()]


def _merge_abbreviations(pieces: list[str]) -> list[str]:
    """Re-join pieces that were split after an abbreviation or an initial ("Mr.", "J.")."""
    merged: list[str] = []
    for piece in pieces:
        if merged:
            last_word = merged[-1].rsplit(None, 1)[-1].rstrip(".").lower()
            if last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha()):
                merged[-1] = f"{merged[-1]} {piece}"
                continue
        merged.append(piece)
    return merged


def split_sentences(entry: str) -> list[str]:
    """Split one fortune entry into sentences, dropping attribution lines ("-- Author")."""
    lines = [line for line in entry.splitlines() if not _ATTRIBUTION.match(line)]
    text = " ".join(" ".join(lines).split())
    pieces = [piece for piece in _SENTENCE_BREAK.split(text) if piece]
    return _merge_abbreviations(pieces)


def normalize_sentence(sentence: str, min_words: int = 3, max_words: int = 16) -> str | None:
    """Normalise a sentence for synthesis; None if it cannot be used.

    Sentences with digits or symbols are dropped rather than spelled out;
    so are those with fewer than ``min_words`` or more than ``max_words``
    words after normalisation.
    """
    plain = strip_accents(sentence)
    if not _SPEAKABLE.fullmatch(plain):
        return None
    text = normalize_transcript(plain)
    words = len(text.split())
    return text if min_words <= words <= max_words else None


def sentences_from_text(text: str, min_words: int = 3, max_words: int = 16) -> list[str]:
    """All usable normalised sentences of one fortune file's contents (with duplicates)."""
    sentences = []
    for entry in split_entries(text):
        for sentence in split_sentences(entry):
            normalised = normalize_sentence(sentence, min_words, max_words)
            if normalised:
                sentences.append(normalised)
    return sentences


def load_sentences(
    fortune_dir: Path = FORTUNE_DIR, min_words: int = 3, max_words: int = 16
) -> list[str]:
    """Unique normalised sentences from the fortune files in ``fortune_dir``, sorted."""
    if not 1 <= min_words <= max_words:
        raise ValueError(
            f"word range: expected 1 <= min_words <= max_words, got {min_words}, {max_words}"
        )
    sentences: set[str] = set()
    for path in fortune_files(Path(fortune_dir)):
        text = path.read_text(encoding="utf-8", errors="replace")
        sentences.update(sentences_from_text(text, min_words, max_words))
    return sorted(sentences)


# --------------------------------------------------------------------------- speakers


@dataclass(frozen=True, order=True)
class Speaker:
    """A voice of one engine: espeak-ng's voice with a variant (``en-gb-scotland+m3``), or a
    flite / festival voice (``variant`` empty)."""

    voice: str
    variant: str = ""
    engine: str = "espeak-ng"

    @property
    def id(self) -> str:
        """The speaker id: espeak-ng's ``-v`` argument, else ``<engine>-<voice>``."""
        if self.engine == "espeak-ng":
            return f"{self.voice}+{self.variant}"
        return f"{self.engine}-{self.voice}"


@dataclass(frozen=True)
class VoiceEntry:
    """One row of ``espeak-ng --voices=...``."""

    language: str
    name: str
    file: str


def require_tool(name: str, package: str) -> str:
    """Path of executable ``name``; raise telling which Debian package provides it."""
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(
            f"{name}: expected on PATH, not found; install it with `apt-get install {package}`"
        )
    return path


def espeak_voice_table(selector: str) -> str:
    """Raw output of ``espeak-ng --voices=<selector>``."""
    require_tool("espeak-ng", "espeak-ng")
    result = subprocess.run(
        ["espeak-ng", f"--voices={selector}"], capture_output=True, text=True, check=True
    )
    return result.stdout


def parse_voice_table(table: str) -> list[VoiceEntry]:
    """Parse ``espeak-ng --voices`` output (Pty, Language, Age/Gender, VoiceName, File, ...)."""
    entries = []
    for line in table.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        file = " ".join(parts[4:]).split(" (")[0].strip()
        entries.append(VoiceEntry(language=parts[1], name=parts[3], file=file))
    return entries


def english_voices(table: str | None = None) -> list[str]:
    """English espeak-ng voices (language codes), without mbrola voices and variants."""
    rows = parse_voice_table(table if table is not None else espeak_voice_table("en"))
    voices = {
        row.language
        for row in rows
        if row.language.startswith("en") and not row.file.startswith(("mb/", "!v/"))
    }
    return sorted(voices)


def voice_variants(table: str | None = None) -> list[str]:
    """The installed variants among :data:`VARIANTS`, in that order."""
    rows = parse_voice_table(table if table is not None else espeak_voice_table("variant"))
    installed = {row.file.split("/", 1)[1] for row in rows if row.file.startswith("!v/")}
    return [variant for variant in VARIANTS if variant in installed]


def list_speakers() -> list[Speaker]:
    """Every (English voice, variant) pair, sorted."""
    voices, variants = english_voices(), voice_variants()
    if not voices or not variants:
        raise RuntimeError(
            f"espeak-ng: expected English voices and variants, found {len(voices)} voices "
            f"and {len(variants)} variants; reinstall with `apt-get install espeak-ng`"
        )
    return sorted(Speaker(voice, variant) for voice in voices for variant in variants)


# --------------------------------------------------------------------------- engines


def duration_stretch(speed: int) -> float:
    """flite / festival duration stretch for an espeak-ng speed in words per minute (175 = 1.0)."""
    return round(175.0 / speed, 3)


def _tool_output(command: list[str]) -> str:
    """stdout (and stderr) of a synthesiser's information command."""
    result = subprocess.run(command, capture_output=True, text=True)
    return (result.stdout + result.stderr).strip()


class Engine:
    """One Debian speech synthesiser: its speakers, and the command that writes one utterance as a wav
    file (any sample rate; sox converts it). Small classes behind one interface, chosen by name in
    :data:`ENGINES`."""

    name: str = ""
    #: Debian packages that provide the engine and its voices (``apt-get install ...``).
    packages: str = ""
    executables: tuple[str, ...] = ()
    #: Whether the engine takes a pitch (espeak-ng's ``-p``); utterances of other engines have pitch None.
    pitch_control: bool = False

    def require(self) -> None:
        """Raise :class:`FileNotFoundError` naming the Debian packages if the engine is missing."""
        for executable in self.executables:
            require_tool(executable, self.packages)

    def speakers(self) -> list[Speaker]:
        """The installed speakers, sorted."""
        raise NotImplementedError

    def command(self, utterance: Utterance, raw: Path) -> tuple[list[str], bytes | None]:
        """``(argv, stdin)`` that writes ``utterance`` as a wav file at ``raw``."""
        raise NotImplementedError

    def version(self) -> str:
        """The engine's version line."""
        raise NotImplementedError


class EspeakEngine(Engine):
    """espeak-ng: every (English voice, variant) pair, with speed and pitch per utterance."""

    name, packages, executables, pitch_control = "espeak-ng", "espeak-ng", ("espeak-ng",), True

    def speakers(self) -> list[Speaker]:
        return list_speakers()

    def command(self, utterance: Utterance, raw: Path) -> tuple[list[str], bytes | None]:
        argv = [
            "espeak-ng",
            "-v", utterance.speaker.id,
            "-s", str(utterance.speed),
            "-p", str(utterance.pitch),
            "-w", str(raw),
            utterance.text,
        ]  # fmt: skip
        return argv, None

    def version(self) -> str:
        return espeak_version()


class FliteEngine(Engine):
    """flite: CMU's English voices (``flite -lv``) among :attr:`VOICES`, with speed per utterance."""

    name, packages, executables = "flite", "flite", ("flite",)
    #: 16 kHz English voices: clustergen awb (Scottish male), rms (US male), slt (US female) and the
    #: kal16 diphone voice (US male). ``kal`` (8 kHz) and ``awb_time`` (says times only) are left out.
    VOICES = ("awb", "kal16", "rms", "slt")

    def speakers(self) -> list[Speaker]:
        listed = _tool_output(["flite", "-lv"]).split(":", 1)[-1].split()
        voices = [voice for voice in self.VOICES if voice in listed]
        if not voices:
            raise RuntimeError(f"flite: expected voices {self.VOICES}, found {listed}; reinstall flite")
        return [Speaker(voice, "", self.name) for voice in voices]

    def command(self, utterance: Utterance, raw: Path) -> tuple[list[str], bytes | None]:
        argv = [
            "flite",
            "-voice", utterance.speaker.voice,
            "--setf", f"duration_stretch={duration_stretch(utterance.speed)}",
            "-t", utterance.text,
            "-o", str(raw),
        ]  # fmt: skip
        return argv, None

    def version(self) -> str:
        lines = [line.strip() for line in _tool_output(["flite", "--version"]).splitlines()]
        return next((line for line in lines if line.startswith("version")), lines[-1] if lines else "flite")


class FestivalEngine(Engine):
    """festival's ``text2wave``: its installed English voices among :attr:`VOICES`, with speed per
    utterance (the HTS voice ignores the duration stretch)."""

    name = "festival"
    packages = "festival festvox-kdlpc16k festvox-us-slt-hts"
    executables = ("festival", "text2wave")
    VOICES = ("ked_diphone", "cmu_us_slt_arctic_hts", "kal_diphone", "rab_diphone", "don_diphone")

    def speakers(self) -> list[Speaker]:
        listed = re.findall(r"[\w-]+", _tool_output(["festival", "-b", "(print (voice.list))"]))
        voices = [voice for voice in self.VOICES if voice in listed]
        if not voices:
            raise RuntimeError(
                f"festival: expected English voices among {self.VOICES}, found {listed}; "
                f"install them with `apt-get install {self.packages}`"
            )
        return [Speaker(voice, "", self.name) for voice in voices]

    def command(self, utterance: Utterance, raw: Path) -> tuple[list[str], bytes | None]:
        argv = [
            "text2wave",
            "-eval", f"(voice_{utterance.speaker.voice})",
            "-eval", f"(Parameter.set 'Duration_Stretch {duration_stretch(utterance.speed)})",
            "-o", str(raw),
        ]  # fmt: skip
        return argv, utterance.text.encode()

    def version(self) -> str:
        return _tool_output(["festival", "--version"]).splitlines()[0]


#: The engines by name (``prepare_synthetic(engines=..., cross_engine=...)``).
ENGINES: dict[str, Engine] = {e.name: e for e in (EspeakEngine(), FliteEngine(), FestivalEngine())}


def get_engine(name: str) -> Engine:
    """The engine called ``name``; a clear error for an unknown one."""
    if name not in ENGINES:
        raise ValueError(f"engine: expected one of {sorted(ENGINES)}, got {name!r}")
    return ENGINES[name]


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: what to say, and how."""

    split: str
    speaker: Speaker
    speed: int
    pitch: int | None  # None: the engine has no pitch control
    text: str

    @property
    def id(self) -> str:
        """Content-addressed id: the same id always means the same audio."""
        key = f"{self.speaker.id}|{self.speed}|{self.pitch}|{self.text}"
        return f"{self.speaker.id}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"

    def wav_path(self, out_dir: Path) -> Path:
        """Where this utterance's wav lives under ``out_dir``."""
        return out_dir / "wav" / self.speaker.id / f"{self.id}.wav"


def estimate_duration(text: str, speed: int) -> float:
    """Rough espeak-ng duration (seconds) of ``text`` at ``speed`` words per minute."""
    # Least-squares fit on espeak-ng 1.51 output over random voices and speeds.
    return (8.7 * len(text) + 82.0) / speed


def split_targets(hours: float, dev_fraction: float, test_fraction: float) -> dict[str, float]:
    """Seconds of audio wanted per split."""
    total = hours * 3600.0
    return {
        "train": total * (1.0 - dev_fraction - test_fraction),
        "dev": total * dev_fraction,
        "test": total * test_fraction,
    }


def _pick_speaker(rng: random.Random, speakers: Sequence[Speaker]) -> Speaker:
    """A random speaker; with several engines, first a random engine (each equally often)."""
    engines = sorted({speaker.engine for speaker in speakers})
    if len(engines) > 1:
        engine = engines[rng.randrange(len(engines))]
        speakers = [speaker for speaker in speakers if speaker.engine == engine]
    return speakers[rng.randrange(len(speakers))]


def _draw(rng: random.Random, split: str, text: str, speakers: Sequence[Speaker]) -> Utterance:
    """One utterance of ``text`` with a random speaker, speed and pitch."""
    speaker = _pick_speaker(rng, speakers)
    speed = rng.randint(*SPEED_RANGE)
    pitch = rng.randint(*PITCH_RANGE)
    if speaker.engine in ENGINES and not ENGINES[speaker.engine].pitch_control:
        pitch = None
    return Utterance(split=split, speaker=speaker, speed=speed, pitch=pitch, text=text)


def _plan_held_out(
    rng: random.Random,
    split: str,
    sentences: list[str],
    speakers: Sequence[Speaker],
    target_s: float,
) -> list[Utterance]:
    """Consume sentences from the front of ``sentences`` until ``target_s`` is reached."""
    utterances: list[Utterance] = []
    seconds = 0.0
    while seconds < target_s:
        if not sentences:
            raise ValueError(
                f"{split}: not enough sentences for {target_s:.0f} s of audio; "
                "expected fewer hours or smaller dev/test fractions"
            )
        utterance = _draw(rng, split, sentences.pop(0), speakers)
        utterances.append(utterance)
        seconds += estimate_duration(utterance.text, utterance.speed)
    return utterances


def _plan_train(
    rng: random.Random, pool: list[str], speakers: Sequence[Speaker], target_s: float
) -> list[Utterance]:
    """Train utterances from ``pool``, reusing sentences with new speakers if needed."""
    if target_s > 0 and not pool:
        raise ValueError("train: no sentences left after dev/test; expected more sentences")
    utterances: list[Utterance] = []
    seen: set[str] = set()
    seconds = 0.0
    while seconds < target_s:
        order = list(pool)
        rng.shuffle(order)
        added = 0
        for text in order:
            utterance = _draw(rng, "train", text, speakers)
            if utterance.id in seen:
                continue
            seen.add(utterance.id)
            utterances.append(utterance)
            added += 1
            seconds += estimate_duration(text, utterance.speed)
            if seconds >= target_s:
                break
        if added == 0:
            raise ValueError("train: cannot reach the requested hours with distinct utterances")
    return utterances


def _held_out_speakers(
    rng: random.Random, speakers: Sequence[Speaker], test_speakers: int
) -> tuple[list[Speaker], list[Speaker]]:
    """``(held out, test)`` speakers. One engine: ``test_speakers`` held out, who are the test speakers.
    Several engines: each holds out its share of ``test_speakers`` (by its number of speakers, rounded;
    the largest engine at least one); an engine whose share rounds to none (flite's 4 voices beside
    espeak-ng's ~140) holds out no voice, and all its voices say test sentences too (new sentences and
    speeds from voices heard in training)."""
    by_engine: dict[str, list[Speaker]] = {}
    for speaker in speakers:
        by_engine.setdefault(speaker.engine, []).append(speaker)
    if len(by_engine) == 1:
        held = sorted(rng.sample(list(speakers), test_speakers))
        return held, held
    largest = max(by_engine, key=lambda e: (len(by_engine[e]), e))
    held: list[Speaker] = []
    test: list[Speaker] = []
    for engine, group in sorted(by_engine.items()):
        count = round(test_speakers * len(group) / len(speakers))
        if engine == largest and test_speakers:
            count = max(1, count)
        if count >= len(group):
            raise ValueError(
                f"test_speakers: engine {engine} would hold out {count} of its {len(group)} speakers, "
                "expected some left for train and dev"
            )
        chosen = rng.sample(group, count)
        held += chosen
        test += chosen if count else group
    return sorted(held), sorted(test)


def plan_corpus(
    sentences: Sequence[str],
    speakers: Sequence[Speaker],
    hours: float,
    seed: int = 0,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    test_speakers: int = DEFAULT_TEST_SPEAKERS,
    cross_speakers: Sequence[Speaker] = (),
) -> list[Utterance]:
    """Plan every utterance of the corpus; deterministic in all arguments.

    ``test_speakers`` speakers (chosen by ``seed``; per engine, see :func:`_held_out_speakers`)
    are used only by test; train and dev share the others, each engine drawn equally often (an
    engine too small to hold out a voice says test sentences with its training voices).
    Test, then dev, take distinct sentences; train uses only the remaining ones, repeated with
    other speakers, speeds and pitches when one pass does not reach its share of ``hours``.
    With ``cross_speakers`` (an engine not among ``speakers``), the ``cross`` split says every
    test sentence again with one of them at the same speed; train, dev and test do not depend
    on it.
    """
    ordered_speakers = sorted(set(speakers))
    _check_plan_arguments(
        len(ordered_speakers), hours, dev_fraction, test_fraction, test_speakers
    )
    shared = {s.engine for s in ordered_speakers} & {s.engine for s in cross_speakers}
    if shared:
        raise ValueError(f"cross_speakers: expected an engine not in training, got {sorted(shared)}")
    rng = random.Random(seed)
    held_out, test_voices = _held_out_speakers(rng, ordered_speakers, test_speakers)
    train_speakers = [s for s in ordered_speakers if s not in held_out]
    remaining = sorted(set(sentences))
    rng.shuffle(remaining)
    targets = split_targets(hours, dev_fraction, test_fraction)
    test = _plan_held_out(rng, "test", remaining, test_voices, targets["test"])
    dev = _plan_held_out(rng, "dev", remaining, train_speakers, targets["dev"])
    train = _plan_train(rng, remaining, train_speakers, targets["train"])
    cross: list[Utterance] = []
    if cross_speakers:
        cross_rng, pool = random.Random(f"{seed}-cross"), sorted(set(cross_speakers))
        for utterance in test:
            speaker = _pick_speaker(cross_rng, pool)
            pitch = utterance.pitch if ENGINES.get(speaker.engine, ENGINES["espeak-ng"]).pitch_control else None
            if pitch is None and ENGINES.get(speaker.engine, ENGINES["espeak-ng"]).pitch_control:
                # a cross engine with pitch control (espeak-ng) saying a test sentence of an engine without it
                # draws its own pitch (espeak-ng would read "-p None" as pitch 0: a monotone bass)
                pitch = cross_rng.randint(*PITCH_RANGE)
            cross.append(Utterance("cross", speaker, utterance.speed, pitch, utterance.text))
    return train + dev + test + cross


def _check_plan_arguments(
    num_speakers: int, hours: float, dev_fraction: float, test_fraction: float, test_speakers: int
) -> None:
    """Raise :class:`ValueError` for impossible plan arguments."""
    if not hours > 0:
        raise ValueError(f"hours: expected > 0, got {hours}")
    for name, value in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}: expected 0 <= value < 1, got {value}")
    if dev_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"dev_fraction + test_fraction: expected < 1, got {dev_fraction + test_fraction}"
        )
    if test_fraction > 0 and test_speakers < 1:
        raise ValueError(f"test_speakers: expected >= 1 with a test split, got {test_speakers}")
    if not 0 <= test_speakers < num_speakers:
        raise ValueError(
            f"test_speakers: expected 0 <= test_speakers < {num_speakers} (speakers available), "
            f"got {test_speakers}"
        )


# --------------------------------------------------------------------------- synthesis


def sox_command(source: Path, destination: Path) -> list[str]:
    """sox command line: a wav file to 16 kHz mono 16-bit PCM, repeatable, undithered."""
    return [
        "sox", "-R", "-D", "-V1",
        "-t", "wav", str(source),
        "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
        "-t", "wav", str(destination),
    ]  # fmt: skip


def _run(command: list[str], stdin: bytes | None, utterance: Utterance) -> bytes:
    """Run ``command``; raise :class:`SynthesisError` with its stderr if it fails."""
    result = subprocess.run(command, input=stdin, capture_output=True)
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise SynthesisError(
            f"{utterance.id}: {command[0]} exited with {result.returncode}, expected 0: {stderr}"
        )
    return result.stdout


def existing_frames(path: Path) -> int | None:
    """Number of samples of a valid 16 kHz mono wav at ``path``, else None."""
    try:
        return check_audio_header(path, expected_sample_rate=SAMPLE_RATE).frames
    except AudioError:
        return None


def synthesize_utterance(utterance: Utterance, wav_path: Path) -> int:
    """Synthesise ``utterance`` to ``wav_path`` atomically; return its number of samples."""
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(wav_path)
    raw = tmp.with_name(tmp.stem + ".raw.wav")
    engine = get_engine(utterance.speaker.engine)
    try:
        argv, stdin = engine.command(utterance, raw)
        _run(argv, stdin, utterance)
        # festival's text2wave exits 0 after some errors: the file tells whether it worked
        if not raw.is_file() or raw.stat().st_size <= 44:
            raise SynthesisError(f"{utterance.id}: {engine.name} produced no audio, expected a wav")
        _run(sox_command(raw, tmp), None, utterance)
        frames = check_audio_header(tmp, expected_sample_rate=SAMPLE_RATE).frames
        os.replace(tmp, wav_path)
    finally:
        tmp.unlink(missing_ok=True)
        raw.unlink(missing_ok=True)
    return frames


def _synthesize_job(job: tuple[Utterance, Path]) -> tuple[str, int]:
    """Pool worker: synthesise one utterance, return ``(id, frames)``."""
    utterance, wav_path = job
    return utterance.id, synthesize_utterance(utterance, wav_path)


def _iter_synthesis(
    jobs: list[tuple[Utterance, Path]], num_jobs: int
) -> Iterator[tuple[str, int]]:
    """Run the synthesis jobs, in a process pool when ``num_jobs`` > 1."""
    if num_jobs <= 1 or len(jobs) <= 1:
        yield from map(_synthesize_job, jobs)
        return
    with multiprocessing.Pool(num_jobs) as pool:
        yield from pool.imap_unordered(_synthesize_job, jobs, chunksize=4)


def synthesize_all(
    utterances: Sequence[Utterance], out_dir: Path, num_jobs: int
) -> dict[str, int]:
    """Make sure every utterance has a valid wav; return samples per utterance id.

    Valid existing wavs are kept; the rest are synthesised in ``num_jobs``
    processes, logging progress every :data:`PROGRESS_EVERY` utterances.
    """
    frames: dict[str, int] = {}
    jobs = []
    for utterance in utterances:
        found = existing_frames(utterance.wav_path(out_dir))
        if found is None:
            jobs.append((utterance, utterance.wav_path(out_dir)))
        else:
            frames[utterance.id] = found
    LOGGER.info(
        "%s: %d of %d utterances already synthesised, %d to do with %d job(s)",
        out_dir, len(frames), len(utterances), len(jobs), num_jobs,
    )  # fmt: skip
    start = time.monotonic()
    for done, (utterance_id, count) in enumerate(_iter_synthesis(jobs, num_jobs), start=1):
        frames[utterance_id] = count
        if done % PROGRESS_EVERY == 0 or done == len(jobs):
            LOGGER.info(
                "synthesised %d/%d utterances (%.1f s elapsed)",
                done, len(jobs), time.monotonic() - start,
            )  # fmt: skip
    return frames


# --------------------------------------------------------------------------- outputs


def utterance_cut(utterance: Utterance, wav_path: Path, frames: int) -> MonoCut:
    """The lhotse cut of one synthesised utterance (one supervision, language "en")."""
    duration = frames / SAMPLE_RATE
    recording = Recording(
        id=utterance.id,
        sources=[AudioSource(type="file", channels=[0], source=str(wav_path.resolve()))],
        sampling_rate=SAMPLE_RATE,
        num_samples=frames,
        duration=duration,
    )
    supervision = SupervisionSegment(
        id=utterance.id,
        recording_id=utterance.id,
        start=0.0,
        duration=duration,
        channel=0,
        text=utterance.text,
        speaker=utterance.speaker.id,
        language="en",
        custom={
            "engine": utterance.speaker.engine,
            "voice": utterance.speaker.voice,
            "variant": utterance.speaker.variant,
            "speed": utterance.speed,
            "pitch": utterance.pitch,
        },
    )
    return MonoCut(
        id=utterance.id,
        start=0.0,
        duration=duration,
        channel=0,
        recording=recording,
        supervisions=[supervision],
    )


def split_summary(cuts: CutSet) -> dict[str, object]:
    """Size of one split: utterances, hours, distinct sentences and speakers."""
    speakers = sorted({sup.speaker for cut in cuts for sup in cut.supervisions})
    return {
        "utterances": len(cuts),
        "hours": round(sum(cut.duration for cut in cuts) / 3600.0, 4),
        "sentences": len({cut.supervisions[0].text for cut in cuts}),
        "num_speakers": len(speakers),
        "speakers": speakers,
    }


def espeak_version() -> str:
    """espeak-ng's version line, without its data path."""
    result = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True)
    return result.stdout.split("Data at:")[0].strip()


def write_corpus_summary(
    out_dir: Path, splits: dict[str, CutSet], settings: dict[str, object]
) -> Path:
    """Write ``corpus.json``: the plan ``settings`` (seed, hours, ...) and a per-split summary."""
    names = [*settings.get("engines", ["espeak-ng"]), *filter(None, [settings.get("cross_engine")])]
    summary = {
        **settings,
        "sample_rate": SAMPLE_RATE,
        "synthesisers": {name: get_engine(name).version() for name in names},
        "splits": {name: split_summary(cuts) for name, cuts in splits.items()},
    }
    return write_text_atomic(out_dir / "corpus.json", json.dumps(summary, indent=2) + "\n")


def _split_cutsets(
    utterances: Sequence[Utterance], frames: dict[str, int], out_dir: Path
) -> dict[str, CutSet]:
    """Group the cuts by split (splits without utterances are left out)."""
    splits: dict[str, CutSet] = {}
    for split in SPLITS:
        cuts = [
            utterance_cut(u, u.wav_path(out_dir), frames[u.id])
            for u in utterances
            if u.split == split
        ]
        if cuts:
            splits[split] = CutSet.from_cuts(cuts)
    return splits


def check_plan(utterances: Sequence[Utterance]) -> None:
    """Raise :class:`RuntimeError` if splits share sentences, test shares speakers, or the cross
    split's engine occurs in train, dev or test."""
    texts = {split: {u.text for u in utterances if u.split == split} for split in SPLITS}
    speakers = {split: {u.speaker for u in utterances if u.split == split} for split in SPLITS}
    for a, b in (("train", "dev"), ("train", "test"), ("dev", "test"), ("train", "cross"), ("dev", "cross")):
        if texts[a] & texts[b]:
            raise RuntimeError(f"plan: {a} and {b} share sentences, expected disjoint splits")
    for engine in {s.engine for s in speakers["test"]}:
        # an engine holds out its test voices, or (too few voices to hold one out) has none held out
        test = {s for s in speakers["test"] if s.engine == engine}
        shared = test & (speakers["train"] | speakers["dev"])
        if shared and shared != test:
            raise RuntimeError(f"plan: some {engine} test speakers also occur in train/dev, expected held out")
    seen = {s.engine for split in ("train", "dev", "test") for s in speakers[split]}
    if {s.engine for s in speakers["cross"]} & seen:
        raise RuntimeError("plan: the cross split's engine also occurs in train/dev/test, expected held out")


def prepare_synthetic(
    out_dir: str | os.PathLike[str],
    hours: float = 3.0,
    seed: int = 0,
    num_jobs: int | None = None,
    dev_fraction: float = 0.05,
    test_fraction: float = 0.05,
    test_speakers: int = DEFAULT_TEST_SPEAKERS,
    fortune_dir: str | os.PathLike[str] = FORTUNE_DIR,
    engines: Sequence[str] = DEFAULT_ENGINES,
    cross_engine: str | None = DEFAULT_CROSS_ENGINE,
) -> dict[str, dict[str, Path]]:
    """Synthesise (or complete) the corpus in ``out_dir``; see the module docstring.

    ``engines`` say train, dev and test; ``cross_engine`` (None: no cross split) says the test
    sentences again. ``num_jobs`` defaults to ``os.cpu_count()``. Returns, per split,
    ``{"cuts": <split>_cuts.jsonl.gz, "manifest": <split>.json}``.
    """
    engines = list(dict.fromkeys(engines))
    if not engines:
        raise ValueError("engines: expected at least one training engine, got none")
    if cross_engine is not None and cross_engine in engines:
        raise ValueError(f"cross_engine: expected an engine not in {engines}, got {cross_engine!r}")
    used = engines + ([cross_engine] if cross_engine else [])
    for name in used:
        get_engine(name).require()
    require_tool("sox", "sox")
    if num_jobs is None:
        num_jobs = os.cpu_count() or 1
    if num_jobs < 1:
        raise ValueError(f"num_jobs: expected >= 1, got {num_jobs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sentences = load_sentences(Path(fortune_dir))
    speakers = [speaker for name in engines for speaker in get_engine(name).speakers()]
    cross_speakers = get_engine(cross_engine).speakers() if cross_engine else []
    utterances = plan_corpus(
        sentences, speakers, hours, seed, dev_fraction, test_fraction, test_speakers, cross_speakers
    )
    check_plan(utterances)
    frames = synthesize_all(utterances, out_dir, num_jobs)
    splits = _split_cutsets(utterances, frames, out_dir)
    outputs = {}
    for split, cuts in splits.items():
        outputs[split] = {
            "cuts": write_cuts(cuts, out_dir / f"{split}_cuts.jsonl.gz"),
            "manifest": cuts_to_nemo_manifest(cuts, out_dir / f"{split}.json"),
        }
    settings = {
        "seed": seed,
        "hours_requested": hours,
        "dev_fraction": dev_fraction,
        "test_fraction": test_fraction,
        "test_speakers": test_speakers,
        "engines": engines,
        "cross_engine": cross_engine,
    }
    write_corpus_summary(out_dir, splits, settings)
    sizes = ", ".join(f"{split}: {len(cuts)}" for split, cuts in splits.items())
    LOGGER.info("%s: corpus ready (%s utterances)", out_dir, sizes)
    return outputs
