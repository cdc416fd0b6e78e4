"""Stochastic and real-rate compression: any squeeze from one model, CIF, pooling, sampler, learned rate."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nemo_sew import CompressionProfile, build_encoder
from nemo_sew.nn.compress import SqueezeCompressor, cif_lengths
from nemo_sew.profile import ProfileSampler

RATES = [1, 1.5, 2, 2.5, 3, 4]


def _batched_vs_single(enc, lengths, feat_in):
    x = torch.randn(len(lengths), feat_in, max(lengths))
    for i, n in enumerate(lengths):
        x[i, :, n:] = 1e3  # garbage padding must not matter
    lens = torch.tensor(lengths)
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=lens)
        worst = 0.0
        for i, n in enumerate(lengths):
            yi, yi_len = enc(audio_signal=x[i : i + 1, :, :n], length=lens[i : i + 1])
            assert int(yi_len) == int(y_len[i])
            t = int(yi_len)
            worst = max(worst, (y[i, :, :t] - yi[0, :, :t]).abs().max().item())
    return worst, y, y_len


@pytest.fixture(scope="module")
def stochastic_sew_tiny():
    return build_encoder("sew_tiny", squeeze_sampler={"low": 1.0, "high": 4.0}).eval()


@pytest.mark.parametrize("rate", RATES)
def test_stochastic_sew_tiny_runs_any_rate_at_20ms(stochastic_sew_tiny, rate):
    enc = stochastic_sew_tiny
    enc.set_profile(CompressionProfile(squeeze=rate))
    worst, y, y_len = _batched_vs_single(enc, [32000, 20011, 9000], 1)
    assert worst <= 1e-4
    assert y_len.tolist() == enc.frame_lengths(torch.tensor([32000, 20011, 9000])).tolist()  # 20 ms frames


@pytest.mark.parametrize("preset", ["tiny_mel", "tiny_mel_conformer", "tiny_wfe_c", "tiny_conformer"])
def test_pooling_and_fractional_rates_do_not_leak_padding(preset):
    enc = build_encoder(preset, squeeze_sampler={"values": [1, 2, 3]}).eval()
    n = len(enc.layers)
    q_pool = tuple(2 if i == n // 2 else 1 for i in range(n))
    kv_pool = tuple(2 for _ in range(n))
    lengths = [301, 157, 41] if enc.layout.port == "spectrogram" else [24000, 13377, 5120]
    for profile in (
        CompressionProfile(squeeze=1.5),
        CompressionProfile(squeeze=2, q_pool=q_pool),
        CompressionProfile(squeeze=2.5, q_pool=q_pool, kv_pool=kv_pool),
    ):
        enc.set_profile(profile)
        worst, _, _ = _batched_vs_single(enc, lengths, enc._feat_in)
        assert worst <= 1e-4, profile


def test_query_pooling_shortens_the_sequence_without_expander():
    enc = build_encoder("tiny_mel", expander="none", squeeze_sampler={"values": [2]}, num_layers=3).eval()
    enc.set_profile(CompressionProfile(squeeze=2, q_pool=(1, 2, 2)))
    x, lens = torch.randn(2, 80, 400), torch.tensor([400, 230])
    with torch.no_grad():
        y, y_len = enc(audio_signal=x, length=lens)
    # 200 frames at 20 ms -> 100 at s=2 -> 50 -> 25; 115 -> 57 -> 29 -> 15 (ceil when pooling)
    assert y_len.tolist() == [25, 15] == enc.output_lengths(lens).tolist()
    assert y.shape[-1] == 25


def cif_reference(x, a, keep_tail_mass=None):
    """The sequential integrate-and-fire loop (threshold 1) from the once-for-all notes."""
    out, acc, h = [], 0.0, torch.zeros(x.shape[1], dtype=torch.float64)
    for t in range(x.shape[0]):
        r = float(a[t])
        while acc + r >= 1.0 - 1e-9:
            take = 1.0 - acc
            out.append(h + take * x[t])
            h = torch.zeros_like(h)
            r -= take
            acc = 0.0
        h = h + r * x[t]
        acc += r
    if keep_tail_mass is not None and acc >= keep_tail_mass:
        out.append(h / acc)
    return torch.stack(out)


@pytest.mark.parametrize("seed", range(5))
def test_cif_matches_sequential_reference(seed):
    torch.manual_seed(seed)
    comp = SqueezeCompressor(16, kernel=5, groups=4, factor=2, alpha_predictor=True)
    t = int(torch.randint(20, 60, ()))
    rate = float(torch.empty(()).uniform_(1.1, 3.9))
    x = torch.randn(1, t, 16)
    lengths = torch.tensor([t])
    with torch.no_grad():
        a = comp._weights(x, lengths, rate, lam=0.7)[0].double()
        for keep_tail in (False, True):
            y, y_len, _ = comp._cif(x, lengths, rate, lam=0.7, keep_tail=keep_tail)
            pos = comp._pos(x.transpose(1, 2), 1)[0].T  # (T, C)
            ref = cif_reference(x[0].double(), a, keep_tail_mass=0.5 if keep_tail else None)
            assert int(y_len) == ref.shape[0] == int(cif_lengths(lengths, rate, keep_tail))
            # our output adds the positional conv sampled at each segment's first frame
            cum = torch.cumsum(a, 0)
            starts = [int((cum <= k + 1e-5).sum()) for k in range(ref.shape[0])]
            torch.testing.assert_close(y[0, : ref.shape[0]].double() - pos[starts].double(), ref, atol=1e-5, rtol=1e-5)


def test_cif_lengths_are_exact():
    lens = torch.arange(3, 400)
    for rate in (1.5, 2.5, 3.3):
        got = cif_lengths(lens, rate, keep_tail=False)
        assert got.tolist() == [int(n // rate) if (n / rate) % 1 > 1e-9 else int(round(n / rate)) for n in lens.tolist()]
        tail = cif_lengths(lens, rate, keep_tail=True)
        assert torch.all((tail - got) == ((lens / rate - got) >= 0.5).long())


def test_integer_rates_take_sews_exact_path():
    comp = SqueezeCompressor(32, kernel=31, groups=16, factor=2)
    x, lens = torch.randn(2, 50, 32), torch.tensor([50, 33])
    y_int, len_int, _ = comp(x, lens, 2)
    y_cif, len_cif, _ = comp._cif(x.masked_fill(torch.arange(50)[None, :, None] >= lens[:, None, None], 0), lens, 2.0, 1.0, False)
    assert len_int.tolist() == len_cif.tolist() == [25, 16]
    for i, n in enumerate(len_int.tolist()):
        torch.testing.assert_close(y_int[i, :n], y_cif[i, :n], atol=1e-5, rtol=1e-5)


def test_sampler_is_a_function_of_the_step():
    s = ProfileSampler(squeeze={"values": [1, 2, 3, 4]}, q_pool={"values": [[1, 2], [1, 1]]}, seed=3)
    draws = [s.sample(step) for step in range(50)]
    assert draws == [s.sample(step) for step in range(50)]
    assert {d[0].squeeze for d in draws} == {1.0, 2.0, 3.0, 4.0}
    cont = ProfileSampler(squeeze={"low": 1.0, "high": 4.0})
    values = [cont.sample(i)[0].squeeze for i in range(200)]
    assert 1.0 <= min(values) and max(values) <= 4.0 and len(set(values)) == 200
    with pytest.raises(ValueError, match="squeeze sampler must draw values >= 1"):
        ProfileSampler(squeeze={"values": [0.5, 2]})


def _rank_draws(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(1234 + rank)  # ranks' own RNGs differ on purpose
    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"squeeze": {"low": 1.0, "high": 4.0}}).train()
    draws = []
    for step in range(8):
        draws.append(enc.draw(step).profile.squeeze)
    gathered = [None] * world
    dist.all_gather_object(gathered, draws)
    if rank == 0:
        out.put(gathered)
    dist.destroy_process_group()


def test_sampler_draws_agree_across_two_ddp_ranks():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_rank_draws, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    gathered = out.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert gathered[0] == gathered[1] and len(set(gathered[0])) > 1


def test_training_draws_a_new_factor_per_step():
    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"values": [1, 2, 4]}).train()
    x, lens = torch.randn(2, 80, 200), torch.tensor([200, 120])
    ran, expected = [], []
    for step in range(12):
        out = enc.run(x, lens, enc.draw(step))
        assert out.hidden.shape[1] == 100 and out.lengths.tolist() == [100, 60]  # always back at 20 ms
        ran.append(out.stats["squeeze"])  # the factor the encoder actually ran
        expected.append(ProfileSampler(squeeze={"values": [1, 2, 4]}).sample(step)[0].squeeze)
    assert ran == expected and set(ran) == {1.0, 2.0, 4.0}
    # the squeezed length the blocks saw follows the factor (not only the stats)
    draw = enc.draw(ran.index(4.0))
    assert enc.squeeze_features(enc.projection(enc.features(x, lens)[0]), torch.tensor([100, 60]), draw).lengths.tolist() == [25, 15]
    # a stock NeMo model calls forward() without a draw: the encoder counts its own training forwards
    first = [enc.run(x, lens).stats["squeeze"] for _ in range(12)]
    assert first == expected


def test_gradient_reaches_the_learned_rate():
    enc = build_encoder(
        "tiny_mel", num_layers=2, learned_rate={"init": 2.5, "min": 1.0, "max": 6.0, "target": 4.0, "penalty": 1.0}
    ).train()
    x, lens = torch.randn(2, 80, 300), torch.tensor([300, 170])
    out = enc.run(x, lens)
    assert set(out.aux_losses) == {"rate_penalty"} and out.stats["squeeze"] == pytest.approx(2.5)
    loss = out.hidden.pow(2).mean() + out.aux_losses["rate_penalty"]
    loss.backward()
    assert enc.rate_logit.grad is not None and enc.rate_logit.grad.abs() > 0
    assert abs(enc.learned_frame_period_ms() - 50.0) < 1e-3  # 20 ms * 2.5
    # the penalty alone pushes toward the target (more squeeze, less compute)
    enc.rate_logit.grad = None
    enc._rate_penalty(enc.learned_squeeze).backward()
    assert enc.rate_logit.grad < 0
