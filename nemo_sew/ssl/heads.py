"""Prediction heads of SEW's pre-training (``final_proj`` and ``project_q``).

SEW's ``MLPv3`` (``mlp_num_layers=2``, ``proj_mlp_norm_type=bn``): ``Linear(in -> hidden, no bias) ->
BatchNorm1d(hidden, fp32) -> ReLU -> Linear(hidden -> out)``, Xavier-normal init. It runs on the masked
frames only, so the BatchNorm statistics are over the masked frames of the batch, as in SEW. With
``hidden = 0`` it is wav2vec 2.0's plain ``Linear(in -> out)``.
"""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Module):
    """``(N, in_dim) -> (N, out_dim)``; ``hidden=0`` gives a single linear layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 4096) -> None:
        super().__init__()
        if hidden > 0:
            self.net: nn.Module = nn.Sequential(
                nn.Linear(in_dim, hidden, bias=False),
                nn.BatchNorm1d(hidden),
                nn.ReLU(),
                nn.Linear(hidden, out_dim),
            )
        else:
            self.net = nn.Linear(in_dim, out_dim)
        for module in self.net.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, nn.Sequential) and x.dtype != torch.float32:
            # fairseq's FP32BatchNorm: statistics in fp32 under mixed precision
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self.net(x.float())
        return self.net(x)
