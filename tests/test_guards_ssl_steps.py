"""The SSL objectives score what the papers say, their targets equal a reference computation, and the CTC training step
logs the gate and pruning statistics under the right names with the right values (issue 30, item 2).

What is guarded, each against an independent reference rather than the code's own arithmetic:

* wav2vec 2.0 distractors (:func:`sample_negatives`): drawn uniformly and independently per frame from the OTHER masked
  frames of the same utterance (never the positive; a masked frame list holds no padding), reproducibly from a given
  generator without touching the global RNG, on the device of the masked frames whatever torch's default device is;
* wav2vec 2.0's loss: InfoNCE with the configured temperature (distractors equal to the positive dropped, as fairseq),
  plus ``diversity_weight`` times the codebook diversity ``(GV - perplexity) / GV``; G separate codebooks of V entries;
  ``head_hidden: 0`` gives wav2vec 2.0's linear heads;
* HuBERT: cross-entropy over the nearest-centroid labels with cosine logits / the configured temperature, plus
  ``unmasked_weight`` times the same loss on the valid unmasked frames (nothing of it at the default 0, even when no
  frame is left unmasked); targets fitted to the front end's frame count (trimmed, or the last frame repeated); a
  teacher's features from its first ``layer`` blocks; the errors that tell a user what is missing;
* MFCC targets: equal to a reference written from librosa's STFT, mel filterbank and MFCC (orthonormal DCT-II, checked
  against ``scipy.fft.dct``) and ``librosa.feature.delta`` with ``mode="nearest"`` (edge frames repeated: Kaldi/HTK and
  HuBERT's ``compute_deltas``), normalised per utterance, two 10 ms frames stacked; at 16 kHz by default and at rates
  where the window is a power of two or one more (the FFT size is the smallest power of two holding the window); a
  silent utterance gives zeros, not NaN;
* the CTC step's ``train_depth`` / ``train_depth_expected`` / ``train_gates_open`` / ``train_gate_tau`` /
  ``train_gmacs`` (realised MACs per utterance / 1e9) / ``train_block_macs_expected_fraction`` and ``train_prune_*``
  logs, read from a real model's ``training_step`` (its ``log`` recorded on the instance) against the step's own
  ``last_step_stats``.

Only the two ``sample_negatives`` mutants that matter with a generator on another device than the masked frames need
the GPU-only test here; the equivalent mutants are explained in tools/mutation/equivalent.toml.
"""

from __future__ import annotations

import warnings
from typing import Any

import librosa
import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.nn.frontend import time_mask
from nemo_sew.ssl.losses import contrastive_loss, sample_negatives
from nemo_sew.ssl.objectives import HuBERTObjective, Wav2Vec2Objective
from nemo_sew.ssl.targets import KMeansLabeler, MFCCFeatures, _dct_matrix, _deltas, build_target_features

D_MODEL, FRONT = 32, 24


# ------------------------------------------------------------------------------------------------ references


def _ref_mfcc(wave: np.ndarray, sr: int = 16000) -> np.ndarray:
    """MFCC + deltas + delta-deltas at 20 ms from librosa, as the module docstring describes them (float64)."""
    hop, win = sr * 10 // 1000, sr * 25 // 1000
    n_fft = 1
    while n_fft < win:  # Kaldi's round_to_power_of_two
        n_fft *= 2
    spec = librosa.stft(wave.astype(np.float64), n_fft=n_fft, hop_length=hop, win_length=win, window="hann",
                        center=True, pad_mode="reflect")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty filters at the low rates: the same bank as the code's
        fb = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=23, fmin=20.0, htk=True, dtype=np.float64)
    logmel = np.log(np.maximum(fb @ np.abs(spec) ** 2, 1e-10))
    mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=13, dct_type=2, norm="ortho")
    d1 = librosa.feature.delta(mfcc, width=5, order=1, mode="nearest")
    d2 = librosa.feature.delta(d1, width=5, order=1, mode="nearest")  # delta of delta, as HuBERT's dump_mfcc_feature
    feats = np.concatenate([mfcc, d1, d2]).T  # (T10, 39)
    feats = (feats - feats.mean(0)) / np.sqrt(feats.var(0) + 1e-5)
    t20 = feats.shape[0] // 2
    return feats[: 2 * t20].reshape(t20, -1)


def _waves(sr: int = 16000) -> tuple[torch.Tensor, torch.Tensor]:
    """Two utterances of different lengths; the first has a quiet stretch (mel energies far below 1)."""
    g = np.random.default_rng(0)
    n = sr // 2
    wave = (g.standard_normal((2, n)) * 0.05).astype(np.float32)
    wave[0, : n // 4] *= 1e-3
    return torch.from_numpy(wave), torch.tensor([n, n * 3 // 5])


def _ref_info_nce(pred: torch.Tensor, targets: torch.Tensor, negatives: torch.Tensor, temperature: float) -> float:
    """Per frame: -log softmax of cos(pred, target)/T among [target] + its distractors (those equal to it dropped)."""
    pred, targets = pred.double(), targets.double()
    losses = []
    for i in range(pred.shape[0]):
        cands = [targets[i]] + [targets[j] for j in negatives[i].tolist() if not torch.equal(targets[j], targets[i])]
        cos = torch.stack([F.cosine_similarity(pred[i], c, dim=0) for c in cands]) / temperature
        losses.append(-torch.log_softmax(cos, 0)[0])
    return float(torch.stack(losses).mean())


def _ref_hubert_ce(pred: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    pred, emb = pred.double(), emb.double()
    cos = (pred / pred.norm(dim=-1, keepdim=True)) @ (emb / emb.norm(dim=-1, keepdim=True)).T / temperature
    return float(-torch.log_softmax(cos, -1)[torch.arange(len(labels)), labels].mean())


def _span_batch(lengths: torch.Tensor, dim: int, feat_dim: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    t = int(lengths.max())
    y = torch.randn(len(lengths), t, dim, generator=gen)
    valid = time_mask(lengths, t)
    mask = valid & (torch.rand(len(lengths), t, generator=gen) < 0.5)
    assert mask.any() and (valid & ~mask).any()
    return y, mask, torch.randn(len(lengths), t, feat_dim, generator=gen), lengths.clone()


# -------------------------------------------------------------------------------------------- wav2vec 2.0 distractors


def test_distractors_are_uniform_over_the_other_masked_frames_of_the_utterance_and_independent_per_frame():
    """fairseq ``sample_negatives``: each frame draws each distractor uniformly among the other masked frames of its
    utterance, never itself, independently of the other frames' draws; an utterance of two masked frames always gets
    the other one."""
    utt = torch.tensor([0] * 6 + [1] * 2 + [2] * 5)
    neg = sample_negatives(utt, 3000, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (13, 3000) and neg.dtype == torch.long
    idx = torch.arange(13)[:, None]
    assert (utt[neg] == utt[:, None]).all() and (neg != idx).all()
    assert (neg[6] == 7).all() and (neg[7] == 6).all()  # the only other frame of a two-frame utterance
    for i in (0, 3, 5, 8, 12):  # each of the count - 1 others about equally often (chi-square, 1e-6 level)
        others = [j for j in range(13) if utt[j] == utt[i] and j != i]
        counts = torch.stack([(neg[i] == j).sum() for j in others]).double()
        expected = 3000 / len(others)
        assert float(((counts - expected) ** 2 / expected).sum()) < 30.0, (i, counts.tolist())
    # independent per frame: two frames of one utterance do not draw the same offset from themselves in lockstep
    offsets = (neg[:6] - idx[:6]) % 6
    assert (offsets != offsets[:1]).any(dim=0).float().mean() > 0.9


def test_distractors_are_reproducible_from_their_generator_and_leave_the_global_rng_alone():
    utt = torch.tensor([0] * 9 + [1] * 4)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = sample_negatives(utt, 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), before), "a seeded draw consumed the global RNG"
    b = sample_negatives(utt, 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, sample_negatives(utt, 20, generator=torch.Generator().manual_seed(6)))


def test_no_or_one_masked_frame_gives_empty_or_self_distractors():
    """A batch without masked frames gives ``(0, num)`` indices; a single masked frame gets itself (masked out by the
    loss)."""
    none = sample_negatives(torch.zeros(0, dtype=torch.long), 7)
    assert none.shape == (0, 7) and none.dtype == torch.long
    one = sample_negatives(torch.tensor([3]), 7, generator=torch.Generator().manual_seed(0))
    assert one.shape == (1, 7) and (one == 0).all()


@pytest.mark.parametrize("seeded", [False, True])
def test_distractors_and_the_loss_live_on_the_device_of_the_masked_frames_not_the_default_device(seeded):
    """A training script may set ``torch.set_default_device``; the indices, their random draws and the loss's labels
    must still be on the device of the inputs (the model's). 'meta' stands in for the other device on a CPU machine."""
    utt = torch.tensor([0] * 5 + [1] * 3)
    targets = torch.randn(8, 4)
    pred = targets + 0.1 * torch.randn(8, 4)
    gen = torch.Generator().manual_seed(0) if seeded else None
    nothing = torch.zeros(0, dtype=torch.long)
    torch.set_default_device("meta")
    try:
        empty = sample_negatives(nothing, 4, generator=gen)
        neg = sample_negatives(utt, 4, generator=gen)
        loss, acc = contrastive_loss(pred, targets, neg)
    finally:
        torch.set_default_device(None)
    assert empty.device.type == "cpu" and neg.device.type == "cpu"
    assert (utt[neg] == utt[:, None]).all() and (neg != torch.arange(8)[:, None]).all()
    assert loss.device.type == "cpu" and torch.isfinite(loss)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: a CPU generator for CUDA masked frames")
def test_a_cpu_generator_draws_distractors_for_masked_frames_on_the_gpu():
    utt = torch.tensor([0] * 5 + [1] * 3, device="cuda")
    neg = sample_negatives(utt, 4, generator=torch.Generator().manual_seed(0))
    assert neg.device.type == "cuda" and (utt[neg] == utt[:, None]).all()
    assert torch.equal(neg.cpu(), sample_negatives(utt.cpu(), 4, generator=torch.Generator().manual_seed(0)))


# ------------------------------------------------------------------------------------------------ wav2vec 2.0 loss


def test_a_distractor_equal_to_the_positive_is_dropped_from_the_softmax():
    """fairseq: a distractor identical to the positive (the same quantized code) gets -inf; the other ones stay."""
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(6, 8, generator=g)
    targets[3] = targets[0]  # frames 0 and 3 quantize to the same code
    pred = torch.randn(6, 8, generator=g)
    negatives = torch.tensor([[3, 1, 2], [0, 2, 4], [1, 3, 5], [0, 4, 5], [3, 5, 1], [0, 1, 2]])
    loss, _ = contrastive_loss(pred, targets, negatives, temperature=0.2)
    assert float(loss) == pytest.approx(_ref_info_nce(pred, targets, negatives, 0.2), rel=1e-5)


def _wav2vec2(**section: Any) -> Wav2Vec2Objective:
    base = {"final_dim": 16, "num_negatives": 8, "codebook": {"groups": 2, "num_vars": 16, "dim": 16}}
    cfg = Wav2Vec2Objective.with_defaults(base | section)
    return Wav2Vec2Objective(cfg, frontend_dim=FRONT, d_model=D_MODEL)


def test_wav2vec2_loss_is_info_nce_at_the_configured_temperature_plus_weighted_diversity():
    """``loss = InfoNCE(T) + diversity_weight * (GV - perplexity) / GV`` (wav2vec 2.0, eq. 2-4), with the parts
    logged as ``contrastive_loss`` and ``diversity_loss``. Eval mode: no Gumbel noise or target dropout, so the
    reference sees the same targets; the distractors come from the same global seed."""
    torch.manual_seed(0)
    obj = _wav2vec2(temperature=0.5, diversity_weight=0.3, head_hidden=0).eval()
    y, mask, src, lens = _span_batch(torch.tensor([30, 21]), D_MODEL, FRONT)
    torch.manual_seed(9)
    with torch.no_grad():
        total, _, parts = obj.loss(y, mask, src, lens)
    assert set(parts) == {"contrastive_loss", "diversity_loss"}
    with torch.no_grad():
        pred = obj.final_proj(y[mask])
        targets = obj.project_q(obj.quantizer(src[mask][None])[0][0])
        probs = obj.quantizer.weight_proj(src[mask]).view(-1, 2, 16).double().softmax(-1).mean(0)  # (G, V)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-7)).sum(-1)).sum()
    diversity = float((32 - perplexity) / 32)
    torch.manual_seed(9)
    negatives = sample_negatives(mask.nonzero()[:, 0], 8)
    info_nce = _ref_info_nce(pred, targets, negatives, 0.5)
    assert float(parts["contrastive_loss"]) == pytest.approx(info_nce, rel=1e-5)
    assert float(parts["diversity_loss"]) == pytest.approx(diversity, rel=1e-4, abs=1e-6)
    assert float(total) == pytest.approx(info_nce + 0.3 * diversity, rel=1e-5)


def test_wav2vec2_parts_follow_the_documented_defaults_and_head_hidden_zero_gives_linear_heads():
    """Defaults (``W2V2_DEFAULTS``): 100 distractors, T = 0.1, diversity weight 0.1, G = 2 separate codebooks of V = 320
    entries (not one shared by the groups), SEW's 4096-wide MLP heads; ``head_hidden: 0``: wav2vec 2.0's linear
    heads."""
    obj = Wav2Vec2Objective(Wav2Vec2Objective.with_defaults({}), frontend_dim=FRONT, d_model=D_MODEL)
    options = (obj.num_negatives, obj.temperature, obj.diversity_weight, obj.feature_penalty_weight)
    assert options == (100, 0.1, 0.1, 10.0)
    assert tuple(obj.quantizer.vars.shape) == (1, 2 * 320, 256 // 2)
    assert obj.final_proj.net[0].out_features == 4096 and obj.project_q.net[0].out_features == 4096
    linear = _wav2vec2(head_hidden=0)
    for head, fan_in in ((linear.final_proj, D_MODEL), (linear.project_q, 16)):
        assert isinstance(head.net, nn.Linear) and (head.net.in_features, head.net.out_features) == (fan_in, 16)


# ------------------------------------------------------------------------------------------------ HuBERT


def _hubert_cfg(tmp_path, **section: Any):
    centroids = tmp_path / "km.npy"
    np.save(centroids, np.random.default_rng(0).normal(size=(12, 78)).astype(np.float32))
    return HuBERTObjective.with_defaults({"num_clusters": 12, "final_dim": 16, "centroids": str(centroids)} | section)


def test_hubert_loss_is_masked_prediction_over_nearest_centroids_plus_weighted_unmasked(tmp_path):
    """``CE(cos(proj(y), label_emb) / T, nearest centroid)`` on the masked frames plus ``unmasked_weight`` times the
    same on the valid unmasked ones (HuBERT eq. 1-3 with alpha); the logged ``masked_loss`` is the first term."""
    torch.manual_seed(0)
    obj = HuBERTObjective(_hubert_cfg(tmp_path, temperature=0.3, unmasked_weight=0.5), FRONT, D_MODEL)
    y, mask, src, lens = _span_batch(torch.tensor([30, 21]), D_MODEL, 78)
    total, _, parts = obj.loss(y, mask, src, lens)
    centroids = torch.from_numpy(np.load(tmp_path / "km.npy")).double()
    labels = torch.cdist(src.double(), centroids[None].expand(2, -1, -1)).argmin(-1)  # (B, T)
    keep = time_mask(lens, y.shape[1]) & ~mask
    with torch.no_grad():
        masked = _ref_hubert_ce(obj.final_proj(y[mask]), obj.label_emb, labels[mask], 0.3)
        unmasked = _ref_hubert_ce(obj.final_proj(y[keep]), obj.label_emb, labels[keep], 0.3)
    assert float(parts["masked_loss"]) == pytest.approx(masked, rel=1e-5)
    assert float(total.detach()) == pytest.approx(masked + 0.5 * unmasked, rel=1e-5)


def test_hubert_default_scores_only_the_masked_frames_even_when_every_frame_is_masked(tmp_path):
    """At the default ``unmasked_weight: 0`` the loss is the masked loss, also for a batch whose valid frames are all
    masked (short utterances under 0.65 / 10 masking): no empty unmasked term turning it into NaN."""
    obj = HuBERTObjective(_hubert_cfg(tmp_path), FRONT, D_MODEL)
    assert obj.unmasked_weight == 0.0
    lens = torch.tensor([12, 7])
    y, _, src, _ = _span_batch(lens, D_MODEL, 78)
    mask = time_mask(lens, 12)
    total, _, parts = obj.loss(y.requires_grad_(True), mask, src, lens)
    assert torch.isfinite(total) and float(total.detach()) == float(parts["masked_loss"])
    total.backward()
    assert torch.isfinite(obj.label_emb.grad).all()


def test_hubert_defaults_mfcc_at_16k_and_small_label_embeddings(tmp_path):
    """Built with only the section (no sample rate): MFCC targets at 16 kHz equal to the reference, fitted to the
    front end's frame count (trimmed, or the last frame repeated), and the label embeddings start at BERT-style
    std 0.02 (their scale sets how fast Adam turns them: cosine logits ignore it)."""
    torch.manual_seed(0)
    obj = HuBERTObjective(_hubert_cfg(tmp_path, num_clusters=12, final_dim=16), FRONT, D_MODEL)
    wave, lens = _waves()
    n = int(lens[0])
    t = (n // 160 + 1) // 2
    ref = torch.from_numpy(_ref_mfcc(wave[0, :n].numpy())).float()
    assert ref.shape[0] == t
    for frames in (t - 2, t, t + 3):
        got = obj.target_source(None, wave[:1], lens[:1], frames)
        assert got.shape == (1, frames, 78)
        torch.testing.assert_close(got[0, : min(t, frames)], ref[:frames], atol=1e-4, rtol=1e-4)
        if frames > t:
            torch.testing.assert_close(got[0, t:], ref[-1:].expand(frames - t, -1), atol=1e-4, rtol=1e-4)
    big = HuBERTObjective(_hubert_cfg(tmp_path, num_clusters=12, final_dim=2000), FRONT, D_MODEL)
    emb = big.label_emb.detach()
    assert float(emb.std()) == pytest.approx(0.02, rel=0.05) and abs(float(emb.mean())) < 0.002


def test_hubert_without_centroids_says_how_to_fit_them_and_wrong_centroids_name_both_shapes(tmp_path):
    cfg = HuBERTObjective.with_defaults({"num_clusters": 12})
    with pytest.raises(ValueError) as info:
        HuBERTObjective(cfg, FRONT, D_MODEL)
    assert str(info.value) == "hubert.centroids is not set: fit them first with `nemo-sew kmeans`"
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 78), dtype=np.float32))
    with pytest.raises(ValueError) as info:
        KMeansLabeler(12, 78).load(bad)
    assert str(info.value) == f"{bad}: expected centroids of shape (12, 78), got (10, 78)"


def test_target_features_name_a_missing_teacher_and_run_a_teachers_first_layer_blocks(tmp_path):
    """``features``: "mfcc" (at 16 kHz by default) or an existing teacher ``.nemo``, whose first ``layer`` blocks give
    HuBERT iteration 2's features (not all of them); anything else is a FileNotFoundError naming it."""
    from nemo_sew.quant.model import build_tiny_ctc
    from nemo_sew.ssl.targets import TeacherFeatures

    missing = tmp_path / "nope.nemo"
    with pytest.raises(FileNotFoundError) as info:
        build_target_features(str(missing))
    expected = f"target features: expected 'mfcc' or an existing teacher .nemo file, got {str(missing)!r}"
    assert str(info.value) == expected

    wave, lens = _waves()
    feats, _ = build_target_features("mfcc")(wave[1:], lens[1:])
    ref = torch.from_numpy(_ref_mfcc(wave[1, : int(lens[1])].numpy())).float()
    torch.testing.assert_close(feats[0, : ref.shape[0]], ref, atol=1e-4, rtol=1e-4)

    torch.manual_seed(0)
    path = tmp_path / "teacher.nemo"
    build_tiny_ctc("tiny_mel", num_layers=2).save_to(str(path))
    teacher = build_target_features(str(path), layer=1)
    assert isinstance(teacher, TeacherFeatures)
    first, frames = teacher(wave, lens)
    full, _ = TeacherFeatures(path)(wave, lens)
    valid = time_mask(frames, first.shape[1])
    assert not torch.allclose(first[valid], full[valid], atol=1e-3)

    cfg = _hubert_cfg(tmp_path, features=str(path), layer=1, num_clusters=12)
    obj = HuBERTObjective(cfg, FRONT, D_MODEL, restoring=True)
    assert int(cfg.feature_dim) == first.shape[-1]
    torch.testing.assert_close(obj.target_source(None, wave, lens, first.shape[1]), first)


# ------------------------------------------------------------------------------------------------ MFCC targets


def test_dct_is_the_orthonormal_dct_ii_to_float32_rounding():
    """``_dct_matrix(n_mfcc, n_mels)`` is ``(n_mels, n_mfcc)``: the first ``n_mfcc`` rows of scipy's orthonormal DCT-II,
    transposed, computed in float64 and rounded once to float32."""
    for n_mfcc, n_mels in ((13, 23), (40, 40)):
        ref = scipy.fft.dct(np.eye(n_mels), type=2, norm="ortho", axis=0)[:n_mfcc].T
        got = _dct_matrix(n_mfcc, n_mels)
        assert got.dtype == torch.float32 and got.shape == (n_mels, n_mfcc)
        np.testing.assert_allclose(got.numpy(), ref.astype(np.float32), rtol=0, atol=6e-8)


def test_deltas_are_the_regression_formula_with_edge_frames_repeated():
    """``_deltas(x)``: ``sum_i i (x[t+i] - x[t-i]) / (2 sum_i i^2)``, i = 1..2 (width 5), frames beyond the ends
    repeating the edge ones: ``librosa.feature.delta(width=5, mode="nearest")`` (a Savitzky-Golay slope, the same)."""
    x = torch.randn(2, 17, 5, dtype=torch.float64) * 3 + torch.linspace(0, 40, 17)[None, :, None].double() ** 1.5
    ref = librosa.feature.delta(x.numpy(), width=5, order=1, axis=1, mode="nearest")
    np.testing.assert_allclose(_deltas(x).numpy(), ref, rtol=1e-10, atol=1e-10)
    # by the formula, at the first frame: x[-1] and x[-2] are x[0]
    x0 = x[0, :, 0]
    first = (1 * (x0[1] - x0[0]) + 2 * (x0[2] - x0[0])) / 10
    assert float(_deltas(x)[0, 0, 0]) == pytest.approx(float(first), rel=1e-12)


@pytest.mark.parametrize("sample_rate", [16000, 8000, 10240, 10280])
def test_mfcc_targets_equal_the_librosa_reference(sample_rate):
    """Per utterance (the padding of a batch changes nothing), 78 dims at 20 ms, equal to the reference at the
    default rate and at rates whose 25 ms window is a power of two (256 samples) or one more (257)."""
    wave, lens = _waves(sample_rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa: empty mel filters at the low rates
        mfcc = MFCCFeatures() if sample_rate == 16000 else MFCCFeatures(sample_rate)
        feats, frames = mfcc(wave, lens)
    hop = sample_rate * 10 // 1000
    assert frames.tolist() == [(int(n) // hop + 1) // 2 for n in lens]
    for i, n in enumerate(lens.tolist()):
        ref = torch.from_numpy(_ref_mfcc(wave[i, :n].numpy(), sample_rate)).float()
        assert ref.shape[0] == int(frames[i])
        torch.testing.assert_close(feats[i, : ref.shape[0]], ref, atol=1e-4, rtol=1e-4)
        assert (feats[i, ref.shape[0] :] == 0).all()


def test_a_silent_utterance_gives_zero_targets_not_nan():
    """Digital silence (common at the edges of segmented audio): constant features normalise to 0, not NaN."""
    feats, frames = MFCCFeatures()(torch.zeros(1, 4000), torch.tensor([4000]))
    assert int(frames[0]) == 13 and torch.isfinite(feats).all()
    torch.testing.assert_close(feats, torch.zeros(1, 13, 78), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------ CTC step logs


def _step_logs(encoder: dict[str, Any], batch_nb: int = 0, every: int = 50, signal: torch.Tensor | None = None):
    """A real tiny CTC model's ``training_step`` with its ``log`` recorded: (logged, the step's stats, the model, the
    step's returned dict, the batch)."""
    import lightning.pytorch as pl

    from nemo_sew.quant.model import build_tiny_ctc

    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_mel", num_layers=2, **encoder).train()
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=every)  # fmt: skip
    model.set_trainer(trainer)
    model._optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: dict[str, Any] = {}
    model.log = lambda name, value, *args, **kwargs: logged.__setitem__(name, value)  # the instance's only
    gen = torch.Generator().manual_seed(3)
    batch = (torch.randn(2, 16000, generator=gen) * 0.1 if signal is None else signal, torch.tensor([16000, 11000]),
             torch.randint(0, 28, (2, 8), generator=gen), torch.tensor([8, 5]))  # fmt: skip
    torch.manual_seed(11)
    result = model.training_step(batch, batch_nb)
    return logged, model.last_step_stats, model, result, batch


def _value(v: Any) -> float:
    assert v is not None
    return float(v.detach().double().mean()) if isinstance(v, torch.Tensor) else float(v)


def test_the_gated_step_logs_depth_gates_tau_and_macs_under_their_names():
    """A gated model with a MAC budget logs the realised depth (mean over the batch, in layers), the expected depth,
    the open fraction, the gate temperature, the realised GMACs per utterance and the expected block-MAC fraction."""
    logged, stats, *_ = _step_logs({"gates": {"kind": "local", "target": 0.5, "budget": "macs"}})
    tensors = ("train_depth", "train_depth_expected", "train_gates_open", "train_gmacs",
               "train_block_macs_expected_fraction")
    assert all(isinstance(logged.get(name), torch.Tensor) for name in tensors)  # no host sync in the step
    assert {"depth", "depth_expected", "gates_open", "gate_tau", "macs", "macs_expected"} <= set(stats)
    expected = {
        "train_depth": float(stats["depth"].float().mean()),
        "train_depth_expected": float(stats["depth_expected"]),
        "train_gates_open": float(stats["gates_open"]),
        "train_gate_tau": float(stats["gate_tau"]),
        "train_gmacs": float(stats["macs"].double().mean()) / 1e9,
        "train_block_macs_expected_fraction": float(stats["macs_expected"]),
    }
    for name, value in expected.items():
        assert name in logged, (name, sorted(map(str, logged)))
        assert _value(logged[name]) == pytest.approx(value, rel=1e-6), name
    assert 1e-4 < expected["train_gmacs"] < 10  # a tiny model: millions of MACs, in units of 1e9
    assert not any(name.startswith("train_prune") for name in logged)


def test_the_pruning_step_logs_its_budget_state_and_kept_units_and_no_gate_stats():
    logged, stats, model, *_ = _step_logs(
        {"pruning": {"units": ["heads", "ffn"], "budget": "size", "target": 0.7, "warmup_steps": 0}}
    )
    scalars = {k: v for k, v in stats.items() if k.startswith("prune_") and k != "prune_kept"}
    assert scalars
    for key, value in scalars.items():
        assert _value(logged[f"train_{key}"]) == pytest.approx(_value(value), rel=1e-6), key
        if isinstance(value, torch.Tensor):  # left a tensor: Lightning reads it when it writes, no host sync per step
            assert isinstance(logged[f"train_{key}"], torch.Tensor), key
    totals: dict[str, float] = {}
    for slot in model.encoder.pruning.slots:
        totals[slot.unit] = totals.get(slot.unit, 0.0) + float(stats["prune_kept"][slot.key])
    assert set(totals) == {"heads", "ffn"}
    for unit, total in totals.items():
        assert _value(logged[f"train_prune_kept_{unit}"]) == pytest.approx(total, rel=1e-6), unit
    assert "train_prune_kept" not in logged and not any("depth" in name or "gmacs" in name for name in logged)


def _edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def _greedy_wer(model, log_probs, lengths, transcript, transcript_len) -> float:
    """Word error rate of the CTC greedy decoding (argmax, repeats merged, blanks dropped) against the transcript."""
    vocab = list(model.decoder.vocabulary)
    errors = words = 0
    for lp, n, ref, m in zip(log_probs, lengths.tolist(), transcript, transcript_len.tolist()):
        ids = lp[:n].argmax(-1).tolist()
        hyp = [i for k, i in enumerate(ids) if (k == 0 or i != ids[k - 1]) and i != len(vocab)]
        hyp_words = "".join(vocab[i] for i in hyp).split()
        ref_words = "".join(vocab[i] for i in ref[:m].tolist()).split()
        errors, words = errors + _edit_distance(hyp_words, ref_words), words + len(ref_words)
    return errors / words


@pytest.mark.parametrize("batch_nb", [0, 1, 2])
def test_the_step_returns_nemos_logs_and_the_batch_wer_every_log_every_n_steps(batch_nb):
    """The step returns NeMo's ``{"loss", "log"}``, whose ``log`` NeMo's wrapper hands to Lightning: ``train_loss``,
    ``learning_rate``, ``global_step`` (a float32 tensor), and ``training_batch_wer`` (the greedy decoding's WER on
    this batch) on the batches that end a ``log_every_n_steps`` period (here 3: the third batch only); a sampled
    squeeze is logged as ``train_squeeze``."""
    from nemo_sew.stochastic import run_seed

    logs, stats, model, result, batch = _step_logs({"squeeze_sampler": {"values": [1, 2, 3]}}, batch_nb, every=3)
    signal, signal_len, transcript, transcript_len = batch
    assert set(result) == {"loss"}  # NeMo's wrapper took "log" out and logged it
    assert torch.equal(logs["train_loss"], result["loss"].detach())
    assert logs["learning_rate"] == 0.1
    assert logs["global_step"].dtype == torch.float32 and float(logs["global_step"]) == 0.0
    assert float(logs["train_squeeze"]) == float(stats["squeeze"]) and float(stats["squeeze"]) in (1.0, 2.0, 3.0)
    if batch_nb != 2:
        assert "training_batch_wer" not in logs
        return
    torch.manual_seed(11)  # the step's draw, dropout and augmentation again
    draw = model.encoder.draw(0, seed=run_seed(model))
    log_probs, encoded_len, _, _ = model.forward_with_draw(signal, signal_len, draw=draw)
    expected = _greedy_wer(model, log_probs.detach(), encoded_len, transcript, transcript_len)
    assert float(logs["training_batch_wer"]) == pytest.approx(expected, abs=1e-6)


def test_a_learned_rate_is_logged_as_its_frame_period_in_ms():
    """20 ms front-end frames times the learned squeeze factor: the frame period the encoder runs at."""
    rate = {"learned_rate": {"init": 1.5, "target": 3.0, "min": 1.0, "max": 4.0, "penalty": 2.0}, "expander": "phase"}
    logged, _, model, *_ = _step_logs(rate)
    assert _value(logged["learned_frame_period_ms"]) == pytest.approx(20.0 * float(model.encoder.learned_squeeze.detach()))
    assert _value(logged["learned_frame_period_ms"]) == pytest.approx(30.0, rel=1e-3)


def test_a_non_finite_loss_skips_the_batch_with_a_zero_loss_touching_every_parameter(caplog):
    """A batch whose loss is not finite (an inf sample) is skipped: the step warns and returns an exact zero whose
    gradient is zero for every trainable parameter (so DDP ranks still reduce the same buckets)."""
    signal = torch.randn(2, 16000, generator=torch.Generator().manual_seed(3)) * 0.1
    signal[0, 5000] = float("inf")
    with caplog.at_level("WARNING", logger="nemo_sew.models"):
        _, _, model, result, _ = _step_logs({}, signal=signal)
    assert "non-finite training loss at step 0; this batch is skipped" in caplog.messages
    loss = result["loss"]
    assert float(loss.detach()) == 0.0
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for _, p in params)
