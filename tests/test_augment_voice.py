"""Voice-level augmentation (issue 29, item 3): each perturbation changes what it says it changes, by about the
amount asked, keeps the length and the rate, is reproducible from its seed and survives empty audio; the recipe's
``augment`` section switches them on only when it names them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
from nemo.collections.asr.parts.preprocessing.segment import AudioSegment

from nemo_sew.augment import (
    BAND_PERTURBATION,
    CODEC_PERTURBATION,
    PITCH_PERTURBATION,
    SPEED_PERTURBATION,
    TILT_PERTURBATION,
    VTLP_PERTURBATION,
    BandPerturbation,
    CodecPerturbation,
    PitchPerturbation,
    TiltPerturbation,
    VtlpPerturbation,
    augmentor_config,
    vtlp_warp,
)

SR = 16000
ROOT = Path(__file__).resolve().parent.parent
needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
FORMANTS = ((700.0, 120.0), (1800.0, 200.0), (2800.0, 250.0))  # (centre, bandwidth) Hz: a vowel-like envelope


def _envelope_db(f: np.ndarray) -> np.ndarray:
    return sum(30.0 * np.exp(-0.5 * ((f - c) / bw) ** 2) for c, bw in FORMANTS) - 0.003 * f


def voiced(f0: float = 150.0, seconds: float = 1.0, sr: int = SR) -> np.ndarray:
    """A harmonic tone (every harmonic of ``f0`` up to 7 kHz) with formants: a sustained synthetic vowel."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(10 ** (_envelope_db(k * f0) / 20) * np.sin(2 * np.pi * k * f0 * t + 0.3 * k) for k in range(1, int(7000 / f0)))
    return (0.5 * x / np.abs(x).max()).astype(np.float64)


def centroid(x: np.ndarray, lo: float = 1000.0, hi: float = 4000.0, sr: int = SR) -> float:
    """Spectral centroid of the ``lo``-``hi`` band (below VTLP's boundary, where the warp is a plain scaling, and
    above the first formant, which a harmonic spectrum samples too sparsely to move precisely)."""
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    band = (freqs >= lo) & (freqs < hi)
    return float((freqs[band] * power[band]).sum() / power[band].sum())


def f0_of(x: np.ndarray, sr: int = SR) -> float:
    """f0 as the spacing of the harmonics: the lag (60-500 Hz) of the magnitude spectrum's autocorrelation peak
    (no octave errors when the fundamental itself is weak, as after a formant-keeping shift down)."""
    n = 8 * sr  # zero-padded: 0.125 Hz bins
    mag = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    mag[np.fft.rfftfreq(n, 1 / sr) < 50] = 0.0
    ac = np.fft.irfft(np.abs(np.fft.rfft(mag, 2 * len(mag))) ** 2)[: len(mag)]
    lags = np.arange(len(mag)) * sr / n
    valid = (lags >= 60) & (lags <= 500)
    return float(lags[valid][ac[valid].argmax()])


def formants(x: np.ndarray, sr: int = SR) -> np.ndarray:
    """F2 and F3 (Hz) of a sustained vowel: the 2nd and 3rd peaks of an order-18 LPC envelope (librosa's LPC, an
    estimate independent of the module's cepstral one)."""
    import librosa
    from scipy import signal

    a = librosa.lpc(x * np.hanning(len(x)), order=18)
    freqs, h = signal.freqz(1, a, worN=4096, fs=sr)
    peaks, _ = signal.find_peaks(np.abs(h))
    return freqs[peaks][1:3]


def band_db(x: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return float(10 * np.log10(power[(freqs >= lo) & (freqs < hi)].mean() + 1e-30))


def _perturbed(perturbation, x: np.ndarray) -> np.ndarray:
    seg = AudioSegment(x.astype(np.float32), SR)
    perturbation.perturb(seg)
    assert seg.sample_rate == SR and seg.samples.dtype == np.float32 and seg.samples.shape == x.shape
    return seg.samples.astype(np.float64)


def test_vtlp_moves_the_formants_and_keeps_f0():
    x = voiced()
    up = VtlpPerturbation(1.1, 1.1).warp(x, SR, 1.1)
    down = VtlpPerturbation(0.9, 0.9).warp(x, SR, 0.9)
    assert up.shape == down.shape == x.shape
    assert 1.04 < centroid(up) / centroid(x) < 1.14  # formants 10% up: the centroid follows (the envelope
    assert 0.88 < centroid(down) / centroid(x) < 0.97  # estimate smooths them: less than the full 10%)
    assert f0_of(up) == pytest.approx(150.0, rel=0.005) and f0_of(down) == pytest.approx(150.0, rel=0.005)
    assert np.sqrt(np.mean(up**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)  # level kept
    assert np.all((1.05 < formants(up) / formants(x)) & (formants(up) / formants(x) < 1.12))  # F2, F3 up by ~alpha
    assert np.all((0.86 < formants(down) / formants(x)) & (formants(down) / formants(x) < 0.95))
    same = _perturbed(VtlpPerturbation(1.0, 1.0, rng=0), x)
    np.testing.assert_allclose(same, x, atol=1e-6)  # alpha 1: nothing to do


def test_vtlp_warp_is_jaitly_hintons():
    f = np.linspace(0, 8000, 1001)
    for alpha in (0.9, 1.1):
        w = vtlp_warp(f, alpha, 4800.0, 8000.0)
        assert w[0] == 0 and w[-1] == pytest.approx(8000.0) and np.all(np.diff(w) > 0)  # ends kept, monotonic
        low = f < 4800 * min(alpha, 1) / alpha
        np.testing.assert_allclose(w[low], alpha * f[low])


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_moves_f0_by_the_semitones_and_keeps_the_formants(semitones):
    x = voiced(seconds=1.5)
    y = PitchPerturbation().shift(x, SR, semitones)
    assert y.shape == x.shape
    moved = 12 * np.log2(f0_of(y) / f0_of(x))
    assert moved == pytest.approx(semitones, abs=0.25)
    plain = PitchPerturbation(keep_formants=False).shift(x, SR, semitones)
    assert 12 * np.log2(f0_of(plain) / f0_of(x)) == pytest.approx(semitones, abs=0.25)
    scale = 2 ** (semitones / 12)
    np.testing.assert_allclose(formants(plain) / formants(x), scale, rtol=0.04)  # librosa's shift moves them all
    np.testing.assert_allclose(formants(y) / formants(x), 1.0, atol=0.065)  # the envelope is put back (most of it)
    assert np.all(np.abs(np.log(formants(y) / formants(x))) < 0.6 * np.abs(np.log(scale)))  # F3 down: 6% of 11%
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)  # level kept


def test_tilt_changes_the_high_to_low_energy_ratio_by_the_slope():
    x = np.random.default_rng(0).standard_normal(2 * SR)
    for slope in (-3.0, 2.0, 6.0):
        y = _perturbed(TiltPerturbation(slope, slope, rng=0), x)
        change = (band_db(y, 4000, 8000) - band_db(y, 250, 500)) - (band_db(x, 4000, 8000) - band_db(x, 250, 500))
        assert change == pytest.approx(4 * slope, abs=1.0)  # the band centres are 4 octaves apart
        assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-3)  # level kept


def test_band_removes_energy_outside_the_band():
    x = np.random.default_rng(1).standard_normal(2 * SR)
    y = _perturbed(BandPerturbation(4000, 4000, 150, 150, rng=0), x)
    assert band_db(y, 5000, 8000) < band_db(x, 5000, 8000) - 40  # order 8: -48 dB/octave above 4 kHz
    assert band_db(y, 20, 60) < band_db(x, 20, 60) - 25  # order 4 high-pass at 150 Hz
    assert band_db(y, 1000, 2000) == pytest.approx(band_db(x, 1000, 2000), abs=0.5)  # the band itself untouched
    with pytest.raises(ValueError, match="max_highpass_hz < min_lowpass_hz"):
        BandPerturbation(200, 400, 300, 500)


@needs_sox
@pytest.mark.parametrize("codec", ["ulaw", "alaw", "gsm", "vorbis"])
def test_codec_round_trip_keeps_the_speech_but_not_the_bits(codec):
    x = voiced(seconds=1.0) * np.hanning(SR)
    y = CodecPerturbation(codecs=[codec]).round_trip(x, SR, codec)
    assert y.shape == x.shape
    assert np.corrcoef(x, y)[0, 1] > 0.9  # aligned and close: the same speech
    assert np.abs(y - x).max() > 1e-3  # coded: not the same samples
    assert np.sqrt(np.mean(y**2)) == pytest.approx(np.sqrt(np.mean(x**2)), rel=0.2)  # level restored
    if codec in ("ulaw", "alaw", "gsm"):  # 8 kHz codecs: nothing above 4 kHz comes back
        assert band_db(y, 4300, 7000) < band_db(x, 4300, 7000) - 30


@needs_sox
def test_codec_errors_are_clear(monkeypatch):
    with pytest.raises(ValueError, match="codecs among"):
        CodecPerturbation(codecs=["mp9"])
    monkeypatch.setattr("nemo_sew.augment.sox_formats", lambda sox: frozenset({"ul"}))
    with pytest.raises(RuntimeError, match="cannot write"):
        CodecPerturbation(codecs=["ulaw", "gsm"])
    monkeypatch.setattr("nemo_sew.augment.shutil.which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install sox"):
        CodecPerturbation()


def _all(rng):
    out = [VtlpPerturbation(rng=rng), PitchPerturbation(rng=rng), TiltPerturbation(rng=rng), BandPerturbation(rng=rng)]
    return out + ([CodecPerturbation(rng=rng)] if shutil.which("sox") else [])


def test_seeded_perturbations_are_reproducible():
    x = voiced(seconds=0.5)
    for a, b, c in zip(_all(7), _all(7), _all(8)):
        first, again, other = _perturbed(a, x), _perturbed(b, x), _perturbed(c, x)
        np.testing.assert_array_equal(first, again, err_msg=type(a).__name__)
        assert not np.array_equal(first, other), type(a).__name__  # another seed, another draw


def test_perturbations_pickle_for_spawned_loader_workers():
    import pickle

    x = voiced(seconds=0.5)
    for a in _all(3):
        b = pickle.loads(pickle.dumps(a))
        np.testing.assert_array_equal(_perturbed(a, x), _perturbed(b, x))  # the generator's state travels too
    for p in _all(None):
        pickle.dumps(p)  # the global generator is not kept on the object


@pytest.mark.filterwarnings("error::UserWarning")  # librosa warns of frames longer than the audio: none here
@pytest.mark.parametrize("n", [0, 1, 100, 511, 700, 1100])
def test_empty_and_very_short_audio(n):
    x = 0.1 * np.random.default_rng(2).standard_normal(n)
    for p in _all(0):
        seg = AudioSegment(np.zeros(16, dtype=np.float32), SR)  # AudioSegment itself wants some audio
        seg._samples = x.astype(np.float32)
        p.perturb(seg)
        assert seg.samples.shape == (n,) and seg.sample_rate == SR and np.all(np.isfinite(seg.samples))


def test_multichannel_audio_is_perturbed_per_channel():
    x = np.stack([voiced(seconds=0.5), 0.5 * voiced(200.0, seconds=0.5)], axis=1)
    seg = AudioSegment(np.zeros((16, 2), dtype=np.float32), SR)
    seg._samples = x.astype(np.float32)
    TiltPerturbation(6.0, 6.0).perturb(seg)
    assert seg.samples.shape == x.shape
    np.testing.assert_allclose(seg.samples[:, 1], TiltPerturbation.tilt(x[:, 1], SR, 6.0), atol=1e-6)


# --- the recipe section -> NeMo's augmentor ------------------------------------------------------------------------

DEMO_SECTION = {"assets_dir": None, "seed": 0, "speed": {"prob": 0.5, "min_rate": 0.9, "max_rate": 1.1},
                "reverb": {"prob": 0.25}, "noise": {"prob": 0.4, "min_snr_db": 10.0, "max_snr_db": 30.0}}  # fmt: skip


def test_an_old_section_gives_exactly_the_previous_augmentor(tmp_path):
    """What augmentor_config gave for the demo's section before the voice-level perturbations existed."""
    assert augmentor_config(DEMO_SECTION, tmp_path) == {
        SPEED_PERTURBATION: {"prob": 0.5, "sr": SR, "min_speed_rate": 0.9, "max_speed_rate": 1.1, "num_rates": -1},
        "impulse": {"prob": 0.25, "manifest_path": str(tmp_path / "rir.json"), "shift_impulse": True},
        "noise": {"prob": 0.4, "manifest_path": str(tmp_path / "noise.json"), "min_snr_db": 10.0, "max_snr_db": 30.0},
    }
    assert augmentor_config({"speed": None, "reverb": None, "noise": None}, tmp_path) == {}


def test_the_voice_keys_build_a_nemo_augmentor_that_contains_them(tmp_path):
    section = {**DEMO_SECTION, "vtlp": {"prob": 0.4, "min_warp": 0.88}, "pitch": {}, "tilt": {"prob": 0.3},
               "band": {"max_lowpass_hz": 7000}, "codec": {"prob": 0.1, "codecs": ["gsm"]}}  # fmt: skip
    cfg = augmentor_config(section, tmp_path)
    assert list(cfg) == [SPEED_PERTURBATION, VTLP_PERTURBATION, PITCH_PERTURBATION, TILT_PERTURBATION, "impulse",
                         "noise", BAND_PERTURBATION, CODEC_PERTURBATION]  # speaker, room, channel  # fmt: skip
    assert cfg[VTLP_PERTURBATION] == {"prob": 0.4, "min_warp": 0.88, "max_warp": 1.1, "boundary_hz": 4800.0}
    assert cfg[PITCH_PERTURBATION]["prob"] == 0.3 and cfg[BAND_PERTURBATION]["max_lowpass_hz"] == 7000
    if shutil.which("sox") is None:
        del cfg[CODEC_PERTURBATION]
    augmentor = process_augmentations(cfg)
    kinds = [type(p).__name__ for _, p in augmentor._pipeline]
    assert kinds[1:4] == ["VtlpPerturbation", "PitchPerturbation", "TiltPerturbation"]
    assert "BandPerturbation" in kinds and ("CodecPerturbation" in kinds or shutil.which("sox") is None)
    assert [prob for prob, _ in augmentor._pipeline][1] == 0.4
    seg = AudioSegment(voiced(seconds=0.5).astype(np.float32), SR)
    only_voice = process_augmentations({k: {**v, "prob": 1.0} for k, v in cfg.items() if k.startswith("nemo_sew_")
                                        and k != SPEED_PERTURBATION})  # fmt: skip
    only_voice.perturb(seg)
    assert seg.samples.shape == (SR // 2,) and np.all(np.isfinite(seg.samples))


def test_voice_keys_are_off_unless_named_and_checked(tmp_path):
    only = {"speed": None, "reverb": None, "noise": None}
    assert augmentor_config({**only, "tilt": None, "band": {"prob": 0}}, tmp_path) == {}
    for bad, match in (({"vtlp": {"min_warp": 1.2, "max_warp": 1.1}}, "min_warp <= max_warp"),
                       ({"pitch": {"octaves": 1}}, "unknown keys"), ({"tilt": {"prob": 2}}, "0 <= prob <= 1"),
                       ({"formant": {}}, "unknown keys")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            augmentor_config({**only, **bad}, tmp_path)


def test_the_voiceaug_recipe_is_the_demo_recipe_plus_the_voice_perturbations(tmp_path):
    from omegaconf import OmegaConf

    from nemo_sew.augment import apply_augment
    from nemo_sew.train import load_config

    manifest = [f"model.train_ds.manifest_filepath={tmp_path / 'train.json'}", f"augment.assets_dir={tmp_path}"]
    demo = load_config(ROOT / "recipes" / "ctc_char_tiny_mel.yaml", manifest)
    voice = load_config(ROOT / "recipes" / "ctc_char_tiny_mel_voiceaug.yaml", manifest)
    a, b = OmegaConf.to_container(demo), OmegaConf.to_container(voice)
    extra = {k: b["augment"].pop(k) for k in ("vtlp", "pitch", "tilt", "band", "codec")}
    assert b["name"] == "ctc_char_tiny_mel_voiceaug" and all(v["prob"] > 0 for v in extra.values())
    b["name"] = a["name"]
    assert a == b  # nothing else differs from the demo recipe
    augmentor = apply_augment(voice).model.train_ds.augmentor
    assert {VTLP_PERTURBATION, PITCH_PERTURBATION, TILT_PERTURBATION, BAND_PERTURBATION, CODEC_PERTURBATION} <= set(augmentor)
