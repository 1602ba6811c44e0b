"""The embedded intent classifier: nearest examples by TF-IDF similarity, state priors, slot rules.

No model and no network: `examples.yaml` holds French phrases per intent. A transcript is folded
(lower case, no accents, fillers dropped, digits as "#"), turned into character n-grams (2-5, inside
word boundaries: robust to Whisper's misspellings, "propriétère", "électrisité") and word uni- and
bigrams (robust to word order), each TF-IDF weighted, and compared by cosine with every example.
An intent's similarity is that of its nearest example. Then, because one word means different
things after different questions:

* a bare yes or no (pseudo-intents `_yes`/`_no` in the examples) becomes the answer the current
  state expects: "oui" is ok_eligibility in init, ok_proprio in ask_owner_house, ok_callback in
  ask_be_called_back, and stays unknown (with slot answer=yes) in ask_zip_code, where it answers
  nothing;
* the state's expected intents get a bonus, other states' answers a penalty (FAQs, which_help,
  repeat, busy, not_interested, not_in_france are possible everywhere);
* extracted slots are evidence: a valid zip code asked for is ok_zipcode, a place abroad
  not_in_france, a heating type asked for ok_heating, a day or period asked for ok_slot;
  ok_zipcode needs a valid zip code and ok_heating a heating type;
* flat versus faq12: in ask_owner_house, saying one lives in a flat answers the question
  (not_proprio: the campaign is for houses); asking whether flats or co-ownerships qualify (a
  question, "ça marche", "j'ai droit", "aussi"...) is faq12, in any state.

Below `threshold` the answer is unknown.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import yaml

from rtcore.intents import slots as slot_extraction
from rtcore.intents.base import DIALOG_STATES, INTENTS, IntentResult
from rtcore.intents.text import FoldedText, fold

log = logging.getLogger(__name__)

EXAMPLES_PATH: Final = Path(__file__).with_name("examples.yaml")
YES, NO = "_yes", "_no"

# What a bare yes / no answers, by the question just asked.
YES_MEANS: Final[dict[str, str]] = {"init": "ok_eligibility", "ask_owner_house": "ok_proprio",
                                    "ask_be_called_back": "ok_callback"}
NO_MEANS: Final[dict[str, str]] = {"init": "not_interested", "ask_owner_house": "not_proprio",
                                   "ask_be_called_back": "no_callback", "ask_slot_call_back": "slot_problem"}
# Answers each state's question expects; other states' answers are unlikely there.
EXPECTED: Final[dict[str, frozenset[str]]] = {
    "init": frozenset({"ok_eligibility", "not_interested", "busy"}),
    "ask_zip_code": frozenset({"ok_zipcode", "zipcode_why", "not_in_france"}),
    "ask_owner_house": frozenset({"ok_proprio", "not_proprio"}),
    "ask_which_heating": frozenset({"ok_heating"}),
    "ask_be_called_back": frozenset({"ok_callback", "no_callback"}),
    "ask_slot_call_back": frozenset({"ok_slot", "slot_problem"}),
    "bye": frozenset(),
}
STATE_ANSWERS: Final = frozenset({"ok_eligibility", "ok_zipcode", "zipcode_why", "ok_proprio", "not_proprio",
                                  "ok_heating", "ok_callback", "no_callback", "ok_slot", "slot_problem"})
_ELIGIBILITY_QUESTION = re.compile(r"\best ce qu|\bdroit\b|\beligible|\bvalable|\bpareil|\bconcern|\bpossible"
                                   r"|\bbeneficier|\bmarche\b|\baussi\b|\bpeux\b|\bpeut\b|\baides?\b|\bet pour\b")


_WORKS = re.compile(r"\btravaux\b|\bisol|\bfenetres?\b|\bchaudiere\b|\bchange|\brefait|\binstalle|\brenove"
                    r"|\bcombles\b|\bprime|\baides?\b|\bfait\b")


@dataclass(frozen=True, slots=True)
class ClassifierOptions:
    """Tuning of the classifier. The similarity settings (char_weight, char_token_norm, negation_span,
    n-gram sizes) were chosen by leave-one-out over the examples (77 % of examples classified from the
    others); the threshold, bonuses and evidence scores are set by hand."""

    examples_path: Path = EXAMPLES_PATH
    char_ngrams: tuple[int, int] = (2, 5)  # n-gram lengths inside " word " boundaries
    char_weight: float = 0.8  # share of the character similarity; words get the rest
    char_token_norm: float = 0.5  # long words' n-grams weigh less each (see char_features)
    negation_span: int = 2  # words marked as negated after "pas", "jamais"...
    threshold: float = 0.3  # below this best score: unknown
    state_bonus: float = 0.08  # added to the answers the state's question expects
    off_state_penalty: float = 0.1  # removed from other states' answers
    evidence_in_state: float = 0.88  # score a slot gives its answer when that question was asked
    evidence_off_state: float = 0.5  # ... and when another question was


class TfidfIndex:
    """Sparse TF-IDF vectors of the examples, stored by feature (postings) for fast cosine."""

    def __init__(self, documents: list[dict[str, float]]) -> None:
        self.n_documents = len(documents)
        document_frequency: Counter[str] = Counter()
        for features in documents:
            document_frequency.update(features.keys())
        self.vocabulary = {feature: i for i, feature in enumerate(sorted(document_frequency))}
        # Smooth idf (sklearn's); a feature no example has gets the largest idf in query norms.
        self.idf = np.array([math.log((1 + self.n_documents) / (1 + document_frequency[f])) + 1.0
                             for f in sorted(document_frequency)], dtype=np.float64)
        self.unseen_idf = math.log(1 + self.n_documents) + 1.0
        postings: list[list[tuple[int, float]]] = [[] for _ in self.vocabulary]
        for doc, features in enumerate(documents):
            columns, weights, _ = self.weigh(features)
            for column, weight in zip(columns.tolist(), weights.tolist(), strict=True):
                postings[column].append((doc, weight))
        self.indptr = np.zeros(len(postings) + 1, dtype=np.int64)
        self.indptr[1:] = np.cumsum([len(p) for p in postings])
        self.doc_ids = np.array([d for p in postings for d, _ in p], dtype=np.int64)
        self.doc_weights = np.array([w for p in postings for _, w in p], dtype=np.float64)

    def weigh(self, counts: dict[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
        """Known feature columns and their L2-normalised weights (norm counting unseen features too)."""
        columns: list[int] = []
        raw: list[float] = []
        squared_unseen = 0.0
        for feature, count in counts.items():
            tf = math.sqrt(count)  # sublinear: a repeated "oui oui oui" is still a yes
            column = self.vocabulary.get(feature)
            if column is None:
                squared_unseen += (tf * self.unseen_idf) ** 2
            else:
                columns.append(column)
                raw.append(tf * float(self.idf[column]))
        weights = np.array(raw, dtype=np.float64)
        norm = math.sqrt(float(weights @ weights) + squared_unseen)
        return np.array(columns, dtype=np.int64), weights / norm if norm else weights, norm

    def similarities(self, features: dict[str, float]) -> np.ndarray:
        """Cosine of the query with every document."""
        columns, weights, norm = self.weigh(features)
        if not norm or len(columns) == 0:
            return np.zeros(self.n_documents)
        starts, ends = self.indptr[columns], self.indptr[columns + 1]
        lengths = ends - starts
        # Gather all postings of the query's features in one go, then sum per document.
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        positions = np.arange(int(lengths.sum())) + offsets
        return np.bincount(self.doc_ids[positions], weights=self.doc_weights[positions] * np.repeat(weights, lengths),
                           minlength=self.n_documents)


def char_features(tokens: Iterable[str], sizes: tuple[int, int], token_norm: float = 0.0) -> dict[str, float]:
    """Character n-grams of each " token ", counted; `token_norm` p divides a token's n-grams by
    their number to the power p, so long words do not drown short ones ("exactement" vs "aides")."""
    low, high = sizes
    counts: dict[str, float] = {}
    for token in tokens:
        padded = f" {token} "
        grams = [padded[i:i + n] for n in range(low, high + 1) for i in range(len(padded) - n + 1)]
        weight = 1.0 / len(grams) ** token_norm if grams else 0.0
        for gram in grams:
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


def _matching_tokens(folded: FoldedText) -> tuple[str, ...]:
    # Digits say "a number", not which one: "c'est le 75011" and "c'est le 13100" are one phrasing.
    return tuple("#" if t.isdigit() else t for t in folded.tokens)


def load_examples(path: Path) -> dict[str, list[str]]:
    with path.open(encoding="utf-8") as stream:
        data = yaml.safe_load(stream)
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a mapping of intent to example phrases")
    examples: dict[str, list[str]] = {}
    for intent, phrases in data.items():
        if intent not in INTENTS and intent not in (YES, NO):
            raise ValueError(f"{path}: unknown intent {intent!r}")
        if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
            raise ValueError(f"{path}: {intent}: expected a list of phrases")
        examples[str(intent)] = [str(p) for p in phrases]
    return examples


@dataclass(slots=True)
class _Evidence:
    """Slots found in one transcript, and what they mean for the intents."""

    slots: dict[str, Any] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)
    vetoed: set[str] = field(default_factory=set)

    def support(self, intent: str, score: float) -> None:
        self.scores[intent] = max(self.scores.get(intent, 0.0), score)


class IntentClassifier:
    """classify(text, state) -> IntentResult. Build once per process (examples load in ~0.2 s)."""

    def __init__(self, options: ClassifierOptions | None = None) -> None:
        self.options = options or ClassifierOptions()
        self.examples = load_examples(self.options.examples_path)
        self.labels = sorted(self.examples)
        folded_examples: list[FoldedText] = []
        example_labels: list[int] = []
        for label_index, label in enumerate(self.labels):
            for phrase in self.examples[label]:
                folded_examples.append(fold(phrase))
                example_labels.append(label_index)
        self.example_labels = np.array(example_labels, dtype=np.int64)
        # Examples are grouped by label, so per-label maxima are one reduceat over label starts.
        self.label_starts = np.searchsorted(self.example_labels, np.arange(len(self.labels)))
        self.char_index = TfidfIndex([self._char_features(f) for f in folded_examples])
        self.word_index = TfidfIndex([self._word_features(f) for f in folded_examples])
        log.info("intent classifier: %d examples, %d labels, %d char and %d word features",
                 len(folded_examples), len(self.labels), len(self.char_index.vocabulary),
                 len(self.word_index.vocabulary))

    # --- similarity ------------------------------------------------------------------------------
    def _char_features(self, folded: FoldedText) -> dict[str, float]:
        return char_features(_matching_tokens(folded), self.options.char_ngrams, self.options.char_token_norm)

    def _word_features(self, folded: FoldedText) -> dict[str, float]:
        return word_features(_matching_tokens(folded), folded.question, self.options.negation_span)

    def example_similarities(self, folded: FoldedText) -> np.ndarray:
        """Similarity (weighted cosine, character and word) of the transcript with every example."""
        weight = self.options.char_weight
        return (weight * self.char_index.similarities(self._char_features(folded))
                + (1.0 - weight) * self.word_index.similarities(self._word_features(folded)))

    def label_similarities(self, example_similarities: np.ndarray) -> dict[str, float]:
        maxima = np.maximum.reduceat(example_similarities, self.label_starts)
        return dict(zip(self.labels, maxima.tolist(), strict=True))

    # --- slots -----------------------------------------------------------------------------------
    def evidence(self, folded: FoldedText, state: str | None) -> _Evidence:
        options = self.options
        found = _Evidence()

        def strength(asked_in: str) -> float:
            return options.evidence_in_state if state == asked_in else options.evidence_off_state

        zip_code = slot_extraction.find_zip_code(folded, allow_four_digits=state == "ask_zip_code")
        abroad = slot_extraction.mentions_abroad(folded)
        if abroad or (zip_code is not None and not zip_code.valid and state == "ask_zip_code"
                      and zip_code.code.startswith(("98", "99"))):
            # 98xxx is Monaco, 99 the INSEE code for abroad: said when asked, it means not in France.
            # Living abroad disqualifies whatever was asked: as strong as a direct answer.
            found.support("not_in_france", options.evidence_in_state + options.state_bonus if abroad else 0.6)
            found.vetoed.add("ok_zipcode")
        if zip_code is not None and zip_code.valid and not abroad:
            found.slots["zip_code"] = zip_code.code
            found.support("ok_zipcode", strength("ask_zip_code"))
        else:
            found.vetoed.add("ok_zipcode")

        flat = slot_extraction.mentions_flat(folded)
        owner = slot_extraction.find_owner(folded)
        if owner is not None:
            found.slots["owner"] = owner
        if flat:
            found.slots["dwelling"] = "appartement"
            if folded.question or _ELIGIBILITY_QUESTION.search(folded.text):
                found.support("faq12", options.evidence_in_state)
            elif state == "ask_owner_house":
                found.support("not_proprio", options.evidence_in_state)
            else:
                found.support("faq12", options.evidence_off_state)
        elif owner is not None:
            found.support("ok_proprio" if owner else "not_proprio", strength("ask_owner_house"))

        heating = slot_extraction.find_heating(folded)
        if heating is not None:
            found.slots["heating"] = heating
            found.support("ok_heating", strength("ask_which_heating"))
        else:
            found.vetoed.add("ok_heating")
        if "deja" in folded.tokens and (heating == "pompe à chaleur" or _WORKS.search(folded.text)):
            # "J'ai déjà une pompe à chaleur" answers the heating question, but it is first the
            # objection faq22 answers (already equipped); the heating slot is kept for the dialog.
            found.support("faq22", options.evidence_in_state + options.state_bonus + 0.01)

        callback_slot = slot_extraction.find_callback_slot(folded)
        if callback_slot is not None:
            found.slots["slot"] = callback_slot
            found.support("ok_slot", strength("ask_slot_call_back"))
        return found

    # --- decision --------------------------------------------------------------------------------
    def decide(self, similarities: dict[str, float], found: _Evidence, state: str | None) -> IntentResult:
        options = self.options
        scores = {intent: similarities.get(intent, 0.0) for intent in INTENTS}
        yes, no = similarities.get(YES, 0.0), similarities.get(NO, 0.0)
        if state in YES_MEANS:
            scores[YES_MEANS[state]] = max(scores[YES_MEANS[state]], yes)
        if state in NO_MEANS:
            scores[NO_MEANS[state]] = max(scores[NO_MEANS[state]], no)
        for intent, score in found.scores.items():
            scores[intent] = max(scores[intent], score)
        if state is not None:
            expected = EXPECTED.get(state, frozenset())
            for intent in STATE_ANSWERS:
                scores[intent] += options.state_bonus if intent in expected else -options.off_state_penalty
        for intent in found.vetoed:
            scores[intent] = 0.0
        best = max(scores, key=lambda intent: scores[intent])
        best_score = scores[best]
        slots = dict(found.slots)
        nearest = max(similarities, key=lambda label: similarities[label])
        if nearest in (YES, NO) and similarities[nearest] >= options.threshold:
            slots["answer"] = "yes" if nearest == YES else "no"
            if similarities[nearest] > best_score:
                # A yes or no that answers nothing in this state: the dialog asks again.
                return IntentResult("unknown", min(1.0, similarities[nearest]), slots)
        if best == "unknown" or best_score < options.threshold:
            return IntentResult("unknown", min(1.0, max(best_score if best == "unknown" else 1.0 - best_score, 0.0)),
                                slots)
        return IntentResult(best, float(min(1.0, max(0.0, best_score))), slots)

    def classify(self, text: str, state: str | None = None) -> IntentResult:
        if state is not None and state not in DIALOG_STATES:
            raise ValueError(f"unknown dialog state {state!r} (expected one of {', '.join(DIALOG_STATES)})")
        folded = fold(text)
        if not folded.tokens:  # silence, "euh...": nothing said
            return IntentResult("unknown", 1.0, {})
        similarities = self.label_similarities(self.example_similarities(folded))
        return self.decide(similarities, self.evidence(folded, state), state)


@functools.lru_cache(maxsize=1)
def default_classifier() -> IntentClassifier:
    """The process-wide classifier over the packaged examples (loaded on first use)."""
    return IntentClassifier()


class EmbeddedIntentSource:
    """The embedded classifier behind the IntentSource interface (runs inline: ~1 ms a call)."""

    def __init__(self, classifier: IntentClassifier | None = None) -> None:
        self.classifier = classifier or default_classifier()

    async def classify(self, text: str, state: str | None = None) -> IntentResult:
        await asyncio.sleep(0)  # a cancellation point, as a remote call would have
        return self.classifier.classify(text, state)
