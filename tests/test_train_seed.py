"""A recipe seed makes fp32 CPU training repeatable: the same command gives the same weights (issue 14, item 1)."""

from pathlib import Path

import torch

from conftest import TINY_WIDTH
from nemo_sew.train import load_config, train

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ctc_char_stochastic_tiny_mel.yaml"


def _weights(tiny_corpus, tmp_path, seed: int) -> dict[str, torch.Tensor]:
    cfg = load_config(RECIPE, [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        "model.train_ds.batch_size=4", "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0",
        *TINY_WIDTH, "++model.encoder.arch.num_layers=2", "model.encoder.squeeze_sampler.kv_pool=null",
        "model.encoder.dropout.hidden=0.1", "model.encoder.dropout.attention=0.1",  # dropout draws too
        "++model.spec_augment={_target_: nemo.collections.asr.modules.SpectrogramAugmentation, freq_masks: 2, "
        "time_masks: 2, freq_width: 10, time_width: 0.05}",
        "trainer.precision=32", "trainer.deterministic=true", "trainer.max_steps=6", "trainer.max_time=null",
        "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false", "trainer.num_sanity_val_steps=0",
        f"exp_manager.exp_dir={tmp_path / str(seed)}", "exp_manager.create_checkpoint_callback=false",
        f"seed={seed}",
    ])  # fmt: skip
    model = train(cfg)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_the_same_seed_gives_the_same_weights(tiny_corpus, tmp_path):
    torch.manual_seed(123)  # whatever ran before: the recipe seed decides
    first = _weights(tiny_corpus, tmp_path / "a", seed=7)
    torch.manual_seed(456)
    second = _weights(tiny_corpus, tmp_path / "b", seed=7)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"weights differ between two runs with the same seed: {different[:5]}"
    other = _weights(tiny_corpus, tmp_path / "c", seed=8)
    assert any(not torch.equal(first[k], other[k]) for k in first), "another seed should train other weights"
