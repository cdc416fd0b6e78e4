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


# Archs today's uniform presets cannot express (per-layer kinds, head_dim, conv channels, absent branches):
# build_arch(preset, **kwargs) for each name
NON_UNIFORM_ARCHS = {
    "mixed_kinds": ("tiny_wfe_c", {"num_layers": 3, "expander": "phase", "blocks": [
        {"kind": "conformer", "conv_channels": 64}, {"heads": 0}, {"head_dim": 32, "ffn_dims": [96]}]}),
    "pruned_conformer": ("tiny_mel_conformer", {"expander": "phase", "blocks": [
        {"heads": 1, "ffn_dims": [0, 256], "conv_channels": 96}, {"heads": 2}, {"conv_channels": 0}, {}]}),
}  # fmt: skip


def stock_ctc_config() -> dict:
    """A data-free ``SqueezeCTCModel`` config around a stock NeMo encoder (one ``ConvASREncoder`` layer, 16 filters)."""
    from nemo_sew.quant.model import tiny_ctc_config

    cfg = tiny_ctc_config("tiny_mel")
    cfg["encoder"] = {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": 80, "activation": "relu",
                      "jasper": [{"filters": 16, "repeat": 1, "kernel": [3], "stride": [1], "dilation": [1],
                                  "dropout": 0.0, "residual": False, "separable": False}]}  # fmt: skip
    cfg["decoder"]["feat_in"] = 16
    return cfg


def nemo_with_weights(good, out, edit, save=torch.save):
    """Copy the ``.nemo`` file ``good`` to ``out`` with its weights replaced by ``edit(state)``, written by ``save``
    (``torch.save``, or a writer of another serialisation format)."""
    import shutil
    import tarfile

    unpacked = out.parent / f"{out.stem}_unpacked"
    with tarfile.open(good) as tar:
        tar.extractall(unpacked, filter="data")
    weights = next(unpacked.rglob("model_weights.ckpt"))
    save(edit(torch.load(weights, weights_only=True)), weights)
    with tarfile.open(out, "w:") as tar:
        for item in sorted(unpacked.iterdir()):
            tar.add(item, arcname=f"./{item.name}")
    shutil.rmtree(unpacked)
    return out



# `make test-fast` (`pytest -m "not slow"`, the inner loop) leaves out the tests marked slow by hand (end-to-end) and
# those that tests/durations.json (`make test-durations`, tools/test_durations.py) measured as slow. The limit is
# relative, so that times measured on a busy or a fast machine give the same split: the cut-off is the largest
# measured test time such that all the tests up to it take at most FAST_SHARE of the suite's measured time. A test is
# slow when its own time (setup + call + teardown) exceeds the cut-off, or when it needs a shared (module or session)
# fixture whose set-up exceeds it (paid once, by whichever selected test needs it first: tiny_corpus, a module's
# trained model). Tests missing from the file (new ones) count as fast unless such a fixture makes them slow; the
# run says how many there are.
FAST_SHARE = 0.08


def fast_cutoff(times) -> float:
    times = sorted(times)
    budget, spent, cutoff = FAST_SHARE * sum(times), 0.0, 0.0
    for t in times:
        if spent + t > budget:
            break
        spent, cutoff = spent + t, t
    return cutoff


def pytest_collection_modifyitems(config, items):
    import json
    from pathlib import Path

    path = Path(__file__).with_name("durations.json")
    if not path.exists():
        return
    measured = json.loads(path.read_text())
    tests, fixtures = measured.get("tests", {}), measured.get("fixtures", {})
    cutoff = fast_cutoff(tests.values())
    unmeasured = 0
    for item in items:
        if item.get_closest_marker("slow") is not None:
            continue
        own = tests.get(item.nodeid)
        unmeasured += own is None
        info = getattr(item, "_fixtureinfo", None)
        param = getattr(getattr(item, "callspec", None), "indices", {})
        shared = 0.0
        for name, defs in info.name2fixturedefs.items() if info is not None else ():
            key = f"{defs[-1].baseid}::{name}" if defs else ""
            shared = max(shared, fixtures.get(f"{key}[{param.get(name)}]", fixtures.get(key, 0.0)))
        if (own or 0.0) > cutoff or shared > cutoff:
            item.add_marker(pytest.mark.slow)
    config.stash[_UNMEASURED] = unmeasured


_UNMEASURED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, config):
    unmeasured = config.stash.get(_UNMEASURED, 0)
    if unmeasured:
        terminalreporter.write_line(
            f"{unmeasured} collected tests are not in tests/durations.json and count as fast "
            "(`make test-durations` measures them)"
        )
