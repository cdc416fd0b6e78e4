"""NeMo models: stock EncDecCTCModel with our encoder, save/restore, profiles, transcribe, BPE, bad input."""

import json
import logging
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from nemo.collections.asr.models import ASRModel, EncDecCTCModel
from omegaconf import OmegaConf, open_dict

import nemo_sew
from manifests.audio import AudioError
from nemo_sew import CompressionProfile, SqueezeCTCModel, SqueezeCTCModelBPE
from nemo_sew.train import load_config
from conftest import TINY_ENCODER

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ctc_char_tiny_mel.yaml"


def _cfg(tiny_corpus, **encoder):
    cfg = load_config(
        RECIPE,
        [
            f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
            f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
            "model.train_ds.batch_size=4",
            "model.train_ds.num_workers=0",
            "model.validation_ds.num_workers=0",
            *TINY_ENCODER,
        ],
    )
    with open_dict(cfg):
        cfg.model.encoder.update(encoder)
    return cfg


def _trainer(steps=3):
    return pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, num_sanity_val_steps=0, limit_val_batches=0, enable_model_summary=False,
    )  # fmt: skip


def _fit(model, steps=3):
    before = {n: p.detach().clone() for n, p in model.encoder.named_parameters()}
    trainer = _trainer(steps)
    model.set_trainer(trainer)
    trainer.fit(model)
    changed = sum(not torch.equal(before[n], p) for n, p in model.encoder.named_parameters())
    assert changed == len(before), "every encoder parameter should have been updated"
    return trainer


def test_stock_encdecctcmodel_with_our_encoder_trains(tiny_corpus):
    cfg = _cfg(tiny_corpus)
    model = EncDecCTCModel(cfg=cfg.model, trainer=_trainer())
    assert isinstance(model.encoder, nemo_sew.SqueezeEncoder)
    _fit(model)


def test_save_restore_roundtrip_keeps_outputs_and_profile(tiny_corpus, tmp_path):
    model = SqueezeCTCModel(cfg=_cfg(tiny_corpus).model)
    _fit(model, steps=2)
    model.set_profile(CompressionProfile(squeeze=2, name="s2"))
    path = tmp_path / "m.nemo"
    model.save_to(str(path))
    restored = ASRModel.restore_from(str(path), map_location="cpu")
    assert type(restored) is SqueezeCTCModel
    assert restored.profile.squeeze == 2 and restored.cfg.profile.name == "s2"
    model.eval(), restored.eval()
    audio, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 9000])
    with torch.no_grad():
        a = model.forward(input_signal=audio, input_signal_length=lengths)[0]
        b = restored.forward(input_signal=audio, input_signal_length=lengths)[0]
    torch.testing.assert_close(a, b)


def test_named_profiles_and_errors(tiny_corpus):
    model = SqueezeCTCModel(cfg=_cfg(tiny_corpus).model)
    assert model.set_profile("s2").name == "s2"
    assert model.cfg.profile.squeeze == 2
    with pytest.raises(KeyError, match="no profile named 'fast'"):
        model.set_profile("fast")
    with pytest.raises(ValueError, match="cannot run at squeeze 4"):
        model.set_profile(4)


def test_transcribe_returns_hypotheses(tiny_corpus):
    model = SqueezeCTCModel(cfg=_cfg(tiny_corpus).model).eval()
    entries = [json.loads(x) for x in Path(tiny_corpus["test"]["manifest"]).read_text().splitlines()][:3]
    hyps = model.transcribe([e["audio_filepath"] for e in entries], batch_size=2, profile=2)
    assert len(entries) >= 2 and len(hyps) == len(entries) and all(isinstance(h.text, str) for h in hyps)


def test_bpe_model_trains_and_transcribes(tiny_corpus, tmp_path):
    from nemo_sew.tokenizer import train_tokenizer

    tok = train_tokenizer([tiny_corpus["train"]["manifest"]], tmp_path / "tok", vocab_size=40)
    cfg = _cfg(tiny_corpus)
    with open_dict(cfg):
        cfg.model.tokenizer = {"dir": str(tok), "type": "bpe"}
        cfg.model.decoder.num_classes = -1
        cfg.model.decoder.vocabulary = None
        for ds in ("train_ds", "validation_ds", "test_ds"):
            cfg.model[ds].pop("labels")
        cfg.model.pop("labels")
    model = SqueezeCTCModelBPE(cfg=cfg.model)
    _fit(model, steps=2)
    entries = [json.loads(x) for x in Path(tiny_corpus["test"]["manifest"]).read_text().splitlines()][:2]
    hyps = model.eval().transcribe([e["audio_filepath"] for e in entries], batch_size=2)
    assert len(hyps) == 2 and all(isinstance(h.text, str) for h in hyps)


def test_bad_training_lines_are_logged_skips(tiny_corpus, tmp_path, caplog):
    good = Path(tiny_corpus["train"]["manifest"]).read_text().splitlines()
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.wav"
    noise.write_bytes(b"this is not audio at all" * 100)
    bad = [
        "{not json",
        json.dumps({"audio_filepath": str(tmp_path / "missing.wav"), "duration": 1.0, "text": "a"}),
        json.dumps({"audio_filepath": str(empty), "duration": 1.0, "text": "a"}),
        json.dumps({"audio_filepath": str(noise), "duration": 1.0, "text": "a"}),
    ]
    manifest = tmp_path / "train_with_bad_lines.json"
    manifest.write_text("\n".join(good[:6] + bad + good[6:10]) + "\n")
    cfg = _cfg(tiny_corpus)
    cfg.model.train_ds.manifest_filepath = str(manifest)
    with caplog.at_level(logging.WARNING):
        model = SqueezeCTCModel(cfg=cfg.model)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    for name in ("missing.wav", "empty.wav", "noise.wav", "train_with_bad_lines.json:7:"):
        assert name in messages, f"expected a logged skip naming {name}"
    _fit(model, steps=2)  # training goes on with the good lines


def test_transcribe_bad_files_raise_clear_errors(tiny_corpus, tmp_path):
    model = SqueezeCTCModel(cfg=_cfg(tiny_corpus).model).eval()
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        model.transcribe([str(tmp_path / "missing.wav")])
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="corrupt.wav"):
        model.transcribe([str(bad)])
    import soundfile as sf

    short = tmp_path / "short.wav"
    sf.write(short, torch.randn(300).numpy() * 0.1, 16000)
    with pytest.raises(ValueError, match="short.wav.*shorter than this model's minimum"):
        model.transcribe([str(short)])
