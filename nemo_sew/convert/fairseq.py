"""Import fairseq wav2vec 2.0 / HuBERT / SEW checkpoints (a ``.pt`` file; fairseq itself is not needed).

    from nemo_sew.convert.fairseq import from_fairseq
    converted = from_fairseq("wav2vec_small_960h.pt", dictionary="dict.ltr.txt")  # ConvertedCTC
    encoder = from_fairseq("hubert_base_ls960.pt")                                   # SqueezeEncoder

fairseq names are renamed to transformers' names (the same correspondences transformers' own conversion
scripts use), then :func:`nemo_sew.convert.transformers.encoder_state_dict_from_transformers` maps them onto
our encoder, so both importers share one name map and one set of checks. The architecture comes from the
checkpoint's model config (``cfg["model"]``, or ``args`` in older checkpoints; for fine-tuned models its
``w2v_args``); SEW is recognised by its upsampler (``encoder.upsample.0``), whose shape gives the squeeze factor.

Fine-tuned checkpoints (``w2v_encoder.w2v_model.*`` + the CTC projection ``w2v_encoder.proj``) give a
:class:`~nemo_sew.convert.ConvertedCTC`; fairseq's CTC blank is the dictionary's ``<s>`` (index 0), and the
vocabulary is ``<s> <pad> </s> <unk>`` followed by the symbols of ``dict.ltr.txt``.

Verification: fairseq is not installed in this project's environment, so the tests check this module on
checkpoints written in fairseq's layout from transformers models, not on checkpoints written by fairseq.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from nemo_sew.convert.common import (
    ConvertedCTC,
    UnsupportedModelError,
    blank_last_order,
    labels_from_tokens,
    save_encoder_checkpoint,
    to_nemo_ctc_model,
)
from nemo_sew.convert.transformers import encoder_config_from_transformers, encoder_state_dict_from_transformers
from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.errors import UserError

FINETUNED_PREFIX = "w2v_encoder.w2v_model."
CTC_HEAD = "w2v_encoder.proj."
FAIRSEQ_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq Dictionary's first four symbols
DEFAULT_CONV_FEATURE_LAYERS = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2"

# fairseq -> transformers names (base model, without the fine-tuning prefix)
_FAIRSEQ_TO_HF: list[tuple[str, str]] = [
    (r"feature_extractor\.conv_layers\.(\d+)\.0\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    # group norm: Sequential(conv, dropout, GroupNorm, GELU); layer norm: ... Sequential(T, LayerNorm, T) ...
    (r"feature_extractor\.conv_layers\.(\d+)\.2(?:\.1)?\.(weight|bias)",
     r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"layer_norm\.(weight|bias)", r"{proj_ln}.\1"),
    (r"post_extract_proj\.(weight|bias)", r"{proj}.\1"),
    (r"encoder\.pos_conv\.0\.(bias|weight|weight_g|weight_v|parametrizations\.weight\.original[01])",
     r"encoder.pos_conv_embed.conv.\1"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"encoder\.layers\.(\d+)\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"encoder\.layers\.(\d+)\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"encoder\.upsample\.0\.(weight|bias)", r"encoder.upsample.projection.\1"),
]  # fmt: skip
# pre-training heads and masking: not part of the encoder
_PRETRAINING_ONLY = re.compile(r"(mask_emb|label_embs_concat|quantizer\.|project_q\.|final_proj\.|target_glu\.)")


def parse_conv_feature_layers(spec: str) -> list[list[int]]:
    """fairseq ``conv_feature_layers`` (e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``) without ``eval``.

    Only list and tuple literals of integers, ``+`` and ``* n`` are accepted.
    """

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Mult) and not (isinstance(right, int) and 0 <= right <= 1000):
                raise ValueError("expected list * small int")
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unexpected {type(node).__name__}")

    try:
        layers = value(ast.parse(spec, mode="eval").body)
        if not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
            raise ValueError("expected (channels, kernel, stride) triples")
    except (SyntaxError, ValueError, TypeError) as err:
        raise ValueError(f"cannot parse conv_feature_layers {spec!r}: {err}") from err
    return [list(t) for t in layers]


def _plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, argparse.Namespace):
        return vars(cfg)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with NeMo
        pass
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"expected a fairseq config (dict, DictConfig or Namespace), got {type(cfg).__name__}")


def _model_configs(checkpoint: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(encoder model config, outer model config)``; the same dict twice for a pre-trained checkpoint."""
    if checkpoint.get("cfg") is not None:
        outer = _plain(_plain(checkpoint["cfg"]).get("model"))
    elif checkpoint.get("args") is not None:
        outer = _plain(checkpoint["args"])
    else:
        raise UserError("expected a fairseq checkpoint with a 'cfg' or 'args' entry")
    if outer.get("w2v_args") is None:
        return outer, outer
    w2v = _plain(outer["w2v_args"])
    model = w2v.get("model")  # hydra-era: {"model": {...}, "task": {...}}; argparse-era: one flat namespace
    return (w2v if model is None or isinstance(model, str) else _plain(model)), outer


def transformers_like_config(model_cfg: Mapping[str, Any], state: Mapping[str, torch.Tensor], prefix: str = "") -> Any:
    """The fairseq model config as the transformers config fields our importer reads."""
    problems = []
    if model_cfg.get("layer_type", "transformer") != "transformer":
        problems.append(f"layer_type={model_cfg['layer_type']!r} (only 'transformer')")
    if int(model_cfg.get("pos_conv_depth", 1)) != 1:
        problems.append(f"pos_conv_depth={model_cfg['pos_conv_depth']} (only 1)")
    if model_cfg.get("extractor_mode", "default") not in ("default", "layer_norm"):
        problems.append(f"extractor_mode={model_cfg['extractor_mode']!r}")
    if problems:
        raise UnsupportedModelError("cannot convert this fairseq model: " + "; ".join(problems))
    conv = parse_conv_feature_layers(str(model_cfg.get("conv_feature_layers", DEFAULT_CONV_FEATURE_LAYERS)))
    hidden = int(model_cfg.get("encoder_embed_dim", 768))
    upsample = state.get(prefix + "encoder.upsample.0.weight")
    return SimpleNamespace(
        model_type="sew" if upsample is not None else "wav2vec2",  # HuBERT's layout is wav2vec 2.0's
        conv_dim=[c for c, _, _ in conv],
        conv_kernel=[k for _, k, _ in conv],
        conv_stride=[s for _, _, s in conv],
        feat_extract_norm="group" if model_cfg.get("extractor_mode", "default") == "default" else "layer",
        conv_bias=bool(model_cfg.get("conv_bias", False)),
        hidden_size=hidden,
        num_hidden_layers=int(model_cfg.get("encoder_layers", 12)),
        num_attention_heads=int(model_cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(model_cfg.get("encoder_ffn_embed_dim", 3072)),
        num_conv_pos_embeddings=int(model_cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(model_cfg.get("conv_pos_groups", 16)),
        squeeze_factor=int(upsample.shape[0]) // hidden if upsample is not None else 1,
        do_stable_layer_norm=bool(model_cfg.get("layer_norm_first", False)),
        feat_proj_layer_norm=True,
        hidden_act=str(model_cfg.get("activation_fn", "gelu")),
        feat_extract_activation="gelu",
        hidden_dropout=float(model_cfg.get("dropout", 0.1)),
        attention_dropout=float(model_cfg.get("attention_dropout", 0.1)),
        activation_dropout=float(model_cfg.get("activation_dropout", 0.0)),
        feat_proj_dropout=float(model_cfg.get("dropout_input", 0.0)),
        layerdrop=float(model_cfg.get("encoder_layerdrop", 0.0)),
        layer_norm_eps=1e-5,  # fairseq LayerNorm default
    )


def _rename(state: Mapping[str, torch.Tensor], prefix: str, sew: bool) -> dict[str, torch.Tensor]:
    fill = {"proj_ln": "layer_norm", "proj": "feature_projection"} if sew else {
        "proj_ln": "feature_projection.layer_norm", "proj": "feature_projection.projection"
    }  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if _PRETRAINING_ONLY.match(name):
            continue
        for pattern, template in _FAIRSEQ_TO_HF:
            if re.fullmatch(pattern, name):
                out[re.sub(pattern, template.format(**fill), name)] = tensor
                break
        else:
            out[name] = tensor  # unknown: reported by the importer as having no counterpart
    return out


def read_dictionary(path: str | Path) -> list[str]:
    """Tokens in id order of a fairseq dictionary file (``dict.ltr.txt``: ``SYMBOL COUNT`` per line)."""
    symbols = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        symbol = line.rstrip().rsplit(" ", 1)[0] if " " in line.rstrip() else line.rstrip()
        symbols.append(symbol)
    return FAIRSEQ_SPECIALS + symbols


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """Read a fairseq checkpoint with ``weights_only=True`` and the allow list of :mod:`nemo_sew.safe_load`
    (OmegaConf configs, and the ``argparse.Namespace`` of older checkpoints, are plain data).

    ``allow_pickle=True`` runs ``torch.load(weights_only=False)``, for files holding other Python objects: only
    use it on files you trust.
    """
    if allow_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    from nemo_sew.safe_load import UnsafeCheckpointError
    from nemo_sew.safe_load import load_checkpoint as safe_load

    try:  # weights_only=True with the plain-data globals of fairseq checkpoints (OmegaConf, argparse.Namespace)
        return safe_load(path)
    except UnsafeCheckpointError as err:
        raise UnsafeCheckpointError(
            f"{err}; if you trust the file, "
            f"pass allow_pickle=True (convert --allow-pickle)"
        ) from err


def _convert(
    checkpoint: Mapping[str, Any], dictionary: str | Path | None, blank_id: int
) -> tuple[dict[str, Any], SqueezeEncoder | ConvertedCTC]:
    state = checkpoint["model"]
    finetuned = any(k.startswith(FINETUNED_PREFIX) for k in state)
    prefix = FINETUNED_PREFIX if finetuned else ""
    inner, outer = _model_configs(checkpoint)
    config = transformers_like_config(inner, state, prefix)
    if finetuned:  # fine-tuning overrides the encoder's dropouts
        for ours, theirs in (("hidden_dropout", "dropout"), ("attention_dropout", "attention_dropout"),
                             ("activation_dropout", "activation_dropout"), ("layerdrop", "layerdrop"),
                             ("feat_proj_dropout", "dropout_input")):  # fmt: skip
            if outer.get(theirs) is not None:
                setattr(config, ours, float(outer[theirs]))
    encoder_config = encoder_config_from_transformers(config)
    encoder = SqueezeEncoder(**encoder_config)
    renamed = _rename(state, prefix, sew=config.model_type == "sew")
    encoder.load_state_dict(encoder_state_dict_from_transformers(renamed, config))
    encoder.eval()
    if not finetuned:
        return encoder_config, encoder
    weight = state[CTC_HEAD + "weight"].detach().to("cpu", torch.float32)  # (V, D)
    bias = state[CTC_HEAD + "bias"].detach().to("cpu", torch.float32)  # (V,)
    order = blank_last_order(weight.shape[0], blank_id)
    labels = None
    if dictionary is not None:
        tokens = read_dictionary(dictionary)
        if len(tokens) != weight.shape[0]:
            raise UserError(
                f"{dictionary}: expected {weight.shape[0] - len(FAIRSEQ_SPECIALS)} symbols for the CTC head's "
                f"{weight.shape[0]} classes, got {len(tokens) - len(FAIRSEQ_SPECIALS)}"
            )
        labels = labels_from_tokens(tokens, blank_id, word_delimiter="|")
    converted = ConvertedCTC(
        encoder=encoder,
        encoder_config=encoder_config,
        head_weight=weight[order].clone(),
        head_bias=bias[order].clone(),
        order=order,
        blank_id=blank_id,
        labels=labels,
    )
    return encoder_config, converted


def from_fairseq(
    checkpoint: str | Path | Mapping[str, Any],
    dictionary: str | Path | None = None,
    blank_id: int = 0,
    allow_pickle: bool = False,
) -> SqueezeEncoder | ConvertedCTC:
    """Convert a fairseq wav2vec 2.0 / HuBERT / SEW checkpoint (pre-trained or CTC fine-tuned).

    Args:
        checkpoint: a ``.pt`` path or the loaded checkpoint dict (``{"model": state_dict, "cfg" | "args": ...}``).
        dictionary: fine-tuned only, optional: the ``dict.ltr.txt`` giving :attr:`ConvertedCTC.labels`.
        blank_id: fairseq's CTC blank (the dictionary's ``<s>``, 0).
        allow_pickle: see :func:`load_checkpoint`.

    Returns:
        the :class:`nemo_sew.SqueezeEncoder` (eval mode) of a pre-trained checkpoint, or a :class:`ConvertedCTC`
        for a fine-tuned one.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = load_checkpoint(checkpoint, allow_pickle)
    return _convert(checkpoint, dictionary, blank_id)[1]


def _task_settings(checkpoint: Mapping[str, Any]) -> tuple[int, bool]:
    """``(sample_rate, normalize)`` of the fairseq audio task (``normalize`` is True for the large models)."""
    task = _plain(_plain(checkpoint["cfg"]).get("task")) if checkpoint.get("cfg") is not None else {}
    if not task and checkpoint.get("args") is not None:
        task = _plain(checkpoint["args"])
    return int(task.get("sample_rate", 16000)), bool(task.get("normalize", False))


def convert_fairseq_checkpoint(
    path: str | Path, out: str | Path, dictionary: str | Path | None = None, allow_pickle: bool = False
) -> Path:
    """Convert a fairseq checkpoint file and write ``out``: ``.nemo`` (fine-tuned + ``dictionary``) or encoder-only.

    The ``.nemo`` preprocessor normalises when the fairseq task did (``task.normalize``), with fairseq's eps
    (it normalises with ``F.layer_norm``, eps 1e-5).
    """
    out = Path(out)
    checkpoint = load_checkpoint(path, allow_pickle)
    encoder_config, converted = _convert(checkpoint, dictionary, blank_id=0)
    if out.suffix != ".nemo":
        encoder = converted.encoder if isinstance(converted, ConvertedCTC) else converted
        return save_encoder_checkpoint(encoder_config, encoder, out)
    if not isinstance(converted, ConvertedCTC):
        raise UserError(
            f"{path} is a pre-trained checkpoint without a CTC head: a .nemo CTC model needs a fine-tuned (CTC) "
            f"checkpoint; give an output path ending in .pt to write an encoder-only checkpoint instead"
        )
    if converted.labels is None:
        raise UserError(f"{path}: a .nemo CTC model needs the fine-tuning dictionary (dict.ltr.txt): pass it")
    sample_rate, normalize = _task_settings(checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = to_nemo_ctc_model(converted, sample_rate=sample_rate, normalize=normalize, normalize_eps=1e-5)
    model.save_to(str(out))
    return out


__all__ = [
    "convert_fairseq_checkpoint", "from_fairseq", "load_checkpoint", "parse_conv_feature_layers", "read_dictionary",
    "transformers_like_config",
]  # fmt: skip
