"""``nemo-sew prune``: materialise a model trained with pruning masks into a smaller ``.nemo``.

    nemo-sew prune masked.nemo --out pruned.nemo [--name mac60]

The masks' deterministic values are folded into the weights, pruned channels, heads and units are removed,
and the result is an ordinary model whose ``EncoderArch`` differs per layer; it restores anywhere nemo_sew
is installed (and in NeMo's ``transcribe_speech.py``). Prints the kept fraction of the budget's cost.
"""

from __future__ import annotations

import argparse
import json


def _cmd_prune(args: argparse.Namespace) -> int:
    import nemo_sew  # noqa: F401  (registers nemo_sew. targets with NeMo)

    from nemo_sew.cost import encoder_params, macs_per_second
    from nemo_sew.prune.masks import realised_fraction
    from nemo_sew.prune.materialize import materialize_model
    from nemo_sew.safe_load import restore

    model = restore(args.model)
    if getattr(model.encoder, "pruning", None) is None:
        from nemo_sew.errors import UserError

        raise UserError(f"{args.model}: this model has no pruning masks (train it with a pruning recipe first)")
    options = model.encoder.pruning.options
    pruned = materialize_model(model, args.name)
    pruned.save_to(args.out)
    dense, small = model.encoder.arch, pruned.encoder.arch
    summary = {
        "out": args.out,
        "budget": options.budget,
        "targets": options.targets(),
        "realised": realised_fraction(small, dense, options),
        "gmacs_per_second": {"dense": macs_per_second(dense), "pruned": macs_per_second(small)},
        "params": {"dense": float(encoder_params(dense)["total"]), "pruned": float(encoder_params(small)["total"])},
        "frontend_channels": [c for c, _, _ in small.frontend.conv_layers],
        "blocks": [{"heads": b.heads, "ffn_dims": list(b.ffn_dims), "conv_channels": b.conv_channels} for b in small.blocks],
    }
    print(json.dumps(summary, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prune`` command to the ``nemo-sew`` parser."""
    p = subparsers.add_parser(
        "prune", help="fold a masked model's pruning masks into a smaller .nemo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL.nemo", help="a model trained with pruning masks (encoder.pruning)")
    p.add_argument("--out", required=True, help="where to write the pruned .nemo")
    p.add_argument("--name", default=None, help="label of the pruned arch (a named profile in the .nemo)")
    p.set_defaults(func=_cmd_prune)
