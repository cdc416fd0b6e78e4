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
            opened = {slot for slot, p in zip(enc.gate_slots, out.stats["gate_probs"][0]) if p > threshold}
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
