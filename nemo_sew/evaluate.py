"""Evaluation and measurement: WER/CER on a manifest, encoder GMACs per second of audio, latency, RTFx."""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from nemo.collections.asr.metrics.wer import word_error_rate
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from nemo_sew.cost import encoder_cost, macs_per_second
from nemo_sew.encoder import SqueezeEncoder
from nemo_sew.errors import UserError
from nemo_sew.measure import NOISY_SPREAD, spread, timed_ms
from nemo_sew.profile import CompressionProfile


def read_manifest(path: str | Path) -> list[dict]:
    """NeMo JSON-lines manifest; relative audio paths resolve against the manifest's directory."""
    path = Path(path)
    entries = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{i}: malformed JSON line ({e})") from e
        audio = Path(entry["audio_filepath"])
        entry["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
        entries.append(entry)
    if not entries:
        raise UserError(f"{path}: manifest has no entries")
    return entries


def manifest_durations(path: str | Path) -> list[float]:
    """Seconds of audio of every manifest entry: its ``duration`` field, else read from the file's header."""
    import soundfile

    out = []
    for entry in read_manifest(path):
        duration = entry.get("duration")
        out.append(float(duration) if duration is not None else float(soundfile.info(entry["audio_filepath"]).duration))
    return out


def error_rates(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """Corpus WER and CER with NeMo's ``word_error_rate``."""
    return (
        word_error_rate(list(hypotheses), list(references), use_cer=False),
        word_error_rate(list(hypotheses), list(references), use_cer=True),
    )


def checked_manifest(model, manifest: str | Path, max_utterances: int | None = None) -> tuple[Path, list]:
    """Validate ``manifest`` the way training does (:func:`manifests.validate.validate_manifest`: malformed
    lines, missing or unreadable audio, multi-channel or wrong-rate audio, clips too short for the model's
    active profile are logged skips); the checked manifest's path (at most ``max_utterances`` evenly spaced
    lines of it, when given) and the skipped lines. Raises ``ValueError`` naming the manifest when no line is
    usable."""
    from manifests.validate import validate_manifest

    min_seconds = model.min_input_seconds() if hasattr(model, "min_input_seconds") else 0.0
    report = validate_manifest(manifest, sample_rate=int(model.cfg.get("sample_rate", 16000)), min_duration=min_seconds)
    report.raise_if_empty()
    path = Path(report.out_path)
    if max_utterances:
        from nemo_sew.demo_sweep import bounded_manifest

        path = bounded_manifest(path, max_utterances, path.with_name(f"{path.stem}.subset{max_utterances}.json"))[0]
    return path, list(report.skipped)


def transcribe_manifest(model, manifest: str | Path, batch_size: int = 16, profile=None) -> tuple[list[str], list[str]]:
    """Greedy CTC transcripts of every manifest entry (through NeMo's ``transcribe``) and the references."""
    entries = read_manifest(manifest)
    hyps = model.transcribe([e["audio_filepath"] for e in entries], batch_size=batch_size, verbose=False, profile=profile)
    texts = [h.text if hasattr(h, "text") else str(h) for h in hyps]
    return texts, [e["text"] for e in entries]


def _encoder_input(encoder: SqueezeEncoder, seconds: float, batch: int, sample_rate: int, hop_seconds: float):
    n = encoder.layout.length(seconds, sample_rate, hop_seconds)
    param = next(encoder.parameters())
    x = torch.randn(batch, encoder.layout.feat_in, n, device=param.device, dtype=param.dtype)
    return x, torch.full((batch,), n, dtype=torch.int64, device=param.device)


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def count_macs(fn: Callable[[], Any]) -> float:
    """Multiply-accumulates of one call of ``fn`` (FLOPs / 2), by ``torch.utils.flop_counter``.

    ``aten._scaled_dot_product_flash_attention_for_cpu`` (what SDPA runs on CPU) has no formula in
    torch's counter, so attention would count zero; it is counted here like the CUDA attention kernels.
    Element-wise ops, norms and softmax are not counted.
    """
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop}
    # no_grad, not inference_mode: the counter's module tracker registers autograd hooks
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 2


def active_profile(encoder: SqueezeEncoder) -> CompressionProfile:
    """The encoder's active profile with the squeeze it really runs (trained, learned or set)."""
    return dataclasses.replace(encoder.profile, squeeze=float(encoder.squeeze))


def encoder_gmacs_per_second(
    encoder: SqueezeEncoder, seconds: float = 10.0, sample_rate: int = 16000, hop_seconds: float = 0.01
) -> float:
    """Encoder multiply-accumulates per second of audio at the active profile, from the analytic cost model
    (:func:`nemo_sew.cost.macs_per_second`: matmuls, convolutions and attention, the same ops
    :func:`count_macs` counts; the mel preprocessor's FFT is not counted) for one ``seconds``-long input."""
    return macs_per_second(encoder.arch, active_profile(encoder), seconds, sample_rate, hop_seconds)


def utterance_macs(
    encoder: SqueezeEncoder, durations: Sequence[float], sample_rate: int = 16000, hop_seconds: float = 0.01
) -> torch.Tensor:
    """Encoder MACs of each utterance of the given durations (seconds) at the active profile: the real input
    lengths, not a padded batch (:func:`nemo_sew.cost.encoder_cost`)."""
    lengths = torch.tensor([encoder.layout.length(d, sample_rate, hop_seconds) for d in durations], dtype=torch.int64)
    return encoder_cost(encoder.arch, active_profile(encoder), lengths).total


def gated_utterance_stats(model, manifest: str | Path) -> dict[str, Any]:
    """Each utterance of ``manifest`` alone through the preprocessor and the gated (I3D) encoder, eval mode, at
    the active profile (the gates depend on the input): realised ``depth`` (layers), encoder ``macs``, every
    gate's open probability (``gate_probs``: one list per utterance in the order of ``slots`` =
    ``encoder.gate_slots``), ``duration`` (seconds) and ``chars`` (reference characters without spaces)."""
    from manifests.audio import load_audio

    encoder = model.encoder
    param = next(model.parameters())
    sample_rate = int(model.cfg.get("sample_rate", 16000))
    out: dict[str, Any] = {"slots": [[i, name] for i, name in encoder.gate_slots], "depth": [], "macs": [],
                           "gate_probs": [], "duration": [], "chars": []}  # fmt: skip
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for entry in read_manifest(manifest):
                wav, _ = load_audio(entry["audio_filepath"], expected_sample_rate=sample_rate)
                audio = torch.as_tensor(wav, device=param.device)[None]
                length = torch.tensor([audio.shape[1]], device=param.device)
                signal, signal_len = model.preprocessor(input_signal=audio, length=length)
                stats = encoder.run(signal, signal_len, measure=True).plain_stats()
                out["depth"].append(float(stats["depth"][0]))
                out["macs"].append(float(stats["macs"][0]))
                out["gate_probs"].append([float(p) for p in stats["gate_probs"][0]])
                out["duration"].append(audio.shape[1] / sample_rate)
                out["chars"].append(len(str(entry.get("text", "")).replace(" ", "")))
    finally:
        model.train(was_training)
    return out


@dataclass
class Latency:
    batch: int
    seconds: float
    median_ms: float
    rtfx: float
    runs: int
    spread: float = 0.0  # interquartile range / median of the samples (nemo_sew.measure.spread)


def measure_latency(model, seconds: float = 10.0, batch: int = 1, warmup: int = 2, runs: int = 7) -> Latency:
    """Median wall time of the model's forward (preprocessor + encoder + CTC head) on ``batch`` x ``seconds``.

    Timed by :func:`nemo_sew.measure.timed_ms` (``warmup`` untimed forwards, then ``runs`` timed ones,
    with a CUDA synchronize inside every timed span on GPU). RTFx = seconds of audio processed per second of
    compute (``batch * seconds / median``).
    """
    call, sync = forward_call(model, seconds, batch)
    was_training = model.training
    model.eval()
    try:
        times_ms = timed_ms(call, warmup, runs, sync=sync)
    finally:
        model.train(was_training)
    return latency_from(times_ms, batch, seconds)


def latency_from(times_ms: list[float], batch: int = 1, seconds: float = 10.0) -> Latency:
    """:class:`Latency` of timing samples (median, RTFx, spread)."""
    median_ms = statistics.median(times_ms)
    return Latency(batch=batch, seconds=seconds, median_ms=median_ms, rtfx=batch * seconds / (median_ms / 1e3),
                   runs=len(times_ms), spread=spread(times_ms))  # fmt: skip


def forward_call(model, seconds: float = 10.0, batch: int = 1):
    """A no-argument call of the model's forward on ``batch`` x ``seconds`` of noise (what :func:`measure_latency`
    times), and its CUDA synchronize (or None)."""
    sample_rate = int(model.cfg.get("sample_rate", 16000))
    param = next(model.parameters())
    audio = torch.randn(batch, int(seconds * sample_rate), device=param.device) * 0.1
    lengths = torch.full((batch,), audio.shape[1], dtype=torch.int64, device=param.device)
    sync = torch.cuda.synchronize if param.device.type == "cuda" else None
    return (lambda: model.forward(input_signal=audio, input_signal_length=lengths)), sync


@dataclass
class EvalResult:
    manifest: str
    utterances: int
    wer: float
    cer: float
    params_m: float
    encoder_gmacs_per_s: float  # encoder MACs of the manifest's utterances (real lengths) / their total seconds
    latency_ms_10s: float
    rtfx: float
    profile: dict
    latency_spread: float = 0.0  # interquartile range / median of the timed forwards; > NOISY_SPREAD is flagged
    encoder_gmacs_per_utterance: list[float] = field(default_factory=list)  # in manifest order
    encoder_gmacs_mean: float = 0.0  # mean over utterances
    depth_per_utterance: list[float] = field(default_factory=list)  # realised I3D depth (gated encoders only)
    depth_mean: float | None = None
    skipped: int = 0  # manifest lines skipped by validation (logged with their reason)
    skipped_lines: list = field(default_factory=list)  # [line number, file, reason]
    # the cross-engine test (a synthesiser never heard in training saying the test sentences), when given
    cross_manifest: str | None = None
    cross_utterances: int | None = None
    cross_wer: float | None = None
    cross_cer: float | None = None

    @property
    def cross_ratio(self) -> float | None:
        """Cross-engine CER / in-domain CER (the goal is <= 2)."""
        if self.cross_cer is None:
            return None
        return self.cross_cer / self.cer if self.cer > 0 else float("inf")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        """One line: what a user asks ``evaluate`` for (the rest is in :meth:`to_json`)."""
        bits = self.profile.get("weight_bits") if isinstance(self.profile, dict) else None
        profile = {k: v for k, v in (self.profile or {}).items() if v is not None and k != "weight_bits"}
        profile["weights"] = "fp" if bits in (None, 16) else f"{bits}-bit"
        text = (f"WER {self.wer:.3f}  CER {self.cer:.3f}  ({self.utterances} utterances"
                + (f", {self.skipped} skipped" if self.skipped else "") + ")"
                + (f"  cross-engine CER {self.cross_cer:.3f} ({self.cross_ratio:.2f}x)" if self.cross_cer is not None else "")
                + f"  {self.encoder_gmacs_per_s:.3f} encoder GMACs/s  latency {self.latency_ms_10s:.1f} ms per 10 s"
                + (f" (NOISY: spread {self.latency_spread:.0%})" if self.latency_spread > NOISY_SPREAD else "")
                + f"  RTFx {self.rtfx:.0f}"
                + (f"  depth {self.depth_mean:.2f}" if self.depth_mean is not None else "")
                + "  profile " + ", ".join(f"{k}={v}" for k, v in profile.items()))  # fmt: skip
        return text


def evaluate(
    model,
    manifest: str | Path,
    batch_size: int = 16,
    profile=None,
    cross_manifest: str | Path | None = None,
    max_utterances: int | None = None,
    latency: bool = True,
) -> EvalResult:
    """WER, CER, parameters, encoder GMACs/s, latency and RTFx of ``model`` at ``profile`` on ``manifest``
    (``latency=False``: not timed, 0; :func:`nemo_sew.sweep.sweep_rows` times all profiles interleaved);
    with ``cross_manifest`` (the synthetic corpus's ``cross.json``), also WER and CER on that cross-engine test;
    ``max_utterances``: at most that many evenly spaced usable lines of each manifest."""
    cross: dict[str, Any] = {}
    source = manifest
    with model.profile_scope(profile):
        manifest, skipped = checked_manifest(model, source, max_utterances)  # bad lines: logged skips, counted
        hyps, refs = transcribe_manifest(model, manifest, batch_size=batch_size)
        wer, cer = error_rates(hyps, refs)
        if cross_manifest is not None:
            cross_checked, cross_skipped = checked_manifest(model, cross_manifest, max_utterances)
            skipped = [*skipped, *cross_skipped]
            cross_hyps, cross_refs = transcribe_manifest(model, cross_checked, batch_size=batch_size)
            cross_wer, cross_cer = error_rates(cross_hyps, cross_refs)
            cross = {"cross_manifest": str(cross_manifest), "cross_utterances": len(cross_refs),
                     "cross_wer": cross_wer, "cross_cer": cross_cer}  # fmt: skip
        hop = float(model.cfg.preprocessor.get("window_stride", 0.01) or 0.01)
        durations = manifest_durations(manifest)
        depth: list[float] = []
        if getattr(model.encoder, "gate_options", None) is not None:  # I3D: the MACs depend on the input
            gated = gated_utterance_stats(model, manifest)
            per_utt, depth = torch.tensor(gated["macs"], dtype=torch.float64) / 1e9, gated["depth"]
        else:
            per_utt = utterance_macs(model.encoder, durations, int(model.cfg.sample_rate), hop) / 1e9
        lat = measure_latency(model) if latency else Latency(1, 10.0, 0.0, 0.0, 0)
        active = model.profile.to_dict()
    return EvalResult(
        manifest=str(source),
        utterances=len(refs),
        wer=wer,
        cer=cer,
        params_m=sum(p.numel() for p in model.parameters()) / 1e6,
        encoder_gmacs_per_s=float(per_utt.sum()) / sum(durations),
        latency_ms_10s=lat.median_ms,
        rtfx=lat.rtfx,
        profile=active,
        latency_spread=lat.spread,
        encoder_gmacs_per_utterance=[float(v) for v in per_utt],
        encoder_gmacs_mean=float(per_utt.mean()),
        depth_per_utterance=depth,
        depth_mean=sum(depth) / len(depth) if depth else None,
        skipped=len(skipped),
        skipped_lines=[list(skip) for skip in skipped],
        **cross,
    )
