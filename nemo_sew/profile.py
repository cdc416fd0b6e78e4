"""Compression profiles: the unit users train for, sweep, export and ship (the project's design notes: README, Architecture)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from nemo_sew.arch import checked_fields
from nemo_sew.errors import UserError


@dataclass(frozen=True)
class CompressionProfile:
    """How much compute one forward pass may spend.

    Args:
        squeeze: down-sampling rate before the transformer; integer (SEW) or real (once-for-all).
            None means the encoder's trained default.
        q_pool: per-layer query pooling strides (MViT-style pooling attention), None = no pooling.
        kv_pool: per-layer key/value pooling strides, None = no pooling.
        depth_threshold: I3D gate threshold (a gate opens when its probability is above it; 0 runs every branch),
            None = the threshold the gates were trained with (``gates.threshold``).
        arch: the (possibly pruned) per-layer architecture (heads, FFN widths, conv channels), None = as built.
        weight_bits: weight-only quantization (16 = fp, 8, 4, 2 or 1 bits); the encoder must hold those weights
            (``nemo-sew quantize``, :mod:`nemo_sew.quant`).
        static_gates: I3D gates frozen to a fixed depth, ``{"<layer>.<branch>": 1 open | 0 closed}`` (gates not
            listed stay open); the predictors do not run, so the graph is static (TensorRT). None = input-dependent.
            :func:`nemo_sew.export.static_gates.freeze_gates` makes one from the mean decisions over inputs.
        name: optional label (the key in a profiles YAML).
    """

    squeeze: float | None = None
    q_pool: tuple[int, ...] | None = None
    kv_pool: tuple[int, ...] | None = None
    depth_threshold: float | None = None
    arch: Mapping[str, Any] | None = None
    weight_bits: int = 16
    static_gates: Mapping[str, int] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.squeeze is not None and not float(self.squeeze) >= 1.0:
            raise UserError(f"expected squeeze >= 1, got {self.squeeze}")
        if self.weight_bits not in (16, 8, 4, 2, 1):
            raise UserError(f"expected weight_bits in (16, 8, 4, 2, 1), got {self.weight_bits}")
        for field in ("q_pool", "kv_pool"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, tuple(int(v) for v in value))
        if self.static_gates is not None:
            bad = {k: v for k, v in dict(self.static_gates).items() if v not in (0, 1) or str(k).count(".") != 1}
            if bad:
                raise UserError(f"expected static_gates as {{'<layer>.<branch>': 0 or 1}}, got {bad}")
            object.__setattr__(self, "static_gates", {str(k): int(v) for k, v in dict(self.static_gates).items()})

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, for YAML and OmegaConf model configs."""
        out = dataclasses.asdict(self)
        for field in ("q_pool", "kv_pool"):
            if out[field] is not None:
                out[field] = list(out[field])
        for field in ("arch", "static_gates"):
            if out[field] is not None:
                out[field] = dict(out[field])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "CompressionProfile":
        return cls(**checked_fields(cls, data, "compression profile"))


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
        raise UserError(f"expected a mapping of profile names to fields in {path}, got {type(data).__name__}")
    return {name: dataclasses.replace(as_profile(fields), name=str(name)) for name, fields in data.items()}


@dataclass(frozen=True)
class ProfileSampler:
    """Draws a training profile per batch, identical on every DDP rank (seeded by the global step).

    Args:
        squeeze: ``{"values": [1, 2, 3, 4]}`` (uniform over a set) or ``{"low": 1.0, "high": 4.0}``
            (uniform over a range: real rates run through CIF), None = the encoder's factor.
        q_pool, kv_pool: per-layer stride choices, e.g. ``{"values": [[1, 1, 2, 1], [1, 1, 1, 1]]}``; None = off.
        cif_lambda: OFA's lambda range for CIF weight mixing, ``{"low": 0.0, "high": 1.0}`` (its default).
        weight_bits: ``{"values": [16, 8, 4]}``: the weight width of each step (once-for-all bits; needs QAT at those
            widths, ``qat: {bits: [8, 4]}``; 16 = the latent fp weights); None = the encoder's active width.
        seed: base seed; the draw for step ``n`` depends only on ``(seed, n)``.
    """

    squeeze: Mapping[str, Any] | None = None
    q_pool: Mapping[str, Any] | None = None
    kv_pool: Mapping[str, Any] | None = None
    cif_lambda: Mapping[str, Any] | None = None
    seed: int = 0
    weight_bits: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.weight_bits is not None and "values" not in self.weight_bits:
            raise UserError(f"weight_bits sampler: expected {{'values': [16, 8, 4]}} (a set of widths), got {dict(self.weight_bits)}")
        for name in ("squeeze", "q_pool", "kv_pool", "cif_lambda", "weight_bits"):
            spec = getattr(self, name)
            if spec is None:
                continue
            if "values" in spec:
                if not list(spec["values"]):
                    raise UserError(f"{name} sampler: 'values' must not be empty")
            elif not ("low" in spec and "high" in spec and float(spec["low"]) <= float(spec["high"])):
                raise UserError(f"{name} sampler: expected {{'values': [...]}} or {{'low': a, 'high': b}} with a <= b, got {dict(spec)}")
        if self.squeeze is not None and min(self.squeeze_choices()) < 1:
            raise UserError(f"squeeze sampler must draw values >= 1, got {dict(self.squeeze)}")

    def squeeze_choices(self) -> list[float]:
        spec = self.squeeze or {}
        return [float(v) for v in spec["values"]] if "values" in spec else [float(spec["low"]), float(spec["high"])]

    @staticmethod
    def _draw(rng: "random.Random", spec: Mapping[str, Any] | None):
        if spec is None:
            return None
        if "values" in spec:
            return rng.choice(list(spec["values"]))
        return rng.uniform(float(spec["low"]), float(spec["high"]))

    def sample(self, step: int) -> tuple[CompressionProfile, float]:
        """The profile and CIF lambda for global step ``step`` (same on every rank)."""
        rng = random.Random(self.seed * 1_000_003 + int(step))
        squeeze = self._draw(rng, self.squeeze)
        q_pool = self._draw(rng, self.q_pool)
        kv_pool = self._draw(rng, self.kv_pool)
        lam = self._draw(rng, self.cif_lambda)
        bits = self._draw(rng, self.weight_bits)  # drawn last: the other draws stay what they were without it
        profile = CompressionProfile(
            squeeze=None if squeeze is None else float(squeeze),
            q_pool=None if q_pool is None else tuple(q_pool),
            kv_pool=None if kv_pool is None else tuple(kv_pool),
            **({} if bits is None else {"weight_bits": int(bits)}),
        )
        return profile, (1.0 if lam is None else float(lam))

    def draws_weight_bits(self) -> bool:
        return self.weight_bits is not None
