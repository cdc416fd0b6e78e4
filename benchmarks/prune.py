"""``nemo-sew bench prune``: measured CPU latency of a pruned encoder vs the unpruned one, next to its MACs.

    nemo-sew bench prune --preset w2v2_base --target 0.5 --budget sepmac --write BENCHMARKS.md

The pruned *shape* comes from the Lagrangian controller alone on random weights (:func:`controller_shape`: no
task loss, so which units go is decided by the budget and the initial noise, not by importance); this measures
whether a structure pruned to ``target`` of the MACs runs in ``target`` of the time, not its accuracy (that
needs training: ``recipes/prune_*.yaml``). Both encoders run at batch 1 on ``seconds`` of audio, fp32 eager,
timed in interleaved rounds (:func:`nemo_sew.measure.interleaved_ms`). Issue 12's goal on a wav2vec 2.0
base-shaped model at 50% of the MACs: latency <= 0.55 x the unpruned model's.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.report import machine_line
from nemo_sew.cost import encoder_cost, encoder_params
from nemo_sew.encoder import SqueezeEncoder, build_encoder
from nemo_sew.measure import interleaved_ms
from nemo_sew.prune.masks import optimizer_groups
from nemo_sew.prune.materialize import materialize_encoder


def controller_shape(encoder: SqueezeEncoder, max_steps: int = 2000, tolerance: float = 0.01) -> dict[str, float]:
    """Run the budget controller alone on a masked encoder (no forward passes) until every group's deterministic
    cost is within ``tolerance`` (relative) of its target after the warm-up, or ``max_steps``. Returns the
    groups' realised kept fractions."""
    pruning = encoder.pruning
    targets = pruning.options.targets()
    opt = torch.optim.AdamW(optimizer_groups(encoder, [], pruning), lr=pruning.options.reg_lr)
    flush = torch.set_flush_denormal(True)  # saturated logits give denormal Adam moments (very slow on CPU)
    fractions: dict[str, float] = {}
    try:
        for step in range(max_steps):
            opt.zero_grad()
            penalty, _ = pruning.penalty(step)
            penalty.backward()
            opt.step()
            if step >= pruning.options.warmup_steps and step % 10 == 0:
                fractions = realised(pruning)
                if all(abs(fractions[g] - targets[g]) <= tolerance * targets[g] for g in fractions):
                    break
    finally:
        torch.set_flush_denormal(False)
    del flush
    return realised(pruning)


def realised(pruning) -> dict[str, float]:
    dense = pruning.dense_costs()
    return {g: float(v) / dense[g] for g, v in pruning.group_costs(expected=False).items() if g in pruning.group_names}


@dataclass
class PruneLatency:
    preset: str
    seconds: float
    budget: str
    target: float
    fractions: dict[str, float]
    dense_ms: float
    pruned_ms: float
    dense_gmacs: float
    pruned_gmacs: float
    dense_params: float
    pruned_params: float
    runs: int
    shape: dict[str, Any] = field(default_factory=dict)
    onednn_linear: bool = False
    channels_first_ms: dict[str, float] = field(default_factory=dict)  # {"dense": ms, "pruned": ms} when timed

    @property
    def mac_ratio(self) -> float:
        return self.pruned_gmacs / self.dense_gmacs

    @property
    def latency_ratio(self) -> float:
        return self.pruned_ms / self.dense_ms


def bench_prune(
    preset: str = "w2v2_base", target: float = 0.5, budget: str = "sepmac", seconds: float = 10.0,
    warmup: int = 2, runs: int = 10, seed: int = 0, units: tuple[str, ...] = ("frontend", "heads", "ffn", "conv"),
    max_steps: int = 2000, threads: int | None = None, channels_first: bool = False, onednn_linear: bool = False,
) -> PruneLatency:  # fmt: skip
    """Batch-1 eager latency and MACs of ``preset`` vs the same encoder pruned to ``target`` of its ``budget``.

    ``threads``: torch intra-op threads (default: torch's). ``channels_first``: also time both encoders with
    the channels-first front end and positional conv (:data:`nemo_sew.nn.frontend.CHANNELS_LAST` off), in the
    same rounds. ``onednn_linear``: both encoders' ``nn.Linear`` layers through oneDNN
    (:func:`nemo_sew.nn.onednn.use_onednn_linear`)."""
    from nemo_sew.nn import frontend

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    masked = build_encoder(preset, pruning={"units": list(units), "budget": budget, "target": target, "warmup_steps": 100})
    fractions = controller_shape(masked, max_steps)
    dense = build_encoder(preset).eval()
    dense.load_state_dict({k: v for k, v in masked.state_dict().items() if not k.startswith("pruning.")})
    pruned = materialize_encoder(masked.eval()).eval()
    if onednn_linear:
        from nemo_sew.nn.onednn import use_onednn_linear

        use_onednn_linear(dense)
        use_onednn_linear(pruned)
    n = dense.layout.length(seconds)
    x = torch.randn(1, dense.layout.feat_in, n) * 0.1
    lengths = torch.tensor([n])
    def call(enc: SqueezeEncoder, cl: bool):
        def run() -> None:
            frontend.CHANNELS_LAST = cl
            enc.run(x, lengths)

        return run

    fns = {"dense": call(dense, True), "pruned": call(pruned, True)}
    if channels_first:
        fns.update({"dense_cf": call(dense, False), "pruned_cf": call(pruned, False)})
    try:
        times = interleaved_ms(fns, warmup, runs)
    finally:
        frontend.CHANNELS_LAST = True
    a, b = dense.arch, pruned.arch
    return PruneLatency(
        preset=preset, seconds=seconds, budget=budget, target=target, fractions=fractions,
        dense_ms=statistics.median(times["dense"]), pruned_ms=statistics.median(times["pruned"]),
        dense_gmacs=float(encoder_cost(a, None, n).total) / 1e9, pruned_gmacs=float(encoder_cost(b, None, n).total) / 1e9,
        dense_params=float(encoder_params(a)["total"]) / 1e6, pruned_params=float(encoder_params(b)["total"]) / 1e6,
        runs=len(times["dense"]), onednn_linear=onednn_linear,
        channels_first_ms={k[:-3]: statistics.median(v) for k, v in times.items() if k.endswith("_cf")},
        shape={"frontend_channels": [c for c, _, _ in b.frontend.conv_layers],
               "heads": [s.heads for s in b.blocks], "ffn": [list(s.ffn_dims) for s in b.blocks]},
    )  # fmt: skip


def prune_markdown(r: PruneLatency, command: str, goal: float | None = 0.55, saving_goal: float = 0.85) -> str:
    verdict = ""
    if goal is not None:
        met = "met" if r.latency_ratio <= goal else "not met"
        verdict = f" (goal <= {goal:.2f} x at 50% of the MACs, issue 12): **{met}**"
    saving = (1 - r.latency_ratio) / max(1 - r.mac_ratio, 1e-9)
    saving_met = "met" if saving >= saving_goal else "not met"
    cf = r.channels_first_ms
    extra = []
    if cf:
        extra = [
            f"| unpruned, channels-first front end | {r.dense_gmacs:.2f} | {r.dense_params:.1f} | {cf['dense']:.1f} |",
            f"| pruned, channels-first front end | {r.pruned_gmacs:.2f} | {r.pruned_params:.1f} | {cf['pruned']:.1f} |",
        ]
        cf_ratio = cf["pruned"] / cf["dense"]
    groups = ", ".join(f"{g} {v:.1%}" for g, v in r.fractions.items())
    return "\n".join([
        f"### Pruned vs unpruned: eager CPU latency, `{r.preset}` (random weights), {r.seconds:g} s, batch 1"
        + (", Linear layers through oneDNN" if r.onednn_linear else ""),
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Shape from the `{r.budget}` budget controller alone at target {r.target:g} (no task loss: measures the "
        f"speed of the structure, not accuracy); realised kept fraction per budget group: {groups}; median of "
        f"{r.runs} interleaved timed rounds each; one run.",
        "",
        "| model | encoder GMACs | params (M) | median latency (ms) |",
        "|---|---|---|---|",
        f"| unpruned | {r.dense_gmacs:.2f} | {r.dense_params:.1f} | {r.dense_ms:.1f} |",
        f"| pruned | {r.pruned_gmacs:.2f} | {r.pruned_params:.1f} | {r.pruned_ms:.1f} |",
        *extra,
        "",
        f"MACs ratio {r.mac_ratio:.3f}, latency ratio {r.latency_ratio:.3f}{verdict}. Latency saving / MAC saving: "
        f"{saving:.2f} (goal >= {saving_goal:g}, issue 12): **{saving_met}**."
        + (f" With the channels-first front end (same rounds): latency ratio {cf_ratio:.3f}, saving / MAC saving "
           f"{(1 - cf_ratio) / max(1 - r.mac_ratio, 1e-9):.2f}." if cf else ""),
        "",
        f"Pruned shape: front-end channels {r.shape['frontend_channels']}; heads {r.shape['heads']}; "
        f"FFN {[f[0] if len(f) == 1 else f for f in r.shape['ffn']]}.",
        "",
    ])  # fmt: skip


__all__ = ["PruneLatency", "bench_prune", "controller_shape", "prune_markdown"]
