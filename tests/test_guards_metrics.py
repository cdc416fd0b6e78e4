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


# ---------------------------------------------------------------------------------------------- the other fields
# (issue 30 item 2: `make mutation MUTATION_ARGS=evaluate` left every field of EvalResult but the error rates
# unchecked). A real tiny model at a profile other than its default, fixed transcripts and a fixed latency; the
# expected MACs come from the cost model on the utterances' own durations.


def _mixed_manifest(directory: Path, name: str, seconds: list[float], bad: int | None = None) -> Path:
    """Utterances of the given lengths, and (at 1-based line ``bad``) a line whose audio file does not exist."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    lines = []
    for i, sec in enumerate(seconds):
        wav = directory / f"{name}{i}.wav"
        soundfile.write(wav, (rng.standard_normal(int(sec * 16000)) * 0.1).astype(np.float32), 16000)
        lines.append(json.dumps({"audio_filepath": str(wav), "duration": sec, "text": f"utterance {i}"}))
    if bad is not None:
        lines.insert(bad - 1, json.dumps({"audio_filepath": str(directory / "missing.wav"), "duration": 1.0, "text": "x"}))
    path = directory / f"{name}.json"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fixed(monkeypatch, preset="tiny_mel"):
    """A tiny CTC model (two squeeze factors) with fixed transcripts (their batch sizes recorded) and latency
    (checked to be measured on that model)."""
    import nemo_sew.evaluate as ev
    from nemo_sew.quant.model import build_tiny_ctc

    model = build_tiny_ctc(preset, num_layers=1, squeeze_sampler={"squeeze": {"values": [1, 2]}})
    model.batch_sizes = []

    def fixed_transcripts(paths, batch_size=None, **kwargs):
        model.batch_sizes.append(batch_size)
        return ["utterance" for _ in paths]

    def fixed_latency(m):
        assert m is model, "latency measured on another model"
        return ev.Latency(batch=1, seconds=10.0, median_ms=12.5, rtfx=800.0, runs=7, spread=0.25)

    monkeypatch.setattr(model, "transcribe", fixed_transcripts)
    monkeypatch.setattr(ev, "measure_latency", fixed_latency)
    return model


@pytest.fixture()
def fixed_model(monkeypatch):
    return _fixed(monkeypatch)


def _expected_gmacs(model, seconds, profile, hop=0.01):
    from nemo_sew.evaluate import utterance_macs

    with model.profile_scope(profile):
        return [float(v) / 1e9 for v in utterance_macs(model.encoder, seconds, 16000, hop)]


EXACT = 1e-12  # the reported numbers are the cost model's counts in float64, scaled: no rounding beyond that


def test_evaluate_reports_what_it_ran_on_and_at(tmp_path, fixed_model):
    """Utterance counts without the skipped lines (both manifests' skips counted and listed), the manifest as given,
    parameters, per-utterance MACs of the real lengths at the requested profile, their mean and per-second rate,
    latency, RTFx and the profile; no I3D depth for an encoder without gates."""
    from nemo_sew.evaluate import evaluate
    from nemo_sew.profile import CompressionProfile

    model = fixed_model
    seconds = [1.0, 2.0, 1.5]
    test = _mixed_manifest(tmp_path / "test", "t", seconds, bad=2)
    cross = _mixed_manifest(tmp_path / "cross", "c", [1.0], bad=1)
    profile = CompressionProfile(squeeze=1)
    result = evaluate(model, test, batch_size=3, profile=profile, cross_manifest=cross)

    assert result.manifest == str(test) and result.cross_manifest == str(cross)
    assert result.utterances == 3 and result.cross_utterances == 1
    # [line number, audio file, reason] of each skipped line: the test manifest's, then the cross manifest's
    assert result.skipped == 2 and [(line[0], Path(line[1]).parent.name) for line in result.skipped_lines] == [
        (2, "test"), (1, "cross")]  # fmt: skip
    assert all(isinstance(line, list) and len(line) == 3 for line in result.skipped_lines)
    assert model.batch_sizes == [3, 3]
    assert result.params_m == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6, rel=EXACT)

    gmacs = _expected_gmacs(model, seconds, profile)
    assert gmacs != _expected_gmacs(model, seconds, None), "the profile must change the MACs for this test to mean much"
    assert result.encoder_gmacs_per_utterance == pytest.approx(gmacs, rel=EXACT)
    assert result.encoder_gmacs_mean == pytest.approx(sum(gmacs) / 3, rel=EXACT)
    assert result.encoder_gmacs_per_s == pytest.approx(sum(gmacs) / sum(seconds), rel=EXACT)
    assert result.latency_ms_10s == 12.5 and result.rtfx == 800.0 and result.latency_spread == 0.25
    assert result.profile == model.profile.__class__(**{**model.profile.to_dict(), "squeeze": 1}).to_dict()
    assert result.profile["squeeze"] == 1 and model.profile.squeeze != 1  # evaluated at it, then restored
    assert result.depth_per_utterance == [] and result.depth_mean is None


def test_evaluate_max_utterances_bounds_both_manifests(tmp_path, fixed_model):
    from nemo_sew.evaluate import evaluate

    test = _mixed_manifest(tmp_path / "test", "t", [1.0, 1.2, 1.4, 1.6])
    cross = _mixed_manifest(tmp_path / "cross", "c", [1.0, 1.1, 1.2])
    result = evaluate(fixed_model, test, cross_manifest=cross, max_utterances=2)
    assert result.utterances == 2 and result.cross_utterances == 2 and len(result.encoder_gmacs_per_utterance) == 2
    assert result.manifest == str(test)
    assert fixed_model.batch_sizes == [16, 16]  # the signature's default batch


def test_evaluate_counts_macs_of_a_waveform_model_at_its_sample_rate(tmp_path, monkeypatch):
    """A waveform front end's input length is samples: the MACs follow the model's sample rate."""
    from nemo_sew.evaluate import evaluate, utterance_macs

    model = _fixed(monkeypatch, "tiny_wfe_c")
    test = _mixed_manifest(tmp_path / "test", "t", [1.0, 2.0])
    expected = [float(v) / 1e9 for v in utterance_macs(model.encoder, [1.0, 2.0], int(model.cfg.sample_rate))]
    assert evaluate(model, test).encoder_gmacs_per_utterance == pytest.approx(expected, rel=EXACT)


@pytest.mark.parametrize(("stride", "hop"), [(0.02, 0.02), (None, 0.01)], ids=["stride_20ms", "stride_null"])
def test_evaluate_counts_macs_at_the_preprocessor_hop(tmp_path, fixed_model, stride, hop):
    """The frames per second of audio are the preprocessor's ``window_stride`` (10 ms when it is missing or null)."""
    from omegaconf import open_dict

    from nemo_sew.evaluate import evaluate

    model = fixed_model
    with open_dict(model.cfg):
        model.cfg.preprocessor.window_stride = stride
    test = _mixed_manifest(tmp_path / "test", "t", [1.0, 2.0])
    result = evaluate(model, test)
    assert result.encoder_gmacs_per_utterance == pytest.approx(_expected_gmacs(model, [1.0, 2.0], None, hop), rel=EXACT)


def test_evaluate_reports_the_realised_depth_of_a_gated_encoder(tmp_path, monkeypatch):
    """I3D: the MACs and the depth depend on each input; both come from running every utterance through the gates."""
    import torch

    import nemo_sew.evaluate as ev
    from nemo_sew.quant.model import build_tiny_ctc

    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_mel", num_layers=3, gates={"kind": "local", "hidden": 8})
    with torch.no_grad():  # gates that open for some utterances and not for others
        for name, p in model.encoder.named_parameters():
            if "gate" in name and name.endswith("fc2.bias"):
                p.normal_(0.0, 2.0)
    monkeypatch.setattr(model, "transcribe", lambda paths, **kw: ["x" for _ in paths])
    monkeypatch.setattr(ev, "measure_latency", lambda m: ev.Latency(batch=1, seconds=10.0, median_ms=1.0, rtfx=1e4,
                                                                     runs=1))  # fmt: skip
    test = _mixed_manifest(tmp_path / "test", "t", [1.0, 2.0, 1.5])
    result = ev.evaluate(model, test, profile={"depth_threshold": 0.5})
    with model.profile_scope({"depth_threshold": 0.5}):
        stats = ev.gated_utterance_stats(model, test)
    assert result.depth_per_utterance == pytest.approx(stats["depth"])
    assert result.depth_mean == pytest.approx(sum(stats["depth"]) / 3)
    assert result.encoder_gmacs_per_utterance == pytest.approx([m / 1e9 for m in stats["macs"]], rel=EXACT)
    assert result.encoder_gmacs_per_s == pytest.approx(sum(stats["macs"]) / 1e9 / 4.5, rel=EXACT)


def test_evaluate_without_latency_times_nothing_and_reports_zeros(tmp_path, fixed_model, monkeypatch):
    """``latency=False`` (a quick accuracy run): the model is not timed; latency, RTFx and spread read 0."""
    import nemo_sew.evaluate as ev

    def no_timing(m):
        raise AssertionError("timed the model although latency=False")

    monkeypatch.setattr(ev, "measure_latency", no_timing)
    result = ev.evaluate(fixed_model, _mixed_manifest(tmp_path / "test", "t", [1.0]), latency=False)
    assert (result.latency_ms_10s, result.rtfx, result.latency_spread) == (0.0, 0.0, 0.0)
    assert result.utterances == 1 and result.encoder_gmacs_per_utterance
