# Two entry points, each doing all set-up on a fresh machine (Debian packages, .venv, editable install)
# and quick when already set up:  make demo  |  make test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
APT_PACKAGES := espeak-ng flite festival festvox-kdlpc16k festvox-us-slt-hts fortunes fortunes-min sox libsndfile1
PYTEST_ARGS ?=

.PHONY: demo demo-product test test-fast gpu-check mutation setup apt venv clean

demo: setup
	$(VENV)/bin/nemo-sew demo

# one model that serves every budget: the all-dials recipe, quantize --keep-fp, squeeze x depth threshold x bits
# sweep with one ONNX per profile -> outputs/demo_product/ (docs/demo.md, "The product demo")
demo-product: setup
	$(VENV)/bin/nemo-sew demo --product

# OpenMP threads that sleep instead of spinning while they wait: the suite runs processes side by side (DDP ranks,
# launchers), and spinning threads of one starve the other (10-50x slower small ops under load; a whole-suite run
# under load took 13.7 min passive against 35.6 min spinning). An OMP_WAIT_POLICY already set is kept.
TEST_ENV := OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}

test: setup
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(TEST_ENV) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# re-measures tests/durations.json (the whole suite, as long as `make test`; with test paths in PYTEST_ARGS only
# those, merged in), from which tests/conftest.py marks slow the tests that test-fast leaves out
.PHONY: test-durations
test-durations: setup
	$(PY) tools/test_durations.py $(PYTEST_ARGS)

# regenerates docs/cli.md, the --help of every command and subcommand, from the parser (tests/test_docs.py fails
# when the committed file differs from what this writes)
.PHONY: docs
docs: setup
	$(PY) tools/gen_cli_docs.py

# the first thing to run on a CUDA machine (skips with its reason elsewhere): bf16 steps of every training family,
# host-sync count, a 2-GPU DDP step, throughput and MFU, appended to BENCHMARKS.md
gpu-check: setup
	$(VENV)/bin/nemo-sew doctor --gpu --write BENCHMARKS.md

# mutation testing (issue 30), not part of `make test` or CI: mutmut, installed here on demand, runs each module
# against its own tests (tools/mutation/run.py) for an hour in all, going on next time from where it stopped;
# writes outputs/mutation/summary.md. One module, no limit: make mutation MUTATION_ARGS="quant_schemes --budget 0"
MUTMUT_VERSION := 3.8.1
MUTATION_ARGS ?=
mutation: setup
	$(PIP) install -q "mutmut==$(MUTMUT_VERSION)"
	$(PY) tools/mutation/run.py $(MUTATION_ARGS)

setup: apt $(VENV)/.stamp-install

# Debian packages: installed only when one is missing (root, or sudo when available)
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned first so pip takes the CPU build (see README for a CUDA build on GPU machines)
$(VENV)/.stamp-install: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	touch $@

clean:
	rm -rf outputs .pytest_cache
