"""Package edges (issue 28, item 6): the library never imports the benchmarks, its torch-only core imports without
NeMo, the bench subcommands share their options, and only the project's own user errors lose their traceback."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "nemo_sew"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every import in ``tree``: statements, and ``importlib.import_module`` / ``__import__``
    calls with a literal name."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else fn.id if isinstance(fn, ast.Name) else ""
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def test_the_library_never_imports_the_benchmarks():
    """No module under nemo_sew/ imports ``benchmarks`` (the CLI finds ``bench`` through an entry point)."""
    files = sorted(LIBRARY.rglob("*.py"))
    assert len(files) > 30 and not (LIBRARY / "bench").exists()
    offenders = [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in files
        for line, module in _imported_modules(ast.parse(path.read_text(), str(path)))
        if module.split(".")[0] == "benchmarks"
    ]  # fmt: skip
    assert offenders == []


def test_the_import_scan_sees_every_form():
    tree = ast.parse(textwrap.dedent("""
        import benchmarks.cpu
        from benchmarks import cli
        import importlib
        importlib.import_module("benchmarks.quant")
        def f():
            from benchmarks.report import machine_line
    """))  # fmt: skip
    assert [m for _, m in _imported_modules(tree)] == ["benchmarks.cpu", "benchmarks", "importlib", "benchmarks.quant",
                                                       "benchmarks.report"]  # fmt: skip


_BLOCK_NEMO = """
import importlib.abc, sys

class BlockNeMo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("nemo", "lightning", "pytorch_lightning"):
            raise ImportError(f"{name} is blocked in this test")

sys.meta_path.insert(0, BlockNeMo())
"""


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_torch_only_core_imports_and_counts_without_nemo():
    code = _BLOCK_NEMO + textwrap.dedent("""
        import torch
        import nemo_sew.nn, nemo_sew.arch, nemo_sew.cost
        from nemo_sew.arch import build_arch
        from nemo_sew.cost import encoder_cost

        arch = build_arch("tiny_mel", num_layers=2)
        cost = encoder_cost(arch, {"squeeze": 2}, 1000)
        import nemo_sew
        assert nemo_sew.build_arch is build_arch and "tiny_mel" in nemo_sew.PRESETS  # the lazy root names
        try:
            nemo_sew.SqueezeEncoder  # needs NeMo: imported on first use, so it fails only here
        except ImportError:
            pass
        else:
            raise AssertionError("SqueezeEncoder imported without NeMo")
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("nemo", "lightning", "pytorch_lightning"))
        print(leaked, float(cost.total) > 0)
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[] True", out.stdout[-2000:]


def test_importing_the_package_first_still_registers_our_targets_with_nemo():
    """``import nemo_sew`` before NeMo (README order): the prefix lands in NeMo's allowlist when NeMo is imported,
    so a stock config's ``_target_: nemo_sew.SqueezeEncoder`` passes NeMo's check (nemo first: tests/test_models.py)."""
    code = textwrap.dedent("""
        import sys
        import nemo_sew
        assert not any(m.split(".")[0] == "nemo" for m in sys.modules), "import nemo_sew imported NeMo"
        from nemo.core.classes import common
        assert "nemo_sew." in common.ALLOWED_TARGET_PREFIXES
        assert type(common.__loader__).__name__ != "_AllowOnNeMoImport"  # the module keeps its own loader
        assert not any(type(f).__name__ == "_AllowOnNeMoImport" for f in sys.meta_path)  # the hook is gone
        assert common._is_target_allowed("nemo_sew.SqueezeEncoder")
        assert common._is_target_allowed("nemo_sew.models.ctc.SqueezeCTCModel")
        print("registered")
    """)
    out = _python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "registered"


# ---------------------------------------------------------------------------------------------- the CLI

#: (warmup, runs, threads) defaults of every bench subcommand with timing options, as before the shared parent
BENCH_DEFAULTS = {
    "squeeze": (3, 10, None), "train-step": (2, 8, None), "compile": (3, 10, None), "gates": (2, 10, "-"),
    "prune": (2, 10, None), "cpu": (None, None, None), "prune-table": ("-", "-", 2), "quant": ("-", "-", 2),
    "stochastic": ("-", "-", "-"), "i3d": ("-", "-", "-"), "ssl": ("-", "-", "-"), "ssl-curve": ("-", "-", "-"),
    "ssl-stochastic": ("-", "-", "-"), "purity": ("-", "-", "-"),
}  # fmt: skip
_REQUIRED = {"purity": ["--aligner", "a.nemo", "--target", "mfcc"]}


@pytest.fixture(scope="module")
def parser():
    from nemo_sew.cli import build_parser

    return build_parser()


def test_bench_subcommands_take_their_shared_options_from_one_parent(parser):
    from benchmarks.cli import bench_options

    for name, defaults in BENCH_DEFAULTS.items():
        args = parser.parse_args(["bench", name, *_REQUIRED.get(name, [])])
        got = tuple(getattr(args, k, "-") for k in ("warmup", "runs", "threads"))
        assert got == defaults and args.write is None, name
        assert parser.parse_args(["bench", name, *_REQUIRED.get(name, []), "--write", "B.md"]).write == "B.md"
    assert bench_options(warmup=2, runs=10, threads=None) is bench_options(warmup=2, runs=10, threads=None)
    args = parser.parse_args(["bench", "squeeze", "--warmup", "1", "--runs", "4", "--threads", "2"])
    assert (args.warmup, args.runs, args.threads) == (1, 4, 2)
    analysis = parser.parse_args(["bench", "i3d-analysis", "m.nemo", "--manifest", "t.json"])
    assert analysis.write is None and not hasattr(analysis, "warmup")


def test_the_command_line_is_built_in_one_place(monkeypatch):
    import nemo_sew.cli as cli

    seen = []
    monkeypatch.setattr(cli, "_cmd_pick", lambda args: seen.append(cli.command_line(args)) or 0)
    assert cli.main(["pick", "out/sweep", "--min-rtfx", "3"]) == 0
    assert seen == ["nemo-sew pick out/sweep --min-rtfx 3"]


def test_only_user_errors_are_one_line_internal_errors_keep_their_traceback(monkeypatch, tmp_path, capsys):
    import nemo_sew.cli as cli
    from nemo_sew.errors import UserError

    assert issubclass(UserError, ValueError)  # pytest.raises(ValueError) and except ValueError still see it
    sweep = tmp_path / "sweep.json"
    sweep.write_text(json.dumps({"rows": [{"name": "s1", "wer": 0.1, "latency_ms_10s": 50.0, "rtfx": 200.0}]}))
    assert cli.main(["pick", str(sweep), "--max-latency-ms", "1"]) == 2  # sweep.pick: no profile meets it
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nemo-sew pick: error: no measured profile meets") and "UserError" in err[0]

    def internal(error):
        def handler(args):
            raise error

        return handler

    for error in (KeyError("layers.0.attn"), ValueError("an internal shape mismatch")):
        monkeypatch.setattr(cli, "_cmd_pick", internal(error))
        with pytest.raises(type(error)):  # not swallowed into exit 2: the traceback shows
            cli.main(["pick", str(sweep), "--min-rtfx", "1"])
    monkeypatch.setattr(cli, "_cmd_pick", internal(UserError("bad --thing")))
    assert cli.main(["pick", str(sweep), "--min-rtfx", "1"]) == 2
    assert "nemo-sew pick: error: bad --thing" in capsys.readouterr().err
    with pytest.raises(UserError):
        cli.main(["pick", str(sweep), "--min-rtfx", "1", "--verbose"])
