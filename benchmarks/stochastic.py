"""``nemo-sew bench stochastic``: fixed-squeeze models vs one stochastic model at equal steps (trains models);
with ``--methods``, the stochastic training methods (:mod:`nemo_sew.stochastic`) at equal steps and at equal
wall-clock time, over several seeds.

    nemo-sew bench stochastic --write BENCHMARKS.md
    nemo-sew bench stochastic --methods uniform sandwich inplace_distill weighted --steps 800 --seeds 0 1 --write BENCHMARKS.md
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from benchmarks.cache import file_digest, kept_result
from benchmarks.report import machine_line, mean_spread


def bench_stochastic_table(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    steps: int = 800,
    finetune_steps: int = 200,
    fixed: Sequence[int] = (1, 2, 4),
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
) -> str:
    """The mini paper table: fixed-squeeze models vs one stochastic model at equal steps, then fine-tuned.

    Every model uses ``recipe`` with ``trainer.max_steps=steps`` and no time limit; the stochastic one
    draws its squeeze from ``sampler_values`` each step and is evaluated at every fixed factor; then it
    is fine-tuned for ``finetune_steps`` at s = 2 (``recipes/finetune_profile.yaml``).
    """
    from manifests.synthetic import prepare_synthetic

    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.train import load_config, train

    out_dir = Path(out_dir)
    splits = prepare_synthetic(data_dir, hours=hours, seed=0)
    common = [
        f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}",
        f"trainer.max_steps={steps}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
        "exp_manager.create_checkpoint_callback=false", *extra,
    ]  # fmt: skip
    test = splits["test"]["manifest"]

    def wer_at(model, s: float) -> float:
        hyps, refs = transcribe_manifest(model, test, profile=s)
        return error_rates(hyps, refs)[0]

    fixed_wer = {}
    for s in fixed:
        cfg = load_config(recipe, [*common, f"++model.encoder.arch.compressor.squeeze={s}", f"model.profile.squeeze={s}",
                                   f"exp_manager.exp_dir={out_dir / f'fixed_s{s}'}"])  # fmt: skip
        fixed_wer[s] = wer_at(train(cfg), s)
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    stoch_path = out_dir / "stochastic.nemo"
    cfg = load_config(recipe, [*common, "++model.encoder.arch.expander=phase",
                               f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}}}",
                               f"exp_manager.exp_dir={out_dir / 'stochastic'}", f"save_to={stoch_path}"])  # fmt: skip
    stochastic = train(cfg)
    stoch_wer = {s: wer_at(stochastic, s) for s in fixed}
    ft_cfg = load_config(
        Path(recipe).parent / "finetune_profile.yaml",
        [*common, f"init_from_nemo={stoch_path}", "profile.squeeze=2", f"trainer.max_steps={finetune_steps}",
         f"exp_manager.exp_dir={out_dir / 'finetuned_s2'}"],
    )  # fmt: skip
    ft_wer = wer_at(train(ft_cfg), 2)

    lines = [
        f"### Stochastic squeeze vs fixed squeeze (synthetic corpus, {steps} steps each)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipe: `{recipe}`; stochastic sampler: squeeze ~ U{values}; test = held-out voices and sentences",
        "",
        "| squeeze | fixed model WER | stochastic model WER | relative | stochastic fine-tuned at s=2 ({} steps) | relative |".format(finetune_steps),
        "|---|---|---|---|---|---|",
    ]
    for s in fixed:
        rel = stoch_wer[s] / fixed_wer[s] - 1 if fixed_wer[s] else float("nan")
        ft = f"{ft_wer:.3f} | {ft_wer / fixed_wer[s] - 1:+.1%}" if s == 2 else "- | -"
        lines.append(f"| {s} | {fixed_wer[s]:.3f} | {stoch_wer[s]:.3f} | {rel:+.1%} | {ft} |")
    return "\n".join(lines) + "\n"


def bench_stochastic_methods(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    methods: Sequence[str] = ("uniform", "sandwich", "inplace_distill", "weighted"),
    steps: int = 800,
    seeds: Sequence[int] = (0, 1),
    factors: Sequence[int] = (1, 2, 4),
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    equal_time: bool = True,
    fixed: bool = True,
    finetune_steps: int = 0,
    finetune_factor: int = 2,
    cost_rounds: int = 8,
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
    splits: dict | None = None,
) -> str:
    """Stochastic training methods against fixed-squeeze models, per seed in ``seeds``:

    - every fixed model (one per factor in ``factors``) and every method trains ``steps`` steps (equal steps);
    - with ``equal_time``, every method but ``uniform`` trains again on the ``uniform`` run's time budget:
      ``steps * cost(uniform) / cost(method)`` steps, the per-step costs measured by :func:`step_times`
      (methods interleaved, so a loaded machine slows them alike; the step count, and so the weights, are
      reproducible, unlike a wall-clock budget), measured once and kept in ``out_dir/step_costs.json``;
    - with ``finetune_steps``, every method's equal-steps model is fine-tuned at ``finetune_factor``
      (``recipes/finetune_profile.yaml``) for that many steps, and so is the fixed model of that factor (the
      control: it gets the same extra steps); the fine-tuned rows are relative to that control.

    Each run's result is kept in ``out_dir/<run>_seed<seed>/result.json`` with the settings that made it, and
    reused by a later call with the same settings (so seeds can run as separate processes and then be tabulated
    together). Each cell is the test WER (then CER) at one factor, the mean over seeds ± half their range. Raw
    numbers go to ``out_dir/bench_stochastic_methods.json``. ``splits``: an already prepared corpus
    (:func:`manifests.synthetic.prepare_synthetic`'s return value) instead of ``data_dir``.
    """
    import json
    import time

    from manifests.synthetic import prepare_synthetic

    from nemo_sew.evaluate import error_rates, transcribe_manifest
    from nemo_sew.stochastic import method_config, method_override
    from nemo_sew.train import load_config, train

    for method in methods:
        method_config(method)  # an unknown name: ValueError naming the known ones, before any training
    if equal_time and "uniform" not in methods:
        raise ValueError("equal_time: the budget is the uniform run's time; expected 'uniform' among the methods")
    if finetune_steps and (not fixed or finetune_factor not in factors):
        raise ValueError(f"finetune_steps: needs the fixed models and finetune_factor ({finetune_factor}) among {list(factors)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    test = splits["test"]["manifest"]
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    data = [f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
            f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}"]  # fmt: skip

    def run(name: str, seed: int, overrides: list[str], max_steps: int, at=factors, recipe_path=recipe,
            init: str | None = None) -> dict:  # fmt: skip
        """Train (or reuse) one model; ``init``: the ``.nemo`` it starts from (its bytes are part of the key)."""
        run_dir = out_dir / f"{name}_seed{seed}"
        overrides = [*([f"init_from_nemo={init}"] if init else []), *overrides]
        settings = {"recipe": str(recipe_path), "seed": seed, "max_steps": max_steps, "max_time": None,
                    "overrides": [*data, *overrides, *extra], "factors": list(at), "test": str(test),
                    **({"init_sha256": file_digest(init)} if init else {})}  # fmt: skip

        def work() -> dict:
            cfg = load_config(recipe_path, [
                *data, f"trainer.max_steps={max_steps}", "trainer.max_time=null",
                "trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false",
                f"seed={seed}", f"exp_manager.exp_dir={run_dir}", f"save_to={run_dir / 'model.nemo'}", *overrides, *extra,
            ])  # fmt: skip
            start = time.perf_counter()
            model = train(cfg)
            seconds = time.perf_counter() - start
            wer, cer = {}, {}
            for s in at:
                hyps, refs = transcribe_manifest(model, test, profile=s)
                wer[s], cer[s] = error_rates(hyps, refs)
            return {"steps": int(model.trainer.global_step), "seconds": seconds, "wer": wer, "cer": cer,
                    "validation": getattr(model, "validation_history", [])}  # fmt: skip

        return {**kept_result(run_dir / "result.json", settings, work), "nemo": str(run_dir / "model.nemo")}

    step_steps: dict[str, int] = {}
    if equal_time:  # measured once per settings (measure before starting per-seed processes)
        cost_settings = {"recipe": str(recipe), "methods": list(methods), "rounds": cost_rounds, "warmup_rounds": 1,
                         "sampler_values": list(sampler_values), "extra": list(extra), "train": str(splits["train"]["manifest"])}  # fmt: skip
        costs = kept_result(out_dir / "step_costs.json", cost_settings,
                            lambda: step_times(splits, recipe, methods, cost_rounds, sampler_values, extra))  # fmt: skip
        step_steps = {m: max(1, round(steps * costs["uniform"] / costs[m])) for m in methods}

    results: dict[str, dict[int, dict]] = {}
    reference: dict[str, str | None] = {}  # each row's reference: "fixed" (the fixed model per factor), a row, None

    def add(row: str, seed: int, ref: str | None, result: dict) -> dict:
        results.setdefault(row, {})[seed] = result
        reference[row] = ref
        return result

    control = f"fixed s={finetune_factor} + {finetune_steps} at s={finetune_factor}"
    for seed in seeds:
        if fixed:
            for s in factors:
                add(f"fixed s={s}", seed, None, run(
                    f"fixed_s{s}", seed, [f"++model.encoder.arch.compressor.squeeze={s}", f"model.profile.squeeze={s}"],
                    steps, at=[s],
                ))  # fmt: skip
        stochastic = {method: ["++model.encoder.arch.expander=phase",
                               f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}, seed: {seed}}}",
                               method_override(method)] for method in methods}  # fmt: skip
        ref = "fixed" if fixed else None
        for method in methods:
            add(f"{method}, equal steps", seed, ref, run(method, seed, stochastic[method], steps))
        for method in methods if equal_time else ():
            if method != "uniform":
                add(f"{method}, equal time", seed, ref, run(f"{method}_time", seed, stochastic[method], step_steps[method]))
        if finetune_steps:
            finetune = Path(recipe).parent / "finetune_profile.yaml"
            # another fine-tuning length keeps its own folders: the default's (200, the recipe's max_steps) stay
            ft_suffix = "" if finetune_steps == 200 else f"_{finetune_steps}steps"
            sources = {f"fixed s={finetune_factor}": results[f"fixed s={finetune_factor}"][seed]}
            sources.update({method: results[f"{method}, equal steps"][seed] for method in methods})
            for source, r in sources.items():
                name = f"fixed_s{finetune_factor}" if source.startswith("fixed") else source
                row = f"{source} + {finetune_steps} at s={finetune_factor}"
                add(row, seed, None if row == control else control, run(
                    f"{name}_ft{finetune_factor}{ft_suffix}", seed, [f"profile.squeeze={finetune_factor}"], finetune_steps,
                    at=[finetune_factor], recipe_path=finetune, init=r["nemo"],
                ))  # fmt: skip
    (out_dir / "bench_stochastic_methods.json").write_text(json.dumps(results, indent=2, default=str) + "\n")

    def mean_of(name: str, metric: str, s: int) -> float | None:
        runs = results.get(name, {}).values()
        got = [r[metric][str(s)] for r in runs if str(s) in r[metric]]
        return sum(got) / len(got) if got else None

    budget_text = ("Equal time: the uniform run's steps times the per-step cost ratio uniform / method, measured "
                   "with the methods interleaved (`out_dir/step_costs.json`: "
                   + ", ".join(f"{m} {costs[m] / costs['uniform']:.2f}x" for m in methods) + ").") if equal_time else ""  # fmt: skip
    lines = [
        f"### Stochastic training methods vs fixed squeeze (synthetic corpus, {steps} steps; seeds {list(seeds)})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipe: `{recipe}`; sampler squeeze ~ U{values}; test = held-out voices and sentences. Equal steps: every "
        f"model {steps} steps. " + (budget_text + " " if equal_time else "")
        + (f"Fine-tuned: `recipes/finetune_profile.yaml` at s={finetune_factor} for {finetune_steps} more steps, the "
           f"fixed s={finetune_factor} model too (the control the fine-tuned rows are relative to). " if finetune_steps else "")
        + "Cells: test WER and CER, mean over seeds ± half their range"
        + ("; in brackets: relative to the fixed model at that factor." if fixed else "."),
        "",
        "| model | budget (steps, wall-clock min: mean over seeds) | " + " | ".join(f"WER s={s}" for s in factors)
        + " | " + " | ".join(f"CER s={s}" for s in factors) + " |",
        "|---|---|" + "---|" * (2 * len(factors)),
    ]  # fmt: skip
    for name, per_seed in results.items():
        runs = list(per_seed.values())
        budget_cell = f"{sum(r['steps'] for r in runs) / len(runs):.0f} steps, {sum(r['seconds'] for r in runs) / len(runs) / 60:.1f} min"
        cells = []
        for metric in ("wer", "cer"):
            for s in factors:
                got = [r[metric][str(s)] for r in runs if str(s) in r[metric]]
                if not got:
                    cells.append("-")
                    continue
                ref_row = reference[name]
                ref = mean_of(f"fixed s={s}" if ref_row == "fixed" else ref_row, metric, s) if ref_row else None
                rel = f" ({sum(got) / len(got) / ref - 1:+.1%})" if ref else ""
                cells.append(mean_spread(got) + rel)
        lines.append(f"| {name} | {budget_cell} | " + " | ".join(cells) + " |")
    converged = convergence_line(results)
    return "\n".join([*lines, *(["", converged] if converged else [])]) + "\n"


def convergence_line(results: dict[str, dict]) -> str:
    """Issue 15 item 2's criterion, a fixed model is close to converged when its validation WER is flat over the
    last 20% of its steps: how much it still moved, per fixed row and seed (``results``: row -> seed -> run with
    its ``validation`` history); empty when a run has no usable history (runs kept from before it was recorded)."""
    from nemo_sew.callbacks import plateau

    moved = []
    for name, per_seed in results.items():
        if name.startswith("fixed") and "+" not in name:
            got = [plateau(r.get("validation", [])) for r in per_seed.values()]
            if got and all(got):
                moved.append(f"{name} " + ", ".join(f"{g['from']:.3f} -> {g['to']:.3f} ({g['relative']:+.1%})" for g in got))
    if not moved:
        return ""
    return ("Validation WER over the last 20% of the steps (from the last validation at or before 80% of them to the "
            "final one; per seed): " + "; ".join(moved) + ".")  # fmt: skip


def step_times(
    splits: dict,
    recipe: str | Path,
    methods: Sequence[str],
    rounds: int,
    sampler_values: Sequence[float],
    extra: Sequence[str] = (),
    detail: dict | None = None,
) -> dict[str, float]:
    """Mean wall time (s) of one training step (loss + backward, fp32) of each method on the recipe's first
    training batch, steps ``0 .. rounds - 1`` after one untimed warm-up round, the methods interleaved round by
    round so that a loaded machine slows them alike. ``detail``: filled with the per-step times and the batch's shape."""
    import statistics
    import time

    import torch

    from nemo_sew.models.ctc import SqueezeCTCModel
    from nemo_sew.stochastic import StochasticOptions, StochasticTrainer, method_config
    from nemo_sew.train import load_config

    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    cfg = load_config(recipe, [
        f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}",
        "model.train_ds.num_workers=0", "++model.encoder.arch.expander=phase",
        f"+model.encoder.squeeze_sampler={{squeeze: {{values: {values}}}}}", *extra,
    ])  # fmt: skip
    torch.manual_seed(0)
    model = SqueezeCTCModel(cfg=cfg.model).train()  # builds its (validated) training data loader
    signal, signal_len, transcript, transcript_len = next(iter(model._train_dl))
    trainers = {m: StochasticTrainer(StochasticOptions(**method_config(m))) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for step in range(-1, rounds):  # round -1: a warm-up of every method (one-time costs), not timed
        for method in methods:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            loss = trainers[method].loss(model, signal, signal_len, transcript, transcript_len, max(step, 0))[0]
            loss.backward()
            if step >= 0:
                times[method].append(time.perf_counter() - start)
    if detail is not None:
        detail.update(times=times, batch=int(signal.shape[0]), seconds=float(signal_len.float().mean()) / 16000)
    return {m: statistics.mean(t) for m, t in times.items()}


def method_step_costs(
    data_dir: str | Path,
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    methods: Sequence[str] = ("uniform", "sandwich", "inplace_distill", "weighted"),
    rounds: int = 8,
    sampler_values: Sequence[float] = (1, 2, 3, 4),
    hours: float = 3.5,
    extra: Sequence[str] = (),
    command: str = "",
    splits: dict | None = None,
) -> str:
    """What one training step of each method costs: the wall time of its loss and backward pass on the first
    training batch of the recipe, fp32, for steps ``0 .. rounds - 1`` (so ``uniform`` and ``weighted`` run
    their drawn factors), the methods interleaved round by round so that a loaded machine slows them alike.
    The ratio to ``uniform`` is what an equal-wall-clock comparison gives each method fewer steps by."""
    import statistics

    from manifests.synthetic import prepare_synthetic

    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    values = "[" + ", ".join(str(v) for v in sampler_values) + "]"
    detail: dict = {}
    step_times(splits, recipe, methods, rounds, sampler_values, extra, detail=detail)
    times = detail["times"]
    base = statistics.mean(times[methods[0]])
    lines = [
        "### What a training step of each stochastic method costs",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"Recipe: `{recipe}`, its first training batch ({detail['batch']} utterances, {detail['seconds']:.1f} s "
        f"mean), fp32 loss + backward, steps 0-{rounds - 1} (sampler squeeze ~ U{values}), methods interleaved per step",
        "",
        f"| method | mean s / step | median s / step | cost vs {methods[0]} |",
        "|---|---|---|---|",
    ]
    for method in methods:
        mean = statistics.mean(times[method])
        lines.append(f"| {method} | {mean:.3f} | {statistics.median(times[method]):.3f} | {mean / base:.2f}x |")
    return "\n".join(lines) + "\n"


def factor_losses(
    models: Sequence[str | Path],
    data_dir: str | Path | None = None,
    factors: Sequence[float] = (1, 2, 3, 4),
    batches: int = 6,
    hours: float = 3.5,
    command: str = "",
    splits: dict | None = None,
) -> str:
    """What ``stochastic.method=weighted`` would draw from each trained model: every factor's CTC loss on the
    same ``batches`` training batches (the model's own training pipeline, augmentation included, its first
    batches with the loader seeded by ``torch.manual_seed(0)``; forward only, eval mode), and the draw
    probabilities :meth:`~nemo_sew.stochastic.StochasticTrainer.factor_weights` gives for those losses with the
    model's own ``stochastic`` options (recipe defaults when it has none). Shows whether a factor's loss says it
    lags or only that it is harder (the same ratios in a uniformly trained model)."""
    import torch
    from omegaconf import OmegaConf, open_dict

    from manifests.synthetic import prepare_synthetic

    from nemo_sew.models.ctc import SqueezeCTCModel
    from nemo_sew.stochastic import StochasticOptions, StochasticTrainer

    splits = splits or prepare_synthetic(data_dir, hours=hours, seed=0)
    factors = [float(f) for f in factors]
    lines = [
        "### Per-factor training loss of trained stochastic models, and the draws `weighted` gives them",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}  ",
        f"CTC loss (the training loss: per utterance, batch mean) on the first {batches} training batches of "
        f"`{splits['train']['manifest']}` (the model's training pipeline, augmentation included; the same batches "
        "for every factor and model), forward only; p(s): the `weighted` sampler's draw probabilities for those losses "
        "(`StochasticTrainer.factor_weights`: (loss(s) / lowest)^power mixed with a uniform floor, the model's own options).",
        "",
        "| model | " + " | ".join(f"loss s={f:g}" for f in factors) + " | " + " | ".join(f"p(s={f:g})" for f in factors) + " |",
        "|---|" + "---|" * (2 * len(factors)),
    ]  # fmt: skip
    for path in models:
        model = SqueezeCTCModel.restore_from(str(path), map_location="cpu")
        train_cfg = OmegaConf.create(OmegaConf.to_container(model.cfg.train_ds, resolve=True))
        with open_dict(train_cfg):
            train_cfg.manifest_filepath = str(splits["train"]["manifest"])
            train_cfg.num_workers = 0
        torch.manual_seed(0)
        model.setup_training_data(train_cfg)
        model.eval()
        losses: dict[float, list[float]] = {f: [] for f in factors}
        batch_iter = iter(model._train_dl)
        with torch.no_grad():
            for _ in range(batches):
                signal, signal_len, transcript, transcript_len = next(batch_iter)
                for f in factors:
                    model.set_profile({"squeeze": f}, default=False)
                    log_probs, encoded_len, _ = model.forward(input_signal=signal, input_signal_length=signal_len)[:3]
                    losses[f].append(float(model.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len,
                                                      target_lengths=transcript_len)))  # fmt: skip
        options = OmegaConf.to_container(model.cfg.stochastic) if model.cfg.get("stochastic") is not None else {}
        weights = StochasticTrainer(StochasticOptions.from_config({**options, "method": "weighted"}))
        weights.ema_loss = {f: sum(v) / len(v) for f, v in losses.items()}
        p = weights.factor_weights(factors)
        lines.append(f"| `{path}` | " + " | ".join(f"{weights.ema_loss[f]:.2f}" for f in factors) + " | "
                     + " | ".join(f"{x:.3f}" for x in p) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["bench_stochastic_methods", "bench_stochastic_table", "factor_losses", "method_step_costs", "step_times"]
