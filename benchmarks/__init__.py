"""Benchmarks that write ``BENCHMARKS.md`` sections with the command, machine and date (``nemo-sew bench ...``).

A top-level package beside ``nemo_sew``: the library never imports it (``tests/test_package_edges.py``). The
``nemo-sew`` command finds the ``bench`` subcommands through the ``nemo_sew.cli`` entry point group
(``pyproject.toml``), which names :func:`benchmarks.cli.register`. One module per benchmark, imported only by the
subcommand that runs it:

* :mod:`benchmarks.cli`: the ``bench`` subcommands (their options and handlers);
* :mod:`benchmarks.report`: the machine line and appending a section to ``BENCHMARKS.md`` (from the library's
  :mod:`nemo_sew.measure`, which also holds the one timing loop), and the cells of the training tables;
* :mod:`benchmarks.squeeze` (``bench squeeze``), :mod:`benchmarks.cpu` (``bench cpu``);
* drivers that train models: :mod:`benchmarks.stochastic` (``bench stochastic``),
  :mod:`benchmarks.ssl` (``bench ssl``), :mod:`benchmarks.purity` (``bench purity``),
  :mod:`benchmarks.i3d` (``bench i3d``); :mod:`benchmarks.gates` (``bench gates``, no training).

This file imports nothing, so registering the subcommands costs no benchmark module.
"""
