"""Bad input through every entry point (issue 14, items 5 and 6): the README's "Bad input" statements.

- evaluate / sweep / onnxruntime transcribe skip bad manifest lines the way training does, and count them;
- a CLI error a user causes is one line naming the file (``--verbose`` gives the traceback);
- stereo and wrong-rate audio are refused naming the file, in ``transcribe()`` as in manifests;
- silence transcribes to an empty transcript; text outside the vocabulary never crashes evaluation.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from manifests.audio import AudioError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nemo_sew.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def _manifest_with_bad_lines(tiny_corpus, tmp_path) -> tuple[Path, int]:
    lines = Path(tiny_corpus["train"]["manifest"]).read_text().splitlines()[:3]
    good = [json.loads(x) for x in lines]
    for entry in good:
        entry["audio_filepath"] = str(Path(tiny_corpus["train"]["manifest"]).parent / entry["audio_filepath"])
    odd = dict(good[0], text="café 東京 ☃ ½")  # characters outside the vocabulary: evaluated, not a crash
    out = tmp_path / "bad.json"
    out.write_text("\n".join([json.dumps(good[0]), '{"audio_filepath": "x.wav", "duration": 1.0,', json.dumps(good[1]),
                              json.dumps(dict(good[2], audio_filepath=str(tmp_path / "missing.wav"))), json.dumps(odd)]) + "\n")  # fmt: skip
    return out, 3


@pytest.mark.slow
def test_evaluate_skips_malformed_lines_and_counts_them(tiny_ctc_nemo, tiny_corpus, tmp_path):
    manifest, kept = _manifest_with_bad_lines(tiny_corpus, tmp_path)
    proc = _cli("evaluate", tiny_ctc_nemo, "--manifest", manifest, "--json", tmp_path / "result.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = [line for line in proc.stdout.splitlines() if line.startswith("WER ")]
    assert len(summary) == 1 and f"({kept} utterances, 2 skipped)" in summary[0], proc.stdout
    # the result and the skipped lines, not NeMo's config dumps and telemetry (those need --verbose)
    printed = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(printed) <= 10 and not any("OneLogger" in line or "NeMo I" in line for line in printed), printed
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["utterances"] == kept and result["skipped"] == 2
    assert [line for line, _, _ in result["skipped_lines"]] == [2, 4]
    assert "malformed JSON" in result["skipped_lines"][0][2] and "missing.wav" in result["skipped_lines"][1][1]
    assert "Traceback" not in proc.stderr


def test_sweep_counts_skips_per_profile(tiny_ctc_nemo, tiny_corpus, tmp_path):
    from nemo_sew.safe_load import restore
    from nemo_sew.sweep import sweep

    manifest, kept = _manifest_with_bad_lines(tiny_corpus, tmp_path)
    rows = sweep(restore(tiny_ctc_nemo), manifest, {"s2": {"squeeze": 2}}, tmp_path / "sweep", batch_size=4, command="test")
    assert rows[0]["skipped"] == 2 and rows[0]["utterances"] == kept


def test_cli_errors_are_one_line_naming_the_file(tiny_ctc_nemo, tmp_path, capsys):
    from nemo_sew.cli import main

    cases = [
        (["evaluate", str(tmp_path / "nowhere.nemo"), "--manifest", "m.json"], "nowhere.nemo"),
        (["evaluate", str(tiny_ctc_nemo), "--manifest", str(tmp_path / "m.json")], "m.json"),  # a missing manifest
        (["train", str(tmp_path / "no_recipe.yaml")], "no_recipe.yaml"),
        (["train", str(ROOT / "recipes" / "ctc_char_tiny_mel.yaml"), "not-an-override"], "key=value"),
    ]
    for argv, named in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"nemo-sew {argv[0]}: error:") and named in err[0], err
    with pytest.raises(FileNotFoundError, match="nowhere.nemo"):  # --verbose: the exception and its traceback
        main(["evaluate", str(tmp_path / "nowhere.nemo"), "--manifest", "m.json", "--verbose"])


def test_stereo_and_wrong_rate_are_refused_naming_the_file_silence_is_empty(tiny_ctc_nemo, tmp_path):
    from nemo_sew.safe_load import restore

    model = restore(tiny_ctc_nemo).eval()
    rng = np.random.default_rng(0)
    stereo, slow = tmp_path / "stereo.wav", tmp_path / "rate8k.wav"
    sf.write(stereo, rng.standard_normal((16000, 2)) * 0.1, 16000)
    sf.write(slow, rng.standard_normal(8000) * 0.1, 8000)
    with pytest.raises(AudioError, match="stereo.wav.*channel"):
        model.transcribe([str(stereo)])
    with pytest.raises(AudioError, match="rate8k.wav.*16000"):
        model.transcribe([str(slow)])
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(40 * 16000, dtype=np.float32), 16000)
    (hyp,) = model.transcribe([str(silence)], verbose=False)
    assert isinstance(hyp.text, str)  # a transcript (empty when only blanks are emitted), never an error


def test_training_skips_text_outside_the_vocabulary_with_a_log_line(tiny_corpus, tmp_path, caplog):
    from test_models import _cfg

    from nemo_sew.train import build_model

    source = Path(tiny_corpus["train"]["manifest"])
    entries = [json.loads(x) for x in source.read_text().splitlines()[:4]]
    for e in entries:
        e["audio_filepath"] = str(source.parent / e["audio_filepath"])
    entries[1]["text"] = "ein café in 東京"
    entries[2]["text"] = "snow man ☃ here"
    manifest = tmp_path / "oov.json"
    manifest.write_text("\n".join(json.dumps(e) for e in entries) + "\n")
    cfg = _cfg(tiny_corpus)
    cfg.model.train_ds.manifest_filepath = str(manifest)
    with caplog.at_level("WARNING", logger="nemo_sew.manifests"):
        model = build_model(cfg)
    assert len(model._train_dl.dataset) == 2
    skips = [r.getMessage() for r in caplog.records if "outside the vocabulary" in r.getMessage()]
    assert len(skips) == 2 and ":2:" in skips[0] and "é" in skips[0] and "東" in skips[0] and ":3:" in skips[1]
