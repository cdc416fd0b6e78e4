"""Exact resume after a kill: resumable training data order and per-step random state.

A Lightning run that is killed mid-epoch and restarted from its last checkpoint continues with the batch the
killed run would have trained on next, with the same random draws, when

- the training ``DataLoader`` is a :class:`ResumableDataLoader`: its batch order is a pure function of
  ``(seed, epoch)`` and it stores ``(seed, epoch, batches consumed)`` in the checkpoint (Lightning calls its
  ``state_dict`` / ``load_state_dict``; the fit loop stores it under ``loops.fit_loop.state_dict.combined_loader``);
- every training step draws its randomness (SpecAugment, dither, dropout, masking) from RNGs reseeded with
  ``(seed, global step, rank)`` (:class:`StepSeed`, as fairseq's trainer seeds each update with
  ``seed + num_updates``), so nothing depends on what ran before the step.

Written by hand: NeMo's JSON loaders are plain ``DataLoader`` objects without a state, and Lightning restarts
their epoch from the first batch. The batches are still NeMo's (its semi-sorted batch sampler, its
``RandomSampler``); this module only fixes their seed and skips the batches already trained on.
"""

from __future__ import annotations

import itertools
import logging
import random
from typing import Any, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torch.utils.data.distributed import DistributedSampler

log = logging.getLogger("nemo_sew.resume")
_END = object()


def _seed_all(seed_words: list[int]) -> None:
    """Reseed python, numpy and torch from a list of integers (mixed with numpy's SeedSequence)."""
    state = np.random.SeedSequence(seed_words).generate_state(2, dtype=np.uint32)
    value = int(state[0]) << 32 | int(state[1])
    random.seed(value)
    np.random.seed(int(state[0]))
    torch.manual_seed(value)


class _SeededRNG:
    """Run a block with python, numpy and torch seeded from ``seed_words``; restore their states after."""

    def __init__(self, seed_words: list[int]) -> None:
        self.seed_words = seed_words

    def __enter__(self) -> None:
        self._states = random.getstate(), np.random.get_state(), torch.get_rng_state()
        _seed_all(self.seed_words)

    def __exit__(self, *exc: Any) -> None:
        py, np_state, torch_state = self._states
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededBatch(list):
    """A batch of dataset indices that carries the seed of its samples' random draws: ``(seed, epoch)``."""

    def __init__(self, indices: list, words: list[int]) -> None:
        super().__init__(indices)
        self.words = words


class SeededDataset(Dataset):
    """Loads each sample of a :class:`SeededBatch` with python, numpy and torch seeded from
    ``(seed, epoch, sample index)``, so waveform augmentation (NeMo's perturbations draw from the global RNGs at
    load time, in the main process or a worker) repeats after a resume, does not depend on the worker count, and
    is the same for a sample whether it lands on one DDP rank or another. Other attributes are the wrapped
    dataset's (whose ``__getitem__`` takes one index; NeMo's also take a list)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # unpickling (workers) looks attributes up before __dict__ is filled
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, SeededBatch):
            samples = []
            for i in index:
                with _SeededRNG([*index.words, int(i)]):
                    samples.append(self.dataset[i])
            return samples
        return self.dataset[index]


class ResumableBatchSampler(DistributedSampler):
    """Yields batches (lists of dataset indices, or a lhotse ``CutSet``) in an order fixed by ``(seed, epoch)``.

    ``inner`` is NeMo's sampler: a batch sampler that is already rank-aware (NeMo's ``SemiSortBatchSampler``, a
    lhotse ``CutSampler``) or a per-sample sampler (``RandomSampler``, ``SequentialSampler``) that this class
    shards over ``world`` ranks the way ``DistributedSampler`` does (padded to a multiple of ``world``, then every
    ``world``-th sample) and cuts into batches of ``batch_size``. Sharding samples (not batches) means batch k of
    rank r holds samples ``order[k*b*world + r :: world]``: the union over ranks of batch k is batch k of one
    process with ``batch_size * world``, so DDP and a single process see the same samples per step.

    A subclass of ``DistributedSampler`` so that Lightning keeps it under DDP instead of replacing it.
    """

    def __init__(
        self,
        inner: Sampler,
        *,
        seed: int,
        batch_size: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
        batches_from_inner: bool | None = None,
    ) -> None:  # DistributedSampler.__init__ is not called: it needs a process group and a dataset length
        if batches_from_inner is None:
            batches_from_inner = batch_size is None
        if not batches_from_inner and not batch_size:
            raise ValueError("a per-sample inner sampler needs a batch_size")
        self.inner = inner
        self.seed = int(seed)
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.rank, self.num_replicas = int(rank), int(world)
        self.batches_from_inner = batches_from_inner
        self.shuffle = True
        self.epoch = 0
        self.consumed = 0  # batches of this epoch the training loop has taken (see :meth:`mark_consumed`)
        self._skip = 0  # batches to skip at the start of the next iteration (a resume)

    # ------------------------------------------------------------------------------------------ order

    def _inner_batches(self) -> Iterator:
        """The inner batch sampler's batches of this epoch, lazily (a lhotse sampler may be long or unbounded).
        Its first batch is drawn with RNGs seeded by (seed, epoch): NeMo's semi-sorted sampler draws its
        duration noise from numpy's global RNG there; lhotse samplers seed themselves from their seed and epoch."""
        iterator = iter(self.inner)
        with _SeededRNG([self.seed, self.epoch]):
            first = next(iterator, _END)
        if first is not _END:
            yield first
            yield from iterator

    def _epoch_order(self) -> list:
        """All of this rank's batches of the current epoch (per-sample inner samplers: indices only, no audio),
        the inner sampler run with RNGs seeded by (seed, epoch)."""
        with _SeededRNG([self.seed, self.epoch]):
            items = list(iter(self.inner))
        world, b = self.num_replicas, int(self.batch_size)
        if world > 1:
            pad = (-len(items)) % world
            items = items + items[:pad]
            items = items[self.rank :: world]
        batches = [items[i : i + b] for i in range(0, len(items), b)]
        if self.drop_last and batches and len(batches[-1]) < b:
            batches.pop()
        return batches

    def __iter__(self) -> Iterator:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(self.epoch)
        batches = self._inner_batches() if self.batches_from_inner else iter(self._epoch_order())
        skip, self._skip = self._skip, 0
        if skip:
            log.info("resuming epoch %d at batch %d", self.epoch, skip)
        self.consumed = skip
        seeded = (
            SeededBatch(list(batch), [self.seed, self.epoch]) if isinstance(batch, (list, tuple, np.ndarray)) else batch
            for batch in batches  # index batches (NeMo's semi-sorted sampler yields numpy arrays); lhotse: cuts
        )
        return itertools.islice(seeded, skip, None)  # the skipped batches are index lists or cut metadata only

    def __len__(self) -> int:
        if self.batches_from_inner:
            return len(self.inner)
        per_rank = -(-len(self.inner) // self.num_replicas)
        return per_rank // int(self.batch_size) if self.drop_last else -(-per_rank // int(self.batch_size))

    def set_epoch(self, epoch: int) -> None:
        if int(epoch) != self.epoch:
            self._skip = 0  # a new epoch starts from its first batch
            self.consumed = 0
        self.epoch = int(epoch)

    def mark_consumed(self) -> None:
        """Called once per training batch (before its step): one more batch of this epoch is in training."""
        self.consumed += 1

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "consumed": self.consumed, "world": self.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state.get("world", self.num_replicas)) != self.num_replicas:
            log.warning(
                "resuming on %d ranks a run saved on %d: the data order of the interrupted epoch cannot be "
                "continued, it restarts at its first batch", self.num_replicas, state["world"],
            )  # fmt: skip
            self.seed, self.epoch, self._skip = int(state["seed"]), int(state["epoch"]), 0
            return
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._skip = self.consumed = int(state["consumed"])


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose :class:`ResumableBatchSampler` state travels in Lightning checkpoints."""

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def make_resumable(loader: Any, *, seed: int, rank: int = 0, world: int = 1) -> Any:
    """``loader`` (what NeMo built for training) as a :class:`ResumableDataLoader` over the same dataset and
    batches; returned unchanged (with a log line) where that is not possible (an iterable dataset, DALI)."""
    if isinstance(loader, ResumableDataLoader) or not isinstance(loader, DataLoader):
        return loader
    dataset: Dataset = loader.dataset
    if isinstance(dataset, IterableDataset):
        log.warning("training data is an iterable dataset (%s): a resumed run keeps its step and weights but its data "
                    "stream starts anew (no data position is saved)", type(dataset).__name__)
        return loader
    if loader.batch_size is None:  # the sampler yields whole batches: NeMo's semi-sorted sampler, lhotse samplers
        sampler = ResumableBatchSampler(loader.sampler, seed=seed, batches_from_inner=True, rank=rank, world=world)
    else:
        inner = loader.batch_sampler.sampler
        if isinstance(inner, DistributedSampler):
            rank, world = inner.rank, inner.num_replicas  # already sharded: keep its shard, do not shard again
            sampler = ResumableBatchSampler(inner, seed=seed, batch_size=loader.batch_size, drop_last=loader.drop_last)
        else:
            sampler = ResumableBatchSampler(
                inner, seed=seed, batch_size=loader.batch_size, drop_last=loader.drop_last, rank=rank, world=world
            )
    return ResumableDataLoader(
        SeededDataset(dataset),
        batch_size=None,
        sampler=sampler,
        collate_fn=loader.collate_fn,  # NeMo's audio datasets return a list of samples for a list of indices
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers if loader.num_workers else False,
    )


def consumed_one_batch(loader: Any) -> None:
    """Mark one more training batch of this epoch as taken (a no-op for other loaders)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, ResumableBatchSampler):
        sampler.mark_consumed()


class StepSeed(pl.Callback):
    """Reseed python, numpy and torch before every micro-batch from ``(seed, global step, rank, micro-batch)``.

    Each micro-batch's random draws (SpecAugment, dither, dropout, masking, negatives) then depend on the step
    and its place in the accumulation window alone, so a run resumed from a checkpoint repeats the draws of an
    uninterrupted one. Ranks differ (their rank is mixed in), and so do the micro-batches of one optimizer step
    (``trainer.accumulate_grad_batches > 1``: ``global_step`` does not move inside the window). The first
    micro-batch of a step keeps the seed words ``(seed, step, rank)`` of runs without accumulation.

    The micro-batch index is counted here (reset when the global step moves); checkpoints are written at step
    boundaries, so a resumed run starts at micro-batch 0 as the uninterrupted one did.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._step: int | None = None
        self.micro = 0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        self.micro = self.micro + 1 if step == self._step else 0
        self._step = step
        _seed_all(step_seed_words(self.seed, step, int(trainer.global_rank), self.micro))


def step_seed_words(seed: int, step: int, rank: int, micro: int = 0) -> list[int]:
    """The seed words of one micro-batch (see :class:`StepSeed`)."""
    return [seed, step, rank] if micro == 0 else [seed, step, rank, micro]
