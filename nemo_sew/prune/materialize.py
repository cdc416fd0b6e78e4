"""Materialise a masked encoder: fold the deterministic masks into the weights, remove what they zero, and
return an ordinary :class:`~nemo_sew.SqueezeEncoder` of a smaller, per-layer heterogeneous arch.

Every mask sits after a nonlinearity (see :mod:`nemo_sew.prune.masks`), so a kept unit's soft mask value is a
scale on the next linear map's input (the next conv, ``out_proj``, ``fc2``, ``pointwise2``, the projection) or,
for a branch mask, on the branch's output weight and bias. A group with no kept unit becomes a width-0
branch (``heads=0``: no attention branch). A front-end layer always keeps at least one channel.
(Notes A7; DPHuBERT's ``prune()`` does the same on torchaudio's modules; written here for ours.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from nemo_sew.arch import EncoderArch
from nemo_sew.nn.blocks import BRANCH_KINDS, branch_kind
from nemo_sew.nn.frontend import FRONTEND_UNITS
from nemo_sew.nn.units import UnitSlice


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx).clone()


def _cols(t: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    shape = [1] * t.dim()
    shape[1] = -1
    return (t.index_select(1, idx) * scale.to(t.dtype).view(shape)).clone()


def _slice(
    state: dict, prefix: str, where: UnitSlice, idx: torch.Tensor, mask: torch.Tensor, units: int, per_unit: int = 1
) -> None:
    """Keep the kept units ``idx`` (of ``units``) in the parameters ``where`` names under ``prefix``: their rows
    (weight and bias), or their input columns scaled by the units' mask values."""
    channels, owner = where.channel_index(idx, units, per_unit)
    for module in where.modules:
        p = f"{prefix}{module}."
        if where.axis == 0:
            for suffix in ("weight", "bias"):
                if p + suffix in state:
                    state[p + suffix] = _rows(state[p + suffix], channels)
        else:
            state[p + "weight"] = _cols(state[p + "weight"], channels, mask[owner])


@torch.no_grad()
def materialize_state(encoder) -> tuple[EncoderArch, dict[str, torch.Tensor]]:
    """The pruned arch and state dict (keys relative to the encoder, without ``pruning.*``) of a masked encoder.

    Which parameters carry which units comes from the declarations: :data:`~nemo_sew.nn.frontend.FRONTEND_UNITS`
    for the front end, each branch kind's :class:`~nemo_sew.nn.units.BranchUnits` for the blocks."""
    pruning = encoder.pruning
    if pruning is None:
        raise ValueError("this encoder has no pruning masks (build it with pruning=...)")
    masks = pruning.deterministic()
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items() if not k.startswith("pruning.")}
    arch = encoder.arch
    fe_layers = [list(layer) for layer in arch.frontend.conv_layers]
    blocks = [dataclasses.asdict(b) for b in arch.blocks]
    for b in blocks:
        for kind in BRANCH_KINDS:
            if kind.columns:
                b[kind.width] = list(b[kind.width])

    # front end: layer i's mask selects conv_i's outputs (and its norm), scales the consumer's inputs
    n_conv, fe = len(fe_layers), FRONTEND_UNITS
    for slot in (s for s in pruning.slots if s.unit == "frontend"):
        i, m = slot.layer, masks[slot.key]
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"front-end layer {i} has no channel left")  # HardConcrete keeps >= 1; defensive
        n = fe_layers[i][0]
        _slice(state, fe.block.format(i=i), fe.rows, idx, m, n)
        if i + 1 < n_conv:
            _slice(state, fe.block.format(i=i + 1), fe.next, idx, m, n)
        else:  # the last layer: its mask sits after the feature LayerNorm (if any), before the projection
            for where in fe.last:
                _slice(state, "", where, idx, m, n)
        fe_layers[i][0] = int(idx.numel())

    # blocks: each branch kind declares the parameters that carry its units (nemo_sew.nn.blocks.BRANCH_KINDS)
    dropped: set[tuple[int, str]] = set()
    for slot in (s for s in pruning.slots if s.unit != "frontend"):
        li, name, m = slot.layer, slot.branch, masks[slot.key]
        p = f"layers.{li}.{name}.body."
        kind, col = branch_kind(name)
        if slot.unit == "branch":
            if float(m[0]) == 0.0:
                dropped.add((li, name))
                continue
            for suffix in ("weight", "bias"):
                state[f"{p}{kind.output}.{suffix}"] = state[f"{p}{kind.output}.{suffix}"] * m[0]
            continue
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            dropped.add((li, name))
            continue
        spec = arch.blocks[li]
        for where in kind.slices:
            _slice(state, p, where, idx, m, kind.count(spec, col), kind.channels_per_unit(spec))
        _set_width(blocks[li], kind, col, int(idx.numel()))
    for li, name in dropped:
        kind, col = branch_kind(name)
        _set_width(blocks[li], kind, col, 0)
        # the branch and its I3D local gate predictor go (a width-0 branch has neither)
        for prefix in (f"layers.{li}.{name}.", f"layers.{li}.gates.{name}."):
            for key in [k for k in state if k.startswith(prefix)]:
                del state[key]
    if dropped and "gate_predictor.fc2.weight" in state:
        # the global gate predictor emits one logit per (layer, branch) slot: keep the rows of the branches that stay
        kept = torch.tensor([k for k, slot in enumerate(encoder.gate_slots) if slot not in dropped], dtype=torch.long)
        for suffix in ("weight", "bias"):
            state[f"gate_predictor.fc2.{suffix}"] = _rows(state[f"gate_predictor.fc2.{suffix}"], kept)

    data = arch.to_dict()
    data["frontend"]["conv_layers"] = fe_layers
    data["blocks"] = blocks
    if encoder.projection.projection is not None:  # pruned channels may equal d_model: keep the Linear explicitly
        data["feature_projection"] = True
    return EncoderArch.from_dict(data), state


def _set_width(block: dict, kind, column: int, width: int) -> None:
    if kind.columns:
        block[kind.width][column] = width
    else:
        block[kind.width] = width


def materialize_encoder(encoder):
    """A new :class:`~nemo_sew.SqueezeEncoder` (no masks) with the pruned arch and the folded weights."""
    from nemo_sew.encoder import SqueezeEncoder

    arch, state = materialize_state(encoder)
    config = encoder.config_dict()
    config.pop("pruning", None)
    config["arch"] = arch
    pruned = SqueezeEncoder(**config)
    pruned.load_state_dict(state, strict=True)
    pruned.set_profile(dataclasses.replace(encoder.profile, arch=None))
    return pruned.train(encoder.training)


def materialize_model(model, name: str | None = None) -> Any:
    """A NeMo model (CTC) whose masked encoder is replaced by its materialised one: a new model of the same
    class built from the updated config, with every other weight copied. ``name`` labels the pruned arch
    (a named profile ``cfg.profiles[name]`` whose ``arch`` is the materialised arch)."""
    from omegaconf import OmegaConf, open_dict

    pruned_encoder = materialize_encoder(model.encoder)
    cfg = model.cfg.copy()
    with open_dict(cfg):
        cfg.encoder = {"_target_": cfg.encoder._target_, **_plain_config(pruned_encoder.config_dict())}
        if name:
            profiles = cfg.get("profiles")
            profiles = OmegaConf.to_container(profiles, resolve=True) if profiles is not None else {}
            profiles[name] = {"arch": pruned_encoder.arch.to_dict()}
            cfg.profiles = profiles
        for split in ("train_ds", "validation_ds", "test_ds"):  # data is not needed to build the model
            if split in cfg:
                cfg[split].manifest_filepath = None
    new = type(model)(cfg=cfg, trainer=None)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")}
    own.update({f"encoder.{k}": v for k, v in pruned_encoder.state_dict().items()})
    new.load_state_dict(own, strict=True)
    return new.eval()


def _plain_config(config: dict) -> dict:
    out = dict(config)
    if isinstance(out.get("arch"), EncoderArch):
        out["arch"] = out["arch"].to_dict()
    return out
