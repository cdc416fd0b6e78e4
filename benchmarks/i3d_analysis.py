"""``nemo-sew bench i3d-analysis``: does a trained I3D model's depth depend on its input? (issue 11, item 7)

    nemo-sew bench i3d-analysis outputs/i3d.nemo --manifest data/synthetic/test.json \\
        --out benchmarks/i3d_analysis --write BENCHMARKS.md

The paper's claim to check: depth really depends on the input; it is not one fixed pattern. On every
utterance of ``manifest``, alone, at the model's profile (or ``--threshold``):

* ``gates.png``: mean gate-open probability per layer and branch (heat map);
* ``depth.png``: realised depth per utterance against its duration and its speaking rate (characters / s);
* ``depth_noise.png``: realised depth of the first ``--noise-utterances`` utterances with white noise added
  at each ``--snr`` (dB), against the noise level: the one input property this benchmark controls.

The section reports the mean and standard deviation of depth (our bar for issue 11's claim check "depth depends on the input": std > 0.5 layer), the number
of distinct gate patterns, the rank correlation of depth with duration and speaking rate, and depth per noise
level; ``analysis.json`` beside the pictures has every number.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from benchmarks.i3d import _pyplot, gate_matrix, plot_depth_scatter, plot_gate_heatmap, utterance_gate_stats
from benchmarks.report import machine_line


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation with average ranks for ties (depth takes few values); NaN if constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        _, inverse = np.unique(v, return_inverse=True)
        return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]  # mean rank of each tie group

    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def add_noise(wav: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """``wav`` plus white Gaussian noise at ``snr_db`` (signal power over noise power, in dB)."""
    power = wav.float().pow(2).mean().clamp_min(1e-10)
    noise = torch.randn(wav.shape, generator=generator) * torch.sqrt(power / 10 ** (snr_db / 10))
    return wav + noise.to(wav.dtype)


def noisy_depths(model, manifest: str | Path, snr_db: float | None, count: int, seed: int = 0) -> dict[str, list]:
    """Realised depth and gate probabilities of the first ``count`` utterances of ``manifest`` with white
    noise at ``snr_db`` (None: clean), each alone, at the active profile (the same noise per utterance and seed)."""
    from manifests.audio import load_audio
    from nemo_sew.evaluate import read_manifest

    param = next(model.parameters())
    sample_rate = int(model.cfg.get("sample_rate", 16000))
    out: dict[str, list] = {"depth": [], "gate_probs": []}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for k, entry in enumerate(read_manifest(manifest)[:count]):
                wav, _ = load_audio(entry["audio_filepath"], expected_sample_rate=sample_rate)
                audio = torch.as_tensor(wav)[None]
                if snr_db is not None:
                    audio = add_noise(audio, snr_db, torch.Generator().manual_seed(seed * 100003 + k))
                audio = audio.to(param.device)
                length = torch.tensor([audio.shape[1]], device=param.device)
                signal, signal_len = model.preprocessor(input_signal=audio, length=length)
                stats = model.encoder.run(signal, signal_len).plain_stats()
                out["depth"].append(float(stats["depth"][0]))
                out["gate_probs"].append([float(p) for p in stats["gate_probs"][0]])
    finally:
        model.train(was_training)
    return out


def _patterns(gate_probs: Sequence[Sequence[float]], threshold: float) -> Counter:
    return Counter(tuple(int(p > threshold) for p in row) for row in gate_probs)


def plot_depth_noise(levels: Sequence[Mapping[str, Any]], path: str | Path, title: str, layers: int) -> Path:
    """Realised depth per utterance (dots) and its mean ± std (bars) at each noise level, clean on the left."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    rng = np.random.default_rng(0)
    for x, level in enumerate(levels):
        depth = np.asarray(level["depth"], dtype=float)
        ax.scatter(x + rng.uniform(-0.15, 0.15, size=depth.size), depth, s=10, alpha=0.35, color="tab:blue")
        ax.errorbar(x, depth.mean(), yerr=depth.std(), fmt="o", color="black", capsize=4)
    ax.set_xticks(range(len(levels)), [lv["label"] for lv in levels])
    ax.set_xlabel("added white noise")
    ax.set_ylabel("realised depth (layers)")
    ax.set_ylim(-0.1 * layers, 1.1 * layers)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def analyse_i3d(
    model,
    manifest: str | Path,
    out_dir: str | Path,
    threshold: float | None = None,
    snrs: Sequence[float] = (20.0, 10.0, 5.0, 0.0),
    noise_utterances: int = 60,
    seed: int = 0,
    model_name: str = "",
    max_utterances: int | None = None,
) -> dict[str, Any]:
    """The pictures and numbers of the module docstring for ``model`` on ``manifest`` (its first
    ``max_utterances`` utterances, if given); writes ``out_dir``."""
    from nemo_sew.profile import CompressionProfile

    encoder = model.encoder
    if getattr(encoder, "gate_options", None) is None:
        raise ValueError("i3d-analysis needs a model whose encoder has I3D gates")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if max_utterances is not None:
        with tempfile.TemporaryDirectory() as tmp:
            from nemo_sew.evaluate import read_manifest

            subset = Path(tmp) / "subset.json"  # audio paths resolved, so the copy may live anywhere
            subset.write_text("".join(json.dumps(e) + "\n" for e in read_manifest(manifest)[: int(max_utterances)]))
            result = analyse_i3d(model, subset, out_dir, threshold, snrs, noise_utterances, seed, model_name)
        result.update(manifest=str(manifest), max_utterances=int(max_utterances))
        (out_dir / "analysis.json").write_text(json.dumps(result, indent=2))
        return result
    profile = None if threshold is None else {**encoder.profile.to_dict(), "depth_threshold": float(threshold)}
    with model.profile_scope(None if profile is None else CompressionProfile.from_dict(profile)):
        t = encoder.depth_threshold(encoder.profile)
        stats = utterance_gate_stats(model, manifest)
        levels = [{"label": "clean", "snr_db": None, **noisy_depths(model, manifest, None, noise_utterances, seed)}]
        for snr in snrs:
            levels.append({"label": f"{snr:g} dB", "snr_db": float(snr),
                           **noisy_depths(model, manifest, float(snr), noise_utterances, seed)})  # fmt: skip
    layers = encoder.arch.num_layers
    label = model_name or "I3D"
    figures = [
        plot_gate_heatmap(stats, out_dir / "gates.png",
                          f"{label}: mean gate-open probability ({len(stats['depth'])} utt., threshold {t:g})"),
        plot_depth_scatter(stats, out_dir / "depth.png", f"{label} (threshold {t:g})"),
        plot_depth_noise(levels, out_dir / "depth_noise.png",
                         f"{label}: depth vs added noise (first {len(levels[0]['depth'])} utt., threshold {t:g})", layers),
    ]  # fmt: skip
    depth = np.asarray(stats["depth"], dtype=float)
    duration = np.asarray(stats["duration"], dtype=float)
    rate = np.asarray(stats["chars"], dtype=float) / np.maximum(duration, 1e-6)
    patterns = _patterns(stats["gate_probs"], t)
    matrix, branches = gate_matrix(stats)
    result = {
        "manifest": str(manifest),
        "threshold": t,
        "gates": {k: getattr(encoder.gate_options, k)
                  for k in ("kind", "tau", "tau_final", "budget", "target", "penalty", "per_utterance")},  # fmt: skip
        "layers": layers,
        "utterances": int(depth.size),
        "depth_mean": float(depth.mean()),
        "depth_std": float(depth.std()),
        "depth_min": float(depth.min()),
        "depth_max": float(depth.max()),
        "depth": [float(d) for d in depth],
        "duration": [float(d) for d in duration],
        "speaking_rate": [float(r) for r in rate],
        "patterns": len(patterns),
        "top_pattern_share": patterns.most_common(1)[0][1] / max(1, depth.size),
        "spearman_duration": spearman(depth, duration),
        "spearman_rate": spearman(depth, rate),
        "gate_matrix": matrix,
        "branches": branches,
        "noise": [{"label": lv["label"], "snr_db": lv["snr_db"], "depth_mean": float(np.mean(lv["depth"])),
                   "depth_std": float(np.std(lv["depth"])), "depth": lv["depth"]} for lv in levels],  # fmt: skip
        "figures": [str(f) for f in figures],
        "out_dir": str(out_dir),
        "seconds": time.perf_counter() - started,
    }
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2))
    return result


def analysis_markdown(result: Mapping[str, Any], command: str = "", model_name: str = "") -> str:
    """The ``BENCHMARKS.md`` section of an :func:`analyse_i3d` result (pictures linked from ``out_dir``)."""
    out = result["out_dir"]
    g = result["gates"]
    verdict = "met" if result["depth_std"] > 0.5 else "not met"
    lines = [
        f"### I3D analysis: does depth depend on the input? ({model_name or 'I3D'}, threshold {result['threshold']:g})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}; one run, {result['seconds']:.0f} s  ",
        f"Gates: {g['kind']}, tau {g['tau']:g}" + (f" annealed to {g['tau_final']:g}" if g.get("tau_final") else "")
        + f", budget {g['budget']} target {g['target']:g} ({g.get('penalty', 'square')}"
        + (", per utterance); " if g.get("per_utterance") else "); ")
        + f"{result['utterances']} utterances of `{result['manifest']}`"
        + (" (the first ones)" if result.get("max_utterances") else "") + ", each alone",
        "",
        f"- Realised depth: mean {result['depth_mean']:.2f} of {result['layers']} layers, std **{result['depth_std']:.3f}** "
        f"(range {result['depth_min']:.2f}-{result['depth_max']:.2f}); our bar for 'depth depends on the input' (issue 11's claim check), std > 0.5 layer: **{verdict}**.",
        f"- Distinct gate patterns: {result['patterns']} (the most common one on {result['top_pattern_share']:.0%} of the utterances).",
        f"- Spearman correlation of depth with duration {result['spearman_duration']:+.2f}, with speaking rate "
        f"{result['spearman_rate']:+.2f}"
        + (" (NaN: depth is constant)." if math.isnan(result["spearman_duration"]) or math.isnan(result["spearman_rate"]) else "."),
        "",
        "| added white noise | utterances | depth mean | depth std |",
        "|---|---|---|---|",
    ]
    for lv in result["noise"]:
        lines.append(f"| {lv['label']} | {len(lv['depth'])} | {lv['depth_mean']:.2f} | {lv['depth_std']:.3f} |")
    lines += [
        "",
        f"![gate-open probability per layer and branch]({out}/gates.png)",
        f"![depth vs duration and speaking rate]({out}/depth.png)",
        f"![depth vs added noise]({out}/depth_noise.png)",
    ]
    return "\n".join(lines) + "\n"


__all__ = ["add_noise", "analyse_i3d", "analysis_markdown", "noisy_depths", "plot_depth_noise", "spearman"]
