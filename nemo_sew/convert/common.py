"""Format-independent parts of checkpoint import: the converted CTC head, NeMo models and encoder checkpoints.

The importers (:mod:`nemo_sew.convert.transformers`, :mod:`nemo_sew.convert.fairseq`) produce a
:class:`nemo_sew.SqueezeEncoder` and, for CTC fine-tuned checkpoints, a :class:`ConvertedCTC`; this module
turns those into a NeMo ``.nemo`` model or an encoder-only checkpoint.

Blank conventions: transformers and fairseq put the CTC blank at the pad token's id (usually 0) of the
vocabulary; NeMo's ``ConvASRDecoder`` puts it last, after the ``len(labels)`` label classes. The head rows
are permuted once, here: NeMo row ``i`` is source row ``order[i]``, with the blank's source row last.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from nemo_sew.encoder import SqueezeEncoder

if TYPE_CHECKING:
    from nemo_sew.models.ctc import SqueezeCTCModel

ENCODER_TARGET = "nemo_sew.SqueezeEncoder"
CHECKPOINT_FORMAT = "nemo_sew.encoder/1"


class UnsupportedModelError(ValueError):
    """A checkpoint uses an option that :class:`nemo_sew.SqueezeEncoder` cannot reproduce exactly."""


def blank_last_order(vocab_size: int, blank_id: int) -> list[int]:
    """Source row for every NeMo row: the non-blank ids in increasing order, then ``blank_id`` last."""
    if not 0 <= blank_id < vocab_size:
        raise ValueError(f"expected a blank id in [0, {vocab_size}), got {blank_id}")
    return [i for i in range(vocab_size) if i != blank_id] + [blank_id]


def labels_from_tokens(tokens: Sequence[str], blank_id: int, word_delimiter: str | None = "|") -> list[str]:
    """NeMo character labels (blank removed, NeMo order) from source tokens in id order.

    The word delimiter token (transformers' ``Wav2Vec2CTCTokenizer.word_delimiter_token``, ``|``) becomes a
    space, which is what NeMo's character models use between words. Other special tokens (``<s>``, ``<unk>``,
    ...) are kept as they are, so every source class keeps a row and the logits stay comparable.
    """
    labels = [" " if t == word_delimiter else str(t) for i, t in enumerate(tokens) if i != blank_id]
    seen: dict[str, int] = {}
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
    duplicates = sorted(label for label, n in seen.items() if n > 1)
    if duplicates:
        raise ValueError(f"expected unique labels after mapping {word_delimiter!r} to ' ', got duplicates {duplicates}")
    return labels


@dataclasses.dataclass
class ConvertedCTC:
    """An imported CTC model: our encoder plus the CTC head in NeMo's layout.

    Attributes:
        encoder: the converted :class:`nemo_sew.SqueezeEncoder`.
        encoder_config: its constructor arguments (what goes under ``encoder:`` with ``_target_``).
        head_weight: ``(V, D)`` CTC projection in NeMo order (blank last); the source's head is a Linear over
            ``(B, T, D)``, NeMo's ``ConvASRDecoder`` a ``Conv1d(k=1)`` over ``(B, D, T)``: same numbers.
        head_bias: ``(V,)`` in NeMo order.
        order: NeMo row ``i`` is source row ``order[i]`` (see :func:`blank_last_order`).
        blank_id: the source's blank id (transformers ``config.pad_token_id``).
        labels: the ``V - 1`` NeMo labels in NeMo order, or None when no vocabulary was given.
    """

    encoder: SqueezeEncoder
    encoder_config: dict[str, Any]
    head_weight: torch.Tensor
    head_bias: torch.Tensor
    order: list[int]
    blank_id: int
    labels: list[str] | None = None

    @property
    def vocab_size(self) -> int:
        """Classes including the blank."""
        return int(self.head_weight.shape[0])

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of NeMo's ``ConvASRDecoder`` (``decoder_layers.0`` is its ``Conv1d(D, V, 1)``)."""
        return {
            "decoder_layers.0.weight": self.head_weight.detach().clone()[:, :, None],  # (V, D, 1)
            "decoder_layers.0.bias": self.head_bias.detach().clone(),
        }


def ctc_model_config(
    converted: ConvertedCTC,
    sample_rate: int = 16000,
    normalize: bool = False,
    labels: Sequence[str] | None = None,
    normalize_eps: float = 1e-7,
) -> dict[str, Any]:
    """The NeMo model config of a :class:`nemo_sew.SqueezeCTCModel` holding ``converted``.

    Args:
        converted: the imported model.
        sample_rate: the source feature extractor's ``sampling_rate``.
        normalize: per-utterance zero mean / unit variance (transformers ``do_normalize``), done by
            :class:`nemo_sew.WaveformPreprocessor`.
        labels: overrides ``converted.labels``.
        normalize_eps: variance floor of the normalisation (transformers 1e-7, fairseq's ``layer_norm`` 1e-5).
    """
    labels = list(labels if labels is not None else converted.labels or [])
    if len(labels) != converted.vocab_size - 1:
        raise ValueError(
            f"expected {converted.vocab_size - 1} labels (the head's {converted.vocab_size} classes minus the blank), "
            f"got {len(labels)}; pass the source vocabulary"
        )
    encoder = {"_target_": ENCODER_TARGET, **converted.encoder_config}
    return {
        "sample_rate": int(sample_rate),
        "labels": labels,
        "preprocessor": {
            "_target_": "nemo_sew.WaveformPreprocessor",
            "sample_rate": int(sample_rate),
            "normalize": bool(normalize),
            "eps": float(normalize_eps),
        },
        "spec_augment": None,
        "encoder": encoder,
        "decoder": {
            "_target_": "nemo.collections.asr.modules.ConvASRDecoder",
            "feat_in": int(converted.encoder.d_model),
            "num_classes": len(labels),
            "vocabulary": labels,
        },
        "profile": {"squeeze": float(converted.encoder.squeeze)},
    }


def to_nemo_ctc_model(
    converted: ConvertedCTC,
    sample_rate: int = 16000,
    normalize: bool = False,
    labels: Sequence[str] | None = None,
    normalize_eps: float = 1e-7,
) -> "SqueezeCTCModel":
    """A :class:`nemo_sew.SqueezeCTCModel` (NeMo character CTC model) with the converted weights, in eval mode.

    Arguments as for :func:`ctc_model_config`.
    """
    from omegaconf import OmegaConf

    from nemo_sew.models.ctc import SqueezeCTCModel

    cfg = OmegaConf.create(ctc_model_config(converted, sample_rate, normalize, labels, normalize_eps))
    model = SqueezeCTCModel(cfg=cfg)
    model.encoder.load_state_dict(converted.encoder.state_dict())
    model.decoder.load_state_dict(converted.decoder_state_dict())
    return model.eval()


def save_encoder_checkpoint(encoder_config: dict[str, Any], encoder: SqueezeEncoder, path: str | Path) -> Path:
    """Write an encoder-only checkpoint: ``torch.save({"format", "encoder_config", "state_dict"})``.

    ``encoder_config`` carries ``_target_: nemo_sew.SqueezeEncoder``, so it can be pasted under ``encoder:`` of a
    NeMo config; :func:`load_encoder_checkpoint` rebuilds the encoder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {"_target_": ENCODER_TARGET, **{k: v for k, v in encoder_config.items() if k != "_target_"}}
    torch.save({"format": CHECKPOINT_FORMAT, "encoder_config": config, "state_dict": encoder.state_dict()}, path)
    return path


def load_encoder_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> SqueezeEncoder:
    """Rebuild the encoder written by :func:`save_encoder_checkpoint` (eval mode)."""
    from nemo_sew.safe_load import load_checkpoint

    data = load_checkpoint(path, map_location=map_location)  # weights_only=True; names the file when it refuses
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a {CHECKPOINT_FORMAT!r} encoder checkpoint, got {found!r}")
    config = {k: v for k, v in data["encoder_config"].items() if k != "_target_"}
    encoder = SqueezeEncoder(**config)
    encoder.load_state_dict(data["state_dict"])
    return encoder.eval()
