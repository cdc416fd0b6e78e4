#!/usr/bin/env python3
"""Mutation testing of the core and the guards, one module at a time with that module's own tests (issue 30).

``make mutation`` installs mutmut (pinned in the Makefile, not a project dependency) and runs this; it is no
part of ``make test`` or CI. For each module of :data:`MODULES` it

1. lays out ``mutants/<module>/``: links to ``nemo_sew``, ``manifests``, ``recipes`` and ``tests`` and a
   ``pyproject.toml`` whose ``[tool.mutmut]`` is the project's plus that module's ``only_mutate`` and test
   selection (mutmut reads its configuration from the working directory and keeps its verdicts there: a rerun
   tests the mutants of changed functions and every mutant not killed last time; ``--fresh`` forgets them all);
2. writes the mutants (mutmut's own code) and runs ``mutmut run`` there on those of the module's functions
   that have no verdict yet: mutmut copies the package into ``mutants/<module>/mutants/``, runs the selected
   tests once to learn which tests reach which function, then for each mutant runs only the tests that reach
   its function (stopping at the first failure). A run spends ``--budget`` minutes (default 60) on the modules
   in order; the one running when they are up is stopped with the verdicts it has, and the next run goes on
   from there (a module done costs only its survivors again; the first pass over every module takes many
   hours on 2 cores);
3. with ``--confirm``, when the module's mutmut run used a fast subset of its test files (``select``), re-runs
   every surviving or unreached mutant against the module's full test files (``MUTANT_UNDER_TEST=<name> pytest``
   in the mutated copy), so a survivor in the summary is one that no test of the module kills;
4. writes ``outputs/mutation/summary.md`` (per module: killed / survived / timeout / no tests / total, score,
   and every surviving mutant as file:line and its diff) and ``outputs/mutation/results.json``.

A survivor that cannot be killed because it changes nothing observable (an equivalent mutant) is explained in
``tools/mutation/equivalent.toml``; the summary lists it apart and leaves it out of the score.

Usage: ``tools/mutation/run.py [MODULE ...] [--jobs N] [--confirm] [--fresh] [--summary-only] [--list]`` (no module:
all of them).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import signal
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "mutants"
OUT = ROOT / "outputs" / "mutation"
EQUIVALENT = Path(__file__).resolve().parent / "equivalent.toml"
LINKS = ("nemo_sew", "manifests", "recipes", "tests")  # what the mutated copy needs from the checkout
MUTMUT = Path(sys.executable).parent / "mutmut"


@dataclass(frozen=True)
class Module:
    mutate: tuple[str, ...]  # only_mutate globs, relative to the repository root
    tests: tuple[str, ...]  # the test files that cover it
    select: str | None = None  # a pytest -k expression: the fast subset mutmut runs (--confirm: survivors see all)
    functions: tuple[str, ...] = ()  # globs of the functions (``name`` or ``Class.name``) to mutate; () = all
    slow: bool = False  # also the tests marked slow (the project's mutmut args leave them out: ``-m "not slow"``)

    def wants(self, mutant: str) -> bool:
        if not self.functions:
            return True
        cls, fn = _function(mutant)
        return any(fnmatch(f"{cls}.{fn}" if cls else fn, g) for g in self.functions)


# the tests of test_quant.py that run in under a second (the schemes, storage and held widths; not the ONNX,
# .nemo and CLI round trips, 1-9 s each, which reach quantize() and would run for each of its ~130 mutants),
# and all of test_guards_schemes.py; --confirm runs the survivors against both files in full
_QUANT_FAST = "not onnx and not nemo and not cli and not branch and not deepcopy and not tiny_conformer"

# smallest first
MODULES: dict[str, Module] = {
    "quant_schemes": Module(
        ("nemo_sew/quant/schemes.py",), ("tests/test_quant.py", "tests/test_guards_schemes.py"), select=_QUANT_FAST
    ),
    "evaluate": Module(("nemo_sew/evaluate.py",), ("tests/test_guards_metrics.py",), functions=("error_rates", "evaluate")),
    "safe_load": Module(
        ("nemo_sew/safe_load.py",),
        ("tests/test_safe_load.py", "tests/test_guards_safe_load_legacy.py", "tests/test_guards_safe_load.py"),
    ),
    "cost": Module(
        ("nemo_sew/cost.py",), ("tests/test_cost.py", "tests/test_guards_cif_lengths.py", "tests/test_guards_cost.py")
    ),
    "export_onnx": Module(  # the parity check
        ("nemo_sew/export/onnx.py",), ("tests/test_guards_onnx_parity.py", "tests/test_export.py"),
        functions=("check_parity", "_valid_diffs", "_cases", "_long_cases", "_example", "_length_range",
                   "_input_shape", "ParityReport.*"),
        slow=True,  # the parity checks of whole exported models (1-2 s each) are what reach check_parity's branches
    ),  # fmt: skip
    "prune": Module(
        ("nemo_sew/prune/*",), ("tests/test_prune.py", "tests/test_prune_quant.py", "tests/test_guards_prune.py")
    ),
    "training_steps": Module(  # the steps, their forwards and losses; not the data guards, checkpoint hooks or
        ("nemo_sew/models/ctc.py", "nemo_sew/models/ssl.py", "nemo_sew/ssl/*"),  # the offline k-means of targets.py
        ("tests/test_guards_training_step_aux.py", "tests/test_guards_ssl_masked_only.py", "tests/test_ssl.py",
         "tests/test_frozen_encoder.py", "tests/test_syncs.py", "tests/test_guards_ssl_steps.py",
         "tests/test_stochastic_methods.py", "tests/test_guards_stochastic_ranks.py", "tests/test_guards_ctc_step.py",
         "tests/test_guards_ssl_parts.py", "tests/test_guards_ssl_model.py"),
        functions=("SqueezeProfileMixin.training_step", "SqueezeProfileMixin.forward*", "SqueezeProfileMixin.encoder_frozen",
                   "SqueezeProfileMixin.stochastic_trainer", "SqueezeProfileMixin.setup_optimizer_param_groups",
                   "SqueezeProfileMixin._init_finetuning", "SqueezeProfileMixin._refuse_interctc", "SqueezeProfileMixin.on_after_backward", "log_gate_stats",
                   "log_prune_stats", "SqueezeSSLModel.forward", "SqueezeSSLModel.training_step",
                   "SqueezeSSLModel._batch_audio", "SqueezeSSLModel.validation_step", "*Objective.*", "objective_class",
                   "_fit_time", "sample_negatives", "contrastive_loss", "masked_prediction_loss", "_cosine_logits",
                   "span_mask", "channel_mask", "MLPHead.*", "MFCCFeatures.*", "_dct_matrix", "_deltas",
                   "TeacherFeatures.*", "KMeansLabeler.*", "build_target_features"),
    ),  # fmt: skip
    "nn": Module(
        ("nemo_sew/nn/*",),
        ("tests/test_encoder.py", "tests/test_frontend.py", "tests/test_gates.py", "tests/test_local_attention.py",
         "tests/test_guards_gate_threshold.py", "tests/test_guards_cif_lengths.py", "tests/test_stochastic.py",
         "tests/test_onednn.py", "tests/test_channels_last.py", "tests/test_branch_kinds.py", "tests/test_composition.py",
         "tests/test_int8_static.py", "tests/test_guards_nn_compress.py", "tests/test_guards_nn_blocks.py"),
        select="not test_cli_exports",  # test_int8_static's CLI round trip (30 s) only in --confirm
    ),  # fmt: skip
}

# mutmut's exit codes (mutmut.stats.status_by_exit_code of the pinned version); anything else is "suspicious"
STATUS = {
    1: "killed", 3: "killed", 0: "survived", 2: "interrupted", 5: "no tests", 33: "no tests", 34: "skipped", 35: "suspicious",
    36: "timeout", 37: "caught by type check", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
    -11: "segfault", -9: "segfault", None: "not checked",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- set-up


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def mutmut_config(module: Module) -> dict:
    """The project's ``[tool.mutmut]`` with this module's files and tests."""
    cfg = dict(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"])
    cfg["only_mutate"] = list(module.mutate)
    cfg["pytest_add_cli_args_test_selection"] = [*module.tests, *(["-k", module.select] if module.select else [])]
    if module.slow:
        args = list(cfg.get("pytest_add_cli_args", []))
        for i in range(len(args) - 1):
            if args[i] == "-m" and args[i + 1] == "not slow":
                del args[i : i + 2]
                break
        cfg["pytest_add_cli_args"] = args
    return cfg


def prepare(name: str, module: Module) -> Path:
    work = WORK / name
    work.mkdir(parents=True, exist_ok=True)
    for link in LINKS:
        target = work / link
        if not target.is_symlink():
            if target.exists():
                shutil.rmtree(target)
            target.symlink_to(ROOT / link, target_is_directory=True)
    text = (ROOT / "pyproject.toml").read_text()
    section = "[tool.mutmut]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in mutmut_config(module).items())
    text, n = re.subn(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", lambda _: section + "\n", text)
    if n != 1:
        raise SystemExit("pyproject.toml has no [tool.mutmut] section")
    (work / "pyproject.toml").write_text(text)
    return work


def reset_undecided(work: Path) -> int:
    """Mark every mutant not killed as untested, so this run tests it again: mutmut keeps a verdict until the
    mutated function changes, and a test added since the last run may kill a survivor (killed ones stay killed)."""
    n = 0
    for meta in (work / "mutants").rglob("*.py.meta") if (work / "mutants").is_dir() else []:
        data = json.loads(meta.read_text())
        codes = data["exit_code_by_key"]
        for key, code in codes.items():
            if code is not None and STATUS.get(code, "suspicious") not in ("killed", "timeout", "skipped"):
                codes[key], n = None, n + 1
        meta.write_text(json.dumps(data, indent=4))
    return n


_GENERATE = """
import sys
from pathlib import Path
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths
Path("mutants").mkdir(exist_ok=True)
copy_src_dir(); copy_also_copy_files(); setup_source_paths()
s = create_mutants(int(sys.argv[1]))
print(f"mutants: {s.mutated} files mutated, {s.unmodified} unchanged, {s.ignored} copied")
"""


def generate(work: Path, jobs: int, log: Path) -> None:
    """What ``mutmut run`` does first: copy the package into ``mutants/`` and write the mutants of the changed
    functions (their verdicts reset; the others keep theirs), so the driver can pick which to run."""
    with open(log, "ab") as f:
        p = subprocess.run([sys.executable, "-c", _GENERATE, str(jobs)], cwd=work, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        raise RuntimeError(f"generating the mutants in {work} failed; see {log}")
    print(f"[{work.name}] " + log.read_text(errors="replace").strip().splitlines()[-1], flush=True)


def pending(work: Path, module: Module) -> list[str]:
    """The mutants of the module's functions that have no verdict yet."""
    out = []
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        path = meta.relative_to(work / "mutants").as_posix().removesuffix(".meta")
        if any(fnmatch(path, g) for g in module.mutate):
            codes = json.loads(meta.read_text())["exit_code_by_key"]
            out += [k for k, c in codes.items() if c is None and module.wants(k)]
    return out


def run_mutmut(work: Path, names: list[str], jobs: int, log: Path, minutes: float | None) -> str:
    """``mutmut run NAMES``, stopped (its verdicts so far kept) after ``minutes``: "done", "stopped" or "failed"."""
    cmd = [str(MUTMUT), "run", "--max-children", str(jobs), *names]
    deadline = None if minutes is None else time.monotonic() + 60 * minutes
    stopped = False
    with open(log, "ab") as f, subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                start_new_session=True) as p:  # fmt: skip
        os.set_blocking(p.stdout.fileno(), False)
        while p.poll() is None:
            chunk = p.stdout.read(65536) or b""
            f.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
            if deadline is not None and time.monotonic() > deadline and not stopped:
                print(f"\n[{work.name}] out of time: stopping mutmut (the rest next time)", flush=True)
                p.send_signal(signal.SIGINT)  # mutmut stops its workers and keeps the verdicts it has
                stopped, deadline = True, time.monotonic() + 60
            elif stopped and time.monotonic() > deadline:
                os.killpg(p.pid, signal.SIGKILL)
            time.sleep(0.2)
        f.write(p.stdout.read() or b"")
        code = p.returncode
    return "stopped" if stopped else ("done" if code == 0 else "failed")


def _tee(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> int:
    with open(log, "ab") as f, subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as p:
        for chunk in iter(lambda: p.stdout.read1(4096), b""):
            f.write(chunk)
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()
        return p.wait()


# ---------------------------------------------------------------------------------------------- results


def read_results(work: Path, module: Module) -> dict[str, dict]:
    """``{mutant name: {"path", "exit_code", "status", "seconds"}}`` from mutmut's per-file ``.meta`` files."""
    out = {}
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        path = meta.relative_to(work / "mutants").as_posix().removesuffix(".meta")
        if not any(fnmatch(path, g) for g in module.mutate):
            continue
        data = json.loads(meta.read_text())
        for key, code in data["exit_code_by_key"].items():
            if not module.wants(key):
                continue
            out[key] = {"path": path, "exit_code": code, "status": STATUS.get(code, "suspicious"),
                        "seconds": data.get("durations_by_key", {}).get(key)}  # fmt: skip
    return out


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
print(json.dumps({k: get_diff_for_mutant(k, path=p) for k, p in json.load(sys.stdin).items()}))
"""


def mutant_diffs(work: Path, paths: dict[str, str]) -> dict[str, str]:
    """``{mutant name: diff}`` (what ``mutmut show`` prints), in one process run where mutmut reads its config."""
    if not paths:
        return {}
    p = subprocess.run([sys.executable, "-c", _DIFFS], cwd=work, input=json.dumps(paths), capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"reading the diffs of {len(paths)} mutants in {work} failed:\n{p.stderr[-2000:]}")
    return {k: d.strip() for k, d in json.loads(p.stdout.splitlines()[-1]).items()}


def _function(name: str) -> tuple[str | None, str]:
    """(class, function) of a mutant name such as ``pkg.mod.xǁCls ǁmeth__mutmut_3`` or ``pkg.mod.x_fn__mutmut_1``."""
    last = re.sub(r"__mutmut_\d+$", "", name.split(".")[-1])
    if last.startswith("xǁ"):
        _, cls, fn = last.split("ǁ", 2)
        return cls, fn
    return None, last.removeprefix("x_")


def source_line(path: str, name: str, diff: str) -> int | None:
    """The line of ``path`` the mutant changes: the first removed line of its (function-relative) diff."""
    cls, fn = _function(name)
    src = (ROOT / path).read_text()
    node = None
    for n in ast.walk(ast.parse(src)):
        if isinstance(n, ast.ClassDef) and n.name == cls:
            node = next((m for m in n.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name == fn), None)
        elif cls is None and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == fn and node is None:
            node = n
    if node is None:
        return None
    removed, idx, i = None, None, None
    for line in diff.splitlines():
        if m := re.match(r"@@ -(\d+)", line):
            i = int(m.group(1))
        elif i is not None and not line.startswith("+"):
            if line.startswith("-") and not line.startswith("---"):
                removed, idx = line[1:].strip(), i
                break
            i += 1
    lines = src.splitlines()
    first = node.lineno
    if removed is None:
        return first
    guess = first + idx - 1
    if 0 < guess <= len(lines) and lines[guess - 1].strip() == removed:
        return guess
    span = range(min(d.lineno for d in [node, *node.decorator_list]), (node.end_lineno or first) + 1)
    return next((ln for ln in span if lines[ln - 1].strip() == removed), first)


def equivalents() -> dict[str, dict]:
    if not EQUIVALENT.is_file():
        return {}
    return {e["mutant"]: e for e in tomllib.loads(EQUIVALENT.read_text()).get("equivalent", [])}


def _mutated_lines(diff: str) -> list[str]:
    return [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and not ln.startswith("+++")]


# ---------------------------------------------------------------------------------------------- confirm


def confirm(name: str, work: Path, module: Module, results: dict[str, dict], log: Path, jobs: int) -> None:
    """Re-run the survivors (and unreached mutants) of a fast-subset run against the module's full test files,
    ``jobs`` at once, recording the outcomes in ``confirm.json`` (what the summary reads)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [k for k, r in results.items() if r["status"] in ("survived", "no tests")]
    (work / "confirm.json").write_text("{}")
    if not todo:
        return
    cfg = mutmut_config(module)
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *cfg.get("pytest_add_cli_args", []), *module.tests]
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    print(f"\n[{name}] confirm: the full test files on the unmutated copy", flush=True)
    t0 = time.monotonic()
    if _tee(cmd, work / "mutants", log, env) != 0:  # they must pass without a mutant; their time sets the timeout
        raise RuntimeError(f"{name}: the full test files fail without a mutant; see {log}")
    baseline = time.monotonic() - t0
    print(f"[{name}] confirm: {len(todo)} mutants, {jobs} at once, {baseline:.0f} s for the full files", flush=True)

    def one(key: str) -> tuple[str, int, float, bytes]:
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, cwd=work / "mutants", env={**env, "MUTANT_UNDER_TEST": key}, capture_output=True,
                               timeout=3 * baseline + 60)  # fmt: skip
            code, out = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            code, out = 36, (e.stdout or b"") + b"\n(timeout)\n"
        return key, code, time.monotonic() - t0, out

    record: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool, open(log, "ab") as f:
        for i, (key, code, seconds, out) in enumerate(pool.map(one, todo), 1):
            f.write(f"\n===== confirm {key}: exit {code}\n".encode() + out[-4000:])
            record[key] = {"diff": results[key].get("diff"), "exit_code": code, "seconds": round(seconds, 1)}
            (work / "confirm.json").write_text(json.dumps(record, indent=1))
            status = STATUS.get(code, "suspicious")
            print(f"[{name}] confirm {i}/{len(todo)} {key}: {status} by the full test files ({seconds:.0f} s)", flush=True)
            if status in ("killed", "timeout"):
                results[key]["status"], results[key]["confirmed"] = status, True


# ---------------------------------------------------------------------------------------------- summary


def apply_confirmed(work: Path, results: dict[str, dict]) -> None:
    cache_path, cache = work / "confirm.json", {}
    for key, r in results.items():
        hit = cache.get(key)
        if r["status"] in ("survived", "no tests") and hit and hit["diff"] == r.get("diff"):
            if STATUS.get(hit["exit_code"], "suspicious") in ("killed", "timeout"):
                r["status"], r["confirmed"] = STATUS[hit["exit_code"]], True


def collect(name: str, module: Module) -> dict | None:
    """The module's last results with the diff of every mutant not killed (the unreached ones only when confirmed)."""
    work = WORK / name
    if not (work / "mutants").is_dir():
        return None
    results = read_results(work, module)
    wanted = {k: r["path"] for k, r in results.items()
              if r["status"] not in ("killed", "timeout", "skipped", "not checked", "no tests")
              or (r["status"] == "no tests" and module.select)}  # fmt: skip
    for key, diff in mutant_diffs(work, wanted).items():
        results[key]["diff"] = diff
    apply_confirmed(work, results)
    return results


def counts(results: dict[str, dict], eq: dict[str, dict]) -> dict:
    c = {s: 0 for s in ("killed", "confirmed", "survived", "equivalent", "timeout", "no tests", "other", "not checked")}
    for key, r in results.items():
        s = r["status"]
        if s == "survived" and key in eq and eq[key].get("mutated") in _mutated_lines(r.get("diff", "")):
            s = "equivalent"
        if s == "skipped":
            continue
        c[s if s in c else "other"] += 1
        c["confirmed"] += bool(r.get("confirmed")) and s == "killed"
    c["total"] = sum(v for k, v in c.items() if k != "confirmed")
    scored = c["total"] - c["equivalent"] - c["not checked"]
    c["score"] = (c["killed"] + c["timeout"]) / scored if scored else None
    return c


def write_summary(all_results: dict[str, dict], walls: dict[str, float], version: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    eq = equivalents()
    lines = [
        f"# Mutation testing (mutmut {version})",
        "",
        f"`make mutation` (tools/mutation/run.py), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Each module's mutants"
        " run against that module's tests only (MODULES in tools/mutation/run.py). Score = (killed + timeout) /"
        " (total - equivalent - not checked). *confirmed* = survived the module's fast subset, killed by its full"
        " test files (--confirm); *equivalent* = survivors explained in tools/mutation/equivalent.toml; *no tests* ="
        " no selected test reaches the function (counted as not killed); *not checked* = not run yet (a run out of"
        " --budget goes on from there next time). *wall* = the module's last run.",
        "",
        "| module | killed | (confirmed) | survived | equivalent | timeout | no tests | other | not checked | total | score | wall |",
        "| --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    details = []
    for name, results in all_results.items():
        c = counts(results, eq)
        score = f"{100 * c['score']:.1f}%" if c["score"] is not None else "-"
        wall = f"{walls[name] / 60:.1f} min" if name in walls else "-"
        lines.append(f"| {name} | {c['killed']} | {c['confirmed']} | {c['survived']} | {c['equivalent']} | {c['timeout']}"
                     f" | {c['no tests']} | {c['other']} | {c['not checked']} | {c['total']} | {score} | {wall} |")  # fmt: skip
        left = {k: r for k, r in results.items() if r["status"] not in ("killed", "timeout", "skipped", "not checked")}
        if not left:
            continue
        m = MODULES[name]
        how = f"{' '.join(m.tests)}" + (f" (mutmut ran -k {m.select!r})" if m.select else "")
        details += ["", f"## {name}: {len(left)} not killed", "", f"Tests: {how}.", ""]
        unreached: dict[str, int] = {}
        lines_of = {k: source_line(r["path"], k, r.get("diff", "")) or 0 for k, r in left.items()}
        for key, r in sorted(left.items(), key=lambda kv: (kv[1]["path"], lines_of[kv[0]], kv[0])):
            if r["status"] == "no tests":
                fn = ".".join(x for x in _function(key) if x)
                unreached[f"{r['path']}: {fn}"] = unreached.get(f"{r['path']}: {fn}", 0) + 1
                continue
            e = eq.get(key)
            status = r["status"]
            if status == "survived" and e and e.get("mutated") in _mutated_lines(r.get("diff", "")):
                status = f"equivalent: {e.get('why', '').strip()}"
            details += [f"### {r['path']}:{lines_of[key]} `{key}`", "", status, "", "```diff", r.get("diff", ""), "```", ""]
        if unreached:
            details += ["No selected test reaches these functions (mutants per function):", ""]
            details += [f"- {k}: {n}" for k, n in sorted(unreached.items())]
    path = OUT / "summary.md"
    path.write_text("\n".join(lines + details) + "\n")
    (OUT / "results.json").write_text(json.dumps(all_results, indent=1))
    return path


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"default: all ({', '.join(MODULES)})")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="mutants tested at once (default: CPU count)")
    ap.add_argument("--summary-only", action="store_true", help="rewrite the summary from the last results, run nothing")
    ap.add_argument("--confirm", action="store_true",
                    help="re-run the survivors of a module's fast subset (its select) against its full test files")
    ap.add_argument("--budget", type=float, default=60.0,
                    help="minutes for this run (0: no limit), spent on the modules in order; the module running when "
                    "they are up keeps its verdicts and goes on from there next time, the later ones wait (default: 60)")
    ap.add_argument("--fresh", action="store_true", help="forget mutmut's cached verdicts (mutants/<module>/) first")
    ap.add_argument("--list", action="store_true", help="print the modules, their files and tests")
    args = ap.parse_args(argv)
    if args.list:
        for name, m in MODULES.items():
            print(f"{name}: {' '.join(m.mutate)}" + (f" (functions {' '.join(m.functions)})" if m.functions else "")
                  + f"\n    {' '.join(m.tests)}" + (f"\n    mutmut runs -k {m.select!r}" if m.select else ""))
        return 0
    unknown = set(args.modules) - set(MODULES)
    if unknown:
        ap.error(f"unknown module(s) {sorted(unknown)}; known: {', '.join(MODULES)}")
    if not MUTMUT.is_file():
        raise SystemExit(f"{MUTMUT} not found: `make mutation` installs it")
    version = subprocess.run([str(MUTMUT), "--version"], cwd=ROOT, capture_output=True, text=True).stdout.split()[-1]
    OUT.mkdir(parents=True, exist_ok=True)
    walls_path = OUT / "walls.json"
    walls = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    failed, todo = [], [] if args.summary_only else (args.modules or list(MODULES))
    end = time.monotonic() + 60 * args.budget if args.budget else None
    for name in todo:
        module = MODULES[name]
        minutes = None if end is None else max(0.0, (end - time.monotonic()) / 60)  # what is left, in order
        if args.fresh and (WORK / name).exists():
            shutil.rmtree(WORK / name)
        work = prepare(name, module)
        log = OUT / f"{name}.log"
        log.write_bytes(b"")
        (work / "confirm.json").unlink(missing_ok=True)
        budget = "" if minutes is None else f", {minutes:.0f} min"
        print(f"\n===== {name}: {' '.join(module.mutate)} <- {' '.join(module.tests)}{budget}", flush=True)
        t0 = time.monotonic()
        try:
            generate(work, args.jobs, log)
        except RuntimeError as e:
            failed.append(name)
            print(e, flush=True)
            continue
        if n := reset_undecided(work):
            print(f"[{name}] testing again {n} mutants not killed last time", flush=True)
        names = pending(work, module)
        print(f"[{name}] {len(names)} mutants to test", flush=True)
        if names and minutes is not None and minutes < 3:
            print(f"[{name}] no time left: next time (or run it alone: {name} --budget 0)", flush=True)
            continue
        state, tried = "done", set()
        while names and state == "done":
            left = None if end is None else max(0.0, (end - time.monotonic()) / 60)
            state = run_mutmut(work, names, args.jobs, log, left)
            tried.update(names)
            # mutmut clears the verdicts of every function a new test reaches when it maps tests to functions,
            # after the list above was made: test those too (once each)
            names = [k for k in pending(work, module) if k not in tried]
            if names and state == "done":
                print(f"[{name}] {len(names)} more mutants whose verdicts mutmut cleared: testing them", flush=True)
        if state == "failed":
            failed.append(name)
            print(f"\n[{name}] mutmut failed; see {log}", flush=True)
            continue
        if module.select and args.confirm and state == "done":
            results = collect(name, module)
            try:
                confirm(name, work, module, results, log, args.jobs)
            except RuntimeError as e:
                failed.append(name)
                print(e, flush=True)
        walls[name] = time.monotonic() - t0
        walls_path.write_text(json.dumps(walls, indent=1))
    all_results = {name: r for name, module in MODULES.items() if (r := collect(name, module)) is not None}
    path = write_summary(all_results, walls, version)
    print(f"\nsummary: {path.relative_to(ROOT)}")
    print(path.read_text().split("\n\n## ")[0])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
