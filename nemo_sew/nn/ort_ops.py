"""onnxruntime's fused CPU operators in traced graphs: a backend choice of the export, read by the modules.

The ONNX exporter writes ``scaled_dot_product_attention`` as about 20 standard nodes (scale, ``MatMul``, ``Where``
on the key mask, ``Softmax``, ``MatMul``, transposes). onnxruntime fuses none of that pattern on CPU, and after
static int8 quantization the mask's ``Where`` and the quantize/dequantize pairs around the score products cost
more than the products (sew_tiny, 10 s: 37 of 181 ms in the attention core). Its contrib operator
``com.microsoft.MultiHeadAttention`` computes the same thing in one kernel with a key padding mask.

:func:`onnxruntime_contrib_ops` is the switch :func:`nemo_sew.export.export_onnx` turns on for the onnxruntime
CPU int8 form (``contrib_ops=True``); while it is on *and a graph is being traced*:

* :class:`~nemo_sew.nn.blocks.SelfAttention` with a per-key mask writes ``MultiHeadAttention``
  (:class:`MultiHeadAttentionOp`; per-query masks, i.e. local attention, keep the standard nodes);
* :class:`~nemo_sew.nn.frontend.ConvBlock` writes its 1x1 convs as ``Conv`` (not a batched ``MatMul``), so the
  quantizer makes every front-end conv a ``QLinearConv``.

Graphs written so need onnxruntime (TensorRT and other runtimes have no ``com.microsoft`` domain); the export
records ``contrib_ops`` in the metadata and the static TensorRT check refuses them. Eager code never reads the
switch. Written by hand: torch has no symbolic for onnxruntime's contrib operators.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn.functional as F

ORT_DOMAIN = "com.microsoft"
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("nemo_sew_ort_contrib_ops", default=False)


@contextlib.contextmanager
def onnxruntime_contrib_ops(enabled: bool = True) -> Iterator[None]:
    """Within the block, traced modules write onnxruntime's fused operators (see the module docstring)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def contrib_ops_active() -> bool:
    """True while a graph is traced inside :func:`onnxruntime_contrib_ops`. The tracing test comes first: dynamo
    (torch.compile) folds it to False and never reaches the context variable, which it cannot trace (a graph
    break in every block)."""
    return torch.jit.is_tracing() and _ENABLED.get()


class MultiHeadAttentionOp(torch.autograd.Function):
    """``(B, Tq, inner)`` queries, ``(B, Tk, inner)`` keys and values (after their projections; ``inner = heads * d``), ``(B, Tk)`` bool key
    mask (True = valid) -> the ``(B, Tq, H*d)`` attention context, heads concatenated.

    Eager (and traced) value: ``scaled_dot_product_attention`` with the default ``1/sqrt(d)`` scale; the ONNX
    symbolic: ``com.microsoft.MultiHeadAttention`` (``num_heads``, a zero bias, the mask as an int32
    ``key_padding_mask``), which onnxruntime's CPU kernel supports with this mask shape."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor, heads: int, inner: int) -> torch.Tensor:  # type: ignore[override]  # fmt: skip
        b, tq = q.shape[:2]
        tk, d = k.shape[1], inner // heads

        def split(y: torch.Tensor, t: int) -> torch.Tensor:
            return y.reshape(b, t, heads, d).transpose(1, 2)  # (B, H, T, d)

        y = F.scaled_dot_product_attention(split(q, tq), split(k, tk), split(v, tk), attn_mask=key_mask[:, None, None, :])
        return y.transpose(1, 2).reshape(b, tq, inner)

    @staticmethod
    def symbolic(g, q, k, v, key_mask, heads: int, inner: int):  # noqa: ANN001 - TorchScript graph values
        mask = g.op("Cast", key_mask, to_i=6)  # TensorProto.INT32
        bias = g.op("Constant", value_t=torch.zeros(3 * inner))  # the op's optional input 3 precedes the mask
        out = g.op(f"{ORT_DOMAIN}::MultiHeadAttention", q, k, v, bias, mask, num_heads_i=heads)
        return out.setType(q.type())


__all__ = ["ORT_DOMAIN", "MultiHeadAttentionOp", "contrib_ops_active", "onnxruntime_contrib_ops"]
