"""Transcript normalisation shared by the corpus recipes.

The target alphabet is lowercase ``a-z``, the apostrophe and single spaces,
the usual character set of English CTC/RNNT tokenizers.
"""

from __future__ import annotations

import re
import unicodedata

_NOT_ALPHABET = re.compile(r"[^a-z']+")
# An apostrophe that is not between two letters (quotes, trailing possessives).
_STRAY_APOSTROPHE = re.compile(r"(?<![a-z])'|'(?![a-z])")
_SPACES = re.compile(r" +")
_APOSTROPHE_LIKE = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def strip_accents(text: str) -> str:
    """Return ``text`` with accents removed (``"café"`` becomes ``"cafe"``).

    Characters that have no ASCII base letter are left unchanged.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def normalize_transcript(text: str) -> str:
    """Normalise ``text`` to lowercase ``a-z``, apostrophes and single spaces.

    Every other character (punctuation, digits, symbols) becomes a word
    boundary; nothing is spelled out. Apostrophes survive only inside words
    (``"don't"``), so quotes disappear. The result may be empty.
    """
    text = strip_accents(text.translate(_APOSTROPHE_LIKE)).lower()
    text = _NOT_ALPHABET.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
