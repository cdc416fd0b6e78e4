"""Quantizing whole NeMo models: ``nemo-sew quantize MODEL.nemo --bits 4 --out q.nemo`` (PTQ), QAT conversion.

The encoder's :class:`~nemo_sew.quant.QuantConfig` goes into ``cfg.encoder.quant`` and the active bit width
into ``cfg.profile.weight_bits``, so ``ASRModel.restore_from`` rebuilds the packed parametrizations and
runs at that width. The CTC head stays fp32.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import open_dict

from nemo_sew.errors import UserError
from nemo_sew.quant.weights import PRUNE_FIRST, QuantConfig, quantize_encoder, storage_bytes

log = logging.getLogger(__name__)


def sync_model_config(model: Any) -> None:
    """Write the encoder's config (with its ``quant`` state) and active profile into ``model.cfg``."""
    model.sync_encoder_config()


def quantize_model(model: Any, bits: int | tuple[int, ...], keep_fp: bool = False, group_size: int | None = 32,
                   method: str = "minmax") -> QuantConfig:
    """PTQ of a :class:`nemo_sew.SqueezeCTCModel`'s encoder (or convert a QAT model: its latent weights are
    packed); afterwards the model runs at the lowest of ``bits``."""
    enc = model.encoder
    old = enc.quant_config
    if old is not None and old.qat is not None:  # QAT -> packed: the fake-quant parametrizations are baked away
        enc.quant_config = None
    config = quantize_encoder(enc, bits, keep_fp=keep_fp, group_size=group_size, method=method)
    enc.set_profile({**enc.profile.to_dict(), "weight_bits": config.active})
    sync_model_config(model)
    _sync_named_profiles(model, config)
    return config


def _sync_named_profiles(model: Any, config: QuantConfig) -> None:
    """Named profiles (``cfg.profiles``, e.g. the ``--name mac60`` label ``nemo-sew prune`` writes, whose
    ``weight_bits`` is the default 16) must stay runnable: one asking for a width the quantized model does not
    hold now runs at ``config.active``. Its ``arch`` is kept (still this file's own arch: quantization does not
    change shapes)."""
    from omegaconf import OmegaConf

    named = model.cfg.get("profiles")
    if not named:
        return
    named = OmegaConf.to_container(named, resolve=True)
    changed = []
    for name, fields in named.items():
        fields = dict(fields or {})
        if int(fields.get("weight_bits", 16)) not in config.available:
            fields["weight_bits"] = config.active
            named[name] = fields
            changed.append(name)
    if changed:
        with open_dict(model._cfg):
            model._cfg.profiles = named
        log.info("named profiles %s now run at weight_bits=%d (the model holds %s)", changed, config.active,
                 config.available)  # fmt: skip


def quantize_nemo(src: str | Path, out: str | Path, bits: int | tuple[int, ...], keep_fp: bool = False,
                  group_size: int | None = 32, method: str = "minmax") -> dict[str, Any]:
    """Restore ``src``, quantize, save ``out``; returns the file sizes."""
    from nemo_sew.safe_load import restore

    src, out = Path(src), Path(out)
    if not src.is_file():
        raise FileNotFoundError(f"no such .nemo file: {src}")
    model = restore(src).eval()
    if not hasattr(model.encoder, "quant_config"):
        raise UserError(f"{src} does not hold a nemo_sew SqueezeEncoder (got {type(model.encoder).__name__})")
    if getattr(model.encoder, "pruning", None) is not None:
        raise UserError(f"{src}: {PRUNE_FIRST.replace('MODEL.nemo', str(src))}")
    fp_bytes = storage_bytes(model)
    config = quantize_model(model, bits, keep_fp, group_size, method)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save_to(str(out))
    info = {
        "bits": list(config.held), "keep_fp": keep_fp, "group_size": group_size, "method": method,
        "src_bytes": src.stat().st_size, "out_bytes": out.stat().st_size,
        "state_bytes_fp": fp_bytes, "state_bytes_quantized": storage_bytes(model),
    }  # fmt: skip
    info["file_ratio"] = info["out_bytes"] / info["src_bytes"]
    return info


def tiny_ctc_config(preset: str = "tiny_mel", labels: str = "abcdefghijklmnopqrstuvwxyz' ", **encoder: Any) -> dict:
    """A data-free :class:`nemo_sew.SqueezeCTCModel` config (log-mel preprocessor, char head) for tests/benches."""
    from nemo_sew.arch import resolve_arch
    from nemo_sew.encoder import encoder_config
    from nemo_sew.nn.frontend import frontend_layout

    enc_cfg = encoder_config(preset, **encoder)
    waveform = frontend_layout(resolve_arch(preset, enc_cfg["arch"]).frontend).port == "waveform"
    preprocessor = ({"_target_": "nemo_sew.WaveformPreprocessor", "sample_rate": 16000} if waveform else
                    {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                     "sample_rate": 16000, "features": 80, "dither": 0.0, "pad_to": 0})  # fmt: skip
    return {
        "sample_rate": 16000,
        "labels": list(labels),
        "preprocessor": preprocessor,
        "spec_augment": None,
        "encoder": {"_target_": "nemo_sew.SqueezeEncoder", **enc_cfg},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": 0, "num_classes": len(labels),
                    "vocabulary": list(labels)},
    }  # fmt: skip


def build_tiny_ctc(preset: str = "tiny_mel", **encoder: Any):
    from omegaconf import OmegaConf

    from nemo_sew import SqueezeCTCModel, build_encoder

    cfg = tiny_ctc_config(preset, **encoder)
    cfg["decoder"]["feat_in"] = build_encoder(preset, **encoder).d_model
    return SqueezeCTCModel(cfg=OmegaConf.create(cfg)).eval()


def logprobs(model: Any, audio: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_signal=audio, input_signal_length=lengths)[0]
