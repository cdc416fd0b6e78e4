"""Conditional I3D branches in ONNX: every gated residual branch becomes an ``If`` node.

The TorchScript exporter records Python control flow as it ran, so a gated encoder is traced on its masked
path: every branch is computed and mixed with its identity, ``g * branch + (1 - g) * skip``
(:func:`nemo_sew.nn.gates.gate_mix`, exported as one ``nemo_sew::GateMix`` marker node). This module rewrites
each marker and the nodes that only that branch uses into::

    open = ReduceMax(gate) > 0.5                      # any row of the batch has the branch open
    out  = If(open, then: branch nodes; g * branch + (1 - g) * skip,
                    else: Identity(skip))

so at batch 1 a closed branch is not computed at all, and in a batch it runs when any row's gate is open and
is masked per row (exactly the eager mix; with 0/1 gates both are exact). The gate predictors stay in the main
graph: for local gates, each one before its own branch; for the global predictor, one gate subgraph that
runs before every conditional branch.

Written by hand: no exporter emits this. ``torch.cond`` through the dynamo exporter would need the whole
encoder (front end, squeeze, masked pooling with data-dependent lengths) under ``torch.export`` with dynamic
shapes, and ``onnxscript``; the marker keeps the TorchScript exporter every other profile uses.
"""

from __future__ import annotations

import onnx
from onnx import helper

MARKER_DOMAIN = "nemo_sew"
MARKER_OP = "GateMix"


def _subgraph_refs(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from its outer scope (recursively through nested subgraphs)."""
    produced = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in node.input if n)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                used |= _subgraph_refs(sub)
        produced.update(node.output)
    return used - produced


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every name ``node`` reads: its inputs and what its subgraphs read from the outer scope."""
    reads = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
            reads |= _subgraph_refs(sub)
    return reads


def _branch_slice(nodes: list[onnx.NodeProto], mix: int, graph_outputs: set[str]) -> list[int]:
    """Indices of the nodes whose only use is the branch output ``nodes[mix].input[1]`` (its exclusive cone)."""
    producer = {out: i for i, n in enumerate(nodes) for out in n.output}
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for name in node_reads(n):
            readers.setdefault(name, set()).add(i)
    gate, out, skip = nodes[mix].input
    cone: set[int] = set()
    stack = [producer[out]] if out in producer else []
    while stack:  # every ancestor of the branch output
        i = stack.pop()
        if i in cone:
            continue
        cone.add(i)
        stack.extend(producer[name] for name in node_reads(nodes[i]) if name in producer)

    def used_outside(i: int) -> bool:
        for name in nodes[i].output:
            if name in graph_outputs:
                return True
            for r in readers.get(name, ()):
                if r == mix:
                    if name in (gate, skip):  # the If's condition and its else branch read these
                        return True
                elif r not in cone:
                    return True
        return False

    changed = True
    while changed:  # drop nodes that something outside the branch also reads, until none is left
        changed = False
        for i in sorted(cone):
            if used_outside(i):
                cone.discard(i)
                changed = True
    return sorted(cone)


def _value_type(graph: onnx.GraphProto, name: str) -> int:
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        if vi.name == name and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type
    return onnx.TensorProto.FLOAT


def conditional_branches(model: onnx.ModelProto) -> int:
    """Rewrite every ``nemo_sew::GateMix`` marker of ``model`` into an ``If`` over its branch (in place).

    Returns the number of conditional branches made. The marker's domain is removed from the opset imports.
    """
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    made = 0
    while True:
        nodes = list(graph.node)
        mix = next((i for i, n in enumerate(nodes) if n.domain == MARKER_DOMAIN and n.op_type == MARKER_OP), None)
        if mix is None:
            break
        k = made
        gate, out, skip = nodes[mix].input
        (result,) = nodes[mix].output
        body_idx = _branch_slice(nodes, mix, graph_outputs)
        body = [nodes[i] for i in body_idx]
        dtype = _value_type(graph, result)
        p = f"/gate_if_{k}"
        then_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in body] + [
            helper.make_node("Constant", [], [f"{p}/shape"], value=helper.make_tensor(f"{p}/shape_v", onnx.TensorProto.INT64, [3], [-1, 1, 1])),
            helper.make_node("Cast", [gate], [f"{p}/g_cast"], to=dtype),
            helper.make_node("Reshape", [f"{p}/g_cast", f"{p}/shape"], [f"{p}/g"]),
            helper.make_node("Constant", [], [f"{p}/one"], value=helper.make_tensor(f"{p}/one_v", dtype, [], [1.0])),
            helper.make_node("Sub", [f"{p}/one", f"{p}/g"], [f"{p}/not_g"]),
            helper.make_node("Mul", [f"{p}/g", out], [f"{p}/g_out"]),
            helper.make_node("Mul", [f"{p}/not_g", skip], [f"{p}/not_g_skip"]),
            helper.make_node("Add", [f"{p}/g_out", f"{p}/not_g_skip"], [f"{p}/then_out"]),
        ]  # fmt: skip
        then_graph = helper.make_graph(
            then_nodes, f"gate_{k}_open", [], [helper.make_tensor_value_info(f"{p}/then_out", dtype, None)]
        )
        else_graph = helper.make_graph(
            [helper.make_node("Identity", [skip], [f"{p}/else_out"])], f"gate_{k}_closed", [],
            [helper.make_tensor_value_info(f"{p}/else_out", dtype, None)],
        )  # fmt: skip
        moved = {name for n in body for name in n.output}
        kept_info = [vi for vi in graph.value_info if vi.name not in moved]
        then_graph.value_info.extend(vi for vi in graph.value_info if vi.name in moved)
        cond = [
            helper.make_node("Cast", [gate], [f"{p}/gate_f"], to=onnx.TensorProto.FLOAT),
            helper.make_node("ReduceMax", [f"{p}/gate_f"], [f"{p}/gate_max"], keepdims=0),
            helper.make_node("Constant", [], [f"{p}/half"], value=helper.make_tensor(f"{p}/half_v", onnx.TensorProto.FLOAT, [], [0.5])),
            helper.make_node("Greater", [f"{p}/gate_max", f"{p}/half"], [f"{p}/any_open"]),
            helper.make_node("If", [f"{p}/any_open"], [result], name=f"{p}/If", then_branch=then_graph, else_branch=else_graph),
        ]  # fmt: skip
        drop = set(body_idx) | {mix}
        new_nodes = [n for i, n in enumerate(nodes[:mix]) if i not in drop] + cond
        new_nodes += [n for i, n in enumerate(nodes[mix + 1 :], start=mix + 1) if i not in drop]
        del graph.node[:]
        graph.node.extend(new_nodes)
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
        made += 1
    for i in reversed(range(len(model.opset_import))):
        if model.opset_import[i].domain == MARKER_DOMAIN:
            del model.opset_import[i]
    return made


def if_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The top-level ``If`` nodes of ``model`` (one per conditional branch)."""
    return [n for n in model.graph.node if n.op_type == "If"]
