"""Opt-in CPU inference: every plain ``nn.Linear`` of a module through oneDNN with a prepacked weight.

torch runs an fp32 ``nn.Linear`` on CPU through MKL's sgemm. On the AMD EPYC (Zen, AVX-512) machine the
benchmarks ran on, MKL's sgemm reached 25-35 GMAC/s per thread while oneDNN's matmul on a prepacked weight
(``torch.ops.mkldnn._reorder_linear_weight`` / ``_linear_pointwise``, the ops torch.compile's CPU weight
prepacking uses) reached 83-106 GMAC/s on the transformer's shapes (one interleaved timing, 1 thread,
(125 or 500) x 768 x 3072). Written here because eager torch has no switch for it.

:func:`use_onednn_linear` sets the backend of each :class:`nemo_sew.nn.linear.Linear` (the encoder's linear
layers) to ``"onednn"``, and the front end's 1x1 convs to their oneDNN GEMM; each module's own forward reads that
setting (no patched forwards), and a parametrized weight (a quantized one) keeps ``F.linear``. The oneDNN path runs
only for fp32 CPU inputs when autograd is off for the call (``torch.no_grad`` / ``inference_mode`` or
nothing requiring grad) and nothing is being traced; otherwise it is ``F.linear``. The packed weight is
rebuilt when the weight tensor or its version changes (``load_state_dict``, an optimizer step). Outputs
agree with ``F.linear`` within fp32 rounding (``tests/test_onednn.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from nemo_sew.nn.frontend import _tracing

ENABLED = True
"""Global switch of the oneDNN path of the modules set to it (for A/B timing and tests)."""


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def packed_linear(owner: nn.Module, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                  source: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``F.linear(x, w, bias)``, through oneDNN with ``w`` packed once and cached on ``owner`` when the call is
    eligible (see the module docstring). ``source``: the parameter ``w`` is a view of (its identity and
    version key the cache; default ``w``)."""
    source = w if source is None else source
    if (
        ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and w.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or source.requires_grad))
        and not _tracing()
    ):
        key = (id(source), source._version)
        if getattr(owner, "_onednn_key", None) != key:
            with torch.no_grad():
                owner._onednn_weight = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous())
            owner._onednn_key = key
        return torch.ops.mkldnn._linear_pointwise(x, owner._onednn_weight, bias, "none", [], "")
    return F.linear(x, w, bias)


def use_onednn_linear(module: nn.Module) -> int:
    """Route every :class:`nemo_sew.nn.linear.Linear` under ``module``, and the front end's 1x1 convs (a GEMM on
    the channels-last path), through oneDNN (see the module docstring); returns how many were switched (0 when
    torch has no oneDNN). Plain ``torch.nn.Linear`` modules (none in the encoder) keep torch's path."""
    if not onednn_available():
        return 0
    from nemo_sew.nn.frontend import ConvBlock
    from nemo_sew.nn.linear import Linear

    n = 0
    for m in module.modules():
        if isinstance(m, Linear) and not parametrize.is_parametrized(m):
            m._onednn_key, m._onednn_weight = None, None
            m.backend = "onednn"
            n += 1
        elif isinstance(m, ConvBlock) and m.kernel == 1 and m.stride == 1 and not parametrize.is_parametrized(m.conv):
            m._onednn_key, m._onednn_weight = None, None
            m.onednn_linear = True  # its channels-last 1x1 conv calls packed_linear
            n += 1
    return n


__all__ = ["ENABLED", "onednn_available", "packed_linear", "use_onednn_linear"]
