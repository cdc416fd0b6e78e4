"""Structured pruning of the front end and the blocks to a budget (HJ-Pruning; research notes part A).

* :class:`~nemo_sew.prune.hardconcrete.HardConcrete`: the L0 mask;
* :class:`~nemo_sew.prune.masks.Pruning` (options, ``encoder.pruning`` in a config) and
  :class:`~nemo_sew.prune.masks.PruningMasks` (masks on a built encoder, expected cost, Lagrangian);
* :mod:`nemo_sew.prune.materialize`: fold the masks into the weights and write the smaller model
  (``nemo-sew prune MODEL.nemo --out pruned.nemo``).
"""

from nemo_sew._lazy import lazy_exports

_EXPORTS = {
    "HardConcrete": "nemo_sew.prune.hardconcrete",
    "Pruning": "nemo_sew.prune.masks",
    "PruningMasks": "nemo_sew.prune.masks",
    "optimizer_groups": "nemo_sew.prune.masks",
    "realised_fraction": "nemo_sew.prune.masks",
    "materialize_encoder": "nemo_sew.prune.materialize",
    "materialize_model": "nemo_sew.prune.materialize",
    "materialize_state": "nemo_sew.prune.materialize",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "HardConcrete", "Pruning", "PruningMasks", "materialize_encoder", "materialize_model", "materialize_state",
    "optimizer_groups", "realised_fraction",
]  # fmt: skip
