"""The pre-training parts the SSL losses stand on (issue 30, item 2: the training steps): span masking and the
prediction heads.

- ``span_mask`` follows fairseq's ``compute_mask_indices`` rule (module docstring of ``nemo_sew.ssl.masking``):
  ``max(min_masks, floor(prob * L / span + u))`` distinct starts in ``[0, L - span]``, each masking ``span`` frames,
  never padding; with ``span = 1`` the number of masked frames is that count exactly, so the rule is checked
  number for number against the same ``u`` drawn from the same generator;
- ``channel_mask`` is the same rule over channels, the span clipped to the channel count;
- ``MLPHead`` is SEW's ``MLPv3`` (no-bias Linear, BatchNorm, ReLU, Linear; Xavier-normal weights, zero bias) or
  wav2vec 2.0's single Linear, and keeps its BatchNorm in fp32 under reduced precision.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nemo_sew.ssl.heads import MLPHead
from nemo_sew.ssl.masking import channel_mask, span_mask


def _runs(row: torch.Tensor) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D bool tensor."""
    runs, start = [], None
    for i, v in enumerate([*row.tolist(), False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


@pytest.mark.parametrize(("prob", "min_masks"), [(0.3, 0), (0.65, 2), (0.05, 3), (1.0, 0)])
def test_span_one_masks_exactly_the_rules_count_per_item(prob, min_masks):
    lengths = torch.tensor([0, 1, 5, 17, 40, 64])
    mask = span_mask(lengths, 64, prob=prob, span=1, min_masks=min_masks, generator=torch.Generator().manual_seed(7))
    u = torch.rand(len(lengths), generator=torch.Generator().manual_seed(7))  # the rule's u: the generator's first draw
    for i, n in enumerate(lengths.tolist()):
        want = min(max(min_masks, math.floor(prob * n + float(u[i]))), n) if n else 0
        assert int(mask[i].sum()) == want, (n, int(mask[i].sum()), want)
        assert not mask[i, n:].any()  # never padding


def test_spans_start_in_range_cover_span_frames_and_merge_when_they_overlap():
    lengths = torch.tensor([100, 37, 12])
    span = 6
    for seed in range(20):
        mask = span_mask(lengths, 100, prob=0.5, span=span, min_masks=1, generator=torch.Generator().manual_seed(seed))
        u = torch.rand(3, generator=torch.Generator().manual_seed(seed))
        for i, n in enumerate(lengths.tolist()):
            runs = _runs(mask[i])
            assert runs and all(length >= span for _, length in runs)  # whole spans, merged when they overlap
            assert all(start + length <= n for start, length in runs)  # starts in [0, L - span]: inside the item
            starts = max(1, math.floor(0.5 * n / span + float(u[i])))
            assert span <= int(mask[i].sum()) <= min(n, starts * span), (n, int(mask[i].sum()))


def test_each_item_draws_its_own_starts():
    """Items are masked independently: 16 items of the same length get 16 different masks (not one shared order)."""
    mask = span_mask(torch.full((16,), 100), 100, prob=0.3, span=1, generator=torch.Generator().manual_seed(4))
    assert len({tuple(row.tolist()) for row in mask}) == 16


def test_an_item_shorter_than_the_span_is_masked_from_its_start_to_its_end():
    mask = span_mask(torch.tensor([3, 10]), 10, prob=0.9, span=5, min_masks=1, generator=torch.Generator().manual_seed(0))
    assert mask[0].tolist() == [True] * 3 + [False] * 7  # the one start (0), clipped at the item's end


def test_nothing_to_mask_gives_an_all_false_mask_of_the_right_shape_and_device():
    lengths = torch.tensor([10, 4])
    for kwargs in ({"prob": 0.0, "span": 3}, {"prob": 0.0, "span": 1, "min_masks": 0}):
        mask = span_mask(lengths, 10, **kwargs)
        assert mask.dtype == torch.bool and mask.shape == (2, 10) and not mask.any()
    assert span_mask(lengths, 0, prob=0.5, span=2).shape == (2, 0)
    forced = span_mask(lengths, 10, prob=0.0, span=2, min_masks=1, generator=torch.Generator().manual_seed(1))
    assert [int(r.sum()) for r in forced] == [2, 2]  # min_masks applies even at prob 0
    assert span_mask(torch.tensor([0, 0]), 8, prob=1.0, span=2, min_masks=2).sum() == 0  # empty items: nothing
    for prob, max_len in ((0.5, 10), (0.0, 10), (0.5, 0)):  # drawn, nothing to draw, no frames: on the lengths' device
        meta = span_mask(torch.tensor([10, 4], device="meta"), max_len, prob=prob, span=2)
        assert meta.device.type == "meta" and meta.shape == (2, max_len) and meta.dtype == torch.bool
    # a CPU generator with lengths on another device (the meta device stands in for a GPU): drawn on the generator's
    # device, the mask on the lengths' device
    drawn = span_mask(torch.tensor([10, 4], device="meta"), 10, 0.5, 2, generator=torch.Generator().manual_seed(0))
    assert drawn.device.type == "meta" and drawn.shape == (2, 10)


def test_lengths_beyond_max_len_are_clipped_to_it():
    mask = span_mask(torch.tensor([50]), 8, prob=1.0, span=1, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (1, 8) and int(mask.sum()) == 8  # floor(1.0 * 8 + u) = 8 starts on 8 frames


def test_bad_options_are_refused_naming_them():
    lengths = torch.tensor([10])
    for prob in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"expected a mask probability in \[0, 1\], got {prob}"):
            span_mask(lengths, 10, prob=prob, span=2)
    with pytest.raises(ValueError, match="expected a mask span >= 1, got 0"):
        span_mask(lengths, 10, prob=0.5, span=0)


def test_masks_repeat_with_their_generator_and_leave_the_global_rng_alone():
    lengths = torch.tensor([80, 33])
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = span_mask(lengths, 80, prob=0.4, span=4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), before)
    b = span_mask(lengths, 80, prob=0.4, span=4, generator=torch.Generator().manual_seed(5))
    c = span_mask(lengths, 80, prob=0.4, span=4, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(9)
    d = span_mask(lengths, 80, prob=0.4, span=4)  # no generator: the global one
    torch.manual_seed(9)
    assert torch.equal(d, span_mask(lengths, 80, prob=0.4, span=4))


def test_channel_masks_are_span_masks_over_the_channels():
    mask = channel_mask(3, 16, prob=0.5, span=4, generator=torch.Generator().manual_seed(2))
    want = span_mask(torch.full((3,), 16), 16, 0.5, 4, generator=torch.Generator().manual_seed(2))
    assert mask.shape == (3, 16) and torch.equal(mask, want)
    wide = channel_mask(2, 3, prob=1.0, span=10, generator=torch.Generator().manual_seed(0))
    assert wide.all()  # the span clipped to the 3 channels: all masked
    assert channel_mask(2, 8, prob=0.5, span=2, device="meta").device.type == "meta"


# ---------------------------------------------------------------------------------- MLPHead


def test_the_mlp_head_is_sews_mlpv3():
    torch.manual_seed(0)
    head = MLPHead(64, 32, hidden=256)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    first, norm, _, last = layers
    assert (first.in_features, first.out_features, first.bias) == (64, 256, None)
    assert norm.num_features == 256 and (last.in_features, last.out_features) == (256, 32)
    assert torch.count_nonzero(last.bias) == 0
    for linear in (first, last):  # Xavier normal: std sqrt(2 / (fan_in + fan_out)), mean 0
        std = math.sqrt(2.0 / (linear.in_features + linear.out_features))
        assert float(linear.weight.std()) == pytest.approx(std, rel=0.08)
        assert abs(float(linear.weight.mean())) < 0.1 * std
    x = torch.randn(50, 64)
    head.train()
    h = first(x)
    ref = last(torch.relu((h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + norm.eps)))  # batch statistics
    torch.testing.assert_close(head(x), ref, rtol=1e-4, atol=1e-5)


def test_hidden_zero_is_wav2vec2s_single_linear():
    torch.manual_seed(0)
    head = MLPHead(48, 20, hidden=0)
    assert type(head.net) is nn.Linear and (head.net.in_features, head.net.out_features) == (48, 20)
    assert torch.count_nonzero(head.net.bias) == 0
    assert float(head.net.weight.std()) == pytest.approx(math.sqrt(2.0 / 68), rel=0.15)
    x = torch.randn(5, 48)
    torch.testing.assert_close(head(x), x @ head.net.weight.T)
    assert head.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16  # no BatchNorm: no fp32 island
    assert MLPHead(8, 4).net[0].out_features == 4096  # SEW's default hidden width
    assert isinstance(MLPHead(8, 4, hidden=1).net, nn.Sequential)  # any positive width is an MLP


def test_the_batch_norm_runs_in_fp32_under_reduced_precision():
    torch.manual_seed(0)
    head = MLPHead(16, 8, hidden=32).train()
    x = torch.randn(40, 16)
    want = head(x)
    got = head(x.to(torch.bfloat16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, head(x.to(torch.bfloat16).float()))
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head(x.to(torch.bfloat16)).dtype == torch.float32  # autocast is off inside the fp32 island


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (lengths on the GPU, a CPU generator)")
def test_a_cpu_generator_draws_masks_for_lengths_on_the_gpu():
    """Draws happen on the generator's device (a CPU generator for reproducible masks on any GPU) or, without one, on
    the lengths' device (no host round trip per step); the mask is on the lengths' device either way."""
    lengths = torch.tensor([40, 17], device="cuda")
    seeded = span_mask(lengths, 40, 0.5, 4, min_masks=1, generator=torch.Generator().manual_seed(3))
    on_cpu = span_mask(lengths.cpu(), 40, 0.5, 4, min_masks=1, generator=torch.Generator().manual_seed(3))
    assert seeded.device.type == "cuda" and torch.equal(seeded.cpu(), on_cpu)  # the same draws as on the CPU
    torch.manual_seed(0)
    cpu_state = torch.random.get_rng_state()
    unseeded = span_mask(lengths, 40, 0.5, 4, min_masks=1)
    assert unseeded.device.type == "cuda"
    assert torch.equal(torch.random.get_rng_state(), cpu_state)  # drawn on the GPU's generator, not the CPU's
