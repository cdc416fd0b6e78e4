"""``nemo-sew bench train-step`` and ``nemo-sew bench compile``: CPU step and inference timings for issue 31.

    nemo-sew bench train-step --preset sew_tiny --seconds 10 --batch 4
    nemo-sew bench compile --preset sew_small --seconds 10

``train-step``: one CTC training step (preprocessor, encoder, decoder, CTC loss, backward) of a data-free model,
with the encoder trainable (``full``) and in the ``finetune.freeze_encoder_steps`` period (``frozen``: the encoder
runs without autograd). ``compile``: encoder inference at a fixed profile, eager against ``torch.compile``
(inductor) of the whole encoder and of its blocks only (:meth:`SqueezeEncoder.compile_blocks`). Variants are
timed interleaved in rounds in one process (:func:`nemo_sew.measure.interleaved_ms`), so their ratio is the
number to quote; compile time is reported separately.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from benchmarks.report import machine_line
from nemo_sew.measure import interleaved_ms

LABELS = "abcdefghijklmnopqrstuvwxyz' "


def bench_train_step(preset: str = "sew_tiny", seconds: float = 10.0, batch: int = 4, warmup: int = 2,
                     runs: int = 8, threads: int | None = None) -> str:  # fmt: skip
    """Median step time with the encoder trained and frozen; returns a BENCHMARKS.md section."""
    import lightning.pytorch as pl
    from omegaconf import open_dict

    from nemo_sew.quant.model import build_tiny_ctc

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_tiny_ctc(preset, dropout={"hidden": 0.0, "attention": 0.0, "activation": 0.0}).train()
    model.set_trainer(pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1))
    n = int(seconds * 16000)
    x, lengths = torch.randn(batch, n) * 0.1, torch.full((batch,), n, dtype=torch.int64)
    targets = torch.randint(0, len(LABELS), (batch, int(seconds * 12)))
    target_lengths = torch.full((batch,), targets.shape[1], dtype=torch.int64)

    def step(frozen: bool) -> Callable[[], None]:
        def run() -> None:
            with open_dict(model.cfg):
                model.cfg.finetune = {"freeze_encoder_steps": 10**9 if frozen else 0}
            model.zero_grad(set_to_none=True)
            log_probs, encoded_len, _, _ = model.forward_with_draw(x, lengths, draw=model.encoder.draw(0))
            loss = model.loss(log_probs=log_probs, targets=targets, input_lengths=encoded_len, target_lengths=target_lengths)
            loss.backward()

        return run

    times = interleaved_ms({"full": step(False), "frozen": step(True)}, warmup, runs, inference=False)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmd = f"nemo-sew bench train-step --preset {preset} --seconds {seconds:g} --batch {batch} --runs {runs}"
    return "\n".join([
        f"### Frozen-encoder training step: {preset}, batch {batch} x {seconds:g} s (issue 31)",
        "", f"`{cmd}` ({machine_line()}; one run, the two variants interleaved in {runs} rounds)", "",
        "| step | median ms | vs full |", "|---|---:|---:|",
        f"| encoder trained | {med['full']:.0f} | 1.00 |",
        f"| encoder frozen (no autograd, zero grads for DDP) | {med['frozen']:.0f} | {med['frozen'] / med['full']:.2f} |",
        "",
    ])  # fmt: skip


def bench_compile(preset: str = "sew_small", seconds: float = 10.0, batch: int = 1, squeeze: float = 2.0,
                  warmup: int = 3, runs: int = 10, threads: int | None = None) -> str:  # fmt: skip
    """Eager vs inductor-compiled encoder inference at a fixed profile; returns a BENCHMARKS.md section."""
    from nemo_sew.encoder import build_encoder
    from nemo_sew.profile import CompressionProfile

    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoders = {}
    for name in ("eager", "compiled", "blocks compiled"):
        enc = build_encoder(preset, squeeze_sampler={"low": 1.0, "high": 4.0}).eval()
        if encoders:
            enc.load_state_dict(encoders["eager"].state_dict())
        enc.set_profile(CompressionProfile(squeeze=float(squeeze)))
        encoders[name] = enc
    x = torch.randn(batch, encoders["eager"].layout.feat_in, encoders["eager"].layout.length(seconds)) * 0.1
    lengths = torch.full((batch,), x.shape[-1], dtype=torch.int64)
    whole = torch.compile(lambda a, b: encoders["compiled"].run(a, b).hidden, fullgraph=True)
    encoders["blocks compiled"].compile_blocks()
    fns = {
        "eager": lambda: encoders["eager"].run(x, lengths).hidden,
        "compiled": lambda: whole(x, lengths),
        "blocks compiled": lambda: encoders["blocks compiled"].run(x, lengths).hidden,
    }
    compile_s, diff = {}, {}
    with torch.inference_mode():
        ref = fns["eager"]()
        for name in ("compiled", "blocks compiled"):
            start = time.perf_counter()
            out = fns[name]()
            compile_s[name] = time.perf_counter() - start
            diff[name] = float((out - ref).abs().max())
    times = interleaved_ms(fns, warmup, runs)
    med = {k: statistics.median(v) for k, v in times.items()}
    cmd = f"nemo-sew bench compile --preset {preset} --seconds {seconds:g} --batch {batch} --squeeze {squeeze:g} --runs {runs}"
    rows = [f"| {name} | {med[name]:.1f} | {med['eager'] / med[name]:.2f} | "
            f"{compile_s.get(name, 0.0):.0f} | {diff.get(name, 0.0):.1e} |" for name in fns]  # fmt: skip
    return "\n".join([
        f"### torch.compile (inductor) vs eager encoder inference on CPU: {preset}, batch {batch} x {seconds:g} s, "
        f"squeeze {squeeze:g} (issue 31)", "",
        f"`{cmd}` ({machine_line()}; one run, the variants interleaved in {runs} rounds)", "",
        "| encoder | median ms | speed-up vs eager | first call (compile) s | max abs diff vs eager |",
        "|---|---:|---:|---:|---:|", *rows, "",
    ])  # fmt: skip
