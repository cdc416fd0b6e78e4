"""nemo-sew: one trained speech encoder, many compute budgets (an NVIDIA NeMo extension).

Importing this package registers ``nemo_sew.`` with NeMo's ``_target_`` allowlist, so NeMo's own
scripts (``transcribe_speech.py``, ``ASRModel.restore_from``) can build and restore our classes.
"""

from nemo.core.classes import common as _nemo_common

_PREFIX = "nemo_sew."
if _PREFIX not in _nemo_common.ALLOWED_TARGET_PREFIXES:
    _nemo_common.ALLOWED_TARGET_PREFIXES.append(_PREFIX)

from nemo_sew.encoder import SqueezeEncoder  # noqa: E402
from nemo_sew.preprocessor import WaveformPreprocessor  # noqa: E402
from nemo_sew.arch import PRESETS, BlockSpec, EncoderArch, build_arch  # noqa: E402
from nemo_sew.encoder import EncoderOutput, build_encoder, encoder_config  # noqa: E402
from nemo_sew.profile import CompressionProfile, load_profiles  # noqa: E402

__version__ = "0.1.0"


def __getattr__(name: str):
    # the NeMo model classes pull in NeMo's whole ASR collection: import them on first use
    if name in ("SqueezeCTCModel", "SqueezeCTCModelBPE"):
        from nemo_sew.models import ctc

        return getattr(ctc, name)
    raise AttributeError(f"module 'nemo_sew' has no attribute {name!r}")


__all__ = [
    "PRESETS", "BlockSpec", "CompressionProfile", "EncoderArch", "EncoderOutput", "SqueezeCTCModel", "SqueezeCTCModelBPE", "SqueezeEncoder",
    "WaveformPreprocessor", "build_arch", "build_encoder", "encoder_config", "load_profiles",
]  # fmt: skip
