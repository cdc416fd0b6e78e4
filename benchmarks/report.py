"""What every ``BENCHMARKS.md`` section carries: the machine line and appending a section (both in the library,
:mod:`nemo_sew.measure`, which ``nemo-sew doctor --gpu`` uses too), and the cells of the training tables."""

from __future__ import annotations

from nemo_sew.measure import append_benchmark, machine_line, threads_text


def mean_spread(values) -> str:
    """``mean ± half the range`` of one table cell's runs (seeds); one run: the value."""
    values = list(values)
    mean = sum(values) / len(values)
    return f"{mean:.3f}" + (f" ± {(max(values) - min(values)) / 2:.3f}" if len(values) > 1 else "")


__all__ = ["append_benchmark", "machine_line", "mean_spread", "threads_text"]
