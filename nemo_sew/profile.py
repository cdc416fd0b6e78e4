"""Compression profiles: the unit users train for, sweep, export and ship (see DESIGN.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml


@dataclass(frozen=True)
class CompressionProfile:
    """How much compute one forward pass may spend.

    Args:
        squeeze: down-sampling rate before the transformer; integer (SEW) or real (once-for-all).
            None means the encoder's trained default.
        q_pool: per-layer query pooling strides (MViT-style pooling attention), None = no pooling.
        kv_pool: per-layer key/value pooling strides, None = no pooling.
        depth_threshold: I3D gate threshold, None = run all layers.
        arch: the (possibly pruned) per-layer architecture (heads, FFN widths, conv channels), None = as built.
        weight_bits: weight-only quantization (16, 8, 4 or 1 bits).
        name: optional label (the key in a profiles YAML).
    """

    squeeze: float | None = None
    q_pool: tuple[int, ...] | None = None
    kv_pool: tuple[int, ...] | None = None
    depth_threshold: float | None = None
    arch: Mapping[str, Any] | None = None
    weight_bits: int = 16
    name: str | None = None

    def __post_init__(self) -> None:
        if self.squeeze is not None and not float(self.squeeze) >= 1.0:
            raise ValueError(f"expected squeeze >= 1, got {self.squeeze}")
        if self.weight_bits not in (16, 8, 4, 1):
            raise ValueError(f"expected weight_bits in (16, 8, 4, 1), got {self.weight_bits}")
        for field in ("q_pool", "kv_pool"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, tuple(int(v) for v in value))

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for YAML and OmegaConf model configs."""
        out = dataclasses.asdict(self)
        for field in ("q_pool", "kv_pool"):
            if out[field] is not None:
                out[field] = list(out[field])
        if out["arch"] is not None:
            out["arch"] = dict(out["arch"])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "CompressionProfile":
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown compression profile fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**data)


ProfileLike = CompressionProfile | Mapping[str, Any] | float | int | None


def as_profile(profile: ProfileLike) -> CompressionProfile:
    """Accept a profile, a mapping of its fields, or a bare squeeze factor."""
    if isinstance(profile, CompressionProfile):
        return profile
    if profile is None:
        return CompressionProfile()
    if isinstance(profile, (int, float)):
        return CompressionProfile(squeeze=float(profile))
    return CompressionProfile.from_dict(profile)


def load_profiles(path: str | Path) -> dict[str, CompressionProfile]:
    """Read named profiles from YAML: ``{name: {squeeze: 2, ...}, ...}`` (see ``recipes/profiles/``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"profiles file not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping of profile names to fields in {path}, got {type(data).__name__}")
    return {name: dataclasses.replace(as_profile(fields), name=str(name)) for name, fields in data.items()}
