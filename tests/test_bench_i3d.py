"""``nemo-sew bench i3d`` on the tiny corpus: real training (a few steps per model) of the full-depth, I3D local /
global, iteratively pruned and shallow-from-scratch models; the table rows, the pruned model (layer count,
copied weights, restores and transcribes), and the pictures. About 15 s on 2 idle cores."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import nemo_sew  # noqa: F401
from conftest import TINY_ENCODER

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "model.train_ds.batch_size=4",
    "model.train_ds.num_workers=0",
    "model.validation_ds.num_workers=0",
    *TINY_ENCODER,
    "trainer.limit_val_batches=1",
]
KINDS = ["full", "i3d_local", "i3d_global", "pruned", "scratch"]


def test_cli_parses_bench_i3d():
    from benchmarks.cli import _cmd_bench_i3d
    from nemo_sew.cli import build_parser

    args = build_parser().parse_args(["bench", "i3d", "--corpus-dir", "d", "--steps", "7", "--thresholds", "0.2,0.6",
                                      "--prune-to", "3", "--write", "B.md", "++model.encoder.arch.d_model=64"])  # fmt: skip
    assert args.func is _cmd_bench_i3d
    assert (args.data, args.steps, args.thresholds, args.prune_to, args.write) == ("d", 7, [0.2, 0.6], 3, "B.md")
    assert args.overrides == ["++model.encoder.arch.d_model=64"] and args.prune_finetune_steps == 300
    assert build_parser().parse_args(["bench", "i3d"]).out == "outputs/bench_i3d"


def test_gate_matrix_means_per_layer_and_branch():
    from benchmarks.i3d import gate_matrix

    stats = {"slots": [[0, "attn"], [0, "ffn"], [1, "attn"]], "gate_probs": [[0.2, 1.0, 0.5], [0.4, 0.0, float("nan")]]}
    matrix, branches = gate_matrix(stats)
    assert branches == ["attn", "ffn"]
    assert matrix[0] == pytest.approx([0.3, 0.5]) and matrix[1][0] == pytest.approx(0.5) and math.isnan(matrix[1][1])


def test_bench_i3d_trains_prunes_and_draws(tiny_corpus, tmp_path):
    from nemo.collections.asr.models import ASRModel

    from benchmarks.i3d import bench_i3d_table, drop_layer
    from nemo_sew.evaluate import read_manifest

    out = tmp_path / "bench_i3d"
    section = bench_i3d_table(
        None, out, recipe=ROOT / "recipes" / "ctc_char_tiny_mel.yaml", i3d_recipe=ROOT / "recipes" / "i3d_tiny_mel.yaml",
        steps=2, prune_finetune_steps=2, thresholds=(0.0, 0.5, 1.0), prune_to=1, extra=SMALL, command="nemo-sew bench i3d",
        splits=tiny_corpus,
    )  # fmt: skip
    result = json.loads((out / "bench_i3d.json").read_text())

    # the table: five models, static depths as built, I3D depths realised, MAC savings against full depth
    rows = {r["kind"]: r for r in result["rows"]}
    assert [r["kind"] for r in result["rows"]] == KINDS
    assert [rows[k]["layers"] for k in KINDS] == [2, 2, 2, 1, 1]
    assert rows["pruned"]["steps"] == 2 + 2 and all(rows[k]["steps"] == 2 for k in KINDS if k != "pruned")
    for r in result["rows"]:
        assert math.isfinite(r["wer"]) and math.isfinite(r["cer"]) and r["encoder_gmacs_mean"] > 0
        assert 0 <= r["depth_mean"] <= 2
    assert rows["full"]["mac_saving"] == 0.0 and rows["full"]["depth_mean"] == 2.0
    assert rows["pruned"]["depth_mean"] == 1.0 and rows["pruned"]["mac_saving"] > 0.2
    assert rows["scratch"]["encoder_gmacs_mean"] == pytest.approx(rows["pruned"]["encoder_gmacs_mean"])
    by_threshold = {(r["kind"], r["threshold"]): r for r in result["threshold_rows"]}
    assert len(by_threshold) == 6
    for kind in ("i3d_local", "i3d_global"):
        opened, closed = by_threshold[(kind, 0.0)], by_threshold[(kind, 1.0)]
        assert opened["depth_mean"] == 2.0 and abs(opened["mac_saving"]) < 0.01  # every gate open = full depth
        assert closed["depth_mean"] == 0.0 and closed["mac_saving"] > 0.5
    assert "| full depth (2 layers) | 2 |" in section and "| I3D global | 1 |" in section
    assert "Command: `nemo-sew bench i3d`" in section and "Machine:" in section and "One run each" in section

    # the pruned model: one layer removed by dev CER, fine-tuned, restores with 1 layer and transcribes
    (step,) = result["prune_trace"]
    assert step["removed"] in (0, 1) and set(step["candidates_dev_cer"]) == {"0", "1"}
    assert step["dev_cer_before_finetune"] == min(step["candidates_dev_cer"].values())
    test = read_manifest(tiny_corpus["test"]["manifest"])
    for kind in ("pruned", "scratch"):
        model = ASRModel.restore_from(result["models"][kind], map_location="cpu")
        assert model.encoder.arch.num_layers == 1 and len(model.encoder.layers) == 1
        (hyp,) = model.transcribe([test[0]["audio_filepath"]], batch_size=1, verbose=False)
        assert isinstance(hyp.text if hasattr(hyp, "text") else hyp, str)

    # drop_layer keeps the other layers' weights: equal to the full encoder with that layer cut out
    full = ASRModel.restore_from(result["models"]["full"], map_location="cpu").eval()
    pruned = drop_layer(full, 0)
    assert pruned.encoder.arch.blocks == full.encoder.arch.blocks[1:]
    reference = copy.deepcopy(full.encoder)
    reference.layers = torch.nn.ModuleList(list(reference.layers)[1:])
    x, lengths = torch.randn(2, 80, 120), torch.tensor([120, 90])
    with torch.no_grad():
        torch.testing.assert_close(pruned.encoder.run(x, lengths).hidden, reference.run(x, lengths).hidden)
    with pytest.raises(IndexError):
        drop_layer(full, 2)

    # the pictures and the per-utterance statistics behind them
    for name in ("gates_i3d_local", "gates_i3d_global", "depth_i3d_local", "depth_i3d_global"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for kind in ("i3d_local", "i3d_global"):
        stats = result["utterances"][kind]
        assert len(stats["depth"]) == len(stats["duration"]) == len(test) == result["test_utterances"]
        assert stats["branches"] == ["ffn1", "attn", "conv", "ffn2"] and len(stats["gate_matrix"]) == 2
        assert all(0.0 <= v <= 1.0 for row in stats["gate_matrix"] for v in row)
