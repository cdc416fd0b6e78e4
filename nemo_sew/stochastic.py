"""How a stochastic (squeeze-sampled) model trains: which profiles one CTC training step runs, and the loss.

``model.stochastic.method`` in a CTC recipe (only acts when the encoder has a ``squeeze_sampler``):

- ``uniform`` (default): one profile per step, the sampler's draw for the global step (the stochastic
  wav2vec 2.0 seed's recipe).
- ``sandwich``: three profiles per step, the smallest and the largest squeeze and the sampler's draw
  (BigNAS / slimmable networks' sandwich rule); the loss is the mean of their CTC losses. A step costs
  about three uniform steps, so compare at equal wall-clock time too (``nemo-sew bench stochastic --methods``).
  ``middle: interior`` draws the third profile's squeeze among the factors strictly between the smallest and
  the largest (a sampler over values with more than two): with ``any`` (the rule as published) a middle factor
  of U{1, 2, 3, 4} is trained in a quarter of the steps while both extremes are trained in every step; with
  ``interior`` s = 2 and s = 3 get half the steps each. The draw keeps the sampler's pooling.
- ``inplace_distill``: the smallest squeeze (s = 1: the teacher) learns from the transcripts with CTC; one
  squeezed profile per step (a draw among the other factors) learns ``(1 - distill_weight) * CTC +
  distill_weight * KD``, where KD is the frame-level KL divergence from the teacher's (detached) CTC
  posteriors, which the expander puts on the same 20 ms frames, at ``temperature``. The loss is the mean
  of the teacher's and the student's.
- ``weighted``: one profile per step, the squeeze drawn with probabilities that favour the factors whose
  training CTC loss lags: ``p(s) ~ (ema_loss(s) / min_s ema_loss)^power``, mixed with ``floor`` of the
  uniform distribution; ``ema_loss`` is an exponential moving average (``ema``) of each factor's loss,
  averaged over DDP ranks before it is used, so every rank keeps the same weights.

The paths of one step share what no profile changes: the preprocessor, SpecAugment and the encoder's front
end (features, projection, fine-tuning masking) run once (``SqueezeCTCModel.forward_with_draws``), so the
teacher and the student see the same augmented input and the front end's forward and backward run once.

Every draw is a pure function of the global step (and, for ``weighted``, of the rank-averaged losses seen
so far), so DDP ranks run the same profiles. ``weighted``'s averages are saved in the Lightning checkpoint
(``stochastic_ema_loss``), so a resumed run continues with them.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from nemo_sew.distill import distillation_loss as distill_loss  # noqa: F401 (the in-place distillation KL)
from nemo_sew.encoder import Draw

METHODS = ("uniform", "sandwich", "inplace_distill", "weighted")
# named settings of a method (what ``nemo-sew bench stochastic --methods`` accepts besides METHODS)
VARIANTS = {"sandwich_interior": {"method": "sandwich", "middle": "interior"}}


def method_config(name: str) -> dict[str, str]:
    """``model.stochastic``'s settings for a method name of :data:`METHODS` or :data:`VARIANTS`."""
    if name in METHODS:
        return {"method": name}
    if name in VARIANTS:
        return dict(VARIANTS[name])
    raise ValueError(f"stochastic method: expected one of {[*METHODS, *VARIANTS]}, got {name!r}")


def method_override(name: str, prefix: str = "+") -> str:
    """The recipe override that selects method ``name`` (``+model.stochastic={method: sandwich}``; a variant
    adds its settings)."""
    return f"{prefix}model.stochastic={{" + ", ".join(f"{k}: {v}" for k, v in method_config(name).items()) + "}"


@dataclass(frozen=True)
class StochasticOptions:
    """``model.stochastic`` (see the module docstring)."""

    method: str = "uniform"
    distill_weight: float = 0.5
    temperature: float = 1.0
    ema: float = 0.9
    power: float = 2.0
    floor: float = 0.2
    middle: str = "any"  # sandwich: the third profile's squeeze, the sampler's draw (any) or an interior factor

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"stochastic.method: expected one of {METHODS}, got {self.method!r}")
        if self.middle not in ("any", "interior"):
            raise ValueError(f"stochastic.middle: expected 'any' or 'interior', got {self.middle!r}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"stochastic.distill_weight: expected 0 <= w <= 1, got {self.distill_weight}")
        if self.temperature <= 0:
            raise ValueError(f"stochastic.temperature: expected > 0, got {self.temperature}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"stochastic.ema: expected 0 <= ema < 1, got {self.ema}")
        if not 0.0 <= self.floor <= 1.0:
            raise ValueError(f"stochastic.floor: expected 0 <= floor <= 1, got {self.floor}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> "StochasticOptions":
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"stochastic: unknown keys {sorted(unknown)}")
        return cls(**cfg)


@dataclass
class TrainingPath:
    """One profile of a training step and how it learns: ``ctc`` (transcripts), ``teacher`` (transcripts,
    and its posteriors teach the students) or ``student`` (CTC and KD from the teacher)."""

    draw: Draw
    role: str = "ctc"


def run_seed(model) -> int:
    """The run's seed as the model's draws carry it (``model.seed`` in the config, written by ``nemo-sew train``
    from the recipe's top-level ``seed``; 0 when absent)."""
    cfg = getattr(model, "cfg", None)
    value = cfg.get("seed") if cfg is not None else None
    return int(value) if value is not None else 0


@dataclass
class StochasticTrainer:
    """The profiles of each training step and the loss over them, for one model (see the module docstring)."""

    options: StochasticOptions = field(default_factory=StochasticOptions)
    ema_loss: dict[float, float] = field(default_factory=dict)  # weighted: rank-averaged EMA of each factor's loss

    @property
    def method(self) -> str:
        return self.options.method

    # ------------------------------------------------------------------ draws (pure functions of the step)

    def factor_weights(self, choices: list[float]) -> list[float]:
        """``weighted``'s probabilities over ``choices`` (uniform until every factor has a loss)."""
        n = len(choices)
        if any(c not in self.ema_loss for c in choices):
            return [1.0 / n] * n
        best = min(self.ema_loss[c] for c in choices)
        raw = [(self.ema_loss[c] / max(best, 1e-8)) ** self.options.power for c in choices]
        total = sum(raw)
        return [(1 - self.options.floor) * r / total + self.options.floor / n for r in raw]

    def paths(self, encoder, step: int, seed: int = 0) -> list[TrainingPath]:
        """The profiles training step ``step`` runs (the same on every DDP rank); every path's draw carries the
        step and the run's ``seed``."""
        base = encoder.draw(step, seed=seed)
        sampler = encoder.sampler
        if sampler is None or self.method == "uniform":
            return [TrainingPath(base)]
        choices = sorted(set(sampler.squeeze_choices())) if sampler.squeeze is not None else [float(encoder.squeeze)]
        discrete = sampler.squeeze is not None and "values" in sampler.squeeze
        lo, hi = choices[0], choices[-1]

        def at(squeeze: float, pooled: bool = False) -> Draw:
            profile = base.profile if pooled else dataclasses.replace(base.profile, q_pool=None, kv_pool=None)
            # derived from the step's draw: it keeps the step (gate annealing, pruning warm-up) and the seed
            return dataclasses.replace(base, profile=dataclasses.replace(profile, squeeze=float(squeeze)))

        rng = random.Random(f"{sampler.seed}-{int(step)}-{self.method}")
        if self.method == "sandwich":
            middle = base
            if self.options.middle == "interior":
                if not discrete:
                    raise ValueError("stochastic.middle=interior: expected a squeeze sampler over values ({'values': [...]})")
                interior = [c for c in choices if lo < c < hi]
                middle = at(rng.choice(interior), pooled=True) if interior else base
            return [TrainingPath(at(lo)), TrainingPath(at(hi)), TrainingPath(middle)]
        if self.method == "inplace_distill":
            if discrete:
                students = [c for c in choices if c != lo]
                student = rng.choice(students) if students else lo
            else:
                student = rng.uniform(lo, hi)
            return [TrainingPath(at(lo), "teacher"), TrainingPath(at(student, pooled=True), "student")]
        if self.method == "weighted":
            if not discrete:
                raise ValueError("stochastic.method=weighted: expected a squeeze sampler over values ({'values': [...]})")
            squeeze = rng.choices(choices, weights=self.factor_weights(choices))[0]
            return [TrainingPath(at(squeeze, pooled=True))]
        raise AssertionError(self.method)

    def update(self, squeeze: float, loss: torch.Tensor) -> None:
        """``weighted``: fold one step's loss at ``squeeze`` into its average (averaged over DDP ranks first,
        so every rank keeps the same weights); other methods keep nothing."""
        if self.method != "weighted":
            return
        value = loss.detach().float().clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(value)
            value /= torch.distributed.get_world_size()
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            return
        old = self.ema_loss.get(float(squeeze))
        self.ema_loss[float(squeeze)] = value if old is None else self.options.ema * old + (1 - self.options.ema) * value

    # ------------------------------------------------------------------ the step's loss

    def loss(self, model, signal, signal_len, transcript, transcript_len, step: int):
        """``(loss, log_probs, encoded_len, predictions, out, logs)`` of one training step of a
        :class:`~nemo_sew.models.ctc.SqueezeProfileMixin` model: the mean over :meth:`paths` of each path's
        loss; ``log_probs`` ... ``out`` are the last path's (WER logging), ``out.aux_losses`` the mean over
        paths; ``logs``: each path's CTC loss by factor."""
        paths = self.paths(model.encoder, step, seed=run_seed(model))
        total, logs, teacher, aux = 0.0, {}, None, {}
        outputs = model.forward_with_draws(signal, signal_len, draws=[path.draw for path in paths])  # one shared front end
        for path, (log_probs, encoded_len, predictions, out) in zip(paths, outputs):
            ctc = model.loss(log_probs=log_probs, targets=transcript, input_lengths=encoded_len, target_lengths=transcript_len)
            factor = float(out.stats.get("squeeze", path.draw.profile.squeeze or 0.0))
            logs[f"train_ctc_s{factor:g}"] = ctc.detach()
            if path.role == "student" and teacher is not None:
                kd = distill_loss(log_probs, teacher[0], torch.minimum(encoded_len, teacher[1]), self.options.temperature)
                logs[f"train_kd_s{factor:g}"] = kd.detach()
                w = self.options.distill_weight
                total = total + (1 - w) * ctc + w * kd
            else:
                total = total + ctc
            if path.role == "teacher":
                teacher = (log_probs, encoded_len)
            for name, value in out.aux_losses.items():
                aux[name] = aux.get(name, 0.0) + value / len(paths)
            self.update(factor, ctc)
        out.aux_losses = aux
        return total / len(paths), log_probs, encoded_len, predictions, out, logs
