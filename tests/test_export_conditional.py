"""ONNX export of I3D gates: one If node per gated branch (local predictors, or the global predictor's gate
subgraph followed by conditional branches); onnxruntime equals eager within 1e-4 on inputs that open and close
different gates, batched and one at a time; a closed branch's nodes never run in onnxruntime (its profiler);
static profiles (gates frozen at their mean decisions) export a fixed graph without predictors or If nodes."""

import json
import re

import numpy as np
import onnx
import pytest
import torch
from test_gates import _encoder, _inputs, _probs, _splitting_threshold

from nemo_sew import CompressionProfile, build_encoder
from nemo_sew.export import export_onnx
from nemo_sew.export.conditional import if_nodes


def _executed_bodies(path, feeds, tmp_path) -> set[tuple[int, str]]:
    """(layer, branch) of every branch body whose nodes onnxruntime executed (from its profiler)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "ort_profile")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(open(session.end_profiling()).read())
    ran = set()
    for e in events:
        m = re.search(r"/layers\.(\d+)/(\w+)/body/", e.get("name", "")) if e.get("cat") == "Node" else None
        if m:
            ran.add((int(m.group(1)), m.group(2)))
    return ran


@pytest.mark.parametrize(("preset", "kind"), [("tiny_mel", "local"), ("tiny_mel", "global"), ("tiny_conformer", "local")])
def test_gated_onnx_has_conditional_branches_and_matches_eager(preset, kind, tmp_path):
    import onnxruntime as ort

    enc = _encoder(preset, kind, num_layers=3).eval()
    x, lengths = _inputs(enc, (1.2, 0.9, 0.6, 0.5))
    threshold = _splitting_threshold(_probs(enc, x, lengths))
    profile = CompressionProfile(depth_threshold=threshold)
    result = export_onnx(enc, tmp_path / "gated.onnx", profile=profile, cases=3)
    assert result.parity.passed and result.metadata["gates"] == "conditional"
    model = onnx.load(str(result.path))
    assert len(if_nodes(model)) == len(enc.gate_slots) == result.metadata["conditional_branches"]
    assert not any(n.domain == "nemo_sew" for n in model.graph.node)  # every marker was rewritten
    # the branch bodies live only inside the If nodes: the main graph has no attention or FFN body node
    assert not [n.name for n in model.graph.node if "/body/" in n.name]
    if kind == "global":  # the gate subgraph runs before every conditional branch
        first_if = next(i for i, n in enumerate(model.graph.node) if n.op_type == "If")
        assert any("gate_predictor" in n.name for n in model.graph.node[:first_if])

    enc.set_profile(profile)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    patterns = set()
    with torch.no_grad():
        for i, n in enumerate(lengths.tolist()):  # one at a time: each item's own gates
            xi, li = x[i : i + 1, :, :n], lengths[i : i + 1]
            out = enc.run(xi, li)
            opened = {slot for slot, p in zip(enc.gate_slots, out.plain_stats()["gate_probs"][0]) if p > threshold}
            patterns.add(frozenset(opened))
            feeds = {"audio_signal": xi.numpy(), "length": li.numpy()}
            got = session.run(None, feeds)[0]
            assert np.abs(got - out.hidden.transpose(1, 2).numpy()).max() <= 1e-4
            assert _executed_bodies(result.path, feeds, tmp_path) == opened  # closed branches are skipped
        # a padded batch with mixed gates: a branch runs when any row needs it, masked per row
        batched = enc.run(x, lengths)
        got = session.run(None, {"audio_signal": x.numpy(), "length": lengths.numpy()})[0]
        ref = batched.hidden.transpose(1, 2).numpy()
        for i, t in enumerate(enc.output_lengths(lengths).tolist()):
            assert np.abs(got[i, :, :t] - ref[i, :, :t]).max() <= 1e-4
    assert len(patterns) > 1, "the inputs should open different gates"
    assert any(0 < len(p) < len(enc.gate_slots) for p in patterns)


def test_ungated_export_has_no_conditionals(tmp_path):
    enc = build_encoder("tiny_mel", num_layers=2).eval()
    result = export_onnx(enc, tmp_path / "plain.onnx", cases=1)
    assert not if_nodes(onnx.load(str(result.path))) and "gates" not in result.metadata


@pytest.mark.parametrize("kind", ["local", "global"])
def test_static_profile_freezes_the_mean_decisions(kind, tmp_path):
    """A static profile: gates frozen at their mean decisions; eager runs it without predictors, the ONNX graph
    has neither If nodes nor predictors, fp16 works, and parity holds."""
    from nemo_sew.export.static_gates import freeze_gates, gate_open_rates

    enc = _encoder("tiny_mel", kind, num_layers=3).eval()
    x, lengths = _inputs(enc, (1.2, 0.9, 0.6, 0.5))
    threshold = _splitting_threshold(_probs(enc, x, lengths))
    base = CompressionProfile(depth_threshold=threshold, name="t")
    batches = [(x[i : i + 1, :, :n], lengths[i : i + 1]) for i, n in enumerate(lengths.tolist())]
    rates = gate_open_rates(enc, batches, profile=base)
    static = freeze_gates(enc, batches, profile=base)
    assert static.name == "t_static" and set(static.static_gates) == {f"{i}.{b}" for i, b in enc.gate_slots}
    assert static.static_gates == {k: int(r >= 0.5) for k, r in rates.items()}
    assert 0 < sum(static.static_gates.values()) < len(enc.gate_slots)  # a fixed depth between none and all
    assert any(0 < r < 1 for r in rates.values())  # the frozen depth is a real compromise between inputs
    assert CompressionProfile.from_dict(static.to_dict()) == static  # YAML / metadata round trip

    enc.set_profile(static)
    with torch.no_grad():
        out = enc.run(x, lengths)
        expected_depth = sum(v / len(enc.layers[int(k.split(".")[0])].branch_names) for k, v in static.static_gates.items())
        assert out.plain_stats()["depth"] == pytest.approx([expected_depth] * 4)
        # the predictors do not run: poisoning them changes nothing
        for p in (p for n, p in enc.named_parameters() if "gate" in n):
            p.data.fill_(float("nan"))  # the predictors must not run at all
        torch.testing.assert_close(enc.run(x, lengths).hidden, out.hidden)
    result = export_onnx(enc, tmp_path / "static.onnx", profile=static, cases=2)
    model = onnx.load(str(result.path))
    assert result.metadata["gates"] == "static" and not if_nodes(model)
    assert not [n.name for n in model.graph.node if "gate" in n.name]
    assert result.metadata["profile"]["static_gates"] == static.static_gates
    fp16 = export_onnx(enc, tmp_path / "static16.onnx", profile=static, cases=1, precision="fp16")
    assert fp16.parity.passed
    with pytest.raises(NotImplementedError, match="fp16"):
        export_onnx(enc, tmp_path / "dyn16.onnx", profile=base, precision="fp16")
    with pytest.raises(ValueError, match="unknown gates"):
        enc.set_profile(CompressionProfile(static_gates={"9.attn": 0}))


@pytest.mark.slow
def test_cli_exports_each_profile_and_its_static_twin(tiny_corpus, tmp_path, capsys):
    """``nemo-sew export --static-gates MANIFEST``: ``t.onnx`` (If branches) and ``t_static.onnx`` (gates frozen over
    the manifest), both parity-checked; onnxruntime's transcripts of the If graph equal PyTorch's."""
    import argparse

    from omegaconf import open_dict

    from nemo_sew.export import OnnxCTCRunner, read_metadata
    from nemo_sew.export.cli import register
    from nemo_sew.models.ctc import SqueezeCTCModel
    from nemo_sew.train import load_config

    cfg = load_config("recipes/i3d_tiny_mel.yaml", [
        f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
        f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
        "model.train_ds.num_workers=0", "model.validation_ds.num_workers=0", "model.encoder.gates.init_logit=0.0",
    ])  # fmt: skip
    with open_dict(cfg):
        cfg.model.encoder.arch.update(num_layers=2, d_model=64, blocks={"heads": 2, "head_dim": 32, "ffn_dims": [128, 128], "conv_kernel": 15})
    torch.manual_seed(0)
    model = SqueezeCTCModel(cfg=cfg.model).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "gate" in name and name.endswith("fc2.weight"):
                p.normal_(0.0, 2.0)
    nemo_path = tmp_path / "i3d.nemo"
    model.save_to(str(nemo_path))
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("t: {depth_threshold: 0.5}\n")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "exported"
    manifest = str(tiny_corpus["test"]["manifest"])
    args = parser.parse_args(["export", str(nemo_path), "--profiles", str(profiles), "--out", str(out), "--static-gates", manifest])
    assert args.func(args) == 0
    index = json.loads((out / "export.json").read_text())
    assert set(index["profiles"]) == {"t", "t_static"} and all(e["parity"]["passed"] for e in index["profiles"].values())
    dynamic, static = read_metadata(out / "t.onnx"), read_metadata(out / "t_static.onnx")
    assert dynamic["gates"] == "conditional" and dynamic["conditional_branches"] == len(model.encoder.gate_slots)
    assert static["gates"] == "static" and set(static["profile"]["static_gates"]) == {f"{i}.{b}" for i, b in model.encoder.gate_slots}
    capsys.readouterr()
    files = [json.loads(line)["audio_filepath"] for line in open(manifest)][:3]
    model.encoder.set_profile(CompressionProfile(depth_threshold=0.5))
    expected = [h.text for h in model.transcribe(files, batch_size=2, verbose=False)]
    assert OnnxCTCRunner(out / "t.onnx").transcribe(files, batch_size=2) == expected
