"""A kill during `.nemo` saving leaves the previous file intact (issue 14, item 2): the save writes a temporary file
and renames it over the target."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_a_kill_inside_save_to_leaves_the_previous_file(tiny_ctc_nemo):
    before = hashlib.sha256(tiny_ctc_nemo.read_bytes()).hexdigest()
    # a fresh process restores the model and saves it over the same path; it SIGKILLs itself once NeMo has
    # written the first member of the tar archive, i.e. in the middle of the save
    code = textwrap.dedent(
        f"""
        import os, signal, tarfile
        import nemo_sew
        from nemo.collections.asr.models import ASRModel
        model = ASRModel.restore_from({str(tiny_ctc_nemo)!r}, map_location="cpu")
        add = tarfile.TarFile.add
        def add_then_die(self, *args, **kwargs):
            add(self, *args, **kwargs)
            self.fileobj.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        tarfile.TarFile.add = add_then_die
        model.save_to({str(tiny_ctc_nemo)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert hashlib.sha256(tiny_ctc_nemo.read_bytes()).hexdigest() == before
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    ASRModel.restore_from(str(tiny_ctc_nemo), map_location="cpu")  # still a whole .nemo


def test_save_to_replaces_the_file_and_leaves_no_temporary(tiny_ctc_nemo, tmp_path):
    import nemo_sew  # noqa: F401
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(tiny_ctc_nemo), map_location="cpu")
    target = tmp_path / "out.nemo"
    target.write_text("an older file")
    model.save_to(str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nemo"]
    ASRModel.restore_from(str(target), map_location="cpu")
