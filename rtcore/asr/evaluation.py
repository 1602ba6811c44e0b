"""Word error rate against reference texts, the way we compare ASR settings."""

from __future__ import annotations

import re
import unicodedata

import jiwer

_PUNCT = re.compile(r"[^\w' ]+")


def normalize(text: str) -> str:
    """Lower case, no punctuation, hyphens and apostrophes as word breaks kept simple."""
    text = unicodedata.normalize("NFC", text).lower().replace("’", "'").replace("-", " ")
    return " ".join(_PUNCT.sub(" ", text).split())


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: all files' words together (what the shared README's figures are)."""
    return float(jiwer.wer(" ".join(normalize(r) for r in references), " ".join(normalize(h) for h in hypotheses)))
