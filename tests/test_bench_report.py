"""The machine line every benchmark section states."""

import torch

from nemo_sew.measure import machine_line


def test_machine_line_states_cores_torch_and_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ", 1 thread, " in machine_line() and f"torch {torch.__version__}" in machine_line()
        torch.set_num_threads(2)
        assert ", 2 threads, " in machine_line()
    finally:
        torch.set_num_threads(before)


def test_mean_spread_is_the_mean_and_half_the_range():
    from benchmarks.report import mean_spread
    from nemo_sew.measure import threads_text

    assert mean_spread([0.5]) == "0.500" and mean_spread([0.4, 0.6]) == "0.500 ± 0.100"
    assert mean_spread(x for x in (0.1, 0.2, 0.6)) == "0.300 ± 0.250"
    assert (threads_text(1), threads_text(4)) == ("1 thread", "4 threads")


def test_save_at_steps_needs_save_to(tmp_path):
    import pytest

    from nemo_sew.train import load_config, train

    manifest = tmp_path / "train.json"  # never read: the check comes first (augmentation assets go beside it)
    cfg = load_config("recipes/ctc_char_tiny_mel.yaml", ["+save_at_steps=[5]", "save_to=null",
                                                         f"model.train_ds.manifest_filepath={manifest}",
                                                         f"model.validation_ds.manifest_filepath={manifest}"])  # fmt: skip
    with pytest.raises(ValueError, match="save_at_steps: set save_to"):
        train(cfg)
