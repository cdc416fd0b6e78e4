"""Import transformers' SEW, wav2vec 2.0 and HuBERT models (and their ``*ForCTC`` heads) into nemo_sew.

    from transformers import AutoModelForCTC
    from nemo_sew.convert import from_transformers, to_nemo_ctc_model

    hf = AutoModelForCTC.from_pretrained("path/to/local/dir", local_files_only=True).eval()
    converted = from_transformers(hf, vocab="path/to/local/dir")   # ConvertedCTC (SqueezeEncoder for a bare model)
    to_nemo_ctc_model(converted).save_to("model.nemo")

Supported: ``SEWModel`` / ``SEWForCTC``, ``Wav2Vec2Model`` / ``Wav2Vec2ForCTC`` (post-LN base style and
pre-LN ``do_stable_layer_norm`` large style, group-norm or layer-norm extractor, with or without conv bias)
and ``HubertModel`` / ``HubertForCTC`` (with or without ``feat_proj_layer_norm``). Everything else raises
:class:`UnsupportedModelError` naming the option: SEW-D, wav2vec 2.0-conformer, WavLM, data2vec-audio,
UniSpeech, non-GELU activations, ``conv_pos_batch_norm``, adapters.

Inputs differ only in layout: transformers takes ``input_values (B, N)`` + ``attention_mask (B, N)``, our
encoder ``audio_signal (B, 1, N)`` + ``length (B,)``; transformers returns ``last_hidden_state (B, T, D)``,
ours ``(B, D, T)``. ``masked_spec_embed`` (present when ``mask_time_prob`` or ``mask_feature_prob`` > 0) becomes
our ``mask_emb``, which fine-tuning's time masking (``encoder.masking``) uses. Not carried over:
``final_dropout`` before the CTC head.

Padding: transformers' group-norm extractor normalises over the padded time axis, and its SEW squeeze keeps a
squeezed frame when any of its ``s`` frames is valid (``ceil``); ours normalises over valid frames and keeps
``floor(T / s)`` frames, which is what each item gives when it runs alone. Outputs therefore agree on
unpadded inputs always, and on padded batches wherever transformers itself is padding-invariant.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
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
from nemo_sew.arch import EncoderArch
from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.errors import UserError
from nemo_sew.options import upgrade_encoder_config

SUPPORTED_MODEL_TYPES = ("sew", "wav2vec2", "hubert")

# Explicit name map, ours -> transformers (base-model names, without the ``sew.`` / ``wav2vec2.`` / ``hubert.``
# prefix of the ``*ForCTC`` classes). ``{proj_ln}`` and ``{proj}`` differ between SEW and wav2vec 2.0 / HuBERT.
_NAME_MAP: list[tuple[str, str]] = [
    (r"mask_emb", r"masked_spec_embed"),
    (r"frontend\.blocks\.(\d+)\.conv\.(weight|bias)", r"feature_extractor.conv_layers.\1.conv.\2"),
    (r"frontend\.blocks\.(\d+)\.norm\.(weight|bias)", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
    (r"projection\.layer_norm\.(weight|bias)", r"{proj_ln}.\1"),
    (r"projection\.projection\.(weight|bias)", r"{proj}.\1"),
    (r"compressor\.conv\.bias", r"encoder.pos_conv_embed.conv.bias"),
    (r"norm\.(weight|bias)", r"encoder.layer_norm.\1"),
    (r"layers\.(\d+)\.attn\.body\.(q|k|v|out)_proj\.(weight|bias)", r"encoder.layers.\1.attention.\2_proj.\3"),
    (r"layers\.(\d+)\.attn\.norm\.(weight|bias)", r"encoder.layers.\1.layer_norm.\2"),
    (r"layers\.(\d+)\.ffn\.body\.fc1\.(weight|bias)", r"encoder.layers.\1.feed_forward.intermediate_dense.\2"),
    (r"layers\.(\d+)\.ffn\.body\.fc2\.(weight|bias)", r"encoder.layers.\1.feed_forward.output_dense.\2"),
    (r"layers\.(\d+)\.ffn\.norm\.(weight|bias)", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"expander\.linear\.(weight|bias)", r"encoder.upsample.projection.\1"),
]
_POS_CONV = "encoder.pos_conv_embed.conv."
_OURS_WEIGHT_NORM = (
    "compressor.conv.parametrizations.weight.original0",
    "compressor.conv.parametrizations.weight.original1",
)
# the positional conv's weight norm (dim=2) is stored as (g, v) in one of these styles, or folded into ``weight``
_WEIGHT_NORM_STYLES = (
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),  # torch.nn.utils.parametrizations
    ("weight_g", "weight_v"),  # the older torch.nn.utils.weight_norm
)
_IGNORED = ("masked_spec_embed",)  # training-time feature masking vector


def _problems(config: Any) -> list[str]:
    problems = []
    for name in ("feat_extract_activation", "hidden_act"):
        act = getattr(config, name, "gelu")
        if act != "gelu":
            problems.append(f"{name}={act!r} (only exact 'gelu' is supported)")
    if getattr(config, "feat_extract_norm", "group") not in ("group", "layer"):
        problems.append(f"feat_extract_norm={config.feat_extract_norm!r} (expected 'group' or 'layer')")
    if getattr(config, "conv_pos_batch_norm", False):
        problems.append("conv_pos_batch_norm=True (BatchNorm before the positional conv)")
    if getattr(config, "add_adapter", False):
        problems.append("add_adapter=True (output adapter layers)")
    if getattr(config, "adapter_attn_dim", None) is not None:
        problems.append(f"adapter_attn_dim={config.adapter_attn_dim} (attention adapters)")
    if getattr(config, "position_embeddings_type", None) is not None:
        problems.append(f"position_embeddings_type={config.position_embeddings_type!r} (rotary / relative positions)")
    if config.hidden_size % config.num_attention_heads:
        problems.append(
            f"hidden_size={config.hidden_size} not divisible by num_attention_heads={config.num_attention_heads}"
        )
    return problems


def encoder_config_from_transformers(config: Any) -> dict[str, Any]:
    """:class:`nemo_sew.SqueezeEncoder` keyword arguments equal to a transformers SEW / wav2vec 2.0 / HuBERT config:
    ``{"arch": EncoderArch dict, "dropout": {...}, "mask_emb": bool}``.

    Config fields used: ``conv_dim``, ``conv_kernel``, ``conv_stride`` (front end), ``feat_extract_norm``
    (``group`` -> ``group_norm``, ``layer`` -> ``layer_norm``), ``conv_bias``, ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads`` (``head_dim = hidden_size / heads``), ``intermediate_size``,
    ``num_conv_pos_embeddings``, ``num_conv_pos_embedding_groups``, ``squeeze_factor`` (SEW only; wav2vec 2.0
    and HuBERT run at squeeze 1 without upsampler), ``do_stable_layer_norm`` (pre-LN), ``feat_proj_layer_norm``
    (HuBERT), ``layer_norm_eps`` and the dropouts.

    Raises:
        UnsupportedModelError: for model types and options our encoder cannot reproduce exactly.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        hint = " (SEW-D uses DeBERTa attention with relative positions)" if model_type == "sew-d" else ""
        raise UnsupportedModelError(
            f"cannot convert transformers model_type {model_type!r}{hint}; supported: {list(SUPPORTED_MODEL_TYPES)}"
        )
    problems = _problems(config)
    if problems:
        raise UnsupportedModelError(f"cannot convert this {model_type} config: " + "; ".join(problems))
    sew = model_type == "sew"
    hidden, heads = int(config.hidden_size), int(config.num_attention_heads)
    # written as the flat pre-arch arguments (one line per transformers field), read by the one upgrade path
    return upgrade_encoder_config(dict(
        frontend="wfe_c" if sew else "wfe_o",
        feat_in=1,
        conv_layers=[
            [int(c), int(k), int(s)] for c, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride)
        ],
        conv_norm="group_norm" if config.feat_extract_norm == "group" else "layer_norm",
        conv_bias=bool(config.conv_bias),
        d_model=hidden,
        num_layers=int(config.num_hidden_layers),
        num_heads=heads,
        head_dim=hidden // heads,
        ffn_dim=int(config.intermediate_size),
        block="transformer",
        layer_norm_first=bool(getattr(config, "do_stable_layer_norm", False)),
        squeeze=int(config.squeeze_factor) if sew else 1,
        pos_conv_kernel=int(config.num_conv_pos_embeddings),
        pos_conv_groups=int(config.num_conv_pos_embedding_groups),
        upsample=sew,
        dropout=float(config.hidden_dropout),
        attention_dropout=float(config.attention_dropout),
        activation_dropout=float(config.activation_dropout),
        feature_dropout=float(config.feat_proj_dropout),
        layerdrop=float(config.layerdrop),
        layer_norm_eps=float(config.layer_norm_eps),
        feature_layer_norm=bool(getattr(config, "feat_proj_layer_norm", True)),
        feature_projection=None if sew else True,  # SEW projects only when widths differ; the others always do
        # transformers creates masked_spec_embed under this condition
        mask_emb=float(getattr(config, "mask_time_prob", 0.0)) > 0 or float(getattr(config, "mask_feature_prob", 0.0)) > 0,
    ))


def transformers_config(preset: "str | EncoderArch") -> Any:
    """The inverse of :func:`encoder_config_from_transformers`: a transformers ``SEWConfig`` (``wfe_c`` archs)
    or ``Wav2Vec2Config`` (``wfe_o``) of the architecture of ``preset`` (a name in :data:`nemo_sew.arch.PRESETS`
    or an :class:`~nemo_sew.arch.EncoderArch`).

    The config's defaults are kept except the fields the arch sets: conv layers, extractor norm and bias,
    width, layers, heads, FFN width, squeeze (SEW), positional conv, pre-/post-LN (wav2vec 2.0), LN epsilon.
    So ``encoder_config_from_transformers(transformers_config(p))["arch"]`` is the preset's arch;
    training-only settings keep transformers' defaults (``activation_dropout`` and ``layerdrop`` 0.1,
    ``mask_time_prob`` 0.05, which creates ``masked_spec_embed`` and so our ``mask_emb``).

    Raises:
        ValueError: for archs transformers cannot represent: log-mel front ends, conformer blocks, blocks that
            differ from each other, ``heads * head_dim != d_model``, pre-LN SEW, or wav2vec 2.0 with a squeeze.
    """
    import transformers

    from nemo_sew.arch import build_arch

    arch = build_arch(preset)
    name = preset if isinstance(preset, str) else "this arch"
    frontend = arch.frontend.kind
    if frontend not in ("wfe_c", "wfe_o"):
        raise ValueError(f"expected a waveform preset (frontend wfe_c or wfe_o), got {name!r} with {frontend!r}")
    if any(b.kind != "transformer" for b in arch.blocks):
        raise ValueError(f"expected a transformer preset (transformers has no conformer SEW), got {name!r}")
    if len(set(arch.blocks)) != 1:
        raise ValueError(f"{name}: transformers needs every layer to have the same shape")
    block = arch.blocks[0]
    if block.window:
        raise ValueError(f"{name}: transformers has no local-window attention (window={block.window})")
    if block.heads * block.head_dim != arch.d_model:
        raise ValueError(
            f"{name}: transformers needs num_heads * head_dim == d_model, got {block.heads} x {block.head_dim} != {arch.d_model}"
        )
    layers = arch.frontend.conv_layers
    c = arch.compressor
    common = dict(
        conv_dim=[c_ for c_, _, _ in layers], conv_kernel=[k for _, k, _ in layers], conv_stride=[s for _, _, s in layers],
        feat_extract_norm="group" if arch.frontend.conv_norm == "group_norm" else "layer",
        conv_bias=arch.frontend.conv_bias, hidden_size=arch.d_model, num_hidden_layers=arch.num_layers,
        num_attention_heads=block.heads, intermediate_size=block.ffn_dims[0],
        num_conv_pos_embeddings=c.pos_conv_kernel, num_conv_pos_embedding_groups=c.pos_conv_groups,
        layer_norm_eps=arch.layer_norm_eps,
    )  # fmt: skip
    if frontend == "wfe_c":
        if arch.layer_norm_first:
            raise ValueError(f"{name}: transformers' SEW has post-LN layers only, the preset is pre-LN")
        return transformers.SEWConfig(**common, squeeze_factor=c.squeeze)
    if c.squeeze != 1:
        raise ValueError(f"{name}: transformers' wav2vec 2.0 has no squeeze, the preset has {c.squeeze}")
    return transformers.Wav2Vec2Config(**common, do_stable_layer_norm=arch.layer_norm_first)


def _source_name(ours: str, sew: bool) -> str:
    fill = {"proj_ln": "layer_norm", "proj": "feature_projection"} if sew else {
        "proj_ln": "feature_projection.layer_norm", "proj": "feature_projection.projection"
    }  # fmt: skip
    for pattern, template in _NAME_MAP:
        if re.fullmatch(pattern, ours):
            return re.sub(pattern, template.format(**fill), ours)
    raise KeyError(f"no transformers name for our parameter {ours!r}")


def _pos_conv_weight_norm(
    state: Mapping[str, torch.Tensor], prefix: str
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``(g, v)`` of the positional conv's weight norm over dim 2, from any of the storage styles."""
    base = prefix + _POS_CONV
    for g_name, v_name in _WEIGHT_NORM_STYLES:
        if base + g_name in state and base + v_name in state:
            return state[base + g_name], state[base + v_name], [base + g_name, base + v_name]
    if base + "weight" in state:  # weight norm folded: v = w and g = |w| over every dim but 2 give back w
        w = state[base + "weight"]
        return torch.linalg.vector_norm(w, dim=(0, 1), keepdim=True), w, [base + "weight"]
    expected = [base + n for pair in _WEIGHT_NORM_STYLES for n in pair] + [base + "weight"]
    raise KeyError(f"no positional conv weight under {base!r}: expected one of {expected}")


def encoder_state_dict_from_transformers(
    state_dict: Mapping[str, torch.Tensor], config: Any, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Our encoder's state dict from a transformers state dict (keys under ``prefix``, e.g. ``"wav2vec2."``).

    Every source key under ``prefix`` must be used (``masked_spec_embed`` excepted), so an option we do not
    model cannot be dropped silently.
    """
    encoder_config = encoder_config_from_transformers(config)
    sew = config.model_type == "sew"
    with torch.device("meta"):
        template = SqueezeEncoder(**encoder_config).state_dict()
    template.pop("train_step", None)  # the encoder's own step counter: not a weight (loading starts it at 0)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    g, v, names = _pos_conv_weight_norm(state_dict, prefix)
    used.update(names)
    out[_OURS_WEIGHT_NORM[0]], out[_OURS_WEIGHT_NORM[1]] = g, v
    for ours in template:
        if ours in out:
            continue
        source = prefix + _source_name(ours, sew)
        if source not in state_dict:
            raise KeyError(f"missing transformers weight {source!r} (for our {ours!r})")
        out[ours] = state_dict[source]
        used.add(source)
    for ours, tensor in out.items():
        if tuple(tensor.shape) != tuple(template[ours].shape):
            raise ValueError(f"{ours}: expected shape {tuple(template[ours].shape)}, got {tuple(tensor.shape)}")
    unused = sorted(
        k for k in state_dict if k.startswith(prefix) and k not in used and k[len(prefix) :] not in _IGNORED
    )
    if unused:
        raise UnsupportedModelError(f"transformers weights with no counterpart in our encoder: {unused[:8]}")
    return {k: t.detach().to("cpu", torch.float32).clone() for k, t in out.items()}


def _tokens_from_vocab(vocab: Any, vocab_size: int) -> tuple[list[str], str | None]:
    """Tokens in id order and the word delimiter, from a tokenizer, a token->id mapping, a token list or a path."""
    delimiter: str | None = "|"
    if isinstance(vocab, (str, Path)):
        path = Path(vocab)
        if path.is_dir():
            try:
                from transformers import AutoTokenizer

                vocab = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except (OSError, ValueError, KeyError) as err:
                if not (path / "vocab.json").is_file():
                    raise FileNotFoundError(f"{path}: no tokenizer and no vocab.json ({err})") from err
                path = path / "vocab.json"
        if isinstance(vocab, (str, Path)):
            vocab = json.loads(Path(path).read_text(encoding="utf-8"))
    if hasattr(vocab, "convert_ids_to_tokens"):  # a transformers tokenizer
        delimiter = getattr(vocab, "word_delimiter_token", delimiter)
        size = min(vocab_size, len(vocab))
        tokens = [str(t) for t in vocab.convert_ids_to_tokens(list(range(size)))]
    elif isinstance(vocab, Mapping):
        if vocab and all(isinstance(x, Mapping) for x in vocab.values()):
            raise ValueError(
                f"expected one vocabulary (token -> id), got a per-language vocabulary for {sorted(vocab)[:5]}"
            )
        by_id = {int(i): str(t) for t, i in vocab.items()}
        tokens = [by_id.get(i, f"<unused_{i}>") for i in range(vocab_size)]
    else:
        tokens = [str(t) for t in vocab][:vocab_size]
    tokens += [f"<unused_{i}>" for i in range(len(tokens), vocab_size)]
    return tokens, delimiter


def from_transformers(model: Any, vocab: Any = None) -> SqueezeEncoder | ConvertedCTC:
    """Convert a transformers SEW / wav2vec 2.0 / HuBERT model.

    Args:
        model: ``SEWModel``, ``Wav2Vec2Model``, ``HubertModel`` or one of their ``*ForCTC`` classes.
        vocab: for ``*ForCTC`` only, optional: a tokenizer, a ``{token: id}`` mapping, tokens in id order, or a
            path to a tokenizer directory or ``vocab.json``. It gives :attr:`ConvertedCTC.labels`.

    Returns:
        the :class:`nemo_sew.SqueezeEncoder` for a bare model; a :class:`ConvertedCTC` (encoder + head in NeMo's
        blank-last order, blank = ``config.pad_token_id``) for a ``*ForCTC`` model. The encoder is in the
        model's train/eval mode.

    Raises:
        UnsupportedModelError: other model classes or configs (see :func:`encoder_config_from_transformers`).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "state_dict"):
        raise UnsupportedModelError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    encoder_config = encoder_config_from_transformers(config)
    name = type(model).__name__
    base = getattr(model, "base_model", model)
    if base is model:
        prefix, ctc = "", False
    elif name.endswith("ForCTC"):
        prefix, ctc = model.base_model_prefix + ".", True
    else:
        raise UnsupportedModelError(
            f"expected a bare model or a *ForCTC model, got {name}; "
            f"to convert its encoder pass model.{model.base_model_prefix}"
        )
    state = model.state_dict()
    encoder = SqueezeEncoder(**encoder_config)
    encoder.load_state_dict(encoder_state_dict_from_transformers(state, config, prefix))
    encoder.train(model.training)
    if not ctc:
        return encoder
    weight = state["lm_head.weight"].detach().to("cpu", torch.float32)  # (V, D): Linear over (B, T, D)
    bias = state["lm_head.bias"].detach().to("cpu", torch.float32)  # (V,)
    blank = 0 if config.pad_token_id is None else int(config.pad_token_id)
    order = blank_last_order(weight.shape[0], blank)
    labels = None
    if vocab is not None:
        tokens, delimiter = _tokens_from_vocab(vocab, weight.shape[0])
        labels = labels_from_tokens(tokens, blank, delimiter)
    return ConvertedCTC(
        encoder=encoder,
        encoder_config=encoder_config,
        head_weight=weight[order].clone(),
        head_bias=bias[order].clone(),
        order=order,
        blank_id=blank,
        labels=labels,
    )


def _feature_extractor_settings(local_dir: Path) -> tuple[int, bool]:
    """``(sampling_rate, do_normalize)`` from ``preprocessor_config.json``; ``(16000, False)`` without one."""
    path = local_dir / "preprocessor_config.json"
    if not path.is_file():
        return 16000, False
    data = json.loads(path.read_text(encoding="utf-8"))
    return int(data.get("sampling_rate", 16000)), bool(data.get("do_normalize", True))  # transformers' default


def convert_local_dir(local_dir: str | Path, out: str | Path) -> Path:
    """Convert a local transformers model directory (nothing is downloaded) and write ``out``.

    * ``out`` ending in ``.nemo``: the directory must hold a ``*ForCTC`` model and its tokenizer; writes a
      :class:`nemo_sew.SqueezeCTCModel` (character labels from the vocabulary, ``|`` -> space, blank last;
      :class:`nemo_sew.WaveformPreprocessor` with ``normalize`` = the feature extractor's ``do_normalize``).
    * any other suffix (e.g. ``.pt``): an encoder-only checkpoint (:func:`nemo_sew.convert.save_encoder_checkpoint`;
      a CTC head is dropped), loadable with :func:`nemo_sew.convert.load_encoder_checkpoint`.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCTC

    local_dir, out = Path(local_dir), Path(out)
    if not local_dir.is_dir():
        raise FileNotFoundError(f"expected a local transformers model directory, got {local_dir}")
    config = AutoConfig.from_pretrained(str(local_dir), local_files_only=True)
    encoder_config_from_transformers(config)  # fail before loading weights
    architectures = list(getattr(config, "architectures", None) or [])
    is_ctc = any(a.endswith("ForCTC") for a in architectures)
    if out.suffix == ".nemo" and not is_ctc:
        raise UserError(
            f"{local_dir} holds {architectures or [config.model_type]}, not a *ForCTC model: a .nemo CTC model needs a "
            f"CTC head; give an output path ending in .pt to write an encoder-only checkpoint instead"
        )
    loader = AutoModelForCTC if is_ctc else AutoModel
    model = loader.from_pretrained(str(local_dir), local_files_only=True).eval()
    if out.suffix != ".nemo":
        converted = from_transformers(model)
        encoder = converted.encoder if isinstance(converted, ConvertedCTC) else converted
        return save_encoder_checkpoint(encoder_config_from_transformers(config), encoder, out)
    converted = from_transformers(model, vocab=local_dir)
    sample_rate, normalize = _feature_extractor_settings(local_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_nemo_ctc_model(converted, sample_rate=sample_rate, normalize=normalize).save_to(str(out))
    return out


__all__ = [
    "SUPPORTED_MODEL_TYPES", "convert_local_dir", "encoder_config_from_transformers",
    "encoder_state_dict_from_transformers", "from_transformers", "transformers_config",
]  # fmt: skip
