"""Waveform "preprocessor" for the waveform front ends: NeMo's ``(B, N)`` audio -> ``(B, 1, N)``.

NeMo's CTC models always run ``preprocessor -> spec_augment -> encoder``; the waveform front ends
(WFE-O, WFE-C) live inside :class:`nemo_sew.SqueezeEncoder`, so this module only adds the channel axis
and optionally normalises each utterance (wav2vec 2.0 large models' ``do_normalize``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from nemo.collections.asr.modules.audio_preprocessing import AudioPreprocessor
from nemo.core.neural_types import AudioSignal, LengthsType, NeuralType

from nemo_sew.nn.frontend import time_mask


class WaveformPreprocessor(AudioPreprocessor):
    """Pass-through preprocessor for waveform encoders.

    Args:
        sample_rate: expected sample rate (NeMo reads ``_sample_rate`` for transcription).
        normalize: zero mean, unit variance per utterance over its valid samples (transformers'
            ``Wav2Vec2FeatureExtractor(do_normalize=True)``); padding stays zero.
        eps: variance floor of the normalisation.
    """

    def __init__(self, sample_rate: int = 16000, normalize: bool = False, eps: float = 1e-7) -> None:
        super().__init__(win_length=1, hop_length=1)
        self._sample_rate = sample_rate
        self.normalize = normalize
        self.eps = eps

    @property
    def input_types(self) -> OrderedDict:
        return OrderedDict(
            input_signal=NeuralType(("B", "T"), AudioSignal(freq=self._sample_rate)),
            length=NeuralType(tuple("B"), LengthsType()),
        )

    @property
    def output_types(self) -> OrderedDict:
        return OrderedDict(
            processed_signal=NeuralType(("B", "C", "T"), AudioSignal()),
            processed_length=NeuralType(tuple("B"), LengthsType()),
        )

    def get_features(self, input_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = time_mask(length, input_signal.shape[1])  # (B, N) True = valid
        x = input_signal.masked_fill(~mask, 0.0)
        if self.normalize:
            count = length.clamp_min(1).to(x.dtype)[:, None]
            mean = x.sum(1, keepdim=True) / count
            var = ((x - mean).masked_fill(~mask, 0.0) ** 2).sum(1, keepdim=True) / count
            x = ((x - mean) * torch.rsqrt(var + self.eps)).masked_fill(~mask, 0.0)
        return x[:, None, :], length  # (B, 1, N)
