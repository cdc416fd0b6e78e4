"""The demo (``make demo``): synthetic corpus -> CPU training -> evaluation -> profile sweep and ONNX per
profile -> ``outputs/demo/``.

    nemo-sew demo --out outputs/demo --hours 3.5 [--train-steps 2000 | --train-minutes 18] [--sweep-utterances 100 | --no-sweep]

``nemo-sew demo --product`` (:mod:`nemo_sew.demo_product`) runs steps 1-4 here on the all-dials recipe, then its own
last step (quantize keeping fp, the squeeze x depth threshold x bits sweep).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from manifests.synthetic import DEFAULT_CROSS_ENGINE, DEFAULT_ENGINES
from nemo_sew.evaluate import error_rates, evaluate
from nemo_sew.train import load_config, train

log = logging.getLogger("nemo_sew.demo")

# Measured by the team on this kind of 2-core CPU machine (issue #2), same corpus recipe and time budget.
BASELINES = [
    ("NeMo ConformerEncoder, 4 x 128, 4x subsampling (40 ms), char CTC", 1.8, "0.23", "0.69", "454 steps, 18 min"),
    ("NeMo ConformerEncoder, 4 x 128, 8x subsampling (80 ms), char CTC", 1.8, "blank plateau", "-", "18 min"),
    ("transformers SEWForCTC, WFE-C waveform front end, squeeze 2", 5.9, "0.99", "-", "514 steps, 18 min"),
]


# The demo's training length: a fixed step count (fp32, seeded) so `make demo` gives the same model everywhere.
DEMO_STEPS = 2000


def _minutes_to_max_time(minutes: float) -> str:
    total = int(minutes * 60)
    return f"00:{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"


def transcribe_speech_flow(model_path: Path, manifest: Path, out: Path, recipe: str | Path) -> float:
    """Run ``recipes/transcribe_speech_flow.py`` (NeMo's transcribe_speech.py steps) in a fresh process; its WER."""
    script = Path(recipe).resolve().parent / "transcribe_speech_flow.py"
    subprocess.run([sys.executable, str(script), str(model_path), str(manifest), str(out)], check=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return error_rates([r["pred_text"] for r in rows], [r["text"] for r in rows])[0]


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def augment_summary(cfg) -> str:
    """What the recipe does to its training data, for ``results.md``: waveform augmentation and SpecAugment."""
    from omegaconf import OmegaConf

    from nemo_sew.augment import _options

    section = cfg.get("augment")
    section = OmegaConf.to_container(section, resolve=True) if OmegaConf.is_config(section) else section
    # what nemo_sew.augment applies, in its order (speed, reverb and noise are on unless switched off)
    opts = _options(section) if section else {}
    waves = [name for name in ("speed", "vtlp", "pitch", "tilt", "reverb", "noise", "band", "codec") if opts.get(name)]
    spec = cfg.model.get("spec_augment") or {}
    masks = int(spec.get("freq_masks", 0) or 0) + int(spec.get("time_masks", 0) or 0)
    return ("augmented: " + ", ".join(waves) if waves else "no waveform augmentation") + (
        f", SpecAugment {spec.get('freq_masks')} + {spec.get('time_masks')} masks" if masks else ", no SpecAugment")


def write_results(
    path: Path, result, train_seconds: float, steps: int, hours: dict, command: str, flow_wer: float | None = None,
    sweep_md: str | None = None, data_note: str | None = None, answer: str | None = None,
    engines: Sequence[str] = DEFAULT_ENGINES, cross_engine: str | None = DEFAULT_CROSS_ENGINE,
) -> None:
    """``results.md``: what the demo reached, with the baselines beside it; it ends with ``sweep_md`` (the
    profile sweep, :func:`nemo_sew.demo_sweep.sweep_section`) when given; ``answer`` (one line) opens it."""
    lines = [
        "# nemo-sew demo results",
        "",
        *([answer, ""] if answer else []),
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}  ",
        f"Corpus: synthetic, {' + '.join(engines)} ({hours.get('train', 0):.2f} h train"
        f"{', ' + data_note if data_note else ''}); "
        f"test = held-out voices and sentences of those engines, {result.utterances} utterances"
        + (f"; cross-engine test = the test sentences said by {cross_engine}, never heard in training, "
           f"{result.cross_utterances} utterances" if result.cross_cer is not None else "") + "  ",
        f"Training: {train_seconds / 60:.1f} min, {steps} steps on CPU  ",
        f"Profile: {result.profile}",
        "",
        "| model | params (M) | test CER | test WER | cross-engine CER | cross-engine WER | encoder GMACs / s audio "
        "| latency, 10 s (ms) | RTFx | training |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| **nemo-sew SqueezeEncoder (this run)** | {result.params_m:.2f} | **{result.cer:.3f}** | {result.wer:.3f} | "
        f"{_num(result.cross_cer)} | {_num(result.cross_wer)} | "
        f"{result.encoder_gmacs_per_s:.3f} | {result.latency_ms_10s:.1f} | {result.rtfx:.0f} | {steps} steps, "
        f"{train_seconds / 60:.1f} min |",
    ]
    for name, params, cer, wer, training in BASELINES:
        lines.append(f"| {name} (team baseline, espeak-ng corpus) | {params} | {cer} | {wer} | - | - | - | - | - | {training} |")
    lines += [
        "",
        f"NeMo's transcribe_speech flow on model.nemo (`recipes/transcribe_speech_flow.py`): WER {flow_wer:.3f} "
        "on the same test manifest." if flow_wer is not None else "",
        "",
        (f"Cross-engine CER / in-domain CER: {result.cross_ratio:.2f} (goal <= 2).  " if result.cross_cer is not None else "")
        + "Latency: median of 7 runs after 2 warm-up runs, batch 1, preprocessor + encoder + CTC head, fp32, "
        f"{torch.get_num_threads()} threads. Target: test CER <= 0.15.",
        "",
    ]
    if sweep_md:
        lines += [sweep_md]
    path.write_text("\n".join(lines))


@dataclass
class TrainedDemo:
    """What :func:`train_and_evaluate` leaves for the last step (the profile sweep): the model and its numbers."""

    model: Any
    model_path: Path
    result: Any  # EvalResult at the model's default profile
    train_seconds: float
    steps: int
    split_hours: dict
    splits: dict
    flow_wer: float | None
    data_note: str
    engines: tuple[str, ...] = DEFAULT_ENGINES  # the corpus's training and cross engines (corpus.json)
    cross_engine: str | None = DEFAULT_CROSS_ENGINE


def train_and_evaluate(
    out_dir: Path, data_dir: Path, recipe: str | Path, hours: float, train_minutes: float | None, seed: int,
    train_steps: int | None, num_jobs: int | None, overrides: list[str] | None, command: str,
    splits: dict | None = None,
) -> TrainedDemo:
    """Steps 1-4 of the demo: corpus, training (fixed fp32 steps or a time budget), evaluation, NeMo's
    transcribe_speech flow; writes ``results.md`` without a sweep (an error after this does not lose the run).
    ``splits``: a corpus already built (what ``prepare_synthetic`` returned, its ``corpus.json`` beside the
    manifests), used as it is; None builds (or completes) the corpus in ``data_dir``."""
    from manifests.synthetic import prepare_synthetic

    out_dir.mkdir(parents=True, exist_ok=True)
    if splits is None:
        log.info("step 1/5: synthetic corpus (%.1f h) in %s", hours, data_dir)
        splits = prepare_synthetic(data_dir, hours=hours, seed=seed, num_jobs=num_jobs or os.cpu_count() or 1)
    else:
        data_dir = Path(splits["train"]["manifest"]).parent
        log.info("step 1/5: the corpus already built in %s", data_dir)
    summary = json.loads((data_dir / "corpus.json").read_text())
    split_hours = {name: info["hours"] for name, info in summary["splits"].items()}

    if train_minutes is not None:
        log.info("step 2/5: training %s for up to %.1f min (a time budget: the result depends on the machine)",
                 recipe, train_minutes)  # fmt: skip
        length = [f"trainer.max_time={_minutes_to_max_time(train_minutes)}"]
    elif train_steps:
        log.info("step 2/5: training %s for %d steps in fp32 (seeded: the same model on any machine)", recipe, train_steps)
        length = [f"trainer.max_steps={int(train_steps)}", "trainer.max_time=null", "trainer.precision=32",
                  "++anneal_to_max_time=false"]  # fmt: skip
    else:
        raise ValueError("the demo needs train_steps or train_minutes")
    model_path = out_dir / "model.nemo"
    cfg = load_config(
        recipe,
        [
            f"model.train_ds.manifest_filepath={splits['train']['manifest']}",
            f"model.validation_ds.manifest_filepath={splits['dev']['manifest']}",
            *length,
            f"exp_manager.exp_dir={out_dir / 'experiments'}",
            f"save_to={model_path}",
            *(overrides or []),
        ],
    )
    start = time.perf_counter()
    model = train(cfg)
    train_seconds = time.perf_counter() - start
    steps = int(model.trainer.global_step)

    log.info("step 3/5: evaluating on the held-out test set and the cross-engine test")
    result = evaluate(model, splits["test"]["manifest"], cross_manifest=splits.get("cross", {}).get("manifest"))
    (out_dir / "results.json").write_text(result.to_json())
    log.info("step 4/5: NeMo's transcribe_speech flow on %s", model_path)
    flow_wer = transcribe_speech_flow(model_path, splits["test"]["manifest"], out_dir / "transcribe_speech.json", recipe)
    run = TrainedDemo(model, model_path, result, train_seconds, steps, split_hours, splits, flow_wer,
                      augment_summary(cfg), tuple(summary.get("engines", ["espeak-ng"])),
                      summary.get("cross_engine", DEFAULT_CROSS_ENGINE if "cross" in summary["splits"] else None))  # fmt: skip
    write_results(out_dir / "results.md", result, train_seconds, steps, split_hours, command, flow_wer,
                  data_note=run.data_note, engines=run.engines, cross_engine=run.cross_engine)
    return run


def run_demo(
    out_dir: str | Path = "outputs/demo",
    data_dir: str | Path = "data/synthetic",
    recipe: str | Path = "recipes/ctc_char_tiny_mel.yaml",
    hours: float = 3.5,
    train_minutes: float | None = None,
    seed: int = 0,
    train_steps: int | None = DEMO_STEPS,
    num_jobs: int | None = None,
    overrides: list[str] | None = None,
    command: str = "make demo",
    sweep: bool = True,
    sweep_utterances: int | None = 100,
):
    """Build the corpus, train the recipe on CPU, evaluate, sweep the model's profiles on at most
    ``sweep_utterances`` test utterances (None or 0: all) and export one ONNX file per profile (``sweep=False``
    skips both), write the outputs.

    Training runs ``train_steps`` steps in fp32 with the recipe's seed, so the model and its CER are the same on
    any machine (only the time taken differs); ``train_minutes`` instead trains for a time budget (the recipe's
    precision, LR schedule fitted to the time; the step reached, and so the result, depends on the machine)."""
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    run = train_and_evaluate(out_dir, data_dir, recipe, hours, train_minutes, seed, train_steps, num_jobs, overrides,
                             command)  # fmt: skip
    result = run.result
    if sweep:  # results.md is already written without the sweep: an error here does not lose the run
        from nemo_sew.demo_sweep import run_profile_sweep, sweep_section

        log.info("step 5/5: profile sweep and one ONNX file per profile")
        swept = run_profile_sweep(run.model, run.model_path, run.splits["test"]["manifest"], out_dir,
                                  max_utterances=sweep_utterances, command=command)  # fmt: skip
        write_results(out_dir / "results.md", result, run.train_seconds, run.steps, run.split_hours, command,
                      run.flow_wer, sweep_section(swept, out_dir), data_note=run.data_note, engines=run.engines,
                      cross_engine=run.cross_engine)  # fmt: skip
    log.info("test CER %.3f, WER %.3f, cross-engine CER %s; wrote %s and %s", result.cer, result.wer,
             _num(result.cross_cer), run.model_path, out_dir / "results.md")  # fmt: skip
    return result
