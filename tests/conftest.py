import logging
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# The demo recipe's conformer at a width the CPU tests train in seconds (overrides of its preset's arch).
TINY_WIDTH = [
    "++model.encoder.arch.d_model=64",
    "++model.encoder.arch.blocks={heads: 2, head_dim: 32, ffn_dims: [128, 128], conv_kernel: 15}",
]
TINY_ENCODER = ["++model.encoder.arch.num_layers=2", *TINY_WIDTH]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _quiet_nemo():
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    yield


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A small synthetic espeak-ng corpus (about 2 minutes), shared by the tests of a session."""
    from manifests.synthetic import prepare_synthetic

    return prepare_synthetic(tmp_path_factory.mktemp("tiny_corpus"), hours=0.03, seed=2, num_jobs=2, test_speakers=2)


@pytest.fixture(scope="module")
def tiny_ctc_nemo(tiny_corpus, tmp_path_factory):
    """A freshly built tiny CTC model saved as ``.nemo`` (one per test module: a module may overwrite it)."""
    from test_models import _cfg

    from nemo_sew.train import build_model

    path = tmp_path_factory.mktemp("tiny_ctc") / "model.nemo"
    build_model(_cfg(tiny_corpus)).save_to(str(path))
    return path
