"""`nemo-sew doctor` (issue 14, item 8): one line per finding, each problem with its fix."""

import importlib.metadata
import json
from pathlib import Path

from nemo_sew.doctor import check_manifests, check_packages, check_tools


def test_missing_or_wrong_packages_say_how_to_fix():
    def version_of(dist):
        if dist in ("torch", "tensorrt"):
            raise importlib.metadata.PackageNotFoundError(dist)
        return {"nemo_toolkit": "2.1.0", "lhotse": "1.40.0", "onnx": "1.17.0", "onnxruntime": "1.19.2"}[dist]

    lines = {f.what.split()[0]: f for f in check_packages(version_of)}
    assert lines["torch"].level == "FAIL" and "pip install torch==2.13.0" in lines["torch"].fix
    assert lines["nemo_toolkit"].level == "FAIL" and "==3.0.0" in lines["nemo_toolkit"].line()
    assert lines["lhotse"].level == "ok" and lines["onnx"].level == "ok"
    assert lines["onnxruntime"].level == "FAIL"  # 1.19.2 < 1.20
    assert lines["tensorrt"].level == "warn"  # optional


def test_missing_tools_and_fortunes(tmp_path):
    found = check_tools(which=lambda tool: None, fortune_dir=tmp_path)
    assert [f.level for f in found] == ["FAIL", "FAIL", "FAIL"]
    assert "apt-get install espeak-ng" in found[0].fix and "apt-get install fortunes" in found[2].fix


def test_manifests_are_checked_like_training(tiny_corpus, tmp_path, capsys):
    from nemo_sew.cli import main

    source = Path(tiny_corpus["train"]["manifest"])
    good = [json.loads(x) for x in source.read_text().splitlines()[:2]]
    manifest = tmp_path / "m.json"
    manifest.write_text("\n".join([json.dumps(dict(e, audio_filepath=str(source.parent / e["audio_filepath"]))) for e in good]
                                  + ["not json"]) + "\n")  # fmt: skip
    (finding,) = check_manifests([manifest])
    assert finding.level == "warn" and "1 of 3 lines skipped (first: line 3, malformed JSON" in finding.what
    (missing,) = check_manifests([tmp_path / "nope.json"])
    assert missing.level == "FAIL" and "nope.json" in missing.what
    assert main(["doctor", str(tmp_path / "nope.json")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(x.startswith("FAIL") and "nope.json" in x and "fix:" in x for x in out)
    assert any(x.startswith("ok   torch") for x in out)


def test_gpu_check_skips_with_its_reason_without_cuda(monkeypatch):
    """``make gpu-check`` on a machine without CUDA: one skip line naming why, exit 0 (the GPU run is its own)."""
    import torch

    from nemo_sew.gpu_check import FAMILIES, gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    section, ok = gpu_check()
    assert ok and section.startswith("skip: GPU check not run: no CUDA device")
    assert {"plain", "layerdrop", "stochastic", "gates_local", "gates_global", "pruning"} <= set(FAMILIES)
