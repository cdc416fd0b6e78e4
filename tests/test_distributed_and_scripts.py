"""Multi-process and script-level checks: 2-process CPU DDP (gloo), NeMo's transcribe_speech flow."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "model.train_ds.batch_size=4",
    "model.train_ds.num_workers=0",
    "model.validation_ds.num_workers=0",
    *TINY_ENCODER,
    "trainer.enable_progress_bar=false",
    "trainer.num_sanity_val_steps=0",
    "trainer.check_val_every_n_epoch=1",
]


def _run(args, cwd, timeout=600):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def trained_model(tiny_corpus, tmp_path_factory):
    """A .nemo file trained by 2 CPU processes with DDP (gloo) through the `nemo-sew train` CLI."""
    out = tmp_path_factory.mktemp("ddp")
    model = out / "ddp.nemo"
    _run(
        [
            sys.executable, "-m", "nemo_sew.cli", "train", str(ROOT / "recipes" / "ctc_char_tiny_mel.yaml"),
            f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
            f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
            *SMALL,
            "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=3", "trainer.max_time=null",
            f"exp_manager.exp_dir={out / 'exp'}", f"save_to={model}",
        ],
        cwd=out,
    )  # fmt: skip
    return model


def test_two_process_ddp_training(trained_model):
    import torch

    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(trained_model), map_location="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert type(model).__name__ == "SqueezeCTCModel"


def test_nemo_transcribe_speech_flow_on_our_nemo_file(trained_model, tiny_corpus, tmp_path):
    script = ROOT / "recipes" / "transcribe_speech_flow.py"
    out = tmp_path / "pred.json"
    proc = _run([sys.executable, str(script), str(trained_model), str(tiny_corpus["test"]["manifest"]), str(out)], tmp_path)
    assert "SqueezeCTCModel" in proc.stdout
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    refs = [json.loads(x) for x in Path(tiny_corpus["test"]["manifest"]).read_text().splitlines()]
    assert len(lines) == len(refs) and all("pred_text" in x for x in lines)


def test_restore_without_import_is_blocked_by_nemo_allowlist(trained_model, tmp_path):
    # the check above can fail: NeMo refuses our target unless nemo_sew registered its prefix
    code = textwrap.dedent(
        f"""
        from nemo.collections.asr.models import ASRModel
        try:
            ASRModel.restore_from({str(trained_model)!r}, map_location="cpu")
        except Exception as e:
            print("BLOCKED", type(e).__name__)
        else:
            print("RESTORED")
        """
    )
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert "BLOCKED UnsafeTargetError" in proc.stdout
