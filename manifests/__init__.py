"""Data preparation for nemo-sew: corpora, lhotse CutSets and NeMo manifests.

Sub-modules (imported lazily, so ``import manifests`` stays cheap):

- :mod:`manifests.audio`: strict audio loading (:func:`~manifests.audio.load_audio`).
- :mod:`manifests.validate`: validate and filter NeMo JSON-lines manifests.
- :mod:`manifests.nemo_manifest`: write NeMo manifests from lhotse CutSets.
- :mod:`manifests.synthetic`: multi-speaker English corpus synthesised with espeak-ng.
- :mod:`manifests.librispeech`: prepare a local LibriSpeech copy.
- :mod:`manifests.librilight`: prepare the Libri-light limited-supervision sets (10 min, 1 h, 10 h).
- :mod:`manifests.shar`: write any CutSet as Lhotse Shar shards (sequential reads for large corpora).
- :mod:`manifests.text`: transcript normalisation (lowercase ``a-z``, apostrophe, spaces).
- :mod:`manifests.io`: atomic writes of text files and CutSets.
- :mod:`manifests.cli`: command-line front-end (``python -m manifests``).
"""

#: Name of the logger every module of this package logs to.
LOGGER_NAME = "nemo_sew.manifests"

__all__ = ["LOGGER_NAME"]
