"""Import of pretrained checkpoints into nemo_sew: transformers and fairseq SEW, wav2vec 2.0, HuBERT.

``from_transformers(model)`` gives a :class:`nemo_sew.SqueezeEncoder` (bare models) or a :class:`ConvertedCTC`
(``*ForCTC`` models); ``to_nemo_ctc_model`` turns the latter into a NeMo ``.nemo``-ready CTC model. The
``nemo-sew convert LOCAL_DIR OUT`` command (:mod:`nemo_sew.convert.cli`) does both from a local directory.
``from_fairseq`` reads fairseq checkpoint files the same way (fairseq itself is not needed). transformers is
imported only inside the functions that load a model directory or a tokenizer.
"""

from nemo_sew.convert.common import (
    ConvertedCTC,
    UnsupportedModelError,
    blank_last_order,
    ctc_model_config,
    labels_from_tokens,
    load_encoder_checkpoint,
    save_encoder_checkpoint,
    to_nemo_ctc_model,
)
from nemo_sew.convert.fairseq import convert_fairseq_checkpoint, from_fairseq
from nemo_sew.convert.transformers import (
    convert_local_dir,
    encoder_config_from_transformers,
    encoder_state_dict_from_transformers,
    from_transformers,
)

__all__ = [
    "ConvertedCTC", "UnsupportedModelError", "blank_last_order", "convert_fairseq_checkpoint", "convert_local_dir",
    "ctc_model_config", "encoder_config_from_transformers", "encoder_state_dict_from_transformers", "from_fairseq",
    "from_transformers", "labels_from_tokens", "load_encoder_checkpoint", "save_encoder_checkpoint",
    "to_nemo_ctc_model",
]  # fmt: skip
