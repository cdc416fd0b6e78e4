"""Import of pretrained checkpoints into nemo_sew (transformers SEW, wav2vec 2.0, HuBERT; see each module).

``from_transformers(model)`` gives a :class:`nemo_sew.SqueezeEncoder` (bare models) or a :class:`ConvertedCTC`
(``*ForCTC`` models); ``to_nemo_ctc_model`` turns the latter into a NeMo ``.nemo``-ready CTC model. The
``nemo-sew convert LOCAL_DIR OUT`` command (:mod:`nemo_sew.convert.cli`) does both from a local directory.
transformers is only needed by :mod:`nemo_sew.convert.transformers` and is imported there.
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
from nemo_sew.convert.transformers import (
    convert_local_dir,
    encoder_config_from_transformers,
    encoder_state_dict_from_transformers,
    from_transformers,
)

__all__ = [
    "ConvertedCTC", "UnsupportedModelError", "blank_last_order", "convert_local_dir", "ctc_model_config",
    "encoder_config_from_transformers", "encoder_state_dict_from_transformers", "from_transformers",
    "labels_from_tokens", "load_encoder_checkpoint", "save_encoder_checkpoint", "to_nemo_ctc_model",
]  # fmt: skip
