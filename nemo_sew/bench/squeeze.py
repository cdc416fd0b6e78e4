"""``nemo-sew bench squeeze``: encoder latency and MACs of one stochastic encoder across squeeze factors.

    nemo-sew bench squeeze --preset sew_small --seconds 10 --factors 1 2 4

Latency is the median of ``runs`` timed forwards after ``warmup`` untimed ones
(:func:`nemo_sew.bench.timing.timed_ms`), all in one process, so ratios between rows of one run are the
numbers to quote.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import torch

from nemo_sew.bench.report import machine_line
from nemo_sew.bench.timing import timed_ms
from nemo_sew.evaluate import encoder_gmacs_per_second
from nemo_sew.encoder import build_encoder
from nemo_sew.profile import CompressionProfile


@dataclass
class SqueezeRow:
    squeeze: float
    gmacs_per_s: float
    latency_ms: float


def bench_squeeze(
    preset: str = "sew_small", factors: Sequence[float] = (1, 2, 4), seconds: float = 10.0, batch: int = 1,
    warmup: int = 3, runs: int = 10, frontend_macs: float | None = None, controller_steps: int = 2000,
) -> list[SqueezeRow]:  # fmt: skip
    """Encoder latency and MACs of one stochastic (any-factor) encoder at several squeeze factors.

    ``frontend_macs``: first prune the front end's channels to that fraction of its MACs (the pruning budget
    controller alone on random weights, :func:`nemo_sew.bench.prune.controller_shape`; the blocks are kept)."""
    sampler = {"low": 1.0, "high": max(4.0, max(factors))}
    if frontend_macs is None:
        enc = build_encoder(preset, squeeze_sampler=sampler).eval()
    else:
        from nemo_sew.bench.prune import controller_shape
        from nemo_sew.prune.materialize import materialize_encoder

        pruning = {"units": ["frontend"], "budget": "sepmac", "target_frontend": frontend_macs, "target_transformer": 1.0,
                   "warmup_steps": 100}  # fmt: skip
        masked = build_encoder(preset, squeeze_sampler=sampler, pruning=pruning)
        controller_shape(masked, controller_steps)
        enc = materialize_encoder(masked.eval()).eval()
    x = torch.randn(batch, enc.layout.feat_in, enc.layout.length(seconds)) * 0.1
    lengths = torch.full((batch,), x.shape[-1], dtype=torch.int64)
    rows = []
    for s in factors:
        enc.set_profile(CompressionProfile(squeeze=float(s)))
        gmacs = encoder_gmacs_per_second(enc, seconds=seconds)
        lat = statistics.median(timed_ms(lambda: enc(audio_signal=x, length=lengths), warmup, runs))
        rows.append(SqueezeRow(float(s), gmacs, lat))
    return rows


def squeeze_markdown(rows: list[SqueezeRow], preset: str, seconds: float, command: str, frontend_macs: float | None = None) -> str:
    base = rows[0]
    pruned = "" if frontend_macs is None else f", front end pruned to {frontend_macs:.0%} of its MACs"
    lines = [
        f"### Squeeze speed-up: `{preset}`{pruned}, {seconds:g} s of audio, batch 1, fp32 eager",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}",
        "",
        "| squeeze | encoder GMACs / s audio | median latency (ms) | MACs ratio vs first | latency ratio vs first | latency ratio / MACs ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        mac_ratio = base.gmacs_per_s / r.gmacs_per_s
        lat_ratio = base.latency_ms / r.latency_ms
        lines.append(
            f"| {r.squeeze:g} | {r.gmacs_per_s:.3f} | {r.latency_ms:.1f} | {mac_ratio:.2f}x | {lat_ratio:.2f}x | {lat_ratio / mac_ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


__all__ = ["SqueezeRow", "bench_squeeze", "squeeze_markdown"]
