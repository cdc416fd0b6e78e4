"""Self-supervised pre-training: masking, losses, targets, the SSL model, fine-tuning from it."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import nemo_sew  # noqa: F401  (registers the _target_ prefix)
from nemo_sew import encoder_config
from nemo_sew.nn.compress import SqueezeCompressor
from nemo_sew.ssl.losses import contrastive_loss, masked_prediction_loss, sample_negatives
from nemo_sew.ssl.masking import span_mask
from nemo_sew.ssl.targets import KMeansLabeler, MFCCFeatures
from conftest import TINY_ENCODER


def test_span_mask_respects_padding_and_rate():
    lengths = torch.tensor([500, 300, 12, 0])
    mask = span_mask(lengths, 500, prob=0.65, span=10, min_masks=2, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (4, 500)
    for i, n in enumerate(lengths.tolist()):
        assert not mask[i, n:].any(), "padding was masked"
    assert not mask[3].any()
    frac = mask[0].float().mean().item()
    assert 0.35 < frac < 0.65, frac  # overlapping spans merge: ~49% for 0.65 / 10
    assert mask[2].sum() >= 10  # min_masks on a short item: a whole span fits
    # masked frames come in runs of at least the span length (spans merge, never shorter)
    runs = torch.diff(torch.cat([torch.zeros(1), mask[0].float(), torch.zeros(1)]))
    starts, ends = (runs == 1).nonzero().flatten(), (runs == -1).nonzero().flatten()
    assert ((ends - starts) >= 10).all()


def test_negatives_come_from_the_same_utterance_and_never_the_frame_itself():
    utt = torch.tensor([0] * 5 + [1] * 1 + [2] * 7)
    neg = sample_negatives(utt, 50, generator=torch.Generator().manual_seed(0))
    assert neg.shape == (13, 50)
    assert (utt[neg] == utt[:, None]).all()
    idx = torch.arange(13)[:, None]
    alone = utt == 1
    assert (neg[~alone] != idx[~alone]).all()
    assert (neg[alone] == idx[alone]).all()  # the only masked frame of its utterance: itself (masked out later)


def test_contrastive_loss_prefers_the_true_target():
    targets = torch.randn(40, 16)
    utt = torch.zeros(40, dtype=torch.long)
    neg = sample_negatives(utt, 10)
    good, acc_good = contrastive_loss(targets + 0.01 * torch.randn(40, 16), targets, neg)
    bad, acc_bad = contrastive_loss(torch.randn(40, 16), targets, neg)
    assert good < 0.1 < bad and acc_good == 1.0 and acc_bad < 0.5
    # a distractor identical to the positive is ignored (fairseq): loss stays finite
    dup = targets.clone()
    dup[1] = dup[0]
    loss, _ = contrastive_loss(dup, dup, torch.ones(40, 3, dtype=torch.long))
    assert torch.isfinite(loss)


def test_masked_prediction_loss_and_kmeans_labels():
    labeler = KMeansLabeler(3, 2)
    labeler.centroids.copy_(torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]))
    feats = torch.tensor([[[0.1, -0.2], [9.0, 1.0], [1.0, 8.0], [6.0, 0.0]]])
    assert labeler(feats).tolist() == [[0, 1, 2, 1]]
    emb = torch.eye(3)
    loss, acc = masked_prediction_loss(torch.eye(3) * 5, emb, torch.tensor([0, 1, 2]))
    assert acc == 1.0 and loss < 0.01


def test_mfcc_frames_match_the_mel_front_end():
    mfcc = MFCCFeatures()
    wav = torch.randn(2, 16000)
    feats, frames = mfcc(wav, torch.tensor([16000, 8000]))
    assert feats.shape == (2, 50, 78)
    assert frames.tolist() == [50, 25]  # (N // 160 + 1) // 2, as NeMo's mel features stacked by 2
    assert torch.isfinite(feats).all() and feats[1, 25:].abs().sum() == 0
    # padding does not change the valid frames: the second item alone gives the same features
    alone, _ = mfcc(wav[1:, :8000], torch.tensor([8000]))
    torch.testing.assert_close(feats[1, :24], alone[0, :24], atol=1e-4, rtol=1e-4)


def test_targets_stay_fp32_under_bf16_autocast():
    """bf16-mixed trainers (the LibriSpeech recipes) must not change the k-means labels or the MFCCs."""
    g = torch.Generator().manual_seed(0)
    labeler = KMeansLabeler(100, 78)
    labeler.centroids.copy_(torch.randn(100, 78, generator=g) * 3.0 + 20.0)  # large |c|: bf16 loses the gaps
    feats = labeler.centroids[torch.randint(0, 100, (4000,), generator=g)] + torch.randn(4000, 78, generator=g)
    mfcc = MFCCFeatures()
    wav = torch.randn(2, 16000, generator=g)
    lens = torch.tensor([16000, 9000])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_labels = labeler(feats[None])
        mixed_mfcc, _ = mfcc(wav, lens)
    assert torch.equal(mixed_labels, labeler(feats[None]))
    assert mixed_mfcc.dtype == torch.float32
    torch.testing.assert_close(mixed_mfcc, mfcc(wav, lens)[0])


@pytest.mark.parametrize("factor", [2, 1.5])
def test_integrate_pools_with_the_compressor_weights(factor):
    comp = SqueezeCompressor(32, 31, 16, 2)
    x = torch.randn(2, 40, 32)
    lengths = torch.tensor([40, 23])
    y, y_len, _ = comp(x, lengths, factor)
    pooled, p_len = comp.integrate(x, x, lengths, factor)
    assert torch.equal(p_len, y_len)
    # the compressor output is the pooled values plus the positional conv: subtracting the pooling
    # leaves something that does not depend on which values were pooled
    ones, _ = comp.integrate(torch.ones(2, 40, 1), x, lengths, factor)
    valid = torch.arange(pooled.shape[1])[None] < p_len[:, None]
    torch.testing.assert_close(ones[valid], torch.ones_like(ones[valid]))  # weights sum to 1
    if factor == 2:
        torch.testing.assert_close(pooled[0, :20], x[0].reshape(20, 2, 32).mean(1))


def _ssl_cfg(objective, compressed=False, centroids=None, sampler=True):
    enc = encoder_config("tiny_wfe_c")
    enc["_target_"] = "nemo_sew.SqueezeEncoder"
    if sampler:
        enc["squeeze_sampler"] = {"values": [1, 2, 3]}
    cfg = {"sample_rate": 16000, "preprocessor": {"_target_": "nemo_sew.WaveformPreprocessor"},
           "encoder": enc, "objective": objective, "compressed_targets": compressed}  # fmt: skip
    if objective == "wav2vec2":
        cfg["wav2vec2"] = {"head_hidden": 64, "num_negatives": 10}
    else:
        cfg["hubert"] = {"num_clusters": 20, "centroids": str(centroids)}
    return OmegaConf.create(cfg)


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
@pytest.mark.parametrize("compressed", [False, True])
def test_ssl_model_losses_and_gradients(objective, compressed, tmp_path):
    from nemo_sew.models.ssl import SqueezeSSLModel

    centroids = tmp_path / "c.npy"
    np.save(centroids, np.random.default_rng(0).normal(size=(20, 78)).astype(np.float32))
    model = SqueezeSSLModel(_ssl_cfg(objective, compressed, centroids))
    model.train()
    wav, lens = torch.randn(3, 32000), torch.tensor([32000, 20000, 9000])
    out = model(wav, lens)
    assert torch.isfinite(out["loss"]) and 0.3 < out["masked_fraction"] < 0.8
    # chance level at initialisation: log(1 + negatives) or log(clusters)
    expected = math.log(11) if objective == "wav2vec2" else math.log(20)
    key = "contrastive_loss" if objective == "wav2vec2" else "masked_loss"
    assert abs(out[key].item() - expected) < 1.0, (out[key], expected)
    out["loss"].backward()
    enc = model.encoder
    head = next(model.objective.final_proj.parameters())
    for name, p in [("mask_emb", enc.mask_emb), ("first block", next(enc.layers[0].parameters())),
                    ("front end", next(enc.frontend.parameters())), ("head", head)]:  # fmt: skip
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if objective == "hubert":
        assert model.objective.labeler.centroids.grad is None and "objective.labeler.centroids" in model.state_dict()


def test_unknown_objective_is_rejected_with_the_known_ones():
    from nemo_sew.models.ssl import SqueezeSSLModel
    from nemo_sew.ssl.objectives import OBJECTIVES, objective_class

    assert set(OBJECTIVES) == {"wav2vec2", "hubert"}
    for name, cls in OBJECTIVES.items():
        assert objective_class(name) is cls and cls.name == name
    with pytest.raises(ValueError, match=r"'bert'.*'wav2vec2'.*'hubert'"):
        objective_class("bert")
    with pytest.raises(ValueError, match=r"'bert'.*'wav2vec2'.*'hubert'"):
        SqueezeSSLModel(_ssl_cfg("bert", sampler=False))


# the keys of the objective's parts in a .nemo written before objectives were submodules (at the model's top level)
LEGACY_OBJECTIVE_KEYS = {
    "wav2vec2": [
        "quantizer.vars", "quantizer.weight_proj.weight", "quantizer.weight_proj.bias",
        *(f"project_q.net.{k}" for k in ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                         "1.num_batches_tracked", "3.weight", "3.bias"]),
        *(f"final_proj.net.{k}" for k in ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                          "1.num_batches_tracked", "3.weight", "3.bias"]),
    ],
    "hubert": ["label_emb", "labeler.centroids", "final_proj.net.weight", "final_proj.net.bias"],
}  # fmt: skip


def _ssl_model(objective, tmp_path, seed=0):
    from nemo_sew.models.ssl import SqueezeSSLModel

    centroids = tmp_path / "c.npy"
    np.save(centroids, np.random.default_rng(0).normal(size=(20, 78)).astype(np.float32))
    torch.manual_seed(seed)
    return SqueezeSSLModel(_ssl_cfg(objective, centroids=centroids, sampler=False))


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
def test_objective_is_a_submodule_owning_its_parts(objective, tmp_path):
    model = _ssl_model(objective, tmp_path)
    keys = list(model.state_dict())
    expected = [f"objective.{k}" for k in LEGACY_OBJECTIVE_KEYS[objective]]
    assert [k for k in keys if not k.startswith(("encoder.", "preprocessor."))] == expected
    assert len(keys) == len(set(keys)) and dict(model.named_children())["objective"] is model.objective
    assert dict(model.named_modules())["objective.final_proj"] is model.objective.final_proj
    if objective == "hubert":
        assert model.objective.train_logs() == {}
    else:
        model.objective.on_train_step(1000)
        assert model.objective.train_logs()["codebook_temp"] == pytest.approx(2.0 * 0.999995**1000)


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
def test_a_state_dict_written_before_the_objective_was_a_submodule_still_loads(objective, tmp_path):
    import copy

    model = _ssl_model(objective, tmp_path, seed=0)
    model.train()
    # an old run: its optimizer saw the parameters in the order they had then (the model's own label_emb first)
    params = dict(model.named_parameters())
    legacy_names = [n for n in params if n.count(".") == 1 and n.startswith("objective.")]
    legacy_names += [n for n in params if n not in legacy_names]
    opt = torch.optim.Adam([params[n] for n in legacy_names], lr=1e-3)
    wav, lens = torch.randn(2, 16000), torch.tensor([16000, 12000])
    model(wav, lens)["loss"].backward()
    opt.step()
    legacy = {k.removeprefix("objective."): v.clone() for k, v in model.state_dict().items()}
    assert [k for k in legacy if not k.startswith(("encoder.", "preprocessor."))] == LEGACY_OBJECTIVE_KEYS[objective]

    fresh = _ssl_model(objective, tmp_path, seed=1)
    fresh_parts = fresh.objective.state_dict()
    assert not all(torch.equal(fresh_parts[k], v) for k, v in model.objective.state_dict().items())
    checkpoint = {"state_dict": dict(legacy), "optimizer_states": [copy.deepcopy(opt.state_dict())]}
    fresh.on_load_checkpoint(checkpoint)  # what Lightning calls before it restores the weights and the optimizer
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
    assert list(checkpoint["state_dict"]) == list(legacy)  # the caller's dict is left as it was
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    model.eval()
    fresh.eval()
    torch.manual_seed(3)
    expected = model(wav, lens)
    torch.manual_seed(3)
    got = fresh(wav, lens)
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)
    # the optimizer state follows each parameter to its place in parameters() now
    restored = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    restored.load_state_dict(checkpoint["optimizer_states"][0])
    fresh_params = dict(fresh.named_parameters())
    with_state = {n for n in fresh_params if fresh_params[n] in restored.state}
    assert with_state == {n for n in params if params[n] in opt.state}
    for n, p in params.items():
        if p in opt.state:
            for key in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(restored.state[fresh_params[n]][key], opt.state[p][key]), (n, key)
    # a model nested in another module (prefix "net.") too
    nested = torch.nn.ModuleDict({"net": _ssl_model(objective, tmp_path, seed=2)})
    nested.load_state_dict({f"net.{k}": v for k, v in legacy.items()}, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(nested["net"].state_dict()[k], v), k


def test_ssl_training_lowers_the_loss_on_a_fixed_batch():
    """A few optimiser steps on one batch: the contrastive loss must fall (the objective is learnable)."""
    from nemo_sew.models.ssl import SqueezeSSLModel

    model = SqueezeSSLModel(_ssl_cfg("wav2vec2", sampler=False))
    model.train()
    t = torch.arange(24000) / 16000
    wav = torch.stack([torch.sin(2 * math.pi * (200 + 300 * i) * t * (1 + t)) for i in range(3)]) * 0.3
    lens = torch.full((3,), 24000)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        torch.manual_seed(step % 3)
        out = model(wav, lens)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["contrastive_loss"].item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


# ---------------------------------------------------------------------------------------------------
# end to end through the CLI: k-means -> pre-training -> fine-tuning from it

SMALL_ENCODER = TINY_ENCODER
QUIET = ["trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0", "trainer.max_time=null",
         "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0", "model.train_ds.batch_size=4"]  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tiny_corpus, tmp_path_factory):
    from nemo_sew.cli import main
    from nemo_sew.train import load_config, train

    out = tmp_path_factory.mktemp("ssl")
    centroids = out / "km.npy"
    assert main(["kmeans", "--manifest", str(tiny_corpus["train"]["manifest"]), "--out", str(centroids),
                 "--clusters", "16", "--max-hours", "0.01"]) == 0  # fmt: skip
    assert np.load(centroids).shape == (16, 78)
    cfg = load_config("recipes/ssl_tiny_mel.yaml", [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        f"model.hubert.centroids={centroids}", "model.hubert.num_clusters=16", *SMALL_ENCODER, *QUIET,
        "trainer.max_steps=4", f"exp_manager.exp_dir={out}", f"save_to={out / 'ssl.nemo'}",
    ])  # fmt: skip
    model = train(cfg)
    return out / "ssl.nemo", model


def test_pretrained_model_saves_and_restores_with_its_centroids(pretrained):
    from nemo.core.classes import ModelPT

    path, model = pretrained
    restored = ModelPT.restore_from(str(path), map_location="cpu")
    assert type(restored).__name__ == "SqueezeSSLModel"
    torch.testing.assert_close(restored.objective.labeler.centroids, model.objective.labeler.centroids)
    assert restored.objective.labeler.centroids.abs().sum() > 0


def _finetune(tiny_corpus, out, extra):
    from nemo_sew.train import load_config, train

    cfg = load_config("recipes/ctc_char_finetune_tiny_mel.yaml", [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        *QUIET, f"exp_manager.exp_dir={out}", "exp_manager.create_checkpoint_callback=false", *extra,
    ])  # fmt: skip
    return train(cfg)


def test_finetune_from_ssl_inherits_the_encoder_and_its_weights(pretrained, tiny_corpus, tmp_path):
    from nemo_sew.train import init_encoder_from, inherit_encoder_config, load_config

    path, ssl = pretrained
    # with a freeze period longer than the run, the encoder must end exactly as pre-trained
    model = _finetune(tiny_corpus, tmp_path, [f"init_from_ssl={path}", "trainer.max_steps=3",
                                              "model.finetune.freeze_encoder_steps=100"])  # fmt: skip
    arch = model.cfg.encoder.arch  # from the SSL checkpoint: the full arch
    assert arch.d_model == 64 and len(arch.blocks) == 2 and arch.blocks[0].heads == 2
    assert model.cfg.encoder.masking.time_prob == 0.5  # the recipe's fine-tuning options on top
    ssl_state = {k: v for k, v in ssl.encoder.state_dict().items()}
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, ssl_state[k], msg=k)
    # without the freeze period the encoder moves
    moved = _finetune(tiny_corpus, tmp_path, [f"init_from_ssl={path}", "trainer.max_steps=3"])
    diff = sum((v - ssl_state[k]).abs().sum().item() for k, v in moved.encoder.state_dict().items() if k in ssl_state)
    assert diff > 0
    # a model whose encoder differs from the checkpoint's gets a clear error, not a silent partial load
    from nemo_sew.train import build_model

    cfg = inherit_encoder_config(load_config("recipes/ctc_char_finetune_tiny_mel.yaml", [f"init_from_ssl={path}"]))
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.encoder.arch.d_model = 96
        cfg.model.train_ds.manifest_filepath = None
        cfg.model.validation_ds.manifest_filepath = None
    with pytest.raises(ValueError, match="does not match"):
        init_encoder_from(build_model(cfg), path)



def test_a_batch_without_masked_frames_does_not_stop_training():
    from nemo_sew.models.ssl import SqueezeSSLModel

    cfg = _ssl_cfg("wav2vec2", sampler=False)
    cfg.masking = {"prob": 0.0, "length": 10, "min_masks": 0}
    model = SqueezeSSLModel(cfg)
    out = model(torch.randn(2, 16000), torch.tensor([16000, 12000]))
    assert torch.isfinite(out["loss"]) and out["masked_fraction"] > 0


def test_hubert_iteration_two_targets_from_a_teacher(pretrained, tiny_corpus, tmp_path):
    """Iteration 2: k-means on the first block of the iteration-1 model, then a model trained on those ids."""
    from nemo_sew.models.ssl import SqueezeSSLModel
    from nemo_sew.ssl.targets import TeacherFeatures, kmeans_from_manifest

    path, teacher_model = pretrained
    teacher = TeacherFeatures(path, layer=1)
    wav, lens = torch.randn(2, 16000), torch.tensor([16000, 11000])
    feats, frames = teacher(wav, lens)
    assert feats.shape[-1] == teacher_model.encoder._feat_out and feats.shape[1] == int(frames.max())
    assert all(not p.requires_grad for p in teacher.parameters())
    summary = kmeans_from_manifest(tiny_corpus["train"]["manifest"], tmp_path / "it2.npy", features=str(path),
                                   layer=1, num_clusters=8, max_hours=0.01)  # fmt: skip
    assert summary["dim"] == feats.shape[-1]
    cfg = OmegaConf.create(OmegaConf.to_container(teacher_model.cfg))
    cfg.hubert.update(features=str(path), layer=1, num_clusters=8, centroids=str(tmp_path / "it2.npy"))
    cfg.train_ds = cfg.validation_ds = None
    student = SqueezeSSLModel(cfg)
    student.train()
    out = student(torch.randn(2, 16000), torch.tensor([16000, 11000]))
    assert torch.isfinite(out["loss"]) and abs(out["masked_loss"].item() - math.log(8)) < 1.5


def test_recipe_without_centroids_says_how_to_fit_them(tiny_corpus):
    """The recipe's ``hubert.centroids`` is null (so ``model.objective=wav2vec2`` runs from it); HuBERT without
    centroids stops with the command that makes them."""
    from nemo_sew.train import build_model, load_config

    cfg = load_config("recipes/ssl_tiny_mel.yaml", [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}", *SMALL_ENCODER, *QUIET,
    ])  # fmt: skip
    with pytest.raises(ValueError, match="nemo-sew kmeans"):
        build_model(cfg)
