"""The ONNX parity check must look at every valid output value (issue 30, item 1).

``check_parity`` is what tells a user an exported graph computes what the PyTorch model computes. A check that
looks at too little of the output (the first batch item only, all but the last valid frame, a channel average,
the first item's ``encoded_len``) would pass a wrong graph. Each test corrupts a correct export in ONE place, by
appending ops to the ONNX graph that add a small offset at a single position chosen from the graph's own shapes
and lengths (so it follows every batch the check runs), and asserts the check fails. A difference confined to
padding frames is not an error: the docstring says padding frames are not specified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from nemo_sew.encoder import build_encoder
from nemo_sew.export.onnx import TOLERANCE, ParityError, check_parity, export_onnx

SECONDS = (0.5, 3.0)  # long batches the check always runs (keeps the test fast; the item padded to 3/4 is last)
DELTA = 10 * TOLERANCE["fp32"]  # small, but ten times the fp32 tolerance


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    encoder = build_encoder("tiny_mel", num_layers=2).eval()
    path = tmp_path_factory.mktemp("parity") / "enc.onnx"
    export_onnx(encoder, path, profile={"squeeze": 2}, check=False)
    return encoder, path


def _const(name: str, value: int | list[int], dtype=TensorProto.INT64) -> onnx.NodeProto:
    dims = [] if isinstance(value, int) else [len(value)]
    vals = [value] if isinstance(value, int) else value
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, dims, vals))


def _corrupt(
    src: Path,
    dst: Path,
    item: int = -1,
    frame: str = "last_valid",
    channel: int | None = None,
    delta: float = DELTA,
    length_offset: int = 0,
) -> Path:
    """Copy ``src`` to ``dst`` with ``delta`` added to ``encoded[item, channel (all if None), frame]`` and
    ``length_offset`` added to ``encoded_len[item]``.

    ``item``: a batch index (negative counts from the end, so -1 is the last item whatever the batch size; an
    index past the batch, e.g. 1 in a batch of one, changes nothing in that batch).
    ``frame``: ``"last_valid"`` (``encoded_len[item] - 1``), ``"first"`` (0) or ``"first_padding"``
    (``encoded_len[item]``: no frame at all when the item fills the batch).
    """
    model = onnx.load(str(src))
    g = model.graph
    enc_name, len_name = g.output[0].name, g.output[1].name
    raw_enc, raw_len = enc_name + "_raw", len_name + "_raw"
    for node in g.node:  # the original graph now writes the *_raw tensors
        node.output[:] = [raw_enc if o == enc_name else raw_len if o == len_name else o for o in node.output]
        node.input[:] = [raw_enc if i == enc_name else raw_len if i == len_name else i for i in node.input]
    n: list[onnx.NodeProto] = [
        _const("c_zero", 0), _const("c_one", 1), _const("c_ax0", [0]), _const("c_ax01", [0, 1]),
        _const("c_ax02", [0, 2]), _const("c_ax12", [1, 2]),
        helper.make_node("Shape", [raw_enc], ["c_shape"]),
        helper.make_node("Gather", ["c_shape", "c_zero"], ["c_B"], axis=0),
        helper.make_node("Gather", ["c_shape", "c_one"], ["c_D"], axis=0),
        _const("c_two", 2),
        helper.make_node("Gather", ["c_shape", "c_two"], ["c_T"], axis=0),
        helper.make_node("Range", ["c_zero", "c_B", "c_one"], ["c_rB"]),
        helper.make_node("Range", ["c_zero", "c_D", "c_one"], ["c_rD"]),
        helper.make_node("Range", ["c_zero", "c_T", "c_one"], ["c_rT"]),
        _const("c_item", item),
    ]
    if item < 0:
        n.append(helper.make_node("Add", ["c_B", "c_item"], ["c_b"]))
    else:
        n.append(helper.make_node("Identity", ["c_item"], ["c_b"]))
    n += [
        helper.make_node("Equal", ["c_rB", "c_b"], ["c_selB"]),  # (B,)
        helper.make_node("Sub", ["c_B", "c_one"], ["c_Bm1"]),
        helper.make_node("Min", ["c_b", "c_Bm1"], ["c_b_in"]),  # an item past the batch selects no frame at all
        helper.make_node("Gather", [raw_len, "c_b_in"], ["c_len_b"], axis=0),  # scalar: the item's valid frames
    ]
    if frame == "last_valid":
        n.append(helper.make_node("Sub", ["c_len_b", "c_one"], ["c_f"]))
    elif frame == "first_padding":
        n.append(helper.make_node("Identity", ["c_len_b"], ["c_f"]))
    elif frame == "first":
        n.append(helper.make_node("Identity", ["c_zero"], ["c_f"]))
    else:
        raise ValueError(frame)
    n += [
        helper.make_node("Equal", ["c_rT", "c_f"], ["c_selT"]),  # (T,)
        helper.make_node("Unsqueeze", ["c_selB", "c_ax12"], ["c_selB3"]),  # (B, 1, 1)
        helper.make_node("Unsqueeze", ["c_selT", "c_ax01"], ["c_selT3"]),  # (1, 1, T)
        helper.make_node("And", ["c_selB3", "c_selT3"], ["c_selBT"]),  # (B, 1, T)
    ]
    if channel is None:
        n.append(helper.make_node("Identity", ["c_selBT"], ["c_sel"]))
    else:
        n += [
            _const("c_chan", channel),
            helper.make_node("Equal", ["c_rD", "c_chan"], ["c_selD"]),
            helper.make_node("Unsqueeze", ["c_selD", "c_ax02"], ["c_selD3"]),  # (1, D, 1)
            helper.make_node("And", ["c_selBT", "c_selD3"], ["c_sel"]),  # (B, D, T)
        ]
    n += [
        helper.make_node("Cast", ["c_sel"], ["c_self"], to=TensorProto.FLOAT),
        helper.make_node("Constant", [], ["c_delta"],
                         value=helper.make_tensor("c_delta", TensorProto.FLOAT, [], [float(delta)])),
        helper.make_node("Mul", ["c_self", "c_delta"], ["c_offset"]),
        helper.make_node("Add", [raw_enc, "c_offset"], [enc_name]),  # broadcasts (B, 1|D, T) to (B, D, T)
        helper.make_node("Cast", ["c_selB"], ["c_selBi"], to=TensorProto.INT64),
        _const("c_lenoff", int(length_offset)),
        helper.make_node("Mul", ["c_selBi", "c_lenoff"], ["c_lendelta"]),
        helper.make_node("Add", [raw_len, "c_lendelta"], [len_name]),
    ]
    g.node.extend(n)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return dst


def _offset_seen(encoder: torch.nn.Module, path: Path, corrupted: Path) -> None:
    """The corruption does what it says on a padded batch: exactly one position (or one frame) changes."""
    x = torch.randn(2, encoder.layout.feat_in, 300)
    lengths = torch.tensor([300, 200])
    feeds = {"audio_signal": x.numpy(), "length": lengths.numpy()}
    good = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    bad = ort.InferenceSession(str(corrupted), providers=["CPUExecutionProvider"]).run(None, feeds)
    diff = np.abs(bad[0] - good[0])
    assert diff.max() == pytest.approx(DELTA, rel=1e-2) and np.count_nonzero(diff > DELTA / 2) >= 1


def test_the_uncorrupted_export_and_a_padding_only_difference_pass(exported, tmp_path):
    """Baseline: the export passes, and so does a graph that differs only on padding frames (not specified)."""
    encoder, path = exported
    check_parity(encoder, path, cases=2, seconds=SECONDS)
    padding_only = _corrupt(path, tmp_path / "pad.onnx", item=-1, frame="first_padding", delta=1.0)
    report = check_parity(encoder, padding_only, cases=2, seconds=SECONDS)
    assert report.passed and report.max_abs_diff < TOLERANCE["fp32"]


@pytest.mark.parametrize("item", [1, -1])
def test_the_last_valid_frame_of_a_later_padded_item_is_checked(exported, tmp_path, item):
    """An offset on only the last valid frame of the second (``item=1``: never the first item of any batch) or the
    last batch item (in the long batches: the one padded to 3/4) fails the check."""
    encoder, path = exported
    bad = _corrupt(path, tmp_path / f"last{item}.onnx", item=item, frame="last_valid")
    _offset_seen(encoder, path, bad)
    with pytest.raises(ParityError, match="differs from PyTorch by max abs"):
        check_parity(encoder, bad, cases=2, seconds=SECONDS)


def test_the_last_valid_frame_of_the_first_item_is_checked(exported, tmp_path):
    encoder, path = exported
    bad = _corrupt(path, tmp_path / "first_item.onnx", item=0, frame="last_valid")
    with pytest.raises(ParityError, match="differs from PyTorch by max abs"):
        check_parity(encoder, bad, cases=2, seconds=SECONDS)


@pytest.mark.parametrize("channel", [0, 5])
def test_one_channel_of_one_frame_is_checked(exported, tmp_path, channel):
    """A single value (one channel of the first frame of the second item) off by 10x the tolerance fails the check."""
    encoder, path = exported
    bad = _corrupt(path, tmp_path / f"chan{channel}.onnx", item=1, frame="first", channel=channel)
    with pytest.raises(ParityError, match="differs from PyTorch by max abs"):
        check_parity(encoder, bad, cases=2, seconds=SECONDS)


@pytest.mark.parametrize("item", [0, 1])
def test_encoded_len_off_by_one_fails(exported, tmp_path, item):
    """``encoded_len`` must match exactly for every item: one more frame for one item fails the check."""
    encoder, path = exported
    for offset in (1, -1):
        bad = _corrupt(path, tmp_path / f"len{item}{offset}.onnx", item=item, frame="first", delta=0.0,
                       length_offset=offset)
        with pytest.raises(ParityError, match="encoded_len differs from PyTorch"):
            check_parity(encoder, bad, cases=2, seconds=SECONDS)


# ---------------------------------------------------------------------------------------------- the batches it runs
# (issue 30 item 2: `make mutation MUTATION_ARGS=export_onnx`): the fast tests above export an encoder graph on
# mel features only; a CTC graph ((B, T, V) output) on waveform and on mel input must pass its own check, over the
# batches the docstrings promise.


@pytest.mark.parametrize(("preset", "rate", "shortest", "longest"), [("tiny_wfe_c", 16000, 0.3, 1.6),
                                                                     ("tiny_mel", 100, 30, 240)])  # fmt: skip
def test_a_ctc_model_passes_its_check_over_the_promised_batches(tmp_path, preset, rate, shortest, longest):
    """Random batches: the first of one item, then 2 to 4 items, padded lengths between the shortest and the longest
    input (0.3 to 1.6 s of waveform, 30 to 240 feature frames, at least what the encoder needs), the longest item
    filling the batch; then per duration of ``seconds`` a batch of that length and one item padded to 3/4 of it."""
    from nemo_sew.quant.model import build_tiny_ctc

    torch.manual_seed(0)
    model = build_tiny_ctc(preset, num_layers=1)
    path = tmp_path / f"{preset}.onnx"
    export_onnx(model, path, check=False)
    report = check_parity(model, path, cases=6, seconds=(0.5, 2.0))
    assert report.passed and report.max_abs_diff <= TOLERANCE["fp32"] and len(report.cases) == 8
    need = model.encoder.min_input_length()
    lo = max(need, int(shortest * 16000)) if rate == 16000 else max(need, shortest)
    hi = max(need, int(longest * 16000)) if rate == 16000 else max(need, longest)
    random, long = report.cases[:6], report.cases[6:]
    assert random[0].batch == 1 and all(2 <= c.batch <= 4 for c in random[1:])
    assert len({c.batch for c in random[1:]}) > 1 and len({c.max_len for c in random}) > 1  # drawn, not fixed
    for c in random:
        assert len(c.lengths) == c.batch and max(c.lengths) == c.max_len and lo <= min(c.lengths) and c.max_len <= hi
    for c, sec in zip(long, (0.5, 2.0)):
        t = max(need, round(sec * rate))
        assert (c.batch, c.max_len, c.lengths) == (2, t, [t, max(need, 3 * t // 4)])
    assert report.to_dict()["cases"][6] == {"batch": 2, "max_len": long[0].max_len, "lengths": long[0].lengths,
                                            "max_abs_diff": long[0].max_abs_diff}  # fmt: skip
    assert check_parity(model, path, cases=6, seconds=(0.5, 2.0)).cases == report.cases  # seeded: the same batches


@pytest.mark.parametrize("rate", [16000.0, 8000.0])
def test_the_random_batches_span_0_3_to_1_6_seconds_at_the_models_input_rate(rate):
    """The short random batches run from 0.3 s to 1.6 s of audio (both ends possible) at the model's own input
    rate, so an 8 kHz model is checked over the same durations as a 16 kHz one; feature input over 30 to 240 frames;
    never below what the encoder needs."""
    import dataclasses

    from nemo_sew.export.onnx import _length_range, _plan

    encoder = build_encoder("tiny_wfe_c", num_layers=1)
    plan = dataclasses.replace(_plan(encoder, True), input_rate=rate)
    need = encoder.min_input_length()
    lo, hi = _length_range(plan)  # hi is exclusive (numpy's integers)
    assert (lo, hi - 1) == (max(need, int(0.3 * rate)), max(need, int(1.6 * rate)))
    mel = _plan(build_encoder("tiny_mel", num_layers=1), True)
    lo, hi = _length_range(mel)
    assert (lo, hi - 1) == (max(mel.encoder.min_input_length(), 30), max(mel.encoder.min_input_length(), 240))
