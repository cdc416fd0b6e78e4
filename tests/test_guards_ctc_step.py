"""The CTC training step's branches a user meets beyond one plain profile (issue 30, item 2: the training steps).

- a stock NeMo encoder inside our model trains through NeMo's own step; InterCTC on our encoder is refused when the
  model is built (it would fail at the first batch: the encoder captures no layer outputs);
- a multi-profile (sandwich) step returns the mean of its paths' CTC losses plus the paths' mean auxiliary losses,
  and logs each path's CTC loss under its factor;
- a distillation teacher (pruning_distill / qat_distill) adds ``weight * KL(teacher || student)`` to the loss and
  logs it;
- ``stochastic_trainer`` is built once from ``cfg.stochastic`` (a DictConfig or a plain dict);
- fine-tuning options: the unused mask embedding is frozen (DDP needs every trainable parameter to get a gradient),
  ``freeze_frontend`` freezes the front end only; after a frozen-encoder step the encoder's gradients are dropped;
- ``forward_with_draws``: one preprocessor and front end for all draws, each path equal to its own forward, SpecAugment
  only in training, a missing input named.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from conftest import stock_ctc_config
from nemo_sew import SqueezeCTCModel
from nemo_sew.distill import attach_teacher, distillation_loss
from nemo_sew.encoder import Draw
from nemo_sew.profile import CompressionProfile
from nemo_sew.quant.model import build_tiny_ctc, tiny_ctc_config
from nemo_sew.stochastic import StochasticTrainer, run_seed


def _trained(model, every: int = 50):
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=every)  # fmt: skip
    model.set_trainer(trainer)
    model._optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: dict[str, Any] = {}
    model.log = lambda name, value, *args, **kwargs: logged.__setitem__(name, value)
    return model.train(), logged


def _batch():
    gen = torch.Generator().manual_seed(3)
    return (torch.randn(2, 16000, generator=gen) * 0.1, torch.tensor([16000, 11000]),
            torch.randint(0, 27, (2, 8), generator=gen), torch.tensor([8, 5]))  # fmt: skip


def _ctc(model, out, batch) -> torch.Tensor:
    log_probs, encoded_len = out[0], out[1]
    return model.loss(log_probs=log_probs, targets=batch[2], input_lengths=encoded_len, target_lengths=batch[3])


# ---------------------------------------------------------------------------------- stock encoders, InterCTC


def test_a_stock_encoder_trains_through_nemos_own_step():
    """NeMo's ``EncDecCTCModel.training_step`` for a NeMo encoder: its CTC loss on the batch, no profile logs."""
    torch.manual_seed(0)
    model, logged = _trained(SqueezeCTCModel(cfg=OmegaConf.create(stock_ctc_config())))
    batch = _batch()
    log_probs, encoded_len, _, out = model.forward_with_draw(batch[0], batch[1])
    assert out is None  # a stock encoder has no EncoderOutput
    expected = float(_ctc(model, (log_probs, encoded_len), batch).detach())
    result = model.training_step(batch, 0)
    assert float(result["loss"].detach()) == pytest.approx(expected, rel=1e-6)
    assert not any(k.startswith(("train_squeeze", "train_depth", "train_prune")) for k in logged)
    assert not hasattr(model, "last_step_stats")
    model.eval()
    model.preprocessor.featurizer.dither = 0.0
    features, feature_len = model.preprocessor(input_signal=batch[0], length=batch[1])
    with torch.no_grad():  # NeMo's forward on features: the same as on the waveform
        on_features = model.forward_with_draw(processed_signal=features, processed_signal_length=feature_len)
        on_waveform = model.forward_with_draw(batch[0], batch[1])
    torch.testing.assert_close(on_features[0], on_waveform[0])
    assert torch.equal(on_features[1], on_waveform[1]) and on_features[3] is None


def test_interctc_on_our_encoder_is_refused_when_the_model_is_built():
    cfg = tiny_ctc_config("tiny_mel", num_layers=2)
    cfg["decoder"]["feat_in"] = build_tiny_ctc("tiny_mel", num_layers=2).encoder.d_model
    cfg["interctc"] = {"loss_weights": [0.3], "apply_at_layers": [0]}
    with pytest.raises(ValueError) as err:
        SqueezeCTCModel(cfg=OmegaConf.create(cfg))
    assert str(err.value) == (
        "model.interctc: InterCTC needs an encoder that captures its intermediate layer outputs, and "
        "nemo_sew.SqueezeEncoder does not; remove model.interctc (or set its loss_weights to [])"
    )
    cfg["interctc"] = {"loss_weights": [], "apply_at_layers": []}  # switched off: builds
    SqueezeCTCModel(cfg=OmegaConf.create(cfg))


# ---------------------------------------------------------------------------------- several profiles per step


def _sandwich(gates: bool = False):
    torch.manual_seed(0)
    extra = {"gates": {"kind": "local", "target": 0.5}} if gates else {}
    model = build_tiny_ctc("tiny_mel", num_layers=2, expander="phase", squeeze_sampler={"values": [1, 2, 3]}, **extra)
    model.preprocessor.featurizer.dither = 0.0
    with open_dict(model.cfg):
        model.cfg.stochastic = {"method": "sandwich"}
    return _trained(model)


def test_a_sandwich_step_is_the_mean_of_its_paths_ctc_plus_their_mean_aux_losses():
    model, logged = _sandwich(gates=True)
    batch = _batch()
    torch.manual_seed(11)
    loss = model.training_step(batch, 0)["loss"]
    paths = model.stochastic_trainer().paths(model.encoder, 0, seed=run_seed(model))
    assert [p.draw.profile.squeeze for p in paths][:2] == [1.0, 3.0] and len(paths) == 3
    torch.manual_seed(11)
    outputs = model.forward_with_draws(batch[0], batch[1], draws=[p.draw for p in paths])
    ctcs = [_ctc(model, o, batch) for o in outputs]
    aux = sum(o[3].aux_losses["gate_budget"] for o in outputs) / len(outputs)
    expected = sum(ctcs) / len(ctcs) + aux
    assert float(aux.detach()) > 1e-3  # large enough to show if it were left out
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)
    for path, ctc in zip(paths, ctcs):  # each path's CTC loss, named by its factor
        assert float(logged[f"train_ctc_s{path.draw.profile.squeeze:g}"]) == pytest.approx(float(ctc.detach()), rel=1e-5)
    assert float(logged["gate_budget"]) == pytest.approx(float(aux.detach()), rel=1e-5)
    assert float(logged["train_squeeze"]) == float(outputs[-1][3].stats["squeeze"])  # the last path's factor
    assert model.last_step_stats["squeeze"] == outputs[-1][3].stats["squeeze"]


def test_the_stochastic_trainer_is_built_once_from_the_config():
    model, _ = _sandwich()
    trainer = model.stochastic_trainer()
    assert isinstance(trainer, StochasticTrainer) and trainer.method == "sandwich"
    assert model.stochastic_trainer() is trainer  # built on first use, then kept (the weighted method's averages)
    plain = build_tiny_ctc("tiny_mel", num_layers=2)
    with open_dict(plain.cfg):
        plain.cfg.stochastic = {"method": "inplace_distill", "distill_weight": 0.25}
    assert plain.stochastic_trainer().options.distill_weight == 0.25
    assert build_tiny_ctc("tiny_mel", num_layers=2).stochastic_trainer().method == "uniform"  # no cfg.stochastic


# ---------------------------------------------------------------------------------- teacher distillation


def test_a_teacher_adds_weight_times_its_kl_to_the_loss_and_logs_it():
    torch.manual_seed(0)
    model, logged = _trained(build_tiny_ctc("tiny_mel", num_layers=2))
    torch.manual_seed(1)
    teacher = build_tiny_ctc("tiny_mel", num_layers=2)
    batch = _batch()
    torch.manual_seed(11)
    plain = float(model.training_step(batch, 0)["loss"].detach())
    attach_teacher(model, teacher, weight=0.5, temperature=2.0)
    torch.manual_seed(11)
    loss = model.training_step(batch, 0)["loss"]
    torch.manual_seed(11)
    log_probs, encoded_len, _, _ = model.forward_with_draw(batch[0], batch[1], draw=model.encoder.draw(0, seed=run_seed(model)))
    with torch.no_grad():
        teacher_log_probs = teacher(input_signal=batch[0], input_signal_length=batch[1])[0]
    kd = 0.5 * distillation_loss(log_probs, teacher_log_probs, encoded_len, 2.0)
    assert float(kd.detach()) > 1e-4
    assert float(logged["distill_loss"]) == pytest.approx(float(kd.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(plain + float(kd.detach()), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # frozen teacher


# ---------------------------------------------------------------------------------- fine-tuning options


def test_the_mask_embedding_learns_only_with_time_masking_and_freeze_frontend_freezes_the_front_end_only():
    unused = build_tiny_ctc("tiny_wfe_c", num_layers=1, mask_emb=True)
    assert unused.encoder.mask_emb is not None and not unused.encoder.mask_emb.requires_grad
    no_time = build_tiny_ctc("tiny_wfe_c", num_layers=1, mask_emb=True, masking={"channel_prob": 0.1})
    assert not no_time.encoder.mask_emb.requires_grad
    used = build_tiny_ctc("tiny_wfe_c", num_layers=1, mask_emb=True, masking={"time_prob": 0.05})
    assert used.encoder.mask_emb.requires_grad
    assert all(p.requires_grad for p in used.encoder.frontend.parameters())

    cfg = tiny_ctc_config("tiny_wfe_c", num_layers=1)
    cfg["decoder"]["feat_in"] = used.encoder.d_model
    cfg["finetune"] = {"freeze_frontend": True}
    frozen = SqueezeCTCModel(cfg=OmegaConf.create(cfg))
    front = list(frozen.encoder.frontend.parameters())
    assert front and not any(p.requires_grad for p in front)
    rest = [p for n, p in frozen.encoder.named_parameters() if not n.startswith("frontend.")]
    assert rest and all(p.requires_grad for p in rest)


def test_after_a_frozen_encoder_step_the_encoder_has_no_gradients_and_the_head_keeps_its_own():
    model, _ = _trained(build_tiny_ctc("tiny_mel", num_layers=2))
    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 3}
    loss = model.training_step(_batch(), 0)["loss"]
    loss.backward()
    model.on_after_backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.decoder.parameters())
    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 0}
    model.zero_grad(set_to_none=True)
    model.training_step(_batch(), 0)["loss"].backward()
    model.on_after_backward()  # not frozen: the encoder keeps its gradients
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in model.encoder.parameters())


def test_the_encoder_is_frozen_only_while_training_and_before_the_step_limit():
    model, _ = _trained(build_tiny_ctc("tiny_mel", num_layers=1))
    assert not model.encoder_frozen()  # no cfg.finetune
    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 1}
    assert model.encoder_frozen()  # global step 0 < 1
    model.eval()
    assert not model.encoder_frozen()  # validation / inference: never
    model.train()
    model._trainer = None
    assert not model.encoder_frozen()  # no trainer: not in a training run


# ---------------------------------------------------------------------------------- forward_with_draws


def test_draws_share_one_front_end_and_each_equals_its_own_forward():
    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_mel", num_layers=2, expander="phase", squeeze_sampler={"values": [1, 2, 3]}).eval()
    model.preprocessor.featurizer.dither = 0.0
    signal, lengths = _batch()[:2]
    draws = [Draw(CompressionProfile(squeeze=s)) for s in (1.0, 2.0, 3.0)]
    calls = {"pre": 0, "front": 0}
    h1 = model.preprocessor.register_forward_hook(lambda *a: calls.__setitem__("pre", calls["pre"] + 1))
    h2 = model.encoder.frontend.register_forward_hook(lambda *a: calls.__setitem__("front", calls["front"] + 1))
    with torch.no_grad():
        together = model.forward_with_draws(signal, lengths, draws=draws)
    assert calls == {"pre": 1, "front": 1}
    h1.remove(), h2.remove()
    for draw, (log_probs, encoded_len, predictions, out) in zip(draws, together):
        with torch.no_grad():
            alone = model.forward_with_draw(signal, lengths, draw=draw)
        torch.testing.assert_close(log_probs, alone[0])
        assert torch.equal(encoded_len, alone[1]) and torch.equal(predictions, log_probs.argmax(-1))
        assert out.stats["squeeze"] == draw.profile.squeeze
    with torch.no_grad():  # forward() is forward_with_draw without a draw, less the EncoderOutput
        plain = model.forward(input_signal=signal, input_signal_length=lengths)
        default = model.forward_with_draw(signal, lengths)
    assert len(plain) == 3
    for a, b in zip(plain, default[:3]):
        assert torch.equal(a, b)
    features, feature_len = model.preprocessor(input_signal=signal, length=lengths)
    with torch.no_grad():
        processed = model.forward_with_draw(processed_signal=features, processed_signal_length=feature_len)
        plain_processed = model.forward(processed_signal=features, processed_signal_length=feature_len)
    torch.testing.assert_close(processed[0], default[0])
    for a, b in zip(plain_processed, processed[:3]):
        assert torch.equal(a, b)


def test_spec_augment_runs_in_training_only_and_a_missing_input_is_named():
    torch.manual_seed(0)
    cfg = tiny_ctc_config("tiny_mel", num_layers=1)
    cfg["decoder"]["feat_in"] = build_tiny_ctc("tiny_mel", num_layers=1).encoder.d_model
    cfg["spec_augment"] = {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2,
                           "time_masks": 2, "freq_width": 10, "time_width": 5}  # fmt: skip
    model = SqueezeCTCModel(cfg=OmegaConf.create(cfg))
    model.preprocessor.featurizer.dither = 0.0
    seen = []
    model.spec_augmentation.register_forward_hook(lambda *a: seen.append(1))
    signal, lengths = _batch()[:2]
    with torch.no_grad():
        model.eval().forward_with_draw(signal, lengths)
        assert seen == []
        model.train().forward_with_draw(signal, lengths)
        assert seen == [1]
    message = "expected input_signal and input_signal_length, or processed_signal and its lengths"
    for call in (lambda: model.forward_with_draw(signal), lambda: model.forward_with_draw(input_signal_length=lengths)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value) == message


# ---------------------------------------------------------------------------------- optimizer groups


def test_nemos_optimizer_gets_the_pruning_groups_and_a_plain_model_keeps_nemos():
    """``setup_optimization`` (NeMo's, from ``cfg.optim``) builds the optimizer from our param groups: with pruning
    masks, every weight once in NeMo's group, the mask logits at ``reg_lr`` without weight decay, the multipliers the
    same with ``maximize`` (gradient ascent on the Lagrangian); without masks, NeMo's one group of every parameter."""
    optim = {"name": "adamw", "lr": 1e-3, "weight_decay": 0.01, "sched": None}
    pruning = {"units": ["heads", "ffn"], "budget": "size", "target": 0.7, "reg_lr": 0.05}
    model = build_tiny_ctc("tiny_mel", num_layers=2, pruning=pruning)
    optimizer, _ = model.setup_optimization(optim_config=optim)
    groups = {g.get("name", "main"): g for g in optimizer.param_groups}
    assert set(groups) == {"main", "prune_masks", "prune_multipliers"}
    masks = model.encoder.pruning.mask_parameters()
    multipliers = model.encoder.pruning.multiplier_parameters()
    assert masks and multipliers
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(groups["prune_masks"]["params"]) == ids(masks)
    assert ids(groups["prune_multipliers"]["params"]) == ids(multipliers)
    assert ids(groups["main"]["params"]) == ids(model.parameters()) - ids(masks) - ids(multipliers)
    assert (groups["main"]["lr"], groups["main"]["weight_decay"], groups["main"]["maximize"]) == (1e-3, 0.01, False)
    assert (groups["prune_masks"]["lr"], groups["prune_masks"]["weight_decay"]) == (0.05, 0.0)
    assert not groups["prune_masks"]["maximize"]
    assert (groups["prune_multipliers"]["lr"], groups["prune_multipliers"]["weight_decay"]) == (0.05, 0.0)
    assert groups["prune_multipliers"]["maximize"]

    plain = build_tiny_ctc("tiny_mel", num_layers=2)
    optimizer, _ = plain.setup_optimization(optim_config=optim)
    assert len(optimizer.param_groups) == 1
    assert ids(optimizer.param_groups[0]["params"]) == ids(p for p in plain.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------- the step's draw and paths

NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0, "layerdrop": 0.0}
STEP, SEED = 1008, 7  # a step whose squeeze draw (3) differs from step 0's (2); a seed whose LayerDrop differs from 0's


def _at_step(model, step: int):
    """A real trainer whose global step is ``step`` (Lightning counts optimizer steps)."""
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model.set_trainer(trainer)
    trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed = step
    assert trainer.global_step == step
    model._optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    logged: dict[str, Any] = {}
    model.log = lambda name, value, *args, **kwargs: logged.__setitem__(name, value)
    return logged


def _sampled(seed: int = SEED, stochastic: dict | None = None, sampler: bool = True):
    from nemo_sew.encoder.core import layerdrop_decisions

    torch.manual_seed(0)
    extra = {"squeeze_sampler": {"values": [1, 2, 3]}} if sampler else {}
    model = build_tiny_ctc("tiny_mel", num_layers=2, expander="phase", dropout={**NO_DROPOUT, "layerdrop": 0.5}, **extra)
    model.preprocessor.featurizer.dither = 0.0
    with open_dict(model.cfg):
        model.cfg.seed = seed
        if stochastic is not None:
            model.cfg.stochastic = stochastic
    assert layerdrop_decisions(0.5, SEED, STEP, 2) != layerdrop_decisions(0.5, 0, STEP, 2)
    return model.train()


def test_a_uniform_sampled_step_runs_one_path_at_the_global_steps_draw_with_the_runs_seed():
    """The default method (uniform): one forward at ``encoder.draw(global_step, seed=run_seed)``, the same on every
    DDP rank; not the encoder's own counter (step 0), not seed 0's LayerDrop."""
    model = _sampled()
    logged = _at_step(model, STEP)
    batch = _batch()
    forwards = []
    model.encoder.frontend.register_forward_hook(lambda *a: forwards.append(1))
    torch.manual_seed(11)
    loss = model.training_step(batch, 0)["loss"]
    assert len(forwards) == 1  # one path
    draw = model.encoder.draw(STEP, seed=SEED)
    assert draw.profile.squeeze == 3.0 and model.encoder.draw(0, seed=SEED).profile.squeeze == 2.0
    torch.manual_seed(11)
    expected = _ctc(model, model.forward_with_draw(batch[0], batch[1], draw=draw), batch)
    assert float(loss.detach()) == float(expected.detach())
    assert float(logged["train_squeeze"]) == 3.0
    assert not any(name.startswith("train_ctc_s") for name in logged)  # no per-path logs
    torch.manual_seed(11)
    other_seed = _ctc(model, model.forward_with_draw(batch[0], batch[1], draw=model.encoder.draw(STEP, seed=0)), batch)
    assert float(other_seed.detach()) != float(expected.detach())  # the seed matters (LayerDrop)


def test_a_multi_path_method_without_a_sampler_trains_the_one_profile():
    """``stochastic.method: sandwich`` on a model without a squeeze sampler: nothing to sandwich, the plain step."""
    model = _sampled(stochastic={"method": "sandwich"}, sampler=False)
    logged = _at_step(model, STEP)
    batch = _batch()
    torch.manual_seed(11)
    loss = model.training_step(batch, 0)["loss"]
    torch.manual_seed(11)
    expected = _ctc(model, model.forward_with_draw(batch[0], batch[1], draw=model.encoder.draw(STEP, seed=SEED)), batch)
    assert float(loss.detach()) == float(expected.detach())
    assert not any(name.startswith("train_ctc_s") for name in logged) and "train_squeeze" not in logged


def test_the_stochastic_options_resolve_interpolations():
    model = build_tiny_ctc("tiny_mel", num_layers=1)
    with open_dict(model.cfg):
        model.cfg.kd_weight = 0.25
        model.cfg.stochastic = {"method": "inplace_distill", "distill_weight": "${kd_weight}"}
    options = model.stochastic_trainer().options
    assert options.method == "inplace_distill" and options.distill_weight == 0.25


def test_the_encoder_is_frozen_for_exactly_freeze_encoder_steps():
    model = build_tiny_ctc("tiny_mel", num_layers=1).train()
    with open_dict(model.cfg):
        model.cfg.finetune = {"freeze_encoder_steps": 3}
    frozen = []
    for step in range(5):
        _at_step(model, step)
        frozen.append(model.encoder_frozen())
    assert frozen == [True, True, True, False, False]


def test_the_shared_front_end_runs_at_the_first_draws_weight_bits():
    """The front end runs once for all draws, at the first draw's weight bits (not the active profile's)."""
    from nemo_sew.quant.weights import quantize_encoder

    torch.manual_seed(0)
    model = build_tiny_ctc("tiny_wfe_c", num_layers=1).eval()
    quantize_encoder(model.encoder, (8, 4))
    signal, lengths = _batch()[:2]
    model.encoder.set_profile(CompressionProfile(weight_bits=4))
    with torch.no_grad():
        at_four = model.forward_with_draw(signal, lengths)  # the reference: every part at 4 bits, the active width
    model.encoder.set_profile(CompressionProfile(weight_bits=8))
    with torch.no_grad():
        together = model.forward_with_draws(signal, lengths, draws=[Draw(CompressionProfile(weight_bits=4))])[0]
        at_eight = model.forward_with_draw(signal, lengths)
    torch.testing.assert_close(together[0], at_four[0], rtol=0, atol=0)
    assert not torch.allclose(together[0], at_eight[0])  # the bits matter
    front = {bits: model.encoder.front(*model.preprocessor(input_signal=signal, length=lengths),
                                       draw=Draw(CompressionProfile(weight_bits=bits))).hidden for bits in (4, 8)}
    assert not torch.allclose(front[4], front[8])  # ... in the front end too (its conv weights are quantized)
    with torch.no_grad():
        assert model.forward_with_draws(signal, lengths) == []  # no draws: no paths (the default)
