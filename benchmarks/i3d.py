"""``nemo-sew bench i3d``: I3D dynamic depth vs static depth at equal training steps (trains models).

    nemo-sew bench i3d --steps 1500 --write BENCHMARKS.md --out outputs/bench_i3d

On the synthetic corpus, every model trained for ``steps`` steps:

* the full-depth demo model (``recipes/ctc_char_tiny_mel.yaml``);
* I3D with local and with global gate predictors (``recipes/i3d_tiny_mel.yaml``, ``gates.kind``);
* a static model pruned layer by layer from the trained full-depth one: remove the layer whose removal
  raises dev CER least (:func:`drop_layer`), fine-tune ``prune_finetune_steps``, repeat until the layer count
  is I3D local's mean realised depth on dev, rounded (:func:`prune_layers`);
* a model of that depth trained from the start (the demo recipe with ``num_layers=N``).

Each is evaluated on the test split (WER, CER, realised depth, encoder GMACs per utterance, MAC saving vs
full depth), the I3D models also at several inference thresholds. Next to ``bench_i3d.json`` in ``out_dir``
go the pictures: mean gate-open probability per layer and branch (``gates_<model>.png``) and realised depth
per test utterance against duration and speaking rate (``depth_<model>.png``).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from benchmarks.report import machine_line

log = logging.getLogger("benchmarks.i3d")

DATA_KEYS = ("train_ds", "validation_ds", "test_ds")


# --------------------------------------------------------------------------------------------------
# static layer pruning


def _without_index(values: Any, index: int, n: int) -> Any:
    """A per-layer list with entry ``index`` removed (other values unchanged)."""
    if isinstance(values, (list, tuple)) and len(values) == n:
        return [v for i, v in enumerate(values) if i != index]
    return values


def _profile_without_layer(profile: Mapping[str, Any] | None, index: int, n: int) -> Mapping[str, Any] | None:
    if not profile:
        return profile
    return {k: _without_index(v, index, n) if k in ("q_pool", "kv_pool") else v for k, v in profile.items()}


def drop_layer(model, index: int):
    """A new model like ``model`` without encoder layer ``index``: the remaining layers keep their weights (and
    order), everything else (front end, compressor, expander, CTC head, config, profile) is unchanged.

    The encoder arch is ``model.encoder.arch`` with ``blocks[index]`` dropped; per-layer pooling strides in
    the model's profiles lose that entry. Models with a global I3D gate predictor (one output per gate) are
    refused. The returned model is in eval mode, without a trainer.
    """
    from omegaconf import OmegaConf, open_dict

    encoder = model.encoder
    arch = encoder.arch
    n = arch.num_layers
    if not 0 <= index < n:
        raise IndexError(f"layer {index} out of range: the encoder has {n} layers")
    if n == 1:
        raise ValueError("cannot drop the only layer of the encoder")
    if getattr(encoder, "gate_predictor", None) is not None:
        raise ValueError("drop_layer does not handle a global I3D gate predictor (one output per gate slot)")
    kept = [i for i in range(n) if i != index]
    cfg = OmegaConf.to_container(model.cfg, resolve=True)
    data = {k: cfg.get(k) for k in DATA_KEYS}
    cfg.update({k: None for k in DATA_KEYS})  # no data loaders for a candidate; restored below
    cfg["encoder"] = {k: v for k, v in cfg["encoder"].items() if k != "preset"}
    cfg["encoder"]["arch"] = arch.replace(blocks=tuple(arch.blocks[i] for i in kept)).to_dict()
    cfg["profile"] = _profile_without_layer(cfg.get("profile"), index, n)
    if cfg.get("profiles"):
        cfg["profiles"] = {name: _profile_without_layer(p, index, n) for name, p in cfg["profiles"].items()}
    pruned = type(model)(cfg=OmegaConf.create(cfg))

    prefix = "encoder.layers."
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            layer, _, rest = key[len(prefix) :].partition(".")
            if int(layer) == index:
                continue
            key = f"{prefix}{kept.index(int(layer))}.{rest}"
        state[key] = value
    pruned.load_state_dict(state, strict=True)
    with open_dict(pruned._cfg):
        for key, value in data.items():
            pruned._cfg[key] = value
    return pruned.to(next(model.parameters()).device).eval()


def dev_cer(model, manifest: str | Path, batch_size: int = 16) -> float:
    """Corpus CER of greedy transcripts of ``manifest``."""
    from nemo_sew.evaluate import error_rates, transcribe_manifest

    hyps, refs = transcribe_manifest(model, manifest, batch_size=batch_size)
    return float(error_rates(hyps, refs)[1])


def prune_layers(
    model,
    target_layers: int,
    dev_manifest: str | Path,
    finetune: Callable[[Any, int], Any] | None = None,
) -> tuple[Any, list[dict]]:
    """Iterative layer pruning: while the encoder has more than ``target_layers`` layers, remove the one whose
    removal raises dev CER least (every candidate is tried), then ``finetune(model, step)`` (returns the
    fine-tuned model; None = no fine-tuning).

    Returns the pruned model and one record per removal: the removed layer (0-based, original numbering),
    every candidate's dev CER, and dev CER before and after fine-tuning.
    """
    if target_layers < 1:
        raise ValueError(f"expected target_layers >= 1, got {target_layers}")
    origin = list(range(model.encoder.arch.num_layers))
    trace: list[dict] = []
    step = 0
    while len(origin) > target_layers:
        step += 1
        candidates = {}
        best, best_cer, best_i = None, math.inf, 0
        for i in range(len(origin)):
            candidate = drop_layer(model, i)
            cer = dev_cer(candidate, dev_manifest)
            candidates[origin[i]] = cer
            log.info("prune step %d: without layer %d (original numbering) dev CER %.4f", step, origin[i], cer)
            if best is None or cer < best_cer:
                best, best_cer, best_i = candidate, cer, i
        removed = origin.pop(best_i)
        model = best
        after = best_cer
        if finetune is not None:
            model = finetune(model, step)
            after = dev_cer(model, dev_manifest)
        trace.append({"step": step, "removed": removed, "layers": len(origin), "candidates_dev_cer": candidates,
                      "dev_cer_before_finetune": best_cer, "dev_cer_after_finetune": after})  # fmt: skip
        log.info("prune step %d: removed layer %d -> %d layers, dev CER %.4f (%.4f after fine-tuning)",
                 step, removed, len(origin), best_cer, after)  # fmt: skip
    return model, trace


# --------------------------------------------------------------------------------------------------
# per-utterance gate statistics and the pictures


def utterance_gate_stats(model, manifest: str | Path, profile=None) -> dict[str, Any]:
    """:func:`nemo_sew.evaluate.gated_utterance_stats` at ``profile`` (None = the active one)."""
    from nemo_sew.evaluate import gated_utterance_stats

    if getattr(model.encoder, "gate_options", None) is None:
        raise ValueError("utterance_gate_stats needs an encoder built with I3D gates")
    with model.profile_scope(profile):
        return gated_utterance_stats(model, manifest)


def gate_matrix(stats: Mapping[str, Any]) -> tuple[list[list[float]], list[str]]:
    """Mean gate-open probability per layer (rows) and branch (columns, in the order the layers run them)
    over the utterances of :func:`utterance_gate_stats`; NaN where a layer has no such branch."""
    slots = [(int(i), str(name)) for i, name in stats["slots"]]
    branches: list[str] = []
    for _, name in slots:
        if name not in branches:
            branches.append(name)
    layers = max(i for i, _ in slots) + 1 if slots else 0
    probs = torch.tensor(stats["gate_probs"], dtype=torch.float64).reshape(-1, len(slots))  # (U, G)
    matrix = [[math.nan] * len(branches) for _ in range(layers)]
    for k, (i, name) in enumerate(slots):
        column = probs[:, k]
        column = column[~torch.isnan(column)]
        matrix[i][branches.index(name)] = float(column.mean()) if column.numel() else math.nan
    return matrix, branches


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_gate_heatmap(stats: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Heat map of :func:`gate_matrix` (layers top to bottom, branches left to right), values written in."""
    import numpy as np

    plt = _pyplot()
    matrix, branches = gate_matrix(stats)
    values = np.array(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(branches) + 2.2, 0.55 * len(matrix) + 1.6))
    image = ax.imshow(np.ma.masked_invalid(values), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if not np.isnan(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(branches)), branches)
    ax.set_yticks(range(len(matrix)), [f"layer {i + 1}" for i in range(len(matrix))])
    ax.set_xlabel("branch")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean gate-open probability")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_depth_scatter(stats: Mapping[str, Any], path: str | Path, title: str) -> Path:
    """Realised depth per utterance against its duration and its speaking rate (characters / second); the
    standard deviation of depth over the utterances in the title."""
    import numpy as np

    plt = _pyplot()
    depth = np.array(stats["depth"], dtype=float)
    duration = np.array(stats["duration"], dtype=float)
    rate = np.array(stats["chars"], dtype=float) / np.maximum(duration, 1e-6)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, x, label in ((axes[0], duration, "utterance duration (s)"), (axes[1], rate, "speaking rate (characters / s)")):
        ax.scatter(x, depth, s=14, alpha=0.6, color="tab:blue")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("realised depth (layers)")
    layers = max((int(i) for i, _ in stats.get("slots", [])), default=-1) + 1
    if layers:
        axes[0].set_ylim(-0.1 * layers, 1.1 * layers)  # the whole range, so that models compare at a glance
    std = float(depth.std()) if depth.size else math.nan
    fig.suptitle(f"{title}: depth std {std:.3f} layers over {depth.size} utterances", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# the benchmark


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _layers(n: int) -> str:
    return f"{n} layer" if n == 1 else f"{n} layers"


def _row(name: str, kind: str, result, layers: int, steps: int) -> dict[str, Any]:
    depth = list(result.depth_per_utterance)
    mean = float(result.depth_mean) if result.depth_mean is not None else float(layers)
    std = statistics.pstdev(depth) if depth else 0.0
    return {"name": name, "kind": kind, "layers": layers, "steps": steps, "wer": float(result.wer),
            "cer": float(result.cer), "depth_mean": mean, "depth_std": std,
            "encoder_gmacs_mean": float(result.encoder_gmacs_mean), "params_m": float(result.params_m),
            "profile": result.profile}  # fmt: skip


def bench_i3d(
    splits: Mapping[str, Mapping[str, Any]],
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    i3d_recipe: str | Path = "recipes/i3d_tiny_mel.yaml",
    finetune_recipe: str | Path | None = None,
    steps: int = 1500,
    prune_finetune_steps: int = 300,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    prune_to: int | None = None,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """Train and evaluate the five models (see the module docstring); write ``bench_i3d.json``, the ``.nemo``
    files and the pictures in ``out_dir``; return the JSON's content.

    Args:
        splits: ``{"train": {"manifest": ...}, "dev": ..., "test": ...}`` (``manifests.synthetic.prepare_synthetic``).
        finetune_recipe: the pruned model's fine-tuning recipe (default ``finetune_profile.yaml`` next to ``recipe``).
        prune_to: the pruned / shallow models' layer count (default: I3D local's mean realised depth on dev,
            rounded, at least 1).
        extra: overrides for every training run (``++model.encoder.arch.d_model=64``, ...).
    """
    from nemo_sew.evaluate import evaluate, gated_utterance_stats
    from nemo_sew.profile import CompressionProfile
    from nemo_sew.train import load_config, train

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    finetune_recipe = Path(finetune_recipe or Path(recipe).parent / "finetune_profile.yaml")
    train_manifest, dev, test = (str(splits[k]["manifest"]) for k in ("train", "dev", "test"))
    common = [
        f"model.train_ds.manifest_filepath={train_manifest}", f"model.validation_ds.manifest_filepath={dev}",
        f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "exp_manager.create_checkpoint_callback=false", *extra,
    ]  # fmt: skip

    def fit(path: str | Path, name: str, overrides: Sequence[str] = ()):
        log.info("training %s", name)
        return train(load_config(path, [*common, *overrides, f"exp_manager.exp_dir={out_dir / 'runs' / name}",
                                        f"save_to={out_dir / f'{name}.nemo'}"]))  # fmt: skip

    full = fit(recipe, "full")
    full_layers = full.encoder.arch.num_layers
    gated = {kind: fit(i3d_recipe, f"i3d_{kind}", [f"model.encoder.gates.kind={kind}"]) for kind in ("local", "global")}

    dev_depth = gated_utterance_stats(gated["local"], dev)["depth"]
    dev_depth_mean = sum(dev_depth) / len(dev_depth)
    target = prune_to if prune_to is not None else min(full_layers, max(1, _round_half_up(dev_depth_mean)))
    if not 1 <= target <= full_layers:
        raise ValueError(f"expected 1 <= prune_to <= {full_layers} (the full model's layers), got {target}")
    log.info("I3D local: mean realised depth on dev %.3f -> pruning to %d layers", dev_depth_mean, target)

    def finetune(model, step: int):
        layers = model.encoder.arch.num_layers
        src = out_dir / "prune" / f"step{step}_{layers}_layers.nemo"
        src.parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(src))
        if prune_finetune_steps <= 0:
            return model
        return train(load_config(finetune_recipe, [
            *common, f"init_from_nemo={src}", f"profile.squeeze={model.encoder.squeeze}",
            f"trainer.max_steps={prune_finetune_steps}", f"exp_manager.exp_dir={out_dir / 'runs' / f'prune_step{step}'}",
        ]))  # fmt: skip

    full_dev_cer = dev_cer(full, dev)
    pruned, trace = prune_layers(full, target, dev, finetune)
    pruned_path = out_dir / f"pruned_{target}.nemo"
    pruned.save_to(str(pruned_path))
    if target == full_layers:
        scratch, scratch_path = full, out_dir / "full.nemo"  # the same config and steps: not trained twice
    else:
        scratch = fit(recipe, f"scratch_{target}", [f"++model.encoder.arch.num_layers={target}"])
        scratch_path = out_dir / f"scratch_{target}.nemo"

    pruned_steps = steps + len(trace) * max(prune_finetune_steps, 0)
    models = [
        (f"full depth ({full_layers} layers)", "full", full, steps),
        ("I3D local", "i3d_local", gated["local"], steps),
        ("I3D global", "i3d_global", gated["global"], steps),
        (f"pruned to {_layers(target)} (iterative)", "pruned", pruned, pruned_steps),
        (f"{_layers(target)} from scratch", "scratch", scratch, steps),
    ]
    rows = []
    for name, kind, model, n_steps in models:
        log.info("evaluating %s on %s", name, test)
        rows.append(_row(name, kind, evaluate(model, test), model.encoder.arch.num_layers, n_steps))
    full_gmacs = rows[0]["encoder_gmacs_mean"]
    for r in rows:
        r["mac_saving"] = 1.0 - r["encoder_gmacs_mean"] / full_gmacs if full_gmacs else math.nan

    threshold_rows, utterances, figures = [], {}, []
    for kind, model in gated.items():
        name = f"I3D {kind}"
        for t in thresholds:
            r = _row(name, f"i3d_{kind}", evaluate(model, test, profile=CompressionProfile(depth_threshold=float(t))),
                     model.encoder.arch.num_layers, steps)  # fmt: skip
            r["threshold"] = float(t)
            r["mac_saving"] = 1.0 - r["encoder_gmacs_mean"] / full_gmacs if full_gmacs else math.nan
            threshold_rows.append(r)
        stats = utterance_gate_stats(model, test)
        matrix, branches = gate_matrix(stats)
        stats["gate_matrix"], stats["branches"] = matrix, branches
        utterances[f"i3d_{kind}"] = stats
        threshold = model.encoder.depth_threshold(model.profile)
        figures.append(str(plot_gate_heatmap(
            stats, out_dir / f"gates_i3d_{kind}.png",
            f"{name}: mean gate-open probability, test ({len(stats['depth'])} utt., threshold {threshold:g})")))
        figures.append(str(plot_depth_scatter(stats, out_dir / f"depth_i3d_{kind}.png", f"{name} (threshold {threshold:g})")))

    gates = gated["local"].encoder.gate_options
    result = {
        "steps": steps,
        "prune_finetune_steps": prune_finetune_steps,
        "recipe": str(recipe),
        "i3d_recipe": str(i3d_recipe),
        "finetune_recipe": str(finetune_recipe),
        "extra": list(extra),
        "gates": {"threshold": gates.threshold, "budget": gates.budget, "target": gates.target, "weight": gates.weight},
        "full_layers": full_layers,
        "i3d_local_dev_depth_mean": dev_depth_mean,
        "target_layers": target,
        "prune_to_given": prune_to is not None,
        "scratch_is_full": target == full_layers,
        "full_dev_cer": full_dev_cer,
        "prune_trace": trace,
        "models": {kind: str(out_dir / f"{kind}.nemo") for kind in ("full", "i3d_local", "i3d_global")}
        | {"pruned": str(pruned_path), "scratch": str(scratch_path)},
        "test_utterances": len(utterances["i3d_local"]["depth"]),
        "rows": rows,
        "threshold_rows": threshold_rows,
        "utterances": utterances,
        "figures": figures,
        "out_dir": str(out_dir),
        "minutes": (time.perf_counter() - started) / 60,
    }
    (out_dir / "bench_i3d.json").write_text(json.dumps(result, indent=2))
    return result


def _depth(r: Mapping[str, Any]) -> str:
    if r["kind"].startswith("i3d"):
        return f"{r['depth_mean']:.2f} ± {r['depth_std']:.2f}"
    return f"{r['layers']}"


def i3d_markdown(result: Mapping[str, Any], command: str = "") -> str:
    """The ``BENCHMARKS.md`` section of a :func:`bench_i3d` result."""
    g = result["gates"]
    steps, target = result["steps"], result["target_layers"]
    trace = result["prune_trace"]
    removed = ", ".join(str(t["removed"]) for t in trace) or "none"
    how = (f"`--prune-to {target}`" if result["prune_to_given"]
           else f"round(I3D local's mean realised depth on dev = {result['i3d_local_dev_depth_mean']:.2f})")  # fmt: skip
    lines = [
        f"### I3D dynamic depth vs static depth (synthetic corpus, {steps} steps each)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipes: `{result['recipe']}` (full depth, {_layers(result['full_layers'])}; the {target}-layer model from "
        f"scratch), `{result['i3d_recipe']}` (I3D, gates kind local / global, budget {g['budget']}, target "
        f"{g['target']}, weight {g['weight']}); extra overrides: {' '.join(result['extra']) or 'none'}; "
        f"test = held-out voices and sentences ({result['test_utterances']} utterances)  ",
        f"Pruning: from the trained full-depth model (dev CER {result['full_dev_cer']:.3f}), remove the layer whose "
        f"removal raises dev CER least, fine-tune {result['prune_finetune_steps']} steps "
        f"(`{result['finetune_recipe']}`), repeat until {_layers(target)} remain ({how}); removed layers (0-based, "
        f"original numbering): {removed}; so the pruned model trained {steps} + {len(trace)} x "
        f"{result['prune_finetune_steps']} steps in all  ",
        *([f"The {target}-layer model from scratch is the full-depth model (same config and steps, trained once).  "]
          if result.get("scratch_is_full") else []),
        f"One run each (one seed, no repeats): differences of a few percent are within run-to-run noise; "
        f"{result['minutes']:.1f} min for the whole benchmark.",
        "",
        "| model | layers run (mean ± std per utt.) | test WER | test CER | encoder GMACs / utt. | MAC saving vs full | params (M) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['name']} | {_depth(r)} | {r['wer']:.3f} | {r['cer']:.3f} | {r['encoder_gmacs_mean']:.4f} | "
                     f"{r['mac_saving']:+.1%} | {r['params_m']:.2f} |")  # fmt: skip
    lines += [
        "",
        f"I3D at inference thresholds (`CompressionProfile(depth_threshold=t)`; the models' default is {g['threshold']:g}):",
        "",
        "| model | threshold | layers run (mean ± std) | test WER | test CER | encoder GMACs / utt. | MAC saving vs full |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["threshold_rows"]:
        lines.append(f"| {r['name']} | {r['threshold']:g} | {_depth(r)} | {r['wer']:.3f} | {r['cer']:.3f} | "
                     f"{r['encoder_gmacs_mean']:.4f} | {r['mac_saving']:+.1%} |")  # fmt: skip
    stds = ", ".join(f"{k.replace('i3d_', 'I3D ')} {statistics.pstdev(v['depth']) if v['depth'] else math.nan:.3f}"
                     for k, v in result["utterances"].items())  # fmt: skip
    lines += [
        "",
        "Encoder GMACs from the analytic cost model (nemo_sew.cost) on each test utterance's real length; I3D: "
        "depth and MACs realised per utterance from its own gate decisions (a layer counts 1 when all its branches "
        f"run). Standard deviation of realised depth over test utterances: {stds} layers. Pictures in "
        f"`{result['out_dir']}`: mean gate-open probability per layer and branch (`gates_i3d_<kind>.png`), realised "
        "depth per test utterance against duration and speaking rate (`depth_i3d_<kind>.png`).",
    ]
    return "\n".join(lines) + "\n"


def bench_i3d_table(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    i3d_recipe: str | Path = "recipes/i3d_tiny_mel.yaml",
    steps: int = 1500,
    prune_finetune_steps: int = 300,
    thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    prune_to: int | None = None,
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
    splits: Mapping[str, Mapping[str, Any]] | None = None,
) -> str:
    """Prepare the synthetic corpus in ``data_dir`` (unless ``splits`` is given), run :func:`bench_i3d` and
    return the markdown section (:func:`i3d_markdown`)."""
    if splits is None:
        from manifests.synthetic import prepare_synthetic

        splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    result = bench_i3d(
        splits, out_dir, recipe=recipe, i3d_recipe=i3d_recipe, steps=steps, prune_finetune_steps=prune_finetune_steps,
        thresholds=thresholds, prune_to=prune_to, extra=extra,
    )  # fmt: skip
    return i3d_markdown(result, command)


__all__ = [
    "bench_i3d",
    "bench_i3d_table",
    "drop_layer",
    "gate_matrix",
    "i3d_markdown",
    "plot_depth_scatter",
    "plot_gate_heatmap",
    "prune_layers",
    "utterance_gate_stats",
]
