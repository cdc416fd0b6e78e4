"""What every ``BENCHMARKS.md`` section carries: the machine line, and appending a section to the file."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch


def machine_line() -> str:
    threads = torch.get_num_threads()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{threads} thread{'s' if threads != 1 else ''}, {time.strftime('%Y-%m-%d')}"
    )


def append_benchmark(section: str, path: str | Path = "BENCHMARKS.md") -> None:
    """Append a section to BENCHMARKS.md (created with a header if missing)."""
    path = Path(path)
    if not path.exists():
        path.write_text("# nemo-sew benchmarks\n\nEvery section names the command that produced it; ratios are within one run.\n\n")
    with path.open("a") as f:
        f.write(section + "\n")


__all__ = ["append_benchmark", "machine_line"]
