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
    def __init__(self, scheduler, max_steps=-1, strategy=None):
        from lightning.pytorch.strategies import SingleDeviceStrategy

        self.global_step = 0
        self.max_steps = max_steps
        self.lr_scheduler_configs = [type("Cfg", (), {"scheduler": scheduler})()]
        self.strategy = strategy or SingleDeviceStrategy(torch.device("cpu"))


class _RankOneOfTwo:
    """What Lightning's DDP strategy's broadcast gives rank 1: rank 0's object (here rank 0 had spent 40 s)."""

    def broadcast(self, obj, src=0):
        assert src == 0
        return 40.0


def test_time_budget_follows_rank_zeros_clock():
    """Under DDP every rank plans with rank 0's elapsed time, so the ranks' learning rates agree."""
    from nemo.core.optim.lr_scheduler import CosineAnnealing

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = CosineAnnealing(opt, max_steps=10_000, warmup_steps=10, min_lr=0.0)
    trainer = _Trainer(sched, strategy=_RankOneOfTwo())
    clock = iter([0.0, 50.0])  # this rank's own clock: 50 s; rank 0's: 40 s -> 0.4 s/step, 100 s -> 250 steps
    cb = TimeBudgetAnnealing(max_seconds=100.0, every_n_steps=100, clock=lambda: next(clock))
    cb.on_train_start(trainer, None)
    trainer.global_step = 100
    cb.on_train_batch_end(trainer, None, None, None, 99)
    assert sched.max_steps == 250


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


class _Tiny(__import__("lightning.pytorch", fromlist=["LightningModule"]).LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.w(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.utils.data.TensorDataset(torch.randn(8, 2))
        return torch.utils.data.DataLoader(data, batch_size=2)


def test_time_budget_counts_the_time_spent_before_a_resume(tmp_path):
    """A resumed run continues the budget: the time of the killed run comes back from the checkpoint."""
    import lightning.pytorch as pl

    now = [0.0]

    def clock():
        now[0] += 10.0  # every call: 10 s later
        return now[0]

    def trainer(cb, steps):
        return pl.Trainer(max_steps=steps, callbacks=[cb], logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip

    first = TimeBudgetAnnealing(max_seconds=1000.0, every_n_steps=1000, clock=clock)
    run = trainer(first, 3)
    run.fit(_Tiny())
    spent = first.elapsed()
    assert spent > 0
    run.save_checkpoint(tmp_path / "a.ckpt")

    second = TimeBudgetAnnealing(max_seconds=1000.0, every_n_steps=1000, clock=clock)
    trainer(second, 4).fit(_Tiny(), ckpt_path=tmp_path / "a.ckpt")
    assert second.elapsed() > spent + 10.0  # what the first run spent, plus this run's time so far
    assert second._spent_before >= spent


def test_plateau_measures_the_last_fraction_of_steps():
    from nemo_sew.callbacks import plateau

    history = [{"step": s, "val_wer": w} for s, w in [(200, 0.9), (400, 0.8), (600, 0.7), (800, 0.63)]]
    got = plateau(history)  # 80% of 800 = 640: from the validation at 600
    assert (got["from_step"], got["to_step"]) == (600, 800)
    assert got["relative"] == pytest.approx(0.63 / 0.7 - 1)
    assert plateau(history, fraction=0.5)["from_step"] == 400
    assert plateau(history[:1]) is None  # one validation: nothing to compare
    assert plateau([{"step": 790, "val_wer": 0.7}, {"step": 800, "val_wer": 0.6}]) is None  # none early enough
    assert plateau([{"step": 100, "val_loss": 1.0}, {"step": 800, "val_loss": 0.5}]) is None  # no val_wer


def test_validation_history_records_each_validation_with_its_step(tmp_path):
    """In a real Lightning fit: the sanity check is left out, and each entry has the metrics logged at that step."""
    import lightning.pytorch as pl

    from nemo_sew.callbacks import ValidationHistory

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            return (self.w * batch[0]).sum() ** 2

        def validation_step(self, batch, batch_idx):
            self.log("val_wer", float(self.global_step) + 0.5)
            self.log("train_thing", 1.0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=1)
    module = Tiny()
    trainer = pl.Trainer(max_steps=4, val_check_interval=2, num_sanity_val_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path,
                         callbacks=[ValidationHistory()], accelerator="cpu")  # fmt: skip
    trainer.fit(module, data, data)
    assert module.validation_history == [{"step": 2, "val_wer": 2.5}, {"step": 4, "val_wer": 4.5}]
