"""Self-supervised objectives score the MASKED frames only (issue 30, item 3).

wav2vec 2.0 (and HuBERT with its default ``unmasked_weight: 0``) learn to predict what was hidden: an objective that
also scored unmasked frames would teach the encoder to copy its input and still report a falling loss. So the loss
and its gradient must not depend on the encoder's outputs at unmasked positions (valid or padding), and must depend
on every masked one. The objectives draw random numbers (Gumbel noise, target dropout, distractors): every pair of
calls compared here starts from the same global seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemo_sew.nn.frontend import time_mask
from nemo_sew.ssl.masking import span_mask
from nemo_sew.ssl.objectives import HuBERTObjective, SSLObjective, Wav2Vec2Objective

D_MODEL, FRONT = 32, 24
LENGTHS = torch.tensor([40, 31, 17])


def _wav2vec2() -> Wav2Vec2Objective:
    cfg = Wav2Vec2Objective.with_defaults({"head_hidden": 64, "num_negatives": 10, "final_dim": 16,
                                           "codebook": {"groups": 2, "num_vars": 16, "dim": 16}})  # fmt: skip
    return Wav2Vec2Objective(cfg, frontend_dim=FRONT, d_model=D_MODEL).train()


def _hubert(unmasked_weight: float = 0.0) -> HuBERTObjective:
    section = {"num_clusters": 12, "final_dim": 16} | ({"unmasked_weight": unmasked_weight} if unmasked_weight else {})
    cfg = HuBERTObjective.with_defaults(section)  # unmasked_weight left at its default (0) unless given
    objective = HuBERTObjective(cfg, frontend_dim=FRONT, d_model=D_MODEL, restoring=True)
    feature_dim = int(cfg.feature_dim)
    centroids = torch.from_numpy(np.random.default_rng(0).normal(size=(12, feature_dim)).astype(np.float32))
    objective.labeler.centroids.copy_(centroids)
    return objective.train()


def _batch(objective: SSLObjective) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``y (B, T, D)``, a span mask inside the valid frames, the target source and the valid lengths."""
    gen = torch.Generator().manual_seed(1)
    t = int(LENGTHS.max())
    y = torch.randn(len(LENGTHS), t, D_MODEL, generator=gen)
    mask = span_mask(LENGTHS, t, prob=0.4, span=4, min_masks=2, generator=gen)
    valid = time_mask(LENGTHS, t)
    assert mask.any() and (mask & ~valid).sum() == 0 and (valid & ~mask).any(), "need masked and unmasked frames"
    feature_dim = FRONT if isinstance(objective, Wav2Vec2Objective) else int(objective.labeler.centroids.shape[1])
    target_src = torch.randn(len(LENGTHS), t, feature_dim, generator=gen)
    return y, mask, target_src, LENGTHS.clone()


def _loss_and_grad(objective: SSLObjective, y, mask, target_src, out_len) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1234)  # the same noise, target dropout and distractors in every call
    y = y.clone().requires_grad_(True)
    loss, _, _ = objective.loss(y, mask, target_src, out_len)
    (grad,) = torch.autograd.grad(loss, y)
    return loss.detach(), grad


BUILD = {"wav2vec2": _wav2vec2, "hubert": _hubert}


@pytest.fixture(params=list(BUILD))
def case(request) -> tuple[SSLObjective, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each objective (wav2vec 2.0, HuBERT at its default ``unmasked_weight: 0``) built from seed 0, with its batch:
    ``(objective, y, mask, target_src, out_len)``. Every test below runs once per objective."""
    torch.manual_seed(0)
    objective = BUILD[request.param]()
    return (objective, *_batch(objective))


def test_the_loss_does_not_depend_on_unmasked_outputs(case):
    """Changing ``y`` everywhere outside the mask (valid frames and padding) leaves the loss bit-identical."""
    objective, y, mask, target_src, out_len = case
    loss, _ = _loss_and_grad(objective, y, mask, target_src, out_len)
    changed = torch.where(mask[..., None], y, 5.0 * torch.randn_like(y) + 3.0)
    loss2, _ = _loss_and_grad(objective, changed, mask, target_src, out_len)
    assert torch.isfinite(loss) and torch.equal(loss, loss2), (loss, loss2)


def test_the_gradient_reaches_masked_outputs_only(case):
    """d loss / d y is zero at every unmasked position and nonzero at the masked ones."""
    objective, y, mask, target_src, out_len = case
    _, grad = _loss_and_grad(objective, y, mask, target_src, out_len)
    per_frame = grad.abs().sum(-1)  # (B, T)
    assert torch.count_nonzero(per_frame[~mask]) == 0, "unmasked frames receive gradient"
    assert bool((per_frame[mask] > 0).all()), "some masked frame receives no gradient"


def test_changing_one_masked_output_changes_the_loss(case):
    """Every masked frame is scored, down to the last one of the shortest item (an objective that dropped masked frames
    near the end of a sequence, or of the padded batch, would not see this change)."""
    objective, y, mask, target_src, out_len = case
    loss, _ = _loss_and_grad(objective, y, mask, target_src, out_len)
    b, t = (int(i) for i in mask.nonzero()[-1])  # the last masked frame (of the shortest item)
    changed = y.clone()
    changed[b, t] = -y[b, t] + 1.0
    loss2, _ = _loss_and_grad(objective, changed, mask, target_src, out_len)
    assert not torch.equal(loss, loss2)


def test_hubert_unmasked_weight_scores_valid_unmasked_frames_but_never_padding():
    """With ``unmasked_weight > 0`` the unmasked valid frames count (so the invariance above is the weight's doing)
    and padding frames still never do."""
    torch.manual_seed(0)
    objective = _hubert(unmasked_weight=0.5)
    y, mask, target_src, out_len = _batch(objective)
    valid = time_mask(out_len, y.shape[1])
    loss, grad = _loss_and_grad(objective, y, mask, target_src, out_len)
    assert bool((grad.abs().sum(-1)[valid] > 0).all()) and torch.count_nonzero(grad[~valid]) == 0
    padding_changed = torch.where(valid[..., None], y, 7.0 * torch.randn_like(y))
    assert torch.equal(loss, _loss_and_grad(objective, padding_changed, mask, target_src, out_len)[0])


def _ssl_model(objective: str, tmp_path):
    from omegaconf import OmegaConf

    from nemo_sew import encoder_config
    from nemo_sew.models.ssl import SqueezeSSLModel

    enc = {"_target_": "nemo_sew.SqueezeEncoder", **encoder_config("tiny_wfe_c")}
    cfg = {"sample_rate": 16000, "preprocessor": {"_target_": "nemo_sew.WaveformPreprocessor"}, "encoder": enc,
           "objective": objective}  # fmt: skip
    if objective == "wav2vec2":
        cfg["wav2vec2"] = {"head_hidden": 64, "num_negatives": 10}
    else:
        centroids = tmp_path / "c.npy"
        np.save(centroids, np.random.default_rng(0).normal(size=(20, 78)).astype(np.float32))
        cfg["hubert"] = {"num_clusters": 20, "centroids": str(centroids)}
    return SqueezeSSLModel(OmegaConf.create(cfg)).train()


@pytest.mark.parametrize("objective", ["wav2vec2", "hubert"])
def test_the_model_hands_the_objective_a_proper_subset_of_the_valid_frames(objective, tmp_path, monkeypatch):
    """``SqueezeSSLModel.forward`` scores its span mask: masked frames lie inside the valid ones and some valid
    frames stay unmasked in every item (a model passing every valid frame as "masked" would score them all)."""
    torch.manual_seed(0)
    model = _ssl_model(objective, tmp_path)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = model.objective.loss

    def recording_loss(y, mask, target_src, out_len):
        seen.append((mask.clone(), out_len.clone()))
        return real(y, mask, target_src, out_len)

    monkeypatch.setattr(model.objective, "loss", recording_loss)
    out = model(torch.randn(2, 24000), torch.tensor([24000, 15000]))
    assert torch.isfinite(out["loss"]) and len(seen) == 1
    mask, out_len = seen[0]
    valid = time_mask(out_len, mask.shape[1])
    assert (mask & ~valid).sum() == 0, "a padding frame is scored"
    assert bool(mask.any(1).all()) and bool((valid & ~mask).any(1).all()), "an item is all masked or unmasked"
    assert float(out["masked_fraction"]) == pytest.approx(float(mask.sum() / valid.sum()))
