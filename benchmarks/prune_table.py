"""``nemo-sew bench prune-table``: HJ-Pruning of a trained CTC model to MAC budgets, against the same shape
trained from scratch (trains models; issue 12's benchmark table).

    nemo-sew bench prune-table --model outputs/demo/model.nemo --targets 0.8 0.6 0.5 --budgets size sepmac \\
        --write BENCHMARKS.md

For each budget and target, ``recipes/prune_ctc_tiny_mel.yaml`` prunes ``--model`` (the task loss plus the
Lagrangian budget, ``--prune-steps`` steps, optional distillation from the unpruned model) and materialises it.
Budgets: ``size`` (parameters), ``mac`` (total MACs), ``sepmac`` (front end and transformer, each its own
multipliers), ``transformer`` (``mac`` with heads / FFN / conv masks only) and ``frontend`` (``mac`` with the
front-end channel masks only). ``size`` is given the parameter fraction that the ``sepmac`` model of the same
target realised, so that both are compared at (nearly) equal MACs; a budget that cannot act on the model (a
front end without MACs: a log-mel front end) is skipped and said so. ``--scratch`` targets: the materialised
``sepmac`` shape, re-initialised and trained from scratch with the base recipe for ``--scratch-steps`` steps
(give the base model's steps plus the pruning steps: the same total). The control ``unpruned_+N``: the unpruned
model trained ``--prune-steps`` more steps at the pruning recipe's LR (``recipes/finetune_profile.yaml``), so
that what pruning costs is not confused with what the extra steps give. Every model is evaluated on the test set
(WER, CER), counted (parameters, analytic encoder MACs at 10 s) and timed (eager, batch 1, 10 s of audio,
preprocessor + encoder + head, all models in the same interleaved rounds).

Every trained model is kept in ``--out`` with the settings that made it (``benchmarks.cache.kept_file``); a re-run
with the same settings (overrides, base model bytes) reuses it, other settings train it again.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmarks.cache import file_digest, kept_file
from benchmarks.report import machine_line, threads_text
from nemo_sew.measure import runner_latency_ms, torch_threads

BUDGETS = ("size", "mac", "sepmac", "transformer", "frontend")
_UNITS = {"transformer": ["heads", "ffn", "conv"], "frontend": ["frontend"]}


def _frontend_macs(model: Any) -> float:
    from nemo_sew.cost import encoder_cost
    from nemo_sew.nn.frontend import frontend_layout

    arch = model.encoder.arch
    return float(encoder_cost(arch, None, frontend_layout(arch.frontend).length(10.0)).frontend)


def _measure(model: Any, manifest: str) -> dict[str, float]:
    from nemo_sew.cost import encoder_params, macs_per_second
    from nemo_sew.evaluate import error_rates, transcribe_manifest

    model.eval()
    wer, cer = error_rates(*transcribe_manifest(model, manifest))
    return {"wer": wer, "cer": cer, "params_m": float(encoder_params(model.encoder.arch)["total"]) / 1e6,
            "gmacs_per_s": macs_per_second(model.encoder.arch, model.encoder.profile)}  # fmt: skip


def _scratch_init(pruned_path: Path, out: Path, seed: int) -> Path:
    """The pruned model's shape with fresh weights (a new model built from its config), saved as ``out``."""
    from nemo_sew.safe_load import restore

    pruned = restore(pruned_path)
    torch.manual_seed(seed)
    fresh = type(pruned)(cfg=pruned.cfg)
    fresh.save_to(str(out))
    return out


def bench_prune_table(
    model_path: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    budgets: Sequence[str] = ("size", "sepmac"),
    targets: Sequence[float] = (0.8, 0.6, 0.5),
    prune_steps: int = 400,
    scratch: Sequence[float] = (0.6,),
    scratch_steps: int | None = None,
    distill: float = 0.0,
    control: bool = True,
    threads: int = 2,
    runs: int = 7,
    extra: Sequence[str] = (),
    command: str = "",
) -> tuple[str, dict[str, Any]]:
    """Run the table (see the module docstring); returns the markdown section and the raw results."""
    from nemo_sew.safe_load import restore
    from nemo_sew.train import load_config, train

    bad = sorted(set(budgets) - set(BUDGETS))
    if bad:
        raise ValueError(f"budgets: expected some of {list(BUDGETS)}, got {bad}")
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_m, dev, test = (str(data_dir / f"{s}.json") for s in ("train", "dev", "test"))
    if scratch and not scratch_steps:
        raise ValueError("scratch_steps: give the base model's training steps plus prune_steps (the same total)")
    base = restore(model_path)
    base_sha = file_digest(model_path)  # every run's key: a retrained base model is another input
    skipped: dict[str, str] = {}
    if _frontend_macs(base) == 0:  # sepmac and transformer-only then have mac's one constraint
        skipped["frontend"] = "the front end has no MACs (log-mel features): nothing for front-end masks to save"
    common = [f"init_from_nemo={model_path}", f"model.train_ds.manifest_filepath={train_m}",
              f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={prune_steps}",
              f"pruning.warmup_steps={max(1, prune_steps // 2)}", f"pruning_distill.weight={distill}",
              "trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false", *extra]  # fmt: skip
    paths: dict[str, Path] = {}
    realised: dict[str, dict[str, float]] = {}
    order = sorted(budgets, key=lambda b: b == "size")  # size last: it takes sepmac's realised parameter fraction
    for target in targets:
        for budget in order:
            if budget in skipped:
                continue
            name = f"{budget}_{target:g}"
            pruned = out_dir / f"{name}.nemo"
            overrides = [f"pruning.budget={'mac' if budget in _UNITS else budget}", f"pruning.target={target}"]
            if budget in _UNITS:
                overrides.append(f"pruning.units=[{','.join(_UNITS[budget])}]")
            if budget == "size" and f"sepmac_{target:g}" in realised:  # equal MACs: sepmac's parameter fraction
                overrides[1] = f"pruning.target={realised[f'sepmac_{target:g}']['params']:.4f}"
            run = [*common, *overrides, f"exp_manager.exp_dir={out_dir / name}", f"save_to={out_dir / name}_masked.nemo",
                   f"pruned_save_to={pruned}", f"pruned_name={name}"]  # fmt: skip
            kept_file(pruned, {"recipe": "recipes/prune_ctc_tiny_mel.yaml", "overrides": run, "init_sha256": base_sha},
                      lambda: train(load_config("recipes/prune_ctc_tiny_mel.yaml", run)))  # fmt: skip
            paths[name] = pruned
            realised[name] = _fractions(restore(pruned), base)
    total = int(scratch_steps or 0)
    for target in scratch:
        source = paths.get(f"sepmac_{target:g}") or paths.get(f"mac_{target:g}")
        if source is None:
            skipped[f"scratch_{target:g}"] = "no sepmac or mac model at this target to take the shape from"
            continue
        name = f"scratch_{target:g}"
        trained = out_dir / f"{name}.nemo"
        init = out_dir / f"{name}_init.nemo"
        run = [f"init_from_nemo={init}", "+profile={squeeze: 2}", f"model.train_ds.manifest_filepath={train_m}",
               f"model.validation_ds.manifest_filepath={dev}", f"trainer.max_steps={total}", "trainer.max_time=null",
               "anneal_to_max_time=false", "trainer.enable_progress_bar=false", "seed=0",
               "exp_manager.create_checkpoint_callback=false", f"exp_manager.exp_dir={out_dir / name}",
               f"save_to={trained}", *extra]  # fmt: skip

        def from_scratch(source: Path = source, init: Path = init, run: list[str] = run) -> None:
            _scratch_init(source, init, seed=0)
            train(load_config("recipes/ctc_char_tiny_mel.yaml", run))

        kept_file(trained, {"recipe": "recipes/ctc_char_tiny_mel.yaml", "overrides": run,
                            "shape_from_sha256": file_digest(source)}, from_scratch)  # fmt: skip
        paths[name] = trained
    if control:  # the unpruned model trained as many more steps, same LR: what the extra steps alone give
        name = f"unpruned_+{prune_steps}"
        trained = out_dir / f"{name}.nemo"
        optim = load_config("recipes/prune_ctc_tiny_mel.yaml", [f"init_from_nemo={model_path}", *extra]).model.optim
        run = [f"init_from_nemo={model_path}", f"profile.squeeze={base.encoder.profile.squeeze}",
               f"model.train_ds.manifest_filepath={train_m}", f"model.validation_ds.manifest_filepath={dev}",
               f"trainer.max_steps={prune_steps}", "trainer.max_time=null", "anneal_to_max_time=false",
               f"model.optim.lr={optim.lr}", f"model.optim.sched.warmup_steps={optim.sched.warmup_steps}",
               "trainer.enable_progress_bar=false", "exp_manager.create_checkpoint_callback=false",
               f"exp_manager.exp_dir={out_dir / name}", f"save_to={trained}", *extra]  # fmt: skip
        kept_file(trained, {"recipe": "recipes/finetune_profile.yaml", "overrides": run, "init_sha256": base_sha},
                  lambda: train(load_config("recipes/finetune_profile.yaml", run)))  # fmt: skip
        paths[name] = trained
    results: dict[str, Any] = {"unpruned": _measure(restore(model_path), test)}
    for name, path in paths.items():
        results[name] = {**_measure(restore(path), test), **({"fractions": realised[name]} if name in realised else {})}
    results = _timed(results, {"unpruned": Path(model_path), **paths}, threads, runs)
    (out_dir / "bench_prune_table.json").write_text(json.dumps({"results": results, "skipped": skipped}, indent=1))
    return prune_table_markdown(results, skipped, prune_steps, total, distill, threads, command), results


def _fractions(pruned: Any, base: Any) -> dict[str, float]:
    from nemo_sew.cost import encoder_params, macs_per_second

    return {"params": float(encoder_params(pruned.encoder.arch)["total"] / encoder_params(base.encoder.arch)["total"]),
            "macs": macs_per_second(pruned.encoder.arch, pruned.encoder.profile)
            / macs_per_second(base.encoder.arch, base.encoder.profile)}  # fmt: skip


def _timed(results: dict[str, Any], paths: dict[str, Path], threads: int, runs: int, seconds: float = 10.0) -> dict:
    """Median batch-1 latency of every model on ``seconds`` of audio, all in the same interleaved rounds."""
    from nemo_sew.export import TorchCTCRunner
    from nemo_sew.safe_load import restore

    with torch_threads(threads):
        runners = {name: TorchCTCRunner(restore(path).eval()) for name, path in paths.items()}
        times = runner_latency_ms(runners, seconds, runs)
    for name in results:
        results[name]["ms"] = statistics.median(times[name])
    return results


def prune_table_markdown(results: dict[str, Any], skipped: dict[str, str], prune_steps: int, scratch_steps: int,
                         distill: float, threads: int, command: str) -> str:  # fmt: skip
    ref = results["unpruned"]
    control_name = f"unpruned_+{prune_steps}"
    control = results.get(control_name)
    lines = [
        "### HJ-Pruning of the demo model to MAC budgets vs the same shape from scratch (synthetic corpus)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_line()}; one run each  ",
        f"Pruning: `recipes/prune_ctc_tiny_mel.yaml`, {prune_steps} steps from the trained model (target ramp over the "
        f"first half){f', distillation weight {distill:g}' if distill > 0 else ''}; scratch: the sepmac shape "
        f"re-initialised, {scratch_steps} steps of the base recipe. Latency: eager, batch 1, 10 s, {threads_text(threads)}, "
        "preprocessor + encoder + head, median of interleaved rounds.",
        "",
        "| model | test WER | rel. WER" + (f" | rel. to {control_name}" if control else "") + " | test CER | params (M) "
        "| encoder GMACs / s | MACs kept | latency (ms) | latency kept | latency saving / MAC saving |",
        "|---|---|---|" + ("---|" if control else "") + "---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        kept = r["gmacs_per_s"] / ref["gmacs_per_s"]
        lat = r["ms"] / ref["ms"]
        ratio = f"{(1 - lat) / (1 - kept):.2f}" if kept < 0.999 else "-"
        rel = f"{(r['wer'] / ref['wer'] - 1) * 100:+.1f}%" if name != "unpruned" else "-"
        if control:
            rel += f" | {(r['wer'] / control['wer'] - 1) * 100:+.1f}%" if name not in ("unpruned", control_name) else " | -"
        lines.append(f"| {name} | {r['wer']:.3f} | {rel} | {r['cer']:.3f} | {r['params_m']:.2f} | {r['gmacs_per_s']:.4f} "
                     f"| {kept:.1%} | {r['ms']:.1f} | {lat:.1%} | {ratio} |")  # fmt: skip
    for name, why in skipped.items():
        lines.append(f"\nNot run: {name}: {why}.")
    return "\n".join(lines) + "\n"


__all__ = ["BUDGETS", "bench_prune_table", "prune_table_markdown"]
