"""Every stochastic training method draws the same profiles on every DDP rank (issue 30, item 6).

Under DDP each rank runs ``StochasticTrainer.paths`` itself; if two ranks ran different profiles (another squeeze,
another CIF lambda), the all-reduced gradients would mix different sub-networks and the step would silently train
nonsense. So the paths of a step must be a pure function of ``(step, seed)``: the same in another process with
other global RNG states (torch, ``random``, numpy), another ``PYTHONHASHSEED`` and another history of draws; and
every path's draw must carry the step (gate annealing, pruning warm-up and LayerDrop read it) and the run's seed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

SAMPLERS: dict[str, dict[str, Any]] = {
    "values": {"squeeze": {"values": [1, 2, 3, 4]}},
    "range": {"squeeze": {"low": 1.0, "high": 4.0}, "cif_lambda": {"low": 0.0, "high": 1.0}},
}
METHODS: dict[str, dict[str, Any]] = {
    "uniform": {"method": "uniform"},
    "sandwich": {"method": "sandwich", "middle": "any"},
    "sandwich_interior": {"method": "sandwich", "middle": "interior"},
    "inplace_distill": {"method": "inplace_distill"},
    "weighted": {"method": "weighted"},
}
NEEDS_VALUES = {"sandwich_interior", "weighted"}  # methods defined for samplers over values only
STEPS = [*range(24), 1000, 123457]
SEEDS = [0, 17]


def _combinations() -> list[tuple[str, str]]:
    return [(s, m) for s in SAMPLERS for m in METHODS if not (s == "range" and m in NEEDS_VALUES)]


def _scramble(rank: int) -> None:
    """Give this process its own global RNG states and a rank-dependent history of unrelated draws."""
    torch.manual_seed(rank * 1000)
    random.seed(rank * 1000 + 1)
    np.random.seed(rank * 1000 + 2)
    for _ in range(3 * rank + 1):
        random.random()
        torch.rand(3)
        np.random.rand()


def all_paths(rank: int) -> dict[str, Any]:
    """``{sampler/method/seed: [[path, ...] per step]}``, each path as its role and the repr of its draw (every field
    of the profile, the CIF lambda, the step and the seed), computed after :func:`_scramble`."""
    from nemo_sew.encoder import build_encoder
    from nemo_sew.stochastic import StochasticOptions, StochasticTrainer

    _scramble(rank)
    out: dict[str, Any] = {}
    for sampler_name, sampler in SAMPLERS.items():
        encoder = build_encoder("tiny_mel", num_layers=2, squeeze_sampler=sampler).train()
        for _ in range(2 * rank):
            encoder.draw()  # the encoder's own forward counter moves on one rank only
        for method_name, config in METHODS.items():
            if sampler_name == "range" and method_name in NEEDS_VALUES:
                continue
            trainer = StochasticTrainer(StochasticOptions.from_config(config))
            for seed in SEEDS:
                key = f"{sampler_name}/{method_name}/{seed}"
                out[key] = [[[p.role, repr(p.draw)] for p in trainer.paths(encoder, step, seed=seed)] for step in STEPS]
                torch.rand(rank + 1)  # more unrelated draws between methods
    return out


def _child(rank: int, hash_seed: str) -> subprocess.Popen:
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import {Path(__file__).stem} as t; print('PATHS=' + json.dumps(t.all_paths({rank})))")  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_paths_are_the_same_in_another_process():
    """A fresh interpreter (another ``PYTHONHASHSEED``, other RNG seeds and draw history) computes exactly the paths
    this process computes, for every method and sampler, at every step and run seed."""
    parent_hash = os.environ.get("PYTHONHASHSEED")
    child_hash = str(int(parent_hash) + 1) if parent_hash and parent_hash.isdigit() else "4242"
    proc = _child(rank=1, hash_seed=child_hash)  # runs while this process computes its own
    try:
        here = all_paths(rank=0)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    line = next(line for line in stdout.splitlines() if line.startswith("PATHS="))
    there = json.loads(line[len("PATHS="):])
    assert sorted(here) == sorted(there)
    for key in here:
        for step, mine, theirs in zip(STEPS, here[key], there[key]):
            assert mine == theirs, f"{key}, step {step}: {mine} != {theirs}"


@pytest.mark.parametrize(("sampler", "method"), _combinations())
def test_every_draw_carries_its_step_and_seed_and_ignores_global_rng(sampler: str, method: str):
    from nemo_sew.encoder import build_encoder
    from nemo_sew.stochastic import StochasticOptions, StochasticTrainer

    encoder = build_encoder("tiny_mel", num_layers=2, squeeze_sampler=SAMPLERS[sampler]).train()
    trainer = StochasticTrainer(StochasticOptions.from_config(METHODS[method]))
    seen: list[list[Any]] = []
    for seed in SEEDS:
        for step in STEPS:
            _scramble(rank=step % 5)
            paths = trainer.paths(encoder, step, seed=seed)
            _scramble(rank=step % 7 + 11)
            again = trainer.paths(encoder, step, seed=seed)
            assert [(p.role, p.draw) for p in paths] == [(p.role, p.draw) for p in again], (step, seed)
            for p in paths:
                assert p.draw.step == step and p.draw.seed == seed, (step, seed, p.draw)
            seen.append([p.draw.profile.squeeze for p in paths])
    expected = {"uniform": 1, "sandwich": 3, "sandwich_interior": 3, "inplace_distill": 2, "weighted": 1}[method]
    assert {len(s) for s in seen} == {expected}
    assert len({tuple(s) for s in seen}) > 1, "the draws never change with the step: a vacuous check"
