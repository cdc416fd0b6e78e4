"""``nemo-sew bench ssl-stochastic``: the stochastic-squeeze model in the seed's own setting, pre-trained with the
squeeze sampler on and then fine-tuned, against models pre-trained and fine-tuned at one fixed factor (trains models).

    nemo-sew bench ssl-stochastic --pretrain-steps 1200 --labelled-minutes 20 --finetune-steps 1000 \\
        --factors 1 2 4 --seeds 0 1 --write BENCHMARKS.md

Runs, all on the same corpus, pre-training recipe, targets and fine-tuning recipe:

- **no pre-training**: per factor s, the same fine-tuning from random weights (``random_init``);
- **fixed**: per factor s, pre-train at s, fine-tune at s, test at s (the reference of its column);
- **stochastic pre-training**: pre-train once with the squeeze sampler (each step draws s from
  ``sampler_values``; a factor-agnostic expander returns 20 ms), then
  - fine-tune at each s with the sampler off (one model per factor), test at s;
  - fine-tune once with the sampler on (``finetune_method``, :mod:`nemo_sew.stochastic`), test at every s:
    one model for every budget.

Pre-training runs once per model (seed 0); fine-tuning runs once per seed in ``seeds`` (cells: mean ± half the
range). Every run is kept in ``out_dir/<run>/result.json`` (fine-tuned models in ``model.nemo`` beside it) and reused (:mod:`benchmarks.cache`), so seeds
or factors can run as separate processes on one ``--out``. Cost at the defaults on one CPU thread (tiny_mel
conformer, 3.5 h corpus, 3-4 such jobs sharing 2 cores; ``bench ssl-curve``'s runs): about 25 min per 1200-step
pre-training, 15 min per 1000-step fine-tuning, 2.5-3.7x that for the sandwich fine-tuning (its measured step
cost); 4 + 3 x 3 + 1 runs per seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from benchmarks.report import machine_line, mean_spread
from benchmarks.ssl_curve import finetune_ctc, labelled_subset, pretrain_ssl


def bench_ssl_stochastic(
    data_dir: str | Path,
    out_dir: str | Path,
    objective: str = "hubert",
    pretrain_steps: int = 1200,
    labelled_minutes: float = 20.0,
    finetune_steps: int = 1000,
    factors: Sequence[int] = (1, 2, 4),
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    finetune_method: str = "sandwich",
    seeds: Sequence[int] = (0,),
    clusters: int = 100,
    pretrain_recipe: str | Path = "recipes/ssl_tiny_mel.yaml",
    finetune_recipe: str | Path = "recipes/ctc_char_finetune_tiny_mel.yaml",
    hours: float = 3.5,
    extra_pretrain: Sequence[str] = (),
    extra_finetune: Sequence[str] = (),
    command: str = "",
    splits: dict | None = None,
    random_init: bool = True,
) -> str:
    """The table (a markdown section); raw results in ``out_dir/bench_ssl_stochastic.json``.

    ``objective``: ``hubert`` (iteration 1, one k-means on MFCC shared by every pre-training) or ``wav2vec2``.
    ``random_init``: also fine-tune from random weights at each s (the row that says whether pre-training pays).
    ``splits``: an already prepared corpus (:func:`manifests.synthetic.prepare_synthetic`'s return value)
    instead of ``data_dir``.
    """
    from manifests.synthetic import prepare_synthetic

    from nemo_sew.stochastic import method_config, method_override

    if objective not in ("hubert", "wav2vec2"):
        raise ValueError(f"objective: expected 'hubert' or 'wav2vec2', got {objective!r}")
    method_config(finetune_method)  # an unknown name: ValueError naming the known ones
    if pretrain_steps <= 0 or finetune_steps <= 0 or not factors or not seeds:
        raise ValueError("expected positive pretrain_steps and finetune_steps, and at least one factor and one seed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    train_manifest, dev, test = (str(splits[k]["manifest"]) for k in ("train", "dev", "test"))
    labelled, labelled_seconds = labelled_subset(train_manifest, labelled_minutes, out_dir / f"labelled_{labelled_minutes:g}min.json")
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    features = "mfcc" if objective == "hubert" else None

    def pretrain(name: str, overrides: list[str]) -> dict:
        return pretrain_ssl(out_dir / f"pretrain_{name}", pretrain_recipe, [pretrain_steps], train_manifest, dev,
                            features, None, clusters, [*overrides, *extra_pretrain], kmeans_dir=out_dir / "kmeans")  # fmt: skip

    def fixed_at(s: int) -> list[str]:
        return [f"++model.encoder.arch.compressor.squeeze={s}", f"model.profile.squeeze={s}"]

    pre = {f"fixed_s{s}": pretrain(f"fixed_s{s}", fixed_at(s)) for s in factors}
    pre["stochastic"] = pretrain("stochastic", ["++model.encoder.arch.expander=phase",
                                                f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}, seed: 0}}"])  # fmt: skip

    def finetune(name: str, init: str | None, seed: int, overrides: list[str], at: Sequence[int]) -> dict:
        return finetune_ctc(out_dir / f"ft_{name}_seed{seed}", finetune_recipe, init, labelled, dev, test,
                            finetune_steps, seed, [*overrides, *extra_finetune], factors=list(at), save=True)  # fmt: skip

    stochastic = pre["stochastic"]["nemo"][str(pretrain_steps)]
    rows: dict[str, dict[int, list[dict]]] = {}  # row -> factor -> {"wer", "cer"} per seed
    for seed in seeds:
        runs: dict[str, dict[int, dict]] = {}  # row -> factor -> this seed's fine-tuning run tested at that factor
        for s in factors:
            if random_init:  # is pre-training worth it at all here: the same fine-tuning from random weights
                runs.setdefault("no pre-training (random initialisation), fine-tuned at s", {})[s] = finetune(
                    f"random_s{s}", None, seed, fixed_at(s), [s])  # fmt: skip
            runs.setdefault("fixed pre-training and fine-tuning at s", {})[s] = finetune(
                f"fixed_s{s}", pre[f"fixed_s{s}"]["nemo"][str(pretrain_steps)], seed, [f"model.profile.squeeze={s}"], [s])  # fmt: skip
            runs.setdefault("stochastic pre-training, fine-tuned at s (sampler off)", {})[s] = finetune(
                f"stochastic_at_s{s}", stochastic, seed, ["++model.encoder_overrides.squeeze_sampler=null",
                                                          f"model.profile.squeeze={s}"], [s])  # fmt: skip
        one = finetune(f"stochastic_{finetune_method}", stochastic, seed, [method_override(finetune_method, "++")], factors)  # fmt: skip
        runs[f"stochastic pre-training, {finetune_method} fine-tuning (one model)"] = {s: one for s in factors}
        for row, per_factor in runs.items():
            for s, r in per_factor.items():
                rows.setdefault(row, {}).setdefault(s, []).append({k: r[k][str(s)] for k in ("wer", "cer")})
    (out_dir / "bench_ssl_stochastic.json").write_text(json.dumps({"pretrain": pre, "finetune": rows}, indent=2) + "\n")

    def mean(runs: list[dict], key: str) -> float:
        return sum(r[key] for r in runs) / len(runs)

    reference = rows["fixed pre-training and fine-tuning at s"]
    lines = [
        f"### Stochastic squeeze pre-trained, then fine-tuned, vs fixed squeeze ({objective}, synthetic corpus)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Pre-training: `{pretrain_recipe}`, {objective}, {pretrain_steps} steps on all {hours:g} h of training audio "
        f"(no labels), seed 0, one run per model: fixed at each s, and stochastic (squeeze ~ U{values} per step, phase "
        "expander); " + ", ".join(f"{name} {p['minutes']:.1f} min" for name, p in pre.items()) + "  ",
        f"Fine-tuning: `{finetune_recipe}`, {finetune_steps} steps on the first {labelled_minutes:g} min "
        f"({labelled_seconds / 60:.1f} min) of labelled training audio, seeds {list(seeds)}; test = held-out voices "
        "and sentences. Cells: test WER / CER, mean over seeds ± half their range; in brackets: WER relative to the "
        "fixed row at that factor.",
        "",
        "| pre-training, fine-tuning | " + " | ".join(f"s={s}: WER / CER" for s in factors) + " |",
        "|---|" + "---|" * len(factors),
    ]  # fmt: skip
    for name, per_factor in rows.items():
        cells = []
        for s in factors:
            runs = per_factor[s]
            rel = "" if per_factor is reference else f" ({mean(runs, 'wer') / mean(reference[s], 'wer') - 1:+.1%})"
            cells.append(f"{mean_spread(r['wer'] for r in runs)} / {mean_spread(r['cer'] for r in runs)}{rel}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


__all__ = ["bench_ssl_stochastic"]
