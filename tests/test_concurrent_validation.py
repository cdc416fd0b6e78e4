"""Two processes validating the same manifest at once (DDP ranks on one node do) both finish, and the checked
manifest and its cache are never half-written (issue 14, item 7): outputs are written to a per-process temporary
file and renamed."""

import json
import multiprocessing as mp
from pathlib import Path

from manifests.validate import report_path, validate_manifest


def _validate(manifest: str, rounds: int) -> int:
    kept = 0
    for _ in range(rounds):
        kept = validate_manifest(manifest, use_cache=False, check_content=False).kept
    return kept


def test_two_processes_validating_one_manifest(tiny_corpus, tmp_path):
    source = Path(tiny_corpus["train"]["manifest"])
    manifest = tmp_path / "shared.json"
    lines = source.read_text().splitlines()
    manifest.write_text("\n".join(json.dumps(dict(json.loads(x), audio_filepath=str(source.parent / json.loads(x)["audio_filepath"])))
                                  for x in lines) + "\n")  # fmt: skip
    out = manifest.with_name("shared.checked.json")
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        pending = [pool.apply_async(_validate, (str(manifest), 15)) for _ in range(2)]
        seen = 0
        while not all(p.ready() for p in pending):  # a reader meanwhile: every version it sees is whole
            if out.exists():
                text = out.read_text()
                assert text.endswith("\n") and len(text.splitlines()) == len(lines), "a half-written checked manifest"
                seen += 1
            if report_path(out).exists():
                json.loads(report_path(out).read_text())  # a whole JSON document
        assert [p.get(timeout=300) for p in pending] == [len(lines), len(lines)]
    assert seen > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shared.json", out.name, report_path(out).name])
