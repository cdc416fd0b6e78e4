"""What every ``BENCHMARKS.md`` section carries: the machine line, and appending a section to the file."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def threads_text(threads: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{threads} thread{'s' if threads != 1 else ''}"


def machine_line() -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads_text(torch.get_num_threads())}, {time.strftime('%Y-%m-%d')}"
    )


def mean_spread(values) -> str:
    """``mean ± half the range`` of one table cell's runs (seeds); one run: the value."""
    values = list(values)
    mean = sum(values) / len(values)
    return f"{mean:.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


def append_benchmark(section: str, path: str | Path = "BENCHMARKS.md") -> None:
    """Append a section to BENCHMARKS.md (created with a header if missing)."""
    path = Path(path)
    if not path.exists():
        path.write_text("# nemo-sew benchmarks\n\nEvery section names the command that produced it; ratios are within one run.\n\n")
    with path.open("a") as f:
        f.write(section + "\n")


__all__ = ["append_benchmark", "machine_line"]
