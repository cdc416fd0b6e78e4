"""``nemo-sew quantize``: its arguments (no torch import until it runs)."""

from __future__ import annotations

from typing import Any


def register(sub: Any) -> None:
    """Add the ``quantize`` subcommand to the ``nemo-sew`` parser."""
    p = sub.add_parser("quantize", help="PTQ: pack a .nemo's encoder weights at 8/4/2/1 bits (CTC head stays fp)")
    p.add_argument("model", help="the fp (or QAT-trained) .nemo")
    p.add_argument("--bits", type=int, nargs="+", required=True, choices=(8, 4, 2, 1),
                   help="bit widths to hold (several: set_profile(weight_bits=...) switches between them)")
    p.add_argument("--out", required=True, help="the quantized .nemo")
    p.add_argument("--keep-fp", action="store_true", help="also keep the fp weights (weight_bits=16 stays available)")
    p.add_argument("--group-size", type=int, default=32, help="4-bit columns per scale (32, 64, 128; 0 = per channel)")
    p.add_argument("--method", choices=("minmax", "mse"), default="minmax", help="8/4-bit scale choice")
    p.set_defaults(func=_cmd)


def _cmd(args: Any) -> int:
    from nemo_sew.quant.model import quantize_nemo

    info = quantize_nemo(args.model, args.out, tuple(args.bits), args.keep_fp, args.group_size or None, args.method)
    print(f"wrote {args.out}: {info['out_bytes'] / 1e6:.2f} MB ({info['file_ratio']:.3f} x {args.model}); "
          f"bits {info['bits']}, fp kept: {info['keep_fp']}")
    return 0
