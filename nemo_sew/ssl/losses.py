"""Self-supervised losses on masked frames: wav2vec 2.0's contrastive InfoNCE and HuBERT's masked prediction.

Written by hand because NeMo's ``ContrastiveLoss`` works on spectrogram patches it quantizes itself
(``combine_time_steps``, its own masks) and cannot take SEW's 20 ms front-end features, and NeMo's
``MLMLoss`` expects pre-computed decoder log-probs over a fixed vocabulary. Inputs here are the flattened
masked frames ``(N, D)`` plus the utterance each frame belongs to, so utterances of different lengths
(with different numbers of masked frames) need no cropping, unlike fairseq which crops a batch to
its shortest item.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_negatives(
    utterance: torch.Tensor, num: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Indices ``(N, num)`` of distractors for each of ``N`` masked frames, from the same utterance.

    ``utterance`` (N,) is sorted by utterance id (as ``mask.nonzero()`` returns it). Each frame draws
    ``num`` other masked frames of its own utterance uniformly with replacement, never itself
    (fairseq ``sample_negatives`` with ``cross_sample_negatives=0``). A frame that is the only masked
    frame of its utterance gets itself; :func:`contrastive_loss` masks such identical candidates out.
    """
    n = utterance.shape[0]
    if n == 0:
        return torch.zeros(0, num, dtype=torch.long, device=utterance.device)
    ids, counts = torch.unique_consecutive(utterance, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    count = counts.repeat_interleave(counts)  # (N,) masked frames in my utterance
    start = starts.repeat_interleave(counts)
    local = torch.arange(n, device=utterance.device) - start
    draw_on = generator.device if generator is not None else utterance.device  # on the model's device
    r = torch.rand(n, num, generator=generator, device=draw_on).to(utterance.device)
    offset = 1 + torch.floor(r * (count - 1).clamp_min(1)[:, None].float()).long()  # 1 .. count-1
    offset = torch.where(count[:, None] > 1, offset, torch.zeros_like(offset))
    return start[:, None] + (local[:, None] + offset) % count[:, None]


def contrastive_loss(
    predictions: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE: the true target among ``K`` distractors by cosine similarity / temperature.

    Args:
        predictions: ``(N, D)`` context-network outputs at masked frames (after ``final_proj``).
        targets: ``(N, D)`` quantized targets (after ``project_q``).
        negatives: ``(N, K)`` indices into ``targets`` (:func:`sample_negatives`).

    Returns the mean loss over frames and the accuracy (positive scored highest). Distractors equal to
    the positive get ``-inf`` (fairseq does the same).
    """
    candidates = torch.cat([targets[:, None, :], targets[negatives]], dim=1)  # (N, 1+K, D)
    logits = _cosine_logits(predictions, candidates, temperature)
    same = (targets[negatives] == targets[:, None, :]).all(-1)  # (N, K)
    logits[:, 1:] = logits[:, 1:].masked_fill(same, float("-inf"))
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.argmax(-1) == 0).float().mean()
    return loss, accuracy


def masked_prediction_loss(
    predictions: torch.Tensor,
    label_embeddings: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HuBERT's loss: cross-entropy over clusters, logits = cosine(prediction, label embedding) / temperature.

    Args:
        predictions: ``(N, D)`` projected outputs at the frames scored (masked ones).
        label_embeddings: ``(K, D)`` one learned embedding per cluster.
        labels: ``(N,)`` cluster ids.
    """
    logits = _cosine_logits(predictions, label_embeddings[None], temperature)
    loss = F.cross_entropy(logits, labels)
    return loss, (logits.argmax(-1) == labels).float().mean()


def _cosine_logits(predictions: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """``(N, D)`` vs ``(N or 1, C, D)`` -> ``(N, C)`` cosine similarities / temperature, in fp32."""
    return F.cosine_similarity(predictions.float()[:, None, :], candidates.float(), dim=-1) / temperature
