"""A kill during `.nemo` saving leaves the previous file intact (issue 14, item 2): the save writes a temporary file
and renames it over the target."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_model(tiny_corpus, tmp_path_factory):
    from test_models import _cfg

    from nemo_sew.train import build_model

    path = tmp_path_factory.mktemp("atomic") / "model.nemo"
    build_model(_cfg(tiny_corpus)).save_to(str(path))
    return path


def test_a_kill_inside_save_to_leaves_the_previous_file(saved_model):
    before = hashlib.sha256(saved_model.read_bytes()).hexdigest()
    # a fresh process restores the model and saves it over the same path; it SIGKILLs itself once NeMo has
    # written the first member of the tar archive, i.e. in the middle of the save
    code = textwrap.dedent(
        f"""
        import os, signal, tarfile
        import nemo_sew
        from nemo.collections.asr.models import ASRModel
        model = ASRModel.restore_from({str(saved_model)!r}, map_location="cpu")
        add = tarfile.TarFile.add
        def add_then_die(self, *args, **kwargs):
            add(self, *args, **kwargs)
            self.fileobj.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        tarfile.TarFile.add = add_then_die
        model.save_to({str(saved_model)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert hashlib.sha256(saved_model.read_bytes()).hexdigest() == before
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    ASRModel.restore_from(str(saved_model), map_location="cpu")  # still a whole .nemo


def test_save_to_replaces_the_file_and_leaves_no_temporary(saved_model, tmp_path):
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(saved_model), map_location="cpu")
    target = tmp_path / "out.nemo"
    target.write_text("an older file")
    model.save_to(str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nemo"]
    ASRModel.restore_from(str(target), map_location="cpu")
