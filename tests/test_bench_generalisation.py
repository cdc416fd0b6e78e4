"""``nemo-sew bench generalisation`` (issue 29, item 3): the leave-one-engine-out plan, the goal, the table, the
command line and the kept results, without training; one tiny split end to end (slow); and the corpus plans the
splits need (festival as a training engine, espeak-ng as the unseen one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks.generalisation import (
    ENGINES,
    Split,
    generalisation_markdown,
    goal_met,
    in_domain_test_speakers,
    plan_splits,
    ratio,
    run_split,
)

COUNTS = {"espeak-ng": 153, "flite": 4, "festival": 2}


def test_plan_leaves_each_engine_out_once():
    splits = plan_splits(data_root="data/generalisation", hours=3.5, speaker_counts=COUNTS)
    assert [s.held_out for s in splits] == list(ENGINES)
    for s in splits:
        assert s.held_out not in s.train_engines and sorted((*s.train_engines, s.held_out)) == sorted(ENGINES)
    assert [s.test_speakers for s in splits] == [1, 6, 6]  # flite + festival have 6 voices: one held out, not 6
    dirs = {s.data_dir for s in splits}
    assert len(dirs) == 3 and Path("data/synthetic") not in dirs  # never the demo's corpus
    assert splits[2].data_dir == Path("data/generalisation/festival_unseen_3.5h_seed0")
    assert plan_splits(data_root="d", hours=0.02, seed=1, speaker_counts=COUNTS)[0].data_dir == Path(
        "d/espeak-ng_unseen_0.02h_seed1")  # fmt: skip
    subset = plan_splits(["festival", "flite"], speaker_counts=COUNTS)  # in ENGINES order, whatever the order asked
    assert [s.held_out for s in subset] == ["flite", "festival"]
    assert subset[1].train_engines == ("espeak-ng", "flite")  # the demo's corpus: espeak-ng + flite, festival unseen
    for bad in (["mbrola"], []):
        with pytest.raises(ValueError, match="engines held out"):
            plan_splits(bad, speaker_counts=COUNTS)
    assert in_domain_test_speakers({"flite": 4, "festival": 2}) == 1
    assert in_domain_test_speakers({"espeak-ng": 153, "festival": 2}) == 6


def test_ratio_and_goal():
    assert ratio(0.3, 0.2) == pytest.approx(1.5) and not goal_met(0.3, 0.2)
    assert goal_met(0.25, 0.2) and goal_met(0.13, 0.1)  # 1.3 (1.3000000000000003 in floats) meets "at most 1.3x"
    assert not goal_met(0.1301, 0.1)
    assert goal_met(0.15, 0.2)  # better on the unseen engine: met
    assert ratio(0.1, 0.0) == float("inf") and not goal_met(0.1, 0.0)
    assert ratio(0.0, 0.0) == 1.0 and goal_met(0.0, 0.0)
    assert goal_met(0.3, 0.2, goal=1.5) and not goal_met(0.3, 0.2, goal=1.4)


def _row(recipe, held_out, test, unseen):
    train = [e for e in ENGINES if e != held_out]
    return {"recipe": recipe, "held_out": held_out, "train_engines": train, "test_cer": test, "unseen_cer": unseen}


def test_markdown_table():
    rows = [_row("recipes/base.yaml", "espeak-ng", 0.20, 0.40), _row("recipes/base.yaml", "festival", 0.217, 0.393),
            _row("recipes/aug.yaml", "espeak-ng", 0.21, 0.25), _row("recipes/aug.yaml", "festival", 0.19, 0.24)]  # fmt: skip
    md = generalisation_markdown(rows, "nemo-sew bench generalisation --write BENCHMARKS.md", "a machine", 2000, 3.5)
    lines = md.splitlines()
    assert lines[0].startswith("### Generalisation to unseen synthesisers")
    assert "Command: `nemo-sew bench generalisation --write BENCHMARKS.md`" in md and "2000 fp32 steps" in md
    header = next(line for line in lines if line.startswith("| recipe"))
    assert header == ("| recipe | unseen engine | train engines | test CER | unseen CER | ratio | goal <= 1.3x | "
                      "test CER vs base |")  # fmt: skip
    table = [line for line in lines if line.startswith("| `")]
    assert table[0] == "| `base` | espeak-ng | flite + festival | 0.200 | 0.400 | 2.00 | not met | - |"
    assert table[1] == "| `base` | festival | espeak-ng + flite | 0.217 | 0.393 | 1.81 | not met | - |"
    assert table[2] == "| `aug` | espeak-ng | flite + festival | 0.210 | 0.250 | 1.19 | met | +0.010 |"
    assert table[3] == "| `aug` | festival | espeak-ng + flite | 0.190 | 0.240 | 1.26 | met | -0.027 |"
    assert "- `base`: goal met in 0 of 2 splits, worst ratio 2.00" in lines
    assert "- `aug`: goal met in 2 of 2 splits, worst ratio 1.26; in-domain test CER vs base: worst +0.010" in lines


def test_the_cli_parses_and_calls_the_bench(monkeypatch):
    import torch

    import benchmarks.generalisation as gen
    from nemo_sew.cli import build_parser

    calls = []
    monkeypatch.setattr(gen, "bench_generalisation", lambda *a, **k: calls.append((a, k)) or "### section\n")
    parser = build_parser()
    argv = ["bench", "generalisation", "--engines-held-out", "flite", "festival", "--train-steps", "5", "--hours",
            "0.02", "--out", "o", "--data", "d", "--threads", "1", "--recipe", "a.yaml", "b.yaml", "trainer.x=1"]  # fmt: skip
    args = parser.parse_args(argv)
    args.argv = argv
    threads = torch.get_num_threads()
    try:
        assert args.func(args) == 0
    finally:
        torch.set_num_threads(threads)
    (recipes, held_out), kwargs = calls[0]
    assert recipes == ["a.yaml", "b.yaml"] and held_out == ["flite", "festival"]
    assert kwargs["overrides"] == ["trainer.x=1"]  # swallowed by --recipe's nargs, given back to the overrides
    assert kwargs["steps"] == 5 and kwargs["hours"] == 0.02 and kwargs["out"] == "o" and kwargs["data_root"] == "d"
    assert kwargs["command"].startswith("nemo-sew bench generalisation --engines-held-out flite festival")
    defaults = parser.parse_args(["bench", "generalisation"])
    assert defaults.recipe == ["recipes/ctc_char_tiny_mel.yaml", "recipes/ctc_char_tiny_mel_voiceaug.yaml"]
    assert defaults.engines_held_out == list(ENGINES) and defaults.train_steps == 2000 and defaults.threads == 2
    assert defaults.write is None and defaults.data == "data/generalisation"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "generalisation", "--engines-held-out", "mbrola"])


def test_run_split_builds_the_corpus_trains_and_keeps_the_result(monkeypatch, tmp_path):
    import manifests.synthetic
    import nemo_sew.demo
    from nemo_sew.evaluate import EvalResult

    made, trained = [], []

    def fake_prepare(out_dir, **kw):
        made.append((out_dir, kw))
        return {"train": {"manifest": Path(out_dir) / "train.json"}, "cross": {"manifest": Path(out_dir) / "cross.json"}}

    class Run:
        result = EvalResult("test.json", 10, 0.5, 0.2, 1.0, 0.1, 1.0, 1.0, {}, cross_utterances=10, cross_wer=0.6,
                            cross_cer=0.3)  # fmt: skip
        steps, train_seconds = 5, 60.0

    def fake_train(out_dir, data_dir, recipe, hours, minutes, seed, steps, jobs, overrides, command, splits=None):
        trained.append((recipe, steps, minutes, overrides, splits))
        return Run()

    monkeypatch.setattr(manifests.synthetic, "prepare_synthetic", fake_prepare)
    monkeypatch.setattr(nemo_sew.demo, "train_and_evaluate", fake_train)
    split = Split("espeak-ng", ("flite", "festival"), tmp_path / "data", 1)
    row = run_split(split, "r.yaml", tmp_path / "run", 5, 0.02, 0, 2, ["a=1"], "cmd")
    assert made[0][1] == {"hours": 0.02, "seed": 0, "num_jobs": 2, "test_speakers": 1,
                          "engines": ("flite", "festival"), "cross_engine": "espeak-ng"}  # fmt: skip
    assert trained[0][:4] == ("r.yaml", 5, None, ["a=1"])  # fixed steps, not a time budget
    assert trained[0][4]["cross"]["manifest"] == tmp_path / "data" / "cross.json"  # the corpus just built
    assert row["test_cer"] == 0.2 and row["unseen_cer"] == 0.3 and row["train_engines"] == ["flite", "festival"]
    assert run_split(split, "r.yaml", tmp_path / "run", 5, 0.02, 0, 2, ["a=1"], "cmd") == row
    assert len(trained) == 1  # kept: the same settings do not train again
    run_split(split, "r.yaml", tmp_path / "run", 6, 0.02, 0, 2, ["a=1"], "cmd")
    assert len(trained) == 2  # other settings: trained again
    assert json.loads((tmp_path / "run" / "generalisation.json").read_text())["settings"]["steps"] == 6


# --- the corpus plans of the splits --------------------------------------------------------------------------------


def _speakers(engine, n):
    from manifests.synthetic import Speaker

    if engine == "espeak-ng":
        return [Speaker(f"en-{i}", "m1") for i in range(n)]
    return [Speaker(f"voice{i}", "", engine) for i in range(n)]


def _sentences(n=400):
    return [f"sentence number {i} has a few words" for i in range(n)]


def test_festival_trains_and_espeak_ng_is_the_unseen_engine_with_its_own_pitch():
    from manifests.synthetic import PITCH_RANGE, check_plan, plan_corpus

    plan = plan_corpus(_sentences(), _speakers("flite", 4) + _speakers("festival", 2), 0.3, seed=0, test_speakers=1,
                       cross_speakers=_speakers("espeak-ng", 20))  # fmt: skip
    check_plan(plan)
    assert {u.speaker.engine for u in plan if u.split == "train"} == {"flite", "festival"}
    cross = [u for u in plan if u.split == "cross"]
    test = [u for u in plan if u.split == "test"]
    assert [u.text for u in cross] == [u.text for u in test] and all(u.speaker.engine == "espeak-ng" for u in cross)
    # espeak-ng takes a pitch: one drawn for it (the test engines have none), not "-p None" (read as pitch 0)
    assert all(u.pitch is not None and PITCH_RANGE[0] <= u.pitch <= PITCH_RANGE[1] for u in cross)
    assert len({u.pitch for u in cross}) > 1
    with pytest.raises(ValueError, match="test_speakers"):  # why the split holds out one voice, not the default 6
        plan_corpus(_sentences(), _speakers("flite", 4) + _speakers("festival", 2), 0.3, seed=0, test_speakers=6)


def test_a_cross_engine_without_pitch_is_planned_as_before():
    from manifests.synthetic import plan_corpus

    speakers = _speakers("espeak-ng", 30) + _speakers("flite", 4)
    plan = plan_corpus(_sentences(), speakers, 0.3, seed=0, cross_speakers=_speakers("festival", 2))
    cross = [u for u in plan if u.split == "cross"]
    test = [u for u in plan if u.split == "test"]
    assert all(u.pitch is None for u in cross) and [u.speed for u in cross] == [u.speed for u in test]
    assert [u for u in plan if u.split != "cross"] == plan_corpus(_sentences(), speakers, 0.3, seed=0)


ENGINE_TOOLS = ("espeak-ng", "flite", "festival", "text2wave", "sox")


@pytest.mark.slow
@pytest.mark.skipif(any(shutil.which(t) is None for t in ENGINE_TOOLS), reason="needs espeak-ng, flite, festival, sox")
def test_one_split_end_to_end(tmp_path):
    """flite + festival train the voice-augmented recipe 5 steps on a tiny corpus; espeak-ng is the unseen engine."""
    from benchmarks.generalisation import bench_generalisation

    section = bench_generalisation(["recipes/ctc_char_tiny_mel_voiceaug.yaml"], ["espeak-ng"], tmp_path / "data",
                                   tmp_path / "out", steps=5, hours=0.02, num_jobs=2, command="test")  # fmt: skip
    assert "| `ctc_char_tiny_mel_voiceaug` | espeak-ng | flite + festival |" in section
    corpus = json.loads((tmp_path / "data" / "espeak-ng_unseen_0.02h_seed0" / "corpus.json").read_text())
    assert corpus["engines"] == ["flite", "festival"] and corpus["cross_engine"] == "espeak-ng"
    kept = json.loads((tmp_path / "out" / "ctc_char_tiny_mel_voiceaug" / "espeak-ng_unseen" / "generalisation.json").read_text())
    assert kept["result"]["steps"] == 5 and kept["result"]["unseen_utterances"] >= 1
