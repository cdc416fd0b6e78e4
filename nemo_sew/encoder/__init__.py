"""The encoder, one module per responsibility (``from nemo_sew.encoder import X`` works for every name below, and
``nemo_sew.encoder.SqueezeEncoder`` stays the class path configs name):

* :mod:`~nemo_sew.encoder.core`: :class:`EncoderCore`, the pure-torch module: builds the ``nemo_sew.nn`` parts from
  an arch, holds the active profile, turns a draw into one plan per layer and runs the stages over it;
* :mod:`~nemo_sew.encoder.policies`: the learned rate, the gate budget (and pruning's budget, on its masks) behind
  one protocol, ``outputs(run) -> (aux_losses, stats)``, which the core calls in a loop after the blocks;
* :mod:`~nemo_sew.encoder.records`: what a forward takes and gives (:class:`Draw`, :class:`Front`,
  :class:`Squeezed`, :class:`EncoderOutput`);
* :mod:`~nemo_sew.encoder.config`: config <-> typed options (:func:`parse_options`, :func:`config_dict`,
  :func:`encoder_config`): the only place that reads or writes the ``encoder:`` section;
* :mod:`~nemo_sew.encoder.legacy`: state dicts of earlier versions in today's names;
* :mod:`~nemo_sew.encoder.neural_module`: :class:`SqueezeEncoder`, the core with NeMo's ports (the only module
  here that imports NeMo).

Names are imported on first use (PEP 562), so ``nemo_sew.encoder.core`` and the others import where NeMo is not
installed; only ``SqueezeEncoder`` and ``build_encoder`` need it.
"""

from nemo_sew._lazy import lazy_exports

_EXPORTS = {
    "SqueezeEncoder": "nemo_sew.encoder.neural_module",
    "build_encoder": "nemo_sew.encoder.neural_module",
    "EncoderCore": "nemo_sew.encoder.core",
    "layerdrop_decisions": "nemo_sew.encoder.core",
    "Policy": "nemo_sew.encoder.policies",
    "ForwardRun": "nemo_sew.encoder.policies",
    "RatePenalty": "nemo_sew.encoder.policies",
    "GateBudget": "nemo_sew.encoder.policies",
    "Draw": "nemo_sew.encoder.records",
    "EncoderOutput": "nemo_sew.encoder.records",
    "Front": "nemo_sew.encoder.records",
    "Squeezed": "nemo_sew.encoder.records",
    "plain_stats": "nemo_sew.encoder.records",
    "EncoderOptions": "nemo_sew.encoder.config",
    "config_dict": "nemo_sew.encoder.config",
    "encoder_config": "nemo_sew.encoder.config",
    "parse_options": "nemo_sew.encoder.config",
    "upgrade_legacy_encoder_state": "nemo_sew.encoder.legacy",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
