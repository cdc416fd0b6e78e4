"""Behaviour guards of the quantization schemes (issue 30 item 2): each kills mutants of nemo_sew/quant/schemes.py
that tests/test_quant.py let survive (`make mutation MUTATION_ARGS=quant_schemes`, outputs/mutation/summary.md):
the ternary and MSE formulas against a direct computation, the tie rules the docstrings state, dtypes, devices
and element counts that are not a multiple of the codes per byte."""

import pytest
import torch

from nemo_sew.quant.schemes import (
    _MSE_GRID,
    BITS,
    QuantSpec,
    dequantize,
    fake_quantize,
    pack,
    packed_numel,
    quantize,
    unpack,
)


def _codes(shape, bits, gen):
    """Valid codes of a width: {-1, +1} for 1 bit, [-qmax, qmax] otherwise."""
    if bits == 1:
        return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(torch.int8)
    q = QuantSpec(bits).qmax
    return torch.randint(-q, q + 1, shape, generator=gen).to(torch.int8)


def _rows(out=6, cols=64):
    """Rows of different magnitudes, some with one outlier (where clipping pays)."""
    w = torch.randn(out, cols) * torch.linspace(0.2, 2, out)[:, None]
    w[::2, 3] *= 12
    return w


# ---------------------------------------------------------------------------------------------- the spec


def test_spec_accepts_group_size_one_and_names_what_it_rejects():
    assert QuantSpec(4, 1).group_size == 1
    with pytest.raises(ValueError, match=r"expected group_size >= 1 or None, got 0"):
        QuantSpec(4, 0)
    with pytest.raises(ValueError, match=r"expected method in \('minmax', 'mse'\), got 'max'"):
        QuantSpec(8, None, "max")


def test_spec_to_dict_round_trips():
    for spec in (QuantSpec(), QuantSpec(4, 32, "mse"), QuantSpec(1, None)):
        d = spec.to_dict()
        assert d == {"bits": spec.bits, "group_size": spec.group_size, "method": spec.method}
        assert QuantSpec(**d) == spec


# ---------------------------------------------------------------------------------------------- quantize


def test_one_bit_maps_the_mean_itself_to_plus_one():
    """``sign(W - mean)`` with codes {-1, +1}: an entry equal to its group's mean gets +1."""
    codes, scale = quantize(torch.tensor([[1.0, 2.0, 3.0]]), QuantSpec(1))
    assert codes.tolist() == [[-1, 1, 1]] and scale.tolist() == [[2.0]]


@pytest.mark.parametrize("group", [None, 16])
def test_ternary_is_twn_per_group(group):
    """q = sign(W) [|W| > 0.7 mean|W|], s = mean |W| over the kept entries, per group."""
    w = _rows()
    codes, scale = quantize(w, QuantSpec(2, group))
    g = group or w.shape[1]
    wg = w.reshape(w.shape[0], -1, g)
    a = wg.abs()
    keep = a > 0.7 * a.mean(-1, keepdim=True)
    assert torch.equal(codes.reshape(wg.shape), (torch.sign(wg) * keep).to(torch.int8))
    torch.testing.assert_close(scale, (a * keep).sum(-1) / keep.sum(-1))


def test_ternary_threshold_is_strict_and_a_single_kept_entry_is_its_scale():
    codes, scale = quantize(torch.tensor([[7.0, 13.0, 10.0, 10.0]]), QuantSpec(2))  # 0.7 * mean = 7: not kept
    assert codes.tolist() == [[0, 1, 1, 1]] and scale.tolist() == [[11.0]]
    codes, scale = quantize(torch.tensor([[0.0, 0.0, 0.0, -3.0]]), QuantSpec(2))
    assert codes.tolist() == [[0, 0, 0, -1]] and scale.tolist() == [[3.0]]


@pytest.mark.parametrize("bits,group", [(8, None), (4, 16)])
def test_mse_scale_is_the_grid_point_of_least_squared_error_per_group(bits, group):
    w = _rows()
    spec = QuantSpec(bits, group, "mse")
    _, scale = quantize(w, spec)
    g = group or w.shape[1]
    wg = w.reshape(w.shape[0], -1, g)
    amax = wg.abs().amax(-1)
    best = torch.full_like(amax, float("inf"))
    want = torch.zeros_like(amax)
    for f in _MSE_GRID:  # the first of equal errors wins: least clipping
        s = amax * f / spec.qmax
        err = ((torch.clamp(torch.round(wg / s[..., None]), -spec.qmax, spec.qmax) * s[..., None] - wg) ** 2).sum(-1)
        want = torch.where(err < best, s, want)
        best = torch.minimum(err, best)
    torch.testing.assert_close(scale, want, rtol=0, atol=0)
    if bits == 4:  # (8-bit steps are too fine for clipping one outlier to pay)
        minmax = amax / spec.qmax
        assert (scale < minmax).any() and (scale == minmax).any(), "some groups clip, some do not"


@pytest.mark.parametrize("bits,method", [(8, "minmax"), (8, "mse"), (4, "minmax"), (4, "mse"), (2, "minmax"), (1, "minmax")])
def test_an_all_zero_group_gets_zeros_back(bits, method):
    """A pruned channel: no NaN on the way, zeros back, and at 8 / 4 bits codes 0 with a positive scale (what
    ``quantize`` guards: ``round(0 / 0)`` is NaN, and its cast to int8 is 0 only by chance of the platform)."""
    w = torch.randn(3, 8)
    w[1] = 0
    codes, scale = quantize(w, QuantSpec(bits, None, method))
    if bits >= 4:  # ternary keeps scale 0 (no entry above the threshold); 1 bit has no zero code (+1, scale 0)
        assert (scale > 0).all() and not codes[1].any()
    assert torch.isfinite(scale).all() and not dequantize(codes, scale)[1].any()


# ---------------------------------------------------------------------------------------------- dequantize, QAT


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dequantize_returns_the_dtype_asked_for(dtype):
    codes, scale = quantize(_rows(), QuantSpec(4, 16))
    out = dequantize(codes, scale, dtype)
    assert out.dtype == dtype
    torch.testing.assert_close(out, dequantize(codes, scale).to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_fake_quantize_forward_is_the_dequantized_weight_in_its_dtype(dtype):
    """The QAT forward value is ``dequantize(quantize(w))`` (not only its gradient), in ``w``'s dtype."""
    w = _rows().to(dtype)
    spec = QuantSpec(4, 32)
    out = fake_quantize(w, spec)
    assert out.dtype == dtype
    torch.testing.assert_close(out, dequantize(*quantize(w, spec), dtype=dtype))


# ---------------------------------------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape", [(3, 5), (7, 3, 1), (1, 9), (2, 8)])
def test_pack_is_uint8_of_the_stated_size_for_any_count(bits, shape):
    """Counts that are not a multiple of the codes per byte are padded; ``packed_numel`` is the packed size."""
    codes = _codes(shape, bits, torch.Generator().manual_seed(bits))
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_numel(shape, bits) == -(-codes.numel() * bits // 8)
    back = unpack(packed, bits, shape)
    assert back.dtype == torch.int8 and torch.equal(back, codes)


def test_pack_names_the_widths_it_accepts():
    with pytest.raises(ValueError, match=r"expected bits in \(8, 4, 2, 1\), got 3"):
        pack(torch.zeros(4, dtype=torch.int8), 3)


@pytest.mark.parametrize("bits", BITS)
def test_pack_and_unpack_stay_on_the_codes_device(bits):
    """GPU PTQ packs on the weights' device; the meta device stands in for a GPU on a CPU machine."""
    codes = torch.zeros(3, 5, dtype=torch.int8, device="meta")
    packed = pack(codes, bits)
    assert packed.device.type == "meta"
    assert unpack(packed, bits, (3, 5)).device.type == "meta"
