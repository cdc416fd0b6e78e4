"""Shared helpers of the TensorRT scripts: the requirement check, ONNX metadata, shapes, precision rules.

Everything except :func:`require_tensorrt`'s success path runs without TensorRT or a GPU, so the rules
(optimisation-profile shapes, the TensorRT 10 / 11 precision handling) are tested on CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

TRT_MISSING = (
    "TensorRT is not installed (pip install nemo-sew[trt], or pip install tensorrt); "
    "these scripts build and run TensorRT engines on an NVIDIA GPU"
)
DEFAULT_BATCH = "1,8,32"
DEFAULT_SECONDS = "0.5,10,40"
"""Default optimisation profile (MIN,OPT,MAX): batch and seconds of audio (LibriSpeech utterances reach 35 s)."""
NO_GPU = (
    "no CUDA GPU found (torch.cuda.is_available() is False): TensorRT engines are built and run on an "
    "NVIDIA GPU; run this script on a machine with one (and a CUDA build of torch)"
)


class RequirementError(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and what to do."""


def require_tensorrt():
    """Return the ``tensorrt`` module, or raise :class:`RequirementError` with one clear message."""
    try:
        import tensorrt
    except ImportError as e:
        raise RequirementError(f"{TRT_MISSING} ({e})") from None
    import torch

    if not torch.cuda.is_available():
        raise RequirementError(NO_GPU)
    return tensorrt


def load_trt_check() -> Any:
    """The module :mod:`nemo_sew.export.trt_check` (the static check behind ``build_engines.py --dry-run``).

    Imported from its file when ``nemo_sew`` is not imported yet: the package's ``__init__`` imports NeMo (about
    10 s), which the check (onnx and numpy only) does not need.
    """
    if "nemo_sew" in sys.modules:
        from nemo_sew.export import trt_check

        return trt_check
    name = "nemo_sew.export.trt_check"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("nemo_sew")  # finds the package without running its __init__
    if spec is None or spec.origin is None:
        raise RequirementError("nemo_sew is not installed (pip install -e . from the repository root)")
    path = Path(spec.origin).parent / "export" / "trt_check.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main``; a :class:`RequirementError` becomes one line on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except RequirementError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def parse_triple(text: str, kind: type = int) -> tuple:
    """``"1,8,32"`` -> ``(1, 8, 32)`` (min, opt, max); a single value means min = opt = max."""
    values = tuple(kind(v) for v in text.split(","))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not values[0] <= values[1] <= values[2] or values[0] <= 0:
        raise ValueError(f"expected MIN,OPT,MAX with 0 < MIN <= OPT <= MAX, got {text!r}")
    return values


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` nemo_sew writes (JSON fields parsed), read without the weights."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    meta: dict[str, Any] = {p.key: p.value for p in model.metadata_props}
    for key in ("profile", "vocabulary", "feature_config"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return meta


def conditional_skip(meta: dict[str, Any], allow_conditional: bool = False) -> str | None:
    """Why not to build an engine from a graph (None: build it).

    An I3D graph whose gates depend on the input (``gates: conditional``: one ONNX ``If`` per gated branch)
    is skipped unless asked for: TensorRT wants a fixed graph, which is the graph's static profile
    (``<name>_static``: gates frozen at their mean decisions; ``nemo-sew export --static-gates MANIFEST``).
    """
    if meta.get("gates") != "conditional" or allow_conditional:
        return None
    name = (meta.get("profile") or {}).get("name") or "this profile"
    return (
        f"input-dependent I3D gates ({meta.get('conditional_branches', '?')} If branches); build the static "
        f"profile instead ({name}_static, from `nemo-sew export --static-gates MANIFEST`), or pass --conditional "
        "to try TensorRT's If conditionals"
    )


def input_frames(meta: dict[str, Any], seconds: float) -> int:
    """Input length (samples or 10 ms feature frames) for ``seconds`` of audio, at least the graph's minimum."""
    rate = float(meta.get("input_rate") or (16000.0 if meta.get("input") == "waveform" else 100.0))
    return max(int(meta.get("min_input_length", 1)), math.ceil(seconds * rate))


def shape_ranges(
    meta: dict[str, Any], signal_shape: Sequence[int], batch: Sequence[int], seconds: Sequence[float]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) shapes of ``audio_signal`` and ``length`` for one optimisation profile.

    ``signal_shape`` is the network's ``audio_signal`` shape (-1 = dynamic): ``(B, N)`` waveform or
    ``(B, C, T)``; ``batch`` and ``seconds`` are (min, opt, max).
    """
    if len(signal_shape) not in (2, 3):
        raise ValueError(f"expected audio_signal of rank 2 (B, N) or 3 (B, C, T), got shape {tuple(signal_shape)}")
    frames = [input_frames(meta, s) for s in seconds]
    if len(signal_shape) == 2:
        sig = tuple((b, t) for b, t in zip(batch, frames))
    else:
        channels = int(signal_shape[1])
        if channels < 1:
            raise ValueError(f"expected a static channel axis in audio_signal, got shape {tuple(signal_shape)}")
        sig = tuple((b, channels, t) for b, t in zip(batch, frames))
    return {"audio_signal": sig, "length": tuple((b,) for b in batch)}  # type: ignore[return-value]


@dataclass(frozen=True)
class PrecisionPlan:
    """How to build at a precision: a strongly typed network, a TensorRT 10 builder flag, or an ONNX conversion."""

    strongly_typed: bool
    builder_flag: str | None = None  # "FP16" / "BF16" (TensorRT 10 only)
    convert_to: str | None = None  # "fp16" / "bf16": ModelOpt AutoCast the fp32 ONNX first (TensorRT 11)


def precision_plan(
    major: int, requested: str, onnx_precision: str, have_modelopt: bool, quant_form: str | None = None
) -> PrecisionPlan:
    """TensorRT 10 keeps the weak-typing flags; TensorRT 11 has only strongly typed networks, so the
    precision must be in the ONNX (``nemo-sew export --precision fp16`` or ModelOpt AutoCast).

    A weight-only QDQ graph (``quant_form=qdq`` from :mod:`nemo_sew.quant.onnx`: INT8/INT4 weights behind
    ``DequantizeLinear``, fp32 activations) is built strongly typed on both 10.x and 11.x, with no precision
    flag: the Q/DQ types decide. The ORT-only forms (``MatMulNBits``, dynamic int8) are refused."""
    if requested not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"expected precision fp32, fp16 or bf16, got {requested!r}")
    if quant_form is not None:
        if quant_form != "qdq":
            raise ValueError(
                f"the ONNX file holds the onnxruntime-only {quant_form!r} form; TensorRT builds the weight-only "
                "QDQ form (nemo_sew.quant.onnx.export_quantized_onnx(..., form='qdq'))"
            )
        if major < 10:
            raise RequirementError(f"TensorRT {major}.x is too old: these scripts need TensorRT 10 or 11")
        if requested != onnx_precision:
            raise ValueError(f"a QDQ graph is built as exported ({onnx_precision} activations), not as {requested}")
        return PrecisionPlan(strongly_typed=True)
    if onnx_precision == requested:
        return PrecisionPlan(strongly_typed=True)  # the graph already holds the types
    if onnx_precision != "fp32":
        raise ValueError(
            f"the ONNX file is {onnx_precision} but {requested} was asked for; build from the fp32 export instead"
        )
    if major < 10:
        raise RequirementError(f"TensorRT {major}.x is too old: these scripts need TensorRT 10 or 11")
    if major == 10:
        return PrecisionPlan(strongly_typed=False, builder_flag=requested.upper())
    if not have_modelopt:
        raise RequirementError(
            f"TensorRT {major}.x builds strongly typed networks only (the FP16/BF16 builder flags are gone), so the "
            f"ONNX must already be {requested}: export with `nemo-sew export --precision fp16`, or install "
            "nvidia-modelopt to convert it here (AutoCast)"
        )
    return PrecisionPlan(strongly_typed=True, convert_to=requested)


def autocast_onnx(src: Path, dst: Path, precision: str) -> Path:
    """fp32 ONNX -> mixed fp16/bf16 with ModelOpt AutoCast (float32 I/O kept; norms and log-softmax in fp32)."""
    import onnx
    from modelopt.onnx.autocast import convert_to_mixed_precision

    model = convert_to_mixed_precision(
        onnx_path=str(src), low_precision_type=precision, keep_io_types=True,
        op_types_to_exclude=["LayerNormalization", "LogSoftmax"],
    )  # fmt: skip
    onnx.save(model, str(dst))
    return dst


def have_modelopt() -> bool:
    try:
        import modelopt.onnx.autocast  # noqa: F401
    except ImportError:
        return False
    return True


def torch_dtype(trt: Any, dtype: Any):
    """The torch dtype of a TensorRT tensor dtype."""
    import torch

    table = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
             "INT64": torch.int64, "BOOL": torch.bool, "INT8": torch.int8, "UINT8": torch.uint8}  # fmt: skip
    for name, torch_type in table.items():
        if hasattr(trt.DataType, name) and dtype == getattr(trt.DataType, name):
            return torch_type
    raise ValueError(f"unsupported TensorRT dtype {dtype}")
