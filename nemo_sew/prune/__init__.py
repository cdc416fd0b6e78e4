"""Structured pruning of the front end and the blocks to a budget (HJ-Pruning; research notes part A).

* :class:`~nemo_sew.prune.hardconcrete.HardConcrete`: the L0 mask;
* :class:`~nemo_sew.prune.masks.Pruning` (options, ``encoder.pruning`` in a config) and
  :class:`~nemo_sew.prune.masks.PruningMasks` (masks on a built encoder, expected cost, Lagrangian);
* :mod:`nemo_sew.prune.materialize`: fold the masks into the weights and write the smaller model
  (``nemo-sew prune MODEL.nemo --out pruned.nemo``).
"""

from nemo_sew.prune.hardconcrete import HardConcrete
from nemo_sew.prune.masks import Pruning, PruningMasks, optimizer_groups, realised_fraction
from nemo_sew.prune.materialize import materialize_encoder, materialize_model, materialize_state

__all__ = [
    "HardConcrete", "Pruning", "PruningMasks", "materialize_encoder", "materialize_model", "materialize_state",
    "optimizer_groups", "realised_fraction",
]  # fmt: skip
