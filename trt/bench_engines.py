"""Benchmark TensorRT engines from ``build_engines.py``: latency p50/p90, throughput, RTFx, GPU memory.

    python trt/bench_engines.py engines/*.plan --batch 1,16 --seconds 10 --out bench.json --markdown bench.md

Per engine and per (batch, seconds): random audio of that length (every item full length), ``--warmup``
runs, then ``--iters`` timed runs with CUDA events on one stream (GPU time of ``execute_async_v3``; no
host transfers, no preprocessing or decoding). Throughput = utterances per second at the median latency;
RTFx = seconds of audio per second of compute (``batch * seconds / p50``); ``engine_mb`` the plan file's size;
``parity_vs_onnxruntime`` the max abs difference of the engine's first output against onnxruntime (CPU) on the
same input, over the valid frames (inf when the lengths differ), when the ONNX file is found (the sidecar's
``onnx_path``, else beside the plan). ``nemo-sew sweep --engines bench_engines.json`` joins the rows by profile
name. Shapes outside the engine's
optimisation profile are skipped and listed. Uses TensorRT's name-based I/O tensor API (10.x and 11.x)
and torch for CUDA memory. The inputs are written on torch's current stream; the timed stream waits for it
before the first run.

Outputs: where ``get_tensor_shape`` is concrete once the input shapes are set (every graph the export writes
today), a torch tensor of that shape. An output with a data-dependent dim (-1 after the input shapes are set:
e.g. a frame count computed from the ``length`` values) gets a TensorRT ``IOutputAllocator`` backed by a torch
buffer (:func:`torch_output_allocator`): it is preallocated for an upper bound -- our graphs emit at most one frame
per 20 ms of audio, so each -1 dim is bounded by ``ceil(50 * seconds) + 1`` -- and TensorRT asks it for the exact
byte size at run time, where it only grows (once, in the warm-up) if the bound was too small.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from common import input_frames, require_tensorrt, run_main, torch_dtype  # trt/ is on sys.path as the script dir


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


MAX_FRAMES_PER_SECOND = 50
"""Upper bound of the output frame rate of our graphs (20 ms frames at the finest), for data-dependent outputs."""


def frame_bound(seconds: float) -> int:
    """Most output frames a graph emits for ``seconds`` of audio (the size of a data-dependent time axis)."""
    return math.ceil(MAX_FRAMES_PER_SECOND * seconds) + 1


def bounded_shape(shape: Sequence[int], seconds: float) -> tuple[int, ...]:
    """``shape`` with every data-dependent dim (-1) replaced by :func:`frame_bound`."""
    return tuple(frame_bound(seconds) if int(d) < 0 else int(d) for d in shape)


def torch_output_allocator(trt: Any, nbytes: int) -> Any:
    """A ``trt.IOutputAllocator`` over a torch CUDA buffer of ``nbytes`` (grown when TensorRT asks for more);
    ``.shape`` is the shape TensorRT reported last. Built per call, so this module imports without TensorRT."""
    import torch

    class _Allocator(trt.IOutputAllocator):
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffer = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device="cuda")
            self.shape: tuple[int, ...] | None = None

        def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
            if size > self.buffer.numel():
                self.buffer = torch.empty(int(size), dtype=torch.uint8, device="cuda")
            return self.buffer.data_ptr()

        def reallocate_output_async(self, tensor_name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            return self.reallocate_output(tensor_name, memory, size, alignment)

        def notify_shape(self, tensor_name: str, shape: Any) -> None:
            self.shape = tuple(shape)

    return _Allocator()


def onnx_for(plan_path: Path, info: dict[str, Any]) -> Path | None:
    """The ONNX file an engine was built from (the sidecar's path, else its name beside the plan), if present."""
    for candidate in (info.get("onnx_path"), plan_path.parent / info["onnx"] if info.get("onnx") else None):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def valid_max_abs_diff(engine_out: Any, ort_out: Any, lengths: Any, time_axis: int) -> float:
    """Max abs difference of two outputs (numpy) over the valid frames given by ``lengths`` (the rest is padding)."""
    import numpy as np

    a, b = np.asarray(engine_out, dtype=np.float32), np.asarray(ort_out, dtype=np.float32)
    if a.shape != b.shape:
        return float("inf")
    frames = np.arange(a.shape[time_axis])
    valid = frames[None, :] < np.asarray(lengths).reshape(-1, 1)  # (B, T)
    valid = valid[:, :, None] if time_axis == 1 else valid[:, None, :]
    diff = np.where(valid, np.abs(a - b), 0.0)
    return float(diff.max()) if diff.size else 0.0


def _engine_memory(engine: Any) -> int:
    size = getattr(engine, "device_memory_size_v2", None)  # 10.x (newer) and 11.x
    if size is None:
        size = getattr(engine, "device_memory_size", 0)  # removed in 11.x
    return int(size)


def bench_engine(
    trt: Any, plan_path: Path, batches: Sequence[int], seconds: Sequence[float], warmup: int = 10, iters: int = 50
) -> list[dict[str, Any]]:
    import numpy as np
    import torch

    info_path = plan_path.with_suffix(".json")
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    meta = info.get("metadata", {})
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise RuntimeError(f"{plan_path}: could not deserialize (built for another GPU or TensorRT version?)")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    lo, _, hi = engine.get_tensor_profile_shape("audio_signal", 0)  # (min, opt, max) of profile 0
    signal_shape = tuple(engine.get_tensor_shape("audio_signal"))
    stream = torch.cuda.Stream()
    onnx_path = onnx_for(plan_path, info)
    session = None
    if onnx_path is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rows = []
    for batch in batches:
        for sec in seconds:
            frames = input_frames(meta, sec)
            shape = (batch, frames) if len(signal_shape) == 2 else (batch, signal_shape[1], frames)
            row: dict[str, Any] = {"engine": plan_path.name, "profile": (meta.get("profile") or {}).get("name"),
                                   "precision": info.get("precision"), "batch": batch, "seconds": sec}  # fmt: skip
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                row["skipped"] = f"shape {shape} outside the engine's profile {tuple(lo)}..{tuple(hi)}"
                rows.append(row)
                continue
            torch.cuda.reset_peak_memory_stats()
            dtype = {name: torch_dtype(trt, engine.get_tensor_dtype(name)) for name in names}
            tensors = {"audio_signal": (0.1 * torch.randn(shape, device="cuda")).to(dtype["audio_signal"])}
            if "length" in inputs:  # every item full length
                tensors["length"] = torch.full((batch,), frames, device="cuda", dtype=dtype["length"])
            for name in inputs:
                context.set_input_shape(name, tuple(tensors[name].shape))
                context.set_tensor_address(name, tensors[name].data_ptr())
            allocators = {}  # kept alive while the context uses them
            for name in outputs:
                out_shape = tuple(context.get_tensor_shape(name))
                if any(d < 0 for d in out_shape):  # data-dependent: TensorRT asks for the size while it runs
                    itemsize = torch.empty((), dtype=dtype[name]).element_size()
                    allocators[name] = torch_output_allocator(trt, math.prod(bounded_shape(out_shape, sec)) * itemsize)
                    context.set_output_allocator(name, allocators[name])
                    continue
                tensors[name] = torch.empty(out_shape, device="cuda", dtype=dtype[name])
                context.set_tensor_address(name, tensors[name].data_ptr())
            stream.wait_stream(torch.cuda.current_stream())  # the inputs were written on the current stream
            times = []
            with torch.cuda.stream(stream):
                for i in range(warmup + iters):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record(stream)
                    if not context.execute_async_v3(stream.cuda_stream):
                        raise RuntimeError(f"{plan_path}: execute_async_v3 failed for shape {shape}")
                    end.record(stream)
                    end.synchronize()
                    if i >= warmup:
                        times.append(start.elapsed_time(end))  # ms
            parity = None
            if session is not None:  # the engine's outputs against onnxruntime (CPU) on the same input
                got = []
                for name in outputs:
                    if name in allocators:
                        a = allocators[name]
                        n = math.prod(a.shape)
                        got.append(a.buffer[: n * torch.empty((), dtype=dtype[name]).element_size()]
                                   .view(dtype[name]).reshape(a.shape).float().cpu().numpy())
                    else:
                        got.append(tensors[name].float().cpu().numpy())
                feed = {n: tensors[n].cpu().numpy() for n in inputs}
                ref = session.run(outputs, feed)
                time_axis = 1 if meta.get("graph") == "ctc" else 2
                parity = valid_max_abs_diff(got[0], ref[0], ref[1], time_axis)
                if not np.array_equal(np.asarray(got[1]).astype(np.int64), np.asarray(ref[1]).astype(np.int64)):
                    parity = float("inf")  # output lengths differ
            p50, p90 = (float(np.percentile(times, q)) for q in (50, 90))
            row.update(
                p50_ms=round(p50, 3), p90_ms=round(p90, 3), throughput_utt_s=round(batch / (p50 / 1e3), 1),
                rtfx=round(batch * sec / (p50 / 1e3), 1), engine_memory_mb=round(_engine_memory(engine) / 2**20, 1),
                engine_mb=round(plan_path.stat().st_size / 1e6, 2),
                parity_vs_onnxruntime=None if parity is None else round(parity, 5),
                io_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1), iters=iters,
            )  # fmt: skip
            rows.append(row)
    return rows


def to_markdown(rows: Sequence[dict[str, Any]], header: str) -> str:
    cols = ["engine", "profile", "precision", "batch", "seconds", "p50_ms", "p90_ms", "throughput_utt_s", "rtfx",
            "engine_mb", "engine_memory_mb", "io_memory_mb", "parity_vs_onnxruntime"]  # fmt: skip
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if "skipped" in r:
            first = [r["engine"], r.get("profile"), r.get("precision"), r["batch"], r["seconds"]]
            cells = [str(c) for c in first] + [f"skipped: {r['skipped']}"] + [""] * (len(cols) - 6)
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append("| " + " | ".join(str(r.get(c)) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("engines", nargs="+", type=Path, help=".plan files from build_engines.py")
    parser.add_argument("--batch", type=_ints, default=[1, 16], help="batch sizes, e.g. 1,16")
    parser.add_argument("--seconds", type=_floats, default=[10.0], help="audio durations in seconds, e.g. 5,10,30")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("bench_engines.json"))
    parser.add_argument("--markdown", type=Path, default=None, help="also write a markdown table here")
    args = parser.parse_args(argv)
    trt = require_tensorrt()
    import torch

    missing = [str(p) for p in args.engines if not p.is_file()]
    if missing:
        parser.error(f"engine files not found: {missing}")
    rows = []
    for plan in args.engines:
        rows.extend(bench_engine(trt, plan, args.batch, args.seconds, args.warmup, args.iters))
    machine = {"gpu": torch.cuda.get_device_name(), "tensorrt": trt.__version__, "torch": torch.__version__}
    command = "python trt/bench_engines.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(json.dumps({"command": command, "machine": machine, "rows": rows}, indent=2) + "\n")
    header = f"`{command}` on {machine['gpu']}, TensorRT {machine['tensorrt']}"
    table = to_markdown(rows, header)
    if args.markdown:
        args.markdown.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
