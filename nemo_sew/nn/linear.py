"""``Linear``: ``nn.Linear`` whose matmul backend is a setting of the module, read by its own forward.

The encoder's linear layers are this class, so a backend is chosen per module without patching anything:
``backend = "torch"`` (default) runs ``F.linear``; ``"onednn"`` runs :func:`nemo_sew.nn.onednn.packed_linear`
(oneDNN on a prepacked weight for fp32 CPU inference, ``F.linear`` whenever autograd, tracing, another device or
dtype, or a parametrized weight such as a quantized one makes the packed weight wrong or stale).
:func:`nemo_sew.nn.onednn.use_onednn_linear` sets it. Parameters, state-dict keys and checkpoints are
``nn.Linear``'s. Tools that match module types exactly see a different class: torchao's PT2E
``X86InductorQuantizer`` annotates only ``torch.nn.Linear`` (``benchmarks/quant_cpu.py`` swaps in plain
``nn.Linear`` modules holding the same parameters before quantizing with it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

BACKENDS = ("torch", "onednn")


class Linear(nn.Linear):
    """``nn.Linear`` with a :attr:`backend` (see the module docstring)."""

    backend: str = "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "onednn" and not parametrize.is_parametrized(self):
            from nemo_sew.nn.onednn import packed_linear

            return packed_linear(self, x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


__all__ = ["BACKENDS", "Linear"]
