"""Import of transformers (and fairseq-layout) SEW / wav2vec 2.0 / HuBERT: randomly initialised peers give our outputs.

Every model here is built from a small config with random weights (nothing is downloaded), then every
parameter is perturbed so that zero-initialised biases and unit LayerNorm weights are exercised by the name map.
Tolerance: max abs difference <= 1e-4 in fp32 on ``last_hidden_state`` (HF ``(B, T, D)`` vs ours ``(B, D, T)``).

Padding: transformers is not padding-invariant everywhere, so padded batches are compared only where it is:
* the group-norm extractor (wav2vec 2.0 base style, HuBERT base, SEW) normalises over the padded time axis and
  ignores the attention mask, so those are compared on unpadded inputs only;
* transformers' SEW keeps a squeezed frame when any of its ``s`` frames is valid (``ceil``, fairseq and ours
  use ``floor``), so padded SEW items are compared where the frame count is a multiple of ``s``.
"""

import argparse
import json
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")

from nemo_sew import SqueezeEncoder  # noqa: E402
from nemo_sew.convert import (  # noqa: E402
    ConvertedCTC,
    UnsupportedModelError,
    blank_last_order,
    convert_local_dir,
    encoder_state_dict_from_transformers,
    from_transformers,
    load_encoder_checkpoint,
)
from nemo_sew.convert import cli as convert_cli  # noqa: E402

TOL = 1e-4
W2V_CONV = dict(conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2))
SEW_CONV = dict(
    conv_dim=(16, 32, 32, 32, 32, 64, 64, 64, 64, 128, 128, 128, 128),
    conv_kernel=(10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1),
    conv_stride=(5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1),
)  # SEW's WFE-C shape (c=16 instead of 64), stride 320, receptive field 400
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
# wav2vec 2.0 / HuBERT: even positional kernel (SamePad drops a frame, as with the real 128)
W2V_POS = dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
LARGE_STYLE = dict(do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)


def _config(family: str):
    t = transformers
    configs = {
        "sew": lambda: t.SEWConfig(**SMALL, **SEW_CONV, squeeze_factor=2, num_conv_pos_embeddings=31,
                                   num_conv_pos_embedding_groups=16),
        "sew_layer_norm": lambda: t.SEWConfig(**SMALL, **SEW_CONV, squeeze_factor=2, num_conv_pos_embeddings=31,
                                              num_conv_pos_embedding_groups=16, feat_extract_norm="layer",
                                              conv_bias=True),
        # conv_dim[-1] == hidden_size: SEW has no feature projection then
        "sew_no_projection": lambda: t.SEWConfig(**{**SMALL, "hidden_size": 128}, **SEW_CONV, squeeze_factor=2,
                                                 num_conv_pos_embeddings=31, num_conv_pos_embedding_groups=16),
        "wav2vec2_base": lambda: t.Wav2Vec2Config(**SMALL, **W2V_CONV, **W2V_POS),
        "wav2vec2_large": lambda: t.Wav2Vec2Config(**SMALL, **W2V_CONV, **W2V_POS, **LARGE_STYLE),
        "hubert": lambda: t.HubertConfig(**SMALL, **W2V_CONV, **W2V_POS),
        "hubert_large": lambda: t.HubertConfig(**SMALL, **W2V_CONV, **W2V_POS, **LARGE_STYLE),
        # no feature LayerNorm, and a projection although conv_dim[-1] == hidden_size
        "hubert_no_feat_ln": lambda: t.HubertConfig(**{**SMALL, "hidden_size": 32}, **W2V_CONV, **W2V_POS,
                                                    feat_proj_layer_norm=False),
    }  # fmt: skip
    return configs[family]()


def _perturb(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _hf_model(family: str, ctc: bool = False, **overrides):
    config = _config(family)
    for k, v in overrides.items():
        setattr(config, k, v)
    kind = {"sew": "SEW", "wav2vec2": "Wav2Vec2", "hubert": "Hubert"}[config.model_type]
    cls = getattr(transformers, kind + ("ForCTC" if ctc else "Model"))
    return _perturb(cls(config))


def _ours(hf, x, lengths):
    encoder = from_transformers(hf)
    assert not encoder.training
    with torch.no_grad():
        y, y_len = encoder(audio_signal=x[:, None, :], length=torch.as_tensor(lengths))
    return y.transpose(1, 2), y_len  # (B, T, D) like HF


@pytest.mark.parametrize(
    "family",
    ["sew", "sew_no_projection", "wav2vec2_base", "wav2vec2_large", "hubert", "hubert_no_feat_ln"],
)
def test_unpadded_parity(family):
    hf = _hf_model(family)
    worst = 0.0
    for n in (16000, 9123):  # 49 frames (odd, SEW drops the last one) and 28 frames
        x = torch.randn(1, n)
        with torch.no_grad():
            ref = hf(x).last_hidden_state
        y, y_len = _ours(hf, x, [n])
        assert y.shape == ref.shape and int(y_len[0]) == ref.shape[1]
        assert ref.abs().max() > 0.1  # not a degenerate comparison
        worst = max(worst, (y - ref).abs().max().item())
    assert worst <= TOL, f"{family}: max abs diff {worst:.3g}"


@pytest.mark.parametrize("family", ["wav2vec2_large", "hubert_large", "sew_layer_norm"])
def test_padded_batch_parity(family):
    hf = _hf_model(family)
    lengths = [16000, 15040, 7999]  # 49, 46 and 24 frames: even where SEW squeezes a padded item
    n = max(lengths)
    valid = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    x = torch.randn(len(lengths), n) * valid
    with torch.no_grad():
        ref = hf(x, attention_mask=valid.long()).last_hidden_state
    y, y_len = _ours(hf, x, lengths)
    for i in range(len(lengths)):
        t = int(y_len[i])
        assert t == hf._get_feat_extract_output_lengths(lengths[i])
        diff = (y[i, :t] - ref[i, :t]).abs().max().item()
        assert diff <= TOL, f"{family} item {i}: max abs diff {diff:.3g}"


def test_weight_norm_storage_styles_give_the_same_encoder():
    hf = _hf_model("wav2vec2_base")
    state = hf.state_dict()
    base = "encoder.pos_conv_embed.conv."
    g, v = state[base + "parametrizations.weight.original0"], state[base + "parametrizations.weight.original1"]
    reference = encoder_state_dict_from_transformers(state, hf.config)
    old_style = {k: t for k, t in state.items() if ".parametrizations." not in k}
    old_style.update({base + "weight_g": g, base + "weight_v": v})
    converted = encoder_state_dict_from_transformers(old_style, hf.config)
    assert converted.keys() == reference.keys() and all(torch.equal(reference[k], t) for k, t in converted.items())
    folded = {k: t for k, t in old_style.items() if k not in (base + "weight_g", base + "weight_v")}
    folded[base + "weight"] = hf.encoder.pos_conv_embed.conv.weight.detach()
    encoder = from_transformers(hf)
    encoder.load_state_dict(encoder_state_dict_from_transformers(folded, hf.config))
    assert torch.allclose(encoder.compressor.conv.weight, hf.encoder.pos_conv_embed.conv.weight, atol=1e-6)


def test_blank_last_order():
    assert blank_last_order(5, 0) == [1, 2, 3, 4, 0]
    assert blank_last_order(5, 3) == [0, 1, 2, 4, 3]
    with pytest.raises(ValueError, match=r"blank id in \[0, 5\), got 5"):
        blank_last_order(5, 5)


def test_unsupported_configs_raise_clear_errors():
    t = transformers
    with pytest.raises(UnsupportedModelError, match=r"model_type 'sew-d'.*DeBERTa"):
        from_transformers(t.SEWDModel(t.SEWDConfig(**SMALL, **SEW_CONV)))
    with pytest.raises(UnsupportedModelError, match=r"hidden_act='relu'"):
        from_transformers(_hf_model("wav2vec2_base", hidden_act="relu"))
    cfg = t.HubertConfig(**SMALL, **W2V_CONV, **W2V_POS, conv_pos_batch_norm=True)
    with pytest.raises(UnsupportedModelError, match=r"conv_pos_batch_norm"):
        from_transformers(t.HubertModel(cfg))
    with pytest.raises(UnsupportedModelError, match=r"pass model\.wav2vec2"):
        from_transformers(t.Wav2Vec2ForSequenceClassification(_config("wav2vec2_base")))


VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "a", "b", "c", "'"]


def _save_ctc_dir(tmp_path, family, pad_index, normalize):
    """A local transformers CTC directory: model, ``Wav2Vec2CTCTokenizer`` and feature extractor."""
    tokens = [t for t in VOCAB if t != "<pad>"]
    tokens.insert(pad_index, "<pad>")
    vocab_file = tmp_path / "vocab_src.json"
    vocab_file.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(str(vocab_file))
    hf = _hf_model(family, ctc=True, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    local = tmp_path / family
    hf.save_pretrained(local)
    tokenizer.save_pretrained(local)
    feature_extractor = transformers.Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=True)
    feature_extractor.save_pretrained(local)
    return local, hf, tokens, feature_extractor


@pytest.mark.parametrize(
    "family, pad_index, normalize, lengths",
    [
        ("wav2vec2_large", 0, True, [16000, 11000]),  # padded batch: large style is padding-invariant
        ("sew", 3, False, [16000]),  # group-norm extractor: unpadded; blank in the middle of the vocabulary
    ],
)
def test_ctc_dir_to_nemo_logprob_parity(tmp_path, family, pad_index, normalize, lengths):
    import nemo_sew  # noqa: F401  (registers nemo_sew. targets with NeMo)
    from nemo.collections.asr.models import ASRModel

    local, hf, tokens, feature_extractor = _save_ctc_dir(tmp_path, family, pad_index, normalize)
    out = convert_local_dir(local, tmp_path / "model.nemo")
    model = ASRModel.restore_from(str(out), map_location="cpu").eval()
    assert type(model).__name__ == "SqueezeCTCModel"
    expected_labels = [" " if t == "|" else t for t in tokens if t != "<pad>"]
    assert list(model.decoder.vocabulary) == expected_labels
    assert model.preprocessor.normalize is normalize

    n = max(lengths)
    audio = [torch.randn(m) for m in lengths]
    features = feature_extractor([a.numpy() for a in audio], sampling_rate=16000, padding=True, return_tensors="pt")
    batch = torch.zeros(len(lengths), n)
    for i, a in enumerate(audio):
        batch[i, : len(a)] = a
    with torch.no_grad():
        hf_logits = hf(features.input_values, attention_mask=features.attention_mask).logits  # (B, T, V)
        log_probs, enc_len, greedy = model(input_signal=batch, input_signal_length=torch.tensor(lengths))
    order = blank_last_order(len(tokens), pad_index)
    ref = torch.log_softmax(hf_logits, dim=-1)[..., order]  # HF blank (pad id) moved last, as in NeMo
    for i in range(len(lengths)):
        t = int(enc_len[i])
        assert t == hf._get_feat_extract_output_lengths(lengths[i])
        diff = (log_probs[i, :t] - ref[i, :t]).abs().max().item()
        assert diff <= TOL, f"{family} item {i}: max abs log-prob diff {diff:.3g}"
        assert torch.equal(greedy[i, :t], ref[i, :t].argmax(-1))


def test_cli_encoder_only_checkpoint_and_nemo_needs_ctc_head(tmp_path):
    hf = _hf_model("hubert")
    hf.save_pretrained(tmp_path / "hubert")
    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(dest="command"))

    args = parser.parse_args(["convert", str(tmp_path / "hubert"), str(tmp_path / "enc.nemo")])
    with pytest.raises(ValueError, match=r"needs a CTC head.*\.pt"):
        args.func(args)

    args = parser.parse_args(["convert", str(tmp_path / "hubert"), str(tmp_path / "enc.pt")])
    assert args.func(args) == 0
    encoder = load_encoder_checkpoint(tmp_path / "enc.pt")
    x = torch.randn(1, 8000)
    with torch.no_grad():
        ref = hf(x).last_hidden_state
        y, _ = encoder(audio_signal=x[:, None], length=torch.tensor([8000]))
    assert (y.transpose(1, 2) - ref).abs().max().item() <= TOL


def test_from_transformers_ctc_without_vocab_keeps_head_in_nemo_order():
    hf = _hf_model("hubert", ctc=True, vocab_size=6, pad_token_id=2)
    converted = from_transformers(hf)
    assert isinstance(converted, ConvertedCTC) and converted.labels is None
    assert converted.order == [0, 1, 3, 4, 5, 2]
    assert torch.equal(converted.head_weight[-1], hf.lm_head.weight[2])
    assert converted.decoder_state_dict()["decoder_layers.0.weight"].shape == (6, 64, 1)


# ---------------------------------------------------------------------------------------------------------
# fairseq: fairseq is not installed here, so checkpoints are written in fairseq's layout (names from
# transformers' fairseq conversion scripts) from transformers models, and compared with those models.


def _fairseq_layout(hf):
    """``{"cfg": ..., "model": state_dict}`` as fairseq writes it, from a transformers model (or *ForCTC)."""
    config = hf.config
    group = config.feat_extract_norm == "group"
    renames = [
        ("feature_projection.layer_norm.", "layer_norm."),  # wav2vec 2.0 / HuBERT (SEW: top-level layer_norm.)
        ("feature_projection.projection.", "post_extract_proj."),
        ("feature_projection.", "post_extract_proj."),  # SEW
        ("encoder.pos_conv_embed.conv.parametrizations.weight.original0", "encoder.pos_conv.0.weight_g"),
        ("encoder.pos_conv_embed.conv.parametrizations.weight.original1", "encoder.pos_conv.0.weight_v"),
        ("encoder.pos_conv_embed.conv.", "encoder.pos_conv.0."),
        (".attention.", ".self_attn."),
        (".feed_forward.intermediate_dense.", ".fc1."),
        (".feed_forward.output_dense.", ".fc2."),
        ("encoder.upsample.projection.", "encoder.upsample.0."),
        ("masked_spec_embed", "mask_emb"),
    ]
    state = {}
    for key, value in hf.base_model.state_dict().items():
        m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", key)
        if m:
            sub = "0" if m[2] == "conv" else ("2" if group else "2.1")
            key = f"feature_extractor.conv_layers.{m[1]}.{sub}.{m[3]}"
        key = re.sub(r"^encoder\.layers\.(\d+)\.layer_norm\.", r"encoder.layers.\1.self_attn_layer_norm.", key)
        for old, new in renames:
            if old in key:
                key = key.replace(old, new)
                break
        state[key] = value.clone()
    state["quantizer.vars"] = torch.randn(1, 4, 8)  # pre-training heads are skipped
    state["project_q.weight"] = torch.randn(8, 8)
    model_cfg = {
        "_name": "wav2vec2",
        "extractor_mode": "default" if group else "layer_norm",
        "conv_feature_layers": " + ".join(
            f"[({c}, {k}, {s})]" for c, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride)
        ),
        "conv_bias": config.conv_bias,
        "encoder_layers": config.num_hidden_layers,
        "encoder_embed_dim": config.hidden_size,
        "encoder_ffn_embed_dim": config.intermediate_size,
        "encoder_attention_heads": config.num_attention_heads,
        "activation_fn": "gelu",
        "conv_pos": config.num_conv_pos_embeddings,
        "conv_pos_groups": config.num_conv_pos_embedding_groups,
        "layer_norm_first": bool(getattr(config, "do_stable_layer_norm", False)),
    }
    task = {"_name": "audio_finetuning", "sample_rate": 16000, "normalize": model_cfg["layer_norm_first"]}
    if not hasattr(hf, "lm_head"):
        return {"cfg": {"model": model_cfg, "task": task}, "model": state}
    state = {"w2v_encoder.w2v_model." + k: v for k, v in state.items()}
    state["w2v_encoder.proj.weight"] = hf.lm_head.weight.detach().clone()
    state["w2v_encoder.proj.bias"] = hf.lm_head.bias.detach().clone()
    outer = {"_name": "wav2vec_ctc", "w2v_args": {"model": model_cfg, "task": task}}
    return {"cfg": {"model": outer, "task": task}, "model": state}


@pytest.mark.parametrize("family", ["wav2vec2_base", "sew"])
def test_fairseq_pretrained_checkpoint_parity(tmp_path, family):
    from nemo_sew.convert.fairseq import from_fairseq

    hf = _hf_model(family)
    torch.save(_fairseq_layout(hf), tmp_path / "checkpoint.pt")
    encoder = from_fairseq(tmp_path / "checkpoint.pt")  # weights_only load: plain dicts and tensors
    x = torch.randn(1, 12345)
    with torch.no_grad():
        ref = hf(x).last_hidden_state
        y, _ = encoder(audio_signal=x[:, None], length=torch.tensor([12345]))
    assert (y.transpose(1, 2) - ref).abs().max().item() <= TOL


def test_fairseq_finetuned_checkpoint_to_nemo(tmp_path):
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    symbols = ["|", "e", "t", "a", "'"]
    hf = _hf_model("wav2vec2_large", ctc=True, vocab_size=4 + len(symbols), pad_token_id=0)  # blank = <s> = 0
    torch.save(_fairseq_layout(hf), tmp_path / "ft.pt")
    (tmp_path / "dict.ltr.txt").write_text("".join(f"{s} {100 - i}\n" for i, s in enumerate(symbols)))
    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", str(tmp_path / "ft.pt"), str(tmp_path / "ft.nemo"), "--dict",
                              str(tmp_path / "dict.ltr.txt")])  # fmt: skip
    assert args.func(args) == 0
    model = ASRModel.restore_from(str(tmp_path / "ft.nemo"), map_location="cpu").eval()
    assert list(model.decoder.vocabulary) == ["<pad>", "</s>", "<unk>", " ", "e", "t", "a", "'"]
    assert model.preprocessor.normalize  # the fairseq task normalised (large model)
    audio = 0.1 * torch.randn(1, 16000)
    with torch.no_grad():
        hf_logits = hf(torch.nn.functional.layer_norm(audio, audio.shape[-1:])).logits  # fairseq's normalisation
        log_probs, enc_len, _ = model(input_signal=audio, input_signal_length=torch.tensor([16000]))
    ref = torch.log_softmax(hf_logits, -1)[..., blank_last_order(hf_logits.shape[-1], 0)]
    assert (log_probs - ref).abs().max().item() <= TOL


def test_fairseq_config_parsing_and_errors():
    from nemo_sew.convert.fairseq import DEFAULT_CONV_FEATURE_LAYERS, from_fairseq, parse_conv_feature_layers

    expected = [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    assert parse_conv_feature_layers(DEFAULT_CONV_FEATURE_LAYERS) == expected
    with pytest.raises(ValueError, match="cannot parse conv_feature_layers"):
        parse_conv_feature_layers("__import__('os').getcwd()")
    hf = _hf_model("hubert")
    checkpoint = _fairseq_layout(hf)
    old_style = {"args": argparse.Namespace(**checkpoint["cfg"]["model"]), "model": checkpoint["model"]}
    assert isinstance(from_fairseq(old_style), SqueezeEncoder)
    checkpoint["cfg"]["model"]["layer_type"] = "conformer"
    with pytest.raises(UnsupportedModelError, match=r"layer_type='conformer'"):
        from_fairseq(checkpoint)


def test_masked_spec_embed_becomes_our_mask_embedding():
    """transformers' training-time mask vector is carried over: fine-tuning's time masking uses it."""
    import transformers

    from nemo_sew.convert import from_transformers

    cfg = transformers.Wav2Vec2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                                      conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), mask_time_prob=0.05)  # fmt: skip
    model = transformers.Wav2Vec2Model(cfg).eval()
    encoder = from_transformers(model)
    torch.testing.assert_close(encoder.mask_emb.detach(), model.masked_spec_embed.detach())
    cfg.mask_time_prob = 0.0
    assert from_transformers(transformers.Wav2Vec2Model(cfg)).mask_emb is None


# transformers_config(preset) -> encoder_config_from_transformers gives back the preset's arch; the encoder's
# other arguments are transformers' training-time defaults, which transformers_config keeps (it sets the
# architecture only).
ROUND_TRIP_OPTIONS = {
    "dropout": {"hidden": 0.1, "attention": 0.1, "activation": 0.1, "feature": 0.0, "layerdrop": 0.1},
    "mask_emb": True,  # transformers' mask_time_prob = 0.05 creates masked_spec_embed; our presets have none
}


from nemo_sew.arch import PRESETS  # noqa: E402


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_transformers_config_round_trips_every_representable_preset(preset):
    """``encoder_config_from_transformers(transformers_config(p))`` is preset ``p``'s arch (SEW presets as
    ``SEWConfig``, wav2vec 2.0 presets as ``Wav2Vec2Config``); the others raise."""
    from nemo_sew.arch import EncoderArch
    from nemo_sew.convert.transformers import encoder_config_from_transformers, transformers_config

    arch = PRESETS[preset]
    kind = arch.frontend.kind
    if kind not in ("wfe_c", "wfe_o") or arch.blocks[0].kind != "transformer":
        with pytest.raises(ValueError, match="expected a (waveform|transformer) preset"):
            transformers_config(preset)
        return
    hf_config = transformers_config(preset)
    assert type(hf_config).__name__ == {"wfe_c": "SEWConfig", "wfe_o": "Wav2Vec2Config"}[kind]
    back = encoder_config_from_transformers(hf_config)
    expected_arch = arch
    if kind == "wfe_o":
        # wav2vec 2.0 always projects; ours (None) projects when the conv width differs from d_model, which it
        # does in every wav2vec 2.0 preset: the same module (checked on the built encoders below)
        expected_arch = arch.replace(feature_projection=True)
    assert EncoderArch.from_dict(back["arch"]) == expected_arch
    assert {k: v for k, v in back.items() if k != "arch"} == ROUND_TRIP_OPTIONS
    # the same weights: identical parameter names and shapes (mask_emb aside)
    with torch.device("meta"):
        ours = SqueezeEncoder(arch=arch).state_dict()
        converted = SqueezeEncoder(**{**back, "mask_emb": False}).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.items()}


def test_transformers_config_rejects_non_uniform_archs():
    from nemo_sew.arch import build_arch
    from nemo_sew.convert.transformers import transformers_config

    arch = build_arch("tiny_wfe_c", blocks=[{"heads": 2}, {"heads": 1, "head_dim": 128}])
    with pytest.raises(ValueError, match="same shape"):
        transformers_config(arch)
