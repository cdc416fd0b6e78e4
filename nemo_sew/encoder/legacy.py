"""State dicts written by earlier versions of the encoder, in today's parameter names.

Kept apart from the module that builds today's encoder: what changed, and how an old checkpoint or ``.nemo``
maps onto today's names, is the only thing here. (Configs written before :class:`~nemo_sew.arch.EncoderArch`
are read by :func:`nemo_sew.options.upgrade_encoder_config`.)
"""

from __future__ import annotations

import torch

# checkpoints written before blocks became residual branches name a layer's parameters by these prefixes
_LEGACY_MARKERS = (".attention.", ".attn_norm.", ".ffn_norm.", ".ffn1_norm.", ".ffn2_norm.", ".conv.pre_norm.")
_LAYER_RENAMES = (
    ("attention.", "attn.body."), ("attn_norm.", "attn.norm."),
    ("ffn_norm.", "ffn.norm."), ("ffn1_norm.", "ffn1.norm."), ("ffn2_norm.", "ffn2.norm."),
    ("ffn.", "ffn.body."), ("ffn1.", "ffn1.body."), ("ffn2.", "ffn2.body."),
    ("conv.pre_norm.", "conv.norm."), ("conv.", "conv.body."),
)  # fmt: skip


def legacy_layer_keys(key: str) -> str:
    """The name of a pre-``EncoderArch`` layer parameter (``attention``, ``attn_norm``, ``ffn_norm``, ...) today.

    ``key`` is relative to one layer (``attention.q_proj.weight``); used to restore ``.nemo`` files and
    checkpoints written before blocks became residual branches.
    """
    for old, new in _LAYER_RENAMES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def upgrade_legacy_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """A ``load_state_dict`` pre-hook: rename the layer parameters of checkpoints written before blocks were
    residual branches; a checkpoint written before the encoder counted its own training steps starts the count
    at 0."""
    if any(k.startswith(prefix) for k in state_dict):
        state_dict.setdefault(prefix + "train_step", torch.zeros((), dtype=torch.long))
    layer_prefix = prefix + "layers."
    keys = [k for k in state_dict if k.startswith(layer_prefix)]
    if not any(marker in k[len(layer_prefix) :] for k in keys for marker in _LEGACY_MARKERS):
        return
    values = {key: state_dict.pop(key) for key in keys}  # all at once: an old name may be another's new name
    for key, value in values.items():
        index, _, local = key[len(layer_prefix) :].partition(".")  # "3", "attention.q_proj.weight"
        state_dict[f"{layer_prefix}{index}.{legacy_layer_keys(local)}"] = value


def upgrade_legacy_encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict (keys relative to the encoder) in today's parameter names (a copy)."""
    state = dict(state)
    upgrade_legacy_state_dict(state, "", {}, True, [], [], [])
    return state
