"""ONNX of a quantized encoder or CTC model, in three forms.

* ``qdq`` -- weight-only QDQ (opset 21): each quantized weight is an INT8 (8-bit) or INT4 (4/2/1-bit codes)
  initializer feeding ``DequantizeLinear`` (per output channel: 1-D scales, ``axis``; per group: scales of the
  weight's rank with ``block_size``), then the original consumer. What TensorRT builds strongly typed
  (``trt/build_engines.py --qdq``) and onnxruntime runs on CPU. Parity with the eager (fake-quant / held)
  model: :data:`QDQ_TOLERANCE` (the weights are bit-identical; only fp32 summation order differs).
* ``matmul_nbits`` -- onnxruntime's 4-bit ``MatMulNBits`` (com.microsoft) for every MatMul whose weight is a
  held 4-bit weight with power-of-two groups >= 16, built from *our* codes and scales (``q = code + 8``, the
  op's default zero-point 8), so the weights are exactly the eager ones. (``onnxruntime.quantization``'s
  ``MatMulNBitsQuantizer`` re-quantizes with its own scales -- ``amax / 8`` -- which moves weights that already
  lie on our grid; hand-written packing avoids that.) Convs and the other weights keep QDQ.
  ``accuracy_level=4`` computes with int8 activations (the fast kernel, :data:`ORT_TOLERANCE`), 0 in fp32.
* ``int8_dynamic`` -- ``onnxruntime.quantization.quantize_dynamic`` (int8 weights per channel, int8
  activations quantized per batch, MatMuls only); compared with the int8 eager model at
  :data:`ORT_TOLERANCE` (activation quantization adds error).
* ``int8_static`` -- the fastest CPU form: ``onnxruntime.quantization.quantize_static`` (QDQ; int8 weights per
  channel, uint8 activations with scales calibrated on real utterances: :func:`calibration_feeds`) of every
  ``Conv`` (the front end too) and every weight ``MatMul``, on the graph
  ``export_onnx(..., contrib_ops=True, opset=20)`` writes: attention as onnxruntime's fused
  ``MultiHeadAttention`` (fp32), GELU as one ``Gelu`` node (opset 20; the erf pattern of opset 17 gets split
  by the quantizer's duplicated dequantize and is left unfused). The fp32 graph is checked against the eager
  model first (:data:`~nemo_sew.export.TOLERANCE`, the usual lengths); the quantized graph is compared on the
  calibration utterances themselves (:data:`STATIC_TOLERANCE`, relative error), since random-noise parity
  inputs fall outside speech's calibrated ranges. onnxruntime only (contrib operators).

How the QDQ pass finds the weights (hand-written; no library rewrites existing initializers into QDQ): the
TorchScript exporter folds every parametrized weight into an fp32 initializer, possibly transposed (MatMul)
or sliced (the 1x1 convs run as bmm). Each held weight's dequantized value is matched bit for bit against the
initializers, as is, reshaped or transposed, in the main graph and in the ``If`` branches of I3D gated residuals
(the DequantizeLinear goes into the graph that held the weight); every held weight must be found.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from nemo_sew.errors import UserError
from nemo_sew.export.onnx import ExportResult, check_parity, export_onnx, read_metadata
from nemo_sew.quant.weights import held_weights

log = logging.getLogger("nemo_sew.quant")

Form = Literal["qdq", "matmul_nbits", "int8_dynamic", "int8_static"]
QDQ_OPSET = 21
QDQ_TOLERANCE = 1e-4
ORT_TOLERANCE = {"matmul_nbits": 0.03, "int8_dynamic": 0.03}
"""Mean relative error (mean |diff| / mean |eager| on valid frames, worst batch) vs the eager quantized model, for
the forms that quantize activations (``check_parity(..., relative=True)``). A max abs bound does not fit them: on
the trained demo model int8 dynamic moves single log-probs by up to 0.85 (MatMulNBits 0.61) at a relative error of
0.006 (0.003) while decoding the same text; on tiny random models the relative errors are 0.001-0.003. A broken
graph gives errors of order 1."""
STATIC_TOLERANCE = 0.1
"""``int8_static``: largest mean relative error (mean |graph - eager| / mean |eager| on valid frames) allowed on
a calibration utterance. Measured: 0.008-0.010 on the trained demo model, 0.004 on a tiny gated model; a broken
calibration or graph gives errors of order 1."""
STATIC_OPSET = 20  # the first opset with a Gelu operator
EXACT_QDQ_SESSION = {"session.qdq_matmulnbits_accuracy_level": "0"}
"""onnxruntime fuses ``DequantizeLinear -> MatMul`` into ``MatMulNBits``; at its default accuracy level (4) that
quantizes activations to int8 (fast, not exact). Level 0 keeps fp32 activations: the QDQ parity check uses it,
so :data:`QDQ_TOLERANCE` holds; the default session is the int8-activation fast path (:data:`ORT_TOLERANCE`)."""


@dataclass
class QuantExport:
    path: Path
    form: str
    bits: int
    replaced: list[str] = field(default_factory=list)  # weights turned into QDQ (qdq form)
    parity: Any = None


def _encoder(obj: Any) -> Any:
    return obj.encoder if hasattr(obj, "encoder") and hasattr(obj.encoder, "quant_config") else obj


def _int_tensor(name: str, codes: np.ndarray, bits: int) -> TensorProto:
    if bits == 8:
        return numpy_helper.from_array(codes.astype(np.int8), name)
    # ml_dtypes' int4 (onnx's own dependency) gives raw_data packed two codes per byte; helper.make_tensor
    # would keep one byte per int32_data varint, about 1.5x the packed size on disk.
    return numpy_helper.from_array(codes.astype(np.int8).astype(ml_dtypes.int4), name)


def _graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``graph`` and every subgraph nested in its nodes' attributes (``If`` branches)."""
    out = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                out.extend(_graphs(sub))
    return out


def _consumers(graph: onnx.GraphProto, name: str) -> list[str]:
    """The op types that read ``name`` in ``graph``, looking through Identity / Reshape / Transpose."""
    out, frontier = [], [name]
    while frontier:
        current = frontier.pop()
        for node in graph.node:
            if current in node.input:
                if node.op_type in ("Identity", "Reshape", "Transpose"):
                    frontier.append(node.output[0])
                else:
                    out.append(node.op_type)
    return out


def qdq_weights(proto: onnx.ModelProto, encoder: Any, skip: set[str] = frozenset(), tensorrt: bool = False) -> list[str]:
    """Replace the fp32 initializers holding ``encoder``'s active quantized weights by INT8/INT4 + DQ nodes.

    ``tensorrt``: the layout TensorRT builds (issue 27). A weight read by a MatMul / Gemm keeps its codes (INT4
    block-wise or INT8) but stored in the MatMul's ``(K, N)`` layout, so ``DequantizeLinear`` feeds the MatMul
    directly (``axis=0``, blocks along K; TensorRT's weight-only quantization of matrix multiplies). Any other
    weight (convolutions, the 1x1 convs run as batched matmuls through ``Expand``) takes INT8 codes with one scale
    per output channel where its scales are per channel (TensorRT's INT8 convolution), and otherwise its exact
    dequantized values as a float initializer (fp16 after the fp16 conversion): TensorRT has no INT4 or
    block-scaled convolution. The dequantized weights equal the eager ones either way."""
    bits = encoder.quant_config.active if encoder.quant_config is not None else 16
    if bits == 16:
        raise ValueError("the encoder runs fp weights: set_profile(weight_bits=...) to a held bit width first")
    # fp32 weights sit in initializers or in Constant nodes (what the exporter left unfolded), in the main graph
    # or, for I3D models, inside the ``If`` branches of gated residuals (nemo_sew.export.conditional)
    holders: dict[str, tuple[onnx.GraphProto, Any]] = {}
    for graph in _graphs(proto.graph):
        for t in graph.initializer:
            if t.data_type == TensorProto.FLOAT:
                holders[t.name] = (graph, t)
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                if node.attribute[0].t.data_type == TensorProto.FLOAT and len(node.attribute[0].t.dims) >= 2:
                    holders[node.output[0]] = (graph, node)
    by_bytes: dict[tuple[int, bytes], str] = {}
    for name, (_, h) in holders.items():
        arr = numpy_helper.to_array(h if isinstance(h, TensorProto) else h.attribute[0].t)
        if arr.ndim >= 2:
            by_bytes[(arr.size, np.ascontiguousarray(arr).tobytes())] = name
    new_nodes: dict[int, tuple[onnx.GraphProto, list]] = {}
    replaced = []
    for mod_name, _, held in held_weights(encoder):
        if mod_name in skip:
            continue
        codes, scale = held.codes(bits)
        out = codes.shape[0]
        w2 = held.weight(bits).reshape(out, -1).numpy()  # what the forward reads, as (out, cols)
        found = None
        for transposed, cand in ((False, w2), (True, w2.T)):
            name = by_bytes.get((cand.size, np.ascontiguousarray(cand).tobytes()))
            if name is not None:
                found = (name, transposed)
                break
        if found is None:
            raise ValueError(f"quantized weight {mod_name}.weight was not found among the exported initializers")
        name, transposed = found
        graph, holder = holders.pop(name)
        nodes = new_nodes.setdefault(id(graph), (graph, []))[1]
        target = holder if isinstance(holder, TensorProto) else holder.attribute[0].t
        c2 = codes.reshape(out, -1).numpy()
        s = scale.numpy().astype(np.float32)  # (out, groups)
        base = f"{name}_q{bits}"
        if tensorrt:
            matmul = set(_consumers(graph, name)) <= {"MatMul", "Gemm"} and transposed and len(target.dims) == 2
            if not matmul and s.shape[1] > 1:
                # not a matmul weight and block-scaled: TensorRT has no such conv; exact float weights instead
                graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w2.T if transposed else w2)
                                                                 .reshape(target.dims).astype(np.float32), name))
                (graph.initializer if isinstance(holder, TensorProto) else graph.node).remove(holder)
                replaced.append(f"{mod_name}.weight")
                continue
            if matmul:  # (K, N) codes, blocks along K: DQ -> MatMul with no Transpose between
                graph.initializer.append(_int_tensor(f"{base}_codes", np.ascontiguousarray(c2.T), bits))
                if s.shape[1] == 1:
                    graph.initializer.append(numpy_helper.from_array(s[:, 0], f"{base}_scale"))
                    attrs = {"axis": 1}
                else:
                    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(s.T), f"{base}_scale"))
                    attrs = {"axis": 0, "block_size": c2.shape[1] // s.shape[1]}
                nodes.append(helper.make_node("DequantizeLinear", [f"{base}_codes", f"{base}_scale"], [name],
                                              name=f"{base}_DQ", **attrs))  # fmt: skip
                (graph.initializer if isinstance(holder, TensorProto) else graph.node).remove(holder)
                replaced.append(f"{mod_name}.weight")
                continue
            bits_stored = 8  # a per-channel conv weight: INT8 codes (4-bit codes fit), one scale per channel
        else:
            bits_stored = bits
        graph.initializer.append(_int_tensor(f"{base}_codes", c2, bits_stored))
        attrs: dict[str, int] = {"axis": 0}
        if s.shape[1] == 1:
            graph.initializer.append(numpy_helper.from_array(s[:, 0], f"{base}_scale"))
        else:
            graph.initializer.append(numpy_helper.from_array(s, f"{base}_scale"))
            attrs = {"axis": 1, "block_size": c2.shape[1] // s.shape[1]}
        y = f"{base}_dq"
        nodes.append(helper.make_node("DequantizeLinear", [f"{base}_codes", f"{base}_scale"], [y], name=f"{base}_DQ", **attrs))
        if transposed:
            nodes.append(helper.make_node("Transpose", [y], [f"{y}_t"], name=f"{base}_T", perm=[1, 0]))
            y = f"{y}_t"
        shape = list(target.dims)
        (graph.initializer if isinstance(holder, TensorProto) else graph.node).remove(holder)
        if shape != list(np.shape(w2.T if transposed else w2)):
            graph.initializer.append(numpy_helper.from_array(np.array(shape, dtype=np.int64), f"{base}_shape"))
            nodes.append(helper.make_node("Reshape", [y, f"{base}_shape"], [name], name=f"{base}_R"))
        else:
            nodes.append(helper.make_node("Identity", [y], [name], name=f"{base}_I"))
        replaced.append(f"{mod_name}.weight")
    for graph, nodes in new_nodes.values():
        for i, node in enumerate(nodes):  # producers first, in the graph that held the weight
            graph.node.insert(i, node)
    return replaced


def matmul_nbits_weights(proto: onnx.ModelProto, encoder: Any, accuracy_level: int = 4) -> list[str]:
    """Replace ``MatMul(A, W)`` by ``MatMulNBits`` where ``W`` is a held 4-bit weight (QDQ for the rest)."""
    if encoder.quant_config is None or encoder.quant_config.active != 4:
        raise ValueError("MatMulNBits needs an encoder running held 4-bit weights")
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    by_bytes = {}
    for mod_name, _, held in held_weights(encoder):
        codes, scale = held.codes(4)
        out, cols = codes.shape[0], codes.numel() // codes.shape[0]
        block = cols // scale.shape[1]
        if scale.shape[1] == 1 or block < 16 or block & (block - 1):
            continue  # per-channel fallback or a block MatMulNBits does not take: left to QDQ
        wt = held.weight(4).reshape(out, -1).numpy().T  # (K, N): what MatMul's B holds
        by_bytes[np.ascontiguousarray(wt).tobytes()] = (mod_name, codes.reshape(out, cols).numpy(), scale.numpy(), block)
    replaced = []
    for i, node in enumerate(list(graph.node)):
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        t = inits[node.input[1]]
        key = np.ascontiguousarray(numpy_helper.to_array(t)).tobytes() if len(t.dims) == 2 else None
        if key not in by_bytes:
            continue
        mod_name, c, sc, block = by_bytes.pop(key)
        n, k = c.shape
        u = (c.astype(np.int16) + 8).astype(np.uint8).reshape(n, k // block, block)  # (N, blocks, block)
        packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)  # low nibble first: (N, blocks, block/2)
        base = f"{node.input[1]}_nbits"
        graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_B"),
                                  numpy_helper.from_array(sc.astype(np.float32).reshape(-1), f"{base}_scales")])
        new = helper.make_node("MatMulNBits", [node.input[0], f"{base}_B", f"{base}_scales"], list(node.output),
                               name=f"{base}_MatMulNBits", domain="com.microsoft", K=k, N=n, bits=4, block_size=block,
                               accuracy_level=accuracy_level)  # fmt: skip
        idx = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(idx, new)
        if not any(t.name in n2.input for n2 in graph.node):
            graph.initializer.remove(t)
        replaced.append(f"{mod_name}.weight")
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    replaced_qdq = qdq_weights(proto, encoder, skip={r.removesuffix(".weight") for r in replaced})
    return replaced + replaced_qdq


def constants_to_initializers(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move the fp tensors of ``Constant`` nodes (2+ dims: weights the exporter left unfolded) into initializers,
    where ORT's quantizers look for weights."""
    graph = proto.graph
    for node in list(graph.node):
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            t = node.attribute[0].t
            if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2:
                init = TensorProto()
                init.CopyFrom(t)
                init.name = node.output[0]
                graph.initializer.append(init)
                graph.node.remove(node)
    return proto


CALIBRATION_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def calibration_feeds(
    model_or_encoder: Any, waveforms: Sequence[np.ndarray], encoder_only: bool = False
) -> list[dict[str, np.ndarray]]:
    """The graph's feeds (``audio_signal``, ``length``) for 1-D float waveforms, one utterance per feed: the
    waveform itself where the graph starts at the waveform, else the model's own preprocessor's features (dither
    off, as in transcription). A features encoder alone has no preprocessor: pass its feature feeds directly."""
    import torch

    from nemo_sew.export.onnx import _plan
    from nemo_sew.export.ort import _inference_preprocessor

    plan = _plan(model_or_encoder, encoder_only)
    feeds = []
    for wave in waveforms:
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if plan.input_kind == "waveform":
            x = wave[None, :] if plan.channels is None else wave[None, None, :]
            feeds.append({"audio_signal": x, "length": np.array([wave.size], dtype=np.int64)})
            continue
        pre = getattr(model_or_encoder, "preprocessor", None)
        if pre is None:
            raise UserError("this graph starts at features and the object has no preprocessor: pass feature feeds")
        with _inference_preprocessor(model_or_encoder), torch.inference_mode():
            feats, n = pre(input_signal=torch.from_numpy(wave)[None], length=torch.tensor([wave.size]))
        feeds.append({"audio_signal": feats.float().numpy(), "length": n.to(torch.int64).numpy()})
    return feeds


def _quantize_static(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], method: str) -> None:
    """onnxruntime's static QDQ quantization of every Conv and weight MatMul (see the module docstring)."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    proto = onnx.load(str(src))
    weights = {t.name for t in proto.graph.initializer}
    # MatMuls of two activations (none left after MultiHeadAttention, but local attention keeps its products)
    # stay fp32: quantizing attention scores costs more in quantize/dequantize than it saves
    skip = [n.name for n in proto.graph.node if n.op_type == "MatMul" and not any(i in weights for i in n.input)]
    quantize_static(
        str(src), str(dst), _Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "MatMul"],
        nodes_to_exclude=skip, calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
    )  # fmt: skip


def check_static_error(
    model_or_encoder: Any, path: Path, feeds: Sequence[dict[str, np.ndarray]], tolerance: float, encoder_only: bool
) -> dict[str, Any]:
    """Mean relative error (valid frames) of an ``int8_static`` graph against the eager model on the calibration
    utterances; :class:`~nemo_sew.export.ParityError` above ``tolerance`` or when output lengths differ."""
    import torch

    from nemo_sew.export.onnx import ParityError, _export_state, _plan, _session

    plan = _plan(model_or_encoder, encoder_only)
    session = _session(Path(path), None)
    time_axis = 1 if plan.kind == "ctc" else 2
    errors = []
    with _export_state(plan.root, plan.encoder, None):
        for feed in feeds:
            with torch.no_grad():
                ref, ref_len = plan.graph(torch.from_numpy(feed["audio_signal"]), torch.from_numpy(feed["length"]))
            got, got_len = session.run(None, feed)
            if not np.array_equal(np.asarray(got_len), ref_len.numpy()):
                raise ParityError(f"{path}: encoded_len {np.asarray(got_len).tolist()} != torch {ref_len.tolist()}")
            n = int(ref_len[0])
            r = ref.numpy().take(range(n), axis=time_axis)
            g = np.asarray(got).take(range(n), axis=time_axis)
            errors.append(float(np.abs(g - r).mean() / max(np.abs(r).mean(), 1e-12)))
    worst = max(errors)
    if worst > tolerance:
        raise ParityError(f"{path}: int8_static differs from the eager model by mean relative error {worst:.3g} on "
                          f"a calibration utterance, tolerance {tolerance:g}")  # fmt: skip
    log.info("int8_static %s: mean relative error %.3g (worst %.3g, %d utterances)", path.name,
             float(np.mean(errors)), worst, len(errors))  # fmt: skip
    return {"mean_relative_error": float(np.mean(errors)), "worst_relative_error": worst, "tolerance": tolerance,
            "utterances": len(errors)}  # fmt: skip


def export_quantized_onnx(
    model_or_encoder: Any,
    path: str | Path,
    form: Form = "qdq",
    check: bool = True,
    cases: int = 3,
    encoder_only: bool = False,
    tolerance: float | None = None,
    accuracy_level: int = 4,
    precision: str = "fp32",
    calibration: Sequence[dict[str, np.ndarray]] | None = None,
    calibration_method: str = "minmax",
) -> QuantExport:
    """Export the active quantized profile of a model (or encoder) in ``form``; see the module docstring.

    ``precision="fp16"`` (``qdq`` only): the TensorRT form, fp16 activations (the exporter's fp16 conversion, its
    overflow-prone nodes kept in fp32) and the weight layout of :func:`qdq_weights` with ``tensorrt=True``;
    parity against the eager quantized model within the fp16 tolerance over the whole length range.

    ``accuracy_level`` (``matmul_nbits``): 4 = int8 activations inside ``MatMulNBits`` (the fast CPU kernel),
    0 = fp32 activations (exact: parity within :data:`QDQ_TOLERANCE`).

    ``calibration`` (``int8_static``, required): the graph's feeds for real utterances, one per utterance
    (:func:`calibration_feeds`); ``calibration_method``: ``minmax``, ``percentile`` (99.999) or ``entropy``
    (onnxruntime's calibrators)."""
    from onnx import version_converter

    enc = _encoder(model_or_encoder)
    cfg = enc.quant_config
    bits = cfg.active if cfg is not None else 16
    if bits == 16:
        raise ValueError("the model runs fp weights: set_profile(weight_bits=8/4/2/1) to a held width first")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"expected precision fp32 or fp16, got {precision!r}")
    if precision == "fp16" and form != "qdq":
        raise ValueError(f"precision fp16 is the TensorRT QDQ form; {form!r} is an onnxruntime CPU form (fp32 activations)")
    if form == "matmul_nbits" and bits != 4 or form in ("int8_dynamic", "int8_static") and bits != 8:
        raise ValueError(f"form {form!r} runs {4 if form == 'matmul_nbits' else 8}-bit weights; the model runs {bits}-bit")
    static = form == "int8_static"
    if static and not calibration:
        raise UserError(
            "form int8_static calibrates its activation scales on real utterances: pass calibration= the graph "
            "feeds of some (nemo_sew.quant.onnx.calibration_feeds; the CLI: --calibration MANIFEST)"
        )
    if static and calibration_method not in CALIBRATION_METHODS:
        raise UserError(f"expected calibration_method in {sorted(CALIBRATION_METHODS)}, got {calibration_method!r}")
    path = Path(path)
    fp_path = path.with_name(path.stem + ".dequantized.onnx")
    # int8_static: the contrib-op fp32 graph is checked against the eager model before it is quantized
    base: ExportResult = export_onnx(
        model_or_encoder, fp_path, check=static and check, encoder_only=encoder_only, cases=cases,
        **({"contrib_ops": True, "opset": STATIC_OPSET} if static else {}),
    )  # fmt: skip
    proto = constants_to_initializers(onnx.load(str(fp_path)))
    onnx.save(proto, str(fp_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    result = QuantExport(path=path, form=form, bits=bits)
    if form == "qdq":
        proto = version_converter.convert_version(proto, QDQ_OPSET)
        result.replaced = qdq_weights(proto, enc, tensorrt=precision == "fp16")
        meta["opset"] = str(QDQ_OPSET)
        tol = QDQ_TOLERANCE if tolerance is None else tolerance
        if precision == "fp16":
            from nemo_sew.export.onnx import TOLERANCE, _plan, _to_fp16, fp32_scopes

            proto = _to_fp16(proto, fp32_scopes(_plan(model_or_encoder, encoder_only).graph, enc))
            tol = TOLERANCE["fp16"] if tolerance is None else tolerance
    elif form == "matmul_nbits":
        proto = version_converter.convert_version(proto, QDQ_OPSET)
        meta["opset"] = str(QDQ_OPSET)
        result.replaced = matmul_nbits_weights(proto, enc, accuracy_level)
        tol = (QDQ_TOLERANCE if accuracy_level == 0 else ORT_TOLERANCE[form]) if tolerance is None else tolerance
    elif form == "int8_dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(fp_path), str(path), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
        proto = onnx.load(str(path))
        tol = ORT_TOLERANCE[form] if tolerance is None else tolerance
    elif static:
        _quantize_static(fp_path, path, calibration, calibration_method)
        proto = onnx.load(str(path))
        meta["calibration"] = f"{calibration_method}, {len(calibration)} utterances"
        tol = STATIC_TOLERANCE if tolerance is None else tolerance
    else:
        raise ValueError(f"expected form in ('qdq', 'matmul_nbits', 'int8_dynamic', 'int8_static'), got {form!r}")
    meta.update(quant_form=form, weight_bits=str(bits), precision=precision)
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.save(proto, str(path))
    fp_path.unlink(missing_ok=True)
    if check and static:
        result.parity = check_static_error(model_or_encoder, path, calibration, tol, encoder_only)
    elif check:
        config = EXACT_QDQ_SESSION if form == "qdq" else None
        relative = form == "int8_dynamic" or form == "matmul_nbits" and accuracy_level != 0
        result.parity = check_parity(model_or_encoder, path, tolerance=tol, cases=cases, encoder_only=encoder_only,
                                     session_config=config, relative=relative)  # fmt: skip
    log.info("exported %s (%s, %d-bit)", path, form, bits)
    return result


def initializer_bytes(path: str | Path) -> int:
    """Bytes of a graph's initializers (INT4 packed two per byte)."""
    proto = onnx.load(str(path))
    return sum(len(t.raw_data) or t.ByteSize() for t in proto.graph.initializer)


__all__ = ["QDQ_OPSET", "QDQ_TOLERANCE", "ORT_TOLERANCE", "STATIC_TOLERANCE", "QuantExport", "calibration_feeds",
           "check_static_error", "export_quantized_onnx", "qdq_weights",
           "initializer_bytes", "read_metadata"]  # fmt: skip
