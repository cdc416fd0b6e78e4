"""The one timing loop (``nemo_sew.measure``): sample counts, warm-up calls, time cap, interleaving, sync."""

import time

import pytest
import torch
from torch import nn

from nemo_sew.evaluate import measure_latency
from nemo_sew.measure import MIN_RUNS, interleaved_ms, timed_ms


class Counter:
    """A callable that counts its calls, records their order in ``log`` and optionally sleeps."""

    def __init__(self, name: str = "fn", sleep_s: float = 0.0, log: list | None = None) -> None:
        self.name, self.sleep_s, self.calls = name, sleep_s, 0
        self.log = log if log is not None else []
        self.inference_mode = []

    def __call__(self) -> None:
        self.calls += 1
        self.log.append(self.name)
        self.inference_mode.append(torch.is_inference_mode_enabled())
        if self.sleep_s:
            time.sleep(self.sleep_s)


@pytest.mark.parametrize("warmup, runs", [(0, 1), (2, 5), (3, 10)])
def test_timed_ms_returns_runs_samples_after_warmup_calls(warmup, runs):
    fn = Counter()
    times = timed_ms(fn, warmup, runs)
    assert len(times) == runs
    assert fn.calls == warmup + runs
    assert all(t >= 0 for t in times)
    assert all(fn.inference_mode)  # every call, warm-up included, under torch.inference_mode


def test_timed_ms_samples_are_milliseconds():
    times = timed_ms(Counter(sleep_s=0.02), warmup=0, runs=3)
    assert all(t >= 20.0 for t in times)  # time.sleep sleeps at least as long as asked
    assert all(t < 2000.0 for t in times)  # not microseconds or seconds


def test_time_cap_never_leaves_fewer_than_three_runs():
    fn = Counter(sleep_s=0.005)
    times = timed_ms(fn, warmup=1, runs=10, max_timed_s=1e-4)  # spent after the first call already
    assert len(times) == MIN_RUNS == 3
    assert fn.calls == 1 + 3
    # fewer runs asked for than the minimum: the cap cannot add runs
    assert len(timed_ms(Counter(sleep_s=0.005), warmup=0, runs=2, max_timed_s=1e-4)) == 2


def test_time_cap_stops_at_the_first_run_past_it():
    cap_s = 0.06
    times = timed_ms(Counter(sleep_s=0.01), warmup=0, runs=50, max_timed_s=cap_s)
    assert MIN_RUNS <= len(times) < 50
    if len(times) > MIN_RUNS:  # stopped by the cap: the run before the last was still within it
        assert sum(times[:-1]) <= cap_s * 1e3 < sum(times)
    else:  # stopped by the minimum: the cap was already spent
        assert sum(times) > cap_s * 1e3


def test_sync_runs_after_every_call_inside_the_timed_span():
    fn, sync = Counter(), Counter(name="sync", sleep_s=0.01)
    times = timed_ms(fn, warmup=2, runs=4, sync=sync)
    assert sync.calls == fn.calls == 2 + 4
    assert all(t >= 10.0 for t in times)  # the sync's 10 ms are counted


def test_interleaved_rounds_rotate_the_order_and_warm_up_every_function():
    log: list[str] = []
    fns = {name: Counter(name, log=log) for name in ("a", "b", "c")}
    times = interleaved_ms(fns, warmup=2, runs=4)
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(fn.calls == 2 + 4 for fn in fns.values())
    warmup, timed = log[:6], log[6:]
    assert warmup == ["a", "b", "c"] * 2
    assert timed == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]


def test_interleaved_cap_is_per_function_and_keeps_three_rounds():
    fns = {"fast": Counter("fast"), "slow": Counter("slow", sleep_s=0.005)}
    times = interleaved_ms(fns, warmup=0, runs=20, max_timed_s=1e-4)
    assert [len(t) for t in times.values()] == [3, 3]
    # the cap is per function: 2 functions x 30 ms allow rounds past the first 30 ms of timed calls
    fns = {"one": Counter("one", sleep_s=0.01), "two": Counter("two", sleep_s=0.01)}
    times = interleaved_ms(fns, warmup=0, runs=50, max_timed_s=0.03)
    rounds = len(times["one"])
    assert len(times["two"]) == rounds and MIN_RUNS <= rounds < 50
    per_round = [a + b for a, b in zip(times["one"], times["two"])]
    if rounds > MIN_RUNS:
        assert sum(per_round[:-1]) <= 2 * 0.03 * 1e3 < sum(per_round)


def test_interleaved_with_no_functions_is_empty():
    assert interleaved_ms({}, warmup=1, runs=3) == {}


def test_interleaved_training_steps_run_with_autograd_and_their_own_backward():
    """``inference=False`` (``bench train-step``): autograd on even inside ``no_grad``, each call's backward timed
    with it; the rounds, warm-up and rotation are the inference timer's."""
    weight = nn.Parameter(torch.ones(3))
    log: list[str] = []
    grad_enabled: list[bool] = []

    def step(name: str):
        def run() -> None:
            log.append(name)
            grad_enabled.append(torch.is_grad_enabled() and not torch.is_inference_mode_enabled())
            (weight * 2.0).sum().backward()

        return run

    with torch.no_grad():
        times = interleaved_ms({"a": step("a"), "b": step("b")}, warmup=1, runs=3, inference=False)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert log == ["a", "b", "a", "b", "b", "a", "a", "b"] and all(grad_enabled)
    assert torch.equal(weight.grad, torch.full((3,), 2.0 * 8))  # 1 warm-up + 3 timed rounds x 2 steps


class _TinyModel(nn.Module):
    """What measure_latency needs of a NeMo model: ``cfg``, parameters, ``forward(input_signal, input_signal_length)``."""

    cfg = {"sample_rate": 16000}

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, input_signal, input_signal_length):
        self.calls += 1
        assert not self.training and torch.is_inference_mode_enabled()
        return input_signal * self.scale, input_signal_length


def test_measure_latency_uses_the_timing_loop():
    model = _TinyModel().train()
    lat = measure_latency(model, seconds=0.5, batch=2, warmup=2, runs=5)
    assert model.calls == 2 + 5 and lat.runs == 5
    assert model.training  # mode restored
    assert lat.median_ms > 0 and lat.rtfx == pytest.approx(2 * 0.5 / (lat.median_ms / 1e3))


def test_library_core_never_imports_the_benchmarks():
    """Importing every library module and building the CLI's parser loads only the ``bench`` registration
    (``benchmarks.cli``, through the entry point), never a benchmark driver (the AST check of the source is
    ``tests/test_package_edges.py``)."""
    import subprocess
    import sys

    code = (
        "import importlib, pkgutil, sys\n"
        "import nemo_sew\n"
        "for m in pkgutil.walk_packages(nemo_sew.__path__, 'nemo_sew.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))\n"
        "importlib.import_module('nemo_sew.cli').build_parser()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "['benchmarks', 'benchmarks.cli']"], out.stdout[-2000:]


def test_torch_threads_restores_the_setting_even_after_an_error():
    import torch

    from nemo_sew.measure import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before


def test_runner_latency_times_every_runner_on_the_same_waveform():
    from nemo_sew.measure import runner_latency_ms

    seen = {}

    class Runner:
        def __init__(self, name):
            self.name = name

        def logprobs(self, waves):
            seen.setdefault(self.name, []).append(waves[0])

    times = runner_latency_ms({"a": Runner("a"), "b": Runner("b")}, seconds=0.5, runs=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(w.shape == (8000,) for ws in seen.values() for w in ws) and len(seen["a"]) == 4  # 1 warm-up + 3
    assert (seen["a"][0] == seen["b"][-1]).all()
