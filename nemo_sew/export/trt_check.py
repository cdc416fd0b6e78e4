"""Static TensorRT buildability check of an ONNX graph, without TensorRT.

    from nemo_sew.export.trt_check import check_trt
    report = check_trt("exported/s2.onnx")      # or an onnx.ModelProto
    print(report.line())                        # "s2.onnx: builds" / "s2.onnx: refused: <reason>; <reason>"

``trt/build_engines.py --dry-run`` and ``nemo-sew export`` run it on every graph. It reads the graph only (no
TensorRT, no GPU), so it cannot promise a build; it refuses what TensorRT's ONNX parser is documented not to take:

- **float64**: any DOUBLE tensor (graph inputs/outputs, initializers, value_info after shape inference, ``Cast`` /
  ``CastLike`` to DOUBLE, ``Constant`` values, ``dtype`` attributes); TensorRT at best casts DOUBLE down to FLOAT.
  Other tensor types outside TensorRT's list (:data:`TRT10_TYPES`: UINT16, STRING, UINT4, ...) are refused too.
- **operators**: every op of the standard domain (``""`` / ``ai.onnx``) must be in the parser's support matrix
  (:data:`TRT10_ONNX_OPS`); ops of other domains (``com.microsoft.MatMulNBits``, our ``nemo_sew`` gate marker, ...)
  are onnxruntime-only or custom ops and are refused with their domain.
- **data-dependent output shapes**: ``NonZero``, ``Unique``, ``Compress``, ``NonMaxSuppression`` always; and ops
  whose output size comes from an operand (:data:`SIZE_OPERANDS`: the ``limit`` of ``Range``, the ``shape`` of
  ``Reshape`` / ``Expand`` / ``ConstantOfShape``, ``Slice`` bounds, ``Pad`` pads, ``TopK``'s ``K``, ...) computed
  from the *values* of a graph input (e.g. ``length``). A small taint analysis decides: initializers, constants
  and ``Shape`` / ``Size`` outputs are shape-derived (their values follow from the declared dims); anything
  computed from a graph input's values, not through ``Shape``, is value-derived. ``length`` feeding masks (through
  comparisons) is fine; only size operands matter. Dims declared dynamic by name (``dim_param``) are fine.
- **sub-byte weights**: an INT4 (UINT4, INT2, ...) ``DequantizeLinear`` must dequantize an initializer and feed
  ``MatMul`` / ``Gemm`` directly (``Identity`` is looked through; ``Transpose`` / ``Reshape`` of the dequantized
  weight, or a ``Conv``, is refused): TensorRT documents INT4 as block-wise weight-only quantization of
  MatMul/Gemm weights. Q/DQ zero-points must be 0 (the operator matrix says so).
- **notes** (not refusals): an INT8/FP8 ``DequantizeLinear`` feeding an op TensorRT does not fuse a DQ into
  (:data:`QDQ_FUSIBLE`, a rough summary of TensorRT's Q/DQ placement guidance), INT4 scales that are not
  block-wise, UINT8 inside the graph, an opset above the one the operator matrix names.

Every check recurses into subgraphs (``If`` branches, ``Loop`` / ``Scan`` bodies); a finding there names its path,
e.g. ``If 'gate_3'.then_branch: initializer 'w'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

# TensorRT's ONNX parser operator support matrix: the operator names of docs/operators.md in the public repository
# onnx/onnx-tensorrt, tag release/10.1-GA (branch 10.1-GA, commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c, "ONNX-
# TensorRT 10.1 GA release", 2024-06-17; the newest 10.x operators.md available here; its header says "TensorRT 10.0
# supports operators in the inclusive range of opset 9 to opset 20"). Names only; the per-op restrictions of the
# matrix (types, initializer-only inputs, ...) are not encoded, except the Q/DQ zero-points.
TRT10_ONNX_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
    Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear
    Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
    GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization
    Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
    ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid
    Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
    ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)
# the rows of the same matrix marked "N" (not supported)
TRT10_ONNX_UNSUPPORTED: frozenset[str] = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow CenterCropPad Col2Im
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
    OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch SequenceAt SequenceConstruct
    SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence
    STFT StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)
TRT10_MAX_OPSET = 20
"""The highest opset the 10.x operator matrix names (a note, not a refusal: later 10.x parsers read newer opsets)."""
# the data types listed in the same document ("DOUBLE, FLOAT32, FLOAT16, BFLOAT16, INT32, INT64, FP8, INT8, INT4,
# UINT8, and BOOL"); DOUBLE is refused separately, UINT8 only as network input or output
TRT10_TYPES: frozenset[int] = frozenset(
    {
        TensorProto.DOUBLE, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32,
        TensorProto.INT64, TensorProto.FLOAT8E4M3FN, TensorProto.INT8, TensorProto.INT4, TensorProto.UINT8,
        TensorProto.BOOL,
    }
)  # fmt: skip
TARGETS: dict[str, tuple[frozenset[str], frozenset[str], int, frozenset[int]]] = {
    "10.x": (TRT10_ONNX_OPS, TRT10_ONNX_UNSUPPORTED, TRT10_MAX_OPSET, TRT10_TYPES),
}
STANDARD_DOMAINS = ("", "ai.onnx")

DATA_DEPENDENT_OPS: frozenset[str] = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})
"""Ops whose output size always depends on their input values."""
SIZE_OPERANDS: dict[str, tuple[tuple[int, str], ...]] = {
    "Range": ((0, "start"), (1, "limit"), (2, "delta")),
    "Reshape": ((1, "shape"),),
    "Expand": ((1, "shape"),),
    "ConstantOfShape": ((0, "shape"),),
    "Tile": ((1, "repeats"),),
    "Slice": ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")),
    "TopK": ((1, "K"),),
    "Resize": ((2, "scales"), (3, "sizes")),
    "Upsample": ((1, "scales"),),
    "Pad": ((1, "pads"), (3, "axes")),
    "OneHot": ((1, "depth"),),
    "Split": ((1, "split"),),
    "Squeeze": ((1, "axes"),),
    "Unsqueeze": ((1, "axes"),),
    "ReduceSum": ((1, "axes"),),
    "ReduceMean": ((1, "axes"),),
    "ReduceMax": ((1, "axes"),),
    "ReduceMin": ((1, "axes"),),
    "ReduceProd": ((1, "axes"),),
    "ReduceL1": ((1, "axes"),),
    "ReduceL2": ((1, "axes"),),
    "ReduceLogSum": ((1, "axes"),),
    "ReduceLogSumExp": ((1, "axes"),),
    "ReduceSumSquare": ((1, "axes"),),
}
"""Per op, the operands (index, ONNX name) whose values decide the output's shape."""
SUB_BYTE_INTS: frozenset[int] = frozenset(
    getattr(TensorProto, n) for n in ("INT4", "UINT4", "INT2", "UINT2") if hasattr(TensorProto, n)
)
INT4_CONSUMERS: frozenset[str] = frozenset({"MatMul", "Gemm"})
QDQ_FUSIBLE: frozenset[str] = frozenset(
    {
        "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "AveragePool", "MaxPool", "GlobalAveragePool",
        "GlobalMaxPool", "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
        "Pad", "Split", "Identity", "QuantizeLinear",
    }
)  # fmt: skip
"""Consumers a ``DequantizeLinear`` is fused into or moved through (weights and inputs of convolutions / matrix
products, residual adds, pooling, data movement); any other consumer gets a note: the DQ may run on its own."""

_EMPTY: frozenset[str] = frozenset()


@dataclass
class TrtReport:
    """What :func:`check_trt` found: ``ok`` when nothing in ``reasons`` refuses the graph (``notes`` never do)."""

    path: str
    ok: bool
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    target: str = "10.x"

    def line(self) -> str:
        """``"<file>: builds"`` or ``"<file>: refused: <reason>; <reason>"``."""
        name = Path(self.path).name
        return f"{name}: builds" if self.ok else f"{name}: refused: " + "; ".join(self.reasons)

    def summary(self) -> str:
        """``"builds"`` or ``"refused: <reason>; ..."`` (the line without the file name)."""
        return "builds" if self.ok else "refused: " + "; ".join(self.reasons)


def _type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else str(elem_type)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def _graphs(graph: onnx.GraphProto, scope: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """``graph`` and every nested subgraph, each with its scope prefix (``""`` for the main graph)."""
    yield scope, graph
    for node in graph.node:
        for attr_name, sub in _subgraphs(node):
            yield from _graphs(sub, f"{scope}{node.op_type} '{_node_name(node)}'.{attr_name}: ")


def _node_name(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _summarise(what: str, items: list[str], limit: int = 4) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return f"{what}: " + ", ".join(items[:limit]) + more


# ---------------------------------------------------------------------------------------------- types


def _value_types(graph: onnx.GraphProto) -> dict[str, int]:
    types: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in graph.initializer:
        types[t.name] = t.data_type
    for st in graph.sparse_initializer:
        types[st.values.name] = st.values.data_type
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.output:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attr.t.data_type
    return types


def _check_types(model: onnx.ModelProto, allowed: frozenset[int], reasons: list[str], notes: list[str]) -> None:
    doubles: list[str] = []  # tensors
    casts: list[str] = []  # nodes making or holding float64, listed first
    others: dict[int, list[str]] = {}
    uint8_inside: list[str] = []
    io = {vi.name for vi in list(model.graph.input) + list(model.graph.output)}
    for scope, graph in _graphs(model.graph):
        inputs = {vi.name for vi in graph.input}
        outputs = {vi.name for vi in graph.output}
        inits = {t.name for t in graph.initializer} | {st.values.name for st in graph.sparse_initializer}
        for name, elem_type in _value_types(graph).items():
            kind = (
                "input" if name in inputs else "output" if name in outputs else "initializer" if name in inits
                else "tensor"
            )  # fmt: skip
            where = f"{scope}{kind} '{name}'"
            if elem_type == TensorProto.DOUBLE:
                doubles.append(where)
            elif elem_type == TensorProto.UINT8 and not (scope == "" and name in io):
                uint8_inside.append(where)
            elif elem_type not in allowed:
                others.setdefault(elem_type, []).append(where)
        for node in graph.node:
            label = f"{scope}{node.op_type} '{_node_name(node)}'"
            for attr in node.attribute:
                if node.op_type in ("Cast", "CastLike") and attr.name == "to" and attr.i == TensorProto.DOUBLE:
                    casts.append(f"{label} to=DOUBLE")
                elif attr.name == "dtype" and attr.type == onnx.AttributeProto.INT and attr.i == TensorProto.DOUBLE:
                    casts.append(f"{label} dtype=DOUBLE")
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.DOUBLE:
                    casts.append(f"{label} {attr.name} is DOUBLE")
                elif attr.type == onnx.AttributeProto.TENSORS:
                    if any(t.data_type == TensorProto.DOUBLE for t in attr.tensors):
                        casts.append(f"{label} {attr.name} holds DOUBLE")
    if casts or doubles:
        reasons.append(
            _summarise(f"float64 (DOUBLE) in {len(casts)} nodes and {len(doubles)} tensors, TensorRT has no float64",
                       casts + doubles)
        )  # fmt: skip
    for elem_type, where in sorted(others.items()):
        reasons.append(_summarise(f"tensor type {_type_name(elem_type)} is not a TensorRT type", where))
    if uint8_inside:
        notes.append(_summarise("UINT8 inside the graph (TensorRT takes UINT8 only as network input/output)",
                                uint8_inside))  # fmt: skip


# ---------------------------------------------------------------------------------------------- operators


def _check_ops(model: onnx.ModelProto, ops: frozenset[str], unsupported: frozenset[str], target: str,
               reasons: list[str]) -> None:  # fmt: skip
    missing: dict[str, list[str]] = {}
    foreign: dict[tuple[str, str], list[str]] = {}
    for scope, graph in _graphs(model.graph):
        for node in graph.node:
            where = f"{scope}'{_node_name(node)}'"
            if node.domain in STANDARD_DOMAINS:
                if node.op_type in unsupported or node.op_type not in ops:
                    missing.setdefault(node.op_type, []).append(where)
            else:
                foreign.setdefault((node.domain, node.op_type), []).append(where)
    for op, where in sorted(missing.items()):
        listed = "marked unsupported" if op in unsupported else "not listed"
        reasons.append(_summarise(f"op {op} is {listed} in TensorRT {target}'s ONNX operator matrix", where))
    for (domain, op), where in sorted(foreign.items()):
        reasons.append(
            _summarise(f"op {domain}.{op} is in domain '{domain}', not ONNX's standard one (onnxruntime-only or a "
                       "custom op; TensorRT would need a plugin)", where)
        )  # fmt: skip


# ---------------------------------------------------------------------------------------------- data-dependent shapes


class _Taint:
    """Which graph inputs' *values* each tensor is computed from (empty: shape-derived or constant)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.of: dict[str, frozenset[str]] = {}
        self.findings: list[str] = []
        inits = {t.name for t in model.graph.initializer}
        for vi in model.graph.input:
            if vi.name not in inits:  # an input with an initializer default is still an input, but ours have none
                self.of[vi.name] = frozenset({vi.name})
        self.run(model.graph, "")

    def get(self, name: str) -> frozenset[str]:
        return self.of.get(name, _EMPTY) if name else _EMPTY

    def union(self, names: Any) -> frozenset[str]:
        out: frozenset[str] = _EMPTY
        for n in names:
            out = out | self.get(n)
        return out

    def flag(self, scope: str, node: onnx.NodeProto, what: str) -> None:
        self.findings.append(f"data-dependent output shape: {scope}{node.op_type} '{_node_name(node)}' {what}")

    def run(self, graph: onnx.GraphProto, scope: str) -> None:
        for t in list(graph.initializer) + [st.values for st in graph.sparse_initializer]:
            self.of[t.name] = _EMPTY
        for node in graph.node:
            self.node(node, scope)

    def node(self, node: onnx.NodeProto, scope: str) -> None:
        op = node.op_type if node.domain in STANDARD_DOMAINS else f"{node.domain}.{node.op_type}"
        if op in DATA_DEPENDENT_OPS:
            self.flag(scope, node, "(its output size depends on its input values)")
        for index, operand in SIZE_OPERANDS.get(op, ()):
            if index < len(node.input):
                sources = self.get(node.input[index])
                if sources:
                    self.flag(scope, node, f"{operand} comes from the values of input {', '.join(sorted(sources))}")
        label = f"{scope}{node.op_type} '{_node_name(node)}'"
        subs = dict(_subgraphs(node))
        if op in ("Shape", "Size", "Constant"):
            outs = [_EMPTY] * len(node.output)
        elif op == "If" and "then_branch" in subs and "else_branch" in subs:
            cond = self.get(node.input[0])
            branches = []
            for name in ("then_branch", "else_branch"):
                self.run(subs[name], f"{label}.{name}: ")
                branches.append([self.get(o.name) for o in subs[name].output])
            outs = [cond | a | b for a, b in zip(*branches)]
        elif op == "Loop" and "body" in subs:
            outs = self._loop(node, subs["body"], scope, f"{label}.body: ")
        elif op == "Scan" and "body" in subs:
            body = subs["body"]
            for formal, actual in zip(body.input, node.input):
                self.of[formal.name] = self.get(actual)
            self.run(body, f"{label}.body: ")
            everything = self.union(node.input) | self.union(o.name for o in body.output)
            outs = [everything] * len(node.output)
        else:
            # outer-scope names read inside any other subgraph count as inputs too
            read = self.union(node.input)
            for name, sub in subs.items():
                self.run(sub, f"{label}.{name}: ")
                read = read | self.union(o.name for o in sub.output)
            outs = [read] * len(node.output)
        for name, taint in zip(node.output, outs):
            if name:
                self.of[name] = taint

    def _loop(self, node: onnx.NodeProto, body: onnx.GraphProto, scope: str, inner: str) -> list[frozenset[str]]:
        trip = self.get(node.input[0]) if node.input else _EMPTY
        cond = self.get(node.input[1]) if len(node.input) > 1 else _EMPTY
        initial = [self.get(n) for n in node.input[2:]]
        carried = len(initial)
        state = list(initial)
        for _ in range(2):  # the second pass feeds the body's carried outputs back to its inputs
            formals = [vi.name for vi in body.input]
            for formal, taint in zip(formals, [trip, cond, *state]):
                self.of[formal] = taint
            self.run(body, inner)
            outs = [self.get(o.name) for o in body.output]
            state = [a | b for a, b in zip(initial, outs[1 : 1 + carried])]
        scans = outs[1 + carried :]
        if scans and (trip or cond):
            how, sources = "trip count" if trip else "condition", ", ".join(sorted(trip | cond))
            self.flag(scope, node, f"(scan outputs) {how} comes from the values of input {sources}")
        return state + [trip | cond | s for s in scans]


# ---------------------------------------------------------------------------------------------- quantization


def _constants(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in STANDARD_DOMAINS and node.output:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    out[node.output[0]] = attr.t
    return out


def _all_zero(t: TensorProto) -> bool | None:
    try:
        return not bool(np.any(numpy_helper.to_array(t).astype(np.float32) != 0))
    except Exception:  # a type numpy cannot hold, external data not loaded: unknown
        return None


def _check_qdq(model: onnx.ModelProto, reasons: list[str], notes: list[str]) -> None:
    consts: dict[str, TensorProto] = {}
    types: dict[str, int] = {}
    for _, graph in _graphs(model.graph):
        types.update(_value_types(graph))
        consts.update(_constants(graph))  # names are unique across scopes in a valid model
    zero_points: list[str] = []
    activations: dict[str, list[str]] = {}  # sub-byte type -> DQ nodes reading a non-constant
    placement: dict[str, list[str]] = {}  # sub-byte type -> "DQ -> consumer"
    not_blocked: dict[str, list[str]] = {}  # sub-byte type -> DQ nodes without block_size
    unfused: list[str] = []
    for scope, graph in _graphs(model.graph):
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
            for _, sub in _subgraphs(node):  # a subgraph reading the tensor: the node consumes it
                for _, g in _graphs(sub):
                    for name in {n for inner in g.node for n in inner.input}:
                        consumers.setdefault(name, []).append(node)
        for node in graph.node:
            if node.domain not in STANDARD_DOMAINS or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                continue
            label = f"{scope}{node.op_type} '{_node_name(node)}'"
            if len(node.input) > 2 and node.input[2] in consts and _all_zero(consts[node.input[2]]) is False:
                zero_points.append(label)
            if node.op_type != "DequantizeLinear":
                continue
            x_type = types.get(node.input[0])
            users = _users(node.output[0], consumers)
            if x_type in SUB_BYTE_INTS:
                kind = _type_name(x_type)
                if node.input[0] not in consts:
                    activations.setdefault(kind, []).append(f"{label} of '{node.input[0]}'")
                bad = [f"{u.op_type} '{_node_name(u)}'" for u in users if u.op_type not in INT4_CONSUMERS]
                if bad or not users:
                    placement.setdefault(kind, []).append(f"{label} -> {', '.join(bad) if bad else 'nothing'}")
                if not next((a.i for a in node.attribute if a.name == "block_size"), 0):
                    not_blocked.setdefault(kind, []).append(label)
            else:
                odd = [f"{u.op_type} '{_node_name(u)}'" for u in users if u.op_type not in QDQ_FUSIBLE]
                if odd:
                    unfused.append(f"{label} -> {', '.join(odd)}")
    if zero_points:
        reasons.append(_summarise("Q/DQ with a non-zero zero-point (TensorRT takes symmetric Q/DQ only)", zero_points))
    for kind, items in sorted(activations.items()):
        reasons.append(_summarise(f"{kind} DequantizeLinear of an activation, not an initializer (TensorRT takes "
                                  f"{kind} only as weight-only quantization)", items))  # fmt: skip
    for kind, items in sorted(placement.items()):
        what = (f"{kind} DequantizeLinear not feeding MatMul/Gemm directly (TensorRT documents {kind} as block-wise "
                "weight-only quantization of MatMul/Gemm weights)")  # fmt: skip
        reasons.append(_summarise(what, items))
    for kind, items in sorted(not_blocked.items()):
        notes.append(_summarise(f"{kind} DequantizeLinear without block_size (per-tensor/per-channel scales; TensorRT "
                                f"documents {kind} weights as block quantization)", items))  # fmt: skip
    if unfused:
        notes.append(_summarise("DequantizeLinear feeding an op TensorRT may not fuse it into", unfused))


def _users(name: str, consumers: dict[str, list[onnx.NodeProto]]) -> list[onnx.NodeProto]:
    """The nodes reading ``name``, looking through ``Identity``."""
    out = []
    for node in consumers.get(name, []):
        if node.op_type == "Identity" and node.domain in STANDARD_DOMAINS:
            out.extend(_users(node.output[0], consumers))
        else:
            out.append(node)
    return out


# ---------------------------------------------------------------------------------------------- entry point


def _target(target: str) -> str:
    major = str(target).split(".")[0]
    key = f"{major}.x"
    if key not in TARGETS:
        raise ValueError(f"no TensorRT operator list for target {target!r}; known: {sorted(TARGETS)}")
    return key


def check_trt(path_or_model: str | Path | onnx.ModelProto, target: str = "10.x") -> TrtReport:
    """Check an ONNX file (or model) against what TensorRT ``target`` builds; see the module docstring.

    Returns a :class:`TrtReport`: ``ok``, one entry in ``reasons`` per refused finding (grouped by rule and op, the
    first few places named), ``notes`` for what TensorRT may handle less well but builds. Raises ValueError for an
    unknown ``target`` (only ``"10.x"`` has an operator list).
    """
    key = _target(target)
    ops, unsupported, max_opset, types = TARGETS[key]
    if isinstance(path_or_model, onnx.ModelProto):
        model, path = path_or_model, path_or_model.graph.name or "<model>"
    else:
        path = str(path_or_model)
        model = onnx.load(path)
    reasons: list[str] = []
    notes: list[str] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False)
    except Exception as e:  # an op without a shape function, a malformed graph: check what is declared
        notes.append(f"shape inference failed ({type(e).__name__}: {e}); checked the declared types only")
        inferred = model
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), None)
    if opset is not None and opset > max_opset:
        notes.append(f"opset {opset} is above {max_opset}, the highest the TensorRT {key} operator matrix names")
    _check_types(inferred, types, reasons, notes)
    _check_ops(inferred, ops, unsupported, key, reasons)
    reasons.extend(dict.fromkeys(_Taint(inferred).findings))
    _check_qdq(inferred, reasons, notes)
    return TrtReport(path=path, ok=not reasons, reasons=reasons, notes=notes, target=key)
