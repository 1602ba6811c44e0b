"""What Whisper writes that is not what the caller said: silence, loops, credits, another language.

Each rule was measured on what rtcore hears of real callers: French speech through the telephone
band (8 kHz G.711, resampled to 16 kHz) and noise (README, "Filters"):
- no speech: Whisper's no-speech probability over `no_speech_threshold` (0.6) with a mean
  log-probability under `logprob_threshold` (-1), or over `no_speech_doubt` (0.5) with one under
  `doubt_logprob_threshold` (-1.3): a real answer heard badly over a phone line can have a no-speech
  probability over 0.5, wide-band hiss one under 0.6;
- a loop: a compression ratio over `compression_ratio_threshold`, or a word (not a number, "oui" or
  "non", which callers do say three times) or a phrase said three times or more that makes up a
  good part of the text ("3, 4, 3, 4, 3, 4", "à l'élection de l'élection de l'élection");
- the subtitle credits Whisper learnt to write over French silence;
- another language: forced to French, Whisper still writes English (or Japanese) for some noises.
"""

from __future__ import annotations

import re
import zlib
from collections import Counter

# What Whisper writes, in French, over silence or noise: subtitle credits from its training data.
KNOWN_HALLUCINATIONS = (
    "sous-titres réalisés par", "sous-titrage st'", "sous-titrage société radio-canada",
    "merci d'avoir regardé", "abonnez-vous", "amara.org", "sous-titres fait par",
)
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
# Words callers do repeat ("non, non, non", "zéro zéro zéro" in 75000): never a loop by themselves.
REPEATABLE = frozenset("""
    oui non si ouais bon ben euh allô allo merci ok okay d'accord voilà
    zéro un une deux trois quatre cinq six sept huit neuf dix onze douze treize quatorze quinze seize
    vingt trente quarante cinquante soixante septante huitante nonante cent cents mille
""".split())
LOOP_REPEATS = 3  # occurrences of a word or phrase that make a loop...
LOOP_SHARE = 0.4  # ...when they make up at least this share of the words
MIN_LOOP_WORD = 4  # letters: shorter single words ("le", "de", "et") repeat in any sentence
# Words of English that are not also French: forced to French, Whisper writes some over noise.
ENGLISH_ONLY = frozenset("""
    the and you your i i'm it's is are was were be been this that what thank thanks yes
    of to in with for have has do does don't can will would my we they he she his her them
    going just very get got know think
""".split())
FRENCH_LETTERS = frozenset("àâäçéèêëîïôöùûüÿœæ")
FRENCH_MARKERS = frozenset("""
    je tu il elle nous vous ils elles le la les un une des du de au aux et est suis sont c'est oui non
    pas mon ma mes votre vos ce cette qui que quoi pour avec dans sur chez merci bonjour
""".split())


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def words(text: str) -> list[str]:
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def is_loop(text: str) -> bool:
    """A word or a phrase of up to 4 words said `LOOP_REPEATS` times or more, making up at least
    `LOOP_SHARE` of the text (numbers, "oui", "non" and short words alone excepted)."""
    tokens = words(text)
    for n in (1, 2, 3, 4):
        if len(tokens) < n * LOOP_REPEATS:
            break
        grams = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        for gram, count in grams.items():
            if count < LOOP_REPEATS or count * n < LOOP_SHARE * len(tokens):
                continue
            if all(w in REPEATABLE for w in gram):
                continue
            if n == 1 and len(gram[0]) < MIN_LOOP_WORD:
                continue
            return True
    return False


def wrong_language(text: str, language: str) -> bool:
    """Text that is plainly not in `language` (checked for French: other languages pass)."""
    if language != "fr":
        return False
    letters = [c.lower() for c in text if c.isalpha()]
    if letters and sum(1 for c in letters if not ("a" <= c <= "z" or c in FRENCH_LETTERS)) > len(letters) / 2:
        return True  # another script (Whisper writes Japanese or Cyrillic over some noises)
    tokens = words(text)
    english = sum(1 for w in tokens if w in ENGLISH_ONLY)
    french = sum(1 for w in tokens if w in FRENCH_MARKERS)
    return english >= 1 and english > french and english >= 0.3 * len(tokens)


ECHO_RUN = 3  # words in a row taken from the context...
ECHO_SHARE = 0.6  # ...making up this share of the text: Whisper copied its prompt instead of listening


def echoes(text: str, context: str) -> bool:
    """Whether `text` is mostly the context repeated ("mardi, mercredi, le matin" after a context
    listing days): Whisper given a previous text copies it when it cannot make out the speech."""
    said, prompt = words(text), words(context)
    if len(said) < ECHO_RUN or len(prompt) < ECHO_RUN:
        return False
    runs = {tuple(prompt[i:i + ECHO_RUN]) for i in range(len(prompt) - ECHO_RUN + 1)}
    copied = [False] * len(said)
    for i in range(len(said) - ECHO_RUN + 1):
        if tuple(said[i:i + ECHO_RUN]) in runs:
            copied[i:i + ECHO_RUN] = [True] * ECHO_RUN
    return sum(copied) >= ECHO_SHARE * len(said)


def flag(text: str, avg_logprob: float, no_speech_prob: float, *, language: str, no_speech_threshold: float,
         logprob_threshold: float, compression_ratio_threshold: float, no_speech_doubt: float = 1.0,
         doubt_logprob_threshold: float = -99.0) -> str:
    """Why `text` is not to be taken as the caller's words ("" when it is)."""
    lowered = text.lower()
    if not words(text):  # nothing but punctuation ("...") is what Whisper writes over some noise
        return "empty"
    if no_speech_prob > no_speech_threshold and avg_logprob < logprob_threshold:
        return "no speech"  # Whisper's own rule for a silent window
    if no_speech_prob > no_speech_doubt and avg_logprob < doubt_logprob_threshold:
        return "no speech"  # probably silent, and unsure of its words
    if compression_ratio(text) > compression_ratio_threshold or is_loop(text):
        return "repetition"
    if any(phrase in lowered for phrase in KNOWN_HALLUCINATIONS):
        return "known hallucination"
    if wrong_language(text, language):
        return "wrong language"
    return ""
