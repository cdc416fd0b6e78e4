"""``nemo-sew convert``: a transformers directory or a fairseq checkpoint -> ``.nemo`` (CTC) or encoder checkpoint.

    nemo-sew convert path/to/wav2vec2-base-960h model.nemo          # transformers *ForCTC dir: NeMo CTC model
    nemo-sew convert path/to/hubert-base encoder.pt                 # any transformers dir: encoder-only checkpoint
    nemo-sew convert wav2vec_small_960h.pt model.nemo --dict dict.ltr.txt   # fairseq fine-tuned checkpoint

Nothing is downloaded (transformers loads with ``local_files_only=True``). An OUT ending in ``.nemo`` needs a CTC
head; any other suffix writes an encoder-only checkpoint (``nemo_sew.convert.load_encoder_checkpoint`` reads it).
See :func:`nemo_sew.convert.convert_local_dir` and :func:`nemo_sew.convert.fairseq.convert_fairseq_checkpoint`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nemo_sew.errors import UserError

log = logging.getLogger("nemo_sew.convert")


def _cmd_convert(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if source.is_file():
        from nemo_sew.convert.fairseq import convert_fairseq_checkpoint

        out = convert_fairseq_checkpoint(source, args.out, dictionary=args.dict, allow_pickle=args.allow_pickle)
    else:
        if args.dict is not None:
            raise UserError(f"--dict is for fairseq checkpoint files; {source} is not a file")
        from nemo_sew.convert.transformers import convert_local_dir

        out = convert_local_dir(source, args.out)
    log.info("wrote %s", out)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` command to the ``nemo-sew`` parser."""
    p = subparsers.add_parser(
        "convert",
        help="convert a local transformers directory or a fairseq checkpoint (SEW, wav2vec 2.0, HuBERT)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source", metavar="LOCAL_DIR", help="transformers save_pretrained directory, or a fairseq .pt checkpoint file"
    )
    p.add_argument("out", metavar="OUT", help="OUT.nemo: NeMo CTC model (needs a CTC head); else encoder checkpoint")
    p.add_argument("--dict", default=None, help="fairseq only: the fine-tuning dictionary (dict.ltr.txt)")
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="fairseq only: load with torch.load(weights_only=False); older checkpoints need it (trusted files only)",
    )
    p.set_defaults(func=_cmd_convert)
