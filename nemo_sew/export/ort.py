"""Transcription runners with one interface: onnxruntime on an exported CTC graph, or PyTorch on the NeMo model.

    from nemo_sew.export import OnnxCTCRunner, TorchCTCRunner
    OnnxCTCRunner("out/s2.onnx", intra_op_threads=4).transcribe(paths, batch_size=16)
    TorchCTCRunner("model.nemo", profile="s2").transcribe(paths, batch_size=16)

Both take raw waveforms (a list of 1-D float arrays at the model's sample rate), pad them into a batch,
run the network and greedy-decode CTC (argmax, collapse repeats, drop the blank = last index, map
through the vocabulary). For graphs on log-mel features the features are computed in PyTorch with
NeMo's preprocessor built from the graph's ``feature_config`` metadata (dither 0, no padding to a
multiple, as NeMo's ``transcribe`` does); the preprocessor is not part of the graph.
"""

from __future__ import annotations

import contextlib
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from nemo_sew.export.onnx import _session, _vocabulary, parse_metadata

BPE_SPACE = "\u2581"  # SentencePiece's word-boundary mark


def pad_batch(waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad 1-D waveforms into ``(B, N)`` float32 plus their lengths ``(B,)`` int64."""
    if not waveforms:
        raise ValueError("expected at least one waveform, got an empty list")
    arrays = [np.asarray(w, dtype=np.float32) for w in waveforms]
    for i, w in enumerate(arrays):
        if w.ndim != 1:
            raise ValueError(f"expected 1-D waveforms, got shape {w.shape} for item {i}")
    lengths = np.array([len(w) for w in arrays], dtype=np.int64)
    batch = np.zeros((len(arrays), int(lengths.max())), dtype=np.float32)
    for i, w in enumerate(arrays):
        batch[i, : len(w)] = w
    return batch, lengths


def _pieces_to_text(pieces: list[str]) -> str:
    """SentencePiece detokenisation: the boundary mark becomes a space (dropped at the very start), as
    ``decode_pieces`` does, and the unknown piece becomes `` \u2047 ``."""
    parts = []
    for i, piece in enumerate(pieces):
        if piece == "<unk>":
            parts.append(" \u2047 ")
            continue
        text = piece.replace(BPE_SPACE, " ")
        parts.append(text[1:] if i == 0 and text.startswith(" ") else text)
    return "".join(parts)


_SPECIAL_TOKEN = re.compile(r"^(?:\[.*\]$|<.*>$|##|\u2581|\s*$)")


def vocabulary_punctuation(vocabulary: Sequence[str]) -> set[str]:
    """Punctuation characters of the ordinary (not special, not word-initial) tokens of a subword vocabulary."""
    ordinary = [tok for tok in vocabulary if not _SPECIAL_TOKEN.match(tok)]
    return {ch for tok in ordinary for ch in tok if unicodedata.category(ch).startswith("P")}


def ctc_greedy_decode(
    logprobs: np.ndarray, lengths: np.ndarray, vocabulary: Sequence[str], tokenizer: str = "char"
) -> list[str]:
    """Greedy CTC: per item, argmax over ``logprobs (B, T, V + 1)`` on its first ``lengths[b]`` frames,
    collapse repeats, drop the blank (index ``V``), map ids to labels.

    ``char``: labels concatenated. ``bpe``: SentencePiece pieces detokenised, then the space before a
    punctuation mark of the vocabulary is removed (what NeMo's BPE CTC decoding does).
    """
    logprobs = np.asarray(logprobs)
    blank = len(vocabulary)
    if logprobs.ndim != 3 or logprobs.shape[-1] != blank + 1:
        raise ValueError(f"expected logprobs of shape (B, T, {blank + 1}), got {logprobs.shape}")
    punct = sorted(vocabulary_punctuation(vocabulary)) if tokenizer == "bpe" else []
    space_before_punct = re.compile(r"\s(?=" + "|".join(re.escape(p) for p in punct) + ")") if punct else None
    ids = logprobs.argmax(-1)  # (B, T)
    texts = []
    for b, n in enumerate(np.asarray(lengths).tolist()):
        seq = ids[b, : int(n)]
        keep = np.ones(len(seq), dtype=bool)
        keep[1:] = seq[1:] != seq[:-1]  # collapse repeats
        labels = [vocabulary[int(t)] for t in seq[keep] if t != blank]
        if tokenizer != "bpe":
            texts.append("".join(labels))
            continue
        text = _pieces_to_text(labels)
        texts.append(space_before_punct.sub("", text) if space_before_punct else text)
    return texts


class CTCRunner:
    """The shared part: batching, audio loading and greedy decoding. Subclasses implement :meth:`logprobs`."""

    sample_rate: int
    vocabulary: list[str]
    tokenizer: str

    def logprobs(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(B, T', V + 1)`` log-probabilities and ``(B,)`` output lengths of one padded batch."""
        raise NotImplementedError

    def transcribe_waveforms(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        """Texts of one batch of 1-D float waveforms at :attr:`sample_rate`."""
        logprobs, lengths = self.logprobs(waveforms)
        return ctc_greedy_decode(logprobs, lengths, self.vocabulary, self.tokenizer)

    def transcribe(self, paths: Sequence[str | Path], batch_size: int = 16) -> list[str]:
        """Texts of audio files (mono, at :attr:`sample_rate`), in order, ``batch_size`` files per batch."""
        from manifests.audio import load_audio

        if batch_size < 1:
            raise ValueError(f"expected batch_size >= 1, got {batch_size}")
        texts: list[str] = []
        paths = list(paths)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            waves = [load_audio(p, expected_sample_rate=self.sample_rate)[0] for p in chunk]
            texts.extend(self.transcribe_waveforms(waves))
        return texts


def _feature_extractor(config: dict[str, Any]) -> torch.nn.Module:
    """NeMo's preprocessor from a graph's ``feature_config``, set up as ``transcribe`` runs it."""
    from nemo.core.classes.module import NeuralModule
    from omegaconf import OmegaConf

    config = {**config, "dither": 0.0, "pad_to": 0}
    return NeuralModule.from_config_dict(OmegaConf.create(config)).eval()


class OnnxCTCRunner(CTCRunner):
    """onnxruntime on a CTC graph written by :func:`nemo_sew.export.to_onnx`.

    Args:
        path: the ``.onnx`` file (its metadata gives the vocabulary, sample rate and input kind).
        intra_op_threads: onnxruntime intra-op threads (None: onnxruntime's default, all cores).
        providers: onnxruntime execution providers (default CPU).
    """

    def __init__(
        self, path: str | Path, intra_op_threads: int | None = None, providers: Sequence[str] | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {self.path}")
        self.session = _session(self.path, providers, intra_op_threads)
        self.metadata = parse_metadata(dict(self.session.get_modelmeta().custom_metadata_map))
        graph = self.metadata.get("graph")
        if graph != "ctc":
            raise ValueError(
                f"{self.path}: expected a CTC graph exported by nemo_sew (metadata graph='ctc'), got graph={graph!r}; "
                "export the whole model (without --encoder-only) to transcribe"
            )
        self.sample_rate = int(self.metadata.get("sample_rate", 16000))
        self.vocabulary = list(self.metadata["vocabulary"])
        self.tokenizer = self.metadata.get("tokenizer", "char")
        self.min_input_length = int(self.metadata.get("min_input_length", 1))
        self.preprocessor = None
        if self.metadata.get("input") == "features":
            self.preprocessor = _feature_extractor(self.metadata["feature_config"])

    def logprobs(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        audio, lengths = pad_batch(waveforms)
        if self.preprocessor is not None:
            with torch.inference_mode():
                signal, signal_len = torch.from_numpy(audio), torch.from_numpy(lengths)
                feats, feat_len = self.preprocessor(input_signal=signal, length=signal_len)
            audio, lengths = feats.float().numpy(), feat_len.to(torch.int64).numpy()  # (B, n_mels, T), (B,)
        short = [i for i, n in enumerate(lengths.tolist()) if n < self.min_input_length]
        if short:
            unit = "feature frames" if self.preprocessor is not None else "samples"
            raise ValueError(
                f"input too short for {self.path.name}: items {short} have {lengths[short].tolist()} {unit}, "
                f"the graph needs at least {self.min_input_length}"
            )
        logprobs, out_len = self.session.run(None, {"audio_signal": audio, "length": lengths})
        return logprobs, out_len


@contextlib.contextmanager
def _inference_preprocessor(model: Any) -> Iterator[None]:
    """Dither 0 and no padding to a multiple while transcribing (what NeMo's ``transcribe`` sets)."""
    featurizer = getattr(model.preprocessor, "featurizer", None)
    saved = {k: getattr(featurizer, k) for k in ("dither", "pad_to") if hasattr(featurizer, k)}
    try:
        for k in saved:
            setattr(featurizer, k, 0)
        yield
    finally:
        for k, v in saved.items():
            setattr(featurizer, k, v)


class TorchCTCRunner(CTCRunner):
    """PyTorch on the NeMo model (``model.forward``: preprocessor, encoder, CTC head) with the same interface.

    Args:
        model: a NeMo CTC model with a nemo_sew encoder, or the path of its ``.nemo`` file.
        profile: run at this profile (a model's named profile, a profile or its fields); None = the active one.
        device: torch device.
    """

    def __init__(self, model: Any, profile: Any = None, device: str | torch.device = "cpu") -> None:
        if isinstance(model, (str, Path)):
            import nemo_sew  # noqa: F401  (registers our classes with NeMo's allowlist)
            from nemo_sew.safe_load import restore

            model = restore(model, map_location=str(device))
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.profile = profile
        self.sample_rate = int(model.cfg.get("sample_rate", 16000))
        self.vocabulary, self.tokenizer = _vocabulary(model)

    def logprobs(self, waveforms: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        audio, lengths = pad_batch(waveforms)
        has_scope = hasattr(self.model, "profile_scope")
        scope = self.model.profile_scope(self.profile) if has_scope else contextlib.nullcontext()
        with scope, _inference_preprocessor(self.model), torch.inference_mode():
            logprobs, out_len, _ = self.model.forward(
                input_signal=torch.from_numpy(audio).to(self.device),
                input_signal_length=torch.from_numpy(lengths).to(self.device),
            )
        return logprobs.float().cpu().numpy(), out_len.cpu().numpy()
