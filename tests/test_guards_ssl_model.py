"""The SSL pre-training model's step: what ``SqueezeSSLModel.forward`` returns, how it masks and pools, and what its
training and validation steps log (issue 30).

What is guarded, each against an independent reading of the documented behaviour:

* ``forward`` returns the objective's parts plus ``loss`` (the objective's loss + ``feature_penalty_weight`` times the
  feature penalty + every auxiliary loss of the encoder: a learned rate's ``rate_penalty``, the gates' ``gate_budget``),
  ``accuracy``, ``feature_penalty`` (the mean square of the front end's features over the valid frames only),
  ``masked_fraction`` (masked / valid frames at the rate the objective scores) and ``squeeze`` (the factor the draw
  ran at), each aux loss under its own name;
* masking follows ``cfg.masking`` (``prob``, ``length``, ``min_masks``, 2 when left out), never touches padding, puts
  the learned mask embedding (in the activations' dtype) in the masked frames, and is the only masking: an encoder
  carrying fine-tuning masking does not mask again;
* a batch without a masked frame (``min_masks: 0``) warns and scores the first frame of each utterance that has one;
* ``draw``: the profile the whole forward runs at (front end included: its weight bits); None = ``encoder.draw()``;
* ``feature_grad_mult`` scales the gradient reaching the front end (0.1 by default);
* ``compressed_targets``: masking and scoring at the squeezed rate, the targets pooled with the compressor's own
  weights at the draw's factor and CIF lambda (the tail frame kept at inference, as the compressor does), one pruning
  mask sample per forward, the gates' MAC budget counted, and a profile with ``q_pool`` refused with its reason;
* ``training_step``: the draw of the trainer's global step with the run's seed (the same on every rank), the
  objective's schedule at that step, ``train_<name>`` of every output but ``loss`` (logged per step), ``train_loss``
  (in the progress bar), ``learning_rate`` when there is an optimizer, the objective's ``train_logs``,
  ``learned_frame_period_ms`` for a learned rate; a non-finite loss skips the batch with a warning and a zero loss
  that still touches every trainable parameter;
* ``validation_step`` (no gradient; tuple, list and ``.audio`` / ``.audio_lens`` batches) and
  ``on_validation_epoch_end`` (``val_<name>`` means, synchronised, then cleared);
* a HuBERT teacher (``TeacherFeatures``) of any nemo_sew model kind stays frozen and in eval mode;
* an unknown objective names the known ones.
"""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import nemo_sew  # noqa: F401  (registers the _target_ prefix)
from nemo_sew import encoder_config
from nemo_sew.encoder.records import Draw
from nemo_sew.nn.frontend import time_mask
from nemo_sew.profile import CompressionProfile

NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0, "layerdrop": 0.0}
LEARNED_RATE = {
    "learned_rate": {"init": 1.5, "target": 3.0, "min": 1.0, "max": 4.0, "penalty": 2.0},
    "expander": "phase",
}


@pytest.fixture(scope="module")
def centroids(tmp_path_factory):
    path = tmp_path_factory.mktemp("ssl_model") / "km.npy"
    np.save(path, np.random.default_rng(0).normal(size=(12, 78)).astype(np.float32))
    return path


def _model(objective: str = "wav2vec2", encoder: dict | None = None, centroids=None, init_seed: int = 0, **cfg: Any):
    """A tiny waveform SSL model (``tiny_wfe_c``) with ``encoder`` options and top-level ``cfg`` entries."""
    from nemo_sew.models.ssl import SqueezeSSLModel

    enc = {"_target_": "nemo_sew.SqueezeEncoder", **encoder_config("tiny_wfe_c", **(encoder or {}))}
    config: dict[str, Any] = {"sample_rate": 16000, "preprocessor": {"_target_": "nemo_sew.WaveformPreprocessor"},
                              "encoder": enc, "objective": objective}  # fmt: skip
    if objective == "wav2vec2":
        config["wav2vec2"] = {"head_hidden": 64, "num_negatives": 10}
    else:
        config["hubert"] = {"num_clusters": 12, "final_dim": 16, "centroids": str(centroids)}
    for key, value in cfg.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    torch.manual_seed(init_seed)
    return SqueezeSSLModel(OmegaConf.create(config))


def _batch(lengths=(16000, 11000), seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    wav = torch.randn(len(lengths), max(lengths), generator=gen) * 0.1
    lens = torch.tensor(lengths)
    wav = wav.masked_fill(~time_mask(lens, wav.shape[1]), 0.0)
    return wav, lens


def _record(model, monkeypatch) -> dict[str, list]:
    """Record what the forward hands the objective's loss (and what it returns) and the encoder's front end output."""
    seen: dict[str, list] = {"loss": [], "front": []}
    real_loss, real_front = model.objective.loss, model.encoder.front

    def loss(y, mask, target_src, out_len):
        result = real_loss(y, mask, target_src, out_len)
        seen["loss"].append(SimpleNamespace(y=y, mask=mask.clone(), target_src=target_src, out_len=out_len.clone(),
                                            total=result[0], accuracy=result[1]))  # fmt: skip
        return result

    def front(*args, **kwargs):
        out = real_front(*args, **kwargs)
        seen["front"].append(out)
        return out

    monkeypatch.setattr(model.objective, "loss", loss)
    monkeypatch.setattr(model.encoder, "front", front)
    return seen


def _runs(mask_row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    edges = torch.diff(torch.cat([torch.zeros(1), mask_row.float(), torch.zeros(1)]))
    return ((edges == -1).nonzero().flatten() - (edges == 1).nonzero().flatten()).tolist()


# ------------------------------------------------------------------------------------------------ forward's outputs


def test_the_loss_is_the_objective_plus_the_weighted_feature_penalty_plus_the_learned_rates_penalty(monkeypatch):
    """A learned rate in training: ``loss = objective + w * mean(features^2 over valid frames) + rate_penalty``, with
    ``rate_penalty = penalty * relu(target / s - 1)^2`` logged under its name and ``squeeze`` the learned factor; the
    objective scores 20 ms frames (not the squeezed ones) and ``masked_fraction`` is masked / valid frames there."""
    model = _model(encoder=LEARNED_RATE, wav2vec2={"feature_penalty_weight": 3.0}).train()
    seen = _record(model, monkeypatch)
    wav, lens = _batch()
    out = model(wav, lens)
    assert set(out) == {"contrastive_loss", "diversity_loss", "rate_penalty", "squeeze", "loss", "accuracy",
                        "feature_penalty", "masked_fraction"}  # fmt: skip
    (call,) = seen["loss"]
    (front,) = seen["front"]
    feats, frames = front.features.detach().double(), front.lengths
    valid = time_mask(frames, feats.shape[1])
    assert not bool(valid.all()), "the batch needs padding frames"
    assert float(out["feature_penalty"]) == pytest.approx(float(feats.pow(2)[valid].mean()), rel=1e-5)
    s = float(model.encoder.learned_squeeze.detach())
    assert s == pytest.approx(1.5, rel=1e-4) and float(out["squeeze"]) == pytest.approx(s, rel=1e-6)
    assert float(out["rate_penalty"]) == pytest.approx(2.0 * max(3.0 / s - 1.0, 0.0) ** 2, rel=1e-5)
    expected = float(call.total) + 3.0 * float(out["feature_penalty"]) + float(out["rate_penalty"])
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(out["accuracy"]) == float(call.accuracy)
    # scored at 20 ms: the objective sees every front-end frame, and the mask stays inside the valid ones
    assert call.mask.shape == valid.shape and torch.equal(call.out_len, frames) and call.y.shape[1] == feats.shape[1]
    assert not bool((call.mask & ~valid).any()) and bool(call.mask.any(1).all())
    assert float(out["masked_fraction"]) == pytest.approx(float(call.mask.sum()) / float(valid.sum()), rel=1e-6)
    # the loss carries the gradient (the learned rate's too); the logged parts are detached values
    assert out["loss"].requires_grad and not any(v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    assert model.encoder.rate_logit.grad is not None and float(model.encoder.rate_logit.grad) != 0.0


def test_without_a_learned_rate_the_outputs_are_the_objectives_parts_and_the_four_model_values(monkeypatch):
    """A fixed-rate encoder: no auxiliary loss, ``squeeze`` the trained factor (2), and the feature penalty at the
    objective's default weight (10)."""
    model = _model().train()
    seen = _record(model, monkeypatch)
    out = model(*_batch())
    assert set(out) == {"contrastive_loss", "diversity_loss", "squeeze", "loss", "accuracy", "feature_penalty",
                        "masked_fraction"}  # fmt: skip
    (call,) = seen["loss"]
    assert float(out["squeeze"]) == 2.0 and isinstance(out["squeeze"], torch.Tensor)
    assert float(out["loss"]) == pytest.approx(float(call.total) + 10.0 * float(out["feature_penalty"]), rel=1e-6)
    assert float(out["feature_penalty"]) > 0 and isinstance(out["accuracy"], torch.Tensor)


def test_an_explicit_draw_runs_the_whole_forward_at_its_profile_front_end_bits_included():
    """``forward(..., draw=d)`` gives what making ``d``'s profile the active one and passing no draw gives: the squeeze
    and the weight bits of the front end and of the blocks (an encoder holding 8- and 4-bit weights, active at 4)."""
    from nemo_sew.quant.weights import quantize_encoder

    model = _model(encoder={"expander": "phase"}).eval()
    quantize_encoder(model.encoder, (8, 4))
    wav, lens = _batch()
    torch.manual_seed(5)  # the distractors
    at_active = model(wav, lens)
    profile = CompressionProfile(squeeze=3, weight_bits=8)
    torch.manual_seed(5)
    drawn = model(wav, lens, draw=Draw(profile))
    model.encoder.set_profile(profile)
    torch.manual_seed(5)
    active = model(wav, lens)
    torch.manual_seed(5)
    default = model(wav, lens, draw=model.encoder.draw())  # None = encoder.draw(): the active profile at inference
    assert float(drawn["squeeze"]) == 3.0 and float(at_active["squeeze"]) == 2.0
    assert float(drawn["feature_penalty"]) != float(at_active["feature_penalty"])  # the front end reads its bits
    for key, value in active.items():
        torch.testing.assert_close(drawn[key], value, rtol=0, atol=0, msg=key)
        torch.testing.assert_close(default[key], value, rtol=0, atol=0, msg=key)


def test_a_training_forward_without_a_draw_takes_the_encoders_own_step_and_an_explicit_draw_does_not():
    """None = ``encoder.draw()``: in training that counts the encoder's own step (stock NeMo callers); a step's draw
    leaves the counter alone."""
    model = _model(encoder={"squeeze_sampler": {"values": [1, 2, 3]}}).train()
    wav, lens = _batch()
    model(wav, lens, draw=model.encoder.draw(7))
    assert int(model.encoder.train_step) == 0
    model(wav, lens)
    assert int(model.encoder.train_step) == 1


def test_feature_grad_mult_scales_the_gradient_reaching_the_front_end_only():
    """The default 0.1 (wav2vec 2.0 / SEW): the front end's gradient is 0.1 times what ``feature_grad_mult: 1`` gives,
    from the same weights and noise; the rest of the model gets the same gradient."""
    grads = {}
    for mult in (None, 1.0):
        model = _model(**({} if mult is None else {"feature_grad_mult": mult})).train()
        torch.manual_seed(1)
        model(*_batch())["loss"].backward()
        grads[mult] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    front = [n for n in grads[1.0] if n.startswith("encoder.frontend.")]
    assert front and any(grads[1.0][n].abs().sum() > 0 for n in front)
    for name, g in grads[1.0].items():
        expected = 0.1 * g if name in front else g
        scale = float(expected.abs().max())  # fp32 rounding of the scaled backward: relative to the largest entry
        torch.testing.assert_close(grads[None][name], expected, rtol=1e-4, atol=1e-5 * scale, msg=name)


# ------------------------------------------------------------------------------------------------ masking


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize(
    ("masking", "runs"),
    [
        ({"prob": 0.0, "length": 1, "min_masks": 3}, [1, 1, 1]),  # exactly min_masks one-frame spans
        ({"prob": 0.0, "length": 1}, [1, 1]),  # min_masks left out: 2
        ({"prob": 0.0, "length": 4, "min_masks": 1}, [4]),  # one span of the configured length
    ],
)
def test_masking_follows_cfg_masking(masking, runs, compressed, monkeypatch):
    """``prob``, ``length`` and ``min_masks`` (2 when left out) of ``cfg.masking``, at 20 ms or, with
    ``compressed_targets``, on the squeezed sequence (spans that touch merge: compared as masked-frame counts)."""
    model = _model(masking=masking, compressed_targets=compressed).train()
    seen = _record(model, monkeypatch)
    model(*_batch())
    (call,) = seen["loss"]
    frames = seen["front"][0].lengths
    assert torch.equal(call.out_len, frames // 2 if compressed else frames)
    for row in call.mask:
        got = _runs(row)
        assert sum(got) == sum(runs) and all(r % min(runs) == 0 for r in got), (got, runs)


@pytest.mark.parametrize("compressed", [False, True])
def test_masking_everything_masks_every_valid_frame_and_no_padding(compressed, monkeypatch):
    model = _model(masking={"prob": 1.0, "length": 1, "min_masks": 0}, compressed_targets=compressed).train()
    seen = _record(model, monkeypatch)
    out = model(*_batch())
    (call,) = seen["loss"]
    assert torch.equal(call.mask, time_mask(call.out_len, call.mask.shape[1])) and float(out["masked_fraction"]) == 1.0


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_masked_frames_hold_the_mask_embedding_in_the_activations_dtype(compressed, autocast, monkeypatch):
    """The encoder's blocks see the mask embedding at the masked frames and the features elsewhere; under bf16
    autocast the sequence stays bf16 (the embedding rounded to it), not promoted to fp32."""
    model = _model(masking={"prob": 0.5, "length": 3, "min_masks": 1}, compressed_targets=compressed).train()
    enc = model.encoder
    seen = _record(model, monkeypatch)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    if compressed:
        real_squeeze, real_context = enc.squeeze_features, enc.context
        monkeypatch.setattr(enc, "squeeze_features", lambda *a, **k: before.append(real_squeeze(*a, **k)) or before[-1])
        monkeypatch.setattr(enc, "context", lambda sq, *a, **k: after.append(sq.hidden) or real_context(sq, *a, **k))
    else:
        real_from_front = enc.from_front
        monkeypatch.setattr(
            enc, "from_front", lambda fr, *a, **k: after.append(fr.hidden) or real_from_front(fr, *a, **k)
        )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(*_batch())
    (call,) = seen["loss"]
    unmasked = (before[0].hidden if compressed else seen["front"][0].hidden).detach()
    hidden = after[0].detach()
    assert hidden.dtype == unmasked.dtype == (torch.bfloat16 if autocast else torch.float32)
    mask = call.mask
    assert bool(mask.any()) and bool((~mask).any())
    emb = enc.mask_emb.detach().to(hidden.dtype)
    assert torch.equal(hidden[mask], emb.expand(int(mask.sum()), -1))
    assert torch.equal(hidden[~mask], unmasked[~mask])


def test_an_encoder_carrying_fine_tuning_masking_is_not_masked_again():
    """Pre-training masks with ``cfg.masking`` only: an encoder with fine-tuning masking of its own (one taken from a
    fine-tuned model) gives the same step as without it."""
    from nemo_sew.options import Masking

    model = _model().train()
    wav, lens = _batch()
    torch.manual_seed(4)
    plain = model(wav, lens, draw=model.encoder.draw(0))
    model.encoder.masking = Masking(time_prob=0.9, time_length=2, channel_prob=0.5, channel_length=8, min_masks=1)
    torch.manual_seed(4)
    again = model(wav, lens, draw=model.encoder.draw(0))
    for key, value in plain.items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("compressed", [False, True])
def test_a_batch_without_masked_frames_scores_the_first_frame_of_each_utterance(compressed, monkeypatch, caplog):
    """``prob: 0, min_masks: 0`` masks nothing: the forward warns and scores frame 0 of every item that has a frame
    (an item one output frame long included)."""
    model = _model(masking={"prob": 0.0, "length": 10, "min_masks": 0}, compressed_targets=compressed).eval()
    seen = _record(model, monkeypatch)
    short = 720 if compressed else 16000  # 2 frames at 20 ms: one frame once squeezed by 2
    with caplog.at_level("WARNING", logger="nemo_sew.models"):
        out = model(*_batch((16000, short)))
    assert "no frame was masked in this batch; scoring the first frame of each utterance" in caplog.messages
    (call,) = seen["loss"]
    if compressed:
        assert call.out_len.tolist()[1] == 1
    expected = torch.zeros_like(call.mask)
    expected[:, 0] = True
    assert torch.equal(call.mask, expected)
    assert float(out["masked_fraction"]) == pytest.approx(2 / float(call.out_len.sum()), rel=1e-6)
    assert torch.isfinite(out["loss"])


# ------------------------------------------------------------------------------------------------ compressed targets


@pytest.mark.parametrize("training", [False, True])
def test_compressed_targets_are_pooled_with_the_compressors_weights_at_the_draws_factor_and_lambda(
    training, centroids, monkeypatch
):
    """Once-for-all: HuBERT's MFCC targets pooled to the squeezed rate by ``compressor.integrate`` with the front end's
    projected features, the draw's factor (1.5: CIF) and CIF lambda (0.3, learned CIF weights), keeping the tail frame
    at inference only, as the compressor does."""
    model = _model("hubert", {"compressor": {"cif_alpha": True}, "dropout": NO_DROPOUT}, centroids,
                   compressed_targets=True).train(training)  # fmt: skip
    seen = _record(model, monkeypatch)
    wav, lens = _batch()
    draw = Draw(CompressionProfile(squeeze=1.5), cif_lambda=0.3, step=0)
    out = model(wav, lens, draw=draw)
    (call,) = seen["loss"]
    (front,) = seen["front"]
    enc = model.encoder
    with torch.no_grad():
        source = model.objective.target_source(None, wav, lens, front.hidden.shape[1])
        keep_tail = not training
        expected, expected_len = enc.compressor.integrate(source, front.hidden, front.lengths, 1.5, 0.3, keep_tail)
        other_lambda, _ = enc.compressor.integrate(source, front.hidden, front.lengths, 1.5, 1.0, keep_tail)
    assert not torch.allclose(expected, other_lambda)
    assert torch.equal(call.out_len, expected_len) and call.mask.shape[1] == expected.shape[1]
    torch.testing.assert_close(call.target_src.detach(), expected, rtol=1e-5, atol=1e-6)
    assert float(out["squeeze"]) == 1.5
    assert float(out["masked_fraction"]) == pytest.approx(
        float(call.mask.sum()) / float(expected_len.sum()), rel=1e-6
    )


def test_compressed_targets_refuse_a_profile_with_query_pooling():
    model = _model(compressed_targets=True).eval()
    with pytest.raises(ValueError) as info:
        model(*_batch(), draw=Draw(CompressionProfile(q_pool=(1, 2))))
    assert str(info.value) == "compressed_targets needs an output at the squeezed rate: no q_pool in its profiles"


def test_compressed_targets_count_the_gates_mac_budget_and_add_it_to_the_loss(monkeypatch):
    model = _model(encoder={"gates": {"kind": "local", "target": 0.5, "budget": "macs"}}, compressed_targets=True)
    model.train()
    seen = _record(model, monkeypatch)
    out = model(*_batch())
    (call,) = seen["loss"]
    assert "gate_budget" in out and float(out["gate_budget"]) > 0
    expected = float(call.total) + 10.0 * float(out["feature_penalty"]) + float(out["gate_budget"])
    assert float(out["loss"]) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("compressed", [False, True])
def test_one_pruning_mask_sample_per_forward(compressed, monkeypatch):
    """The front end and the blocks share one sample of the pruning masks (the docs' one sample per forward)."""
    pruning = {"units": ["heads", "ffn"], "budget": "size", "target": 0.7, "warmup_steps": 0}
    model = _model(encoder={"pruning": pruning}, compressed_targets=compressed).train()
    samples = []
    real = model.encoder.pruning.sample
    monkeypatch.setattr(model.encoder.pruning, "sample", lambda *a, **k: samples.append(1) or real(*a, **k))
    out = model(*_batch())
    assert len(samples) == 1 and "prune_budget" in out


# ------------------------------------------------------------------------------------------------ training step

STEP, SEED = 1001, 7  # a step whose draw differs from step 0's, a seed whose LayerDrop differs from seed 0's there


def _trainer(model, step: int, optimizer: bool):
    import lightning.pytorch as pl

    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1,
                         enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    model.set_trainer(trainer)
    trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.total.completed = step
    assert trainer.global_step == step
    if optimizer:
        trainer.optimizers = [torch.optim.SGD(model.parameters(), lr=0.1)]
    return trainer


def _log_recorder(model) -> list[tuple[str, Any, dict]]:
    calls: list[tuple[str, Any, dict]] = []

    def log(name, value, *args, **kwargs):
        calls.append((name, value, kwargs))

    model.log = log  # the instance's only (log_dict calls it per value)
    return calls


def _step(model, batch, step: int = STEP, optimizer: bool = True):
    _trainer(model, step, optimizer)
    calls = _log_recorder(model)
    torch.manual_seed(11)
    result = model.training_step(batch, 0)
    return calls, result


def _effective_on_step(kwargs: dict) -> bool:
    """Whether Lightning logs the value per step from ``training_step`` (its defaults for what is left out)."""
    from lightning.pytorch.trainer.connectors.logger_connector.fx_validator import _FxValidator

    on_step, _ = _FxValidator.check_logging_and_get_default_levels(
        "training_step", on_step=kwargs.get("on_step"), on_epoch=kwargs.get("on_epoch")
    )
    return bool(on_step)


def test_the_training_step_runs_the_global_steps_draw_with_the_runs_seed_and_logs_every_output():
    from nemo_sew.encoder.core import layerdrop_decisions
    from nemo_sew.stochastic import run_seed

    encoder = {"squeeze_sampler": {"values": [1, 2, 3]}, "dropout": {**NO_DROPOUT, "layerdrop": 0.5}}
    model = _model(encoder=encoder, seed=SEED).train()
    enc = model.encoder
    assert run_seed(model) == SEED
    # the step's draw differs from the encoder's own counter's (0) and LayerDrop from seed 0's
    assert enc.draw(STEP).profile.squeeze != enc.draw(0).profile.squeeze
    assert layerdrop_decisions(0.5, SEED, STEP, 2) != layerdrop_decisions(0.5, 0, STEP, 2)
    wav, lens = _batch()
    batch = (wav, lens, torch.randint(0, 28, (2, 8)), torch.tensor([8, 5]))
    calls, result = _step(model, batch)
    assert set(result) == {"loss"} and result["loss"].requires_grad
    names = [name for name, _, _ in calls]
    assert len(names) == len(set(names)), names  # each value logged once
    logged = {name: (value, kwargs) for name, value, kwargs in calls}
    # the reference: the forward at the global step's draw, with the same noise
    torch.manual_seed(11)
    expected = model(wav, lens, draw=enc.draw(STEP, seed=SEED))
    assert set(logged) == {f"train_{k}" for k in expected if k != "loss"} | {"train_loss", "learning_rate",
                                                                               "codebook_temp"}  # fmt: skip
    for key, value in expected.items():
        name = "train_loss" if key == "loss" else f"train_{key}"
        torch.testing.assert_close(logged[name][0], value.detach(), rtol=0, atol=0, msg=name)
        if key != "loss":
            assert _effective_on_step(logged[name][1]), name
    assert float(logged["train_squeeze"][0]) == enc.draw(STEP).profile.squeeze
    torch.testing.assert_close(result["loss"].detach(), expected["loss"].detach(), rtol=0, atol=0)
    assert not logged["train_loss"][0].requires_grad and logged["train_loss"][1].get("prog_bar") is True
    assert logged["learning_rate"][0] == 0.1
    assert logged["codebook_temp"][0] == pytest.approx(max(2.0 * 0.999995**STEP, 0.5), rel=1e-12)
    assert int(enc.train_step) == 0  # the step's draw, not the encoder's own counter


def test_a_learned_rate_step_logs_its_frame_period_and_penalty_and_no_learning_rate_without_an_optimizer():
    model = _model(encoder=LEARNED_RATE).train()
    calls, result = _step(model, list(_batch()), optimizer=False)
    logged = {name: value for name, value, _ in calls}
    s = float(model.encoder.learned_squeeze.detach())
    assert logged["learned_frame_period_ms"] == pytest.approx(20.0 * s) and 20.0 * s == pytest.approx(30.0, rel=1e-3)
    assert "train_rate_penalty" in logged and "learning_rate" not in logged
    assert float(result["loss"]) == float(logged["train_loss"])


def test_a_fixed_rate_step_logs_no_frame_period():
    model = _model().train()
    calls, _ = _step(model, _batch())
    assert "learned_frame_period_ms" not in {name for name, _, _ in calls}


def test_a_non_finite_loss_skips_the_batch_with_a_zero_loss_touching_every_trainable_parameter(caplog):
    model = _model().train()
    wav, lens = _batch()
    wav[0, 5000] = float("inf")
    with caplog.at_level("WARNING", logger="nemo_sew.models"):
        calls, result = _step(model, (wav, lens))
    assert f"non-finite training loss at step {STEP}; this batch is skipped" in caplog.messages
    loss = result["loss"]
    assert float(loss.detach()) == 0.0
    logged = {name: value for name, value, _ in calls}
    assert float(logged["train_loss"]) == 0.0 and not math.isfinite(float(logged["train_feature_penalty"]))
    model.zero_grad(set_to_none=True)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params and all(p.grad is not None and torch.count_nonzero(p.grad) == 0 for _, p in params)


# ------------------------------------------------------------------------------------------------ validation


def test_validation_steps_record_detached_outputs_and_the_epoch_end_logs_their_means():
    """Tuple, list and ``.audio`` / ``.audio_lens`` batches give the forward's outputs without a gradient; the epoch's
    end logs ``val_<name>`` as the mean over the steps (synchronised across ranks) and forgets them."""
    model = _model().eval()
    first, second = _batch(), _batch((12000, 9000), seed=4)
    torch.manual_seed(2)
    reference = [model(*first), model(*second)]
    torch.manual_seed(2)
    batches = [(*first, torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 2])),
               SimpleNamespace(audio=second[0], audio_lens=second[1])]  # fmt: skip
    outputs = [model.validation_step(batch, i) for i, batch in enumerate(batches)]
    assert len(model.validation_step_outputs) == 2
    for out, stored, ref in zip(outputs, model.validation_step_outputs, reference):
        assert set(out) == set(stored) == set(ref)
        assert not out["loss"].requires_grad and not any(v.requires_grad for v in stored.values())
        for key, value in ref.items():
            torch.testing.assert_close(stored[key], value.detach(), rtol=0, atol=0, msg=key)
    torch.manual_seed(2)
    listed = model.validation_step(list(first), 0)
    torch.testing.assert_close(listed["loss"], reference[0]["loss"].detach(), rtol=0, atol=0)
    model.validation_step_outputs.pop()
    calls = _log_recorder(model)
    model.on_validation_epoch_end()
    logged = {name: (value, kwargs) for name, value, kwargs in calls}
    assert set(logged) == {f"val_{k}" for k in reference[0]}
    for key in reference[0]:
        mean = (reference[0][key].detach() + reference[1][key].detach()) / 2
        torch.testing.assert_close(logged[f"val_{key}"][0], mean, rtol=1e-6, atol=0, msg=key)
        assert logged[f"val_{key}"][1].get("sync_dist") is True
    assert model.validation_step_outputs == []


# ------------------------------------------------------------------------------------------------ teacher, objectives


def test_a_teacher_of_any_model_kind_stays_frozen_and_in_eval_mode(tmp_path):
    """HuBERT iteration 2's teacher is the iteration-1 SSL model (not an ASR model): it loads, no parameter of it
    trains, and ``train()`` (the student's ``model.train()``) leaves it in eval mode."""
    from nemo_sew.ssl.targets import TeacherFeatures

    path = tmp_path / "teacher.nemo"
    _model().save_to(str(path))
    teacher = TeacherFeatures(path, layer=1)
    assert type(teacher.encoder).__name__ == "SqueezeEncoder" and teacher.out_dim == 128
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher and teacher.train(True) is teacher
    assert not any(m.training for m in teacher.modules())
    wav, lens = _batch()
    feats, frames = teacher(wav, lens)
    assert feats.shape[-1] == 128 and not feats.requires_grad and torch.isfinite(feats).all()


def test_an_unknown_objective_names_the_known_ones():
    from nemo_sew.ssl.objectives import objective_class

    with pytest.raises(ValueError) as info:
        objective_class("bert")
    assert str(info.value) == "unknown SSL objective 'bert': expected one of 'wav2vec2', 'hubert'"
