"""The classifier's features: TF-IDF over character n-grams (inside word boundaries) and words.

Character n-grams make it robust to Whisper's misspellings ("propriétère", "électrisité"), words
to word order; both are TF-IDF weighted and compared by cosine (rtcore.intents.classifier)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from typing import Final

import numpy as np

from rtcore.intents.text import FoldedText


class TfidfIndex:
    """Sparse TF-IDF vectors of the examples, stored by feature (postings), and the weighing of a
    query in the same space."""

    def __init__(self, documents: list[dict[str, float]]) -> None:
        self.n_documents = len(documents)
        document_frequency: Counter[str] = Counter()
        for features in documents:
            document_frequency.update(features.keys())
        names = sorted(document_frequency)
        self.vocabulary = {feature: i for i, feature in enumerate(names)}
        # Smooth idf (sklearn's); a feature no example has gets the largest idf in query norms.
        self.weight = np.array([math.log((1 + self.n_documents) / (1 + document_frequency[f])) + 1.0 for f in names],
                               dtype=np.float64)
        self.unseen_weight = math.log(1 + self.n_documents) + 1.0
        postings: list[list[tuple[int, float]]] = [[] for _ in self.vocabulary]
        for doc, features in enumerate(documents):
            columns, weights = self.weigh(features)
            for column, weight in zip(columns.tolist(), weights.tolist(), strict=True):
                postings[column].append((doc, weight))
        self.indptr = np.zeros(len(postings) + 1, dtype=np.int64)
        self.indptr[1:] = np.cumsum([len(p) for p in postings])
        self.doc_ids = np.array([d for p in postings for d, _ in p], dtype=np.int64)
        self.doc_weights = np.array([w for p in postings for _, w in p], dtype=np.float64)

    def centroids(self, labels: np.ndarray, n_labels: int) -> np.ndarray:
        """Per label, the normalised mean of its documents' vectors (dense, labels x features)."""
        sums = np.zeros((n_labels, len(self.vocabulary)))
        columns = np.repeat(np.arange(len(self.vocabulary)), np.diff(self.indptr))
        np.add.at(sums, (labels[self.doc_ids], columns), self.doc_weights)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        return sums / np.where(norms > 0, norms, 1.0)

    def lookup(self, counts: dict[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
        """Known feature columns, their counts, and the total count of unseen features."""
        columns: list[int] = []
        known: list[float] = []
        unseen = 0.0
        for feature, count in counts.items():
            column = self.vocabulary.get(feature)
            if column is None:
                unseen += count
            else:
                columns.append(column)
                known.append(count)
        return np.array(columns, dtype=np.int64), np.array(known, dtype=np.float64), unseen

    def normalise(self, columns: np.ndarray, counts: np.ndarray, unseen: float) -> tuple[np.ndarray, np.ndarray]:
        """L2-normalised weights of distinct columns (norm counting unseen features too). Term
        frequency is sublinear (square root): a repeated "oui oui oui" is still a yes."""
        weights = np.sqrt(counts) * self.weight[columns]
        norm = math.sqrt(float(weights @ weights) + unseen * self.unseen_weight ** 2)
        return columns, weights / norm if norm else weights

    def weigh(self, counts: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
        return self.normalise(*self.lookup(counts))


def token_char_grams(token: str, sizes: tuple[int, int], token_norm: float = 0.0) -> dict[str, float]:
    """Character n-grams of " token ", counted; `token_norm` p divides them by their number to the
    power p, so long words do not drown short ones ("exactement" vs "aides")."""
    low, high = sizes
    padded = f" {token} "
    grams = [padded[i:i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)]
    weight = 1.0 / len(grams) ** token_norm if grams else 0.0
    counts: dict[str, float] = {}
    for gram in grams:
        counts[gram] = counts.get(gram, 0.0) + weight
    return counts


def char_features(tokens: Iterable[str], sizes: tuple[int, int], token_norm: float = 0.0) -> dict[str, float]:
    """Character n-grams of each " token ", counted over the transcript (see token_char_grams)."""
    counts: dict[str, float] = {}
    for token in tokens:
        for gram, weight in token_char_grams(token, sizes, token_norm).items():
            counts[gram] = counts.get(gram, 0.0) + weight
    return counts


# After one of these, the next words are negated: "je ne veux pas être rappelé" must not look like
# "je veux bien être rappelé" word for word.
NEGATORS: Final = frozenset({"pas", "jamais", "aucun", "aucune", "rien", "ni"})


def word_features(tokens: tuple[str, ...], question: bool, negation_span: int = 2) -> dict[str, float]:
    marked: list[str] = []
    remaining = 0
    for token in tokens:
        marked.append("~" + token if remaining > 0 else token)
        remaining = negation_span if token in NEGATORS else remaining - 1
    counts: dict[str, float] = {}
    for feature in [*marked, *(f"{a} {b}" for a, b in itertools.pairwise(marked))] + (["?"] if question else []):
        counts[feature] = counts.get(feature, 0.0) + 1.0
    return counts


def matching_tokens(folded: FoldedText) -> tuple[str, ...]:
    # Digits say "a number", not which one: "c'est le 75011" and "c'est le 13100" are one phrasing.
    return tuple("#" if t.isdigit() else t for t in folded.tokens)
