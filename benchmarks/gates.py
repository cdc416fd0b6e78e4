"""``nemo-sew bench gates``: is the compute a closed I3D gate saves really saved? Eager latency vs MACs.

    nemo-sew bench gates --preset sew_small --seconds 10 --close 0.4 --write BENCHMARKS.md

A gated encoder of ``preset`` (local gates) gets predictors whose decisions are fixed: a chosen ``close``
fraction of the branches (spread over layers and branch kinds, seeded) always closes, the rest always opens.
The same model then runs at ``depth_threshold`` 0 (every branch runs) and at its default threshold (those
branches skipped); both at batch 1 on ``seconds`` of audio, timed in interleaved rounds by
:func:`nemo_sew.measure.interleaved_ms`. The MACs of both come from :mod:`nemo_sew.cost` (realised
decisions). Issue 11's goal: latency saving >= 0.8 x MAC saving. No training is needed: what is measured is
the skipping, not what the gates learned.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import torch

from benchmarks.report import machine_line
from nemo_sew.encoder import SqueezeEncoder, build_encoder
from nemo_sew.measure import interleaved_ms
from nemo_sew.profile import CompressionProfile


@dataclass
class GateLatency:
    preset: str
    seconds: float
    closed: int  # branches closed
    branches: int
    full_ms: float
    gated_ms: float
    full_gmacs: float
    gated_gmacs: float
    runs: int

    @property
    def latency_saving(self) -> float:
        return 1.0 - self.gated_ms / self.full_ms

    @property
    def mac_saving(self) -> float:
        return 1.0 - self.gated_gmacs / self.full_gmacs


def fix_gates(encoder: SqueezeEncoder, close: float, seed: int = 0) -> list[tuple[int, str]]:
    """Make a local-gated encoder's decisions input-independent: ``close`` of its branches get a predictor
    output of -20 (always closed), the others +20. Returns the closed ``(layer, branch)`` slots."""
    slots = list(encoder.gate_slots)
    closed = set(random.Random(seed).sample(slots, round(close * len(slots))))
    with torch.no_grad():
        for i, name in slots:
            predictor = encoder.layers[i].gates[name]
            predictor.fc2.weight.zero_()
            predictor.fc2.bias.fill_(-20.0 if (i, name) in closed else 20.0)
    return sorted(closed)


def bench_gates(
    preset: str = "sew_small", seconds: float = 10.0, close: float = 0.4, warmup: int = 2, runs: int = 10,
    seed: int = 0,
) -> GateLatency:  # fmt: skip
    """Batch-1 eager latency and realised MACs of ``preset`` with every branch vs with ``close`` of them skipped."""
    torch.manual_seed(seed)
    encoder = build_encoder(preset, gates={"kind": "local"}).eval()
    closed = fix_gates(encoder, close, seed)
    n = encoder.layout.length(seconds)
    x = torch.randn(1, encoder.layout.feat_in, n) * 0.1
    lengths = torch.tensor([n])
    full, gated = CompressionProfile(depth_threshold=0.0), CompressionProfile(depth_threshold=0.5)

    def run(profile: CompressionProfile, measure: bool = False):
        encoder.set_profile(profile)
        return encoder.run(x, lengths, measure=measure)

    with torch.inference_mode():
        macs = {name: run(p, measure=True).plain_stats()["macs"][0] for name, p in (("full", full), ("gated", gated))}
    times = interleaved_ms({"full": lambda: run(full), "gated": lambda: run(gated)}, warmup, runs)
    return GateLatency(
        preset=preset, seconds=seconds, closed=len(closed), branches=len(encoder.gate_slots),
        full_ms=statistics.median(times["full"]), gated_ms=statistics.median(times["gated"]),
        full_gmacs=macs["full"] / 1e9, gated_gmacs=macs["gated"] / 1e9, runs=len(times["full"]),
    )  # fmt: skip


def gates_markdown(r: GateLatency, command: str) -> str:
    ratio = r.latency_saving / r.mac_saving if r.mac_saving > 0 else float("nan")
    met = "met" if ratio >= 0.8 else "not met"
    return "\n".join([
        f"### I3D skipped compute: eager latency vs MACs, {r.preset}, {r.seconds:g} s, batch 1",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"{r.closed} of {r.branches} branches closed by fixed gate decisions (untrained weights: the skipping is "
        f"measured, not what gates learn); median of {r.runs} interleaved timed rounds each; one run.",
        "",
        "| run | encoder GMACs | median latency (ms) |",
        "|---|---|---|",
        f"| every branch (depth_threshold 0) | {r.full_gmacs:.2f} | {r.full_ms:.1f} |",
        f"| {r.closed} branches skipped (depth_threshold 0.5) | {r.gated_gmacs:.2f} | {r.gated_ms:.1f} |",
        "",
        f"MAC saving {r.mac_saving:.1%}, latency saving {r.latency_saving:.1%}: {ratio:.2f} x the MAC saving "
        f"(goal >= 0.8 x, issue 11): **{met}**.",
        "",
    ])  # fmt: skip
