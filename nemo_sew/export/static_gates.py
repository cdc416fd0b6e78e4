"""A static (TensorRT-friendly) profile of an I3D model: its gates frozen at their mean decisions.

    from nemo_sew.export.static_gates import freeze_gates
    static = freeze_gates(model, manifest="dev.json", profile="t0.6")   # CompressionProfile "t0.6_static"
    to_onnx(model, "exported/t0.6_static.onnx", profile=static)        # no predictors, no If nodes

The input-dependent export (one ``If`` per gated branch, :mod:`nemo_sew.export.conditional`) is what
onnxruntime runs; an engine builder that wants one fixed graph gets this instead: every gate whose decision
at ``profile`` is "open" on at least half of the inputs stays (ungated), the others are removed. The result
is an ordinary :class:`~nemo_sew.profile.CompressionProfile` with ``static_gates`` (``{"<layer>.<branch>":
0 | 1}``), so it is named, stored in a profiles YAML, swept, exported and checked like any other.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import torch

from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile


def _encoder(obj: Any) -> SqueezeEncoder:
    encoder = obj if isinstance(obj, SqueezeEncoder) else getattr(obj, "encoder", None)
    if not isinstance(encoder, SqueezeEncoder):
        raise TypeError(f"expected a SqueezeEncoder or a model with one, got {type(obj).__name__}")
    if encoder.gate_options is None:
        raise ValueError("freezing gates needs an encoder built with gates (I3D); this one has none")
    return encoder


def _decisions(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Inference decisions from probabilities, as :func:`nemo_sew.nn.gates.gate_decisions` takes them."""
    if threshold <= 0.0:
        return torch.ones_like(probs)
    if threshold >= 1.0:
        return torch.zeros_like(probs)
    return (probs > threshold).float()


def gate_open_rates(
    model_or_encoder: Any,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    manifest: str | Path | None = None,
    profile: ProfileLike | str | None = None,
) -> dict[str, float]:
    """The fraction of inputs on which each gate is open at ``profile`` (eval mode, no noise).

    Args:
        inputs: batches ``(audio_signal, length)`` on the encoder's input port; or
        manifest: a NeMo manifest, each utterance alone through a CTC model's preprocessor and encoder.
        profile: the profile whose threshold (and squeeze) decide; a model's named profile; None = active.
    Returns ``{"<layer>.<branch>": rate}`` in :attr:`SqueezeEncoder.gate_slots` order.
    """
    encoder = _encoder(model_or_encoder)
    if (inputs is None) == (manifest is None):
        raise ValueError("pass exactly one of inputs (batches) or manifest")
    if manifest is not None and isinstance(model_or_encoder, SqueezeEncoder):
        raise ValueError("a manifest needs the whole model (its preprocessor); pass inputs for a bare encoder")
    if isinstance(profile, str):
        resolved = model_or_encoder._resolve_profile(profile)
    else:
        resolved = encoder.profile if profile is None else as_profile(profile)
    previous, was_training = encoder.profile, encoder.training
    rows: list[torch.Tensor] = []
    try:
        encoder.set_profile(dataclasses.replace(resolved, static_gates=None))
        threshold = encoder.depth_threshold(encoder.profile)
        if manifest is not None:
            from nemo_sew.evaluate import gated_utterance_stats

            probs = torch.tensor(gated_utterance_stats(model_or_encoder, manifest)["gate_probs"])
            rows.append(_decisions(probs, threshold))
        else:
            encoder.eval()
            with torch.no_grad():
                for audio, length in inputs:
                    probs = encoder.run(audio, length).stats["gate_probs"].float()  # (B, G)
                    rows.append(_decisions(probs, threshold))
    finally:
        encoder.set_profile(previous)
        encoder.train(was_training)
    if not rows:
        raise ValueError("no inputs to freeze the gates from")
    rates = torch.cat(rows).float().nanmean(0)
    return {f"{i}.{name}": float(r) for (i, name), r in zip(encoder.gate_slots, rates)}


def freeze_gates(
    model_or_encoder: Any,
    inputs: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    manifest: str | Path | None = None,
    profile: ProfileLike | str | None = None,
    name: str | None = None,
) -> CompressionProfile:
    """``profile`` with its gates frozen at their mean decisions over ``inputs`` or ``manifest`` (a gate open on
    at least half of them stays open), named ``name`` (default ``<profile name>_static``)."""
    rates = gate_open_rates(model_or_encoder, inputs, manifest, profile)
    encoder = _encoder(model_or_encoder)
    if isinstance(profile, str):
        base = dataclasses.replace(model_or_encoder._resolve_profile(profile), name=profile)
    else:
        base = encoder.profile if profile is None else as_profile(profile)
    label = name or f"{base.name or 'default'}_static"
    return dataclasses.replace(base, static_gates={k: int(r >= 0.5) for k, r in rates.items()}, name=label)
