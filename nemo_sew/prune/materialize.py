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
from nemo_sew.nn.blocks import BRANCH_COST


def _rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, idx).clone()


def _cols(t: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    shape = [1] * t.dim()
    shape[1] = -1
    return (t.index_select(1, idx) * scale.to(t.dtype).view(shape)).clone()


@torch.no_grad()
def materialize_state(encoder) -> tuple[EncoderArch, dict[str, torch.Tensor]]:
    """The pruned arch and state dict (keys relative to the encoder, without ``pruning.*``) of a masked encoder."""
    pruning = encoder.pruning
    if pruning is None:
        raise ValueError("this encoder has no pruning masks (build it with pruning=...)")
    masks = pruning.deterministic()
    state = {k: v.detach().clone() for k, v in encoder.state_dict().items() if not k.startswith("pruning.")}
    arch = encoder.arch
    fe_layers = [list(layer) for layer in arch.frontend.conv_layers]
    blocks = [dataclasses.asdict(b) for b in arch.blocks]
    for b in blocks:
        b["ffn_dims"] = list(b["ffn_dims"])

    # front end: layer i's mask selects conv_i's outputs (and its norm), scales the consumer's inputs
    n_conv = len(fe_layers)
    for slot in (s for s in pruning.slots if s.unit == "frontend"):
        i, m = slot.layer, masks[slot.key]
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"front-end layer {i} has no channel left")  # HardConcrete keeps >= 1; defensive
        p = f"frontend.blocks.{i}."
        for name in ("conv.weight", "conv.bias", "norm.weight", "norm.bias"):
            if p + name in state:
                state[p + name] = _rows(state[p + name], idx)
        if i + 1 < n_conv:
            key = f"frontend.blocks.{i + 1}.conv.weight"
            state[key] = _cols(state[key], idx, m[idx])
        else:  # the last layer: its mask sits after the feature LayerNorm (if any), before the projection
            for name in ("projection.layer_norm.weight", "projection.layer_norm.bias"):
                if name in state:
                    state[name] = _rows(state[name], idx)
            state["projection.projection.weight"] = _cols(state["projection.projection.weight"], idx, m[idx])
        fe_layers[i][0] = int(idx.numel())

    # blocks
    dropped: set[tuple[int, str]] = set()
    for slot in (s for s in pruning.slots if s.unit != "frontend"):
        li, name, m = slot.layer, slot.branch, masks[slot.key]
        p = f"layers.{li}.{name}.body."
        kind, col = BRANCH_COST[name]
        if slot.unit == "branch":
            if float(m[0]) == 0.0:
                dropped.add((li, name))
                continue
            out = {"attn": "out_proj", "ffn": "fc2", "conv": "pointwise2"}[kind]
            for suffix in ("weight", "bias"):
                state[f"{p}{out}.{suffix}"] = state[f"{p}{out}.{suffix}"] * m[0]
            continue
        idx = m.nonzero().flatten()
        if idx.numel() == 0:
            dropped.add((li, name))
            continue
        if slot.unit == "heads":
            d = blocks[li]["head_dim"]
            ch = (idx[:, None] * d + torch.arange(d, device=idx.device)[None, :]).flatten()
            for proj in ("q_proj", "k_proj", "v_proj"):
                for suffix in ("weight", "bias"):
                    state[f"{p}{proj}.{suffix}"] = _rows(state[f"{p}{proj}.{suffix}"], ch)
            state[f"{p}out_proj.weight"] = _cols(state[f"{p}out_proj.weight"], ch, m[idx].repeat_interleave(d))
            blocks[li]["heads"] = int(idx.numel())
        elif slot.unit == "ffn":
            for suffix in ("weight", "bias"):
                state[f"{p}fc1.{suffix}"] = _rows(state[f"{p}fc1.{suffix}"], idx)
            state[f"{p}fc2.weight"] = _cols(state[f"{p}fc2.weight"], idx, m[idx])
            blocks[li]["ffn_dims"][col] = int(idx.numel())
        else:  # conformer conv module: GLU halves, depthwise, norm, pointwise2
            c = blocks[li]["conv_channels"]
            glu = torch.cat([idx, idx + c])
            for suffix in ("weight", "bias"):
                state[f"{p}pointwise1.{suffix}"] = _rows(state[f"{p}pointwise1.{suffix}"], glu)
                state[f"{p}depthwise.{suffix}"] = _rows(state[f"{p}depthwise.{suffix}"], idx)
                state[f"{p}norm.{suffix}"] = _rows(state[f"{p}norm.{suffix}"], idx)
            state[f"{p}pointwise2.weight"] = _cols(state[f"{p}pointwise2.weight"], idx, m[idx])
            blocks[li]["conv_channels"] = int(idx.numel())
    for li, name in dropped:
        kind, col = BRANCH_COST[name]
        if kind == "attn":
            blocks[li]["heads"] = 0
        elif kind == "ffn":
            blocks[li]["ffn_dims"][col] = 0
        else:
            blocks[li]["conv_channels"] = 0
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
