"""Count host synchronisations of a piece of code, on any device (CPU included).

A host synchronisation is a point where Python waits for a tensor's value: ``.item()``, ``bool()`` / ``int()`` /
``float()`` of a tensor, ``.tolist()``, a copy to the host, and ops whose output shape depends on values
(``nonzero``, boolean indexing, ``unique``). On a GPU each one stalls the launch queue. On CPU the same calls go
through the same dispatcher ops, so counting them here tells what a CUDA step would do (``make gpu-check`` runs
``torch.cuda.set_sync_debug_mode("warn")`` on a real GPU). Written by hand on ``TorchDispatchMode``: torch has
no CPU sync counter.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# dispatcher ops that need a tensor's value on the host
SYNC_OPS = {
    "aten::_local_scalar_dense": "item",  # .item(), bool(), int(), float(), .tolist() per element
    "aten::nonzero": "nonzero",  # also boolean-mask indexing and masked_select
    "aten::masked_select": "masked_select",
    "aten::_unique2": "unique",
    "aten::unique_dim": "unique",
    "aten::unique_consecutive": "unique",
    "aten::repeat_interleave.Tensor": "repeat_interleave",
}


class SyncCounter(TorchDispatchMode):
    """``with SyncCounter() as syncs: ...`` then ``syncs.total`` and ``syncs.counts`` (``{kind: n}``): each count is
    one place that waits for a value (a ``.tolist()`` counts once, whatever its size)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> "SyncCounter":
        # .tolist() and .numpy() read CPU memory directly, without a dispatcher op: counted by wrapping them
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor: torch.Tensor, *args: Any, _name: str = name, _original: Any = original, **kwargs: Any):
                self.counts[_name] += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved = {}
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func._schema.name + (f".{func._overloadname}" if func._overloadname not in ("", "default") else "")
        kind = SYNC_OPS.get(name) or SYNC_OPS.get(func._schema.name if func._overloadname in ("", "default") else "")
        if kind is not None:
            self.counts[kind] += 1
        elif func._schema.name == "aten::_to_copy" and _to_host(args, kwargs or {}):
            self.counts["to_host"] += 1
        elif func._schema.name in ("aten::index", "aten::index_put", "aten::index_put_") and _bool_index(args):
            self.counts["nonzero"] += 1  # x[mask]: a nonzero below the dispatcher
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _to_host(args: tuple, kwargs: dict) -> bool:
    device = kwargs.get("device")
    src = args[0] if args and isinstance(args[0], torch.Tensor) else None
    return src is not None and src.device.type != "cpu" and device is not None and torch.device(device).type == "cpu"


def _bool_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
