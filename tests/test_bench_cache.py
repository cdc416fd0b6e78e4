"""Benchmark runs kept with the settings that made them (benchmarks.cache)."""

import json
import multiprocessing
import os
import time

import pytest

from benchmarks.cache import file_digest, kept_file, kept_result


def test_kept_result_reuses_only_the_same_settings(tmp_path):
    calls = []

    def work():
        calls.append(1)
        return {"wer": {2: 0.5}}

    path = tmp_path / "run" / "result.json"
    assert kept_result(path, {"steps": 5, "overrides": ["a=1"]}, work) == {"wer": {"2": 0.5}}  # the kept (JSON) form
    assert kept_result(path, {"steps": 5, "overrides": ["a=1"]}, work) == {"wer": {"2": 0.5}} and len(calls) == 1
    kept_result(path, {"steps": 6, "overrides": ["a=1"]}, work)  # other settings: computed again, and kept instead
    assert len(calls) == 2 and json.loads(path.read_text())["settings"]["steps"] == 6
    assert not list(tmp_path.glob("run/*.tmp"))


def test_a_retrained_source_model_is_another_input(tmp_path):
    """A run that starts from a model keys on its bytes: the same path retrained is not reused."""
    source = tmp_path / "model.nemo"
    source.write_bytes(b"weights one")
    first = file_digest(source)
    calls = []
    work = lambda: calls.append(1) or {"cer": 0.3}  # noqa: E731
    kept_result(tmp_path / "ft.json", {"init": str(source), "init_sha256": file_digest(source)}, work)
    kept_result(tmp_path / "ft.json", {"init": str(source), "init_sha256": file_digest(source)}, work)
    source.write_bytes(b"weights two")
    assert file_digest(source) != first
    kept_result(tmp_path / "ft.json", {"init": str(source), "init_sha256": file_digest(source)}, work)
    assert len(calls) == 2


def _kept_in_process(path, log, queue):
    def work():
        with open(log, "a") as f:
            f.write("computed\n")
        time.sleep(0.5)  # long enough for the other process to reach the lock while this one holds it
        return {"pid": os.getpid()}

    queue.put(kept_result(path, {"run": 1}, work))


def test_kept_result_runs_once_across_processes(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_kept_in_process, args=(tmp_path / "run" / "result.json", log, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert log.read_text().count("computed") == 1  # the second process waited and took the first one's result
    assert results[0] == results[1]


def test_kept_file_is_made_again_when_settings_or_bytes_change(tmp_path):
    path, made = tmp_path / "model.nemo", []

    def make(text="weights"):
        made.append(text)
        path.write_text(text)

    assert kept_file(path, {"overrides": ["a=1"]}, make) == path and len(made) == 1
    kept_file(path, {"overrides": ["a=1"]}, make)
    assert len(made) == 1  # same settings, same bytes: reused
    kept_file(path, {"overrides": ["a=2"]}, make)
    assert len(made) == 2  # other settings
    path.write_text("edited by hand")
    kept_file(path, {"overrides": ["a=2"]}, make)
    assert len(made) == 3 and path.read_text() == "weights"  # the kept file's bytes changed
    path.unlink()
    kept_file(path, {"overrides": ["a=2"]}, make)
    assert len(made) == 4
    with pytest.raises(FileNotFoundError, match="without writing it"):
        kept_file(tmp_path / "never.nemo", {}, lambda: None)
