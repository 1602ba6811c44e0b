"""Text normalisation and spoken French numbers, shared by slot extraction and the classifier.

Whisper writes what was said on the phone in many shapes: accents or none, "75011", "75 011",
"soixante-quinze zéro onze", "sept cinq zéro un un", "quatre-vingt-treize deux cents". Matching
works on *folded* text (lower case, no accents, apostrophes and hyphens as spaces, punctuation
dropped) and numbers are parsed into *groups* that keep how they were spoken: a zip code said as
département then commune ("soixante-quinze | zéro | onze") is the concatenation of its groups'
digits, which one integer value would lose (the leading zero of "zéro six deux cents").
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

# Hesitations Whisper transcribes; they carry no meaning and only dilute similarity. "hein" is not
# one of them: alone it means "what?" (repeat).
FILLERS = frozenset({"euh", "heu", "euuh", "hum", "hmm", "hm", "mmh", "mh", "bah", "ben", "beh", "be", "bé"})

_APOSTROPHES_AND_DASHES = re.compile(r"['’`´‘\-‐–—_/]")
_NON_WORD = re.compile(r"[^a-z0-9?]+")
_TOKEN = re.compile(r"[a-z0-9]+")
_LIGATURES = str.maketrans({"œ": "oe", "æ": "ae", "Œ": "oe", "Æ": "ae"})


# Combining marks (accents, cedilla...) once a text is decomposed (NFD).
_COMBINING = re.compile("[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]+")


def strip_accents(text: str) -> str:
    return _COMBINING.sub("", unicodedata.normalize("NFD", text.translate(_LIGATURES)))


@dataclass(frozen=True, slots=True)
class FoldedText:
    """A transcript ready for matching: `tokens` folded, fillers removed unless nothing else was said."""

    tokens: tuple[str, ...]
    question: bool  # Whisper wrote a question mark: a question rather than a statement

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def fold(text: str) -> FoldedText:
    """Lower case, no accents, apostrophes/hyphens/punctuation as spaces, fillers dropped."""
    lowered = strip_accents(text.lower())
    question = "?" in lowered
    spaced = _NON_WORD.sub(" ", _APOSTROPHES_AND_DASHES.sub(" ", lowered)).replace("?", " ")
    tokens = _TOKEN.findall(spaced)
    return FoldedText(tokens=tuple(t for t in tokens if t not in FILLERS), question=question)


_CLAUSE_END = re.compile(r"[.,;:!?…]+")


def clauses(text: str) -> list[FoldedText]:
    """The transcript cut where Whisper put a punctuation mark, and before "mais", each part folded
    (`question`: that part ends with a question mark); parts with no word left are dropped.
    "Oui, mais c'est gratuit ?" -> ["oui", "c est gratuit" (question)]. Decimal and grouped numbers
    ("75.011", "33,600") stay whole."""
    lowered = text.lower()
    parts: list[FoldedText] = []
    start = 0
    for match in _CLAUSE_END.finditer(lowered):
        before = lowered[match.start() - 1:match.start()]
        after = lowered[match.end():match.end() + 2].lstrip(" ")[:1]
        if match.group() in (".", ",") and before.isdigit() and after.isdigit():
            continue  # "75.011", "59, 000": a number Whisper punctuated
        parts.extend(_split_on_mais(lowered[start:match.end()]))
        start = match.end()
    parts.extend(_split_on_mais(lowered[start:]))
    return [part for part in parts if part.tokens]


def _split_on_mais(piece: str) -> list[FoldedText]:
    folded = fold(piece)
    tokens = folded.tokens
    cuts = [i for i, token in enumerate(tokens) if token == "mais" and i < len(tokens) - 1]
    if not cuts:
        return [folded]
    bounds = [-1, *cuts, len(tokens)]  # each part starts after its "mais"
    return [FoldedText(tokens=tokens[a + 1:b], question=folded.question and b == len(tokens))
            for a, b in itertools.pairwise(bounds)]


# --- spoken numbers -----------------------------------------------------------------------------
_UNITS = {"un": 1, "deux": 2, "trois": 3, "quatre": 4, "cinq": 5, "six": 6, "sept": 7, "huit": 8, "neuf": 9}
_TEENS = {"onze": 11, "douze": 12, "treize": 13, "quatorze": 14, "quinze": 15, "seize": 16}
# Belgian and Swiss tens (septante, huitante/octante, nonante) are said by some callers too.
_TENS = {"vingt": 20, "vingts": 20, "vint": 20, "trente": 30, "quarante": 40, "cinquante": 50, "soixante": 60,
         "septante": 70, "huitante": 80, "octante": 80, "nonante": 90}
_ZERO = frozenset({"zero"})
_HUNDRED = frozenset({"cent", "cents", "cens"})
_THOUSAND = frozenset({"mille", "mil"})
NUMBER_WORDS = frozenset(_UNITS) | frozenset(_TEENS) | frozenset(_TENS) | _ZERO | _HUNDRED | _THOUSAND | {"dix", "et"}


@dataclass(frozen=True, slots=True)
class NumberGroup:
    """One number as spoken: `digits` keeps leading zeros of digit tokens ("06", "011")."""

    digits: str
    value: int
    start: int  # token index
    end: int  # exclusive


class _GroupBuilder:
    """Accumulates one spoken number word by word; `accepts` says whether a word continues it."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.end = start
        self.thousands: int | None = None
        self.hundreds = 0
        self.small = 0
        self.last = ""  # kind of the last word: unit, teen, tens, dix, cent, mille, et, digits, zero
        self.literal = ""  # set for a digit token group

    def value(self) -> int:
        return (self.thousands or 0) * 1000 + self.hundreds + self.small

    def group(self) -> NumberGroup:
        digits = self.literal if self.literal else str(self.value())
        return NumberGroup(digits=digits, value=self.value(), start=self.start, end=self.end)

    def add(self, token: str, index: int) -> bool:
        """Adds the token when it continues this number; False when it starts a new one."""
        after_scale = self.last in ("cent", "mille") and self.small == 0
        if self.last == "zero":
            return False
        if self.last == "digits":
            if token in _THOUSAND and not self.literal.startswith("0") and self.value() < 1000:
                self.thousands, self.small, self.literal, self.last = self.value(), 0, "", "mille"
            elif token in _HUNDRED and 2 <= self.value() <= 9 and len(self.literal) == 1:
                self.hundreds, self.small, self.literal, self.last = self.value() * 100, 0, "", "cent"
            else:
                return False
        elif token.isdigit():
            # "75 mille 11": digits after a spoken thousand continue it; otherwise a new group.
            if not (self.last == "mille" and self.hundreds == 0 and int(token) < 1000):
                return False
            self.small, self.last = int(token), "digits_tail"
        elif token in _UNITS:
            value = _UNITS[token]
            continues_tens = self.last == "tens" and self.small % 10 == 0 and self.small != 90  # vingt-trois
            if self.last == "et" or after_scale or continues_tens or (self.last == "dix" and value >= 7):
                self.small += value
            else:
                return False
            self.last = "unit"
        elif token in _TEENS:
            if after_scale or self.last == "et" or (self.last == "tens" and self.small in (60, 80)):
                self.small += _TEENS[token]
            else:
                return False
            self.last = "teen"
        elif token == "dix":
            if after_scale or (self.last == "tens" and self.small in (60, 80)):
                self.small += 10
            else:
                return False
            self.last = "dix"
        elif token in _TENS:
            if token.startswith("vin") and self.last == "unit" and self.small == 4 and self.hundreds == 0:
                self.small = 80  # quatre-vingt
            elif after_scale:
                self.small += _TENS[token]
            else:
                return False
            self.last = "tens"
        elif token in _HUNDRED:
            if self.last == "unit" and 2 <= self.small <= 9 and self.hundreds == 0:
                self.hundreds, self.small = self.small * 100, 0
            elif self.last == "mille" and self.hundreds == 0:
                self.hundreds = 100  # "treize mille cent"
            else:
                # "treize cent" on the phone is département 13 then 100 (13100), not 1300.
                return False
            self.last = "cent"
        elif token in _THOUSAND:
            if self.thousands is not None or self.value() >= 1000:
                return False
            self.thousands, self.hundreds, self.small, self.last = self.value() or 1, 0, 0, "mille"
        elif token == "et":
            if self.last == "tens" and self.small in (20, 30, 40, 50, 60):
                self.last = "et"
            else:
                return False
        else:
            return False
        self.end = index + 1
        return True


def _start_group(token: str, index: int) -> _GroupBuilder | None:
    builder = _GroupBuilder(index)
    builder.end = index + 1
    if token.isdigit():
        builder.literal, builder.small, builder.last = token, int(token), "digits"
    elif token in _ZERO:
        builder.literal, builder.last = "0", "zero"
    elif token in _UNITS:
        builder.small, builder.last = _UNITS[token], "unit"
    elif token in _TEENS:
        builder.small, builder.last = _TEENS[token], "teen"
    elif token == "dix":
        builder.small, builder.last = 10, "dix"
    elif token in _TENS:
        builder.small, builder.last = _TENS[token], "tens"
    elif token in _HUNDRED:
        builder.hundreds, builder.last = 100, "cent"
    elif token in _THOUSAND:
        builder.thousands, builder.last = 1, "mille"
    else:
        return None
    return builder


def number_runs(tokens: Sequence[str]) -> list[list[NumberGroup]]:
    """Adjacent spoken or written numbers, each run a list of groups in the order said.

    "soixante quinze zero onze" -> [[75, 0, 11]]; "j ai 2 minutes" -> [[2]]. A dangling "et" (not
    followed by a number) is not part of a number.
    """
    runs: list[list[NumberGroup]] = []
    current_run: list[NumberGroup] = []
    builder: _GroupBuilder | None = None
    for index, token in enumerate(tokens):
        if builder is not None and builder.add(token, index):
            continue
        if builder is not None:
            if builder.last == "et":  # "vingt et" with no number after: the "et" was a conjunction
                builder.last = "tens"
            current_run.append(builder.group())
        builder = _start_group(token, index) if token != "et" else None
        if builder is None and current_run:
            runs.append(current_run)
            current_run = []
    if builder is not None:
        current_run.append(builder.group())
    if current_run:
        runs.append(current_run)
    return runs
