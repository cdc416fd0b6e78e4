"""torch.compile on CPU (issue 31, item 6): encoder inference at a fixed integer profile is one graph (no graph
break) for every front end, inductor matches eager within 1e-4, a training step compiles, and stochastic
draws reuse the compiled blocks instead of recompiling every step."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from nemo_sew.encoder import build_encoder
from nemo_sew.profile import CompressionProfile


def _inputs(enc, seconds: float = 1.0):
    x = torch.randn(2, enc.layout.feat_in, enc.layout.length(seconds))
    return x, torch.tensor([x.shape[-1], x.shape[-1] * 2 // 3])


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("preset", ["tiny_wfe_o", "tiny_wfe_c", "tiny_mel", "tiny_mel_conformer"])
def test_the_whole_encoder_is_one_graph_at_an_integer_profile(preset, training):
    enc = build_encoder(preset, num_layers=2).train(training)
    enc.set_profile(CompressionProfile(squeeze=2.0))
    x, lengths = _inputs(enc)
    explained = torch._dynamo.explain(lambda a, b: enc.run(a, b).hidden)(x, lengths)
    reasons = [b.reason.splitlines()[0] + f" at {b.user_stack[-1]}" for b in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons


def test_inductor_matches_eager():
    enc = build_encoder("tiny_mel_conformer", num_layers=2).eval()
    enc.set_profile(CompressionProfile(squeeze=2.0))
    x, lengths = _inputs(enc, 2.0)
    with torch.no_grad():
        ref = enc.run(x, lengths).hidden
        compiled = torch.compile(lambda a, b: enc.run(a, b).hidden, fullgraph=True)
        out = compiled(x, lengths)
    assert float((out - ref).abs().max()) < 1e-4


def test_compiled_training_step_matches_eager():
    torch.manual_seed(0)
    eager = build_encoder("tiny_mel_conformer", num_layers=2, dropout={"hidden": 0.0, "attention": 0.0}).train()
    compiled = build_encoder("tiny_mel_conformer", num_layers=2, dropout={"hidden": 0.0, "attention": 0.0}).train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_blocks(backend="aot_eager", fullgraph=True)  # autograd through AOT, without inductor's C++ build
    x, lengths = _inputs(eager)
    for enc in (eager, compiled):
        enc.run(x, lengths).hidden.pow(2).mean().backward()
    worst = max(float((a.grad - b.grad).abs().max()) for a, b in zip(eager.parameters(), compiled.parameters()))
    assert worst < 1e-5


def test_stochastic_draws_reuse_the_compiled_blocks():
    """Integer and CIF factors change the blocks' input length only: after the first length change it is a
    dynamic dimension, and no later draw recompiles."""
    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"squeeze": {"low": 1.0, "high": 4.0}}).train()
    counter = CompileCounter()
    enc.compile_blocks(backend=counter, fullgraph=True)
    x, lengths = _inputs(enc, 2.0)
    frames = []
    for step in range(12):
        enc.run(x, lengths, enc.draw(step)).hidden.sum().backward()
        frames.append(counter.frame_count)
    assert len({round(float(enc.draw(s).profile.squeeze), 3) for s in range(12)}) == 12  # 12 different factors
    assert frames[-1] <= 2 and frames[2:] == [frames[-1]] * 10, frames
