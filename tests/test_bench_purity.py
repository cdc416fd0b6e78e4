"""PNMI of cluster ids vs characters, and the per-frame character labels from CTC spikes."""

import pytest
import torch

from benchmarks.purity import ctc_frame_labels, pnmi


def test_pnmi_extremes_and_a_known_value():
    labels = torch.tensor([0, 1, 2, 3] * 50)
    assert pnmi(labels, labels + 7) == pytest.approx(1.0)  # cluster ids determine the labels (names do not matter)
    assert pnmi(labels, torch.zeros_like(labels)) == pytest.approx(0.0, abs=1e-12)  # one cluster says nothing
    # clusters that only tell {0,1} from {2,3}: I = 1 bit of H = 2 bits
    assert pnmi(labels, labels // 2) == pytest.approx(0.5)
    # independent labels and clusters: PNMI near 0
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, 10, (20000,), generator=g), torch.randint(0, 10, (20000,), generator=g)
    assert pnmi(a, b) < 0.01
    with pytest.raises(ValueError, match="paired"):
        pnmi(labels, labels[:-1])


class _FixedCTC:
    """Returns fixed log-probs: the labelling logic under test only reads their argmax."""

    def __init__(self, ids, vocab):
        self.log_probs = torch.nn.functional.one_hot(torch.tensor(ids), vocab).float().log_softmax(-1)[None]

    def forward(self, input_signal, input_signal_length):
        return self.log_probs, torch.tensor([self.log_probs.shape[1]]), None


def test_ctc_frame_labels_take_the_nearest_spike():
    blank = 4
    model = _FixedCTC([blank, 1, blank, blank, blank, 2, blank, blank], vocab=5)
    assert ctc_frame_labels(model, torch.zeros(100)).tolist() == [1, 1, 1, 1, 2, 2, 2, 2]
    assert ctc_frame_labels(_FixedCTC([blank] * 3, 5), torch.zeros(10)).tolist() == [blank] * 3


def test_two_models_of_one_file_name_keep_their_own_centroids(tiny_ctc_nemo, tiny_corpus, tmp_path):
    """run_a/ssl.nemo and run_b/ssl.nemo (every bench's pre-training writes ssl.nemo) are two targets: each is
    clustered into its own centroid file, not the second over the first."""
    import shutil

    import numpy as np

    from benchmarks.purity import bench_target_purity

    targets = []
    for run in ("run_a", "run_b"):
        (tmp_path / run).mkdir()
        targets.append(str(shutil.copy(tiny_ctc_nemo, tmp_path / run / "ssl.nemo")))
    test = tiny_corpus["test"]["manifest"]
    section = bench_target_purity(tiny_ctc_nemo, test, targets, tiny_corpus["train"]["manifest"], tmp_path / "out",
                           clusters=4, fit_hours=0.01)  # fmt: skip
    files = sorted((tmp_path / "out").glob("*.npy"))
    assert len(files) == 2 and all(np.load(f).shape[0] == 4 for f in files)
    assert section.count("ssl.nemo |") == 2
