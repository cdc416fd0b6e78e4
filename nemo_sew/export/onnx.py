"""ONNX export per compression profile, with metadata and an onnxruntime parity check.

    from nemo_sew.export import to_onnx
    to_onnx(model, "out/s2.onnx", profile="s2")                     # whole CTC model
    to_onnx(model.encoder, "out/enc.onnx", profile={"squeeze": 2})  # encoder only

The profile is baked into the graph (it decides the squeeze and the pooling strides, which are Python
numbers at trace time): it is set on the encoder for the export and the previous one is restored
after. TorchScript exporter (``dynamo=False``), batch and time axes dynamic, lengths int64. An I3D model's
graph keeps its gates input-dependent with one ``If`` node per gated branch (:mod:`nemo_sew.export.conditional`;
metadata ``gates: conditional``), or, at a profile with ``static_gates``, is a fixed graph (``gates: static``;
:mod:`nemo_sew.export.static_gates`). Graphs:

- **encoder** (a ``SqueezeEncoder``, or a model with ``encoder_only=True``): inputs ``audio_signal
  (B, C, T)`` float32 (``C = 1`` and ``T`` in samples for the waveform front ends, ``C = n_mels`` and ``T``
  in 10 ms frames for ``mel_stack``) and ``length (B,)``; outputs ``encoded (B, D, T')`` float32 and
  ``encoded_len (B,)``.
- **CTC, waveform front end** (a model whose preprocessor is our ``WaveformPreprocessor``, which is in
  the graph): inputs ``audio_signal (B, N)`` float32 samples at the model's sample rate and ``length
  (B,)``; outputs ``logprobs (B, T', V + 1)`` float32 (log-softmax, blank = last index) and
  ``encoded_len (B,)``.
- **CTC, ``mel_stack``** (encoder + CTC head, like NeMo's own CTC export): inputs ``audio_signal (B, n_mels,
  T)`` log-mel features from NeMo's preprocessor (not in the graph: its STFT does not export; the runner
  computes it in PyTorch from ``feature_config``) and ``length (B,)`` frames; outputs as above.

``metadata_props`` (all strings; :func:`read_metadata` parses them): ``graph`` (``ctc`` | ``encoder``),
``input`` (``waveform`` | ``features``), ``profile`` (JSON), ``squeeze``, ``sample_rate``,
``input_rate`` (input frames per second: samples or 10 ms feature frames), ``min_input_length``,
``frontend``, ``feature_config`` (JSON: the model's NeMo preprocessor config, wherever the graph does
not contain the preprocessor), ``vocabulary`` (JSON list, CTC only; blank = ``len(vocabulary)``),
``tokenizer`` (``char`` | ``bpe``), ``precision``, ``opset``, ``nemo_sew_version``; I3D models also ``gates``,
``gate_kind``, ``depth_threshold`` and ``conditional_branches`` (the number of ``If`` nodes).

Precision: ``fp32``, or ``fp16`` (the fp32 graph converted with onnxruntime's float16 converter; inputs and
outputs stay float32, LayerNorm and LogSoftmax stay float32; the graph TensorRT 11 needs for FP16).
Parity tolerances (max abs difference against PyTorch fp32 on valid frames): :data:`TOLERANCE`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import onnx
import torch
from nemo.core.classes.common import is_typecheck_enabled, typecheck
from torch import nn

from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.export.conditional import MARKER_DOMAIN, conditional_branches, node_reads
from nemo_sew.nn.compress import SqueezeCompressor
from nemo_sew.nn.frontend import MaskedInstanceNorm, time_mask
from nemo_sew.nn.ort_ops import ORT_DOMAIN, onnxruntime_contrib_ops
from nemo_sew.preprocessor import WaveformPreprocessor
from nemo_sew.profile import CompressionProfile, ProfileLike, as_profile

log = logging.getLogger("nemo_sew.export")

Precision = Literal["fp32", "fp16"]

TOLERANCE: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2}
"""Max abs difference between onnxruntime (CPU) and PyTorch fp32 on valid output frames, per precision."""

# fp16 graphs keep these ops in fp32 (numerically sensitive; what TensorRT users do with norms and softmax)
FP16_KEEP_FP32_OPS = ("LayerNormalization", "LogSoftmax")


class ParityError(RuntimeError):
    """onnxruntime and PyTorch disagree beyond the tolerance (the message has the numbers)."""


@dataclass
class ParityCase:
    batch: int
    max_len: int
    lengths: list[int]
    max_abs_diff: float


@dataclass
class ParityReport:
    """Result of :func:`check_parity`: the worst case and every case run."""

    precision: str
    tolerance: float
    max_abs_diff: float
    passed: bool
    cases: list[ParityCase] = field(default_factory=list)
    provider: str = "CPUExecutionProvider"
    relative_error: float | None = None  # relative=True: the worst case's mean |diff| / mean |reference|, judged

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class ExportResult:
    path: Path
    metadata: dict[str, Any]
    parity: ParityReport | None


# ------------------------------------------------------------------------------------------------------
# graphs: thin wrappers that call our modules the way NeMo's CTC forward does (no forward swapping)


class _EncoderGraph(nn.Module):
    def __init__(self, encoder: SqueezeEncoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(audio_signal=audio_signal, length=length)  # (B, D, T'), (B,)


class _CTCGraph(nn.Module):
    """preprocessor (waveform models only) -> encoder -> CTC head, as ``EncDecCTCModel.forward`` at inference."""

    def __init__(self, preprocessor: nn.Module | None, encoder: SqueezeEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.preprocessor is not None:
            audio_signal, length = self.preprocessor(input_signal=audio_signal, length=length)  # (B, 1, N)
        encoded, encoded_len = self.encoder(audio_signal=audio_signal, length=length)  # (B, D, T')
        logprobs = self.decoder(encoder_output=encoded)  # (B, T', V + 1)
        return logprobs.float(), encoded_len


@dataclass
class _Plan:
    """What to trace: the wrapper graph, the encoder whose profile is set, and the metadata."""

    graph: nn.Module
    root: nn.Module  # the user's object (training flags restored on it)
    encoder: SqueezeEncoder
    kind: str  # "ctc" | "encoder"
    input_kind: str  # "waveform" | "features"
    channels: int | None  # C of (B, C, T) inputs; None for (B, N) waveform inputs
    sample_rate: int | None
    input_rate: float | None
    extra: dict[str, Any]


def _is_ctc_model(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("preprocessor", "encoder", "decoder", "cfg"))


def _plan(obj: Any, encoder_only: bool) -> _Plan:
    if isinstance(obj, SqueezeEncoder):
        waveform = obj.layout.port == "waveform"
        return _Plan(
            graph=_EncoderGraph(obj), root=obj, encoder=obj, kind="encoder",
            input_kind="waveform" if waveform else "features", channels=obj.layout.feat_in,
            sample_rate=16000 if waveform else None, input_rate=16000.0 if waveform else 100.0, extra={},
        )  # fmt: skip
    if not _is_ctc_model(obj):
        raise TypeError(
            f"expected a SqueezeEncoder or a NeMo CTC model (SqueezeCTCModel[BPE]), got {type(obj).__name__}"
        )
    encoder = obj.encoder
    if not isinstance(encoder, SqueezeEncoder):
        raise TypeError(f"expected the model's encoder to be a nemo_sew SqueezeEncoder, got {type(encoder).__name__}")
    from omegaconf import OmegaConf

    sample_rate = int(obj.cfg.get("sample_rate", 16000))
    waveform_pre = isinstance(obj.preprocessor, WaveformPreprocessor)
    pre_cfg = OmegaConf.to_container(obj.cfg.preprocessor, resolve=True)
    input_rate = float(sample_rate) if waveform_pre else 1.0 / float(pre_cfg.get("window_stride", 0.01))
    # the preprocessor config goes in the metadata wherever the graph does not contain the preprocessor
    extra: dict[str, Any] = {} if waveform_pre and not encoder_only else {"feature_config": json.dumps(pre_cfg)}
    input_kind = "waveform" if waveform_pre else "features"
    if encoder_only:
        graph, kind, channels = _EncoderGraph(encoder), "encoder", encoder.layout.feat_in
    else:
        vocabulary, tokenizer = _vocabulary(obj)
        extra["vocabulary"] = json.dumps(vocabulary, ensure_ascii=False)
        extra["tokenizer"] = tokenizer
        graph, kind = _CTCGraph(obj.preprocessor if waveform_pre else None, encoder, obj.decoder), "ctc"
        channels = None if waveform_pre else encoder.layout.feat_in  # (B, N) waveform or (B, n_mels, T) features
    return _Plan(graph, obj, encoder, kind, input_kind, channels, sample_rate, input_rate, extra)


def _vocabulary(model: Any) -> tuple[list[str], str]:
    """CTC output labels (without the blank, which is the last index) and the tokenizer kind."""
    tokenizer = getattr(model, "tokenizer", None)
    num_classes = int(model.decoder.num_classes_with_blank) - 1
    if tokenizer is not None:
        vocab = [str(t) for t in tokenizer.ids_to_tokens(list(range(num_classes)))]
        kind = "bpe"
    else:
        vocab = [str(t) for t in model.decoder.vocabulary]
        kind = "char"
    if len(vocab) != num_classes:
        raise ValueError(f"expected {num_classes} CTC labels (decoder classes minus blank), got {len(vocab)}")
    return vocab, kind


# ------------------------------------------------------------------------------------------------------
# context helpers: bake the profile in, eval mode, restore everything after


@contextlib.contextmanager
def _export_state(root: nn.Module, encoder: SqueezeEncoder, profile: CompressionProfile | None) -> Iterator[None]:
    previous = encoder.profile
    modes = {m: m.training for m in root.modules()}
    checks = is_typecheck_enabled()
    try:
        if profile is not None:
            encoder.set_profile(profile)
        root.eval()
        typecheck.set_typecheck_enabled(False)  # NeMo's port checks are Python code, not graph ops
        with torch.no_grad():
            yield
    finally:
        typecheck.set_typecheck_enabled(checks)
        for m, mode in modes.items():
            m.training = mode
        encoder.set_profile(previous)


def _resolve_profile(obj: Any, profile: ProfileLike | str | None) -> CompressionProfile | None:
    if profile is None:
        return None
    if isinstance(profile, str):
        if not hasattr(obj, "_resolve_profile"):
            raise ValueError(
                f"a named profile ({profile!r}) needs a model with named profiles; pass a CompressionProfile"
            )
        return obj._resolve_profile(profile)
    return as_profile(profile)


# ------------------------------------------------------------------------------------------------------
# inputs


def _input_shape(plan: _Plan, batch: int, length: int) -> tuple[int, ...]:
    return (batch, length) if plan.channels is None else (batch, plan.channels, length)


def _length_range(plan: _Plan) -> tuple[int, int]:
    """Shortest and longest input lengths used by the parity check (a few seconds at most)."""
    need = plan.encoder.min_input_length()
    if plan.input_kind == "waveform":
        rate = plan.input_rate or 16000.0
        return max(need, int(0.3 * rate)), max(need, int(1.6 * rate)) + 1
    return max(need, 30), max(need, 240) + 1


def _example(plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = _length_range(plan)
    length = (lo + hi) // 2
    gen = torch.Generator().manual_seed(1234)
    x = torch.randn(*_input_shape(plan, 2, length), generator=gen)
    lengths = torch.tensor([length, max(lo, (3 * length) // 4)], dtype=torch.int64)
    return x, lengths


PARITY_SECONDS: tuple[float, ...] = (0.5, 10.0, 25.0, 40.0)
"""Durations the parity check always runs (beside the random short batches): the range users feed, up to 40 s
(LibriSpeech utterances reach 35 s; fp16 graphs used to overflow past 20.47 s of waveform)."""


def _long_cases(plan: _Plan, seconds: Sequence[float], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch of 2 per duration: one item of that length and one padded to 3/4 of it (padding must not leak).
    Audio-like magnitudes: waveforms at 0.1 RMS, features at unit variance."""
    gen = torch.Generator().manual_seed(seed + 7919)
    rate = plan.input_rate or 16000.0
    need = plan.encoder.min_input_length()
    cases = []
    for sec in seconds:
        t = max(need, int(round(sec * rate)))
        lengths = torch.tensor([t, max(need, (3 * t) // 4)], dtype=torch.int64)
        x = torch.randn(*_input_shape(plan, 2, t), generator=gen) * (0.1 if plan.input_kind == "waveform" else 1.0)
        cases.append((x, lengths))
    return cases


def _cases(plan: _Plan, count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random batches: size 1, then random 2..4; random padded lengths; the longest item fills the batch."""
    lo, hi = _length_range(plan)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(count):
        batch = 1 if i == 0 else int(rng.integers(2, 5))
        t = int(rng.integers(lo, hi))
        lengths = rng.integers(lo, t + 1, size=batch)
        lengths[int(rng.integers(0, batch))] = t
        x = torch.randn(*_input_shape(plan, batch, t), generator=gen)
        cases.append((x, torch.from_numpy(lengths.astype(np.int64))))
    return cases


# ------------------------------------------------------------------------------------------------------
# export


def _names(kind: str, input_rank: int) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    outputs = ["logprobs", "encoded_len"] if kind == "ctc" else ["encoded", "encoded_len"]
    time_axis = input_rank - 1
    out_time = 1 if kind == "ctc" else 2
    axes = {
        "audio_signal": {0: "batch", time_axis: "time"},
        "length": {0: "batch"},
        outputs[0]: {0: "batch", out_time: "frames"},
        "encoded_len": {0: "batch"},
    }
    return ["audio_signal", "length"], outputs, axes


def _metadata(plan: _Plan, precision: str, opset: int) -> dict[str, str]:
    import nemo_sew

    meta = {
        "graph": plan.kind,
        "input": plan.input_kind,
        "profile": json.dumps(plan.encoder.profile.to_dict()),
        "squeeze": str(plan.encoder.squeeze),
        "frontend": plan.encoder.arch.frontend.kind,
        "min_input_length": str(plan.encoder.min_input_length()),
        "precision": precision,
        "opset": str(opset),
        "nemo_sew_version": nemo_sew.__version__,
    }
    if plan.sample_rate is not None:
        meta["sample_rate"] = str(plan.sample_rate)
    if plan.input_rate is not None:
        meta["input_rate"] = str(plan.input_rate)
    meta.update(plan.extra)
    return meta


def _gate_metadata(encoder: SqueezeEncoder) -> dict[str, str]:
    """``gates``: ``conditional`` (input-dependent: one ``If`` per gated branch) or ``static`` (frozen by the
    profile's ``static_gates``: a fixed graph without predictors); ``gate_kind``, ``conditional_branches``."""
    profile = encoder.profile
    threshold = encoder.depth_threshold(profile)
    mode = "static" if profile.static_gates is not None else "conditional"
    return {"gates": mode, "gate_kind": encoder.gate_options.kind, "depth_threshold": str(threshold)}


def onnx_scope(module_path: str) -> str:
    """The node-name prefix the TorchScript ONNX exporter gives a module's ops: ``encoder.frontend.blocks.0.norm``
    -> ``/encoder/frontend/blocks.0/norm`` (a container's numbered child stays joined to its name with a dot)."""
    parts: list[str] = []
    for part in module_path.split("."):
        if part.isdigit() and parts:
            parts[-1] += "." + part
        else:
            parts.append(part)
    return "/" + "/".join(parts)


def fp32_scopes(graph: nn.Module, encoder: SqueezeEncoder) -> list[str]:
    """Node-name prefixes of the modules whose ops an fp16 graph keeps in fp32:

    - the masked group norms of the waveform front ends (a frame count and sums over up to 128k frames: past
      65,504 frames, 20.47 s of 16 kHz audio at the first layer's stride 5, fp16 overflows; the output was off
      by ~3 at 22 s and no NaN showed it);
    - the waveform preprocessor's per-utterance normalisation (sums over every sample);
    - a CIF compressor (fractional squeeze, learned weights): segment boundaries are positions up to T / s, which
      fp16's 11-bit mantissa cannot resolve past a few hundred frames (0.03 off at 0.5 s, 4 at 40 s)."""
    cif = encoder.compressor.alpha is not None or not float(encoder.squeeze).is_integer()
    kinds = (MaskedInstanceNorm, WaveformPreprocessor) + ((SqueezeCompressor,) if cif else ())
    return [onnx_scope(name) for name, module in graph.named_modules() if name and isinstance(module, kinds)]


def _to_fp16(model: onnx.ModelProto, keep_fp32_scopes: Sequence[str] = ()) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    prefixes = tuple(f"{scope}/" for scope in keep_fp32_scopes)
    nodes = [n.name for n in model.graph.node if prefixes and n.name.startswith(prefixes)]
    model = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32_OPS),
        node_block_list=nodes,
    )  # fmt: skip
    _drop_fp16_round_trips(model)
    _topological_sort(model.graph)  # the converter appends its input casts at the end
    return model


def _drop_fp16_round_trips(model: onnx.ModelProto) -> None:
    """Remove ``fp32 -> Cast(fp16) -> Cast(fp32)`` round trips the float16 converter leaves between two nodes it
    kept in fp32 (it casts every kept node's outputs to fp16 and its inputs back): without this a chain of kept
    nodes still passes its values through fp16 between the nodes, and a frame count over 65,504 becomes inf.
    The fp32 consumer then reads the fp32 tensor directly; other consumers of the fp16 copy keep it."""
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False).graph
    dtype = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    dtype.update({t.name: t.data_type for t in graph.initializer})
    producer = {out: n for n in graph.node for out in n.output}

    def cast_to(node: onnx.NodeProto) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    rename: dict[str, str] = {}
    for node in graph.node:
        if cast_to(node) != onnx.TensorProto.FLOAT:
            continue
        first = producer.get(node.input[0])
        if first is None or cast_to(first) != onnx.TensorProto.FLOAT16:
            continue
        if dtype.get(first.input[0]) == onnx.TensorProto.FLOAT:
            rename[node.output[0]] = first.input[0]
    if not rename:
        return
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename and name not in outputs:
                node.input[i] = rename[name]
    used = {name for n in graph.node for name in n.input} | outputs
    keep = [n for n in graph.node if not (n.op_type == "Cast" and all(o not in used for o in n.output))]
    while len(keep) != len(graph.node):  # a dropped Cast(fp32) may leave its Cast(fp16) unused
        del graph.node[:]
        graph.node.extend(keep)
        used = {name for n in graph.node for name in n.input} | outputs
        keep = [n for n in graph.node if not (n.op_type == "Cast" and all(o not in used for o in n.output))]


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs (Kahn's algorithm)."""
    producer = {out: i for i, n in enumerate(graph.node) for out in n.output}
    users: dict[int, list[int]] = {i: [] for i in range(len(graph.node))}
    waiting = [0] * len(graph.node)
    for i, n in enumerate(graph.node):
        deps = {producer[name] for name in node_reads(n) if name in producer}  # If branches read outer values
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    queue = [i for i, w in enumerate(waiting) if w == 0]  # a heap: keeps the original order where it can
    order: list[int] = []
    while queue:
        i = heapq.heappop(queue)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(queue, u)
    if len(order) != len(graph.node):
        raise ValueError("cannot sort the ONNX graph: it has a cycle")
    nodes = [onnx.NodeProto.FromString(graph.node[i].SerializeToString()) for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _save(model: onnx.ModelProto, path: Path, metadata: dict[str, str]) -> None:
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def export_onnx(
    model_or_encoder: Any,
    path: str | Path,
    profile: ProfileLike | str | None = None,
    opset: int = 17,
    check: bool = True,
    precision: Precision = "fp32",
    encoder_only: bool = False,
    tolerance: float | None = None,
    cases: int = 4,
    seed: int = 0,
    contrib_ops: bool = False,
) -> ExportResult:
    """Export at ``profile`` to ``path`` and (``check``) verify it against PyTorch; see the module docstring.

    Args:
        model_or_encoder: a :class:`~nemo_sew.SqueezeEncoder` or a NeMo CTC model with one
            (:class:`~nemo_sew.SqueezeCTCModel`, :class:`~nemo_sew.SqueezeCTCModelBPE`).
        profile: baked into the graph: a profile, its fields, a squeeze factor, a model's named profile,
            or None (the active profile).
        encoder_only: for a model, export only its encoder (the model's metadata is kept).
        tolerance: parity tolerance; default :data:`TOLERANCE` of ``precision``.
        cases: random batches in the parity check; ``seed`` makes them reproducible.
        contrib_ops: write onnxruntime's fused CPU operators (``com.microsoft.MultiHeadAttention``; 1x1 front-end
            convs as ``Conv``): the base of the onnxruntime int8 static form (:mod:`nemo_sew.nn.ort_ops`). Such a
            graph runs on onnxruntime only (metadata ``contrib_ops=1``; the TensorRT check refuses it).

    Raises :class:`ParityError` when ``check`` finds a difference above the tolerance (the file stays, so it
    can be inspected).
    """
    if precision not in TOLERANCE:
        raise ValueError(f"expected precision in {sorted(TOLERANCE)}, got {precision!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(model_or_encoder, encoder_only)
    resolved = _resolve_profile(model_or_encoder, profile)
    with _export_state(plan.root, plan.encoder, resolved):
        x, lengths = _example(plan)
        inputs, outputs, axes = _names(plan.kind, x.dim())
        plan.graph.eval()
        gated = plan.encoder.gate_options is not None  # I3D gate mixes are exported as markers, then as If nodes
        if gated and precision == "fp16" and plan.encoder.profile.static_gates is None:
            raise NotImplementedError(
                "fp16 export of input-dependent I3D gates is not supported (onnxruntime's float16 converter "
                "misplaces casts around If subgraphs): export fp32, or a static profile (freeze_gates) in fp16"
            )
        if contrib_ops and precision != "fp32":
            raise ValueError(f"contrib_ops is the onnxruntime CPU int8 base graph (fp32); got precision {precision!r}")
        custom = {**({MARKER_DOMAIN: 1} if gated else {}), **({ORT_DOMAIN: 1} if contrib_ops else {})}
        with onnxruntime_contrib_ops(contrib_ops):
            torch.onnx.export(
                plan.graph, (x, lengths), str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
                opset_version=opset, do_constant_folding=True, dynamo=False,
                **({"custom_opsets": custom} if custom else {}),
            )  # fmt: skip
        metadata = _metadata(plan, precision, opset)
        if contrib_ops:
            metadata["contrib_ops"] = "1"
        scopes = fp32_scopes(plan.graph, plan.encoder)  # at the export's profile (its squeeze)
        gate_meta = _gate_metadata(plan.encoder) if gated else {}
    proto = onnx.load(str(path))
    if gated:
        gate_meta["conditional_branches"] = str(conditional_branches(proto))
        metadata.update(gate_meta)
    if precision == "fp16":
        proto = _to_fp16(proto, scopes)
    _save(proto, path, metadata)
    onnx.checker.check_model(str(path))
    log.info("exported %s (%s graph, %s input, profile %s)", path, plan.kind, plan.input_kind, metadata["profile"])
    report = None
    if check:
        report = check_parity(
            model_or_encoder, path, tolerance=tolerance, cases=cases, seed=seed, encoder_only=encoder_only
        )
    return ExportResult(path=path, metadata=read_metadata(path), parity=report)


def to_onnx(
    model_or_encoder: Any,
    path: str | Path,
    profile: ProfileLike | str | None = None,
    opset: int = 17,
    check: bool = True,
    precision: Precision = "fp32",
    **kwargs: Any,
) -> Path:
    """Export ``model_or_encoder`` at ``profile`` to ONNX and return the path (see :func:`export_onnx`)."""
    return export_onnx(model_or_encoder, path, profile, opset, check, precision, **kwargs).path


# ------------------------------------------------------------------------------------------------------
# metadata and parity


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an exported graph, JSON fields parsed (``profile``, ``vocabulary``, ...)."""
    model = onnx.load(str(path), load_external_data=False)
    return parse_metadata({p.key: p.value for p in model.metadata_props})


def parse_metadata(props: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(props)
    for key in ("profile", "vocabulary", "feature_config"):
        if key in out:
            out[key] = json.loads(out[key])
    for key in ("sample_rate", "min_input_length", "opset", "conditional_branches"):
        if key in out:
            out[key] = int(out[key])
    if "input_rate" in out:
        out["input_rate"] = float(out["input_rate"])
    return out


def _session(path: Path, providers: Sequence[str] | None = None, threads: int | None = None,
             config: dict[str, str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    for key, value in (config or {}).items():  # e.g. session.qdq_matmulnbits_accuracy_level (nemo_sew.quant.onnx)
        options.add_session_config_entry(key, value)
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


def _valid_diffs(ref: torch.Tensor, got: np.ndarray, lengths: torch.Tensor, time_axis: int) -> tuple[float, float]:
    """(max abs difference, mean abs difference / mean abs reference) over the valid frames."""
    got_t = torch.from_numpy(np.asarray(got, dtype=np.float32))
    if tuple(got_t.shape) != tuple(ref.shape):
        return math.inf, math.inf
    mask = time_mask(lengths, ref.shape[time_axis])  # (B, T') True = valid frame
    mask = mask[:, :, None] if time_axis == 1 else mask[:, None, :]
    mask = mask.expand_as(ref)
    if not bool(mask.any()):
        return 0.0, 0.0
    diff = (got_t - ref.float()).abs()[mask]
    scale = ref.float().abs()[mask].mean().clamp_min(1e-12)
    return float(diff.max()), float(diff.mean() / scale)


def check_parity(
    model_or_encoder: Any,
    path: str | Path,
    tolerance: float | None = None,
    cases: int = 4,
    seed: int = 0,
    encoder_only: bool | None = None,
    providers: Sequence[str] | None = None,
    session_config: dict[str, str] | None = None,
    seconds: Sequence[float] = PARITY_SECONDS,
    relative: bool = False,
) -> ParityReport:
    """Run random padded batches through PyTorch (fp32) and onnxruntime; raise :class:`ParityError` above tolerance.

    The profile, the graph kind and the precision are read from the file's metadata, so this checks an
    exported file against the model it came from (or a changed one). Output lengths must match exactly;
    outputs are compared on valid frames only (padding frames are not specified). ``session_config``:
    onnxruntime session config entries (``SessionOptions.add_session_config_entry``). ``seconds``: durations
    always checked beside the ``cases`` random short batches (default :data:`PARITY_SECONDS`, 0.5 to 40 s).
    ``relative``: judge the mean relative error (mean |diff| / mean |reference| on valid frames, worst case) against
    ``tolerance`` instead of the max abs difference: the forms that quantize activations (onnxruntime's int8
    dynamic and int8-compute MatMulNBits) move a few log-probs of a trained model by 0.3-0.7 while decoding the
    same text; the max abs difference is still reported.
    """
    path = Path(path)
    meta = read_metadata(path)
    precision = meta.get("precision", "fp32")
    tol = TOLERANCE[precision] if tolerance is None else float(tolerance)
    if encoder_only is None:
        encoder_only = meta.get("graph") == "encoder"
    plan = _plan(model_or_encoder, encoder_only)
    if plan.kind != meta.get("graph") or plan.input_kind != meta.get("input"):
        raise ValueError(
            f"{path} holds a {meta.get('graph')!r} graph on {meta.get('input')!r} input, but the model gives a "
            f"{plan.kind!r} graph on {plan.input_kind!r} input"
        )
    session = _session(path, providers, config=session_config)
    time_axis = 1 if plan.kind == "ctc" else 2
    report = ParityReport(precision=precision, tolerance=tol, max_abs_diff=0.0, passed=True,
                          provider=session.get_providers()[0])  # fmt: skip
    profile = CompressionProfile.from_dict(meta["profile"]) if "profile" in meta else None
    with _export_state(plan.root, plan.encoder, profile):
        for x, lengths in _cases(plan, cases, seed) + _long_cases(plan, seconds, seed):
            with torch.no_grad():
                ref, ref_len = plan.graph(x, lengths)
            got, got_len = session.run(None, {"audio_signal": x.numpy(), "length": lengths.numpy()})
            if not np.array_equal(np.asarray(got_len), ref_len.numpy()):
                raise ParityError(
                    f"{path}: encoded_len differs from PyTorch for batch {x.shape[0]} x {x.shape[-1]} "
                    f"(lengths {lengths.tolist()}): onnxruntime {np.asarray(got_len).tolist()}, "
                    f"torch {ref_len.tolist()}"
                )
            diff, rel = _valid_diffs(ref, got, ref_len, time_axis)
            report.cases.append(ParityCase(x.shape[0], int(x.shape[-1]), lengths.tolist(), diff))
            report.max_abs_diff = max(report.max_abs_diff, diff)
            if relative:
                report.relative_error = max(report.relative_error or 0.0, rel)
    judged = report.relative_error if relative else report.max_abs_diff
    report.passed = judged <= tol
    if not report.passed:
        worst = max(report.cases, key=lambda c: c.max_abs_diff)
        what = f"mean relative error {judged:.3g}" if relative else f"max abs {report.max_abs_diff:.3g}"
        raise ParityError(
            f"{path}: onnxruntime ({report.provider}, {precision}) differs from PyTorch by {what} on valid frames, "
            f"tolerance {tol:g} (worst max abs: batch {worst.batch}, length {worst.max_len}, lengths {worst.lengths})"
        )
    log.info("parity %s: %s <= %g (%d batches)", path.name, f"mean relative error {judged:.3g}" if relative
             else f"max abs diff {report.max_abs_diff:.3g}", tol, len(report.cases))  # fmt: skip
    return report
