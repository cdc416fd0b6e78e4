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
"""

from __future__ import annotations

import json
import logging
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


def _options(section: Mapping[str, Any]) -> dict[str, dict[str, float] | None]:
    unknown = set(section) - set(DEFAULTS) - {"assets_dir", "seed"}
    if unknown:
        raise ValueError(f"augment: unknown keys {sorted(unknown)}, expected some of {sorted(DEFAULTS)}, assets_dir, seed")
    out: dict[str, dict[str, float] | None] = {}
    for name, defaults in DEFAULTS.items():
        given = section.get(name, {})
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
    if opts["reverb"]:  # before the noise: the noise is not in the room
        augmentor["impulse"] = {"prob": opts["reverb"]["prob"], "manifest_path": str(assets["rir"]), "shift_impulse": True}
    if opts["noise"]:
        n = opts["noise"]
        augmentor["noise"] = {"prob": n["prob"], "manifest_path": str(assets["noise"]),
                              "min_snr_db": n["min_snr_db"], "max_snr_db": n["max_snr_db"]}  # fmt: skip
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
