"""SqueezeEncoder: the encoder's torch core (:class:`~nemo_sew.encoder.core.EncoderCore`) as a NeMo NeuralModule.

What is NeMo's and nothing else is here: the constructor's config arguments (read by
:func:`~nemo_sew.encoder.config.parse_options`), the typed input and output ports, the export example, and the
one conversion between the library's layout ``(B, T, D)`` and NeMo's ``(B, D, T)`` (in :meth:`forward`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
from nemo.core.classes import Exportable, NeuralModule, typecheck
from nemo.core.neural_types import (
    AcousticEncodedRepresentation,
    AudioSignal,
    LengthsType,
    NeuralType,
    SpectrogramType,
)

from nemo_sew.arch import EncoderArch
from nemo_sew.encoder.config import encoder_config, parse_options
from nemo_sew.encoder.core import EncoderCore
from nemo_sew.options import Dropout, Gates, LearnedRate, Masking

# NeMo's types of the two input ports a front end can have (nemo_sew.nn.frontend.FrontendLayout.port)
_PORT_TYPES = {
    "waveform": NeuralType(("B", "C", "T"), AudioSignal()),
    "spectrogram": NeuralType(("B", "D", "T"), SpectrogramType()),
}


class SqueezeEncoder(EncoderCore, NeuralModule, Exportable):
    """A SEW-style squeezed speech encoder with NeMo's encoder interface, built from an :class:`EncoderArch`.

    ``forward(audio_signal (B, C, T), length (B,)) -> (encoded (B, D, T'), encoded_len (B,))``. For the
    waveform front ends ``C = 1`` and ``T`` is in samples (from :class:`nemo_sew.WaveformPreprocessor`);
    for ``mel_stack`` ``C = n_mels`` and ``T`` is in 10 ms frames (from NeMo's mel preprocessor).

    Args:
        preset: a name in :data:`nemo_sew.arch.PRESETS`; ``arch`` then holds overrides of its fields.
        arch: an :class:`EncoderArch`, a full arch dict (``EncoderArch.to_dict``, what ``.nemo`` files
            store), or, with ``preset``, overrides for :func:`nemo_sew.arch.build_arch` (e.g.
            ``{"d_model": 384, "blocks": {"conv_kernel": 15}, "compressor": {"squeeze": 4}}``).
        dropout: :class:`nemo_sew.options.Dropout` fields (``hidden``, ``attention``, ``activation``,
            ``feature``, ``layerdrop``).
        squeeze_sampler: training-time profile sampler (:class:`nemo_sew.profile.ProfileSampler` fields),
            e.g. ``{"squeeze": {"values": [1, 2, 3, 4]}}`` or ``{"squeeze": {"low": 1, "high": 4}}``; a bare
            ``{"values": ...}`` / ``{"low": ..., "high": ...}`` is taken as the squeeze spec.
        learned_rate: :class:`nemo_sew.options.LearnedRate` fields: learn the squeeze (no grid search).
        cif_lambda: OFA's lambda at inference when the arch has ``compressor.cif_alpha`` (0 = uniform
            weights, 1 = learned only).
        mask_emb: keep a learned mask embedding (``d_model``) for masked frames: created by self-supervised
            pre-training and reused by fine-tuning's time masking (wav2vec 2.0 ``mask_emb``).
        masking: :class:`nemo_sew.options.Masking` fields: fine-tuning-time masking (training only).
        gates: :class:`nemo_sew.options.Gates` fields: I3D input-dependent depth (``{"kind": "local"}`` or
            ``{"kind": "global"}``, a depth budget); None = every branch always runs.
        pruning: :class:`nemo_sew.prune.Pruning` fields: HardConcrete masks for structured pruning to a budget
            (``encoder.pruning``, penalty in ``aux_losses["prune_budget"]``); None = no masks.
        quant: :class:`nemo_sew.quant.QuantConfig` fields: the packed low-bit weights this encoder holds (and
            whether it holds fp weights), or QAT fake quantization; None = fp only. Written by
            ``nemo-sew quantize`` and :func:`nemo_sew.quant.prepare_qat`; a profile's ``weight_bits`` picks one.
        **legacy: the flat keyword arguments of configs written before ``EncoderArch`` (``frontend``,
            ``d_model``, ``num_layers``, ..., ``dropout=0.1``); read by
            :func:`nemo_sew.options.upgrade_encoder_config`, so every old ``.nemo`` restores.

    When the factor can vary (a sampler, CIF weights or a learned rate) and the arch's expander is SEW's
    factor-specific one, the factor-agnostic ``phase`` expander is used instead (as before the arch existed).
    """

    def __init__(
        self,
        preset: str | None = None,
        arch: EncoderArch | Mapping[str, Any] | None = None,
        dropout: Dropout | Mapping[str, float] | None = None,
        squeeze_sampler: Mapping[str, Any] | None = None,
        learned_rate: LearnedRate | Mapping[str, float] | None = None,
        cif_lambda: float = 1.0,
        mask_emb: bool = False,
        masking: Masking | Mapping[str, float] | None = None,
        gates: Gates | Mapping[str, Any] | None = None,
        pruning: Mapping[str, Any] | None = None,
        quant: Mapping[str, Any] | None = None,
        **legacy: Any,
    ) -> None:
        options = parse_options(
            preset, arch, dropout, squeeze_sampler, learned_rate, cif_lambda, mask_emb, masking, gates, pruning, quant,
            **legacy,
        )  # fmt: skip
        super().__init__(options)  # EncoderCore.__init__ (NeMo's classes have no __init__ of their own)

    @property
    def _feat_out(self) -> int:  # NeMo's encoder convention (decoders read feat_out)
        return self.arch.d_model

    @property
    def _feat_in(self) -> int:
        return self.layout.feat_in

    @property
    def input_types(self) -> OrderedDict:
        return OrderedDict(audio_signal=_PORT_TYPES[self.layout.port], length=NeuralType(tuple("B"), LengthsType()))

    @property
    def output_types(self) -> OrderedDict:
        return OrderedDict(
            outputs=NeuralType(("B", "D", "T"), AcousticEncodedRepresentation()),
            encoded_lengths=NeuralType(tuple("B"), LengthsType()),
        )

    def input_example(self, max_batch: int = 2, max_dim: int = 32000) -> tuple[torch.Tensor, torch.Tensor]:
        """Example inputs for export: ``max_dim`` samples of audio (``max_dim / 160`` frames of a mel front end)."""
        param = next(self.parameters())
        length = max(self.layout.length(max_dim / 16000.0), self.min_input_length())
        signal = torch.randn(max_batch, self.layout.feat_in, length, device=param.device, dtype=param.dtype)
        lengths = torch.full((max_batch,), length, dtype=torch.int64, device=param.device)
        lengths[1:] = torch.randint(self.min_input_length(), length + 1, (max_batch - 1,))
        return signal, lengths

    @typecheck()
    def forward(self, audio_signal: torch.Tensor, length: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.run(audio_signal, length)
        return out.hidden.transpose(1, 2), out.lengths  # (B, D, T_out): the only conversion to NeMo's layout


def build_encoder(preset: str, **overrides: Any) -> SqueezeEncoder:
    """Build preset ``preset`` with overrides, e.g. ``build_encoder("sew_tiny", compressor={"squeeze": 4})``
    or ``build_encoder("tiny_mel", squeeze_sampler={"squeeze": {"values": [1, 2]}})``."""
    return SqueezeEncoder(**encoder_config(preset, **overrides))
