"""Distillation from a frozen teacher on the CTC frame posteriors, shared by pruning (``pruning_distill``) and
quantization-aware training (``qat_distill``): ``weight * KL(teacher || student)`` added to the task loss.

The teacher is the model the student starts from (the unpruned or the full-precision ``init_from_nemo``). It is
held outside the module tree, so it is neither saved, optimised nor counted in the student's parameters.
Written here because NeMo's distillation (``nemo.collections.llm`` / ModelOpt) targets LLM trainers, not the
ASR models' ``training_step``.
"""

from __future__ import annotations

from typing import Any

import torch

_ATTR = "_distill_teacher"


def attach_teacher(student: Any, teacher: Any, weight: float, temperature: float = 1.0) -> None:
    """Make ``student``'s training step add ``weight * KL(teacher || student)`` (see the module docstring)."""
    if not weight > 0:
        raise ValueError(f"distillation weight: expected > 0, got {weight}")
    if not temperature > 0:
        raise ValueError(f"distillation temperature: expected > 0, got {temperature}")
    teacher.eval()
    teacher.requires_grad_(False)
    object.__setattr__(student, _ATTR, (teacher, float(weight), float(temperature)))


def has_teacher(model: Any) -> bool:
    return getattr(model, _ATTR, None) is not None


def distillation_loss(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, lengths: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """``KL(teacher || student)`` of the frame posteriors ``(B, T, V)`` (log-probabilities on the same frames; the
    longer one is cut to the shorter), averaged over valid frames; the teacher is detached; ``temperature``
    softens both (the loss is scaled by ``temperature**2``, as in Hinton et al.). The one KL of the project:
    teacher distillation (pruning, QAT) and in-place distillation of stochastic models use it."""
    t = min(student_log_probs.shape[1], teacher_log_probs.shape[1])
    temp = float(temperature)
    s = torch.log_softmax(student_log_probs[:, :t].float() / temp, -1)
    p = torch.log_softmax(teacher_log_probs[:, :t].detach().float() / temp, -1)
    kl = (p.exp() * (p - s)).sum(-1)  # (B, T)
    valid = torch.arange(t, device=kl.device)[None, :] < lengths.clamp(max=t)[:, None]
    return (kl * valid).sum() / valid.sum().clamp_min(1) * (temp * temp)


def teacher_distillation(model, signal: torch.Tensor, signal_len: torch.Tensor, log_probs: torch.Tensor, lengths) -> torch.Tensor | None:
    """The distillation term of a model given a teacher by :func:`attach_teacher` (None without one)."""
    spec = getattr(model, _ATTR, None)
    if spec is None:
        return None
    teacher, weight, temperature = spec
    teacher.to(signal.device)
    with torch.no_grad():
        teacher_log_probs, _, _ = teacher(input_signal=signal, input_signal_length=signal_len)
    return weight * distillation_loss(log_probs, teacher_log_probs, lengths, temperature)


__all__ = ["attach_teacher", "distillation_loss", "has_teacher", "teacher_distillation"]
