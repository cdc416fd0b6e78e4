"""I3D gates: gradients reach the predictors, closed branches are exact identities, padding never changes a
gate, batched equals one-at-a-time with mixed decisions, threshold 0 is the ungated model, realised MACs
from nemo_sew.cost equal the flop counter's on a gated forward, and the budget works with the squeeze sampler
(ONNX export of gates: test_export_conditional.py)."""

import pytest
import torch

from nemo_sew import CompressionProfile, build_encoder
from nemo_sew.evaluate import count_macs
from nemo_sew.nn.blocks import BlockOptions, LayerPlan, build_block
from nemo_sew.options import Gates

KINDS = ["local", "global"]
PRESETS = ["tiny_mel", "tiny_conformer"]


def _encoder(preset, kind, **kw):
    torch.manual_seed(0)
    enc = build_encoder(preset, gates={"kind": kind, "init_logit": 0.0}, dropout={"hidden": 0.0, "attention": 0.0}, **kw)
    with torch.no_grad():  # spread the gate probabilities so that thresholds split them
        for name, p in enc.named_parameters():
            if "gate" in name and name.endswith("fc2.weight"):
                p.normal_(0.0, 2.0)
    return enc


def _inputs(enc, seconds=(1.0, 0.7, 0.45)):
    lengths = [enc.layout.length(s) for s in seconds]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(lengths), enc.layout.feat_in, max(lengths), generator=g)
    for i, n in enumerate(lengths):
        x[i, :, n:] = 1e3  # garbage padding: it must not matter
    return x, torch.tensor(lengths)


def _probs(enc, x, lengths):
    with torch.no_grad():
        return torch.tensor(enc.run(x, lengths).plain_stats()["gate_probs"])  # (B, G)


def _splitting_threshold(probs: torch.Tensor) -> float:
    """A threshold between two probabilities near the median, far from every probability."""
    values = probs.flatten().sort().values
    gaps = values[1:] - values[:-1]
    mid = len(values) // 2
    window = range(max(0, mid - len(values) // 4), min(len(gaps), mid + len(values) // 4))
    k = max(window, key=lambda i: float(gaps[i]))
    return float((values[k] + values[k + 1]) / 2)


@pytest.mark.parametrize("kind", KINDS)
def test_gate_gradients_reach_the_predictors(kind):
    enc = _encoder("tiny_mel_conformer", kind).train()
    x, lengths = _inputs(enc)
    out = enc.run(x, lengths)
    assert set(out.aux_losses) == {"gate_budget"}
    (out.hidden.pow(2).mean() + out.aux_losses["gate_budget"]).backward()
    gate_params = {n: p for n, p in enc.named_parameters() if "gate" in n}
    assert gate_params
    missing = [n for n, p in gate_params.items() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, missing
    # the straight-through estimator, not only the budget, carries the task loss to the predictors
    enc.zero_grad()
    enc.run(x, lengths).hidden.pow(2).mean().backward()
    assert any(p.grad is not None and torch.any(p.grad != 0) for n, p in gate_params.items() if "fc2.bias" in n)


@pytest.mark.parametrize("post_norm", [False, True], ids=["pre-LN", "post-LN"])
def test_a_closed_gate_is_an_exact_identity(post_norm):
    spec = build_encoder("tiny_mel", num_layers=1).arch.blocks[0]
    block = build_block(spec, BlockOptions(192, layer_norm_first=not post_norm, dropout=0.0, local_gate_hidden=8)).eval()
    x, lengths = torch.randn(2, 11, 192), torch.tensor([11, 7])
    with torch.no_grad():
        y, y_len, taken = block(x, lengths, LayerPlan(depth_threshold=1.0))
        assert torch.equal(y, x) and torch.equal(y_len, lengths)
        assert all(float(g.sum()) == 0 for g, _ in taken.values())
        # training mixes g * branch + (1 - g) * identity: a closed row is still exactly the identity
        branch = block.branches()["ffn"].train()
        mixed, _ = branch(x, lengths, LayerPlan(), gate=torch.tensor([0.0, 1.0]))
        dense, _ = branch(x, lengths, LayerPlan())
        assert torch.equal(mixed[0], x[0]) and torch.allclose(mixed[1], dense[1])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", PRESETS)
def test_padding_never_changes_a_gate_and_batched_equals_single(preset, kind):
    enc = _encoder(preset, kind).eval()
    x, lengths = _inputs(enc)
    probs = _probs(enc, x, lengths)
    for i, n in enumerate(lengths.tolist()):
        alone = _probs(enc, x[i : i + 1, :, :n], lengths[i : i + 1])
        torch.testing.assert_close(alone[0], probs[i], atol=1e-5, rtol=0)
    threshold = _splitting_threshold(probs)
    enc.set_profile(CompressionProfile(depth_threshold=threshold))
    with torch.no_grad():
        batched = enc.run(x, lengths)
        decisions = torch.tensor(batched.plain_stats()["gate_probs"]) > threshold
        assert decisions.any() and not decisions.all()  # some branches run, some are skipped
        assert decisions.any(0).any() and not decisions.all(0).all()  # rows differ: the sub-batch path runs
        for i, n in enumerate(lengths.tolist()):
            single = enc.run(x[i : i + 1, :, :n], lengths[i : i + 1])
            t = single.hidden.shape[1]
            assert (single.hidden[0] - batched.hidden[i, :t]).abs().max() <= 1e-4
            assert single.plain_stats()["depth"][0] == pytest.approx(batched.plain_stats()["depth"][i])


@pytest.mark.parametrize("kind", KINDS)
def test_threshold_zero_is_the_ungated_model_and_one_closes_everything(kind):
    enc = _encoder("tiny_mel_conformer", kind).eval()
    plain = build_encoder("tiny_mel_conformer", dropout={"hidden": 0.0, "attention": 0.0}).eval()
    missing, unexpected = plain.load_state_dict(enc.state_dict(), strict=False)
    assert not missing and all("gate" in k for k in unexpected)
    x, lengths = _inputs(enc)
    with torch.no_grad():
        enc.set_profile(CompressionProfile(depth_threshold=0.0))
        opened = enc.run(x, lengths)
        torch.testing.assert_close(opened.hidden, plain.run(x, lengths).hidden, rtol=0, atol=0)
        assert opened.plain_stats()["depth"] == [4.0] * 3 and opened.plain_stats()["gates_open"] == 1.0
        enc.set_profile(CompressionProfile(depth_threshold=1.0))
        closed = enc.run(x, lengths)
        assert closed.plain_stats()["depth"] == [0.0] * 3 and closed.plain_stats()["gates_open"] == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_realised_macs_match_the_flop_counter_on_a_gated_forward(kind):
    enc = _encoder("tiny_conformer", kind, squeeze_sampler={"values": [1, 2]}).eval()
    x, lengths = _inputs(enc, (1.3,))
    threshold = _splitting_threshold(_probs(enc, x, lengths))
    enc.set_profile(CompressionProfile(squeeze=2, kv_pool=(2, 1), depth_threshold=threshold))
    with torch.no_grad():
        out = enc.run(x, lengths, measure=True)
        assert "macs" not in enc.run(x, lengths).stats  # inference skips the cost model unless asked
    assert 0 < out.plain_stats()["depth"][0] < 2
    measured = count_macs(lambda: enc.run(x, lengths))  # includes the gate predictors' few MACs
    assert out.plain_stats()["macs"][0] == pytest.approx(measured, rel=0.02)
    enc.set_profile(CompressionProfile(squeeze=2, kv_pool=(2, 1), depth_threshold=0.0))
    assert count_macs(lambda: enc.run(x, lengths)) > measured * 1.05  # closing gates saved real compute


def test_budget_with_the_squeeze_sampler_and_profile_errors():
    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"values": [1, 2, 4]},
                        gates={"kind": "local", "target": 0.5, "budget": "modules"}).train()  # fmt: skip
    x, lengths = _inputs(enc)
    seen = set()
    for step in range(6):
        out = enc.run(x, lengths, enc.draw(step))
        seen.add(out.stats["squeeze"])
        # the penalty is the one documented for these options, from the reported gate probabilities
        g, probs = enc.gate_options, torch.tensor(out.plain_stats()["gate_probs"])  # (B, G)
        excess = probs.mean(-1) - g.target if g.per_utterance else (probs.mean(-1) - g.target).mean()
        penalty = excess.pow(2) if g.penalty == "square" else excess.clamp_min(0.0)
        assert float(out.aux_losses["gate_budget"].detach()) == pytest.approx(g.weight * float(penalty.mean()), rel=1e-5)
        assert out.plain_stats()["depth_expected"] == pytest.approx(float(probs.mean(-1).mean()) * 2, rel=1e-5)
    assert len(seen) > 1
    assert enc.config_dict()["gates"]["threshold"] == 0.5  # the default threshold travels with the .nemo
    squeezed = enc.squeeze_features(enc.projection(enc.features(x, lengths)[0]), enc.frame_lengths(lengths), enc.draw(0))
    macs = build_encoder("tiny_mel", num_layers=2, gates={"kind": "local", "budget": "macs"}).train()
    with pytest.raises(ValueError, match="needs the input lengths"):
        macs.context(squeezed, macs.draw(0))
    with pytest.raises(NotImplementedError, match="needs an encoder built with gates"):
        build_encoder("tiny_mel").set_profile(CompressionProfile(depth_threshold=0.5))
    with pytest.raises(ValueError, match="gates.kind"):
        Gates(kind="layer")
    with pytest.raises(ValueError, match="gates.target"):
        Gates(target=0.0)


@pytest.mark.parametrize("compressed", [False, True])
def test_ssl_pretraining_with_gates_adds_the_mac_budget(compressed):
    """Pre-training a gated encoder: the budget joins the SSL loss (from the MACs of the real input lengths)."""
    from omegaconf import OmegaConf

    from nemo_sew import encoder_config
    from nemo_sew.models.ssl import SqueezeSSLModel

    enc = {"_target_": "nemo_sew.SqueezeEncoder", **encoder_config("tiny_wfe_c", squeeze_sampler={"values": [1, 2]}),
           "gates": {"kind": "global", "budget": "macs", "target": 0.5}}  # fmt: skip
    cfg = OmegaConf.create({"sample_rate": 16000, "preprocessor": {"_target_": "nemo_sew.WaveformPreprocessor"},
                            "encoder": enc, "objective": "wav2vec2", "compressed_targets": compressed,
                            "wav2vec2": {"head_hidden": 64, "num_negatives": 10}})  # fmt: skip
    model = SqueezeSSLModel(cfg).train()
    wav, lens = torch.randn(3, 32000), torch.tensor([32000, 20000, 9000])
    out = model(wav, lens, draw=model.encoder.draw(3))
    assert "gate_budget" in out and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.gate_predictor.fc2.bias.grad.abs().sum() > 0


def test_bounded_logits_keep_gates_from_saturating():
    enc = build_encoder("tiny_mel", num_layers=2, gates={"kind": "local", "max_logit": 2.0, "init_logit": 50.0}).eval()
    x, lengths = _inputs(enc)
    probs = _probs(enc, x, lengths)
    bound = torch.sigmoid(torch.tensor(2.0))
    assert float(probs.max()) <= float(bound) + 1e-6  # 50 -> 2 * tanh(25) ~ 2
    with pytest.raises(ValueError, match="max_logit"):
        Gates(max_logit=0.0)


def test_temperature_annealing_and_per_utterance_hinge_budget():
    gates = {"kind": "local", "budget": "modules", "target": 0.6, "weight": 2.0, "init_logit": 0.0,
             "tau": 2.0, "tau_final": 0.5, "anneal_steps": 100, "penalty": "hinge", "per_utterance": True}  # fmt: skip
    enc = build_encoder("tiny_mel", num_layers=2, gates=gates, dropout={"hidden": 0.0, "attention": 0.0}).train()
    assert [enc.gate_tau(s) for s in (None, 0, 50, 100, 1000)] == pytest.approx([2.0, 2.0, 1.0, 0.5, 0.5])
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if "gate" in name and name.endswith("fc2.weight"):
                p.normal_(0.0, 2.0)  # utterances on both sides of the target
    x, lengths = _inputs(enc)
    out = enc.run(x, lengths, enc.draw(50))
    assert out.stats["gate_tau"] == pytest.approx(1.0)
    fraction = torch.tensor(out.plain_stats()["gate_probs"]).mean(-1)  # (B,) expected fraction of open branches
    expected = 2.0 * (fraction - 0.6).clamp_min(0.0).mean()
    assert float(out.aux_losses["gate_budget"]) == pytest.approx(float(expected), rel=1e-5)
    # the batch-mean square (the default) differs on the same probabilities
    enc.gate_options = Gates(**{**gates, "penalty": "square", "per_utterance": False})
    out = enc.run(x, lengths, enc.draw(50))
    fraction = torch.tensor(out.plain_stats()["gate_probs"]).mean(-1)
    assert float(out.aux_losses["gate_budget"]) == pytest.approx(float(2.0 * (fraction.mean() - 0.6) ** 2), rel=1e-5)
    with pytest.raises(ValueError, match="gates.penalty"):
        Gates(penalty="abs")
    with pytest.raises(ValueError, match="anneal_steps"):
        Gates(tau_final=0.5)
