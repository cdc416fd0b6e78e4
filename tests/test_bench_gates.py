"""bench gates: fixed gate decisions close the asked fraction of branches, the gated run is cheaper in MACs
and in the counted compute, and the section reports both."""

import torch

from benchmarks.gates import bench_gates, fix_gates, gates_markdown
from nemo_sew.encoder import build_encoder
from nemo_sew.evaluate import count_macs
from nemo_sew.profile import CompressionProfile


def test_fixed_gates_close_the_asked_fraction_for_any_input():
    enc = build_encoder("tiny_conformer", gates={"kind": "local"}).eval()
    closed = fix_gates(enc, 0.5, seed=1)
    assert len(closed) == len(enc.gate_slots) // 2
    x, lengths = torch.randn(2, 1, 16000), torch.tensor([16000, 9000])
    with torch.no_grad():
        stats = enc.run(x, lengths).plain_stats()
    open_slots = {s for s, p in zip(enc.gate_slots, stats["gate_probs"][0]) if p > 0.5}
    assert open_slots == set(enc.gate_slots) - set(closed)
    assert stats["depth"][0] == stats["depth"][1]  # the same for every input
    enc.set_profile(CompressionProfile(depth_threshold=0.0))
    full = count_macs(lambda: enc.run(x[:1], lengths[:1]))
    enc.set_profile(CompressionProfile())
    assert count_macs(lambda: enc.run(x[:1], lengths[:1])) < 0.9 * full


def test_bench_gates_reports_both_savings():
    r = bench_gates("tiny_wfe_c", seconds=1.0, close=0.5, warmup=1, runs=3)
    assert r.closed == 2 and r.branches == 4
    assert 0 < r.gated_gmacs < r.full_gmacs and r.runs == 3
    text = gates_markdown(r, "nemo-sew bench gates --preset tiny_wfe_c")
    assert "MAC saving" in text and "latency saving" in text and "tiny_wfe_c" in text
