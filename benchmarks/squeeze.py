"""``nemo-sew bench squeeze``: encoder latency and MACs of one stochastic encoder across squeeze factors.

    nemo-sew bench squeeze --preset sew_small --seconds 10 --factors 1 2 4

Latency is the median of ``runs`` timed forwards after ``warmup`` untimed ones, the factors interleaved in
rounds (:func:`nemo_sew.measure.interleaved_ms`), all in one process, so ratios between rows of one run
are the numbers to quote. ``channels_first`` adds the same factors with the front end and positional conv in
their channels-first form (:data:`nemo_sew.nn.frontend.CHANNELS_LAST` off), timed in the same rounds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import torch

from benchmarks.report import machine_line
from nemo_sew.evaluate import encoder_gmacs_per_second
from nemo_sew.encoder import build_encoder
from nemo_sew.measure import interleaved_ms
from nemo_sew.profile import CompressionProfile


@dataclass
class SqueezeRow:
    squeeze: float
    gmacs_per_s: float
    latency_ms: float
    form: str = "channels-last"


def bench_squeeze(
    preset: str = "sew_small", factors: Sequence[float] = (1, 2, 4), seconds: float = 10.0, batch: int = 1,
    warmup: int = 3, runs: int = 10, frontend_macs: float | None = None, controller_steps: int = 2000,
    threads: int | None = None, channels_first: bool = False, onednn_linear: bool = False,
) -> list[SqueezeRow]:  # fmt: skip
    """Encoder latency and MACs of one stochastic (any-factor) encoder at several squeeze factors.

    ``frontend_macs``: first prune the front end's channels to that fraction of its MACs (the pruning budget
    controller alone on random weights, :func:`benchmarks.prune.controller_shape`; the blocks are kept).
    ``threads``: torch intra-op threads (default: torch's). ``channels_first``: also time every factor with
    the channels-first front end (rows with ``form`` ``channels-first``). ``onednn_linear``: the encoder's
    ``nn.Linear`` layers through oneDNN (:func:`nemo_sew.nn.onednn.use_onednn_linear`)."""
    from nemo_sew.nn import frontend

    if threads is not None:
        torch.set_num_threads(threads)
    sampler = {"low": 1.0, "high": max(4.0, max(factors))}
    if frontend_macs is None:
        enc = build_encoder(preset, squeeze_sampler=sampler).eval()
    else:
        from benchmarks.prune import controller_shape
        from nemo_sew.prune.materialize import materialize_encoder

        pruning = {"units": ["frontend"], "budget": "sepmac", "target_frontend": frontend_macs, "target_transformer": 1.0,
                   "warmup_steps": 100}  # fmt: skip
        masked = build_encoder(preset, squeeze_sampler=sampler, pruning=pruning)
        controller_shape(masked, controller_steps)
        enc = materialize_encoder(masked.eval()).eval()
    if onednn_linear:
        from nemo_sew.nn.onednn import use_onednn_linear

        use_onednn_linear(enc)
    x = torch.randn(batch, enc.layout.feat_in, enc.layout.length(seconds)) * 0.1
    lengths = torch.full((batch,), x.shape[-1], dtype=torch.int64)
    forms = {"channels-last": True} if not channels_first else {"channels-first": False, "channels-last": True}
    gmacs, fns = {}, {}
    for s in factors:
        enc.set_profile(CompressionProfile(squeeze=float(s)))
        gmacs[float(s)] = encoder_gmacs_per_second(enc, seconds=seconds)
        for form, cl in forms.items():

            def call(s: float = float(s), cl: bool = cl) -> None:
                frontend.CHANNELS_LAST = cl
                enc.set_profile(CompressionProfile(squeeze=s))
                enc(audio_signal=x, length=lengths)

            fns[(form, float(s))] = call
    try:
        times = interleaved_ms(fns, warmup, runs)
    finally:
        frontend.CHANNELS_LAST = True
    return [SqueezeRow(s, gmacs[s], statistics.median(times[(form, s)]), form) for form, s in fns]


def squeeze_markdown(rows: list[SqueezeRow], preset: str, seconds: float, command: str, frontend_macs: float | None = None,
                     goal: float | None = 0.9, onednn_linear: bool = False) -> str:  # fmt: skip
    pruned = "" if frontend_macs is None else f", front end pruned to {frontend_macs:.0%} of its MACs"
    pruned += ", Linear layers through oneDNN" if onednn_linear else ""
    forms = list(dict.fromkeys(r.form for r in rows))
    lines = [
        f"### Squeeze speed-up: `{preset}`{pruned}, {seconds:g} s of audio, batch 1, fp32 eager",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        "Factors (and front-end forms) timed in interleaved rounds in one process; medians; one run.",
        "",
        "| front end form | squeeze | encoder GMACs / s audio | median latency (ms) | MACs ratio vs first | latency ratio vs first | latency ratio / MACs ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    verdicts = []
    for form in forms:
        mine = [r for r in rows if r.form == form]
        base = mine[0]
        for r in mine:
            mac_ratio = base.gmacs_per_s / r.gmacs_per_s
            lat_ratio = base.latency_ms / r.latency_ms
            lines.append(
                f"| {form} | {r.squeeze:g} | {r.gmacs_per_s:.3f} | {r.latency_ms:.1f} | {mac_ratio:.2f}x | {lat_ratio:.2f}x | {lat_ratio / mac_ratio:.2f} |"
            )
        last = mine[-1]
        score = (base.latency_ms / last.latency_ms) / (base.gmacs_per_s / last.gmacs_per_s)
        if goal is not None and len(mine) > 1:
            met = "met" if score >= goal else "not met"
            verdicts.append(f"{form}: squeeze {last.squeeze:g} latency ratio / MACs ratio {score:.2f} (goal >= {goal:g}): **{met}**")
    if len(forms) > 1:
        for s in dict.fromkeys(r.squeeze for r in rows):
            t = {r.form: r.latency_ms for r in rows if r.squeeze == s}
            verdicts.append(f"squeeze {s:g}: {forms[-1]} / {forms[0]} latency {t[forms[-1]] / t[forms[0]]:.2f}")
    if verdicts:
        lines += [""] + [f"- {v}" for v in verdicts]
    return "\n".join(lines) + "\n"


__all__ = ["SqueezeRow", "bench_squeeze", "squeeze_markdown"]
