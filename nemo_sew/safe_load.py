"""Loading checkpoints a user hands us without running their pickled code.

``torch.load(weights_only=True)`` refuses every Python global that is not on an allow list. Lightning
checkpoints written by NeMo models carry their config as OmegaConf containers and NeMo's decoding dataclasses;
fairseq checkpoints carry an OmegaConf config (or an ``argparse.Namespace``). :func:`load_checkpoint` allows
exactly those kinds of plain data (OmegaConf nodes, builtin containers and scalars, ``typing`` markers,
NeMo dataclasses and enums, numpy arrays) and refuses anything else (a function, a class with a custom
``__reduce__``) with :class:`UnsafeCheckpointError` naming the file and the globals.

``.nemo`` files: NeMo's ``restore_from`` reads the config with OmegaConf (no code), instantiates only
allow-listed ``_target_`` prefixes, and loads the weights with torch's default ``weights_only=True``
(torch >= 2.6); :func:`restore` adds the file name to its errors.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from nemo_sew.errors import UserError

SAFE_BUILTINS = {"int", "float", "str", "bool", "bytes", "complex", "dict", "list", "tuple", "set", "frozenset", "slice", "NoneType"}
SAFE_NAMES = {
    "collections.defaultdict": collections.defaultdict,
    "collections.OrderedDict": collections.OrderedDict,
    "argparse.Namespace": argparse.Namespace,  # older fairseq checkpoints: their args
}
NUMPY_NAMES = ("_reconstruct", "scalar", "ndarray", "dtype")
SAFE_TYPING = {"Any", "List", "Dict", "Optional", "Union", "Tuple", "Sequence", "Mapping"}  # OmegaConf type markers


class UnsafeCheckpointError(UserError):
    """A checkpoint holds Python objects (code) that loading it would run."""


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        obj = importlib.import_module(module)
    except (ImportError, ValueError):  # ValueError: no module part (torch names a builtin function bare)
        return None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj


def _allowed(name: str) -> Any | None:
    """The object for an allow-listed global ``module.name``; None when it is not plain data."""
    module, _, attr = name.rpartition(".")
    if name in SAFE_NAMES:
        return SAFE_NAMES[name]
    if module == "builtins":
        return _resolve(name) if attr in SAFE_BUILTINS else None
    if module == "typing":
        return _resolve(name) if attr in SAFE_TYPING else None
    if module.split(".")[0] == "numpy" and attr in NUMPY_NAMES or module in ("numpy.dtypes",):
        return _resolve(name)
    obj = _resolve(name)
    if not isinstance(obj, type):
        return None  # functions and other callables: never
    if module.split(".")[0] == "omegaconf":
        return obj  # OmegaConf containers and nodes
    if module.split(".")[0] in ("nemo", "nemo_sew", "lightning", "pytorch_lightning", "fairseq"):
        plain_dict = issubclass(obj, dict) and "__reduce__" not in vars(obj) and "__setstate__" not in vars(obj)
        if dataclasses.is_dataclass(obj) or issubclass(obj, enum.Enum) or plain_dict:
            return obj  # config dataclasses, enums, AttributeDict
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` allowing the plain-data globals of Lightning, NeMo and fairseq
    checkpoints; :class:`UnsafeCheckpointError` naming the file for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # not a zip checkpoint (legacy format): torch's own allow list decides below
        names = []
    refused = [n for n in names if _allowed(n) is None]
    if refused:
        raise UnsafeCheckpointError(
            f"{path}: refusing to load: it holds Python objects that would run code or are not plain data "
            f"({', '.join(sorted(refused)[:8])}); only load checkpoints from sources you trust"
        )
    allowed = [_allowed(n) for n in names]
    # legacy files name one unsupported global per failed attempt, and neither format lists the classes a BUILD
    # opcode meets (a numpy array's dtype class, numpy.dtypes.Float32DType): allow-listed ones are added
    for _ in range(64):
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            name = _unsupported_global(str(err))
            obj = _allowed(name) if name else None
            if obj is None or obj in allowed:
                what = f" ({name})" if name else f": {str(err).splitlines()[0]}"
                raise UnsafeCheckpointError(
                    f"{path}: refusing to load: it holds Python objects that would run code or are not plain data"
                    f"{what}; only load checkpoints from sources you trust"
                ) from err
            allowed.append(obj)
        except (RuntimeError, EOFError) as err:
            reason = f": {str(err).splitlines()[0]}" if str(err) else ""  # an empty file: a bare EOFError
            raise UserError(f"{path}: not a readable torch checkpoint ({type(err).__name__}{reason})") from err
    raise UnsafeCheckpointError(f"{path}: refusing to load: too many distinct Python globals")


def _unsupported_global(message: str) -> str | None:
    """The global torch's weights-only unpickler refused (``Unsupported global: GLOBAL module.name``, or the class
    it could not build: ``... allowlisted via `add_safe_globals`, but got <class 'module.name'>``), if named."""
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", message) or re.search(r"but got <class '([\w.]+)'>", message)
    return match.group(1) if match else None


def restore(path: str | Path, map_location: str | torch.device = "cpu", model_class=None):
    """NeMo's ``ASRModel.restore_from`` (weights with ``weights_only=True``), with the file named in its errors.

    ``model_class`` restores through another NeMo class (``ModelPT`` for a teacher of any kind)."""
    from nemo.collections.asr.models import ASRModel
    from nemo.core import ModelPT

    import nemo_sew  # noqa: F401  (registers the _target_ prefix)

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model not found: {path}")
    try:
        return (model_class or ASRModel).restore_from(str(path), map_location=map_location)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(f"{path}: refusing to load its weights: {str(err).splitlines()[0]}") from err
    finally:
        # NeMo sets a process-wide "model is being restored" flag and clears it only on success; left set, every
        # model built later in this process skips its data set-up (train_dataloader() is None).
        ModelPT._set_model_restore_state(is_being_restored=False)
