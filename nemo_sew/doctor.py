"""``nemo-sew doctor``: check the environment and the manifests you will train on; one line per finding.

    nemo-sew doctor                                   # packages, CUDA, bf16, espeak-ng and fortunes
    nemo-sew doctor data/synthetic/train.json ...     # and these manifests (validated like training does)

Each problem is one ``FAIL`` (or ``warn`` for optional parts) line that says how to fix it; the exit status is 1
when anything FAILs.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

#: (distribution, import name, required version spec (prefix match for ==, minimum for >=), fix, optional)
PACKAGES = (
    ("torch", "torch", "==2.13.0", "pip install torch==2.13.0 (the CPU or CUDA build, see README 'GPU machines')", False),
    ("nemo_toolkit", "nemo", "==3.0.0", 'pip install "nemo_toolkit[asr]==3.0.0"', False),
    ("lhotse", "lhotse", ">=1.33.0", 'pip install "lhotse>=1.33.0"', False),
    ("onnx", "onnx", ">=1.17", 'pip install "onnx>=1.17"', False),
    ("onnxruntime", "onnxruntime", ">=1.20", 'pip install "onnxruntime>=1.20"', False),
    ("tensorrt", "tensorrt", ">=10", 'on a GPU machine: pip install -e ".[trt]" (only for trt/ engines)', True),
)
TOOLS = (
    ("espeak-ng", "apt-get install espeak-ng (the synthetic corpus's voices)"),
    ("sox", "apt-get install sox (the synthetic corpus's resampling)"),
)


@dataclass
class Finding:
    level: str  # "ok" | "warn" | "FAIL"
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"{self.level:<4} {self.what}" + (f" -> fix: {self.fix}" if self.fix else "")


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("+")[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _satisfies(version: str, spec: str) -> bool:
    if spec.startswith("=="):
        return version.split("+")[0] == spec[2:]
    return _version_tuple(version) >= _version_tuple(spec[2:])


def check_packages(version_of: Callable[[str], str] = importlib.metadata.version) -> list[Finding]:
    found = []
    for dist, _, spec, fix, optional in PACKAGES:
        try:
            version = version_of(dist)
        except importlib.metadata.PackageNotFoundError:
            found.append(Finding("warn" if optional else "FAIL", f"{dist} is not installed (need {spec})", fix))
            continue
        if _satisfies(version, spec):
            found.append(Finding("ok", f"{dist} {version}"))
        else:
            found.append(Finding("warn" if optional else "FAIL", f"{dist} {version} does not match {spec}", fix))
    return found


def check_compute() -> list[Finding]:
    import torch

    found = []
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        found.append(Finding("ok", f"CUDA {torch.version.cuda}: {torch.cuda.device_count()} x {name}"))
        bf16 = torch.cuda.is_bf16_supported()
        found.append(Finding("ok" if bf16 else "warn", f"bf16 on {name}: {'yes' if bf16 else 'no'}",
                             "" if bf16 else "train with trainer.precision=16-mixed or 32"))  # fmt: skip
    else:
        cuda_build = torch.version.cuda is not None
        found.append(Finding("warn", "no CUDA device: CPU training only" + (" (a CUDA build of torch)" if cuda_build else ""),
                             "on a GPU machine install a CUDA build of torch==2.13.0 (README 'GPU machines')"))  # fmt: skip
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        found.append(Finding("ok" if bf16 else "warn", f"CPU bf16: {'native' if bf16 else 'emulated (slower than fp32)'}",
                             "" if bf16 else "nothing to do: nemo-sew train falls back to 32-bit on this CPU"))  # fmt: skip
    return found


def check_tools(which: Callable[[str], str | None] = shutil.which, fortune_dir: Path | None = None) -> list[Finding]:
    from manifests.synthetic import FORTUNE_DIR, fortune_files

    found = []
    for tool, fix in TOOLS:
        path = which(tool)
        found.append(Finding("ok", f"{tool}: {path}") if path else Finding("FAIL", f"{tool} not found on PATH", fix))
    fortune_dir = Path(fortune_dir or FORTUNE_DIR)
    try:
        files = fortune_files(fortune_dir)
    except (FileNotFoundError, NotADirectoryError):
        files = []
    found.append(
        Finding("ok", f"fortunes: {len(files)} files in {fortune_dir}") if files else
        Finding("FAIL", f"no fortune files in {fortune_dir}", "apt-get install fortunes fortunes-min (the synthetic corpus's text)")
    )  # fmt: skip
    return found


def check_manifests(paths: Sequence[str | Path], sample_rate: int = 16000) -> list[Finding]:
    from manifests.validate import validate_manifest

    found = []
    for path in paths:
        try:
            report = validate_manifest(path, sample_rate=sample_rate)
        except (OSError, ValueError) as err:
            found.append(Finding("FAIL", " ".join(str(err).split()), "give the path of a NeMo JSON-lines manifest"))
            continue
        if report.kept == 0:
            found.append(Finding("FAIL", f"{path}: no usable line ({len(report.skipped)} skipped)",
                                 "see the skip reasons above; nemo-sew validate-manifest lists them"))  # fmt: skip
        elif report.skipped:
            first = report.skipped[0]
            found.append(Finding("warn", f"{path}: {len(report.skipped)} of {report.kept + len(report.skipped)} lines "
                                 f"skipped (first: line {first.line_no}, {first.reason})",
                                 f"fix or drop them; training uses {report.out_path}"))  # fmt: skip
        else:
            found.append(Finding("ok", f"{path}: {report.kept} lines usable"))
    return found


def doctor(manifests: Sequence[str | Path] = (), sample_rate: int = 16000) -> list[Finding]:
    return [*check_packages(), *check_compute(), *check_tools(), *check_manifests(manifests, sample_rate)]
