"""Benchmarks that write ``BENCHMARKS.md`` sections with the command, machine and date (``nemo-sew bench ...``).

One module per benchmark, imported only by the ``nemo-sew bench`` subcommand that runs it:

* :mod:`nemo_sew.bench.timing`: the one timing loop (warm-up, median samples, time cap, interleaving), also
  used by :func:`nemo_sew.evaluate.measure_latency`;
* :mod:`nemo_sew.bench.report`: the machine line and appending a section to ``BENCHMARKS.md``;
* :mod:`nemo_sew.bench.squeeze` (``bench squeeze``), :mod:`nemo_sew.bench.cpu` (``bench cpu``);
* drivers that train models: :mod:`nemo_sew.bench.stochastic` (``bench stochastic``),
  :mod:`nemo_sew.bench.ssl` (``bench ssl``), :mod:`nemo_sew.bench.purity` (``bench purity``),
  :mod:`nemo_sew.bench.i3d` (``bench i3d``); :mod:`nemo_sew.bench.gates` (``bench gates``, no training).

The library core never imports the benchmark modules; this package itself only re-exports the report helpers.
"""

from nemo_sew.bench.report import append_benchmark, machine_line

__all__ = ["append_benchmark", "machine_line"]
