"""nemo-sew: one trained speech encoder, many compute budgets (an NVIDIA NeMo extension).

Importing this package imports nothing heavy: the torch-only parts (``nemo_sew.arch``, ``nemo_sew.nn``,
``nemo_sew.cost``) work where NeMo is not installed, and the names below (``nemo_sew.SqueezeEncoder``, ...)
import their modules on first use (PEP 562).

It still registers ``nemo_sew.`` with NeMo's ``_target_`` allowlist, so NeMo's own scripts
(``transcribe_speech.py``, ``ASRModel.restore_from``) and stock NeMo configs (``_target_: nemo_sew.SqueezeEncoder``)
can build and restore our classes: at once when NeMo's ``nemo.core.classes.common`` is already imported, else
as soon as it is (a one-shot import hook; nothing happens in a process that never imports NeMo).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"

_PREFIX = "nemo_sew."
_NEMO_COMMON = "nemo.core.classes.common"  # holds ALLOWED_TARGET_PREFIXES


def _allow_our_targets(common: Any) -> None:
    if _PREFIX not in common.ALLOWED_TARGET_PREFIXES:
        common.ALLOWED_TARGET_PREFIXES.append(_PREFIX)


class _AllowOnNeMoImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Registers our prefix right after NeMo's ``nemo.core.classes.common`` is executed, then leaves ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != _NEMO_COMMON:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot (and the search below must not find us again)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        module.__loader__ = module.__spec__.loader = self._loader  # the module keeps its real loader
        self._loader.exec_module(module)
        _allow_our_targets(module)


if _NEMO_COMMON in sys.modules:
    _allow_our_targets(sys.modules[_NEMO_COMMON])
elif not any(type(f).__name__ == _AllowOnNeMoImport.__name__ for f in sys.meta_path):
    sys.meta_path.insert(0, _AllowOnNeMoImport())

#: public name -> the module that defines it (imported on first use)
_LAZY = {
    "SqueezeEncoder": "nemo_sew.encoder",
    "EncoderOutput": "nemo_sew.encoder",
    "build_encoder": "nemo_sew.encoder",
    "encoder_config": "nemo_sew.encoder",
    "WaveformPreprocessor": "nemo_sew.preprocessor",
    "PRESETS": "nemo_sew.arch",
    "BlockSpec": "nemo_sew.arch",
    "EncoderArch": "nemo_sew.arch",
    "build_arch": "nemo_sew.arch",
    "CompressionProfile": "nemo_sew.profile",
    "load_profiles": "nemo_sew.profile",
    # the NeMo model classes pull in NeMo's whole ASR collection
    "SqueezeCTCModel": "nemo_sew.models.ctc",
    "SqueezeCTCModelBPE": "nemo_sew.models.ctc",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nemo_sew' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "PRESETS", "BlockSpec", "CompressionProfile", "EncoderArch", "EncoderOutput", "SqueezeCTCModel", "SqueezeCTCModelBPE", "SqueezeEncoder",
    "WaveformPreprocessor", "build_arch", "build_encoder", "encoder_config", "load_profiles",
]  # fmt: skip
