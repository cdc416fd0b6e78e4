"""Untrusted checkpoints in torch's LEGACY (non-zip) pickle format are refused too (issue 30, item 2).

``nemo_sew.safe_load.load_checkpoint`` lists a zip checkpoint's globals before loading it; a legacy file (written
with ``torch.save(obj, f, _use_new_zipfile_serialization=False)``, what torch < 1.6 wrote) cannot be listed, so
only ``torch.load(weights_only=True)`` stands between it and the pickled code. Every loading entry point must still
refuse a legacy file holding a callable, with :class:`UnsafeCheckpointError` naming the file, and without running
it: the payload here would create a marker file (``open(marker, "w")``), which must not exist afterwards.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import nemo_with_weights

from nemo_sew.safe_load import UnsafeCheckpointError, load_checkpoint, restore


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: harmless, but it is code a checkpoint must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _save_legacy(obj: Any, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    with open(path, "rb") as f:
        assert f.read(2) != b"PK", "expected the legacy (non-zip) format"
    return path


def _evil(tmp_path: Path, name: str = "evil.ckpt") -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    ckpt = {"state_dict": {"encoder.w": torch.zeros(2)}, "hyper_parameters": {"cfg": {}}, "x": _Payload(marker)}
    return _save_legacy(ckpt, tmp_path / name), marker


def test_a_plain_legacy_checkpoint_still_loads(tmp_path):
    """Tensors, dicts and scalars in the legacy format load (the refusals below are not of the format itself)."""
    path = _save_legacy({"state_dict": {"w": torch.arange(3.0)}, "epoch": 2}, tmp_path / "plain.ckpt")
    data = load_checkpoint(path)
    assert torch.equal(data["state_dict"]["w"], torch.arange(3.0)) and data["epoch"] == 2


def test_load_checkpoint_refuses_a_legacy_pickled_callable(tmp_path):
    path, marker = _evil(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load"):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"
    fn = _save_legacy({"fn": print}, tmp_path / "fn.ckpt")  # a bare function reference
    with pytest.raises(UnsafeCheckpointError, match=r"fn\.ckpt: refusing to load"):
        load_checkpoint(fn)


def test_init_from_ssl_fairseq_convert_and_encoder_checkpoints_refuse_it(tmp_path):
    """The entry points built on ``load_checkpoint``: a Lightning ``.ckpt`` (``init_from_ssl``), a fairseq file
    (``convert``; the message says how to opt in) and an encoder-only checkpoint."""
    from nemo_sew.convert.common import load_encoder_checkpoint
    from nemo_sew.convert.fairseq import load_checkpoint as load_fairseq
    from nemo_sew.train import _load_checkpoint

    path, marker = _evil(tmp_path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load"):
        _load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load.*allow_pickle=True"):
        load_fairseq(path)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load"):
        load_encoder_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"


def test_a_nemo_file_with_legacy_format_weights_holding_a_callable_is_refused(tmp_path):
    from nemo_sew.quant.model import build_tiny_ctc

    good = tmp_path / "good.nemo"
    build_tiny_ctc("tiny_mel", num_layers=1).save_to(str(good))
    marker = tmp_path / "pwned"
    evil = nemo_with_weights(
        good, tmp_path / "evil.nemo", lambda state: {**state, "payload": _Payload(marker)}, save=_save_legacy
    )
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.nemo: refusing to load its weights"):
        restore(evil)
    assert not marker.exists(), "the checkpoint's code ran"


def test_the_legacy_refusal_names_the_refused_global(tmp_path):
    fn = _save_legacy({"fn": print}, tmp_path / "fn.ckpt")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(fn)
    assert "print" in str(err.value) and "\x1b[" not in str(err.value), str(err.value)


def test_a_legacy_checkpoint_of_allow_listed_plain_data_loads(tmp_path):
    from nemo_sew.convert.fairseq import load_checkpoint as load_fairseq

    data = {"args": argparse.Namespace(arch="wav2vec2", encoder_layers=2), "model": {"w": torch.ones(2)}}
    torch.save(data, tmp_path / "zip.pt")
    assert load_fairseq(tmp_path / "zip.pt")["args"].encoder_layers == 2  # the zip format loads
    legacy = _save_legacy(data, tmp_path / "legacy.pt")
    assert load_fairseq(legacy)["args"].encoder_layers == 2
