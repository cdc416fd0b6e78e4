"""Encoder blocks: attention-only transformer layers (pre/post-LN) and conformer layers.

Heads and FFN widths are per-layer arguments, so a pruned model is only another configuration.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nemo_sew.nn.frontend import can_overwrite, time_mask
from nemo_sew.nn.pooling import masked_avg_pool


class SelfAttention(nn.Module):
    """Multi-head self-attention on ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        dim: model width.
        num_heads: heads in this layer (pruning changes it per layer).
        head_dim: width of one head; the inner width is ``num_heads * head_dim`` (wav2vec 2.0: 64).
        dropout: attention-probability dropout (fairseq ``attention_dropout``).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"expected num_heads >= 1, got {num_heads}")
        self.num_heads, self.head_dim, self.dropout = num_heads, head_dim, dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(dim, inner)
        self.k_proj = nn.Linear(dim, inner)
        self.v_proj = nn.Linear(dim, inner)
        self.out_proj = nn.Linear(inner, dim)

    def forward(
        self, x: torch.Tensor, key_mask: torch.Tensor, kv: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: queries ``(B, Tq, C)``; kv: keys/values ``(B, Tk, C)`` (default ``x``); key_mask: ``(B, Tk)`` True = valid."""
        kv = x if kv is None else kv
        b, tq, _ = x.shape
        tk = kv.shape[1]

        def heads(y: torch.Tensor, t: int) -> torch.Tensor:
            return y.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

        q, k, v = heads(self.q_proj(x), tq), heads(self.k_proj(kv), tk), heads(self.v_proj(kv), tk)
        attn_mask = key_mask[:, None, None, :]  # (B, 1, 1, Tk) broadcast over heads and queries
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, Tq, d)
        y = y.transpose(1, 2).reshape(b, tq, self.num_heads * self.head_dim)  # (B, Tq, H*d)
        return self.out_proj(y)


def pooled_attention_inputs(
    x: torch.Tensor, lengths: torch.Tensor, q_stride: int, kv_stride: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """MViT-style pooling attention inputs: (queries, query lengths, keys/values, key mask).

    Pooling the queries shortens the layer's output (and every later layer); pooling keys/values only
    cuts attention cost. Both use masked average pooling with ``ceil`` lengths.
    """
    xq, q_len = masked_avg_pool(x, lengths, q_stride)
    xkv, kv_len = masked_avg_pool(x, lengths, kv_stride)
    return xq, q_len, xkv, time_mask(kv_len, xkv.shape[1])


class FeedForward(nn.Module):
    """``Linear(C, F) -> act -> dropout -> Linear(F, C)`` (fairseq fc1/fc2; HF intermediate/output dense).

    The activation overwrites fc1's output when autograd does not need it (inference; see
    :func:`~nemo_sew.nn.frontend.can_overwrite`): same kernel, one ``(B, T, F)`` allocation fewer per layer.
    """

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0, activation: str = "gelu") -> None:
        super().__init__()
        acts = {"gelu": nn.GELU(), "swish": nn.SiLU(), "relu": nn.ReLU()}
        if activation not in acts:
            raise ValueError(f"expected activation in {sorted(acts)}, got {activation!r}")
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.act = acts[activation]
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(_activation(self.act, self.fc1(x))))


def _activation(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``act(h)``, written into ``h`` (a fresh temporary) when autograd does not need it and ``act`` has an
    in-place kernel (GELU, SiLU, ReLU)."""
    if not can_overwrite(h) or type(act) not in (nn.GELU, nn.SiLU, nn.ReLU):
        return act(h)
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(h, approximate=act.approximate)
    return F.silu(h, inplace=True) if type(act) is nn.SiLU else F.relu(h, inplace=True)


class TransformerLayer(nn.Module):
    """wav2vec 2.0 / SEW transformer layer (fairseq ``TransformerSentenceEncoderLayer``).

    Args:
        layer_norm_first: False = post-LN (base models, SEW: ``x = LN(x + attn(x)); x = LN(x + ffn(x))``);
            True = pre-LN (large models: ``x = x + attn(LN(x)); x = x + ffn(LN(x))``).
        dropout: residual dropout (fairseq ``dropout``); ``attention_dropout``, ``activation_dropout`` as in fairseq.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        head_dim: int = 64,
        layer_norm_first: bool = False,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.attention = SelfAttention(dim, num_heads, head_dim, attention_dropout)
        self.attn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.ffn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, q_stride: int = 1, kv_stride: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``(B, T, C)`` -> ``(B, ceil(T / q_stride), C)`` and the new lengths."""
        if self.layer_norm_first:
            h, q_len, h_kv, kv_mask = pooled_attention_inputs(self.attn_norm(x), lengths, q_stride, kv_stride)
            x, _ = masked_avg_pool(x, lengths, q_stride)  # the residual is pooled with the queries
            x = x + self.dropout(self.attention(h, kv_mask, h_kv))
            return x + self.dropout(self.ffn(self.ffn_norm(x))), q_len
        xq, q_len, x_kv, kv_mask = pooled_attention_inputs(x, lengths, q_stride, kv_stride)
        x = self.attn_norm(xq + self.dropout(self.attention(xq, kv_mask, x_kv)))
        return self.ffn_norm(x + self.dropout(self.ffn(x))), q_len


class ConvModule(nn.Module):
    """Conformer convolution module: pointwise (GLU) -> depthwise conv -> norm -> swish -> pointwise.

    Padded frames are zeroed before the depthwise conv, so they cannot leak into valid frames. The norm is
    a channel LayerNorm (NeMo's ``conv_norm_type=layer_norm``) rather than BatchNorm, so training
    statistics do not depend on the padding or the batch either.
    """

    def __init__(self, dim: int, kernel: int = 31, dropout: float = 0.0) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"expected an odd depthwise kernel, got {kernel}")
        self.pre_norm = nn.LayerNorm(dim)
        self.pointwise1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pointwise2 = nn.Conv1d(dim, dim, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.pre_norm(x).transpose(1, 2)  # (B, C, T)
        y = F.glu(self.pointwise1(y), dim=1)  # (B, C, T)
        y = y.masked_fill(~mask[:, None, :], 0.0)
        y = self.depthwise(y)  # (B, C, T)
        y = F.silu(self.norm(y.transpose(1, 2))).transpose(1, 2)  # (B, C, T)
        y = self.pointwise2(y).transpose(1, 2)  # (B, T, C)
        return self.dropout(y)


class ConformerLayer(nn.Module):
    """Conformer layer (Gulati et al.): ``x + FFN/2``, ``x + MHSA``, ``x + Conv``, ``x + FFN/2``, LayerNorm.

    Every sub-module is pre-normed; positions come from the compressor's convolutional positional
    embedding, as in wav2vec 2.0-conformer with ``position_embeddings_type=None``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        head_dim: int = 64,
        conv_kernel: int = 31,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ffn1_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn1 = FeedForward(dim, ffn_dim, activation_dropout, activation="swish")
        self.attn_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.attention = SelfAttention(dim, num_heads, head_dim, attention_dropout)
        self.conv = ConvModule(dim, conv_kernel, dropout)
        self.ffn2_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.ffn2 = FeedForward(dim, ffn_dim, activation_dropout, activation="swish")
        self.final_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, q_stride: int = 1, kv_stride: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``(B, T, C)`` -> ``(B, ceil(T / q_stride), C)`` and the new lengths."""
        x = x + 0.5 * self.dropout(self.ffn1(self.ffn1_norm(x)))
        h, q_len, h_kv, kv_mask = pooled_attention_inputs(self.attn_norm(x), lengths, q_stride, kv_stride)
        x, _ = masked_avg_pool(x, lengths, q_stride)
        x = x + self.dropout(self.attention(h, kv_mask, h_kv))
        x = x + self.conv(x, time_mask(q_len, x.shape[1]))
        x = x + 0.5 * self.dropout(self.ffn2(self.ffn2_norm(x)))
        return self.final_norm(x), q_len
