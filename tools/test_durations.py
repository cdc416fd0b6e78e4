"""Measure every test's duration and write ``tests/durations.json`` (``make test-durations``), which
``tests/conftest.py`` reads to mark the slow tests that ``make test-fast`` (``pytest -m "not slow"``) leaves out.

    python tools/test_durations.py [PYTEST_ARGS...]       # the whole suite by default, ~15 minutes on 2 cores

It runs pytest with this file as a plugin, which records, per test, its **own** time (setup + call + teardown,
less the set-up of shared fixtures that happened during its set-up) and, per shared fixture (module, class, package
or session scope), its set-up time once, keyed ``<where it is defined>::<name>`` (its ``baseid``; ``[i]`` added for
the i-th parameter of a parametrised one): a shared fixture's set-up is paid by whichever selected test needs it
first, so ``conftest.py`` judges it on its own. Its cut-off is relative (a share of the suite's measured time), so
the machine's speed matters little; its load matters less with ``OMP_WAIT_POLICY=PASSIVE``, set here unless given.
Tests that fail or error are not recorded (their times say little). A run given test paths (or ``-k``, ``-m``,
``-x``) merges into the existing file (the other tests keep their times); a run of the whole suite replaces it,
dropping tests that no longer exist.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "durations.json"


class DurationsRecorder:
    def __init__(self) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.fixtures: dict[str, float] = {}
        self.shared_in_current = 0.0  # set-up of shared fixtures during the current test's set-up
        self.failed: set[str] = set()  # errors and failures: their times say little (they are left out)
        self.whole_suite = False

    def pytest_configure(self, config) -> None:
        # no test paths (pytest's testpaths), no -k or -m selection, no -x or --maxfail
        opt = config.option
        self.whole_suite = (
            config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not opt.keyword
            and not opt.markexpr
            and not opt.maxfail
            and not getattr(opt, "deselect", None)
        )

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        # runs only when the fixture is not cached, after its own dependencies are set up (so they are not counted)
        start = time.perf_counter()
        try:
            return (yield)
        finally:
            elapsed = time.perf_counter() - start
            if fixturedef.scope != "function":
                key = f"{fixturedef.baseid}::{fixturedef.argname}"
                if fixturedef.params is not None:  # one set-up per parameter: `name[index]`
                    key += f"[{request.param_index}]"
                self.fixtures[key] = max(self.fixtures.get(key, 0.0), elapsed)
                self.shared_in_current += elapsed

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_setup(self, item):
        self.shared_in_current = 0.0
        try:
            return (yield)
        finally:
            self.own[item.nodeid] -= self.shared_in_current  # the report's setup duration includes them

    def pytest_runtest_logreport(self, report) -> None:
        self.own[report.nodeid] += report.duration
        if report.failed:
            self.failed.add(report.nodeid)

    def result(self) -> dict:
        return {
            "tests": {k: round(max(v, 0.0), 3) for k, v in sorted(self.own.items()) if k not in self.failed},
            "fixtures": {k: round(v, 3) for k, v in sorted(self.fixtures.items())},
        }


def main(argv: list[str]) -> int:
    # OpenMP threads that spin while waiting make torch's small ops 10-50x slower when the cores are shared (a busy
    # machine), by amounts that vary from test to test; sleeping waits keep the times close to a quiet machine's.
    # Set before pytest imports torch (through tests/conftest.py).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    recorder = DurationsRecorder()
    start = time.perf_counter()
    rc = pytest.main(["-p", "no:cacheprovider", *argv], plugins=[recorder])
    full = recorder.whole_suite and int(rc) in (0, 1)  # the whole suite, run to its end
    measured = recorder.result()
    if not measured["tests"]:
        print("test_durations: no test ran; tests/durations.json left as it is", file=sys.stderr)
        return int(rc) or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    # the whole-suite run that the file comes from (a partial run merged in keeps it)
    wall = round(time.perf_counter() - start, 1)
    machine = {"cpus": os.cpu_count(), "load_at_end": load and round(load, 2), "wall_s": wall,
               "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}  # fmt: skip
    if not full and OUT.exists():
        old = json.loads(OUT.read_text())
        measured = {k: {**old.get(k, {}), **measured[k]} for k in ("tests", "fixtures")}
        machine = old.get("machine", machine)
    doc = {
        "about": "per-test own time and per-shared-fixture set-up time in seconds, from tools/test_durations.py "
        "(make test-durations); tests/conftest.py marks the slow ones",
        "machine": machine,
        **measured,
    }
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"test_durations: {len(measured['tests'])} tests, {len(measured['fixtures'])} shared fixtures -> {OUT}")
    if recorder.failed:
        print(f"test_durations: {len(recorder.failed)} tests failed and were not recorded (measure them again "
              "when they pass, e.g. `make test-durations PYTEST_ARGS=tests/test_x.py`):", *sorted(recorder.failed),
              sep="\n  ", file=sys.stderr)
    return int(rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
