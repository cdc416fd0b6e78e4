"""Every dial composes in one encoder (issue 28): one plan per forward carries squeeze, pooling, gates, pruning
and weight bits, so each pair of dials (and the product of all that can meet) trains, and at inference a batch
equals its items run one at a time, with ``nemo_sew.cost`` matching the flop counter. The pairs that cannot
meet are refused when they are built, with a message naming both dials.

The README's composition table is this file's DIALS x DIALS.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from nemo_sew.cost import encoder_cost
from nemo_sew.encoder import Draw, build_encoder
from nemo_sew.evaluate import count_macs
from nemo_sew.profile import CompressionProfile
from nemo_sew.prune.materialize import materialize_encoder
from nemo_sew.quant.weights import prepare_qat, quantize_encoder

NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0, "layerdrop": 0.0}

# dial -> (encoder options, profile fields, what is done to the built encoder)
DIALS = {
    "squeeze": ({}, {"squeeze": 2}, None),
    "cif": ({}, {"squeeze": 1.5}, None),
    "pooling": ({}, {"q_pool": (1, 2), "kv_pool": (2, 1)}, None),
    "local_gates": ({"gates": {"kind": "local", "hidden": 8}}, {"depth_threshold": 0.5}, None),
    "global_gates": ({"gates": {"kind": "global", "hidden": 8}}, {"depth_threshold": 0.5}, None),
    "pruning": ({"pruning": {"units": ["frontend", "heads", "ffn", "conv", "branches"]}}, {}, "masks"),
    "ptq_bits": ({}, {"weight_bits": 4}, "ptq"),
    "qat_bits": ({}, {"weight_bits": 4}, "qat"),
}
# pairs that cannot meet, and why (the message the build raises must say it)
REFUSED = {
    frozenset({"pruning", "ptq_bits"}): "materialise them first",
    frozenset({"pruning", "qat_bits"}): "materialise them first",
    frozenset({"ptq_bits", "qat_bits"}): "QAT starts from an fp encoder",
}


def _build(dials: tuple[str, ...]):
    """A small waveform conformer with every dial of ``dials``, with random mask / gate state so that every dial acts; and
    the profile that exercises them."""
    options: dict = {"dropout": NO_DROPOUT, "squeeze_sampler": {"squeeze": {"values": [1, 2]}}}
    profile: dict = {}
    for dial in dials:
        extra, fields, _ = DIALS[dial]
        options.update(extra)
        profile.update(fields)
    torch.manual_seed(0)
    enc = build_encoder("tiny_conformer", **options)
    with torch.no_grad():
        if enc.pruning is not None:  # some units pruned, one branch closed entirely
            for gate in enc.pruning.gates.values():
                gate.log_alpha.normal_(1.0, 3.0)
            enc.pruning.gates["l1_ffn2_branch"].log_alpha.fill_(-10.0)
        if enc.gate_options is not None:  # gates that open for some utterances and not for others
            for name, p in enc.named_parameters():
                if "gate" in name and name.endswith("fc2.bias"):
                    p.normal_(0.0, 2.0)
    for dial in dials:
        action = DIALS[dial][2]
        if action == "ptq":
            quantize_encoder(enc, (8, 4))
        elif action == "qat":
            prepare_qat(enc, 4)
    return enc, CompressionProfile(**profile)


def _inputs():
    torch.manual_seed(1)
    lengths = torch.tensor([8000, 6011, 3987])
    x = torch.randn(3, 1, 8000)
    return x, lengths


PAIRS = [tuple(sorted(p)) for p in itertools.combinations(DIALS, 2)]
PRODUCT = ("cif", "pooling", "local_gates", "pruning")  # everything that can meet in one training run
CASES = [*PAIRS, PRODUCT, ("squeeze", "pooling", "global_gates", "qat_bits")]


@pytest.mark.parametrize("dials", CASES, ids=["+".join(c) for c in CASES])
def test_dials_compose_train_and_batch(dials):
    refused = [reason for pair, reason in REFUSED.items() if pair <= set(dials)]
    if refused:
        with pytest.raises(ValueError, match=refused[0]):
            _build(dials)
        return
    enc, profile = _build(dials)

    # a training step at a draw carrying the profile (weight bits included) runs and reaches every dial's parameters
    enc.train()
    x, lengths = _inputs()
    train_profile = profile if "qat_bits" in dials or "ptq_bits" not in dials else CompressionProfile(
        **{**profile.to_dict(), "weight_bits": 16}
    )  # PTQ holds packed weights: training runs the fp ones
    out = enc.run(x, lengths, Draw(train_profile, step=3))
    loss = out.hidden.pow(2).mean() + sum(out.aux_losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in enc.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), "every parameter gets a gradient"
    if enc.pruning is not None:
        assert any(float(g.log_alpha.grad.abs().sum()) > 0 for g in enc.pruning.gates.values())
    if enc.gate_options is not None:
        assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "gate" in n)
    enc.zero_grad()

    # inference: batched equals one at a time
    enc.eval()
    enc.set_profile(profile)
    with torch.no_grad():
        batched = enc.run(x, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone = enc.run(x[i : i + 1, :, :n], lengths[i : i + 1])
            m = int(alone.lengths[0])
            assert int(batched.lengths[i]) == m
            torch.testing.assert_close(batched.hidden[i, :m], alone.hidden[0, :m], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dials", [d for d in CASES if not any(g in d for g in ("local_gates", "global_gates"))
                                   and not any(p <= set(d) for p in REFUSED)], ids=lambda d: "+".join(d))  # fmt: skip
def test_cost_model_counts_what_runs(dials):
    """``nemo_sew.cost`` within 2% of the flop counter for the static dials (the gated ones are counted per
    utterance in the gate tests); with pruning masks, at the materialised arch."""
    enc, profile = _build(dials)
    enc = enc.eval()
    enc.set_profile(profile)
    arch = enc.arch
    if enc.pruning is not None:
        enc = materialize_encoder(enc).eval()
        arch = enc.arch
    n = 8000
    x = torch.randn(1, 1, n)
    measured = count_macs(lambda: enc(audio_signal=x, length=torch.tensor([n])))
    assert float(encoder_cost(arch, profile, n).total) == pytest.approx(measured, rel=0.02)


@pytest.mark.parametrize("kind", ["local", "global"])
def test_pruned_gated_encoder_materialises_and_gates_count_the_pruned_widths(kind):
    """Pruning masks with I3D gates: the materialised encoder (a closed branch drops its gate too) gives the
    masked encoder's outputs, and the gates' MAC stats of the masked encoder are the materialised one's."""
    dials = ("pruning", f"{kind}_gates")
    enc, profile = _build(dials)
    enc.eval().set_profile(profile)
    pruned = materialize_encoder(enc).eval()
    assert pruned.arch.blocks[1].ffn_dims[1] == 0  # the closed branch is gone, with its gate
    x, lengths = _inputs()
    with torch.no_grad():
        a, b = enc.run(x, lengths, measure=True), pruned.run(x, lengths, measure=True)
    torch.testing.assert_close(a.hidden, b.hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(a.stats["macs"], b.stats["macs"], rtol=1e-6, atol=0)
    dense = build_encoder("tiny_conformer")
    assert float(a.stats["macs"].sum()) < float(encoder_cost(dense.arch, profile.squeeze, lengths).total.sum())


def test_a_draws_weight_bits_act_in_training_and_inference():
    """Which stored width runs is the plan's decision: a Draw's weight_bits switches it for that forward only."""
    enc, _ = _build(("ptq_bits",))
    enc.eval()
    x, lengths = _inputs()
    with torch.no_grad():
        at4 = enc.run(x, lengths).hidden  # the active profile: 4 bits (the lowest held)
        fp = enc.run(x, lengths, Draw(CompressionProfile(weight_bits=16))).hidden
        at8 = enc.run(x, lengths, Draw(CompressionProfile(weight_bits=8))).hidden
        again = enc.run(x, lengths).hidden
    assert not torch.allclose(fp, at4, atol=1e-3) and not torch.allclose(fp, at8, atol=1e-3)
    assert (at8 - fp).abs().max() < (at4 - fp).abs().max()
    torch.testing.assert_close(again, at4, atol=0, rtol=0)  # the draw changed nothing that outlives it
    enc.set_profile(CompressionProfile(weight_bits=8))
    with torch.no_grad():
        torch.testing.assert_close(enc.run(x, lengths).hidden, at8, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="weight_bits=2"):
        enc.run(x, lengths, Draw(CompressionProfile(weight_bits=2)))
    qat, _ = _build(("qat_bits",))
    qat.train()
    with torch.no_grad():
        fake = qat.run(x, lengths, Draw(CompressionProfile(weight_bits=4), step=0)).hidden
        full = qat.run(x, lengths, Draw(CompressionProfile(weight_bits=16), step=0)).hidden
    assert not torch.allclose(fake, full, atol=1e-3), "a QAT draw at 16 bits reads the latent fp weights"


def test_training_draws_carry_their_step_and_the_step_count_is_saved():
    enc, _ = _build(("local_gates",))
    enc.train()
    x, lengths = _inputs()
    with pytest.raises(ValueError, match="must carry its step"):
        enc.run(x, lengths, Draw(CompressionProfile()))
    # stock NeMo models call forward() without a draw: the encoder counts the steps itself, in its state dict
    for _ in range(3):
        enc.run(x, lengths)
    assert int(enc.train_step) == 3
    assert enc.draw().step == 3
    copy, _ = _build(("local_gates",))
    copy.load_state_dict(enc.state_dict())
    assert copy.train().draw().step == 4  # resumed where the saved encoder stopped (it had drawn 0 to 3)
    old = {k: v for k, v in enc.state_dict().items() if k != "train_step"}  # a checkpoint from before the count
    copy.load_state_dict(old)
    assert copy.train().draw().step == 0


@pytest.mark.skipif(not __import__("nemo_sew.nn.onednn").nn.onednn.onednn_available(), reason="torch without oneDNN")
@pytest.mark.parametrize("dials", [d for d in CASES if not any(REFUSED_PAIR <= set(d) for REFUSED_PAIR in REFUSED)],
                         ids=lambda d: "+".join(d))  # fmt: skip
def test_the_onednn_backend_composes_with_every_dial(dials):
    """The oneDNN path is a backend each Linear reads (no patched forward): with every other dial it gives the
    torch backend's output within fp32 rounding, and a quantized (parametrized) Linear keeps its quantized weights."""
    from nemo_sew.nn.linear import Linear
    from nemo_sew.nn.onednn import use_onednn_linear

    enc, profile = _build(dials)
    enc.eval()
    enc.set_profile(profile)
    x, lengths = _inputs()
    with torch.no_grad():
        ref = enc.run(x, lengths)
        switched = use_onednn_linear(enc)
        got = enc.run(x, lengths)
    onednn = [m for m in enc.modules() if isinstance(m, Linear) and m.backend == "onednn"]
    if {"ptq_bits", "qat_bits"} & set(dials):  # every Linear holds quantized (parametrized) weights: none switched
        assert switched == 0 and not onednn
    else:
        convs = [m for m in enc.modules() if getattr(m, "onednn_linear", False)]  # the front end's 1x1 convs
        assert onednn and len(onednn) + len(convs) == switched
    torch.testing.assert_close(got.hidden, ref.hidden, atol=1e-4, rtol=0)
    assert torch.equal(got.lengths, ref.lengths)
