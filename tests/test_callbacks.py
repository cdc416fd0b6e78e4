"""Training callbacks: the LR schedule is fitted to the time budget."""

import pytest
import torch

from nemo_sew.callbacks import TimeBudgetAnnealing, parse_max_time


def test_parse_max_time():
    assert parse_max_time("00:00:18:00") == 1080
    assert parse_max_time("01:02:03:04") == ((24 + 2) * 60 + 3) * 60 + 4
    assert parse_max_time({"minutes": 2, "seconds": 5}) == 125
    assert parse_max_time(None) is None


class _Trainer:
    def __init__(self, scheduler, max_steps=-1):
        self.global_step = 0
        self.max_steps = max_steps
        self.lr_scheduler_configs = [type("Cfg", (), {"scheduler": scheduler})()]


def test_time_budget_moves_the_schedule_end():
    from nemo.core.optim.lr_scheduler import CosineAnnealing

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineAnnealing(opt, max_steps=10_000, warmup_steps=10, min_lr=0.0)
    trainer = _Trainer(sched)
    clock = iter([0.0, 50.0])  # start, then 50 s after 100 steps: 0.5 s/step, 100 s budget -> 200 steps
    cb = TimeBudgetAnnealing(max_seconds=100.0, every_n_steps=100, clock=lambda: next(clock))
    cb.on_train_start(trainer, None)
    trainer.global_step = 100
    cb.on_train_batch_end(trainer, None, None, None, 99)
    assert sched.max_steps == 200 and sched.decay_steps == 190
    assert sched._get_lr(200)[0] == pytest.approx(0.0, abs=1e-9)  # fully annealed when time runs out


def test_time_budget_never_plans_past_max_steps():
    """A fast machine reaches trainer.max_steps before the time budget: the schedule must end there."""
    from nemo.core.optim.lr_scheduler import CosineAnnealing

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineAnnealing(opt, max_steps=10_000, warmup_steps=10, min_lr=0.0)
    trainer = _Trainer(sched, max_steps=150)
    clock = iter([0.0, 50.0])  # the budget alone would give 200 steps
    cb = TimeBudgetAnnealing(max_seconds=100.0, every_n_steps=100, clock=lambda: next(clock))
    cb.on_train_start(trainer, None)
    trainer.global_step = 100
    cb.on_train_batch_end(trainer, None, None, None, 99)
    assert sched.max_steps == 150 and sched.decay_steps == 140
