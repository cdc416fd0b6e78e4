"""Behaviour guards of the checkpoint allow list (issue 30 item 2): each kills mutants of nemo_sew/safe_load.py that
tests/test_safe_load.py and tests/test_guards_safe_load_legacy.py let survive (`make mutation
MUTATION_ARGS=safe_load`, outputs/mutation/summary.md).

:func:`nemo_sew.safe_load.load_checkpoint` promises to load plain data (builtin containers and scalars, ``typing``
markers, numpy arrays, the config dataclasses, enums and plain dicts of NeMo, Lightning and fairseq) and to refuse
everything else that is code (functions, classes that run code on unpickling) with an error naming the file and the
globals. Each kind is checked here both ways, in the zip and the legacy format where they differ, on classes placed
in modules of the trusted packages (``sys.modules`` entries, removed after each test).
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import sys
import types
import typing

import numpy as np
import pytest
import torch

from nemo_sew.errors import UserError
from nemo_sew.safe_load import UnsafeCheckpointError, load_checkpoint, restore


def _save(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    """A module ``name`` in ``sys.modules`` (not set as an attribute of its package) holding ``attrs``, each
    renamed so that pickle finds it there."""
    mod = types.ModuleType(name)
    for attr, obj in attrs.items():
        obj.__module__, obj.__qualname__, obj.__name__ = name, attr, attr
        setattr(mod, attr, obj)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def _config_kinds():
    @dataclasses.dataclass
    class Cfg:
        rate: int = 16000
        name: str = "x"

    class Mode(enum.Enum):
        GREEDY = "greedy"
        BEAM = "beam"

    class AttrDict(dict):  # Lightning's AttributeDict: a dict subclass that adds no pickling code
        pass  # (torch's unpickler fills no dict subclass but OrderedDict and Counter: only an empty one loads)

    return Cfg, Mode, AttrDict


# ---------------------------------------------------------------------------------------------- what loads


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_numpy_arrays_and_scalars_load(tmp_path, legacy):
    """The docstring's "numpy arrays": fairseq and Lightning checkpoints carry them (their dtypes included)."""
    data = {"f": np.arange(3, dtype=np.float32), "i": np.array([[1, -2]], dtype=np.int16), "s": np.float64(2.5),
            "b": np.array([True, False])}  # fmt: skip
    got = load_checkpoint(_save(data, tmp_path / "np.ckpt", legacy))
    for key, value in data.items():
        assert np.array_equal(got[key], value) and got[key].dtype == value.dtype, key


def test_builtin_containers_scalars_and_types_load(tmp_path):
    """OmegaConf nodes name builtin types (``int``, ``str``) as their value types; sets, slices and defaultdicts
    are plain data (torch fills no defaultdict: only an empty one loads)."""
    data = {"types": [int, float, str, bool, bytes, complex, dict, list, tuple, set, frozenset, slice],
            "fs": frozenset({1, 2}), "sl": slice(1, 9, 2), "dd": collections.defaultdict(list),
            "od": collections.OrderedDict(b=2)}  # fmt: skip
    got = load_checkpoint(_save(data, tmp_path / "b.ckpt"))
    assert got == data and isinstance(got["dd"], collections.defaultdict)


def test_typing_markers_load(tmp_path):
    markers = [typing.Any, typing.List, typing.Dict, typing.Optional, typing.Union, typing.Tuple, typing.Sequence,
               typing.Mapping]  # fmt: skip
    assert load_checkpoint(_save({"m": markers}, tmp_path / "t.ckpt"))["m"] == markers


@pytest.mark.parametrize("package", ["nemo", "nemo_sew", "lightning", "pytorch_lightning", "fairseq"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_config_dataclasses_enums_and_plain_dicts_of_each_trusted_package_load(tmp_path, monkeypatch, package, legacy):
    """Decoding configs (dataclasses), their enums and Lightning's ``AttributeDict`` (a dict subclass), from a
    module its package has not (yet) imported as an attribute."""
    Cfg, Mode, AttrDict = _config_kinds()
    if package not in sys.modules:  # a stand-in: importing Lightning takes seconds, fairseq is not a dependency
        monkeypatch.setitem(sys.modules, package, types.ModuleType(package))
    _module(monkeypatch, f"{package}._sew_guard_cfg", Cfg=Cfg, Mode=Mode, AttrDict=AttrDict)
    data = {"cfg": Cfg(rate=8000), "mode": Mode.BEAM, "hp": AttrDict()}
    got = load_checkpoint(_save(data, tmp_path / "cfg.ckpt", legacy))
    assert got == data and type(got["hp"]) is AttrDict and got["mode"] is Mode.BEAM


@pytest.mark.parametrize("where", ["cpu", torch.device("meta")], ids=["cpu", "meta"])
def test_map_location_is_honoured(tmp_path, where):
    got = load_checkpoint(_save({"w": torch.ones(2)}, tmp_path / "w.ckpt"), map_location=where)
    assert got["w"].device == torch.device(where)


# ---------------------------------------------------------------------------------------------- what is refused


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize(
    ("value", "name"),
    [(np.load, "load"), (typing.cast, "cast"), (eval, "eval"), (getattr, "getattr")],
    ids=["numpy_function", "typing_function", "eval", "getattr"],
)
def test_functions_of_allow_listed_modules_are_refused(tmp_path, legacy, value, name):
    """numpy, typing and builtins are allow-listed for their data types only: their functions stay refused."""
    path = _save({"fn": value}, tmp_path / "fn.ckpt", legacy)
    with pytest.raises(UnsafeCheckpointError, match=rf"fn\.ckpt: refusing to load.*{name}"):
        load_checkpoint(path)


RAN: list = []  # what the code below records when an unpickler runs it


def _code_kinds():
    class Runs(dict):  # a dict subclass that runs code on unpickling
        def __reduce__(self):
            return (Runs, ())

    class Restores(dict):  # one whose __setstate__ runs code: what an unpickler calls for the instance's state
        def __setstate__(self, state):
            RAN.append(state)

    class Plain:  # neither a dataclass, an enum nor a dict
        def __init__(self):
            self.x = 1

    def helper():
        return 1

    return Runs, Restores, Plain, helper


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["Runs", "Restores", "Plain", "helper"])
def test_code_in_a_trusted_package_is_refused(tmp_path, monkeypatch, legacy, kind):
    """Being in NeMo's namespace does not make a class plain data: dict subclasses with their own pickling code,
    other classes and functions are refused."""
    Runs, Restores, Plain, helper = _code_kinds()
    _module(monkeypatch, "nemo_sew._sew_guard_code", Runs=Runs, Restores=Restores, Plain=Plain, helper=helper)
    restores = Restores()
    restores.tag = 1  # instance state: unpickling it calls __setstate__
    value = {"Runs": Runs(a=1), "Restores": restores, "Plain": Plain(), "helper": helper}[kind]
    path = _save({"x": value}, tmp_path / "code.ckpt", legacy)
    RAN.clear()
    with pytest.raises(UnsafeCheckpointError, match=rf"code\.ckpt: refusing to load.*_sew_guard_code\.{kind}"):
        load_checkpoint(path)
    assert not RAN, "the checkpoint's code ran"


def test_a_dataclass_outside_the_trusted_packages_is_refused(tmp_path, monkeypatch):
    Cfg, _, _ = _config_kinds()
    _module(monkeypatch, "sew_guard_untrusted", Cfg=Cfg)
    with pytest.raises(UnsafeCheckpointError, match=r"sew_guard_untrusted\.Cfg"):
        load_checkpoint(_save({"cfg": Cfg()}, tmp_path / "c.ckpt"))


def test_a_global_that_no_longer_exists_is_refused_not_a_traceback(tmp_path, monkeypatch):
    """A checkpoint naming a class its module no longer has (renamed since it was written) is refused with the
    loader's error naming it, not an ``AttributeError`` from inside the allow list."""
    Cfg, _, _ = _config_kinds()
    mod = _module(monkeypatch, "nemo_sew._sew_guard_gone", Cfg=Cfg)
    path = _save({"cfg": Cfg()}, tmp_path / "gone.ckpt")
    del mod.Cfg
    with pytest.raises(UnsafeCheckpointError, match=r"gone\.ckpt: refusing to load.*_sew_guard_gone\.Cfg"):
        load_checkpoint(path)


def test_the_refusal_names_the_refused_globals_in_order_at_most_eight(tmp_path, monkeypatch):
    """The message lists what was refused (sorted, the first 8), not the allowed globals beside them."""
    funcs = {f"f{i}": (lambda i=i: i) for i in range(10)}  # ten distinct functions to refuse
    _module(monkeypatch, "nemo_sew._sew_guard_many", **funcs)
    path = _save({"fns": list(funcs.values())[::-1], "ok": frozenset({1})}, tmp_path / "many.ckpt")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    listed = ", ".join(f"nemo_sew._sew_guard_many.f{i}" for i in range(8))
    assert f"({listed})" in str(err.value), str(err.value)
    assert "f8" not in str(err.value) and "frozenset" not in str(err.value)


def test_a_missing_truncated_or_empty_file_is_named(tmp_path):
    """A one-line error naming the file (a download cut short, a save interrupted), not a traceback."""
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*absent\.ckpt"):
        load_checkpoint(tmp_path / "absent.ckpt")
    whole = _save({"w": torch.ones(1000)}, tmp_path / "whole.ckpt").read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match=r"cut\.ckpt: not a readable torch checkpoint \(RuntimeError: [^\n]*zip[^\n]*\)$"):
        load_checkpoint(tmp_path / "cut.ckpt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty\.ckpt: not a readable torch checkpoint \(EOFError\)$"):
        load_checkpoint(tmp_path / "empty.ckpt")


def test_a_file_that_is_no_checkpoint_is_refused_in_one_line(tmp_path):
    """Bytes that are no pickle at all: refused with the file named and torch's first line of reason (not its
    multi-line advice to load with weights_only=False)."""
    path = tmp_path / "junk.ckpt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refusing to load") and "\n" not in msg, msg
    assert ": Weights only load failed." in msg and "Please file an issue" not in msg, msg


def test_torch_force_no_weights_only_load_does_not_open_the_door(tmp_path, monkeypatch):
    """``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (set for old scripts) turns off weights-only loading wherever a caller
    leaves ``weights_only`` unset; a legacy checkpoint's code must still not run here."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = _save({"x": Payload()}, tmp_path / "evil.ckpt", legacy=True)
    with pytest.raises(UnsafeCheckpointError, match=r"evil\.ckpt: refusing to load"):
        load_checkpoint(path)
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize(("count", "loads"), [(63, True), (64, False)])
def test_a_legacy_file_is_tried_once_per_global_up_to_a_bound(tmp_path, monkeypatch, count, loads):
    """A legacy file names one missing global per failed attempt: 63 distinct allow-listed classes still load (64
    attempts); more are refused as too many rather than retried without end."""
    classes = {f"Cfg{i}": dataclasses.make_dataclass(f"Cfg{i}", [("v", int, i)]) for i in range(count)}
    _module(monkeypatch, "nemo_sew._sew_guard_bound", **classes)
    data = [cls() for cls in classes.values()]
    path = _save(data, tmp_path / "many.ckpt", legacy=True)
    if loads:
        assert load_checkpoint(path) == data
    else:
        with pytest.raises(UnsafeCheckpointError) as err:
            load_checkpoint(path)
        assert str(err.value) == f"{path}: refusing to load: too many distinct Python globals"


# ---------------------------------------------------------------------------------------------- restore


def test_restore_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model not found: .*absent\.nemo"):
        restore(tmp_path / "absent.nemo")


def test_restore_hands_map_location_to_nemo(tmp_path):
    """``map_location`` reaches NeMo's ``restore_from`` (a GPU-saved model opened on a CPU machine)."""

    class Recorder:
        @classmethod
        def restore_from(cls, path, map_location=None):
            return path, map_location

    path = tmp_path / "m.nemo"
    path.write_bytes(b"")
    assert restore(path, map_location="cpu", model_class=Recorder) == (str(path), "cpu")


def test_a_refused_restore_says_why_and_clears_nemos_restore_flag(tmp_path):
    """The refusal carries the first line of torch's reason; and NeMo's process-wide "model is being restored"
    flag is cleared, so models built afterwards set up their data (tests/test_safe_load.py checks that end to end)."""
    import pickle

    from nemo.core import ModelPT

    class Refuses:
        @classmethod
        def restore_from(cls, path, map_location=None):
            ModelPT._set_model_restore_state(is_being_restored=True)  # what NeMo does before loading the weights
            raise pickle.UnpicklingError("Weights only load failed: Unsupported global: GLOBAL x.y\nmore detail")

    path = tmp_path / "m.nemo"
    path.write_bytes(b"")
    with pytest.raises(UnsafeCheckpointError) as err:
        restore(path, model_class=Refuses)
    assert str(err.value) == f"{path}: refusing to load its weights: Weights only load failed: Unsupported global: GLOBAL x.y"
    assert not ModelPT._is_model_being_restored()
