"""Weight-only quantization of every weight of an encoder, through ``torch.nn.utils.parametrize``.

Some weights are not read by the module that owns them: the front end's 1x1 convs run as ``bmm`` on
``conv.weight``, the positional conv calls ``F.conv1d`` on its weight-normed weight. A parametrization on
``weight`` is seen by every reader, so one mechanism covers Linear, Conv1d, the ``bmm`` and ``F.conv1d``
paths and the weight-normed positional conv alike (torchao and ModelOpt wrap module classes instead and
miss the direct reads). Two parametrizations:

* :class:`FakeQuant` -- quantize-dequantize with straight-through gradients, over the fp weight (QAT, and PTQ
  analysis). Chained after weight norm where there is one.
* :class:`HeldWeight` -- the packed codes and scales of one or more bit widths (what a ``.nemo`` carries),
  with or without the fp weight.

Which width a forward reads is the plan's decision: the encoder runs each forward inside
:func:`weights_at` ``(draw.profile.weight_bits)``, which every parametrization reads, so a training draw's
``weight_bits`` takes effect like an inference profile's. Outside an encoder forward (a module called on its
own, a trace of a sub-module) the width :func:`set_weight_bits` made the default applies.

The state lives in :class:`QuantConfig`, which the encoder stores in its config (``encoder.quant``), so a
restored ``.nemo`` rebuilds the same parametrizations before its state dict is loaded. Only weights with two
or more dimensions are quantized; biases, norms and the mask embedding stay fp (their bytes are counted by
:func:`storage_bytes`). The CTC head is not part of the encoder and stays fp (>= 8 bits, as the issue asks).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from nemo_sew.errors import UserError
from nemo_sew.quant.schemes import BITS, QuantSpec, dequantize, pack, packed_numel, quantize, scale_shape, unpack

WEIGHT_BITS = (16, *BITS)  # 16 = full precision (what a profile's weight_bits takes)

# the weight width of the forward in progress (None outside one): set by the encoder from its plan, read by the
# parametrizations; a context variable, so it is scoped to the forward (and to its thread)
_FORWARD_BITS: contextvars.ContextVar[int | None] = contextvars.ContextVar("nemo_sew_weight_bits", default=None)


@contextlib.contextmanager
def weights_at(bits: int | None):
    """Every quantized weight read inside this block reads ``bits`` (16 = fp; None = each one's default)."""
    token = _FORWARD_BITS.set(None if bits is None else int(bits))
    try:
        yield
    finally:
        _FORWARD_BITS.reset(token)


@dataclass(frozen=True)
class QuantConfig:
    """The quantization state of an encoder (``encoder.quant`` in a ``.nemo``).

    Args:
        held: bit widths whose packed weights the encoder holds (PTQ or converted QAT).
        fp: the encoder also holds its full-precision weights (False: only ``held``; smallest file).
        group_size: columns per scale for 4-bit weights (8, 2 and 1 bits are per output channel).
        method: scale choice for 8 and 4 bits, ``minmax`` or ``mse``.
        qat: fake-quantize the fp weights in every forward (QAT) at these widths (one, or several for once-for-all
            bits: each forward at its draw's ``weight_bits``, e.g. from a ``weight_bits`` sampler); None = off.
        active: the bit width the forward uses (16 = fp).
    """

    held: tuple[int, ...] = ()
    fp: bool = True
    group_size: int | None = 32
    method: str = "minmax"
    qat: tuple[int, ...] | None = None
    active: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "held", tuple(sorted({int(b) for b in self.held}, reverse=True)))
        bad = [b for b in self.held if b not in BITS]
        if bad:
            raise UserError(f"expected held bit widths in {BITS}, got {bad}")
        if self.qat is not None:  # one width (an int, as configs before once-for-all bits wrote it) or several
            widths = (self.qat,) if isinstance(self.qat, int) else tuple(self.qat)
            object.__setattr__(self, "qat", tuple(sorted({int(b) for b in widths}, reverse=True)))
            if not self.qat or any(b not in BITS for b in self.qat):
                raise UserError(f"expected qat bits in {BITS} or None, got {list(self.qat)}")
        if self.qat is not None and (self.held or not self.fp):
            raise UserError("QAT trains the fp weights: it cannot be combined with held packed weights")
        if not self.fp and not self.held:
            raise UserError("an encoder must hold fp weights, packed weights, or both")
        if self.active not in self.available:
            raise UserError(f"active weight_bits {self.active} is not held; available: {self.available}")
        spec(4, self)  # validates group_size / method

    @property
    def available(self) -> tuple[int, ...]:
        """Bit widths the forward can run at."""
        out = list(self.held)
        if self.fp:
            out.append(16)
        if self.qat is not None:
            out.extend(self.qat)
        return tuple(sorted(set(out), reverse=True))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["held"] = list(self.held)
        if self.qat is not None:  # one width as the int older readers expect
            out["qat"] = self.qat[0] if len(self.qat) == 1 else list(self.qat)
        return out

    @classmethod
    def of(cls, data: "QuantConfig | Mapping[str, Any] | None") -> "QuantConfig | None":
        if data is None or isinstance(data, QuantConfig):
            return data
        return cls(**{k: (tuple(v) if k == "held" else v) for k, v in dict(data).items()})


def spec(bits: int, config: QuantConfig | None = None) -> QuantSpec:
    """The :class:`QuantSpec` of ``bits`` under ``config``: 8-bit per channel, 4-bit per group, 2/1-bit per channel."""
    c = config or QuantConfig()
    if bits == 4:
        return QuantSpec(4, c.group_size, c.method)
    return QuantSpec(bits, None, c.method if bits == 8 else "minmax")


class FakeQuant(nn.Module):
    """Parametrization ``w -> fake_quantize(w)`` at one of its widths (straight-through gradients).

    ``specs``: one :class:`QuantSpec` per width it trains (several: once-for-all bits, each forward at the width
    its draw carries, :func:`weights_at`); ``active`` is the width a forward without a scope reads (16 = ``w``
    itself, the latent fp weight)."""

    def __init__(self, specs: QuantSpec | Mapping[int, QuantSpec]) -> None:
        super().__init__()
        self.specs = {specs.bits: specs} if isinstance(specs, QuantSpec) else dict(specs)
        self.active = min(self.specs)

    @property
    def enabled(self) -> bool:
        return self.active != 16

    @enabled.setter
    def enabled(self, value: bool) -> None:  # off: the latent fp weight; on: the lowest width it trains
        self.active = min(self.specs) if value else 16

    @property
    def spec(self) -> QuantSpec:
        """The spec of the active width (the lowest when off)."""
        return self.specs[self.active if self.active != 16 else min(self.specs)]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        bits = _FORWARD_BITS.get()
        bits = self.active if bits is None else bits
        if bits == 16:
            return w
        if bits not in self.specs:
            raise UserError(f"this weight fake-quantizes at {sorted(self.specs)} bits (QAT), not {bits}")
        wq = dequantize(*quantize(w, self.specs[bits]), dtype=w.dtype)
        return w + (wq - w).detach()


class HeldWeight(nn.Module):
    """Parametrization holding packed codes (``codes_<b>``, uint8) and scales (``scale_<b>``) per bit width.

    ``active`` selects the weight the forward returns: 16 = the fp weight (the parametrization's input,
    which is an empty tensor when the fp weight is not held), else the dequantized codes, cached per (width,
    dtype, device) so that switching widths (a sweep timing its profiles in interleaved rounds, a draw's
    ``weight_bits``) does not dequantize again; the cache is dropped when the codes change (store, load).
    """

    def __init__(self, shape: tuple[int, ...], specs: Mapping[int, QuantSpec]) -> None:
        super().__init__()
        self.shape, self.specs, self.active = tuple(int(s) for s in shape), dict(specs), 16
        for b, s in self.specs.items():
            self.register_buffer(f"codes_{b}", torch.zeros(packed_numel(self.shape, b), dtype=torch.uint8))
            self.register_buffer(f"scale_{b}", torch.ones(scale_shape(s, self.shape)))
        self._cache: dict[tuple, torch.Tensor] = {}

    def store(self, w: torch.Tensor) -> None:
        """Quantize ``w`` at every held bit width into the buffers."""
        for b, s in self.specs.items():
            codes, scale = quantize(w, s)
            getattr(self, f"codes_{b}").copy_(pack(codes, b))
            getattr(self, f"scale_{b}").copy_(scale)
        self._cache = {}

    def codes(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Int8 codes (the weight's shape) and scales ``(out, groups)`` of ``bits``."""
        return unpack(getattr(self, f"codes_{bits}").cpu(), bits, self.shape), getattr(self, f"scale_{bits}").float().cpu()

    def weight(self, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes, scale = self.codes(bits)
        return dequantize(codes, scale, dtype).to(getattr(self, f"scale_{bits}").device)

    def set_active(self, bits: int) -> None:
        if bits != 16 and bits not in self.specs:
            raise UserError(f"this weight holds bit widths {sorted(self.specs)} (and fp), not {bits}")
        self.active = bits
        if bits != 16:  # dequantize now: a traced forward (ONNX) then sees a constant
            self._cached(bits, torch.float32)

    def _cached(self, bits: int, dtype: torch.dtype) -> torch.Tensor:
        key = self._key(dtype, bits)
        if key not in self._cache:
            self._cache[key] = self.weight(bits, dtype)
        return self._cache[key]

    def _key(self, dtype: torch.dtype, bits: int | None = None) -> tuple:
        bits = self.active if bits is None else bits
        return (bits, dtype, getattr(self, f"scale_{bits}").device)

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        bits = _FORWARD_BITS.get()
        bits = self.active if bits is None else bits
        if bits == 16:
            if original.numel() == 0:
                raise RuntimeError("the fp weights are not held (the encoder was saved with quantized weights only)")
            return original
        if bits not in self.specs:
            raise UserError(f"this weight holds bit widths {sorted(self.specs)} (and fp), not {bits}")
        return self._cached(bits, original.dtype if original.is_floating_point() else torch.float32)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache = {}
        super()._load_from_state_dict(*args, **kwargs)


# --------------------------------------------------------------------------------------------------
# which tensors


def weight_targets(module: nn.Module) -> dict[str, nn.Module]:
    """Every module of ``module`` owning a ``weight`` with two or more dimensions (Linear, Conv, and the
    weight-normed positional conv), by module name."""
    out: dict[str, nn.Module] = {}
    for name, m in module.named_modules():
        if name.endswith(("parametrizations.weight", "parametrizations")) or ".parametrizations." in name:
            continue
        if "weight" not in m._parameters and not parametrize.is_parametrized(m, "weight"):
            continue
        if any(isinstance(q, HeldWeight) for q in _quantizers(m)):  # (its fp weight may not be held)
            out[name] = m
            continue
        w = m.weight
        if isinstance(w, torch.Tensor) and w.dim() >= 2 and w.is_floating_point():
            out[name] = m
    return out


def _quantizers(m: nn.Module) -> list[nn.Module]:
    if not parametrize.is_parametrized(m, "weight"):
        return []
    return [p for p in m.parametrizations.weight if isinstance(p, (FakeQuant, HeldWeight))]


def weight_bits_table(module: nn.Module, head: nn.Module | None = None) -> list[tuple[str, tuple[int, ...], int]]:
    """``(name, shape, bits)`` of every weight tensor (two or more dims) of ``module`` (and of the CTC ``head``,
    which stays fp): the bits the forward reads now (32 = fp32)."""
    rows = []
    for prefix, mod in (("", module), ("head.", head)):
        if mod is None:
            continue
        for name, m in weight_targets(mod).items():
            q = _quantizers(m)
            bits = 32
            if q and isinstance(q[-1], HeldWeight) and q[-1].active != 16:
                bits = q[-1].active
            elif q and isinstance(q[-1], FakeQuant) and q[-1].enabled:
                bits = q[-1].active
            rows.append((f"{prefix}{name}.weight", tuple(q[-1].shape) if q and isinstance(q[-1], HeldWeight) else tuple(m.weight.shape), bits))
    return rows


# --------------------------------------------------------------------------------------------------
# applying a config


def _bake(m: nn.Module) -> None:
    """Remove parametrizations on ``weight`` (weight norm, fake quant), keeping their current value."""
    if parametrize.is_parametrized(m, "weight"):
        for p in m.parametrizations.weight:
            if isinstance(p, FakeQuant):
                p.enabled = False  # bake the fp (latent) weight, not its fake-quantized value
        with torch.no_grad():
            value = m.weight.detach().clone()
        if set(m.parametrizations.keys()) != {"weight"}:
            with torch.no_grad():
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
            return
        # by hand rather than remove_parametrizations, which deletes the property from the module's class, a
        # class deepcopy shares between copies (it would break the encoder a copy was made from)
        del m.parametrizations
        m.__class__ = m.__class__.__bases__[0]
        m.weight = nn.Parameter(value)


def _register_held(m: nn.Module, config: QuantConfig, values: bool) -> HeldWeight:
    _bake(m)
    w = m.weight.detach()
    held = HeldWeight(tuple(w.shape), {b: spec(b, config) for b in config.held}).to(w.device)
    if values:
        held.store(w)
    parametrize.register_parametrization(m, "weight", held, unsafe=True)
    if not config.fp:
        m.parametrizations.weight.original = nn.Parameter(w.new_empty(0), requires_grad=False)
    return held


PRUNE_FIRST = (
    "this model still has live pruning masks (encoder.pruning): materialise them first with "
    "`nemo-sew prune MODEL.nemo --out pruned.nemo`, then quantize pruned.nemo"
)


def refuse_pruning_masks(encoder: nn.Module) -> None:
    """Quantization and live pruning masks do not combine: the masks' hooks, the materialisation (which slices
    ``weight`` tensors by name) and packed codes of channels about to be removed would disagree. Prune, then
    quantize (README: "Pruning and quantization together")."""
    if getattr(encoder, "pruning", None) is not None:
        raise UserError(PRUNE_FIRST)


def apply_config(encoder: nn.Module, config: QuantConfig | Mapping[str, Any] | None, values: bool = False) -> QuantConfig | None:
    """Give every weight of ``encoder`` the parametrizations ``config`` describes.

    ``values=False`` (building an encoder that a state dict will fill, e.g. restoring a ``.nemo``) only
    creates buffers of the right shapes; ``values=True`` quantizes the current weights into them.
    """
    config = QuantConfig.of(config)
    if config is None:
        return None
    refuse_pruning_masks(encoder)
    for m in weight_targets(encoder).values():
        if config.qat is not None:
            parametrize.register_parametrization(m, "weight", FakeQuant({b: spec(b, config) for b in config.qat}))
        else:
            _register_held(m, config, values)
    set_weight_bits(encoder, config.active, config)
    return config


def set_weight_bits(encoder: nn.Module, bits: int, config: QuantConfig | None) -> None:
    """Make every quantized weight read ``bits`` (16 = fp); refuses bit widths the encoder does not hold."""
    available = config.available if config is not None else (16,)
    if bits not in available:
        if config is None:
            how = "it holds fp weights only: run `nemo-sew quantize MODEL.nemo --bits N` (PTQ) or QAT first"
        elif not config.fp and bits == 16:
            how = f"it holds only packed {list(config.held)}-bit weights (saved without fp weights)"
        else:
            how = f"it holds {', '.join(map(str, available))}-bit weights"
        raise UserError(f"cannot run at weight_bits={bits}: {how}")
    for m in weight_targets(encoder).values():
        for q in _quantizers(m):
            if isinstance(q, HeldWeight):
                q.set_active(bits)
            else:
                q.active = bits


def quantize_encoder(
    encoder: nn.Module, bits: int | tuple[int, ...], keep_fp: bool = True, group_size: int | None = 32, method: str = "minmax"
) -> QuantConfig:
    """PTQ: pack ``encoder``'s current weights (fp, or the latent weights of a QAT encoder) at ``bits``.

    Returns the new :class:`QuantConfig` (active at the lowest bit width); the encoder's config holds it if
    the encoder has a ``quant_config`` attribute (:class:`nemo_sew.SqueezeEncoder`).
    """
    held = (bits,) if isinstance(bits, int) else tuple(bits)
    refuse_pruning_masks(encoder)
    old = getattr(encoder, "quant_config", None)
    if old is not None and old.held:
        raise UserError(f"this encoder already holds packed {list(old.held)}-bit weights; quantize its fp model")
    config = QuantConfig(held=held, fp=keep_fp, group_size=group_size, method=method, active=min(held))
    for m in weight_targets(encoder).values():
        _register_held(m, config, values=True)
    set_weight_bits(encoder, config.active, config)
    _adopt(encoder, config)
    return config


def prepare_qat(encoder: nn.Module, bits: int | Sequence[int], group_size: int | None = 32,
                method: str = "minmax") -> QuantConfig:  # fmt: skip
    """QAT: fake-quantize every weight of an fp ``encoder`` at ``bits`` (straight-through gradients). Several
    widths train once-for-all bits: each forward runs at its draw's ``weight_bits`` (a ``weight_bits`` sampler in
    ``squeeze_sampler``); the encoder is active at the lowest."""
    if getattr(encoder, "quant_config", None) is not None:
        raise UserError("QAT starts from an fp encoder without quantization state")
    refuse_pruning_masks(encoder)
    widths = (int(bits),) if isinstance(bits, int) else tuple(int(b) for b in bits)
    config = QuantConfig(qat=widths, group_size=group_size, method=method, active=min(widths) if widths else 16)
    apply_config(encoder, config)
    _adopt(encoder, config)
    return config


def _adopt(encoder: nn.Module, config: QuantConfig) -> None:
    """Store ``config`` in a :class:`nemo_sew.SqueezeEncoder` and make its profile run at ``config.active``."""
    if hasattr(encoder, "quant_config"):
        encoder.quant_config = config
        encoder.set_profile({**encoder.profile.to_dict(), "weight_bits": config.active})


def held_weights(encoder: nn.Module) -> Iterator[tuple[str, nn.Module, HeldWeight]]:
    for name, m in weight_targets(encoder).items():
        q = _quantizers(m)
        if q and isinstance(q[-1], HeldWeight):
            yield name, m, q[-1]


def storage_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict tensors (packed codes, scales and everything kept in fp)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))
