"""Lightning callbacks: plain-text progress for logs and CI, where a progress bar is not readable."""

from __future__ import annotations

import logging
import time

import lightning.pytorch as pl

log = logging.getLogger("nemo_sew.progress")


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
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        if metrics:
            log.info("validation at step %d: %s", trainer.global_step, "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))
