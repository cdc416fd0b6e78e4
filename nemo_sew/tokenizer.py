"""SentencePiece tokenizers for the BPE CTC model, trained with NeMo's own ``create_spt_model``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model


def train_tokenizer(
    manifests: Sequence[str | Path], out_dir: str | Path, vocab_size: int = 128, tokenizer_type: str = "bpe"
) -> Path:
    """Train a tokenizer on the ``text`` of NeMo manifests; returns the directory for ``cfg.tokenizer.dir``.

    The directory holds ``tokenizer.model`` and ``vocab.txt``, as NeMo's ``process_asr_text_tokenizer.py`` writes.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_file = out_dir / "text.txt"
    lines = []
    for manifest in manifests:
        for line in Path(manifest).read_text().splitlines():
            if line.strip():
                lines.append(json.loads(line)["text"])
    if not lines:
        raise ValueError(f"no transcripts found in {list(map(str, manifests))}")
    text_file.write_text("\n".join(lines) + "\n")
    create_spt_model(
        str(text_file), vocab_size, sample_size=-1, do_lower_case=True, tokenizer_type=tokenizer_type, output_dir=str(out_dir)
    )
    return out_dir
