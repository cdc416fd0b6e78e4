"""``nemo-sew bench prune-table`` end to end on the tiny corpus (2 training steps per model): every budget's
pruned model is materialised and measured, size is given sepmac's realised parameter fraction, and the scratch
model has the sepmac shape with fresh weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks.prune_table import bench_prune_table
from nemo_sew.safe_load import restore

FAST = ["trainer.limit_val_batches=1", "model.train_ds.batch_size=4", "model.validation_ds.batch_size=4",
        "trainer.precision=32"]  # fmt: skip


def test_prune_table_prunes_measures_and_trains_the_shape_from_scratch(tiny_ctc_nemo, tiny_corpus, tmp_path):
    data = Path(tiny_corpus["train"]["manifest"]).parent
    out = tmp_path / "table"
    section, results = bench_prune_table(tiny_ctc_nemo, data, out, budgets=["size", "sepmac", "frontend"],
                                         targets=[0.6], prune_steps=2, scratch=[0.6], scratch_steps=2, threads=1,
                                         runs=3, extra=FAST, command="nemo-sew bench prune-table")  # fmt: skip
    names = set(results)
    assert {"unpruned", "sepmac_0.6", "size_0.6", "scratch_0.6"} <= names
    for r in results.values():
        assert 0 <= r["cer"] and r["params_m"] > 0 and r["gmacs_per_s"] > 0 and r["ms"] > 0
    # size was asked for the parameter fraction sepmac realised (equal MACs, nearly)
    cfg = json.loads((out / "bench_prune_table.json").read_text())
    assert cfg["results"]["sepmac_0.6"]["fractions"]["params"] < 1.0
    sepmac, scratch = restore(out / "sepmac_0.6.nemo"), restore(out / "scratch_0.6.nemo")
    assert sepmac.encoder.arch == scratch.encoder.arch  # the same shape ...
    a, b = sepmac.encoder.state_dict(), scratch.encoder.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())  # ... other weights
    assert "| sepmac_0.6 |" in section and "| scratch_0.6 |" in section
    # the control: the unpruned model trained the pruning steps more, same arch, other weights
    control = restore(out / "unpruned_+2.nemo")
    assert control.encoder.arch == restore(tiny_ctc_nemo).encoder.arch and "| unpruned_+2 |" in section
    assert "| rel. to unpruned_+2 |" in section and control.cfg.optim.lr == 5.0e-4  # the pruning recipe's LR
    assert results["unpruned_+2"]["gmacs_per_s"] == results["unpruned"]["gmacs_per_s"]
    # the tiny model's log-mel front end has no MACs: front-end pruning is said not to run, not silently dropped
    assert "frontend_0.6" not in names and "Not run: frontend: the front end has no MACs" in section
    # kept models: the same settings reuse them, other overrides train them again (not a stale file reused)
    stamps = {f.name: f.stat().st_mtime_ns for f in out.glob("*.nemo")}
    again = dict(budgets=["sepmac"], targets=[0.6], prune_steps=2, scratch=[], control=False, threads=1, runs=1)
    bench_prune_table(tiny_ctc_nemo, data, out, extra=FAST, **again)
    assert {f.name: f.stat().st_mtime_ns for f in out.glob("*.nemo")} == stamps
    bench_prune_table(tiny_ctc_nemo, data, out, extra=[*FAST, "trainer.gradient_clip_val=1.0"], **again)
    assert (out / "sepmac_0.6.nemo").stat().st_mtime_ns != stamps["sepmac_0.6.nemo"]
    assert (out / "scratch_0.6.nemo").stat().st_mtime_ns == stamps["scratch_0.6.nemo"]


def test_scratch_needs_its_step_count(tiny_ctc_nemo, tmp_path):
    with pytest.raises(ValueError, match="scratch_steps"):
        bench_prune_table(tiny_ctc_nemo, tmp_path, tmp_path / "out", scratch=[0.6], scratch_steps=None)


def test_unknown_budget_is_refused(tiny_ctc_nemo, tmp_path):
    with pytest.raises(ValueError, match="budgets"):
        bench_prune_table(tiny_ctc_nemo, tmp_path, tmp_path / "out", budgets=["flops"], scratch=[])
