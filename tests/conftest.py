import logging
import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
