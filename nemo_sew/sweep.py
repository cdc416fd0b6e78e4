"""The compute dial: evaluate a model at every named profile, then pick one for a latency or RTFx target.

    nemo-sew sweep model.nemo --manifest data/synthetic/test.json --profiles recipes/profiles/stochastic.yaml --out outputs/sweep
    nemo-sew pick outputs/sweep/sweep.json --max-latency-ms 40 [--model model.nemo --write model_fast.nemo]
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from nemo_sew.errors import UserError
from nemo_sew.evaluate import EvalResult, Latency, evaluate, forward_call, latency_from
from nemo_sew.measure import NOISY_SPREAD
from nemo_sew.profile import CompressionProfile

log = logging.getLogger("nemo_sew.sweep")


def pareto_front(rows: list[dict]) -> list[dict]:
    """Rows not dominated in (WER, latency): no other row is at least as good in both and better in one."""
    front = []
    for r in rows:
        dominated = any(
            o["wer"] <= r["wer"] and o["latency_ms_10s"] <= r["latency_ms_10s"]
            and (o["wer"] < r["wer"] or o["latency_ms_10s"] < r["latency_ms_10s"])
            for o in rows
        )  # fmt: skip
        if not dominated:
            front.append(r)
    return sorted(front, key=lambda r: r["latency_ms_10s"])


def _bits(bits: int | None) -> str:
    """A weight width as a table shows it: ``fp`` for full precision (16 in a profile), else the bits."""
    return "fp" if bits in (None, 16) else str(bits)


def _latency(row: dict) -> str:
    """``123.4 ±5%``; a spread above :data:`NOISY_SPREAD` is marked ``(noisy)``."""
    spread = row.get("latency_spread")
    if spread is None:  # a sweep.json written before spreads were kept
        return f"{row['latency_ms_10s']:.1f}"
    return f"{row['latency_ms_10s']:.1f} ±{spread / 2:.0%}" + (" (noisy)" if spread > NOISY_SPREAD else "")


def _markdown(rows: list[dict], command: str) -> str:
    front = {r["name"] for r in pareto_front(rows)}
    lines = [
        f"Command: `{command}`",
        "",
        "| profile | squeeze | q_pool | kv_pool | threshold | depth | weight bits | WER | CER | encoder GMACs/s | "
        "GMACs / utt. | latency 10 s (ms) | RTFx | Pareto |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    trt_cols = sorted({k for r in rows for k in r if k.startswith(("trt_p50_ms_b", "trt_rtfx_b"))})
    if trt_cols:  # joined from trt/bench_engines.py (join_engines)
        lines[2] = lines[2][:-len(" Pareto |")] + "".join(f" {c} |" for c in trt_cols) + " engine MB | TRT parity | Pareto |"
        lines[3] = "|---" * (14 + len(trt_cols) + 2) + "|"
    for r in rows:
        p = r["profile"]
        if trt_cols:
            extra = "".join(f" {r.get(c, '-') if r.get(c) is not None else '-'} |" for c in trt_cols)
            extra += f" {r.get('trt_engine_mb', '-')} | {r.get('trt_parity', '-')} |"
        else:
            extra = ""
        lines.append(
            f"| {r['name']} | {p['squeeze']} | {p['q_pool'] or '-'} | {p['kv_pool'] or '-'} | "
            f"{'-' if p.get('depth_threshold') is None else p['depth_threshold']} | "
            f"{'-' if r.get('depth_mean') is None else format(r['depth_mean'], '.2f')} | "
            f"{_bits(p.get('weight_bits', 16))} | {r['wer']:.3f} | "
            f"{r['cer']:.3f} | {r['encoder_gmacs_per_s']:.3f} | {r.get('encoder_gmacs_mean', 0.0):.3f} | "
            f"{_latency(r)} | {r['rtfx']:.0f} |{extra} "
            f"{'*' if r['name'] in front else ''} |"
        )
    lines += ["", "Encoder GMACs from the analytic cost model (nemo_sew.cost) on each test utterance's real length: "
              "GMACs/s = total MACs / total seconds of test audio; GMACs / utt. = mean per utterance. Gated (I3D) "
              "models: MACs and depth (layers run, a layer = all its branches) realised per utterance from its own "
              "gate decisions.",
              "", "Latency: median of the model's forward on 10 s of noise at batch 1, every profile timed in the same "
              "interleaved rounds; ± half the interquartile range; (noisy): the range exceeds "
              f"{NOISY_SPREAD:.0%} of the median (other work shared the machine: compare such rows with care)."]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["latency_ms_10s"] for r in rows], [r["wer"] for r in rows], color="tab:blue", label="profiles")
    for r in rows:
        ax.annotate(r["name"], (r["latency_ms_10s"], r["wer"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    front = pareto_front(rows)
    ax.plot([r["latency_ms_10s"] for r in front], [r["wer"] for r in front], "--", color="tab:red", label="Pareto front")
    ax.set_xlabel("median latency, 10 s of audio, batch 1 (ms)")
    ax.set_ylabel("WER")
    ax.set_title("WER vs latency per compression profile")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_rows(
    model,
    manifest: str | Path,
    profiles: Mapping[str, CompressionProfile],
    batch_size: int = 16,
    max_utterances: int | None = None,
    source: str | None = None,
    latency_runs: int = 7,
) -> list[dict]:
    """Evaluate ``model`` at every profile: one row per profile (its name and :class:`EvalResult` fields). A
    profile the model cannot run (a factor its expander cannot produce, bits it does not hold, ...) is skipped
    with one warning naming the profile, ``source`` (the profile file) and the reason."""
    if not profiles:
        raise UserError("expected at least one profile to sweep")
    rows = []
    for name, profile in profiles.items():
        try:
            with model.profile_scope(profile):  # can the model run it? (the scope restores the active profile)
                pass
        except (UserError, NotImplementedError) as err:
            log.warning("sweep: skipping profile %s%s: %s", name, f" of {source}" if source else "", " ".join(str(err).split()))
            continue
        log.info("sweep: profile %s (%s)", name, profile)
        result: EvalResult = evaluate(model, manifest, batch_size=batch_size, profile=profile,
                                      max_utterances=max_utterances, latency=False)  # fmt: skip
        rows.append({"name": name, **asdict(result)})
        log.info("sweep: %s WER %.3f CER %.3f", name, result.wer, result.cer)
    if not rows:
        raise UserError(f"none of the {len(profiles)} profiles{' of ' + source if source else ''} can run on this model "
                        "(see the warnings above)")  # fmt: skip
    timed = interleaved_latencies(model, {r["name"]: profiles[r["name"]] for r in rows}, runs=latency_runs)
    for row in rows:
        lat = timed[row["name"]]
        row.update(latency_ms_10s=lat.median_ms, rtfx=lat.rtfx, latency_spread=lat.spread)
        log.info("sweep: %s latency %.1f ms (spread %.0f%%)", row["name"], lat.median_ms, 100 * lat.spread)
    noisy = [r["name"] for r in rows if r["latency_spread"] > NOISY_SPREAD]
    if noisy:
        log.warning("sweep: the latencies of %s spread more than %.0f%% (interquartile range / median): the machine "
                    "was busy, so they and the Pareto front may be off; re-run on a quiet machine, or pick by "
                    "--max-gmacs (machine-independent)", ", ".join(noisy), 100 * NOISY_SPREAD)  # fmt: skip
    return rows


def interleaved_latencies(
    model, profiles: Mapping[str, CompressionProfile], runs: int = 7, warmup: int = 1, seconds: float = 10.0
) -> dict[str, Latency]:
    """Batch-1 latency of the model's forward at each profile, timed in rounds that run every profile once
    (:func:`nemo_sew.measure.interleaved_ms`): a change of load during the sweep hits every profile alike,
    instead of the profiles that happened to be timed then (what decided a Pareto front once)."""
    from nemo_sew.measure import interleaved_ms

    call, sync = forward_call(model, seconds)
    was_training = model.training
    model.eval()

    def at(profile: CompressionProfile):
        def run():
            with model.profile_scope(profile):
                return call()

        return run

    try:
        times = interleaved_ms({name: at(p) for name, p in profiles.items()}, warmup, runs, sync=sync)
    finally:
        model.train(was_training)
    return {name: latency_from(samples, 1, seconds) for name, samples in times.items()}


def join_engines(rows: list[dict], bench_json: str | Path) -> list[dict]:
    """Add each profile's TensorRT numbers from ``trt/bench_engines.py --out`` (its ``rows``, matched by profile
    name) to sweep rows: ``trt_p50_ms_b<batch>`` and ``trt_rtfx_b<batch>`` at the longest timed duration,
    ``trt_engine_mb`` and ``trt_parity`` (max abs difference against onnxruntime). Rows without an engine are
    left as they are; engine rows for profiles the sweep does not have are ignored."""
    engines = json.loads(Path(bench_json).read_text()).get("rows", [])
    by_profile: dict[str, list[dict]] = {}
    for e in engines:
        if e.get("profile") and "skipped" not in e:
            by_profile.setdefault(str(e["profile"]), []).append(e)
    out = []
    for row in rows:
        row = dict(row)
        found = by_profile.get(str(row.get("name")), [])
        if found:
            longest = max(e["seconds"] for e in found)
            for e in (e for e in found if e["seconds"] == longest):
                row[f"trt_p50_ms_b{e['batch']}"] = e.get("p50_ms")
                row[f"trt_rtfx_b{e['batch']}"] = e.get("rtfx")
            row["trt_engine_mb"] = found[0].get("engine_mb")
            parities = [e["parity_vs_onnxruntime"] for e in found if e.get("parity_vs_onnxruntime") is not None]
            row["trt_parity"] = max(parities) if parities else None
            row["trt_seconds"] = longest
        out.append(row)
    return out


def write_sweep(rows: list[dict], out_dir: str | Path, command: str = "") -> None:
    """``sweep.json``, ``sweep.md`` (the table) and ``pareto.png`` (WER vs latency) of ``rows`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sweep.json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    (out_dir / "sweep.md").write_text(_markdown(rows, command))
    _plot(rows, out_dir / "pareto.png")


def sweep(
    model,
    manifest: str | Path,
    profiles: Mapping[str, CompressionProfile],
    out_dir: str | Path,
    batch_size: int = 16,
    command: str = "",
    engines: str | Path | None = None,
    max_utterances: int | None = None,
    source: str | None = None,
    latency_runs: int = 7,
) -> list[dict]:
    """Evaluate ``model`` at every profile; write ``sweep.json``, ``sweep.md`` and ``pareto.png`` in ``out_dir``.
    ``engines``: a ``trt/bench_engines.py --out`` JSON whose per-profile TensorRT numbers join the rows;
    ``max_utterances``, ``source``: see :func:`sweep_rows`."""
    rows = sweep_rows(model, manifest, profiles, batch_size, max_utterances=max_utterances, source=source)
    if engines is not None:
        rows = join_engines(rows, engines)
    write_sweep(rows, out_dir, command)
    return rows


def pick(
    sweep_json: str | Path,
    max_latency_ms: float | None = None,
    min_rtfx: float | None = None,
    max_gmacs: float | None = None,
) -> dict:
    """The Pareto-front row with the best WER that meets the latency or RTFx target; or, with ``max_gmacs`` (encoder
    GMACs per second of audio: a property of the model, not of the machine that timed it), the best-WER row
    within that compute."""
    if sum(t is not None for t in (max_latency_ms, min_rtfx, max_gmacs)) != 1:
        raise UserError("give exactly one target: max_latency_ms, min_rtfx or max_gmacs")
    path = Path(sweep_json)
    if path.is_dir():
        path = path / "sweep.json"
    rows = json.loads(path.read_text())["rows"]
    if max_gmacs is not None:
        within = [r for r in rows if r["encoder_gmacs_per_s"] <= max_gmacs]
        if not within:
            cheapest = min(rows, key=lambda r: r["encoder_gmacs_per_s"])
            raise UserError(f"no profile runs within {max_gmacs} encoder GMACs/s; the cheapest is {cheapest['name']} "
                            f"({cheapest['encoder_gmacs_per_s']:.3f})")  # fmt: skip
        return min(within, key=lambda r: (r["wer"], r["encoder_gmacs_per_s"]))
    ok = [
        r for r in pareto_front(rows)
        if (max_latency_ms is None or r["latency_ms_10s"] <= max_latency_ms) and (min_rtfx is None or r["rtfx"] >= min_rtfx)
    ]  # fmt: skip
    if not ok:
        target = f"latency <= {max_latency_ms} ms" if max_latency_ms is not None else f"RTFx >= {min_rtfx}"
        fastest = min(rows, key=lambda r: r["latency_ms_10s"])
        raise UserError(
            f"no measured profile meets {target}; the fastest is {fastest['name']} "
            f"({fastest['latency_ms_10s']:.1f} ms, RTFx {fastest['rtfx']:.0f})"
        )
    chosen = min(ok, key=lambda r: (r["wer"], r["latency_ms_10s"]))
    noisy = [r["name"] for r in pareto_front(rows) if r.get("latency_spread", 0.0) > NOISY_SPREAD]
    if noisy:
        log.warning("pick: the latencies of %s were noisy (spread > %.0f%%): the choice of %s may differ on a quiet "
                    "machine; --max-gmacs does not depend on the machine", ", ".join(noisy), 100 * NOISY_SPREAD,
                    chosen["name"])  # fmt: skip
    return chosen


def write_default_profile(model_path: str | Path, row: dict, out_path: str | Path) -> Path:
    """Save a copy of the model whose default profile (``cfg.profile``) is the picked row's."""
    from nemo_sew.safe_load import restore

    model = restore(model_path)
    fields = {k: v for k, v in row["profile"].items() if k != "name"}
    model.set_profile(CompressionProfile.from_dict({**fields, "name": row["name"]}))
    model.save_to(str(out_path))
    return Path(out_path)
