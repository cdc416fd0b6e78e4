"""ONNX export per profile: onnxruntime parity, metadata, transcription equal to NeMo's, failing checks, CLI."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from omegaconf import open_dict

import nemo_sew
from nemo_sew import CompressionProfile, SqueezeCTCModel, build_encoder
from nemo_sew.export import (
    TOLERANCE,
    OnnxCTCRunner,
    ParityError,
    TorchCTCRunner,
    check_parity,
    ctc_greedy_decode,
    export_onnx,
    read_metadata,
    to_onnx,
)
from nemo_sew.export.cli import register
from nemo_sew.train import load_config

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "ctc_char_tiny_mel.yaml"
FAMILIES = ["tiny_mel", "tiny_mel_conformer", "tiny_wfe_c", "tiny_wfe_o", "tiny_conformer"]


def _run(path, x, lengths):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"audio_signal": x.numpy(), "length": lengths.numpy()})


# ---------------------------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("preset", FAMILIES)
def test_encoder_parity_every_family(preset, tmp_path):
    enc = build_encoder(preset, num_layers=2).train()  # two blocks keep the family and halve the time
    result = export_onnx(enc, tmp_path / f"{preset}.onnx", profile={"squeeze": enc.compressor.factor}, cases=3)
    report = result.parity
    assert report.passed and report.max_abs_diff <= TOLERANCE["fp32"] == 1e-4
    lengths = {c.max_len for c in report.cases}  # 3 random short batches, then 0.5, 10, 25 and 40 s
    assert {c.batch for c in report.cases} != {1} and len(lengths) >= 5 and max(lengths) >= enc.layout.length(40.0)
    assert enc.training and enc.profile.squeeze is None, "training mode and the profile are restored"

    # I/O contract: dynamic batch and time, int64 lengths
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    (sig, length), outs = session.get_inputs(), session.get_outputs()
    assert (sig.name, length.name, [o.name for o in outs]) == ("audio_signal", "length", ["encoded", "encoded_len"])
    assert isinstance(sig.shape[0], str) and isinstance(sig.shape[2], str) and sig.shape[1] == enc._feat_in
    assert length.type == "tensor(int64)"

    # independent of the checker: a padded batch in onnxruntime equals each item alone in PyTorch
    lengths = [201, 157, 40] if enc.layout.port == "spectrogram" else [20000, 13377, 5120]
    x = torch.randn(len(lengths), enc._feat_in, max(lengths))
    enc.eval()
    got, got_len = _run(result.path, x, torch.tensor(lengths))
    with torch.no_grad():
        for i, n in enumerate(lengths):
            ref, ref_len = enc(audio_signal=x[i : i + 1, :, :n], length=torch.tensor([n]))
            t = int(ref_len)
            assert int(got_len[i]) == t
            np.testing.assert_allclose(got[i, :, :t], ref[0, :, :t].numpy(), atol=1e-4, rtol=0)


def test_fp16_export_within_stated_tolerance(tmp_path):
    enc = build_encoder("tiny_wfe_c")
    result = export_onnx(enc, tmp_path / "fp16.onnx", precision="fp16", cases=2)
    assert result.metadata["precision"] == "fp16"
    assert 0 < result.parity.max_abs_diff <= TOLERANCE["fp16"] == 1e-2
    graph = onnx.load(str(result.path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT, "float32 I/O is kept"
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


@pytest.mark.parametrize("squeeze", [2.0, 1.5], ids=["integer", "cif"])
@pytest.mark.parametrize("preset", ["tiny_wfe_o", "tiny_wfe_c", "tiny_mel"])
def test_fp16_parity_up_to_40_seconds_every_front_end(preset, squeeze, tmp_path):
    """fp16 graphs keep their overflow-prone nodes in fp32 (the waveform group norm's frame count and sums, CIF's
    segment positions): within 1e-2 of eager fp32 at 0.5, 10, 25 and 40 s (before: ~3 off past 20.47 s)."""
    enc = build_encoder(preset, num_layers=2, squeeze_sampler={"squeeze": {"low": 1.0, "high": 4.0}})
    result = export_onnx(enc, tmp_path / "fp16.onnx", profile={"squeeze": squeeze}, precision="fp16", cases=1)
    longest = {c.max_len: c.max_abs_diff for c in result.parity.cases}
    assert max(longest) >= enc.layout.length(40.0)
    assert max(longest.values()) <= TOLERANCE["fp16"] == 1e-2, longest
    graph = onnx.load(str(result.path)).graph
    assert not [n.name for n in graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.DOUBLE]


def test_stochastic_encoder_one_graph_per_profile(tmp_path):
    """Real rates (CIF) and pooling strides are baked in; each graph matches PyTorch at its own profile."""
    enc = build_encoder("tiny_mel", num_layers=2, squeeze_sampler={"squeeze": {"values": [1, 2, 3, 4]}})
    profiles = {
        "s1_5": CompressionProfile(squeeze=1.5),  # regression: CIF boundaries agree with onnxruntime
        "s3_q2": CompressionProfile(squeeze=3, q_pool=(1, 2), kv_pool=(2, 1)),
    }
    frames = {}
    for name, profile in profiles.items():
        result = export_onnx(enc, tmp_path / f"{name}.onnx", profile=profile, cases=3)
        assert result.parity.max_abs_diff <= 1e-4
        assert result.metadata["profile"]["squeeze"] == profile.squeeze
        x, lengths = torch.randn(1, 80, 300), torch.tensor([300])
        frames[name] = int(_run(result.path, x, lengths)[1][0])
    assert enc.profile == CompressionProfile()
    assert frames["s1_5"] == frames["s3_q2"] == 150, "the phase expander brings every profile back to 20 ms"


# ---------------------------------------------------------------------------------------------- CTC model


def _recipe_cfg(tiny_corpus):
    """The tiny-mel char recipe with a small encoder (2 blocks of width 64)."""
    cfg = load_config(
        RECIPE,
        [
            f"model.train_ds.manifest_filepath={tiny_corpus['train']['manifest']}",
            f"model.validation_ds.manifest_filepath={tiny_corpus['dev']['manifest']}",
            "model.train_ds.num_workers=0",
            "model.validation_ds.num_workers=0",
        ],
    )
    with open_dict(cfg):
        cfg.model.encoder.arch.update(
            num_layers=2, d_model=64, blocks={"heads": 2, "head_dim": 32, "ffn_dims": [128, 128], "conv_kernel": 15}
        )
    return cfg


@pytest.fixture(scope="module")
def ctc_model(tiny_corpus):
    cfg = _recipe_cfg(tiny_corpus)
    with open_dict(cfg):
        cfg.model.profiles = {"s2": {"squeeze": 2}, "s2_kv2": {"squeeze": 2, "kv_pool": [2, 2]}}
    torch.manual_seed(0)
    return SqueezeCTCModel(cfg=cfg.model).eval()


@pytest.fixture(scope="module")
def test_files(tiny_corpus):
    entries = [json.loads(x) for x in Path(tiny_corpus["test"]["manifest"]).read_text().splitlines()]
    return [e["audio_filepath"] for e in entries[:5]]


@pytest.fixture(scope="module")
def ctc_onnx(ctc_model, tmp_path_factory):
    return export_onnx(ctc_model, tmp_path_factory.mktemp("ctc") / "s2.onnx", profile="s2")


def test_ctc_export_metadata_and_io(ctc_model, ctc_onnx):
    assert ctc_onnx.parity.passed and ctc_onnx.parity.max_abs_diff <= 1e-4
    meta = read_metadata(ctc_onnx.path)
    assert meta["graph"] == "ctc" and meta["input"] == "features" and meta["frontend"] == "mel_stack"
    assert meta["profile"]["name"] == "s2" and meta["profile"]["squeeze"] == 2.0
    assert meta["vocabulary"] == list(ctc_model.cfg.labels) and meta["tokenizer"] == "char"
    assert meta["sample_rate"] == 16000 and meta["feature_config"]["features"] == 80
    assert meta["nemo_sew_version"] == nemo_sew.__version__
    session = ort.InferenceSession(str(ctc_onnx.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logprobs", "encoded_len"]
    assert session.get_outputs()[0].shape[2] == len(ctc_model.cfg.labels) + 1
    assert session.get_inputs()[0].shape[1] == 80, "mel graphs take NeMo's features (B, n_mels, T)"
    assert ctc_model.cfg.profile.get("name") is None, "exporting a named profile does not change the default"


def test_onnxruntime_transcripts_equal_nemo_transcribe(ctc_model, ctc_onnx, test_files):
    nemo = [h.text for h in ctc_model.transcribe(test_files, batch_size=2, verbose=False)]
    onnx_texts = OnnxCTCRunner(ctc_onnx.path, intra_op_threads=2).transcribe(test_files, batch_size=2)
    torch_texts = TorchCTCRunner(ctc_model, profile="s2").transcribe(test_files, batch_size=2)
    assert any(nemo), "an all-empty comparison would prove nothing"
    assert onnx_texts == nemo
    assert torch_texts == nemo


def test_bpe_model_export_and_transcripts(tiny_corpus, test_files, tmp_path):
    from nemo_sew import SqueezeCTCModelBPE
    from nemo_sew.tokenizer import train_tokenizer

    cfg = _recipe_cfg(tiny_corpus)
    with open_dict(cfg):
        tokenizer_dir = train_tokenizer([tiny_corpus["train"]["manifest"]], tmp_path / "tok", vocab_size=40)
        cfg.model.tokenizer = {"dir": str(tokenizer_dir), "type": "bpe"}
        cfg.model.decoder.num_classes = -1
        cfg.model.decoder.vocabulary = None
        for ds in ("train_ds", "validation_ds", "test_ds"):
            cfg.model[ds].pop("labels")
        cfg.model.pop("labels")
    model = SqueezeCTCModelBPE(cfg=cfg.model).eval()
    result = export_onnx(model, tmp_path / "bpe.onnx", profile=2, cases=2)
    assert result.parity.max_abs_diff <= 1e-4
    vocab = result.metadata["vocabulary"]
    assert result.metadata["tokenizer"] == "bpe" and vocab == model.tokenizer.ids_to_tokens(list(range(40)))
    nemo = [h.text for h in model.transcribe(test_files, batch_size=2, verbose=False)]
    assert any(nemo) and OnnxCTCRunner(result.path).transcribe(test_files, batch_size=2) == nemo


def test_parity_check_fails_on_a_changed_model_or_graph(ctc_model, ctc_onnx, tmp_path):
    weight = ctc_model.decoder.decoder_layers[0].weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(1e-2 * torch.randn_like(weight))
        with pytest.raises(ParityError, match=r"differs from PyTorch by max abs .* tolerance 0.0001"):
            check_parity(ctc_model, ctc_onnx.path, cases=1)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    check_parity(ctc_model, ctc_onnx.path, cases=1)  # restored: passes again

    proto = onnx.load(str(ctc_onnx.path))
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(init).copy()
    array.flat[0] += 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ParityError, match="broken.onnx"):
        check_parity(ctc_model, broken, cases=2)


def test_waveform_ctc_graph_includes_the_preprocessor(ctc_model, tmp_path):
    cfg = ctc_model.cfg.copy()
    with open_dict(cfg):
        cfg.preprocessor = {"_target_": "nemo_sew.WaveformPreprocessor", "sample_rate": 16000, "normalize": True}
        cfg.spec_augment = None
        cfg.encoder = {"_target_": "nemo_sew.SqueezeEncoder", **nemo_sew.encoder_config("tiny_wfe_c")}
        cfg.decoder.feat_in = None
    model = SqueezeCTCModel(cfg=cfg).eval()
    path = to_onnx(model, tmp_path / "wave.onnx", profile=2)
    meta = read_metadata(path)
    assert meta["input"] == "waveform" and "feature_config" not in meta
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()[0].shape) == 2, "waveform graphs take (B, N) samples"
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 23000)]
    assert OnnxCTCRunner(path).transcribe_waveforms(waves) == TorchCTCRunner(model).transcribe_waveforms(waves)


def test_greedy_decode_rules():
    vocab = ["a", "b", " "]
    ids = [[0, 0, 3, 0, 1, 1, 2, 3], [1, 3, 1, 3, 3, 0, 0, 0]]
    logprobs = np.log(np.eye(4)[ids] * 0.9 + 0.025)
    assert ctc_greedy_decode(logprobs, np.array([8, 5]), vocab) == ["aab ", "bb"]
    pieces = ["\u2581he", "llo", "\u2581world", "<unk>", "'"]  # NeMo drops the space before vocabulary punctuation
    bpe = np.log(np.eye(6)[[[0, 5, 1, 1, 2, 3, 4], [3, 3, 5, 5, 0, 0, 0]]] * 0.9 + 0.02)
    assert ctc_greedy_decode(bpe, np.array([7, 4]), pieces, tokenizer="bpe") == ["hello world \u2047'", " \u2047 "]
    with pytest.raises(ValueError, match=r"expected logprobs of shape \(B, T, 4\)"):
        ctc_greedy_decode(logprobs[..., :3], np.array([8, 5]), vocab)


def test_runner_rejects_encoder_graphs(tmp_path):
    path = to_onnx(build_encoder("tiny_wfe_o"), tmp_path / "enc.onnx", check=False)
    with pytest.raises(ValueError, match="expected a CTC graph .* got graph='encoder'"):
        OnnxCTCRunner(path)


# ---------------------------------------------------------------------------------------------- CLI


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_export_one_file_per_profile_and_transcribe(ctc_model, tiny_corpus, tmp_path, capsys):
    nemo_path = tmp_path / "m.nemo"
    ctc_model.save_to(str(nemo_path))
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("s2: {squeeze: 2}\ns2_kv2: {squeeze: 2, kv_pool: [2, 2]}\n")
    out = tmp_path / "exported"
    args = _parse(["export", str(nemo_path), "--profiles", str(profiles), "--out", str(out)])
    assert args.func(args) == 0
    assert sorted(p.name for p in out.glob("*.onnx")) == ["s2.onnx", "s2_kv2.onnx"]
    index = json.loads((out / "export.json").read_text())
    assert set(index["profiles"]) == {"s2", "s2_kv2"} and index["graph"] == "ctc"
    for name, entry in index["profiles"].items():
        assert entry["file"] == f"{name}.onnx" and entry["parity"]["passed"]
        assert entry["parity"]["max_abs_diff"] <= 1e-4
    assert read_metadata(out / "s2_kv2.onnx")["profile"]["kv_pool"] == [2, 2]
    capsys.readouterr()

    manifest = tmp_path / "few.json"
    lines = Path(tiny_corpus["test"]["manifest"]).read_text().splitlines(True)[:3]
    manifest.write_text("".join(lines))
    results = {}
    for backend, model in (("onnxruntime", out / "s2_kv2.onnx"), ("torch", nemo_path)):
        hyp = tmp_path / f"{backend}.jsonl"
        argv = ["transcribe", str(model), "--backend", backend, "--manifest", str(manifest), "--out", str(hyp)]
        argv += ["--batch-size", "2"] + (["--profile", "s2_kv2"] if backend == "torch" else [])
        args = _parse(argv)
        assert args.func(args) == 0
        results[backend] = [json.loads(line) for line in hyp.read_text().splitlines()]
    assert len(results["torch"]) == len(lines) >= 2 and all("text" in r and "pred_text" in r for r in results["torch"])
    assert [r["pred_text"] for r in results["onnxruntime"]] == [r["pred_text"] for r in results["torch"]]

    args = _parse(["transcribe", str(out / "s2.onnx"), "x.wav", "--backend", "torch"])
    with pytest.raises(ValueError, match="the torch backend runs a .nemo model"):
        args.func(args)


def test_onnxruntime_refuses_stereo_and_wrong_rates_like_transcribe_and_silence_is_empty(ctc_onnx, tmp_path):
    """The onnxruntime backend treats odd audio as transcribe() does (README "Bad input")."""
    import numpy as np
    import soundfile as sf

    from manifests.audio import AudioError

    runner = OnnxCTCRunner(ctc_onnx.path, intra_op_threads=2)
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "stereo.wav", rng.standard_normal((16000, 2)) * 0.1, 16000)
    sf.write(tmp_path / "rate8k.wav", rng.standard_normal(8000) * 0.1, 8000)
    sf.write(tmp_path / "silence.wav", np.zeros(40 * 16000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="stereo.wav.*channel"):
        runner.transcribe([tmp_path / "stereo.wav"])
    with pytest.raises(AudioError, match="rate8k.wav.*16000"):
        runner.transcribe([tmp_path / "rate8k.wav"])
    (text,) = runner.transcribe([tmp_path / "silence.wav"])
    assert isinstance(text, str)  # blank-only decodes to a (possibly empty) string, never an error
