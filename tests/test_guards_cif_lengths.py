"""CIF output lengths: one count for the compressor, the cost model and exact arithmetic (issue 30, item 7).

A squeeze ``s`` turns ``L`` 20 ms frames into ``floor(L / s)`` frames, plus the tail frame when ``keep_tail``
(inference) and the tail's mass ``L / s - floor(L / s)`` is at least 0.5; the compressor never returns fewer than
one frame. ``nemo_sew.nn.compress.cif_lengths`` computes it, ``nemo_sew.cost.cif_frames`` counts the cost model's
frames with it, and ``SqueezeCompressor`` returns it with its output: all three must agree with exact rational
arithmetic on a fine grid of rates and lengths, tails of exactly 0.5 included (float rounding goes either way there).
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from nemo_sew.cost import cif_frames
from nemo_sew.nn.compress import SqueezeCompressor, cif_lengths

GRID = [Fraction(100 + 5 * i, 100) for i in range(61)]  # 1.00, 1.05, ..., 4.00
RATES = sorted(set(GRID) | {Fraction(6, 5), Fraction(8, 5), Fraction(5, 2), Fraction(10, 3), Fraction(7, 3)})
LENGTHS = torch.arange(1, 301)


def exact(length: int, rate: Fraction, keep_tail: bool) -> int:
    """``floor(L / s)`` (+1 when ``keep_tail`` and the remainder is >= 1/2), in exact rational arithmetic."""
    q = Fraction(length) / rate
    n = q.numerator // q.denominator
    return n + int(keep_tail and q - n >= Fraction(1, 2))


def test_exact_half_tails_by_hand():
    """Rate 1.6, length 4: 2.5 segments; the tail of exactly 0.5 counts when ``keep_tail``, else not."""
    four = torch.tensor([4])
    assert int(cif_lengths(four, 1.6, keep_tail=True)[0]) == 3
    assert int(cif_lengths(four, 1.6, keep_tail=False)[0]) == 2
    assert int(cif_frames(four, 1.6)[0]) == 3
    assert int(cif_lengths(torch.tensor([5]), 2.5, keep_tail=True)[0]) == 2  # 2.0: no tail at all
    assert int(cif_lengths(torch.tensor([3]), 1.2, keep_tail=True)[0]) == 3  # 2.5 -> 3
    assert int(cif_lengths(torch.tensor([1]), 2.5, keep_tail=True)[0]) == 0  # 0.4: less than half a frame
    assert int(cif_frames(torch.tensor([1]), 2.5)[0]) == 1  # ... but the cost model counts the compressor's one


@pytest.mark.parametrize("keep_tail", [True, False])
def test_cif_lengths_are_exact_on_the_grid(keep_tail: bool):
    half_tails = 0
    for rate in RATES:
        got = cif_lengths(LENGTHS, float(rate), keep_tail).tolist()
        want = [exact(n, rate, keep_tail) for n in range(1, 301)]
        assert got == want, (float(rate), [(n + 1, g, w) for n, (g, w) in enumerate(zip(got, want)) if g != w][:5])
        half_tails += sum(Fraction(n) / rate % 1 == Fraction(1, 2) for n in range(1, 301))
    assert half_tails > 100  # the grid really has tails of exactly one half


def test_the_cost_model_counts_the_same_frames():
    """``cost.cif_frames`` = ``cif_lengths`` with the tail kept (the inference rule), clamped at one frame."""
    for rate in RATES:
        want = [max(1, exact(n, rate, True)) for n in range(1, 301)]
        assert cif_frames(LENGTHS, float(rate)).tolist() == want, float(rate)
        assert cif_frames(LENGTHS, float(rate), keep_tail=False).tolist() == [
            max(1, exact(n, rate, False)) for n in range(1, 301)
        ], float(rate)


def _compressor_lengths(comp: SqueezeCompressor, lengths: torch.Tensor, rate: float, keep_tail: bool) -> list[int]:
    """Output lengths the compressor returns for a padded batch of ``lengths``, and its output's time axis agrees."""
    x = torch.randn(len(lengths), int(lengths.max()), 16)
    with torch.no_grad():
        y, out_len, _ = comp(x, lengths, rate, keep_tail=keep_tail)
    assert y.shape[1] == int(out_len.max()), (rate, y.shape, int(out_len.max()))
    return out_len.tolist()


@pytest.mark.parametrize("keep_tail", [True, False])
def test_the_compressor_returns_the_same_lengths(keep_tail: bool):
    """Uniform CIF (non-integer rates) on the whole grid with lengths 1..100 (more than one period of ``L mod p``
    for every rate there), and at the named rates with lengths 1..300; the CIF compressor with learned weights
    also at integer rates. Each item's length must not depend on the other items of the batch."""
    torch.manual_seed(0)
    uniform = SqueezeCompressor(16, kernel=3, groups=4, factor=2).eval()
    learned = SqueezeCompressor(16, kernel=3, groups=4, factor=2, alpha_predictor=True).eval()
    short = LENGTHS[:100]
    for rate in RATES:
        batches = LENGTHS.split(100) if rate in (Fraction(6, 5), Fraction(8, 5), Fraction(5, 2)) else [short]
        comp = learned if rate.denominator == 1 else uniform
        for lengths in batches:  # batches of 100 (the dense CIF weights grow as batch x T^2 / s)
            want = [max(1, exact(int(n), rate, keep_tail)) for n in lengths]
            assert _compressor_lengths(comp, lengths, float(rate), keep_tail) == want, float(rate)
    for rate in (Fraction(8, 5), Fraction(6, 5)):  # a shuffled batch: the same per-item lengths
        order = torch.randperm(100)
        want = [max(1, exact(int(n), rate, keep_tail)) for n in short[order]]
        assert _compressor_lengths(uniform, short[order], float(rate), keep_tail) == want


def test_integer_rates_of_the_plain_compressor_pool_without_a_tail():
    """SEW's average pooling at an integer squeeze: ``floor(L / s)``, no tail even at inference
    (``SqueezeCompressor.output_lengths`` says the same)."""
    comp = SqueezeCompressor(16, kernel=3, groups=4, factor=2).eval()
    for s in (1, 2, 3, 4):
        lengths = torch.arange(s, 301)  # inputs of at least one squeezed frame
        want = [n // s for n in range(s, 301)]
        assert _compressor_lengths(comp, lengths, float(s), keep_tail=True) == want
        assert SqueezeCompressor.output_lengths(lengths, float(s), keep_tail=True).tolist() == want
