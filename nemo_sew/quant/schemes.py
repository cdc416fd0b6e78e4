"""Weight quantization schemes: symmetric integer codes plus scales, per output channel or per group.

A weight ``W`` of shape ``(out, ...)`` is seen as a matrix ``(out, n)`` (``n`` = everything but the output
axis: ``in`` for a Linear, ``in / groups * kernel`` for a conv), split into groups of ``group_size``
columns (``None`` = one group per output channel). Every group gets one scale ``s`` and integer codes ``q``
with ``W ~ s * q``; zero-points are always 0 (what TensorRT's ``IDequantizeLayer`` and ORT's symmetric
``MatMulNBits`` accept).

* 8 / 4 bits: ``q = clamp(round(W / s), -(2^(b-1) - 1), 2^(b-1) - 1)``, ``s = amax / (2^(b-1) - 1)``
  (min-max), or the clipped ``s`` among a grid of shrink factors that minimises the group's squared error
  (``method="mse"``).
* 2 bits: ternary weights (TWN, Li et al. 2016): ``q = sign(W) * [|W| > 0.7 * mean|W|]`` and
  ``s = mean of |W| over the kept entries``; codes ``{-1, 0, 1}``.
* 1 bit: BiT / BWN binarization (Liu et al. 2022, eq. for ``W_B``): ``W_b = sign(W - mean(W)) * mean|W|``
  per output channel (per group with ``group_size``); codes ``{-1, +1}``. Written from the published formula.

Packing (what a ``.nemo`` stores): codes are offset to unsigned and packed ``8 / b`` per byte (1-bit codes as
one bit each). All of this is hand-written: torchao packs Linear weights only and has no BWN/ternary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BITS = (8, 4, 2, 1)
METHODS = ("minmax", "mse")
_MSE_GRID = torch.linspace(1.0, 0.5, 11).tolist()  # shrink factors of amax tried by method="mse"


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized.

    Args:
        bits: 8, 4, 2 (ternary) or 1 (BiT binarization).
        group_size: columns per scale (32/64/128 for 4-bit); None = per output channel. A weight whose
            column count is not a multiple of it falls back to per channel (see :func:`effective_group`).
        method: ``minmax`` or ``mse`` (optimal clipping by grid search); 8 and 4 bits only.
    """

    bits: int = 8
    group_size: int | None = None
    method: str = "minmax"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"expected bits in {BITS}, got {self.bits}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"expected group_size >= 1 or None, got {self.group_size}")
        if self.method not in METHODS:
            raise ValueError(f"expected method in {METHODS}, got {self.method!r}")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.bits > 2 else 1

    def to_dict(self) -> dict:
        return {"bits": self.bits, "group_size": self.group_size, "method": self.method}


def effective_group(spec: QuantSpec, columns: int) -> int:
    """The group width used for a weight with ``columns`` columns: ``group_size`` if it divides them, else all."""
    g = spec.group_size
    return g if g is not None and columns % g == 0 and g < columns else columns


def scale_shape(spec: QuantSpec, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(out, groups)``: the shape of the scales of a weight of ``shape``."""
    out, cols = shape[0], _columns(shape)
    return out, cols // effective_group(spec, cols)


def _columns(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[1:]:
        n *= int(d)
    return n


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``(out, groups, g)`` view of ``w`` in float32."""
    cols = _columns(tuple(w.shape))
    g = effective_group(spec, cols)
    return w.detach().float().reshape(w.shape[0], cols // g, g)


def _round_codes(wg: torch.Tensor, scale: torch.Tensor, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(wg / scale[..., None]), -qmax, qmax)


def quantize(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8, ``w``'s shape) and float32 scales ``(out, groups)`` with ``w ~ dequantize(...)``."""
    wg = _grouped(w, spec)  # (out, G, g)
    if spec.bits == 1:
        centred = wg - wg.mean(-1, keepdim=True)
        codes = torch.where(centred >= 0, 1.0, -1.0)
        scale = wg.abs().mean(-1)
    elif spec.bits == 2:
        a = wg.abs()
        delta = 0.7 * a.mean(-1, keepdim=True)
        keep = a > delta
        codes = torch.sign(wg) * keep
        scale = (a * keep).sum(-1) / keep.sum(-1).clamp_min(1)
    else:
        amax = wg.abs().amax(-1)
        scale = amax / spec.qmax
        if spec.method == "mse":
            best_err = None
            for f in _MSE_GRID:
                s = amax * f / spec.qmax
                s = torch.where(s > 0, s, torch.ones_like(s))
                err = ((_round_codes(wg, s, spec.qmax) * s[..., None] - wg) ** 2).sum(-1)
                if best_err is None:
                    best_err, scale = err, s
                else:
                    better = err < best_err
                    best_err, scale = torch.where(better, err, best_err), torch.where(better, s, scale)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero group: any scale, codes 0
        codes = _round_codes(wg, scale, spec.qmax)
    return codes.to(torch.int8).reshape(w.shape), scale.contiguous()


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``scale * codes`` back in ``codes``' shape (``scale`` is ``(out, groups)``)."""
    out, groups = scale.shape
    cg = codes.reshape(out, groups, -1).to(torch.float32)
    return (cg * scale[..., None]).reshape(codes.shape).to(dtype)


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize with straight-through gradients (``d out / d w = 1``): the QAT forward."""
    wq = dequantize(*quantize(w, spec), dtype=w.dtype)
    return w + (wq - w).detach()


# --------------------------------------------------------------------------------------------------
# packing


def _offset(bits: int) -> int:
    return 0 if bits == 1 else 2 ** (bits - 1)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (int8) -> flat uint8 with ``8 // bits`` codes per byte (little end first)."""
    if bits not in BITS:
        raise ValueError(f"expected bits in {BITS}, got {bits}")
    flat = codes.flatten().to(torch.int16)
    u = ((flat > 0).to(torch.int16) if bits == 1 else flat + _offset(bits)).to(torch.uint8)
    if bits == 8:
        return u
    per = 8 // bits
    pad = (-u.numel()) % per
    u = torch.cat([u, u.new_zeros(pad)]).reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32, device=codes.device) * bits  # on the weights' device (GPU PTQ)
    return (u << shifts).sum(-1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack`: int8 codes of ``shape``."""
    n = _columns((1, *shape))
    if bits == 8:
        u = packed.to(torch.int16)
    else:
        per = 8 // bits
        shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
        u = ((packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)).flatten().to(torch.int16)
    u = u[:n]
    codes = (2 * u - 1) if bits == 1 else u - _offset(bits)
    return codes.to(torch.int8).reshape(shape)


def packed_numel(shape: tuple[int, ...], bits: int) -> int:
    n = _columns((1, *shape))
    per = 8 // bits
    return -(-n // per)
