"""``nemo-sew export`` and ``nemo-sew transcribe``.

    nemo-sew export model.nemo --profiles recipes/profiles/fixed_s2.yaml --out exported/   # exported/s2.onnx
    nemo-sew export model.nemo --out exported/ --precision fp16 --encoder-only
    nemo-sew export q.nemo --profiles recipes/profiles/weight_bits.yaml --quant-form qdq --out exported/  # w8, w4
    nemo-sew export i3d.nemo --profiles recipes/profiles/i3d.yaml --static-gates dev.json --out exported/
    nemo-sew transcribe exported/s2.onnx --backend onnxruntime --manifest test.json --out hyps.jsonl
    nemo-sew transcribe model.nemo a.wav b.wav --backend torch --profile s2

``export`` writes one ONNX file per named profile (``DIR/<profile>.onnx``, each parity-checked against
PyTorch in onnxruntime) and an index ``DIR/export.json`` with the parity results and, per file, whether the
static TensorRT check passes (``"tensorrt": "builds"`` or ``"refused: <reasons>"``, also printed as one line per
file; :mod:`nemo_sew.export.trt_check`, the check of ``trt/build_engines.py --dry-run``). Without ``--profiles``
it exports the model's own named profiles (``cfg.profiles``), or its active profile as ``default``.
An I3D model's graphs decide their gates from the input (one ``If`` per gated branch); ``--static-gates``
adds ``<name>_static`` profiles with the gates frozen at their mean decisions over a manifest (fixed depth).
``transcribe`` writes one JSON line per utterance with ``pred_text`` (manifest lines keep their fields).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

from nemo_sew.errors import UserError

log = logging.getLogger("nemo_sew.export")


def _restore(path: str):
    from nemo_sew.safe_load import restore

    return restore(path)


def _profiles(model: Any, profiles_yaml: str | None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    from nemo_sew.profile import CompressionProfile, load_profiles

    if profiles_yaml:
        profiles = load_profiles(profiles_yaml)
    else:
        named = model.cfg.get("profiles") or {}
        profiles = {
            str(k): CompressionProfile.from_dict({**OmegaConf.to_container(v), "name": str(k)})
            for k, v in named.items()
        }
        if not profiles:
            profiles = {"default": model.encoder.profile}
    for name in profiles:
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
            raise UserError(f"profile name {name!r} is not usable as a file name (letters, digits, _ . + - only)")
    return profiles


def _with_static(model: Any, profiles: dict[str, Any], manifest: str) -> dict[str, Any]:
    """Each profile, then (gated models) its static twin ``<name>_static``: the gates frozen at their mean
    decisions over ``manifest`` (TensorRT wants a fixed graph; see trt/README.md)."""
    from nemo_sew.export.static_gates import freeze_gates

    if model.encoder.gate_options is None:
        raise UserError("--static-gates needs a model with I3D gates; this model has none")
    out = {}
    for name, profile in profiles.items():
        out[name] = profile
        if profile.static_gates is None:
            static = freeze_gates(model, manifest=manifest, profile=profile, name=f"{name}_static")
            out[static.name] = static
            log.info("profile %s: gates frozen at their mean decisions over %s -> %s", name, manifest, static.static_gates)
    return out


def _cmd_export(args: argparse.Namespace) -> int:
    import onnxruntime
    import torch

    import nemo_sew
    from nemo_sew.export.onnx import ParityError, export_onnx
    from nemo_sew.export.trt_check import check_trt

    if args.quant_form and args.quant_form != "qdq" and args.precision != "fp32":
        raise UserError(f"--quant-form {args.quant_form} is an onnxruntime CPU form with fp32 activations; drop "
                         "--precision fp16 (fp16 activations: --quant-form qdq --precision fp16, the TensorRT form)")
    model = _restore(args.model)
    profiles = _profiles(model, args.profiles)
    if args.static_gates:
        profiles = _with_static(model, profiles, args.static_gates)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "model": Path(args.model).name,
        "graph": "encoder" if args.encoder_only else "ctc",
        "precision": args.precision,
        "opset": args.opset,
        "versions": {
            "nemo_sew": nemo_sew.__version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__
        },  # fmt: skip
        "profiles": {},
    }
    failed = []
    calibration = _calibration_waves(args) if args.quant_form == "int8_static" else None  # read once
    for name, profile in profiles.items():
        path = out / f"{name}.onnx"
        entry: dict[str, Any] = {"file": path.name, "profile": profile.to_dict()}
        form = args.quant_form
        if form is None and profile.weight_bits != 16:
            # a profile of held low-bit weights: exported as what it is (QDQ), never as a full-size fp32 graph
            form = "qdq"
            log.info("profile %s runs %d-bit weights: exporting them as QDQ (--quant-form qdq; matmul_nbits or "
                     "int8_dynamic for onnxruntime's CPU kernels)", name, profile.weight_bits)  # fmt: skip
        try:
            if form:  # a quantized model's held weights as QDQ / ORT-native ONNX (nemo_sew.quant.onnx)
                from nemo_sew.quant.onnx import export_quantized_onnx

                extra = {"calibration_method": args.calibration_method} if form == "int8_static" else {}
                with model.profile_scope(profile):
                    if form == "int8_static":
                        from nemo_sew.quant.onnx import calibration_feeds

                        extra["calibration"] = calibration_feeds(model, calibration, args.encoder_only)
                    result = export_quantized_onnx(model, path, form, check=not args.no_check,
                                                   encoder_only=args.encoder_only, precision=args.precision,
                                                   **extra)  # fmt: skip
                entry["quant_form"] = form
            else:
                result = export_onnx(
                    model, path, profile=profile, opset=args.opset, check=not args.no_check, precision=args.precision,
                    encoder_only=args.encoder_only,
                )  # fmt: skip
            parity = result.parity
            entry["parity"] = parity.to_dict() if hasattr(parity, "to_dict") else parity  # int8_static: a dict
        except ParityError as e:
            log.error("%s", e)
            entry["parity"] = {"passed": False, "error": str(e)}
            failed.append(name)
        try:  # the static TensorRT check (no TensorRT needed); informative, never fails the export
            report = check_trt(path)
            entry["tensorrt"] = report.summary()
            print(f"tensorrt: {report.line()}")
        except Exception as e:  # noqa: BLE001
            entry["tensorrt"] = f"not checked: {type(e).__name__}: {e}"
            log.warning("%s: TensorRT check failed: %s", path.name, e)
        index["profiles"][name] = entry
        log.info("profile %s -> %s", name, path)
    (out / "export.json").write_text(json.dumps(index, indent=2) + "\n")
    print(json.dumps({name: e["file"] for name, e in index["profiles"].items()}))
    if failed:
        log.error("parity check failed for profiles %s (see %s)", failed, out / "export.json")
        return 1
    return 0


def _inputs(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.manifest and args.audio:
        raise UserError("give either --manifest or audio files, not both")
    if args.manifest:
        from manifests.validate import validate_manifest
        from nemo_sew.evaluate import read_manifest

        report = validate_manifest(args.manifest, sample_rate=None)  # bad lines: logged skips, as in training
        report.raise_if_empty()
        return read_manifest(report.out_path)
    if not args.audio:
        raise UserError("nothing to transcribe: give --manifest M or audio files")
    return [{"audio_filepath": str(p)} for p in args.audio]


def _runner(args: argparse.Namespace):
    from nemo_sew.export.ort import OnnxCTCRunner, TorchCTCRunner

    backend = args.backend or ("onnxruntime" if args.model.endswith(".onnx") else "torch")
    if backend == "onnxruntime":
        if not args.model.endswith(".onnx"):
            raise UserError(f"the onnxruntime backend runs an exported .onnx file, got {args.model}")
        if args.profile is not None:
            raise UserError(
                "--profile is for the torch backend; an ONNX file has its profile baked in (export one per profile)"
            )
        return OnnxCTCRunner(args.model, intra_op_threads=args.threads)
    if args.model.endswith(".onnx"):
        raise UserError(f"the torch backend runs a .nemo model, got {args.model}; use --backend onnxruntime")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    profile = args.profile
    if profile is not None:
        try:
            profile = float(profile)
        except ValueError:
            pass  # a named profile
    return TorchCTCRunner(_restore(args.model), profile=profile)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    entries = _inputs(args)
    runner = _runner(args)
    texts = runner.transcribe([e["audio_filepath"] for e in entries], batch_size=args.batch_size)
    lines = [json.dumps({**e, "pred_text": t}, ensure_ascii=False) for e, t in zip(entries, texts)]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("".join(line + "\n" for line in lines))
        log.info("wrote %d transcripts to %s", len(lines), args.out)
    else:
        sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


def _calibration_waves(args: argparse.Namespace) -> list:
    """The first ``--calibration-utterances`` waveforms of ``--calibration`` (int8_static)."""
    from manifests.audio import load_audio
    from nemo_sew.evaluate import read_manifest

    if args.calibration is None:
        raise UserError("--quant-form int8_static needs --calibration MANIFEST: utterances to calibrate the "
                        "activation scales on (a training or dev manifest, not the test set)")  # fmt: skip
    if args.calibration_utterances < 1:
        raise UserError(f"--calibration-utterances must be >= 1, got {args.calibration_utterances}")
    entries = read_manifest(args.calibration)[: args.calibration_utterances]
    return [load_audio(e["audio_filepath"])[0] for e in entries]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` and ``transcribe`` commands to the ``nemo-sew`` parser."""
    p = subparsers.add_parser(
        "export", help="one parity-checked ONNX file per compression profile (+ export.json)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL.nemo")
    p.add_argument("--profiles", metavar="P.yaml", default=None, help="named profiles (default: the model's own)")
    p.add_argument("--out", metavar="DIR", required=True)
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--encoder-only", action="store_true", help="export the encoder alone (no CTC head)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    p.add_argument(
        "--quant-form", choices=["qdq", "matmul_nbits", "int8_dynamic", "int8_static"], default=None,
        help="a quantized model (nemo-sew quantize): INT8/INT4 DequantizeLinear weights (qdq, opset 21; with "
        "--precision fp16 the TensorRT form: fp16 activations, INT4 only on MatMul weights), onnxruntime "
        "MatMulNBits (4-bit profiles), int8 dynamic or int8 static (8-bit profiles; static: the fastest CPU "
        "form, activations calibrated on --calibration); default: qdq for low-bit profiles, fp32 for fp ones",
    )  # fmt: skip
    p.add_argument("--calibration", metavar="MANIFEST", default=None,
                   help="int8_static: utterances whose activation ranges set the int8 scales (not the test set)")
    p.add_argument("--calibration-utterances", type=int, default=32, metavar="N",
                   help="int8_static: the first N utterances of --calibration (default 32)")
    p.add_argument("--calibration-method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="int8_static: onnxruntime's calibrator (default minmax)")
    p.add_argument(
        "--static-gates", metavar="MANIFEST", default=None,
        help="I3D models: also export each profile with its gates frozen at their mean decisions over MANIFEST "
        "(<name>_static.onnx: a fixed graph for TensorRT)",
    )  # fmt: skip
    p.set_defaults(func=_cmd_export)

    p = subparsers.add_parser(
        "transcribe", help="greedy CTC transcripts with PyTorch (.nemo) or onnxruntime (.onnx), as JSON lines",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("model", metavar="MODEL", help="MODEL.nemo (torch) or MODEL.onnx (onnxruntime)")
    p.add_argument("audio", nargs="*", metavar="AUDIO", help="audio files right after MODEL (or use --manifest)")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default=None, help="default: from MODEL's suffix")
    p.add_argument("--manifest", default=None, help="NeMo JSON-lines manifest")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--profile", default=None, help="torch backend: squeeze factor or named profile")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (onnxruntime) / torch threads")
    p.add_argument("--out", default=None, help="JSON-lines output file (default: stdout)")
    p.set_defaults(func=_cmd_transcribe)
