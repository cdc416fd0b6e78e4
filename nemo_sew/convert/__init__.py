"""Import of pretrained checkpoints into nemo_sew: transformers and fairseq SEW, wav2vec 2.0, HuBERT.

``from_transformers(model)`` gives a :class:`nemo_sew.SqueezeEncoder` (bare models) or a :class:`ConvertedCTC`
(``*ForCTC`` models); ``to_nemo_ctc_model`` turns the latter into a NeMo ``.nemo``-ready CTC model. The
``nemo-sew convert LOCAL_DIR OUT`` command (:mod:`nemo_sew.convert.cli`) does both from a local directory.
``from_fairseq`` reads fairseq checkpoint files the same way (fairseq itself is not needed). transformers is
imported only inside the functions that load a model directory or a tokenizer.
"""

from nemo_sew._lazy import lazy_exports

_EXPORTS = {
    "ConvertedCTC": "nemo_sew.convert.common",
    "UnsupportedModelError": "nemo_sew.convert.common",
    "blank_last_order": "nemo_sew.convert.common",
    "ctc_model_config": "nemo_sew.convert.common",
    "labels_from_tokens": "nemo_sew.convert.common",
    "load_encoder_checkpoint": "nemo_sew.convert.common",
    "save_encoder_checkpoint": "nemo_sew.convert.common",
    "to_nemo_ctc_model": "nemo_sew.convert.common",
    "convert_fairseq_checkpoint": "nemo_sew.convert.fairseq",
    "from_fairseq": "nemo_sew.convert.fairseq",
    "convert_local_dir": "nemo_sew.convert.transformers",
    "encoder_config_from_transformers": "nemo_sew.convert.transformers",
    "encoder_state_dict_from_transformers": "nemo_sew.convert.transformers",
    "from_transformers": "nemo_sew.convert.transformers",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "ConvertedCTC", "UnsupportedModelError", "blank_last_order", "convert_fairseq_checkpoint", "convert_local_dir",
    "ctc_model_config", "encoder_config_from_transformers", "encoder_state_dict_from_transformers", "from_fairseq",
    "from_transformers", "labels_from_tokens", "load_encoder_checkpoint", "save_encoder_checkpoint",
    "to_nemo_ctc_model",
]  # fmt: skip
