"""``make gpu-check`` / ``nemo-sew doctor --gpu``: what anyone with a CUDA machine runs first (issue 31, item 8).

For each training family (plain, LayerDrop, stochastic squeeze, I3D gates local and global, pruning masks) at a
real size (``sew_tiny`` by default, waveform input, a CTC head): two bf16-mixed training steps on one GPU with
``torch.cuda.set_sync_debug_mode("warn")`` on during the second (every synchronising call is counted), then a
timed step: utterances per second and model FLOP utilisation (6 x the encoder's MACs from :mod:`nemo_sew.cost`
per step, over the step time and the GPU's dense bf16 peak). Where there are 2 GPUs, a 2-process DDP step
(NCCL, plain ``ddp``: no unused-parameter search) with LayerDrop on. On a machine without CUDA it prints why it
skips and exits 0. The table is Markdown for ``BENCHMARKS.md`` (``--write``).
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any

#: dense bf16 tensor-core peaks (FLOP/s) by device-name substring, from the vendors' data sheets (SXM parts)
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
NO_DROPOUT = {"hidden": 0.0, "attention": 0.0, "activation": 0.0, "feature": 0.0}
FAMILIES: dict[str, dict[str, Any]] = {
    "plain": {"dropout": NO_DROPOUT},
    "layerdrop": {"dropout": {**NO_DROPOUT, "layerdrop": 0.1}},
    "stochastic": {"dropout": NO_DROPOUT, "squeeze_sampler": {"squeeze": {"values": [1, 2, 3, 4]}}},
    "gates_local": {"dropout": NO_DROPOUT, "gates": {"kind": "local", "target": 0.5}},
    "gates_global": {"dropout": NO_DROPOUT, "gates": {"kind": "global", "target": 0.5}},
    "pruning": {"dropout": NO_DROPOUT, "pruning": {"units": ["heads", "ffn", "frontend"], "budget": "mac", "target": 0.6}},
}


def skip_reason() -> str | None:
    """Why the GPU check cannot run here (None: it can)."""
    import torch

    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, CUDA build: {torch.version.cuda is not None})"
    return None


def _peak(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def _batch(batch: int, seconds: float, device: Any):
    import torch

    n = int(seconds * 16000)
    x = torch.randn(batch, n, device=device) * 0.1
    lengths = torch.full((batch,), n, dtype=torch.int64, device=device)
    targets = torch.randint(0, 27, (batch, int(seconds * 12)), device=device)
    target_lengths = torch.full((batch,), targets.shape[1], dtype=torch.int64, device=device)
    return x, lengths, targets, target_lengths


def check_family(family: str, preset: str = "sew_tiny", batch: int = 8, seconds: float = 10.0) -> dict[str, Any]:
    """Two bf16 steps (the second under sync debug mode), then one timed step; returns the table row."""
    import torch

    from nemo_sew.evaluate import encoder_gmacs_per_second
    from nemo_sew.quant.model import build_tiny_ctc

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_tiny_ctc(preset, **FAMILIES[family]).to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, lengths, targets, target_lengths = _batch(batch, seconds, device)

    def step(i: int) -> float:
        optim.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            log_probs, enc_len, _, out = model.forward_with_draw(x, lengths, draw=model.encoder.draw(i))
            loss = model.loss(log_probs=log_probs, targets=targets, input_lengths=enc_len, target_lengths=target_lengths)
            for value in out.aux_losses.values():
                loss = loss + value
        loss.backward()
        optim.step()
        return loss

    step(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            loss = step(1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message).lower() for w in caught)
    times = []
    for i in range(2, 5):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    seconds_per_step = statistics.median(times)
    model.eval()
    gmacs = encoder_gmacs_per_second(model.encoder, seconds=seconds) * seconds * batch  # the batch's encoder GMACs
    peak = _peak(torch.cuda.get_device_name(0))
    return {
        "family": family, "preset": preset, "batch": f"{batch} x {seconds:g} s", "loss": float(loss),
        "finite": bool(torch.isfinite(loss)), "syncs": syncs, "step_ms": 1e3 * seconds_per_step,
        "utt_s": batch / seconds_per_step,
        "mfu": (6 * gmacs * 1e9 / seconds_per_step / peak) if peak else None,
        "memory_gb": torch.cuda.max_memory_allocated() / 1e9,
    }  # fmt: skip


def _ddp_rank(rank: int, store: str, preset: str, out: Any) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    from nemo_sew.quant.model import build_tiny_ctc

    class EncoderStep(nn.Module):  # what DDP wraps: the encoder's training forward at the step's draw
        def __init__(self, encoder: nn.Module) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, x: torch.Tensor, lengths: torch.Tensor, step: int) -> torch.Tensor:
            return self.encoder.run(x, lengths, self.encoder.draw(step)).hidden.float().pow(2).mean()

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        encoder = build_tiny_ctc(preset, dropout={**NO_DROPOUT, "layerdrop": 0.5}).encoder.cuda().train()
        model = DistributedDataParallel(EncoderStep(encoder), device_ids=[rank], find_unused_parameters=False)
        x, lengths, _, _ = _batch(2, 4.0, torch.device("cuda", rank))
        for step in range(3):  # LayerDrop drops blocks in some of these steps (the same on both ranks)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(x[:, None, :], lengths, step)
            loss.backward()
        torch.cuda.synchronize()
        out.put(("ok", rank))
    except Exception as e:  # noqa: BLE001 - reported in the table
        out.put((f"{type(e).__name__}: {e}", rank))
    finally:
        dist.destroy_process_group()


def check_ddp(preset: str = "sew_tiny") -> str:
    """A 2-GPU DDP step with LayerDrop 0.5 (plain ``ddp``); "skipped: ..." with fewer than 2 GPUs."""
    import tempfile

    import torch
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < 2:
        return f"skipped: {torch.cuda.device_count()} GPU(s), the DDP check needs 2"
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_ddp_rank, args=(r, f"{tmp}/store", preset, out)) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(600)
    results = sorted(out.get() for _ in range(2))
    return "ok" if all(r == "ok" for r, _ in results) else "; ".join(f"rank {k}: {r}" for r, k in results)


def gpu_check(preset: str = "sew_tiny", batch: int = 8, seconds: float = 10.0) -> tuple[str, bool]:
    """(Markdown section, every check passed). On a machine without CUDA: the skip line and True."""
    reason = skip_reason()
    if reason is not None:
        return f"skip: GPU check not run: {reason}; run it on a CUDA machine (README 'GPU machines')", True
    import torch

    from nemo_sew.measure import machine_line

    rows, ok = [], True
    for family in FAMILIES:
        try:
            r = check_family(family, preset, batch, seconds)
        except Exception as e:  # noqa: BLE001 - one failing family must not hide the others
            rows.append(f"| {family} | FAILED: {type(e).__name__}: {e} | | | | | |")
            ok = False
            continue
        ok &= r["finite"] and r["syncs"] == 0
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        rows.append(f"| {family} | {r['loss']:.3f} | {r['syncs']} | {r['step_ms']:.0f} | {r['utt_s']:.1f} | {mfu} | "
                    f"{r['memory_gb']:.1f} |")  # fmt: skip
    ddp = check_ddp(preset)
    ok &= ddp == "ok" or ddp.startswith("skipped")
    name = torch.cuda.get_device_name(0)
    return "\n".join([
        f"### GPU check: {preset}, bf16-mixed, batch {batch} x {seconds:g} s on {name} (issue 31)", "",
        f"`make gpu-check` ({machine_line()}, {torch.cuda.device_count()} x {name}; one run, median of 3 timed steps)",
        "", "| family | loss | syncs in step 2 | step ms | utt/s | MFU (bf16 dense peak) | peak memory GB |",
        "|---|---:|---:|---:|---:|---:|---:|", *rows, "", f"2-GPU DDP step (plain ddp, LayerDrop 0.5): {ddp}", "",
    ]), ok  # fmt: skip
