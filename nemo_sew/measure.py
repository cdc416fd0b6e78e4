"""Measurement in the library: the one timing loop of nemo-sew (every latency number: ``evaluate``, ``sweep``,
``bench squeeze``, ``bench cpu`` comes from here) and what every ``BENCHMARKS.md`` section carries (the machine
line, appending a section). The benchmark drivers themselves live outside the library, in the top-level
``benchmarks`` package (``nemo-sew bench ...``); the library never imports them.

:func:`interleaved_ms` times one or more callables in rounds; :func:`timed_ms` is its one-callable case.
Both share these rules:

* ``warmup`` untimed rounds first (not counted in any sample);
* then up to ``runs`` timed rounds, each call timed on its own with ``time.perf_counter``;
* a time cap: once the timed calls took more than ``max_timed_s`` per callable, timing stops after the
  current round, but never before 3 rounds (or ``runs``, when fewer were asked for);
* everything under ``torch.inference_mode`` (``inference=False``: autograd on, for training steps whose
  callable runs its own backward); ``sync`` (e.g. ``torch.cuda.synchronize``), when given, is
  called after every call and inside the timed span, so asynchronous device work is counted.

Quote the median of the samples (:func:`statistics.median`); ratios between callables timed in one
:func:`interleaved_ms` call are the fairest comparison on a machine shared with other work.
"""

from __future__ import annotations

import contextlib
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch

MIN_RUNS = 3
"""Fewest timed rounds a time cap can leave (unless fewer ``runs`` were asked for)."""


def interleaved_ms(
    fns: Mapping[str, Callable[[], Any]],
    warmup: int,
    runs: int,
    max_timed_s: float = float("inf"),
    sync: Callable[[], Any] | None = None,
    inference: bool = True,
) -> dict[str, list[float]]:
    """Wall times (ms) of each of ``fns``, timed in rounds that call every function once (order rotated).

    On a machine shared with other work the load changes during a run; interleaving gives every function
    the same mix of conditions, so the ratios between their medians stay fair. ``warmup`` untimed rounds
    first; then up to ``runs`` rounds, stopping (after at least 3) once the rounds took more than
    ``max_timed_s`` per function. Returns one list of samples per name, in call order.
    ``inference``: the calls run under ``torch.inference_mode`` (default); ``False``: with autograd enabled
    (training steps: each callable runs its own backward, timed with it).
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    if not names:
        return times
    with torch.inference_mode() if inference else torch.enable_grad():
        for _ in range(warmup):
            for name in names:
                fns[name]()
                if sync is not None:
                    sync()
        spent = 0.0
        for r in range(runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                fns[name]()
                if sync is not None:
                    sync()
                times[name].append((time.perf_counter() - start) * 1e3)
                spent += times[name][-1] / 1e3
            if spent > max_timed_s * len(names) and r + 1 >= min(MIN_RUNS, runs):
                break
    return times


NOISY_SPREAD = 0.2
"""Relative spread (interquartile range / median) of latency samples above which a latency is flagged as noisy:
on a quiet machine repeated forwards agree within a few percent; more means other work shared the cores."""


def spread(samples_ms: list[float]) -> float:
    """Interquartile range over median of timing samples (0 for fewer than 2 samples)."""
    if len(samples_ms) < 2:
        return 0.0
    q1, med, q3 = np.percentile(np.asarray(samples_ms, dtype=np.float64), [25, 50, 75])
    return float((q3 - q1) / med) if med > 0 else 0.0


def timed_ms(
    fn: Callable[[], Any],
    warmup: int,
    runs: int,
    max_timed_s: float = float("inf"),
    sync: Callable[[], Any] | None = None,
) -> list[float]:
    """Wall times (ms) of ``runs`` calls of ``fn`` after ``warmup`` untimed ones; stops early (after at least 3
    calls) once the timed calls took more than ``max_timed_s``. :func:`interleaved_ms` with one function."""
    return interleaved_ms({"fn": fn}, warmup, runs, max_timed_s, sync)["fn"]


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def runner_latency_ms(
    runners: Mapping[str, Any], seconds: float = 10.0, runs: int = 10, max_timed_s: float = 20.0, warmup: int = 2,
    sample_rate: int = 16000,
) -> dict[str, list[float]]:
    """Batch-1 latency samples of CTC runners (:class:`nemo_sew.export.ort.CTCRunner`: ``logprobs`` on one
    utterance of ``seconds`` of noise, features included), all in the same :func:`interleaved_ms` rounds."""
    wave = [np.random.default_rng(0).standard_normal(int(seconds * sample_rate)).astype(np.float32) * 0.1]
    return interleaved_ms({name: (lambda r=r: r.logprobs(wave)) for name, r in runners.items()}, warmup, runs, max_timed_s)


def threads_text(threads: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{threads} thread{'s' if threads != 1 else ''}"


def machine_line() -> str:
    """The machine a ``BENCHMARKS.md`` section was measured on: processor, cores, torch, threads, date."""
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads_text(torch.get_num_threads())}, {time.strftime('%Y-%m-%d')}"
    )


def append_benchmark(section: str, path: str | Path = "BENCHMARKS.md") -> None:
    """Append a section to BENCHMARKS.md (created with a header if missing)."""
    path = Path(path)
    if not path.exists():
        path.write_text("# nemo-sew benchmarks\n\nEvery section names the command that produced it; ratios are within one run.\n\n")
    with path.open("a") as f:
        f.write(section + "\n")


__all__ = [
    "MIN_RUNS", "append_benchmark", "interleaved_ms", "machine_line", "runner_latency_ms", "threads_text", "timed_ms",
    "torch_threads",
]  # fmt: skip
