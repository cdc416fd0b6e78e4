"""The compressor's public helpers do what their callers rely on (issue 30, mutation testing of ``nn/compress.py``).

* ``AlphaPredictor`` (OFA's CIF weight predictor) is ``Conv1d -> LayerNorm -> ReLU -> Linear -> sigmoid`` on the
  input with its padding zeroed: the weights of valid frames are those of the item run alone, whatever the padding
  holds.
* ``SqueezeCompressor.output_lengths`` counts the frames ``forward`` returns: ``floor(L / s)`` at integer rates,
  :func:`cif_lengths` (no tail unless asked) at real rates.
* ``SqueezeCompressor.integrate`` (once-for-all pre-training pools its targets with it) pools ``values`` with
  exactly the weights ``forward(x, ...)`` uses, under the same defaults (``lam=1``, ``keep_tail=False``): average
  pooling of the zero-padded values at integer rates of the plain compressor, the CIF segment means otherwise
  (learned weights at every rate). Checked against hand-computed segment weights, against ``forward`` with its
  positional conv silenced, for padding invariance, dtypes, lengths and gradients.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from nemo_sew.nn.compress import AlphaPredictor, SqueezeCompressor, cif_lengths

DIM = 8


def _compressor(alpha: bool = False, seed: int = 0) -> SqueezeCompressor:
    """A small compressor whose positional conv outputs exactly zero: ``forward`` is then its pooling alone."""
    torch.manual_seed(seed)
    comp = SqueezeCompressor(DIM, kernel=3, groups=4, factor=2, alpha_predictor=alpha).eval()
    with torch.no_grad():
        comp.conv.parametrizations.weight.original0.zero_()  # weight-norm gain 0 -> weight 0; bias is 0: GELU(0) = 0
    return comp


def _padded(lengths: list[int], t: int, dim: int = DIM, seed: int = 1, garbage: float = 1e3) -> torch.Tensor:
    """``(B, T, dim)`` random frames with garbage (not zeros) in every item's padding."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), t, dim, generator=g)
    for i, n in enumerate(lengths):
        x[i, n:] = garbage
    return x


def _exact(length: int, rate: Fraction, keep_tail: bool) -> int:
    q = Fraction(length) / rate
    n = q.numerator // q.denominator
    return n + int(keep_tail and q - n >= Fraction(1, 2))


# ---------------------------------------------------------------------------------------------- AlphaPredictor


def _alpha_reference(pred: AlphaPredictor, x: torch.Tensor) -> torch.Tensor:
    """The documented stack on one unpadded item ``(T, C)``, written with plain functional ops."""
    h = F.conv1d(x.T[None], pred.conv.weight, pred.conv.bias, padding=pred.conv.kernel_size[0] // 2)[0].T
    h = F.relu(F.layer_norm(h, (x.shape[1],), pred.norm.weight, pred.norm.bias, pred.norm.eps))
    return torch.sigmoid(h @ pred.proj.weight.T + pred.proj.bias)[:, 0]


def test_alpha_predictor_matches_its_documented_stack_and_ignores_padding():
    torch.manual_seed(0)
    pred = AlphaPredictor(DIM)
    with torch.no_grad():  # a non-trivial LayerNorm, so every stage shows
        pred.norm.weight.uniform_(0.5, 1.5)
        pred.norm.bias.uniform_(-0.3, 0.3)
    lengths = [12, 7, 3]
    x = _padded(lengths, 12)
    with torch.no_grad():
        a = pred(x, torch.tensor(lengths))
    assert a.shape == (3, 12) and a.dtype == torch.float32
    assert bool(((a > 0) & (a < 1)).all())
    for i, n in enumerate(lengths):
        with torch.no_grad():
            alone = pred(x[i : i + 1, :n], torch.tensor([n]))[0]
            ref = _alpha_reference(pred, x[i, :n])
        torch.testing.assert_close(alone, ref, atol=1e-5, rtol=1e-5)
        # the frames next to the padding see zeros there, as the conv's own zero padding of the item alone
        torch.testing.assert_close(a[i, :n], alone, atol=1e-5, rtol=1e-5)


def test_alpha_predictor_padding_content_does_not_matter():
    """Zeros, ones or garbage in the padding: the same weights on every valid frame."""
    torch.manual_seed(3)
    pred = AlphaPredictor(DIM)
    lengths = torch.tensor([10, 6])
    outs = []
    for garbage in (0.0, 1.0, -50.0):
        with torch.no_grad():
            outs.append(pred(_padded(lengths.tolist(), 10, garbage=garbage), lengths))
    valid = torch.arange(10)[None] < lengths[:, None]
    for other in outs[1:]:
        torch.testing.assert_close(other[valid], outs[0][valid], atol=0, rtol=0)


# ---------------------------------------------------------------------------------------------- output_lengths


def test_output_lengths_at_real_rates_follow_cif_and_keep_no_tail_by_default():
    lengths = torch.arange(2, 120)
    for rate in (Fraction(3, 2), Fraction(8, 5), Fraction(5, 2), Fraction(10, 3), Fraction(33, 10)):
        default = SqueezeCompressor.output_lengths(lengths, float(rate))
        assert default.dtype == torch.long
        assert default.tolist() == [_exact(n, rate, False) for n in range(2, 120)], float(rate)
        tail = SqueezeCompressor.output_lengths(lengths, float(rate), keep_tail=True)
        assert tail.tolist() == [_exact(n, rate, True) for n in range(2, 120)], float(rate)
        assert SqueezeCompressor.output_lengths(lengths, float(rate), False).tolist() == default.tolist()
    # by hand: 4 frames at s = 1.6 are 2.5 compressed frames; the half tail counts only when kept
    four = torch.tensor([4])
    assert SqueezeCompressor.output_lengths(four, 1.6).tolist() == [2]
    assert SqueezeCompressor.output_lengths(four, 1.6, keep_tail=True).tolist() == [3]
    assert SqueezeCompressor.output_lengths(torch.tensor([7]), 2).tolist() == [3]


@pytest.mark.parametrize("keep_tail", [False, True])
def test_output_lengths_count_what_forward_returns(keep_tail: bool):
    comp = _compressor()
    lengths = torch.tensor([23, 16, 9, 4])
    x = _padded(lengths.tolist(), 23)
    for rate in (1.5, 1.6, 2.5, 2, 3):
        with torch.no_grad():
            y, y_len, _ = comp(x, lengths, rate, keep_tail=keep_tail)
        want = SqueezeCompressor.output_lengths(lengths, rate, keep_tail=keep_tail)
        assert y_len.tolist() == want.tolist(), rate
        assert y.shape[1] == int(want.max())


# ---------------------------------------------------------------------------------------------- integrate


def test_integrate_real_rate_segment_means_by_hand():
    """4 frames at s = 1.6 carry 0.625 each; cumulative 0.625, 1.25, 1.875, 2.5. Segment 0 = 0.625 f0 + 0.375 f1,
    segment 1 = 0.25 f1 + 0.625 f2 + 0.125 f3, and the tail [2, 2.5) (kept only when asked) is f3 alone."""
    comp = _compressor()
    eye = torch.eye(4, dtype=torch.float64)[None]  # values = one-hot frames: the output rows are the weights
    x = torch.randn(1, 4, DIM)
    lengths = torch.tensor([4])
    seg = torch.tensor([[0.625, 0.375, 0, 0], [0, 0.25, 0.625, 0.125], [0, 0, 0, 1.0]], dtype=torch.float64)
    pooled, n = comp.integrate(eye, x, lengths, 1.6)  # default: no tail
    assert n.tolist() == [2] and pooled.shape == (1, 2, 4) and pooled.dtype == torch.float64
    torch.testing.assert_close(pooled[0], seg[:2], atol=1e-6, rtol=0)
    pooled, n = comp.integrate(eye, x, lengths, 1.6, keep_tail=True)
    assert n.tolist() == [3] and pooled.shape == (1, 3, 4)
    torch.testing.assert_close(pooled[0], seg, atol=1e-6, rtol=0)
    # s = 1.5 on 3 frames: two whole segments, 2/3 f0 + 1/3 f1 and 1/3 f1 + 2/3 f2
    pooled, n = comp.integrate(torch.eye(3)[None], torch.randn(1, 3, DIM), torch.tensor([3]), 1.5)
    assert n.tolist() == [2]
    torch.testing.assert_close(pooled[0], torch.tensor([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]]), atol=1e-6, rtol=0)


def test_integrate_integer_rate_is_average_pooling_of_the_zero_padded_values():
    comp = _compressor()
    lengths = torch.tensor([7, 4])
    values = _padded([7, 4], 7, dim=5, seed=4)
    pooled, n = comp.integrate(values, torch.randn(2, 7, DIM), lengths, 2)
    assert n.dtype == torch.long and n.tolist() == [3, 2]
    assert pooled.shape == (2, 3, 5)
    zeroed = values.clone()
    zeroed[1, 4:] = 0
    want = torch.stack([zeroed[:, 2 * k : 2 * k + 2].mean(1) for k in range(3)], 1)
    torch.testing.assert_close(pooled, want, atol=1e-6, rtol=1e-6)
    assert bool((pooled[1, 2] == 0).all())  # a frame of padding only pools to zeros
    pooled3, n3 = comp.integrate(values, torch.randn(2, 7, DIM), lengths, 3)
    assert n3.tolist() == [2, 1] and pooled3.shape == (2, 2, 5)
    torch.testing.assert_close(pooled3[0], values[0, :6].reshape(2, 3, 5).mean(1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_integrate_at_factor_one_returns_the_values(dtype: torch.dtype):
    """No squeeze: the values (target features) come back as they are, padding zeroed, lengths unchanged."""
    comp = _compressor()
    lengths = torch.tensor([5, 3])
    values = (torch.randn(2, 5, 3) * 10).to(dtype)
    got, n = comp.integrate(values, torch.randn(2, 5, DIM), lengths, 1)
    assert n.tolist() == [5, 3] and got.dtype == dtype
    want = values.clone()
    want[1, 3:] = 0
    assert torch.equal(got, want)


def test_integrate_real_rate_keeps_the_values_dtype():
    comp = _compressor()
    lengths = torch.tensor([9, 6])
    values = _padded([9, 6], 9, dim=3, seed=5).double()
    pooled, _ = comp.integrate(values, torch.randn(2, 9, DIM), lengths, 1.5)
    single, _ = comp.integrate(values.float(), torch.randn(2, 9, DIM), lengths, 1.5)
    assert pooled.dtype == torch.float64
    torch.testing.assert_close(pooled.float(), single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("rate", [1.5, 1.6, 2, 2.5, 3])
def test_integrate_pools_with_the_weights_forward_uses(alpha: bool, rate: float):
    """With the positional conv silenced, ``forward(x)`` is the pooling of ``x`` alone, so
    ``integrate(x, x, ...)`` must equal it on every frame, padding included, under the defaults and explicit
    ``lam`` / ``keep_tail`` (the learned weights depend on both)."""
    comp = _compressor(alpha=alpha)
    lengths = torch.tensor([14, 9, 1])
    x = _padded([14, 9, 1], 14, seed=6)
    with torch.no_grad():
        cases = [{}] + [{"lam": lam, "keep_tail": kt} for lam in (1.0, 0.4) for kt in (False, True)]
        for int_kw in cases:  # {} = both defaults
            y, y_len, _ = comp(x, lengths, rate, **int_kw)
            pooled, p_len = comp.integrate(x, x, lengths, rate, **int_kw)
            assert p_len.tolist() == y_len.tolist(), (rate, int_kw)
            assert pooled.shape == y.shape, (rate, int_kw)
            torch.testing.assert_close(pooled, y, atol=1e-5, rtol=1e-5, msg=f"{rate} {int_kw}")


def test_integrate_defaults_are_lam_one_and_no_tail():
    comp = _compressor(alpha=True, seed=2)
    lengths = torch.tensor([16, 11])
    x = _padded([16, 11], 16, seed=7)
    values = torch.randn(2, 16, 4)
    with torch.no_grad():
        default, n = comp.integrate(values, x, lengths, 1.6)
        explicit, n1 = comp.integrate(values, x, lengths, 1.6, lam=1.0, keep_tail=False)
        other, _ = comp.integrate(values, x, lengths, 1.6, lam=0.5)
    assert n.tolist() == n1.tolist() == [10, 6]
    torch.testing.assert_close(default, explicit, atol=0, rtol=0)
    assert not torch.allclose(default, other, atol=1e-4)  # lam matters for learned weights


def test_integrate_with_learned_weights_at_lam_zero_is_uniform_cif():
    """``lam = 0`` switches the predictor off: the learned compressor pools like the uniform one, at any rate."""
    learned, uniform = _compressor(alpha=True, seed=3), _compressor(seed=3)
    lengths = torch.tensor([15, 8])
    x = _padded([15, 8], 15, seed=8)
    values = torch.randn(2, 15, 4)
    for rate in (1.5, 2, 2.5):
        with torch.no_grad():
            a, na = learned.integrate(values, x, lengths, rate, lam=0.0)
            b, nb = uniform.integrate(values, x, lengths, rate, lam=0.0)
        assert na.tolist() == nb.tolist()
        valid = torch.arange(a.shape[1])[None] < na[:, None]
        torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("alpha", [False, True])
@pytest.mark.parametrize("rate", [2, 1.5])
def test_integrate_is_invariant_to_padding(alpha: bool, rate: float):
    """Each item's pooled frames are those of the item run alone, whatever the padding of values and x holds."""
    comp = _compressor(alpha=alpha, seed=4)
    lengths = [13, 8, 5]
    x = _padded(lengths, 13, seed=9, garbage=-7.0)
    values = _padded(lengths, 13, dim=3, seed=10, garbage=float("nan"))
    with torch.no_grad():
        pooled, n = comp.integrate(values, x, torch.tensor(lengths), rate)
        assert not bool(pooled.isnan().any())
        for i, m in enumerate(lengths):
            alone, n_alone = comp.integrate(values[i : i + 1, :m], x[i : i + 1, :m], torch.tensor([m]), rate)
            assert int(n[i]) == int(n_alone[0])
            torch.testing.assert_close(pooled[i, : int(n[i])], alone[0, : int(n[i])], atol=1e-5, rtol=1e-5)


def test_integrate_gradients_reach_the_pooled_frames_only():
    """Average pooling by 2: every frame inside a pooled pair gets 1/2, the dropped odd frame and padding get 0;
    CIF: each valid frame passes on its total segment weight, padding nothing."""
    comp = _compressor()
    lengths = torch.tensor([7, 4])
    values = torch.randn(2, 7, 3, requires_grad=True)
    pooled, _ = comp.integrate(values, torch.randn(2, 7, DIM), lengths, 2)
    pooled.sum().backward()
    want = torch.zeros(2, 7, 3)
    want[0, :6] = 0.5
    want[1, :4] = 0.5
    torch.testing.assert_close(values.grad, want, atol=0, rtol=0)

    values = torch.randn(1, 4, 2, requires_grad=True)
    pooled, _ = comp.integrate(values, torch.randn(1, 4, DIM), torch.tensor([4]), 1.6, keep_tail=True)
    pooled.sum().backward()  # column sums of the hand weights above: 0.625, 0.625, 0.625, 0.125 + 1
    torch.testing.assert_close(values.grad[0, :, 0], torch.tensor([0.625, 0.625, 0.625, 1.125]), atol=1e-6, rtol=0)


def test_cif_lengths_agree_with_integrate():
    comp = _compressor()
    lengths = torch.tensor([30, 17, 12])
    x = torch.randn(3, 30, DIM)
    for rate in (1.25, 2.5, 3.3):
        for keep_tail in (False, True):
            _, n = comp.integrate(x, x, lengths, rate, keep_tail=keep_tail)
            assert n.tolist() == cif_lengths(lengths, rate, keep_tail).clamp_min(1).tolist()
