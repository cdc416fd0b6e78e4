"""Transcripts outside a character model's vocabulary are logged skips, not silent changes.

NeMo's character parsers transliterate (``unidecode``: "café" -> "cafe", "東京" -> "dong jing") and then drop every
character that is not a label without a word. A line whose transcript has letters the vocabulary lacks (accents,
another script), non-ASCII symbols the normaliser would delete, or characters that survive normalisation
without being labels is therefore skipped here, with a warning naming the line
and the characters, before NeMo reads the manifest; punctuation and digits that NeMo's normaliser handles pass.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from manifests.io import write_text_atomic

log = logging.getLogger("nemo_sew.manifests")


def foreign_characters(text: str, labels: Sequence[str], parser) -> str | None:
    """The characters of ``text`` the model cannot spell (sorted, as a string), or None when it can.

    ``parser``: NeMo's character parser for these labels (``make_parser(labels, name=...)``)."""
    vocab = set(labels)
    normalise = parser._normalize if getattr(parser, "_do_normalize", False) else str.lower
    letters = {c for c in str(text).lower() if c.isalpha() and c not in vocab}  # other alphabets, accents
    # non-ASCII symbols the normaliser deletes ("☃"); those it spells out or maps into the labels ("’") pass
    symbols = {c for c in set(str(text)) - vocab if ord(c) > 127 and not c.isalpha() and not c.isspace()}
    letters |= {c for c in symbols if not (normalise(f"a{c}b") or "").strip("ab ")}
    normalised = normalise(str(text))
    if normalised is None:
        return "".join(sorted(letters)) or "(text NeMo's normaliser rejects)"
    left = {c for c in normalised if c not in vocab}
    bad = letters | left
    return "".join(sorted(bad)) if bad else None


def drop_out_of_vocabulary(manifest: str | Path, labels: Sequence[str], parser_name: str = "en") -> tuple[Path, int]:
    """Write ``<manifest stem>.in_vocab.json`` without the lines whose text the model cannot spell (each a logged
    warning); returns (that path, lines skipped), or (``manifest``, 0) when every line can be spelt."""
    from nemo.collections.common.parts.preprocessing.parsers import make_parser

    parser = make_parser(labels=list(labels), name=parser_name, do_normalize=True)
    manifest = Path(manifest)
    kept, skipped = [], 0
    for line_no, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        bad = foreign_characters(json.loads(line).get("text", ""), labels, parser)
        if bad is None:
            kept.append(line)
            continue
        skipped += 1
        log.warning("%s:%d: skipping: text has characters outside the vocabulary: %r", manifest, line_no, bad)
    if not skipped:
        return manifest, 0
    if not kept:
        raise ValueError(f"{manifest}: every transcript has characters outside the model's vocabulary")
    out = manifest.with_name(f"{manifest.stem}.in_vocab.json")
    write_text_atomic(out, "\n".join(kept) + "\n")
    return out, skipped
