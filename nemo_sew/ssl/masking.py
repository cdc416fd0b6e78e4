"""wav2vec 2.0 span masking over time and channels, padding-aware.

Written by hand: NeMo's ``RandomBlockMasking`` masks spectrogram blocks before the encoder's
subsampling and returns a float mask over feature bins; SEW and wav2vec 2.0 mask *spans of 20 ms
feature frames* after the front end and replace them with a learned embedding. fairseq's
``compute_mask_indices`` is numpy and per-utterance; this is the same rule in batched torch.

Rule (fairseq ``compute_mask_indices`` with ``mask_type=static``, ``no_overlap=False``): an utterance of
``L`` valid frames gets ``n = max(min_masks, floor(prob * L / span + u))`` span starts (``u ~ U[0, 1)``),
drawn without replacement from ``[0, L - span]``, each masking ``span`` frames; overlapping spans merge,
so the masked fraction is a little below ``prob`` (0.65 / 10 masks about 49% of the frames). Padding is
never masked.
"""

from __future__ import annotations

import torch

from nemo_sew.nn.frontend import time_mask


def span_mask(
    lengths: torch.Tensor,
    max_len: int,
    prob: float,
    span: int,
    min_masks: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A ``(B, max_len)`` bool mask of spans (True = masked) within each item's valid ``lengths``.

    Items shorter than ``span`` get spans clipped at their end; items of length 0 get nothing.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"expected a mask probability in [0, 1], got {prob}")
    if span < 1:
        raise ValueError(f"expected a mask span >= 1, got {span}")
    b = lengths.shape[0]
    device = lengths.device
    if prob == 0.0 and min_masks == 0 or max_len == 0:
        return torch.zeros(b, max_len, dtype=torch.bool, device=device)
    lengths = lengths.clamp(max=max_len)
    # drawn on the lengths' device (no host round trip per step on a GPU); a generator draws on its own device
    draw_on = generator.device if generator is not None else device
    u = torch.rand(b, generator=generator, device=draw_on).to(device)
    n = torch.floor(prob * lengths.float() / span + u).long().clamp_min(min_masks)
    starts_range = (lengths - span + 1).clamp_min(1)  # valid start positions [0, L - span]
    n = torch.minimum(n, starts_range).masked_fill(lengths == 0, 0)
    # n distinct starts per item: the n smallest of random keys over the valid start positions
    keys = torch.rand(b, max_len, generator=generator, device=draw_on).to(device)
    keys = keys.masked_fill(~time_mask(starts_range, max_len), 2.0)  # invalid starts sort last
    order = keys.argsort(dim=1)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(max_len, device=device).expand(b, -1))
    is_start = rank < n[:, None]  # (B, T)
    # spread each start over ``span`` frames: a causal max-filter of width ``span``
    starts = is_start.float()[:, None, :]
    covered = torch.nn.functional.max_pool1d(torch.nn.functional.pad(starts, (span - 1, 0)), span, 1)[:, 0, :]
    return (covered > 0) & time_mask(lengths, max_len)


def channel_mask(
    batch: int, channels: int, prob: float, span: int, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """A ``(B, C)`` bool mask of channel spans (fairseq ``mask_channel_prob`` / ``mask_channel_length``)."""
    lengths = torch.full((batch,), channels, dtype=torch.long, device=device)
    return span_mask(lengths, channels, prob, min(span, channels), generator=generator)
