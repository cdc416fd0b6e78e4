"""Waveform augmentation for training: speed perturbation, additive noise at a random SNR, reverberation.

A recipe's top-level ``augment`` section becomes NeMo's ``model.train_ds.augmentor`` (NeMo's own
``SpeedPerturbation``, ``ImpulsePerturbation`` and ``NoisePerturbation``, applied in that order by the
data loader to every training utterance with its probability; the speed perturbation resamples with
soxr, :class:`SoxrSpeedPerturbation`)::

    augment:
      assets_dir: null          # generated noise + impulse responses; null: `augment/` beside the train manifest
      seed: 0                   # of the generated files
      speed: {prob: 0.5, min_rate: 0.9, max_rate: 1.1}
      reverb: {prob: 0.25}
      noise: {prob: 0.4, min_snr_db: 10, max_snr_db: 30}

There is no download: the noise and the room impulse responses are generated (:func:`prepare_assets`)
and written as 16 kHz wavs with NeMo manifests, once per ``assets_dir`` and seed. A section that is
absent, or ``null``, leaves the training data as it is; one perturbation is switched off with
``prob: 0`` or ``null``.

Voice-level perturbations (issue 29, item 3: hear the speech, not the synthesiser) are off unless the
section names them (``vtlp: {}`` switches one on with its defaults, :data:`VOICE_DEFAULTS`)::

      vtlp: {prob: 0.3, min_warp: 0.9, max_warp: 1.1}        # formants moved (vocal tract length), f0 kept
      pitch: {prob: 0.3, min_semitones: -3, max_semitones: 3} # f0 moved, formants kept
      tilt: {prob: 0.3, min_db_per_octave: -3, max_db_per_octave: 3}
      band: {prob: 0.3, min_lowpass_hz: 3000, max_lowpass_hz: 7500, min_highpass_hz: 50, max_highpass_hz: 300}
      codec: {prob: 0.2, codecs: [ulaw, alaw, gsm, vorbis]}  # a round trip through sox

NeMo applies them in the order speed, vtlp, pitch, tilt (the speaker), reverb, noise (the room), band,
codec (the channel). Each keeps the sample count and the sample rate, leaves empty audio (and, for vtlp and
pitch, audio shorter than one 32 or 64 ms frame) as it is, and draws its random values from Python's ``random``
like NeMo's own perturbations (seeded by ``seed_everything``; an int ``rng`` gives it its own generator).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from nemo.collections.asr.parts.preprocessing import perturb as _perturb
from omegaconf import DictConfig, OmegaConf, open_dict

from manifests.io import locked

log = logging.getLogger("nemo_sew.augment")
SPEED_PERTURBATION = "nemo_sew_speed"


class SoxrSpeedPerturbation(_perturb.SpeedPerturbation):
    """NeMo's ``SpeedPerturbation`` (resampling to ``rate * sr`` and reading it back as ``sr``) with soxr's
    resampler (librosa's ``soxr_hq``). NeMo offers ``fft`` / ``scipy`` (0.1-1 s per 3 s utterance on CPU at
    arbitrary rates: FFT sizes with large prime factors) and ``kaiser_*`` (needs resampy, not installed);
    soxr takes about 1 ms. Registered with NeMo as ``nemo_sew_speed``."""

    def __init__(self, sr: int, min_speed_rate: float = 0.9, max_speed_rate: float = 1.1, num_rates: int = -1, rng=None):
        super().__init__(sr, "fft", min_speed_rate, max_speed_rate, num_rates, rng)
        self._res_type = "soxr_hq"


if SPEED_PERTURBATION not in _perturb.perturbation_types:
    _perturb.register_perturbation(SPEED_PERTURBATION, SoxrSpeedPerturbation)

SAMPLE_RATE = 16000
NOISE_KINDS = ("white", "pink", "brown", "babble", "hum")
#: What the section may contain, with the defaults of each perturbation.
DEFAULTS: dict[str, dict[str, float]] = {
    "speed": {"prob": 0.5, "min_rate": 0.9, "max_rate": 1.1},
    "reverb": {"prob": 0.25},
    "noise": {"prob": 0.4, "min_snr_db": 10.0, "max_snr_db": 30.0},
}


# --------------------------------------------------------------------------- voice-level perturbations
# NeMo names of the perturbations below, and what an `augment` section may say about each (the defaults apply
# when the section names one: `vtlp: {}`); unlike DEFAULTS, a perturbation the section does not name is off.
VTLP_PERTURBATION = "nemo_sew_vtlp"
PITCH_PERTURBATION = "nemo_sew_pitch"
TILT_PERTURBATION = "nemo_sew_tilt"
BAND_PERTURBATION = "nemo_sew_band"
CODEC_PERTURBATION = "nemo_sew_codec"
VOICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "vtlp": {"prob": 0.3, "min_warp": 0.9, "max_warp": 1.1, "boundary_hz": 4800.0},
    "pitch": {"prob": 0.3, "min_semitones": -3.0, "max_semitones": 3.0, "keep_formants": True},
    "tilt": {"prob": 0.3, "min_db_per_octave": -3.0, "max_db_per_octave": 3.0},
    "band": {"prob": 0.3, "min_lowpass_hz": 3000.0, "max_lowpass_hz": 7500.0, "min_highpass_hz": 50.0,
             "max_highpass_hz": 300.0},  # fmt: skip
    "codec": {"prob": 0.2, "codecs": ["ulaw", "alaw", "gsm", "vorbis"]},
}
#: Codec name -> (sox file type, rate of the coded signal (None: the input's), encoder settings ``-C`` drawn from per
#: utterance (none: the codec's only one), the decoder's delay in seconds (removed)).
CODECS: dict[str, tuple[str, int | None, tuple[int, ...], float]] = {
    "ulaw": ("ul", 8000, (), 0.0),  # G.711 mu-law, telephone band
    "alaw": ("al", 8000, (), 0.0),  # G.711 A-law
    "gsm": ("gsm", 8000, (), 0.0),  # GSM 06.10 full rate, 13 kbit/s
    "vorbis": ("ogg", None, (-1, 0, 1), 0.0),  # Ogg Vorbis at its lowest qualities
    "amr-nb": ("amr-nb", 8000, (5, 6, 7), 0.005),  # AMR narrow band, 7.95-12.2 kbit/s (sox built with opencore-amr)
}
_FRAME = 512  # STFT of the envelope changes (vtlp, pitch's formant correction): 32 ms frames at 16 kHz, hop 16 ms
_HOP = 256
_PITCH_FRAME = 1024  # librosa's phase vocoder in pitch_shift: 64 ms frames, hop 16 ms (2048 / 512 smear speech more,
_PITCH_HOP = 256  # 512 / 128 costs 1.3x for no audible gain)
_MAX_GAIN_DB = 24.0  # envelope corrections are clipped to +-24 dB (near-silent bins are not blown up)


class _Drawn(_perturb.Perturbation):
    """NeMo's ``rng`` convention without its side effect: NeMo's perturbations call ``random.seed(rng)``
    (reseeding everyone's global generator); here an int ``rng`` gives the perturbation its own generator, None
    the global ``random`` (what the recipe's section gives: seeded by ``seed_everything(seed, workers=True)``,
    per loader worker). No module is kept on the object: it pickles for spawned loader workers."""

    def __init__(self, rng=None):
        self._own = None if rng is None else random.Random(rng)

    @property
    def _rng(self) -> random.Random:
        return random if self._own is None else self._own  # type: ignore[return-value]


def _per_channel(data, fn) -> None:
    """``data._samples = fn(samples)`` for a mono AudioSegment, per channel for ``[samples, channels]``; empty
    audio is left as it is. ``fn`` must keep the length (checked) and returns float samples."""
    x = data._samples
    if x.size == 0:
        return
    if x.ndim == 1:
        y = fn(np.asarray(x, dtype=np.float64))
    else:
        y = np.stack([fn(np.asarray(x[:, c], dtype=np.float64)) for c in range(x.shape[1])], axis=1)
    if y.shape != x.shape:
        raise RuntimeError(f"augment: a perturbation changed the shape {x.shape} -> {y.shape}, expected it kept")
    data._samples = y.astype(x.dtype, copy=False)


def _stft(x: np.ndarray) -> np.ndarray:
    import librosa

    return librosa.stft(x, n_fft=_FRAME, hop_length=_HOP, window="hann", center=True)


def _istft(spec: np.ndarray, length: int) -> np.ndarray:
    import librosa

    return librosa.istft(spec, hop_length=_HOP, n_fft=_FRAME, window="hann", center=True, length=length)


def log_envelope(spec: np.ndarray, sample_rate: int, iterations: int = 3) -> np.ndarray:
    """The log spectral envelope of each STFT frame (``spec``: ``[bins, frames]``; natural log of the magnitude),
    a "true envelope" (Roebel & Rodet 2005): the log spectrum is smoothed by liftering its cepstrum to the first
    1.25 ms (a resolution of ~800 Hz: the harmonics are not followed), and ``iterations`` times raised to the
    maximum of itself and the smoothed curve, so that the envelope runs over the harmonic peaks rather than through
    the valleys between them (their depth, which depends on f0, would otherwise bias it). Each frame is floored at
    60 dB below its peak. On synthetic vowels it follows F2 and F3 for f0 up to ~300 Hz; above that the harmonics
    sample the envelope too sparsely. Hand-written: librosa and scipy have no spectral envelope estimate."""
    mag = np.abs(spec).T  # [frames, bins]: the FFTs run along contiguous rows
    floor = np.maximum(mag.max(axis=1, keepdims=True) * 1e-3, 1e-10)
    log_mag = np.log(np.maximum(mag, floor))
    keep = max(2, int(0.00125 * sample_rate))
    target = log_mag
    for i in range(iterations + 1):
        cepstrum = np.fft.irfft(target, n=_FRAME, axis=1)
        cepstrum[:, keep : _FRAME - keep + 1] = 0.0
        smooth = np.fft.rfft(cepstrum, n=_FRAME, axis=1).real
        if i < iterations:
            target = np.maximum(target, smooth)
    return smooth.T


def _clipped_gain(log_gain: np.ndarray) -> np.ndarray:
    limit = _MAX_GAIN_DB / 20.0 * np.log(10.0)
    return np.exp(np.clip(log_gain, -limit, limit))


def _same_rms(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``y`` at ``x``'s RMS level (the envelope corrections are relative: they are not meant to change the level)."""
    return y * np.sqrt(np.mean(x**2) / max(float(np.mean(y**2)), 1e-20))


def vtlp_warp(freqs: np.ndarray, alpha: float, boundary_hz: float, nyquist: float) -> np.ndarray:
    """Jaitly & Hinton's (2013) VTLP frequency warp: ``f * alpha`` up to ``boundary_hz * min(alpha, 1) /
    alpha``, then the straight line that maps the Nyquist frequency to itself (monotonic, continuous)."""
    knee = boundary_hz * min(alpha, 1.0) / alpha
    upper = nyquist - (nyquist - boundary_hz * min(alpha, 1.0)) / (nyquist - knee) * (nyquist - freqs)
    return np.where(freqs <= knee, freqs * alpha, upper)


class VtlpPerturbation(_Drawn):
    """Vocal tract length perturbation (Jaitly & Hinton 2013) on the waveform: the spectral envelope (the
    formants) is warped along frequency by a factor drawn from ``[min_warp, max_warp]`` (> 1: a shorter vocal
    tract, formants up) with :func:`vtlp_warp`, while the excitation (f0 and its harmonics) and the phase stay:
    each STFT frame is multiplied by ``envelope(warp^-1(f)) / envelope(f)`` (:func:`log_envelope`) and
    resynthesised, at the input's RMS. F2 and F3 move by about the factor (measured with LPC on synthetic vowels,
    tests/test_augment_voice.py), F1 less (the envelope is smoothed over ~800 Hz). Hand-written: no installed
    library warps a waveform's formants (librosa's pitch shift scales every frequency, f0 included, which is
    :class:`PitchPerturbation`'s job without ``keep_formants``). Keeps the sample count and rate; audio shorter
    than a 32 ms frame is left as it is.

    Cost: 4.3 ms per 3 s utterance at 16 kHz (median; one run, 2-core CPU beside other jobs). Registered with
    NeMo as ``nemo_sew_vtlp``."""

    def __init__(self, min_warp: float = 0.9, max_warp: float = 1.1, boundary_hz: float = 4800.0, rng=None):
        if not 0.0 < min_warp <= max_warp:
            raise ValueError(f"vtlp: expected 0 < min_warp <= max_warp, got {min_warp}, {max_warp}")
        if not boundary_hz > 0:
            raise ValueError(f"vtlp: expected boundary_hz > 0, got {boundary_hz}")
        self._min, self._max, self._boundary = float(min_warp), float(max_warp), float(boundary_hz)
        super().__init__(rng)

    def perturb(self, data) -> None:
        alpha = self._rng.uniform(self._min, self._max)
        _per_channel(data, lambda x: self.warp(x, data.sample_rate, alpha))

    def warp(self, x: np.ndarray, sample_rate: int, alpha: float) -> np.ndarray:
        """``x`` with its formants moved by ``alpha`` (the same length)."""
        nyquist = sample_rate / 2
        if len(x) < _FRAME or alpha == 1.0:
            return x
        boundary = min(self._boundary, 0.6 * nyquist)  # 4.8 kHz at 16 kHz; lower rates: the same share of the band
        spec = _stft(x)
        env = log_envelope(spec, sample_rate)
        freqs = np.linspace(0.0, nyquist, env.shape[0])
        source = np.interp(freqs, vtlp_warp(freqs, alpha, boundary, nyquist), freqs)  # warp^-1
        pos = source / nyquist * (env.shape[0] - 1)
        lo = np.minimum(np.floor(pos).astype(int), env.shape[0] - 2)
        frac = (pos - lo)[:, None]
        warped = env[lo] * (1.0 - frac) + env[lo + 1] * frac  # the envelope read at warp^-1(f), per frame
        return _same_rms(_istft(spec * _clipped_gain(warped - env), len(x)), x)


class PitchPerturbation(_Drawn):
    """Pitch shift by a number of semitones drawn from ``[min_semitones, max_semitones]``, duration kept:
    librosa's ``pitch_shift`` (phase-vocoder time stretch, then soxr resampling back to the length), which
    moves every frequency, the formants too; with ``keep_formants`` (default) the shifted signal's spectral
    envelope is then put back to the original's (per STFT frame, :func:`log_envelope`; hand-written) at the
    input's RMS, so mainly f0 and its harmonics move (a speaker's pitch, not a child's vocal tract: that is
    :class:`VtlpPerturbation`; on synthetic vowels F2 and F3 stay within ~6% where the plain shift moves them
    by the full ratio). Keeps the sample count and rate; audio shorter than its 64 ms frame is left as it is.

    Cost: 21.5 ms per 3 s utterance at 16 kHz with ``keep_formants`` (10.5 ms without; median, one run, 2-core
    CPU beside other jobs), the dearest of these. Registered with NeMo as ``nemo_sew_pitch``."""

    def __init__(self, min_semitones: float = -3.0, max_semitones: float = 3.0, keep_formants: bool = True, rng=None):
        if not min_semitones <= max_semitones:
            raise ValueError(f"pitch: expected min_semitones <= max_semitones, got {min_semitones}, {max_semitones}")
        self._min, self._max, self._keep = float(min_semitones), float(max_semitones), bool(keep_formants)
        super().__init__(rng)

    def perturb(self, data) -> None:
        steps = self._rng.uniform(self._min, self._max)
        _per_channel(data, lambda x: self.shift(x, data.sample_rate, steps))

    def shift(self, x: np.ndarray, sample_rate: int, semitones: float) -> np.ndarray:
        """``x`` with its f0 moved by ``semitones`` (the same length)."""
        import librosa

        if len(x) < _PITCH_FRAME or semitones == 0.0:
            return x
        shifted = librosa.effects.pitch_shift(x, sr=sample_rate, n_steps=semitones, n_fft=_PITCH_FRAME,
                                              hop_length=_PITCH_HOP, res_type="soxr_hq")  # fmt: skip
        if not self._keep:
            return shifted
        spec = _stft(shifted)
        gain = _clipped_gain(log_envelope(_stft(x), sample_rate) - log_envelope(spec, sample_rate))
        return _same_rms(_istft(spec * gain, len(x)), x)


class TiltPerturbation(_Drawn):
    """Spectral tilt: a gain of ``slope * log2(f / 1 kHz)`` dB (flat below 50 Hz), the slope drawn from
    ``[min_db_per_octave, max_db_per_octave]`` (a brighter or a duller microphone or voice), then the
    utterance's RMS put back. Applied in one FFT of the utterance (zero-padded to a fast length): an exact
    constant dB/octave over the whole band, which a first-order shelving filter (scipy has none ready-made)
    gives only within its transition and at most 6 dB/octave. Keeps the sample count and rate.

    Cost: 0.9 ms per 3 s utterance (median; one run, 2-core CPU beside other jobs). Registered with NeMo as
    ``nemo_sew_tilt``."""

    REFERENCE_HZ = 1000.0
    FLOOR_HZ = 50.0

    def __init__(self, min_db_per_octave: float = -3.0, max_db_per_octave: float = 3.0, rng=None):
        if not min_db_per_octave <= max_db_per_octave:
            raise ValueError(f"tilt: expected min_db_per_octave <= max_db_per_octave, got "
                             f"{min_db_per_octave}, {max_db_per_octave}")  # fmt: skip
        self._min, self._max = float(min_db_per_octave), float(max_db_per_octave)
        super().__init__(rng)

    def perturb(self, data) -> None:
        slope = self._rng.uniform(self._min, self._max)
        _per_channel(data, lambda x: self.tilt(x, data.sample_rate, slope))

    @classmethod
    def tilt(cls, x: np.ndarray, sample_rate: int, db_per_octave: float) -> np.ndarray:
        """``x`` tilted by ``db_per_octave`` around 1 kHz, its RMS kept (the same length)."""
        from scipy import fft

        if db_per_octave == 0.0 or not np.any(x):
            return x
        n = fft.next_fast_len(len(x), real=True)
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        gain_db = db_per_octave * np.log2(np.maximum(freqs, cls.FLOOR_HZ) / cls.REFERENCE_HZ)
        return _same_rms(fft.irfft(fft.rfft(x, n) * 10.0 ** (gain_db / 20.0), n)[: len(x)], x)


class BandPerturbation(_Drawn):
    """Band limits: a Butterworth low-pass (order 8) at a cutoff drawn from ``[min_lowpass_hz,
    max_lowpass_hz]`` and a high-pass (order 4) at one from ``[min_highpass_hz, max_highpass_hz]`` (scipy's
    ``butter`` + ``sosfilt``; a cutoff at or above 0.475 x the sample rate, or at or below 0, is skipped).
    Telephone-like and cheap-microphone bands. Keeps the sample count and rate.

    Cost: 1.6 ms per 3 s utterance (median; one run, 2-core CPU beside other jobs). Registered with NeMo as
    ``nemo_sew_band``."""

    def __init__(self, min_lowpass_hz: float = 3000.0, max_lowpass_hz: float = 7500.0, min_highpass_hz: float = 50.0,
                 max_highpass_hz: float = 300.0, rng=None):  # fmt: skip
        if not 0.0 <= min_lowpass_hz <= max_lowpass_hz:
            raise ValueError(f"band: expected 0 <= min_lowpass_hz <= max_lowpass_hz, got {min_lowpass_hz}, {max_lowpass_hz}")
        if not 0.0 <= min_highpass_hz <= max_highpass_hz:
            raise ValueError(f"band: expected 0 <= min_highpass_hz <= max_highpass_hz, got {min_highpass_hz}, "
                             f"{max_highpass_hz}")  # fmt: skip
        if not max_highpass_hz < min_lowpass_hz:
            raise ValueError(f"band: expected max_highpass_hz < min_lowpass_hz, got {max_highpass_hz}, {min_lowpass_hz}")
        self._low = (float(min_lowpass_hz), float(max_lowpass_hz))
        self._high = (float(min_highpass_hz), float(max_highpass_hz))
        super().__init__(rng)

    def perturb(self, data) -> None:
        lowpass, highpass = self._rng.uniform(*self._low), self._rng.uniform(*self._high)
        _per_channel(data, lambda x: self.band(x, data.sample_rate, lowpass, highpass))

    @staticmethod
    def band(x: np.ndarray, sample_rate: int, lowpass_hz: float, highpass_hz: float) -> np.ndarray:
        """``x`` low-passed at ``lowpass_hz`` and high-passed at ``highpass_hz`` (the same length)."""
        from scipy import signal

        top = 0.475 * sample_rate
        if 0.0 < lowpass_hz < top:
            x = signal.sosfilt(signal.butter(8, lowpass_hz, "lowpass", fs=sample_rate, output="sos"), x)
        if 0.0 < highpass_hz < top:
            x = signal.sosfilt(signal.butter(4, highpass_hz, "highpass", fs=sample_rate, output="sos"), x)
        return x


def sox_formats(sox: str = "sox") -> frozenset[str]:
    """The file types the installed ``sox`` reads and writes (``sox -h``'s AUDIO FILE FORMATS)."""
    out = subprocess.run([sox, "-h"], capture_output=True, text=True).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("AUDIO FILE FORMATS:")), "")
    return frozenset(line.split(":", 1)[-1].split())


class CodecPerturbation(_Drawn):
    """A lossy codec round trip through ``sox`` (two processes, piped, no files): the utterance is encoded with
    a codec drawn from ``codecs`` (:data:`CODECS`: G.711 mu-law or A-law and GSM 06.10 at 8 kHz, Ogg Vorbis at
    a low quality, AMR-NB where sox has it) and decoded back to the input's rate; the length is then cut or
    zero-padded back to the input's (codec frames pad the end) and the level restored (the input is scaled
    below full scale first, so the 8-bit and GSM coders do not clip). NeMo's ``TranscodePerturbation`` does
    the same through temporary files, mono 16 kHz only, and reseeds the global generator.

    Cost: 13.5 ms per 3 s utterance (median: two sox processes; one run, 2-core CPU beside other jobs). Needs ``sox``
    (``apt-get install sox``): a clear error when it, or a codec, is missing. Registered with NeMo as
    ``nemo_sew_codec``."""

    HEADROOM = 0.7

    def __init__(self, codecs=("ulaw", "alaw", "gsm", "vorbis"), rng=None):
        codecs = [codecs] if isinstance(codecs, str) else list(codecs)
        unknown = [c for c in codecs if c not in CODECS]
        if unknown or not codecs:
            raise ValueError(f"codec: expected codecs among {sorted(CODECS)}, got {codecs}")
        self._sox = shutil.which("sox")
        if self._sox is None:
            raise FileNotFoundError("augment.codec: sox is not on PATH; install it with `apt-get install sox`")
        formats = sox_formats(self._sox)
        missing = [c for c in codecs if CODECS[c][0] not in formats]
        if missing:
            raise RuntimeError(f"augment.codec: this sox cannot write {missing} (sox -h lists the formats); "
                               "leave them out of codecs, or install a sox built with them (libsox-fmt-all)")  # fmt: skip
        self._codecs = codecs
        super().__init__(rng)

    def perturb(self, data) -> None:
        codec = self._codecs[self._rng.randrange(len(self._codecs))]
        settings = CODECS[codec][2]
        setting = settings[self._rng.randrange(len(settings))] if settings else None
        _per_channel(data, lambda x: self.round_trip(x, data.sample_rate, codec, setting))

    def _sox_run(self, args: list[str], stdin: bytes) -> bytes:
        result = subprocess.run([self._sox, "-R", "-D", "-V1", *args], input=stdin, capture_output=True)
        if result.returncode != 0:
            raise RuntimeError(f"augment.codec: sox {' '.join(args)} exited with {result.returncode}: "
                               f"{result.stderr.decode(errors='replace').strip()}")  # fmt: skip
        return result.stdout

    def round_trip(self, x: np.ndarray, sample_rate: int, codec: str, setting: int | None = None) -> np.ndarray:
        """``x`` encoded with ``codec`` (its ``-C`` ``setting``, None: sox's default) and decoded: the same
        length, rate and level."""
        peak = float(np.abs(x).max())
        if peak == 0.0:
            return x
        kind, rate, _, delay_s = CODECS[codec]
        raw = ["-t", "f32", "-r", str(sample_rate), "-c", "1"]
        coded = ["-t", kind, "-r", str(rate or sample_rate), "-c", "1"]
        options = [] if setting is None else ["-C", str(setting)]
        scale = self.HEADROOM / peak
        encoded = self._sox_run([*raw, "-", *options, *coded, "-"], (x * scale).astype("<f4").tobytes())
        decoded = self._sox_run([*coded, "-", *raw, "-"], encoded)
        y = np.frombuffer(decoded, dtype="<f4").astype(np.float64)[round(delay_s * sample_rate) :] / scale
        if len(y) >= len(x):
            return y[: len(x)]
        return np.concatenate([y, np.zeros(len(x) - len(y))])


for _name, _cls in ((VTLP_PERTURBATION, VtlpPerturbation), (PITCH_PERTURBATION, PitchPerturbation),
                    (TILT_PERTURBATION, TiltPerturbation), (BAND_PERTURBATION, BandPerturbation),
                    (CODEC_PERTURBATION, CodecPerturbation)):  # fmt: skip
    if _name not in _perturb.perturbation_types:
        _perturb.register_perturbation(_name, _cls)


# --------------------------------------------------------------------------- generated assets
# Hand-written: no installed library generates noise files, and lhotse's FRA-RIR generator needs
# torchaudio, which this project does not install.


def colored_noise(kind: str, seconds: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``seconds`` of noise, peak 0.5: ``white``, ``pink`` (1/f power), ``brown`` (1/f^2), ``babble``
    (speech-shaped: pink noise band-limited to 100-4000 Hz and amplitude-modulated at syllable rates,
    3-6 Hz) or ``hum`` (mains hum at 50 or 60 Hz with harmonics over a little white noise)."""
    n = int(seconds * sample_rate)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    white = rng.standard_normal(n)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown", "babble"):
        spectrum = np.fft.rfft(white)
        power = {"pink": 1.0, "brown": 2.0, "babble": 1.0}[kind]
        shape = 1.0 / np.maximum(freqs, 20.0) ** (power / 2)  # amplitude ~ f^(-power/2)
        if kind == "babble":
            shape *= (freqs > 100.0) & (freqs < 4000.0)
        x = np.fft.irfft(spectrum * shape, n)
        if kind == "babble":
            t = np.arange(n) / sample_rate
            envelope = sum(
                1.0 + np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 2 * np.pi)) for _ in range(3)
            )
            x = x * envelope
    elif kind == "hum":
        t = np.arange(n) / sample_rate
        mains = rng.choice([50.0, 60.0])
        x = sum(np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h for h in range(1, 6))
        x = x + 0.05 * white
    else:
        raise ValueError(f"noise kind: expected one of {NOISE_KINDS}, got {kind!r}")
    x = x - x.mean()
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A simple statistical room impulse response, peak 1 at the direct path: after a 0-5 ms delay and the
    direct sound, a few early reflections (5-40 ms) and a diffuse tail of Gaussian noise decaying
    exponentially with a reverberation time RT60 drawn from 0.15-0.8 s (Polack's model), low-passed a
    little by a one-pole filter (walls absorb high frequencies)."""
    rt60 = rng.uniform(0.15, 0.8)
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # 60 dB down at rt60
    alpha = rng.uniform(0.3, 0.7)
    for i in range(1, n):  # one-pole low-pass (n is < 13k samples: a plain loop is fast enough)
        tail[i] = alpha * tail[i - 1] + (1 - alpha) * tail[i]
    tail *= rng.uniform(0.1, 0.5) / np.abs(tail).max()  # direct-to-reverberant ratio
    delay = int(rng.uniform(0.0, 0.005) * sample_rate)
    h = np.zeros(delay + n, dtype=np.float64)
    h[delay + 1 :] += tail[: n - 1]
    for _ in range(rng.integers(2, 6)):  # early reflections
        k = delay + int(rng.uniform(0.005, 0.04) * sample_rate)
        if k < len(h):
            h[k] += rng.uniform(0.2, 0.6) * rng.choice([-1.0, 1.0])
    h[delay] = 1.0
    return (h / np.abs(h).max()).astype(np.float32)


def _write_manifest(path: Path, wavs: list[Path], seconds: list[float]) -> Path:
    lines = [json.dumps({"audio_filepath": str(w.resolve()), "duration": round(s, 4), "text": ""}) for w, s in zip(wavs, seconds)]
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare_assets(
    out_dir: str | Path, seed: int = 0, noises_per_kind: int = 2, noise_seconds: float = 15.0, rirs: int = 24
) -> dict[str, Path]:
    """Generate the noise files (``noises_per_kind`` of each of :data:`NOISE_KINDS`) and ``rirs`` impulse
    responses under ``out_dir`` with NeMo manifests ``noise.json`` and ``rir.json``; a second call with the
    same settings reuses them. Returns ``{"noise": manifest, "rir": manifest}``."""
    out_dir = Path(out_dir)
    settings = {"seed": seed, "noises_per_kind": noises_per_kind, "noise_seconds": noise_seconds, "rirs": rirs,
                "sample_rate": SAMPLE_RATE}  # fmt: skip
    stamp = out_dir / "assets.json"
    manifests = {"noise": out_dir / "noise.json", "rir": out_dir / "rir.json"}
    # processes that train on one manifest (bench runs side by side) share these files: one writes, the others wait
    # for it, instead of rewriting files another process may already be reading (manifests.io.locked)
    with locked(stamp):
        if stamp.is_file() and json.loads(stamp.read_text()) == settings and all(p.is_file() for p in manifests.values()):
            return manifests
        stamp.unlink(missing_ok=True)  # a run killed while writing leaves no stamp: its files are made again
        _write_assets(out_dir, manifests, seed, noises_per_kind, noise_seconds, rirs)
        stamp.write_text(json.dumps(settings) + "\n")
    log.info("augmentation assets in %s: %d noises, %d impulse responses", out_dir, len(NOISE_KINDS) * noises_per_kind, rirs)
    return manifests


def _write_assets(out_dir: Path, manifests: dict[str, Path], seed: int, noises_per_kind: int, noise_seconds: float,
                  rirs: int) -> None:  # fmt: skip
    import soundfile as sf

    (out_dir / "noise").mkdir(parents=True, exist_ok=True)
    (out_dir / "rir").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    wavs, seconds = [], []
    for kind in NOISE_KINDS:
        for i in range(noises_per_kind):
            path = out_dir / "noise" / f"{kind}_{i}.wav"
            sf.write(path, colored_noise(kind, noise_seconds, rng), SAMPLE_RATE, subtype="PCM_16")
            wavs.append(path)
            seconds.append(noise_seconds)
    _write_manifest(manifests["noise"], wavs, seconds)
    wavs, seconds = [], []
    for i in range(rirs):
        h = room_impulse_response(rng)
        path = out_dir / "rir" / f"rir_{i:03d}.wav"
        sf.write(path, h, SAMPLE_RATE, subtype="FLOAT")
        wavs.append(path)
        seconds.append(len(h) / SAMPLE_RATE)
    _write_manifest(manifests["rir"], wavs, seconds)


# --------------------------------------------------------------------------- recipe -> NeMo augmentor


def _options(section: Mapping[str, Any]) -> dict[str, dict[str, Any] | None]:
    known = {**DEFAULTS, **VOICE_DEFAULTS}
    unknown = set(section) - set(known) - {"assets_dir", "seed"}
    if unknown:
        raise ValueError(f"augment: unknown keys {sorted(unknown)}, expected some of {sorted(known)}, assets_dir, seed")
    out: dict[str, dict[str, Any] | None] = {}
    for name, defaults in known.items():
        # speed, reverb and noise are on unless switched off; the voice-level perturbations only when named
        given = section.get(name, {} if name in DEFAULTS else None)
        if given is None or (given or {}).get("prob", defaults["prob"]) == 0:
            out[name] = None
            continue
        bad = set(given) - set(defaults)
        if bad:
            raise ValueError(f"augment.{name}: unknown keys {sorted(bad)}, expected some of {sorted(defaults)}")
        opts = {**defaults, **given}
        if not 0.0 <= opts["prob"] <= 1.0:
            raise ValueError(f"augment.{name}.prob: expected 0 <= prob <= 1, got {opts['prob']}")
        out[name] = opts
    speed, noise = out["speed"], out["noise"]
    if speed and not 0.0 < speed["min_rate"] <= speed["max_rate"]:
        raise ValueError(f"augment.speed: expected 0 < min_rate <= max_rate, got {speed['min_rate']}, {speed['max_rate']}")
    if noise and not noise["min_snr_db"] <= noise["max_snr_db"]:
        raise ValueError(f"augment.noise: expected min_snr_db <= max_snr_db, got {noise['min_snr_db']}, {noise['max_snr_db']}")
    for name, low, high in (("vtlp", "min_warp", "max_warp"), ("pitch", "min_semitones", "max_semitones"),
                            ("tilt", "min_db_per_octave", "max_db_per_octave"),
                            ("band", "min_lowpass_hz", "max_lowpass_hz"), ("band", "min_highpass_hz", "max_highpass_hz")):  # fmt: skip
        opts = out[name]
        if opts and not opts[low] <= opts[high]:
            raise ValueError(f"augment.{name}: expected {low} <= {high}, got {opts[low]}, {opts[high]}")
    return out


def augmentor_config(section: Mapping[str, Any], assets_dir: str | Path, sample_rate: int = SAMPLE_RATE) -> dict:
    """NeMo's ``augmentor`` dict (``process_augmentations``) for an ``augment`` section, generating the
    noise and impulse responses in ``assets_dir`` when the section needs them."""
    opts = _options(section)
    assets = None
    if opts["noise"] or opts["reverb"]:
        assets = prepare_assets(assets_dir, seed=int(section.get("seed", 0) or 0))
    augmentor: dict[str, dict] = {}
    if opts["speed"]:
        s = opts["speed"]
        augmentor[SPEED_PERTURBATION] = {"prob": s["prob"], "sr": sample_rate, "min_speed_rate": s["min_rate"],
                                         "max_speed_rate": s["max_rate"], "num_rates": -1}  # fmt: skip
    # the speaker (vtlp, pitch, tilt), then the room (reverb, noise), then the channel (band, codec)
    for name, nemo_name in (("vtlp", VTLP_PERTURBATION), ("pitch", PITCH_PERTURBATION), ("tilt", TILT_PERTURBATION)):
        if opts[name]:
            augmentor[nemo_name] = dict(opts[name])
    if opts["reverb"]:  # before the noise: the noise is not in the room
        augmentor["impulse"] = {"prob": opts["reverb"]["prob"], "manifest_path": str(assets["rir"]), "shift_impulse": True}
    if opts["noise"]:
        n = opts["noise"]
        augmentor["noise"] = {"prob": n["prob"], "manifest_path": str(assets["noise"]),
                              "min_snr_db": n["min_snr_db"], "max_snr_db": n["max_snr_db"]}  # fmt: skip
    if opts["band"]:
        augmentor[BAND_PERTURBATION] = dict(opts["band"])
    if opts["codec"]:
        augmentor[CODEC_PERTURBATION] = {**opts["codec"], "codecs": list(opts["codec"]["codecs"])}
    return augmentor


def apply_augment(cfg: DictConfig) -> DictConfig:
    """A recipe with a top-level ``augment`` section -> the same recipe with ``model.train_ds.augmentor``
    set (and ``augment`` kept, so the run's config says what it asked for). Without the section ``cfg`` is
    returned unchanged; ``augment: null`` sets ``model.train_ds.augmentor`` to null (fine-tuning a ``.nemo``
    whose stored training config has one, from another machine, must not inherit it)."""
    section = cfg.get("augment")
    if section is None:
        if "augment" not in cfg or cfg.model.get("train_ds") is None:
            return cfg
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.model.train_ds.augmentor = None
        return cfg
    section = OmegaConf.to_container(section, resolve=True)
    train_ds = cfg.model.get("train_ds") or {}
    if train_ds.get("use_lhotse"):
        raise ValueError(
            "augment: expected NeMo manifest loading (model.train_ds.use_lhotse false); lhotse data loading "
            "does not read NeMo's augmentor"
        )
    manifest = train_ds.get("manifest_filepath")
    assets_dir = section.get("assets_dir")
    if assets_dir is None:
        if not manifest or str(manifest) == "???" or "," in str(manifest):
            raise ValueError(
                "augment.assets_dir: expected a directory when model.train_ds.manifest_filepath is not one file"
            )
        assets_dir = Path(str(manifest)).resolve().parent / "augment"
    augmentor = augmentor_config(section, assets_dir, int(cfg.model.get("sample_rate", SAMPLE_RATE)))
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.model.train_ds.augmentor = augmentor or None
    return cfg
