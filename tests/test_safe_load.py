"""Safe loading (issue 14, item 4): user checkpoints load with weights_only=True; one holding a pickled callable
is refused with an error naming the file, through init_from_ssl, convert and `.nemo` restores."""

import os

import pytest
import torch

from nemo_sew.safe_load import UnsafeCheckpointError, load_checkpoint, restore

MARKER = "nemo_sew_pwned"


class _Payload:
    """Unpickling this runs os.system: what a malicious checkpoint does."""

    def __reduce__(self):
        return os.system, (f"touch {MARKER}",)


def _evil_lightning_ckpt(path):
    torch.save({"state_dict": {"encoder.w": torch.zeros(2)}, "hyper_parameters": {"cfg": {}}, "x": _Payload()}, path)
    return path


def test_a_pickled_callable_is_refused_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = _evil_lightning_ckpt(tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load.*system"):
        load_checkpoint(path)
    torch.save({"fn": print}, tmp_path / "fn.ckpt")  # a plain function reference
    with pytest.raises(UnsafeCheckpointError, match=r"fn\.ckpt: refusing to load.*print"):
        load_checkpoint(tmp_path / "fn.ckpt")
    assert not (tmp_path / MARKER).exists()


def test_init_from_ssl_and_fairseq_convert_refuse_it(tmp_path, monkeypatch):
    from nemo_sew.convert.fairseq import load_checkpoint as load_fairseq
    from nemo_sew.train import _load_checkpoint

    monkeypatch.chdir(tmp_path)
    path = _evil_lightning_ckpt(tmp_path / "evil.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt"):
        _load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="evil.ckpt.*allow_pickle"):
        load_fairseq(path)
    assert not (tmp_path / MARKER).exists()


def test_a_real_lightning_checkpoint_loads_with_weights_only(tiny_corpus, tmp_path):
    """What NeMo + Lightning write (OmegaConf config, NeMo decoding dataclasses) is on the allow list."""
    from test_models import _cfg, _trainer

    from nemo_sew.train import _load_checkpoint, build_model

    model = build_model(_cfg(tiny_corpus))
    trainer = _trainer(1)
    model.set_trainer(trainer)
    trainer.fit(model)
    trainer.save_checkpoint(tmp_path / "real.ckpt")
    with pytest.raises(Exception):  # torch's own allow list alone refuses it: the allow list here is needed
        torch.load(tmp_path / "real.ckpt", weights_only=True)
    cfg, state = _load_checkpoint(tmp_path / "real.ckpt")
    assert cfg.encoder._target_ == "nemo_sew.SqueezeEncoder"
    key = next(k for k in state if k.startswith("encoder."))
    assert torch.equal(state[key], model.state_dict()[key])


def test_a_nemo_file_with_a_pickled_callable_is_refused(tiny_corpus, tmp_path, monkeypatch):
    from conftest import nemo_with_weights
    from test_models import _cfg

    from nemo_sew.train import build_model

    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.nemo"
    build_model(_cfg(tiny_corpus)).save_to(str(good))
    evil = nemo_with_weights(good, tmp_path / "evil.nemo", lambda state: {**state, "payload": _Payload()})
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.nemo: refusing to load its weights"):
        restore(evil)
    assert not (tmp_path / MARKER).exists()
    restore(good)  # the untouched file restores


def test_a_fairseq_checkpoint_with_omegaconf_and_namespace_args_loads(tmp_path):
    import argparse

    from omegaconf import OmegaConf

    from nemo_sew.convert.fairseq import load_checkpoint as load_fairseq

    cfg = OmegaConf.create({"model": {"_name": "wav2vec2", "encoder_layers": 2}, "task": {"normalize": False}})
    path = tmp_path / "checkpoint.pt"
    torch.save({"cfg": cfg, "args": argparse.Namespace(arch="wav2vec2", encoder_layers=2),
                "model": {"w": torch.ones(2)}}, path)  # fmt: skip
    data = load_fairseq(path)
    assert data["cfg"].model.encoder_layers == 2 and data["args"].arch == "wav2vec2"
    assert torch.equal(data["model"]["w"], torch.ones(2))


def test_a_failed_restore_leaves_later_models_able_to_set_up_their_data(tiny_corpus, tmp_path):
    """NeMo flags "a model is being restored" for the whole process and clears it only on success; while it is set,
    every model built in the process skips its data set-up (a notebook that once opened a bad file cannot train)."""
    from conftest import nemo_with_weights
    from test_models import _cfg

    from nemo_sew.train import build_model

    good = tmp_path / "good.nemo"
    build_model(_cfg(tiny_corpus)).save_to(str(good))
    wrong = nemo_with_weights(
        good, tmp_path / "wrong.nemo", lambda state: {k: v[..., :1] if v.dim() else v for k, v in state.items()}
    )
    with pytest.raises(RuntimeError, match="size mismatch"):
        restore(wrong)
    model = build_model(_cfg(tiny_corpus))
    assert model._train_dl is not None, "a model built after a failed restore did not set up its training data"
