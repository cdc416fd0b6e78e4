"""Guards of structured pruning (``nemo_sew.prune``), written from what a user of pruning relies on (issue 30 item 2):

* the HardConcrete mask (Louizos et al.; research notes A2): the initial drop rate sets the logits' mean, the
  training noise ``u`` is clamped to ``[eps, 1 - eps]`` as the formula says (so a unit far enough from 0 is in or
  out in every sample), training draws samples and inference uses the deterministic mask, ``min_keep``;
* the options (``encoder.pruning``): a bad value is refused naming the option, a YAML list and a tuple give equal
  options, ``to_dict`` round trips, the ``sepmac`` targets;
* where the masks go: every front-end layer whose channels feed a linear map (not the last one of a SEW front end
  without a projection), only the listed units, one mask per FFN column of its own width, the initial drop rates;
  the masked model at its deterministic masks computes what the materialised model computes (a SEW front end
  without projection, whole-branch masks on a post-LN block, hard 0/1 masks, the active profile), and a branch
  pruned away is not computed at inference;
* the budget: the expected cost on the masks' device, the size budget scaled by the branches' keep probability, a
  group without cost has no multiplier, the penalty ``lambda1 (s - t) + lambda2 (s - t)^2`` (DPHuBERT) with its
  value, gradients and logged stats, the target warmed up with the step, the error for a missing step;
* the optimizer groups: every other parameter in its own group untouched, the mask logits and multipliers at
  ``reg_lr`` without weight decay, the multipliers ascending;
* materialisation to a ``.nemo`` (``materialize_model``, ``nemo-sew prune``, ``save_pruned``): the file restores and
  computes what the masked model computed, its named profile is the pruned arch, the other profiles stay, the
  data paths are dropped, the printed summary is what the files hold, ``realised_fraction`` per budget;
* the CLI's refusals and help (a model without masks, ``--out`` missing);
* ``pruning_model`` (a recipe's ``init_from_nemo`` + ``pruning``): every weight copied, the data, optimiser, fine-tuning
  and encoder overrides merged (interpolations resolved, the vocabulary the model's own), the distillation teacher
  with its weight and temperature, the optimizer groups, and the errors naming what is wrong.

Fast (tiny presets, two blocks): part of ``make mutation``'s ``prune`` module.
"""

import json
import logging
import math
import re
import types

import pytest
import torch
from nemo.collections.asr.models import ASRModel  # noqa: F401  (NeMo loaded once, at collection)
from omegaconf import OmegaConf, open_dict

from nemo_sew import CompressionProfile, SqueezeCTCModel, build_encoder
from nemo_sew.cli import main
from nemo_sew.cost import encoder_cost, encoder_params, macs_per_second
from nemo_sew.errors import UserError
from nemo_sew.prune import (
    HardConcrete,
    Pruning,
    materialize_encoder,
    materialize_model,
    materialize_state,
    optimizer_groups,
    realised_fraction,
)
from nemo_sew.prune.hardconcrete import BETA, EPS, LEFT, RIGHT
from nemo_sew.quant.model import logprobs, tiny_ctc_config
from nemo_sew.safe_load import restore
from test_prune import _batch, _randomise, _valid_diff

NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0}


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    """Each test runs in its own folder: a file written to a wrong (relative) path cannot reach the next test."""
    monkeypatch.chdir(tmp_path)


def _enc(preset="tiny_wfe_o", units=("frontend", "heads", "ffn", "conv"), budget="sepmac", arch=None, **pruning):
    return build_encoder(preset, dropout=NO_DROPOUT, pruning={"units": list(units), "budget": budget, **pruning},
                         **(arch or {}))  # fmt: skip


def _hard(encoder, closed=()):
    """Every mask hard: kept (logit 30, deterministic value exactly 1) except the keys in ``closed`` (logit -30)."""
    with torch.no_grad():
        for key, gate in encoder.pruning.gates.items():
            gate.log_alpha.fill_(-30.0 if key in closed else 30.0)
    return encoder


def _equal_outputs(masked, pruned, lengths=(12000, 9000)):
    x, n = _batch(masked, lengths)
    with torch.no_grad():
        return _valid_diff(masked.eval().run(x, n), pruned.eval().run(x, n))


# ---------------------------------------------------------------------------------------------- the mask


@pytest.mark.parametrize("drop", [0.01, 0.2, 0.5])
def test_initial_drop_rate_sets_the_logits(drop):
    """``log_alpha ~ N(log(1 - d) - log(d), 0.01)`` (notes A2)."""
    gate = HardConcrete(20000, init_drop=drop)
    la = gate.log_alpha.detach()
    assert float(la.mean()) == pytest.approx(math.log((1 - drop) / drop), abs=1e-3)
    assert float(la.std()) == pytest.approx(0.01, rel=0.05)


def test_mask_arguments_are_checked_and_min_keep_defaults_to_zero():
    with pytest.raises(ValueError, match="expected n >= 1 units, got 0"):
        HardConcrete(0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="init_drop"):
            HardConcrete(4, init_drop=bad)
    gate = HardConcrete(6)  # a head group or an FFN may lose every unit (the branch becomes an identity)
    with torch.no_grad():
        gate.log_alpha.fill_(-30.0)
    assert not gate.deterministic().any()


@pytest.mark.parametrize("u", [0.0, 1.0 - 2.0**-24])  # torch.rand's smallest and largest values
def test_training_noise_is_clamped_to_eps(monkeypatch, u):
    """``u ~ U(eps, 1 - eps)``: the logistic noise is bounded by ``log((1 - eps) / eps)``, so a unit whose logit is
    below ``-(that + beta log(-l / r))`` is 0 in every sample and one above it is non-zero in every sample, whatever
    the uniform draw, rand's extreme values included; each sample is the documented formula at the clamped ``u``."""
    gate = HardConcrete(4)
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([-16.0, 16.0, -1.0, 2.0]))
    monkeypatch.setattr(torch, "rand_like", lambda t: torch.full_like(t, u))
    z = gate.sample().detach()
    assert z[0] == 0 and z[1] > 0
    uc = torch.full((4,), u).clamp(EPS, 1.0 - EPS)
    s = torch.sigmoid((torch.log(uc) - torch.log1p(-uc) + gate.log_alpha.detach()) / BETA)
    assert torch.allclose(z, (s * (RIGHT - LEFT) + LEFT).clamp(0, 1), atol=1e-6)


def test_training_draws_samples_and_inference_is_deterministic():
    gate = HardConcrete(64, init_drop=0.5).train()
    a, b = gate().detach(), gate().detach()
    assert not torch.equal(a, b) and not torch.equal(a, gate.deterministic())
    gate.eval()
    assert torch.equal(gate(), gate.deterministic())


# ---------------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options,message", [
    ({"target": 1.5}, "pruning.target in (0, 1]"),
    ({"target_frontend": 2.0}, "pruning.target_frontend in (0, 1]"),
    ({"target_transformer": 0.0}, "pruning.target_transformer in (0, 1]"),
    ({"units": ()}, "pruning.units a non-empty subset"),
    ({"warmup_steps": -1}, "expected warmup_steps >= 0"),
    ({"reference_seconds": 0.0}, "reference_seconds > 0"),
    ({"reg_lr": 0.0}, "reg_lr > 0"),
])  # fmt: skip
def test_bad_options_are_refused_naming_the_option(options, message):
    with pytest.raises(UserError) as err:
        Pruning(**options)
    assert message in str(err.value)


def test_options_from_yaml_equal_options_from_code():
    for ok in ({"target": 1.0}, {"reference_seconds": 0.5}, {"warmup_steps": 0}, {"reg_lr": 1e-4}):
        Pruning(**ok)  # the edges of the valid ranges are accepted
    p = Pruning(units=["heads", "ffn"], budget="mac", target=0.7)  # a YAML list
    assert p == Pruning(units=("heads", "ffn"), budget="mac", target=0.7) and p.units == ("heads", "ffn")
    assert {p: 1}[Pruning(units=("heads", "ffn"), budget="mac", target=0.7)] == 1  # hashable, like any frozen option
    assert Pruning.of(None) is None and Pruning.of(p) is p
    data = p.to_dict()
    assert data["units"] == ["heads", "ffn"] and Pruning.of(data) == p
    assert Pruning.of(OmegaConf.to_container(OmegaConf.create(data))) == p  # through a config file
    assert p.targets() == {"total": 0.7}
    assert Pruning(target=0.5).targets() == {"frontend": 0.5, "transformer": 0.5}
    sep = Pruning(target=0.5, target_frontend=0.3, target_transformer=0.8)
    assert sep.targets() == {"frontend": 0.3, "transformer": 0.8}


# ---------------------------------------------------------------------------------------------- where the masks go


def test_masks_follow_the_units_and_the_front_end_layout():
    # wav2vec 2.0: a Linear projection follows the front end, so every conv layer's channels are maskable (the last
    # one after the feature LayerNorm)
    w2v2 = _enc("tiny_wfe_o", units=["frontend"])
    assert list(w2v2.pruning.gates) == [f"fe{i}" for i in range(7)] and w2v2.pruning.feature_key == "fe6"
    # SEW at d_model = the last conv's channels: no projection, so the last layer's channels are the model width
    sew = _enc("tiny_wfe_c", units=["frontend"])
    assert list(sew.pruning.gates) == [f"fe{i}" for i in range(12)] and sew.pruning.feature_key is None
    assert set(_enc("tiny_wfe_o", units=["heads"]).pruning.gates) == {"l0_attn", "l1_attn"}  # nothing else
    # a conformer's two FFNs are two masks of their own widths; FFN units start at ffn_init_drop, others at init_drop
    conf = _enc("tiny_conformer", units=["frontend", "heads", "ffn"], init_drop=0.2, ffn_init_drop=0.3,
                arch={"blocks": {"ffn_dims": [64, 96]}})  # fmt: skip
    gates = conf.pruning.gates
    assert (gates["l1_ffn1"].n, gates["l1_ffn2"].n, gates["l1_attn"].n, gates["fe0"].n) == (64, 96, 2, 16)
    for key, drop in (("l0_ffn2", 0.3), ("l0_attn", 0.2), ("fe3", 0.2)):
        assert float(gates[key].log_alpha.detach().mean()) == pytest.approx(math.log((1 - drop) / drop), abs=0.02), key
    conf = _randomise(conf, seed=4)
    assert _equal_outputs(conf, materialize_encoder(conf.eval())) <= 1e-4


def test_sew_front_end_without_projection_masked_equals_materialised():
    """SEW's front end feeds the blocks directly (no Linear): its feature LayerNorm normalises the last conv's
    channels, which are not masked; the earlier layers are, and a layer keeps at least one channel."""
    enc = _randomise(_enc("tiny_wfe_c", units=["frontend", "heads", "ffn"]), seed=2)
    with torch.no_grad():
        enc.pruning.gates["fe3"].log_alpha.fill_(-30.0)
    pruned = materialize_encoder(enc.eval())
    channels = [c for c, _, _ in pruned.arch.frontend.conv_layers]
    assert channels[3] == 1 and channels[-1] == 128 and channels != [c for c, _, _ in enc.arch.frontend.conv_layers]
    assert _equal_outputs(enc, pruned) <= 1e-4


def test_branch_masks_close_branches_exactly():
    """Whole-branch masks on a post-LN block (wav2vec 2.0 base): a closed branch is the identity of a width-0 branch
    (its norm skipped too) while its units are kept, a kept one with every unit at exactly 1 stays open, a branch
    with a branch mask only (the FFNs here) works; and at inference a closed branch is not computed."""
    enc = _hard(_enc("tiny_wfe_o", units=["heads", "branches"]), closed=("l0_attn_branch",))
    pruned = materialize_encoder(enc.eval())
    assert [b.heads for b in pruned.arch.blocks] == [0, 2] and all(b.ffn_dims == (512,) for b in pruned.arch.blocks)
    assert _equal_outputs(enc, pruned) <= 1e-4
    calls = []
    enc.layers[0].attn.body.register_forward_pre_hook(lambda *_: calls.append(0))
    enc.layers[1].attn.body.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        enc.eval().run(*_batch(enc, (8000,)))
    assert calls == [1]


def test_training_takes_no_host_decision_on_the_pruning_sample():
    """In training the sample's open/closed decision stays on the device (no host synchronisation per step): a branch
    the sample closes still runs and is deselected by ``torch.where``, so with I3D gates its gate decides like every
    other (its probability is logged, not NaN); at inference the branch and its gate are skipped."""
    torch.manual_seed(0)
    enc = build_encoder("tiny_conformer", dropout=NO_DROPOUT, gates={"kind": "local", "hidden": 8},
                        pruning={"units": ["heads", "ffn"]})  # fmt: skip
    with torch.no_grad():
        enc.pruning.gates["l1_attn"].log_alpha.fill_(-30.0)  # every sample 0: closed
    x, lengths = _batch(enc, (8000, 6000))
    stats = enc.train().run(x, lengths, enc.draw(3)).plain_stats()
    assert not torch.tensor(stats["gate_probs"]).isnan().any()
    with torch.no_grad():
        stats = enc.eval().run(x, lengths).plain_stats()
    assert torch.tensor(stats["gate_probs"]).isnan().sum() == 2  # l1's attention gate, for either utterance


def test_materialised_encoder_keeps_the_active_profile():
    """A masked model running a profile (squeeze 2, its own arch named): the pruned model runs the same profile, with
    the arch left to the pruned one (the dense arch is another file's)."""
    enc = _randomise(_enc("tiny_wfe_c", units=["heads", "ffn"]), seed=3)
    enc.set_profile(CompressionProfile(squeeze=2, arch=enc.arch.to_dict()))
    pruned = materialize_encoder(enc.eval())
    assert pruned.profile == CompressionProfile(squeeze=2.0)
    assert _equal_outputs(enc, pruned) <= 1e-4


def test_front_end_only_encoder():
    """An encoder without blocks prunes its front end: the expected cost of hard masks is the materialised cost,
    on the masks' device."""
    enc = _randomise(_enc("tiny_wfe_o", units=["frontend"], budget="mac", arch={"num_layers": 0}), hard=True, seed=1)
    arch, _ = materialize_state(enc)
    exact = float(encoder_cost(arch, None, enc.pruning.reference_length()).total)
    assert float(enc.pruning.group_costs()["total"]) == pytest.approx(exact, rel=1e-12)
    soft, keep = enc.pruning.soft_widths()  # no blocks: empty widths, still the cost model's float64
    assert {v.dtype for v in [*soft.values(), *keep.values()]} == {torch.float64}
    enc.pruning.to("meta")
    assert enc.pruning.group_costs()["total"].device.type == "meta"
    soft, keep = enc.pruning.soft_widths()
    assert {v.device.type for v in [*soft.values(), *keep.values()]} == {"meta"}


# ---------------------------------------------------------------------------------------------- cost and budget


def test_cost_is_computed_on_the_masks_device():
    """The expected cost, its widths and the penalty stay on the masks' device (``meta`` here, standing in for a GPU:
    a CPU tensor mixed in fails there as on CUDA)."""
    for units in (["frontend", "heads", "ffn", "conv", "branches"], ["heads"]):  # every width masked, or a few
        enc = _enc("tiny_conformer", units=units)
        enc.pruning.to("meta")
        soft, keep = enc.pruning.soft_widths()
        assert {v.device.type for v in [*soft.values(), *keep.values()]} == {"meta"}, units
        assert {v.device.type for v in enc.pruning.group_costs().values()} == {"meta"}, units
        loss, _ = enc.pruning.penalty(step=10)
        assert loss.device.type == "meta", units


def test_no_masks_leave_the_dense_cost():
    """``units: [frontend]`` on a log-mel model: nothing to mask; the budget sees the dense cost."""
    enc = _enc("tiny_mel", units=["frontend"], budget="mac", arch={"num_layers": 2})
    assert len(enc.pruning.gates) == 0
    loss, stats = enc.pruning.penalty(step=5)
    assert float(stats["prune_total_expected"]) == 1.0 and float(loss) == 0.0 and stats["prune_kept"] == {}


def test_expected_cost_is_exact_float64_with_hard_masks():
    """Hard 0/1 masks: the differentiable cost (float64, like the cost model) equals the materialised arch's to the
    last bits, per budget group; ``kept`` counts the deterministic mask's units (float64) or the expected ones."""
    enc = _hard(_enc("tiny_conformer", units=["frontend", "heads", "ffn", "conv", "branches"]),
                closed=("l0_attn", "l1_conv_branch", "l1_ffn2"))  # fmt: skip
    with torch.no_grad():
        for key in ("l0_ffn1", "l1_conv", "fe2", "fe5"):
            enc.pruning.gates[key].log_alpha[::3] = -30.0
    arch, _ = materialize_state(enc)
    cost = encoder_cost(arch, None, enc.pruning.reference_length())
    exact = {"frontend": cost.frontend, "transformer": cost.total - cost.frontend}
    for expected in (True, False):
        soft, keep = enc.pruning.soft_widths(expected=expected)  # what the cost model takes: float64
        assert {v.dtype for v in [*soft.values(), *keep.values()]} == {torch.float64}, expected
        got = enc.pruning.group_costs(expected=expected)
        for g, value in exact.items():
            assert got[g].dtype == torch.float64, (g, expected)
            assert float(got[g]) == pytest.approx(float(value), rel=1e-12), (g, expected)
    counts = enc.pruning.kept(expected=False)
    assert counts["l0_ffn1"].dtype == torch.float64 and float(counts["l0_ffn1"]) == 512 - len(range(0, 512, 3))
    # the defaults are the differentiable, expected values (what the penalty trains on)
    assert all(v.requires_grad for v in enc.pruning.kept().values())
    assert enc.pruning.group_costs()["transformer"].requires_grad
    assert all(v.requires_grad for v in enc.pruning.soft_widths()[0].values() if v.numel())


def test_size_budget_scales_each_branch_by_its_keep_probability():
    """``budget: size``: a branch closed by its branch mask (keep probability ~0) removes its width-dependent
    parameters from the expected count (its norm and output bias stay: width-independent)."""
    enc = _hard(_enc("tiny_wfe_o", units=["heads", "ffn", "branches"], budget="size"), closed=("l1_ffn_branch",))
    arch, _ = materialize_state(enc)
    expected = float(enc.pruning.group_costs()["total"])
    removed_constant = 2 * arch.d_model + arch.d_model  # the closed FFN's LayerNorm and fc2 bias
    assert expected == pytest.approx(float(encoder_params(arch)["total"]) + removed_constant, abs=1.0)
    assert expected < enc.pruning.dense_costs()["total"]


def test_penalty_value_gradients_and_stats():
    """``lambda1 (s - t) + lambda2 (s - t)^2`` with ``s = 1 - cost / dense`` and ``t = (1 - target) min(1,
    step / warmup_steps)``; lambda1's gradient is ``s - t``, lambda2's ``(s - t)^2``; the stats log the expected and
    target kept fraction, the multipliers and the expected kept units per mask. On a log-mel model ``sepmac`` has
    no front-end group (no front-end MACs): one multiplier pair, for the rest."""
    enc = _randomise(_enc("tiny_mel", units=["heads", "ffn"], target=0.6, warmup_steps=100, arch={"num_layers": 2}))
    pruning = enc.pruning
    assert pruning.group_names == ("transformer",) and pruning.lambda1.shape == (1,)
    with torch.no_grad():
        pruning.lambda1.fill_(0.3)
        pruning.lambda2.fill_(2.0)
    loss, stats = pruning.penalty(step=torch.tensor(50))  # the draw's step may be a tensor
    assert not any(k.startswith("prune_frontend") for k in stats)
    s = 1.0 - float(pruning.group_costs()["transformer"]) / pruning.dense_costs()["transformer"]
    gap = s - 0.4 * 50 / 100
    assert float(stats["prune_transformer_expected"]) == pytest.approx(1.0 - s, rel=1e-6)
    assert stats["prune_transformer_target"] == pytest.approx(0.8)
    assert float(stats["prune_transformer_lambda1"]) == pytest.approx(0.3)
    assert float(stats["prune_transformer_lambda2"]) == pytest.approx(2.0)
    assert float(loss) == pytest.approx(0.3 * gap + 2.0 * gap * gap, rel=1e-5)
    assert set(stats["prune_kept"]) == set(pruning.gates)
    for key, gate in pruning.gates.items():
        assert float(stats["prune_kept"][key]) == pytest.approx(float(gate.expected_l0()), rel=1e-6)
    loss.backward()
    assert float(pruning.lambda1.grad[0]) == pytest.approx(gap, rel=1e-5)
    assert float(pruning.lambda2.grad[0]) == pytest.approx(gap * gap, rel=1e-4)
    assert pruning.penalty(step=500)[1]["prune_transformer_target"] == pytest.approx(0.6)  # warmed up
    with pytest.raises(UserError, match=r"the pruning penalty needs the training step \(its target ramps with it\): "
                                        r"pass the draw's step \(Draw\.step\)"):  # fmt: skip
        pruning.penalty()


def test_logged_kept_units_are_named_by_unit_kind():
    """The CTC model logs ``train_prune_kept_<unit>``: the expected kept units summed per unit kind."""
    from nemo_sew.models.ctc import log_prune_stats

    enc = _randomise(_enc("tiny_conformer", units=["frontend", "heads", "ffn", "conv"]))
    _, stats = enc.pruning.penalty(step=1)
    logged = {}
    log_prune_stats(types.SimpleNamespace(encoder=enc, log=logged.__setitem__), stats)
    kinds = {"frontend": "fe", "heads": "_attn", "ffn": "_ffn", "conv": "_conv"}  # the masks' keys: fe3, l0_attn, ...
    for unit, part in kinds.items():
        total = sum(float(g.expected_l0()) for key, g in enc.pruning.gates.items() if part in key)
        assert float(logged[f"train_prune_kept_{unit}"]) == pytest.approx(total, rel=1e-5), unit
    assert not {k for k in logged if k.startswith("train_prune_kept_")} - {f"train_prune_kept_{u}" for u in kinds}
    assert "train_prune_transformer_lambda1" in logged


def test_optimizer_groups_learning_rates():
    """The mask logits and the multipliers get their own groups at ``reg_lr`` without weight decay (the multipliers
    ascend); every other parameter stays in its group with its own settings, and a group left empty goes."""
    enc = _enc("tiny_mel", units=["heads", "ffn"], reg_lr=0.05, arch={"num_layers": 2})
    pruning = enc.pruning
    special = {id(p) for p in pruning.mask_parameters() + pruning.multiplier_parameters()}
    main_params = [p for p in enc.parameters() if id(p) not in special]
    groups = optimizer_groups(enc, [{"params": list(enc.parameters()), "lr": 1e-3, "weight_decay": 0.1},
                                    {"params": pruning.mask_parameters(), "lr": 7.0}], pruning)  # fmt: skip
    assert len(groups) == 3 and [id(p) for p in groups[0]["params"]] == [id(p) for p in main_params]
    opt = torch.optim.AdamW(groups, lr=1e-4, weight_decay=0.5)
    got = [(g.get("name"), g["lr"], g["weight_decay"], g["maximize"]) for g in opt.param_groups]
    assert got == [(None, 1e-3, 0.1, False), ("prune_masks", 0.05, 0.0, False), ("prune_multipliers", 0.05, 0.0, True)]
    assert opt.param_groups[1]["params"] == pruning.mask_parameters()
    assert opt.param_groups[2]["params"] == pruning.multiplier_parameters()


@pytest.mark.parametrize("budget", ["size", "mac", "sepmac"])
def test_realised_fraction_is_the_budgets_cost_ratio(budget):
    enc = _randomise(_enc("tiny_wfe_o", budget=budget), seed=5)
    arch, _ = materialize_state(enc.eval())
    n = enc.pruning.reference_length()
    got = realised_fraction(arch, enc.arch, enc.pruning.options)
    if budget == "size":
        want = {"total": float(encoder_params(arch)["total"]) / float(encoder_params(enc.arch)["total"])}
    else:
        a, b = encoder_cost(arch, None, n), encoder_cost(enc.arch, None, n)
        want = ({"total": float(a.total) / float(b.total)} if budget == "mac" else
                {"frontend": float(a.frontend) / float(b.frontend),
                 "transformer": float(a.total - a.frontend) / float(b.total - b.frontend)})  # fmt: skip
    assert got == pytest.approx(want, rel=1e-12) and all(v < 1 for v in got.values())


def test_realised_fraction_of_a_group_without_cost():
    """sepmac on a log-mel model (the demo recipe): the front end has no MACs and nothing to prune, so its realised
    fraction must not read as 'everything removed': 1.0, or no such group, as the penalty has none."""
    mel = _enc("tiny_mel", units=["heads"], arch={"num_layers": 1})
    got = realised_fraction(mel.arch, mel.arch, mel.pruning.options)
    assert got == {"transformer": 1.0}  # was {"frontend": 0.0, ...}: "everything removed" for an untouched front end


# ---------------------------------------------------------------------------------------------- .nemo and CLI


def _ctc(preset, pruning=None, **extra):
    cfg = tiny_ctc_config(preset, labels="abc ", dropout=NO_DROPOUT, pruning=pruning, **extra)
    cfg["decoder"]["feat_in"] = build_encoder(preset, **extra).d_model
    # the evaluation sets take their labels from the model (NeMo injects cfg.labels), the training set names them
    ds = {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 2, "shuffle": False}
    cfg.update(train_ds=dict(ds, labels=list("abc "), shuffle=True), validation_ds=dict(ds), test_ds=dict(ds),
               optim={"name": "adamw", "lr": 1e-3, "weight_decay": 0.01})  # fmt: skip
    return SqueezeCTCModel(cfg=OmegaConf.create(cfg))


@pytest.fixture(scope="module")
def masked_nemo(tmp_path_factory):
    """A masked wav2vec 2.0-shaped CTC model (sepmac, its own transformer target) with random masks, a named profile
    (its squeeze an interpolation) and data paths that do not exist where it is pruned, saved as masked.nemo."""
    model = _ctc("tiny_wfe_o", {"units": ["frontend", "heads", "ffn"], "budget": "sepmac", "target": 0.6,
                                "target_transformer": 0.7})  # fmt: skip
    _randomise(model.encoder, seed=7)
    with open_dict(model._cfg):
        model._cfg.half_squeeze = 2
        model._cfg.profiles = {"half": {"squeeze": "${half_squeeze}"}}
        for split in ("train_ds", "validation_ds", "test_ds"):
            model._cfg[split].manifest_filepath = f"/nonexistent/{split}.json"
    path = tmp_path_factory.mktemp("guards_prune") / "masked.nemo"
    model.save_to(str(path))
    return path


def test_cli_prune_writes_the_pruned_nemo_and_its_summary(masked_nemo, capsys):
    out = masked_nemo.parent / "pruned.nemo"
    assert main(["prune", str(masked_nemo), "--out", str(out), "--name", "mac60"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text)
    assert text == json.dumps(summary, indent=1) + "\n"  # one field per line
    masked, pruned = restore(masked_nemo).eval(), restore(out).eval()
    dense, small = masked.encoder.arch, pruned.encoder.arch
    n = masked.encoder.pruning.reference_length()
    a, b = encoder_cost(small, None, n), encoder_cost(dense, None, n)
    assert summary == {
        "out": str(out),
        "budget": "sepmac",
        "targets": {"frontend": 0.6, "transformer": 0.7},
        "realised": pytest.approx({"frontend": float(a.frontend / b.frontend),
                                   "transformer": float((a.total - a.frontend) / (b.total - b.frontend))}, rel=1e-12),
        "gmacs_per_second": {"dense": macs_per_second(dense), "pruned": macs_per_second(small)},
        "params": {"dense": float(encoder_params(dense)["total"]), "pruned": float(encoder_params(small)["total"])},
        "frontend_channels": [c for c, _, _ in small.frontend.conv_layers],
        "blocks": [{"heads": s.heads, "ffn_dims": list(s.ffn_dims), "conv_channels": s.conv_channels}
                   for s in small.blocks],
    }  # fmt: skip
    assert summary["realised"]["frontend"] < 1 and summary["realised"]["transformer"] < 1
    # the pruned file: no masks, computes what the masked model computed, its named profile is the pruned arch, the
    # profiles it had are kept, and the data paths (absent here) are dropped
    assert pruned.encoder.pruning is None and "pruning" not in pruned.cfg.encoder
    audio, lengths = torch.randn(2, 12000), torch.tensor([12000, 8000])
    ref, got = logprobs(masked, audio, lengths), logprobs(pruned, audio, lengths)
    assert (ref - got).abs().max() <= 1e-4
    profiles = OmegaConf.to_container(pruned.cfg.profiles)  # written resolved: the file's profiles are plain values
    assert set(profiles) == {"half", "mac60"} and profiles["half"] == {"squeeze": 2}
    assert profiles["mac60"] == {"arch": small.to_dict()}
    assert pruned.set_profile("mac60").arch is not None
    assert all(pruned.cfg[s].manifest_filepath is None for s in ("train_ds", "validation_ds", "test_ds"))

    # a model without masks (the pruned one) is refused, naming it: a user error (exit 2, one line), nothing written
    capsys.readouterr()
    assert main(["prune", str(out), "--out", str(out.parent / "again.nemo")]) == 2
    assert f"nemo-sew prune: error: {out}: this model has no pruning masks" in capsys.readouterr().err
    assert not (out.parent / "again.nemo").exists()


def test_cli_prune_refusals_and_help(masked_nemo, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    # a NeMo model whose encoder is not nemo_sew's (here NeMo's ConvASREncoder) has no masks either
    from conftest import stock_ctc_config
    from nemo_sew import SqueezeCTCModel

    stock = tmp_path / "stock.nemo"
    SqueezeCTCModel(cfg=OmegaConf.create(stock_ctc_config())).save_to(str(stock))
    capsys.readouterr()
    assert main(["prune", str(stock), "--out", str(tmp_path / "y.nemo")]) == 2
    assert f"nemo-sew prune: error: {stock}: this model has no pruning masks" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["prune", str(masked_nemo)])
    assert err.value.code == 2 and "the following arguments are required: --out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert err.value.code == 0
    assert "\n    nemo-sew prune masked.nemo --out pruned.nemo [--name mac60]\n" in text  # the docstring as written
    assert re.search(r"\n  MODEL\.nemo +a model trained with pruning masks \(encoder\.pruning\)\n", text), text
    assert re.search(r"\n  --out OUT +where to write the pruned \.nemo\n", text), text
    assert re.search(r"\n  --name NAME +label of the pruned arch \(a named profile in the \.nemo\)\n", text), text
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"\n +prune +fold a masked model's pruning masks into a smaller \.nemo\n", capsys.readouterr().out)


# ---------------------------------------------------------------------------------------------- pruning_model


@pytest.fixture(scope="module")
def source_nemo(tmp_path_factory):
    """A fine-tuned (here: fresh) stochastic log-mel CTC model (squeeze sampler, phase expander) with a mask
    embedding, as ``init_from_nemo``."""
    model = _ctc("tiny_mel", num_layers=2, mask_emb=True, expander="phase", squeeze_sampler=SQUEEZE)
    path = tmp_path_factory.mktemp("guards_prune_src") / "ctc.nemo"
    model.save_to(str(path))
    return path


SQUEEZE = {"squeeze": {"low": 1.0, "high": 2.0}}


def _prune_cfg(source, **extra):
    return OmegaConf.create({"init_from_nemo": str(source), "pruning": {"units": ["heads", "ffn"], "budget": "mac"},
                             **extra})  # fmt: skip


def test_pruning_model_copies_the_weights_and_merges_the_overrides(source_nemo):
    """``init_from_nemo`` + ``pruning`` + the recipe's ``model`` section: every weight of the source (the masks added),
    the data, optimiser and fine-tuning overrides merged into the source's sections (interpolations resolved; labels
    only where an override names them, and then the source's own vocabulary), the encoder overrides (dropout merged,
    squeeze sampler replaced, masking: the model has a mask embedding), the unpruned model as the distillation
    teacher with its weight and temperature, the pruning optimizer groups, the trainer."""
    import lightning.pytorch as pl

    from nemo_sew.prune.train import pruning_model

    cfg = _prune_cfg(
        source_nemo, keep=0.7, batch=3, drop=0.2,
        pruning={"units": ["heads", "ffn"], "budget": "mac", "target": "${keep}", "reg_lr": 0.1, "warmup_steps": 10},
        pruning_distill={"weight": 0.5, "temperature": 2.0},
        model={"train_ds": {"batch_size": "${batch}", "labels": ["x", "y"]}, "validation_ds": {"batch_size": 5},
               "optim": {"lr": 2e-3}, "finetune": {"freeze_encoder_steps": 7},
               "encoder_overrides": {"dropout": {"hidden": "${drop}"}, "masking": {"time_prob": 0.2, "time_length": 3},
                                     "squeeze_sampler": {"kv_pool": {"values": [[1, 1], [2, 2]]}}}},
    )  # fmt: skip
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, max_steps=3,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model = pruning_model(cfg, trainer)
    source = restore(source_nemo)
    assert model.trainer is trainer
    assert model.encoder.pruning.options == Pruning(units=("heads", "ffn"), budget="mac", target=0.7, reg_lr=0.1,
                                                    warmup_steps=10)  # fmt: skip
    state, want = model.state_dict(), source.state_dict()
    assert set(state) - set(want) == {f"encoder.pruning.{k}" for k in model.encoder.pruning.state_dict()}
    assert all(torch.equal(state[k], v) for k, v in want.items())
    c = OmegaConf.to_container(model.cfg, resolve=True)
    assert c["train_ds"] == {**c["train_ds"], "batch_size": 3, "labels": list("abc "), "sample_rate": 16000,
                             "shuffle": True}  # fmt: skip
    assert c["validation_ds"] == {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 5, "shuffle": False}
    assert c["optim"] == {"name": "adamw", "lr": 2e-3, "weight_decay": 0.01}
    assert c["finetune"]["freeze_encoder_steps"] == 7
    assert c["encoder"]["dropout"] == {**NO_DROPOUT, "hidden": 0.2, "layerdrop": 0.0}
    assert c["encoder"]["squeeze_sampler"]["kv_pool"] == {"values": [[1, 1], [2, 2]]}
    assert c["encoder"]["squeeze_sampler"].get("squeeze") is None
    assert c["encoder"]["masking"]["time_prob"] == 0.2 and c["encoder"]["masking"]["time_length"] == 3
    teacher, weight, temperature = model._distill_teacher
    assert (weight, temperature) == (0.5, 2.0) and teacher.encoder.pruning is None
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in want.items())
    groups = [(g.get("name"), g["lr"], g["weight_decay"]) for g in model._optimizer.param_groups]
    assert groups == [(None, 2e-3, 0.01), ("prune_masks", 0.1, 0.0), ("prune_multipliers", 0.1, 0.0)]


def test_pruning_model_without_overrides_and_the_distillation_options(source_nemo):
    from nemo_sew.distill import has_teacher
    from nemo_sew.prune.train import pruning_model

    plain = pruning_model(_prune_cfg(source_nemo, model={}), None)
    source = restore(source_nemo)
    assert OmegaConf.to_container(plain.cfg.encoder.dropout) == OmegaConf.to_container(source.cfg.encoder.dropout)
    assert plain.cfg.encoder.get("masking") is None and not has_teacher(plain)
    assert OmegaConf.to_container(plain.cfg.encoder.squeeze_sampler)["squeeze"] == SQUEEZE["squeeze"]  # kept
    for distill, teacher in (({"temperature": 3.0}, None), ({"weight": 0.0}, None), ({"weight": 0.3}, (0.3, 1.0))):
        model = pruning_model(_prune_cfg(source_nemo, model={}, pruning_distill=distill), None)
        assert (model._distill_teacher[1:] if has_teacher(model) else None) == teacher, distill


def test_pruning_model_errors_name_what_is_wrong(source_nemo, monkeypatch):
    import nemo_sew.safe_load
    from nemo_sew.prune.train import pruning_model

    message = r"^pruning needs init_from_nemo: the fine-tuned \(or converted\) CTC model to prune$"
    with pytest.raises(ValueError, match=message):
        pruning_model(OmegaConf.create({"pruning": {"units": ["heads"]}, "model": {}}), None)

    def stray(path):  # weights that are not the model's: ten tensors too many
        model = restore(path)
        for i in range(10):
            model.register_buffer(f"stray{i}", torch.zeros(1))
        return model

    monkeypatch.setattr(nemo_sew.safe_load, "restore", stray)
    keys = [f"stray{i}" for i in range(8)]
    with pytest.raises(ValueError) as err:
        pruning_model(_prune_cfg(source_nemo, model={}), None)
    assert str(err.value) == f"{source_nemo}: weights do not match the model to prune: {keys}"


def test_save_pruned_writes_the_materialised_model(source_nemo, tmp_path, caplog):
    from nemo_sew.prune.train import pruning_model, save_pruned

    model = pruning_model(_prune_cfg(source_nemo, model={}), None)
    _randomise(model.encoder, seed=9)
    path = tmp_path / "new" / "dir" / "pruned.nemo"
    with caplog.at_level(logging.INFO, logger="nemo_sew.prune"):
        save_pruned(OmegaConf.create({"pruned_save_to": str(path), "pruned_name": "mac70"}), model)
    pruned = restore(path).eval()
    arch = pruned.encoder.arch
    assert arch == materialize_encoder(model.encoder.eval()).arch and arch != model.encoder.arch
    assert OmegaConf.to_container(pruned.cfg.profiles) == {"mac70": {"arch": arch.to_dict()}}
    n = model.encoder.pruning.reference_length()
    dense = float(encoder_cost(model.encoder.arch, None, n).total)
    fraction = {"total": float(encoder_cost(arch, None, n).total) / dense}
    assert caplog.messages[-1] == f"saved pruned model {path} (kept fraction of the budget's cost: {fraction})"
    audio, lengths = torch.randn(2, 16000), torch.tensor([16000, 11000])
    assert (logprobs(model.eval(), audio, lengths) - logprobs(pruned, audio, lengths)).abs().max() <= 1e-4
    again = path.parent / "unnamed.nemo"  # into a folder that exists, without a name: no profile
    save_pruned(OmegaConf.create({"pruned_save_to": str(again)}), model)
    assert restore(again).cfg.get("profiles") is None


def test_a_pruning_model_trains_after_a_validation_in_inference_mode():
    """Lightning's sanity check and validation run under ``torch.inference_mode``; the cost model's cached per-arch
    constants first built there must not break the next training step's penalty (inference tensors cannot be saved
    for backward)."""
    from nemo_sew.cost import _constant
    from nemo_sew.quant.model import build_tiny_ctc

    model = build_tiny_ctc("tiny_mel", num_layers=2,
                           pruning={"units": ["heads", "ffn"], "budget": "size", "target": 0.7, "warmup_steps": 0})
    x, lengths = torch.randn(2, 16000) * 0.1, torch.tensor([16000, 11000])
    _constant.cache_clear()  # the validation builds them first (another model of the same arch, a sanity check)
    with torch.inference_mode():
        model.eval().forward_with_draw(x, lengths)
        model.encoder.pruning.penalty(0)  # what a validation step logs
    model.train()
    log_probs, _, _, out = model.forward_with_draw(x, lengths, draw=model.encoder.draw(0))
    loss = log_probs.logsumexp(-1).mean() + sum(out.aux_losses.values())
    loss.backward()
    assert "prune_budget" in out.aux_losses
    assert all(p.grad is not None for p in model.encoder.pruning.mask_parameters())
