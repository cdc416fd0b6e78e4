"""Training-data augmentation: generated noise and impulse responses, the recipe section -> NeMo's augmentor,
and NeMo's own perturbations applying it to real audio."""

from __future__ import annotations

import json

import random

import numpy as np
import pytest
import soundfile as sf
from nemo.collections.asr.parts.preprocessing.perturb import process_augmentations
from nemo.collections.asr.parts.preprocessing.segment import AudioSegment
from omegaconf import OmegaConf

from nemo_sew.augment import (
    NOISE_KINDS,
    SPEED_PERTURBATION,
    apply_augment,
    augmentor_config,
    colored_noise,
    prepare_assets,
    room_impulse_response,
)

SR = 16000


def _band_power(x: np.ndarray, lo: float, hi: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / SR)
    return float(spectrum[(freqs >= lo) & (freqs < hi)].mean())


def test_noise_kinds_have_their_spectra():
    rng = np.random.default_rng(0)
    noise = {kind: colored_noise(kind, 2.0, rng) for kind in NOISE_KINDS}
    for x in noise.values():
        assert x.dtype == np.float32 and len(x) == 2 * SR and abs(np.abs(x).max() - 0.5) < 1e-6
    tilt = {k: _band_power(x, 100, 200) / _band_power(x, 3000, 6000) for k, x in noise.items()}
    assert 0.5 < tilt["white"] < 2  # flat
    assert 10 < tilt["pink"] < 60  # 1/f: ~30x over a 30x frequency ratio
    assert tilt["brown"] > 10 * tilt["pink"]  # 1/f^2
    assert _band_power(noise["babble"], 5000, 8000) < 1e-6 * _band_power(noise["babble"], 200, 1000)
    hum = np.abs(np.fft.rfft(noise["hum"]))
    assert np.fft.rfftfreq(2 * SR, 1 / SR)[hum.argmax()] in (50.0, 60.0)
    np.testing.assert_array_equal(colored_noise("pink", 1.0, np.random.default_rng(3)),
                                  colored_noise("pink", 1.0, np.random.default_rng(3)))  # fmt: skip
    with pytest.raises(ValueError, match="expected one of"):
        colored_noise("violet", 1.0, rng)


def test_room_impulse_response_decays_after_the_direct_path():
    rng = np.random.default_rng(1)
    for _ in range(5):
        h = room_impulse_response(rng)
        assert 0.15 * SR <= len(h) <= 0.81 * SR
        peak = int(np.abs(h).argmax())
        assert h[peak] == 1.0 and peak <= 0.005 * SR  # direct path first, within the 5 ms pre-delay
        tail = h[peak + 1 :] ** 2
        fifth = len(tail) // 5
        assert tail[-fifth:].sum() < 1e-2 * tail[:fifth].sum()  # exponential decay


def test_prepare_assets_is_reused_and_readable_by_nemo(tmp_path):
    manifests = prepare_assets(tmp_path, seed=0, noises_per_kind=1, noise_seconds=2.0, rirs=3)
    noise = [json.loads(line) for line in manifests["noise"].read_text().splitlines()]
    rirs = [json.loads(line) for line in manifests["rir"].read_text().splitlines()]
    assert len(noise) == len(NOISE_KINDS) and len(rirs) == 3
    assert all(sf.info(e["audio_filepath"]).samplerate == SR for e in noise + rirs)
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    assert prepare_assets(tmp_path, seed=0, noises_per_kind=1, noise_seconds=2.0, rirs=3) == manifests
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")} == mtimes
    before = sf.read(rirs[0]["audio_filepath"])[0]
    prepare_assets(tmp_path, seed=1, noises_per_kind=1, noise_seconds=2.0, rirs=3)  # another seed: regenerated
    assert not np.array_equal(before, sf.read(rirs[0]["audio_filepath"])[0])


def _assets_in_process(out_dir, log_file, barrier):
    import logging

    logging.basicConfig(filename=log_file, level=logging.INFO, format="%(process)d %(message)s")
    barrier.wait()  # both processes past their imports: they reach prepare_assets together
    prepare_assets(out_dir, seed=0, noises_per_kind=2, noise_seconds=20.0, rirs=24)


def test_prepare_assets_is_written_once_by_processes_side_by_side(tmp_path):
    """Two trainings on one manifest start together: one writes the files, the other waits and reuses them (without
    the lock both wrote, each rewriting files the other might be reading)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_assets_in_process, args=(tmp_path / "assets", tmp_path / "log.txt", barrier))
             for _ in range(2)]  # fmt: skip
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "log.txt").read_text().count("augmentation assets in") == 1
    noise = [json.loads(line) for line in (tmp_path / "assets" / "noise.json").read_text().splitlines()]
    assert all(sf.info(e["audio_filepath"]).duration == 20.0 for e in noise)


def test_augmentor_config_order_switches_and_errors(tmp_path):
    cfg = augmentor_config({"speed": {"prob": 0.3}, "reverb": {"prob": 0.2}, "noise": {"min_snr_db": 5}}, tmp_path)
    assert list(cfg) == [SPEED_PERTURBATION, "impulse", "noise"]  # speed, then the room, then the noise
    assert cfg[SPEED_PERTURBATION]["prob"] == 0.3 and cfg["noise"]["min_snr_db"] == 5
    assert cfg["noise"]["max_snr_db"] == 30.0 and (tmp_path / "noise.json").is_file()
    assert list(augmentor_config({"reverb": None, "noise": {"prob": 0}}, tmp_path / "x")) == [SPEED_PERTURBATION]
    assert not (tmp_path / "x").exists()  # nothing generated when no perturbation needs files
    for bad, match in (({"echo": {}}, "unknown keys"), ({"speed": {"prob": 1.5}}, "0 <= prob <= 1"),
                       ({"noise": {"min_snr_db": 30, "max_snr_db": 5}}, "min_snr_db <= max_snr_db"),
                       ({"speed": {"rate": 2}}, "unknown keys")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            augmentor_config(bad, tmp_path)


def _segment(seconds: float = 2.0) -> AudioSegment:
    t = np.arange(int(seconds * SR)) / SR
    return AudioSegment((0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32), SR)


def test_nemo_applies_each_perturbation(tmp_path):
    only = {"speed": None, "reverb": None, "noise": None}
    speed = process_augmentations(augmentor_config({**only, "speed": {"prob": 1.0, "min_rate": 0.8, "max_rate": 0.8}}, tmp_path))
    seg = _segment()
    speed.perturb(seg)
    assert abs(len(seg.samples) - 2.0 * SR * 0.8) < 10  # resampled to 0.8 x 16 kHz, read at 16 kHz: faster

    noise = process_augmentations(augmentor_config({**only, "noise": {"prob": 1.0, "min_snr_db": 10, "max_snr_db": 10}}, tmp_path))
    random.seed(0)  # NeMo draws the noise file and its offset from the global RNGs: fixed here, whatever ran before
    np.random.seed(0)
    clean = _segment()
    seg = _segment()
    noise.perturb(seg)
    residual = seg.samples - clean.samples
    snr = 10 * np.log10(np.mean(clean.samples**2) / np.mean(residual**2))
    assert abs(snr - 10.0) < 0.5

    reverb = process_augmentations(augmentor_config({**only, "reverb": {"prob": 1.0}}, tmp_path))
    click = np.zeros(SR, dtype=np.float32)
    click[8000] = 0.5
    seg = AudioSegment(click.copy(), SR)
    reverb.perturb(seg)
    assert len(seg.samples) == SR and int(np.abs(seg.samples).argmax()) == 8000  # direct path kept in place
    assert np.abs(seg.samples[8001:8000 + SR // 10]).max() > 0.01  # followed by the room's reverberation
    assert np.abs(seg.samples[:7990]).max() < 1e-3  # and nothing before it


def test_apply_augment_sets_the_train_augmentor_beside_the_manifest(tmp_path):
    manifest = tmp_path / "data" / "train.json"
    manifest.parent.mkdir()
    manifest.write_text("")
    cfg = OmegaConf.create({"augment": {"speed": {"prob": 0.5}}, "model": {"sample_rate": SR, "train_ds": {"manifest_filepath": str(manifest)}}})
    out = apply_augment(cfg)
    assert list(out.model.train_ds.augmentor) == [SPEED_PERTURBATION, "impulse", "noise"]
    assert out.model.train_ds.augmentor.noise.manifest_path == str(tmp_path / "data" / "augment" / "noise.json")
    assert "augmentor" not in cfg.model.train_ds  # the input is not modified
    plain = OmegaConf.create({"model": {"train_ds": {"manifest_filepath": str(manifest)}}})
    assert apply_augment(plain) is plain
    off = OmegaConf.merge(out, {"augment": None})  # a stored augmentor is switched off by augment: null
    assert apply_augment(off).model.train_ds.augmentor is None
    lhotse = OmegaConf.merge(cfg, {"model": {"train_ds": {"use_lhotse": True}}})
    with pytest.raises(ValueError, match="use_lhotse"):
        apply_augment(lhotse)


def test_nemo_dataset_reads_augmented_audio(tiny_corpus, tmp_path):
    """NeMo's own char dataset with the augmentor of the demo recipe's section: training audio changes."""
    from nemo.collections.asr.data.audio_to_text import AudioToCharDataset

    labels = list(" abcdefghijklmnopqrstuvwxyz'")
    manifest = str(tiny_corpus["train"]["manifest"])
    plain = AudioToCharDataset(manifest, labels, SR)
    section = {"speed": {"prob": 1.0, "min_rate": 1.1, "max_rate": 1.1}, "noise": {"prob": 1.0}, "reverb": {"prob": 1.0}}
    augmented = AudioToCharDataset(manifest, labels, SR, augmentor=process_augmentations(augmentor_config(section, tmp_path)))
    a, b = plain[0], augmented[0]
    assert int(b[1]) == pytest.approx(int(a[1]) * 1.1, abs=2)  # resampled to 17.6 kHz, read at 16 kHz: longer
    assert a[2].tolist() == b[2].tolist()  # same transcript
