"""Reported WER and CER are what their names say (issue 30, item 5).

Every benchmark and ``nemo-sew evaluate`` report their error rates through :func:`nemo_sew.evaluate.error_rates`
and :func:`nemo_sew.evaluate.evaluate`. WER and CER swapped (or one of them computed at the wrong level) would make
every table wrong without failing anything, so they are checked here on fixed hypothesis / reference pairs with
WER != CER and expected values computed by hand (corpus rates: total edits / total reference units).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from nemo_sew.evaluate import error_rates

# refs: "the cat sat" (3 words, 11 chars incl. spaces), "a dog" (2 words, 5 chars)
# hyps: "the bat sat" (1 word / 1 char substituted), "a dog ran" (1 word / 4 chars " ran" inserted)
REFS = ["the cat sat", "a dog"]
HYPS = ["the bat sat", "a dog ran"]
WER = (1 + 1) / (3 + 2)  # 0.4
CER = (1 + 4) / (11 + 5)  # 0.3125


def test_error_rates_are_wer_then_cer_by_hand():
    wer, cer = error_rates(HYPS, REFS)
    assert wer == pytest.approx(WER) and cer == pytest.approx(CER)


@pytest.mark.parametrize(
    ("hyp", "ref", "wer", "cer"),
    [
        ("hello word", "hello world", 1 / 2, 1 / 11),  # one word wrong, one character deleted
        ("hello world", "hello world", 0.0, 0.0),
        ("", "ab cd", 1.0, 1.0),  # everything deleted
        ("ab cd ef", "ab cd", 1 / 2, 3 / 5),  # one word inserted: " ef" is 3 characters
        ("abcd", "ab cd", 2 / 2, 1 / 5),  # two words merged: 1 substitution + 1 deletion; one space deleted
    ],
)
def test_error_rates_single_pairs(hyp: str, ref: str, wer: float, cer: float):
    got_wer, got_cer = error_rates([hyp], [ref])
    assert (got_wer, got_cer) == (pytest.approx(wer), pytest.approx(cer))


def test_error_rates_are_corpus_rates_not_means_of_utterance_rates():
    """Long utterances weigh more: (0 + 1) / (9 + 1) words, not the mean of 0 and 1."""
    refs = ["one two three four five six seven eight nine", "ten"]
    hyps = ["one two three four five six seven eight nine", "tan"]
    wer, cer = error_rates(hyps, refs)
    assert wer == pytest.approx(1 / 10) and cer == pytest.approx(1 / (len(refs[0]) + 3))


def _manifest(directory: Path, name: str, texts: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(texts):
        wav = directory / f"{name}{i}.wav"
        soundfile.write(wav, (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(wav), "duration": 1.0, "text": text}))
    path = directory / f"{name}.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_reports_wer_and_cer_in_their_fields(tmp_path, monkeypatch):
    """``evaluate`` on a real (tiny, untrained) model whose transcripts are fixed: ``wer`` / ``cer`` and
    ``cross_wer`` / ``cross_cer`` hold the hand-computed rates of their own manifests."""
    import nemo_sew.evaluate as ev
    from nemo_sew.quant.model import build_tiny_ctc

    model = build_tiny_ctc("tiny_mel", num_layers=1)
    cross_refs, cross_hyps = ["hello world"], ["hello word"]  # WER 1/2, CER 1/11
    test = _manifest(tmp_path / "test", "t", REFS)
    cross = _manifest(tmp_path / "cross", "c", cross_refs)
    hyps = {f"t{i}": h for i, h in enumerate(HYPS)} | {f"c{i}": h for i, h in enumerate(cross_hyps)}

    def fixed_transcripts(paths, *args, **kwargs):  # the model's decoding, replaced by known transcripts
        return [hyps[Path(p).stem] for p in paths]

    monkeypatch.setattr(model, "transcribe", fixed_transcripts)
    monkeypatch.setattr(ev, "measure_latency", lambda m: ev.Latency(batch=1, seconds=10.0, median_ms=1.0, rtfx=1e4,
                                                                     runs=1))  # not what is tested here
    result = ev.evaluate(model, test, batch_size=2, cross_manifest=cross)
    assert result.utterances == 2 and result.cross_utterances == 1
    assert result.wer == pytest.approx(WER) and result.cer == pytest.approx(CER)
    assert result.cross_wer == pytest.approx(1 / 2) and result.cross_cer == pytest.approx(1 / 11)
    assert result.cross_ratio == pytest.approx((1 / 11) / CER)
    data = json.loads(result.to_json())
    assert data["wer"] == pytest.approx(WER) and data["cer"] == pytest.approx(CER)
