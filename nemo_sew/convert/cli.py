"""``nemo-sew convert``: a local transformers model directory -> ``.nemo`` (CTC) or an encoder checkpoint.

    nemo-sew convert path/to/wav2vec2-base-960h model.nemo     # *ForCTC dir: NeMo char CTC model
    nemo-sew convert path/to/hubert-base encoder.pt            # any dir: encoder-only checkpoint

Nothing is downloaded (``local_files_only=True``). See :func:`nemo_sew.convert.convert_local_dir`.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("nemo_sew.convert")


def _cmd_convert(args: argparse.Namespace) -> int:
    from nemo_sew.convert.transformers import convert_local_dir

    out = convert_local_dir(args.local_dir, args.out)
    log.info("wrote %s", out)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command to the ``nemo-sew`` parser."""
    p = subparsers.add_parser(
        "convert",
        help="convert a local transformers SEW / wav2vec 2.0 / HuBERT directory to .nemo (CTC) or an encoder .pt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("local_dir", metavar="LOCAL_DIR", help="directory written by transformers' save_pretrained")
    p.add_argument(
        "out", metavar="OUT", help="OUT.nemo: NeMo CTC model (needs a *ForCTC dir); other suffix: encoder checkpoint"
    )
    p.set_defaults(func=_cmd_convert)
