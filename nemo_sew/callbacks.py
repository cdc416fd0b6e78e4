"""Lightning callbacks: plain-text progress for logs and CI, where a progress bar is not readable."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import lightning.pytorch as pl

log = logging.getLogger("nemo_sew.progress")


def validation_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The ``val_*`` metrics of the trainer's latest validation, as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}


class ProgressLogger(pl.Callback):
    """Logs step, elapsed time, training loss and learning rate every ``every_n_steps``, and validation metrics."""

    def __init__(self, every_n_steps: int = 25) -> None:
        self.every_n_steps = every_n_steps
        self._start = time.perf_counter()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or not trainer.is_global_zero:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        elapsed = time.perf_counter() - self._start
        log.info(
            "step %d  %.0f s (%.2f s/step)  loss %.3f  lr %.2e",
            step, elapsed, elapsed / max(step, 1), float(loss) if loss is not None else float("nan"), lr,
        )  # fmt: skip

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = validation_metrics(trainer)
        if metrics:
            log.info("validation at step %d: %s", trainer.global_step, "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


class ValidationHistory(pl.Callback):
    """Keeps every validation's ``val_*`` metrics with its global step in ``pl_module.validation_history`` (a list
    of ``{"step", "val_wer", ...}``), so that a caller of :func:`nemo_sew.train.train` can tell whether a run had
    converged (:func:`plateau`). In memory only: it is not saved in the ``.nemo`` file."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = validation_metrics(trainer)
        if metrics:
            pl_module.validation_history = [*getattr(pl_module, "validation_history", []),
                                            {"step": int(trainer.global_step), **metrics}]  # fmt: skip


def plateau(history: list[dict], key: str = "val_wer", fraction: float = 0.2) -> dict | None:
    """How much ``key`` still moved over the last ``fraction`` of the steps of a :class:`ValidationHistory`:
    ``{"from_step", "from", "to_step", "to", "relative"}`` with ``relative = to / from - 1`` between the last
    validation at or before step ``(1 - fraction) x`` the final one and the final validation. ``None`` when there
    are fewer than two validations with ``key``, or none that early."""
    points = [(int(h["step"]), float(h[key])) for h in history if key in h]
    if len(points) < 2:
        return None
    last_step, last = points[-1]
    early = [(step, v) for step, v in points[:-1] if step <= (1 - fraction) * last_step]
    if not early:
        return None
    step, value = early[-1]
    return {"from_step": step, "from": value, "to_step": last_step, "to": last,
            "relative": last / value - 1 if value else float("nan")}  # fmt: skip


def parse_max_time(value) -> float | None:
    """Lightning's ``max_time`` (``"DD:HH:MM:SS"`` or a dict of timedelta fields) in seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        days, hours, minutes, seconds = (int(v) for v in value.split(":"))
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    return float(sum(float(value.get(k, 0)) * m for k, m in (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))))


class TimeBudgetAnnealing(pl.Callback):
    """Fits NeMo's warm-up/anneal schedules to a wall-clock budget instead of a guessed step count.

    Every ``every_n_steps`` it measures seconds per step (validation included) and moves the scheduler's
    ``max_steps`` (and ``decay_steps``) to the step the time budget will end at (or ``trainer.max_steps``
    when that comes first), so the learning rate reaches its minimum when training stops, on a fast
    machine or a slow one.
    Written by hand: neither Lightning nor NeMo anneals to a time budget.

    The time already spent travels in checkpoints (``state_dict``): a run killed after 10 minutes of an
    18-minute budget and resumed has 8 minutes left, not 18 (the rate is global steps over all the time spent).
    Under DDP the ranks use rank 0's elapsed time, so they agree on the schedule.
    """

    def __init__(self, max_seconds: float, every_n_steps: int = 50, clock: Callable[[], float] = time.perf_counter) -> None:
        self.max_seconds = max_seconds
        self.every_n_steps = every_n_steps
        self.clock = clock
        self._start: float | None = None
        self._spent_before = 0.0  # seconds spent by earlier runs of a resumed training (from the checkpoint)

    def elapsed(self) -> float:
        """Seconds of training so far, earlier (killed) runs included."""
        return self._spent_before + (self.clock() - self._start if self._start is not None else 0.0)

    def state_dict(self) -> dict[str, float]:
        return {"elapsed": self.elapsed()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._spent_before = float(state.get("elapsed", 0.0))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps:
            return
        # rank 0's clock decides, so every DDP rank sets the same schedule (each rank's own clock differs a little
        # and would give the ranks different learning rates); one broadcast every `every_n_steps` steps
        elapsed = float(trainer.strategy.broadcast(self.elapsed(), src=0))
        total = int(step + max(self.max_seconds - elapsed, 0.0) * step / max(elapsed, 1e-9))
        if trainer.max_steps > 0:  # trainer.max_steps stops the run first: anneal by then
            total = min(total, trainer.max_steps)
        for config in trainer.lr_scheduler_configs:
            sched = config.scheduler
            if not hasattr(sched, "decay_steps"):
                continue
            fixed = getattr(sched, "warmup_steps", 0) + getattr(sched, "constant_steps", 0)
            sched.max_steps = max(total, fixed + 1)
            sched.decay_steps = sched.max_steps - fixed


class StepRecorder(pl.Callback):
    """Appends one JSON line per training step to ``<path stem>.rank<r><suffix>``: the rank, global step, the
    squeeze the encoder ran, the batch (audio lengths and transcript sums, which identify its utterances),
    the loss and the learning rate. A resumed run appends to the killed run's file.

    ``nemo-sew train ... step_log=outputs/steps.jsonl``; the resume and DDP tests compare these records.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rank_path(self, rank: int) -> Path:
        return self.path.with_name(f"{self.path.stem}.rank{rank}{self.path.suffix}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(pl_module, "last_step_stats", None) or {}
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        audio_text = isinstance(batch, (list, tuple)) and len(batch) > 2  # NeMo's (signal, lengths, tokens, lengths)
        record = {
            "rank": trainer.global_rank,
            "step": trainer.global_step,  # after this batch's optimizer step
            "squeeze": stats.get("squeeze"),
            "layers": stats.get("layers"),  # blocks run (LayerDrop skips some in training)
            "lengths": [int(x) for x in batch[1].tolist()] if audio_text else None,
            "targets": [int(x) for x in batch[2].sum(dim=-1).tolist()] if audio_text else None,
            "loss": float(loss) if loss is not None else None,
            "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
        }
        path = self.rank_path(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class SaveAtSteps(pl.Callback):
    """Writes the model as ``.nemo`` when the global step reaches each of ``steps``: ``<stem>_step<N>.nemo``
    beside ``save_to`` (global rank 0 only). One run then gives the checkpoints of a curve against training
    steps, all on the same LR schedule (``nemo-sew bench ssl-curve``).

    ``nemo-sew train ... save_to=out/ssl.nemo '+save_at_steps=[600,1200]'``
    """

    def __init__(self, save_to: str | Path, steps) -> None:
        self.save_to = Path(save_to)
        self.steps = sorted({int(s) for s in steps})
        if not self.steps or self.steps[0] <= 0:
            raise ValueError(f"save_at_steps: expected positive step numbers, got {list(steps)}")

    def path(self, step: int) -> Path:
        return self.save_to.with_name(f"{self.save_to.stem}_step{step}{self.save_to.suffix}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)  # after this batch's optimizer step
        if step in self.steps and trainer.is_global_zero:  # overwrites: a file of an earlier run is not this run's
            self.path(step).parent.mkdir(parents=True, exist_ok=True)
            pl_module.save_to(str(self.path(step)))
