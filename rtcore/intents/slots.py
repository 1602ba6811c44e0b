"""Slot extraction from French phone transcripts: zip code, owner or tenant, heating, callback slot.

Every extractor takes the raw transcript (or its `FoldedText`) and returns None when the slot was not
said. Zip codes are validated against the real French départements: a five-digit number whose
département does not exist (00, 96, 98 Monaco, 99...) is reported as such, so the classifier can
tell "the caller lives abroad" from "the caller said a zip code".
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Final

from rapidfuzz import fuzz, process

from rtcore.intents.text import FoldedText, NumberGroup, fold, number_runs

log = logging.getLogger(__name__)

# Départements of metropolitan France (Corsica is 2A/2B, whose zip codes start with 20) and the
# overseas départements 971 Guadeloupe, 972 Martinique, 973 Guyane, 974 La Réunion, 975
# Saint-Pierre-et-Miquelon, 976 Mayotte. 98xxx is Monaco and the Pacific territories: not covered.
DEPARTMENTS: Final[frozenset[str]] = frozenset(
    [f"{n:02d}" for n in range(1, 96) if n != 20] + ["2A", "2B"] + [str(n) for n in range(971, 977)])

HEATING_TYPES: Final[tuple[str, ...]] = ("gaz", "fioul", "électricité", "bois", "pompe à chaleur", "autre")
DAYS: Final[tuple[str, ...]] = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
PERIODS: Final[tuple[str, ...]] = ("matin", "midi", "après-midi", "soir")
ANY_TIME: Final = "indifférent"


def department_of(zip_code: str) -> str | None:
    """The département of a five-digit zip code, or None when no French département has it."""
    if len(zip_code) != 5 or not zip_code.isdigit():
        return None
    if zip_code.startswith("20"):  # 200xx-201xx Corse-du-Sud, 202xx-206xx Haute-Corse
        return "2A" if zip_code[2] in "01" else "2B" if zip_code[2] in "23456" else None
    if zip_code.startswith("97"):
        return zip_code[:3] if zip_code[:3] in DEPARTMENTS else None
    return zip_code[:2] if zip_code[:2] in DEPARTMENTS else None


@dataclass(frozen=True, slots=True)
class ZipCodeMatch:
    """Five digits said as a zip code; `department` is None when it is not a French one."""

    code: str
    department: str | None

    @property
    def valid(self) -> bool:
        return self.department is not None


# A number followed by one of these is a quantity, not a zip code ("2000 euros", "15 ans").
_QUANTITY_UNITS = frozenset({"euro", "euros", "e", "ans", "an", "annees", "heure", "heures", "h", "minute", "minutes",
                             "min", "mois", "jours", "jour", "m2", "metres", "m", "kw", "kwh", "pour", "pourcent",
                             "fois", "personnes", "enfants", "degres", "litres", "k"})


def _zip_from_run(run: list[NumberGroup], allow_four_digits: bool) -> str | None:
    digits = "".join(group.digits for group in run)
    if len(digits) == 5:
        return digits
    # "six mille deux cents" / "6200" for 06200: the leading zero of départements 01-09 goes unsaid.
    if len(digits) == 4 and allow_four_digits and not digits.startswith("0"):
        return "0" + digits
    return None


def find_zip_code(text: str | FoldedText, *, allow_four_digits: bool = False) -> ZipCodeMatch | None:
    """The first zip code said, preferring a valid one; `allow_four_digits` pads "6200" to 06200
    (only when a zip code was asked for: elsewhere four digits are more often a year or a price)."""
    folded = fold(text) if isinstance(text, str) else text
    invalid: ZipCodeMatch | None = None
    for run in number_runs(folded.tokens):
        following = folded.tokens[run[-1].end] if run[-1].end < len(folded.tokens) else ""
        if following in _QUANTITY_UNITS:
            continue
        code = _zip_from_run(run, allow_four_digits)
        if code is None:
            continue
        match = ZipCodeMatch(code=code, department=department_of(code))
        if match.valid:
            return match
        invalid = invalid or match
    return invalid


def zip_code_from_dtmf(keys: str) -> str | None:
    """A zip code typed on the keypad: "75011#" -> "75011". `*` restarts the entry (what follows
    the last `*` counts); `#` ends it. Anything but exactly five digits of a French département: None."""
    entry = keys.strip().split("*")[-1].split("#")[0]
    if len(entry) != 5 or not entry.isdigit():
        return None
    return entry if department_of(entry) else None


# --- abroad ----------------------------------------------------------------------------------------
# Countries and cities where French speakers who get these calls live (Belgium, Switzerland,
# Luxembourg, Monaco, Maghreb, Canada...), folded. Said with a zip code or alone, they mean the home
# is not in France.
_ABROAD = re.compile(
    r"\b(?:belgique|belge|suisse|luxembourg|monaco|monegasque|espagne|italie|allemagne|portugal|angleterre"
    r"|royaume uni|irlande|pays bas|hollande|andorre|maroc|algerie|tunisie|senegal|cote d ivoire|canada|quebec"
    r"|etats unis|usa|bruxelles|liege|charleroi|namur|geneve|lausanne|neuchatel|fribourg|montreal"
    r"|etranger|expatrie|hors de france|pas en france|outre atlantique)\b")


def mentions_abroad(text: str | FoldedText) -> bool:
    """The caller says they live outside France ("j'habite en Belgique", "je suis à l'étranger")."""
    folded = fold(text) if isinstance(text, str) else text
    return _ABROAD.search(folded.text) is not None


# --- owner or tenant ------------------------------------------------------------------------------
_NEGATIONS = frozenset({"pas", "non", "plus", "jamais", "ni"})
# Someone else in the family, or the landlord: "chez mes parents", "c'est à mon frère".
_RELATIVES = (r"(?:(?:beaux |grands )?parents|mere|pere|fille|fils|enfants|soeur|frere|oncle|tante|belle mere"
              r"|beau pere|copain|copine)")
_TENANT = re.compile(r"\b(?:je|on|nous) lou(?:e|ons)\b|\ben location\b|\bloyer\b|\bhlm\b|\blogement social\b"
                     r"|\bheberge|\bloge (?:par|chez)\b|\bchez (?:mes|ma|mon) " + _RELATIVES + r"\b"
                     r"|\ba (?:mes|ma|mon) (?:" + _RELATIVES + r"|proprio|proprietaire)\b"
                     r"|\b(?:pas|plus) a (?:moi|nous)\b|\bappartient a (?:mon|ma|mes|son|sa|ses|leur|un|une)\b")
# "ma maison" alone is not ownership (tenants say it too); "c'est ma maison" in answer to the question is.
_OWNER = re.compile(r"\bproprio\b|\ba (?:moi|nous)\b|\bm appartient\b|\bnous appartient\b|\bc est (?:ma|notre) maison\b"
                    r"|\bachete|\bun credit\b|\bon rembourse\b|\bhypotheque")
_FLAT = re.compile(r"\bappart(?:ement)?s?\b|\bstudio\b|\bimmeuble\b|\bcopro(?:priete)?s?\b")
_OWNER_WORDS = ("proprietaire", "proprietaires")
_TENANT_WORDS = ("locataire", "locataires")


def _fuzzy_word(token: str, choices: tuple[str, ...], cutoff: float) -> bool:
    # ASR misspellings ("proprietere", "locatere") within a few letters of the word.
    return len(token) >= 6 and process.extractOne(token, choices, scorer=fuzz.ratio, score_cutoff=cutoff) is not None


# Whose the owner word is: "je suis (le) propriétaire" is the caller; "mon propriétaire", "c'est le
# propriétaire qu'il faut appeler", "ma fille qui est propriétaire" someone else (the caller is not).
_SPEAKER = frozenset({"je", "j", "suis", "sommes", "moi", "nous", "on"})
_SOMEONE_ELSES = frozenset({"mon", "ma", "mes", "ton", "ta", "tes", "son", "sa", "ses", "notre", "votre", "vos",
                            "leur", "leurs", "le", "la", "les", "du", "au", "aux"})


def _someone_else(before: tuple[str, ...]) -> bool:
    if any(t in _SPEAKER for t in before):
        return False
    return bool(before) and (before[-1] in _SOMEONE_ELSES or "qui" in before[-2:])


def find_owner(text: str | FoldedText) -> bool | None:
    """True: owns the home; False: tenant or housed by someone else; None: not said."""
    folded = fold(text) if isinstance(text, str) else text
    tokens = folded.tokens
    for index, token in enumerate(tokens):
        if token.startswith("copro"):
            continue
        before = tokens[max(0, index - 2):index]
        if token == "proprio" or _fuzzy_word(token, _OWNER_WORDS, 80):
            if _someone_else(tokens[max(0, index - 3):index]):
                return False
            return not any(t in _NEGATIONS for t in before)  # "non propriétaire", "pas proprio"
        if _fuzzy_word(token, _TENANT_WORDS, 80):
            # "Non, locataire." answers the question: only "pas"/"plus"/"jamais" negate a tenant.
            return any(t in _NEGATIONS and t != "non" for t in before)
    joined = folded.text
    if _TENANT.search(joined):
        return False
    if _OWNER.search(joined):
        return True
    return None


def mentions_flat(text: str | FoldedText) -> bool:
    """The caller lives in a flat or a co-ownership (not a house: the campaign qualifies houses)."""
    folded = fold(text) if isinstance(text, str) else text
    return _FLAT.search(folded.text) is not None


# --- heating ---------------------------------------------------------------------------------------
# Checked in this order of priority: a heat pump is electric, a gas stove is still gas.
_HEATING_PATTERNS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("pompe à chaleur", re.compile(r"\bpompes? (?:a|de) chaleur|\bpac\b|\baerotherm|\bgeotherm|\bthermodynamique"
                                   r"|\bclim\w* reversible|\bpompe chaleur")),
    ("bois", re.compile(r"\bbois\b|\bau boa\b|\bgranule|\bpellet|\bpoele|\bcheminee|\binsert\b|\bbuches?\b")),
    ("fioul", re.compile(r"\bfioul|\bfuel|\bmazout|\bfiol\b|\bfuil\b")),
    ("gaz", re.compile(r"\bgaz\b|\bgas\b|\bgaze\b|\bpropane|\bbutane|\bgpl\b|\bau gars\b")),
    ("électricité", re.compile(r"\belectri|\bconvecteur|\bgrille pain|\binertie\b|\bedf\b")),
    ("autre", re.compile(r"\bsolaire|\bcharbon|\bcollectif|\breseau de chaleur|\bpetrole|\bautre chose\b")),
)
_HEATING_FUZZY: Final[dict[str, str]] = {"electricite": "électricité", "electrique": "électricité",
                                         "mazout": "fioul", "granules": "bois", "propane": "gaz",
                                         "convecteurs": "électricité"}
_HEATING_FUZZY_WORDS: Final = tuple(_HEATING_FUZZY)


_SOUNDS: Final = (("eau", "o"), ("au", "o"), ("oi", "wa"), ("ou", "u"), ("ph", "f"), ("y", "i"))
_DOUBLED = re.compile(r"(.)\1+")
_SILENT_END = re.compile(r"(?<=...)(?:e|s|t|x|d)$")


def sound_key(token: str) -> str:
    """A rough French spelling-to-sound key: "bois", "boit", "bwa" -> "bwa"; "fioul", "fiool" ->
    "fiul", "fiol". Whisper spells what it heard of a word it did not recognise."""
    for spelled, sound in _SOUNDS:
        token = token.replace(spelled, sound)
    return _SILENT_END.sub("", _DOUBLED.sub(r"\1", token))


# Short heating words and their sound keys: matched by sound only when the heating was asked for.
_HEATING_SOUNDS: Final = {sound_key(word): heating for word, heating in (
    ("gaz", "gaz"), ("fioul", "fioul"), ("fuel", "fioul"), ("bois", "bois"), ("mazout", "fioul"))}


def _heating_by_sound(token: str) -> str | None:
    if len(token) < 3:
        return None
    key = sound_key(token)
    for word_key, heating in _HEATING_SOUNDS.items():
        if key[0] != word_key[0]:  # the first sound is the one Whisper gets right ("quel" is not "fuel")
            continue
        if key == word_key or (len(key) >= 3 and word_key.startswith(key)) or (
                len(key) >= 4 and len(word_key) >= 4 and fuzz.ratio(key, word_key) >= 75):
            return heating
    return None


def find_heating(text: str | FoldedText, *, by_sound: bool = False) -> str | None:
    """One of HEATING_TYPES: the highest-priority heating said and not negated ("plus de fioul").
    `by_sound` (when the heating was asked for) also takes words that sound like one ("au bwa",
    "au fiou")."""
    folded = fold(text) if isinstance(text, str) else text
    joined = folded.text
    found: list[str] = []
    negated: list[str] = []
    for heating, pattern in _HEATING_PATTERNS:
        for match in pattern.finditer(joined):
            before = joined[:match.start()].split()[-2:]
            (negated if any(t in ("pas", "plus") for t in before) else found).append(heating)
    if not found and not negated:
        for token in folded.tokens:
            hit = (process.extractOne(token, _HEATING_FUZZY_WORDS, scorer=fuzz.ratio, score_cutoff=82)
                   if len(token) >= 6 else None)
            if hit is not None:
                found.append(_HEATING_FUZZY[hit[0]])
            elif by_sound and (sounded := _heating_by_sound(token)) is not None:
                found.append(sounded)
    # Priority order, not order of speech: "pompe à chaleur électrique" is a heat pump.
    for heating, _ in _HEATING_PATTERNS:
        if heating in found:
            return heating
    return negated[0] if negated and not found else None


# --- callback slot ---------------------------------------------------------------------------------
_ANY_TIME = re.compile(r"\bn importe (?:quand|quel)|\bquand vous voulez\b|\bpeu importe\b|\bcomme vous voulez\b"
                       r"|\ba tout moment\b|\btoute la journee\b|\bquand vous voudrez\b|\bindifferent|\bm est egal\b")
_DAY_PHRASES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("après-demain", re.compile(r"\bapres demain\b")),
    ("demain", re.compile(r"\bdemain\b")),
    ("aujourd'hui", re.compile(r"\baujourd hui\b|\bce (?:soir|matin|midi)\b|\bcet (?:apres midi|aprem)\b"
                               r"|\btout a l heure\b")),
    ("week-end", re.compile(r"\bweek ?ends?\b|\bwe\b")),
    ("semaine", re.compile(r"\ben semaine\b|\bla semaine\b|\bdu lundi au vendredi\b|\bjours? ouvr")),
)
_PERIOD_PHRASES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("après-midi", re.compile(r"\bapres midi\b|\bapresmidi\b|\baprem\b|\bapres manger\b|\bdebut d apres")),
    ("midi", re.compile(r"\bmidi\b|\bdejeuner\b|\bpause de midi\b")),
    ("matin", re.compile(r"\bmatin|\bmatinee\b|\btot\b")),
    ("soir", re.compile(r"\bsoir|\bfin de journee\b|\bapres le (?:travail|boulot)\b|\bdiner\b")),
)
_HOUR_TOKEN = re.compile(r"^(\d{1,2})h(\d{2})?$")
_HOUR_WORDS = frozenset({"h", "heure", "heures", "heur"})
_LONG_DAYS = ("mercredi", "vendredi", "samedi", "dimanche")


def period_of_hour(hour: int) -> str:
    """"14h" -> après-midi. One to six o'clock on the phone means afternoon or evening ("à 3 heures")."""
    if 1 <= hour <= 6:
        hour += 12
    if 7 <= hour <= 11:
        return "matin"
    if 12 <= hour <= 13:
        return "midi"
    if 14 <= hour <= 17:
        return "après-midi"
    return "soir"


def find_hour(folded: FoldedText) -> int | None:
    tokens = folded.tokens
    for token in tokens:
        match = _HOUR_TOKEN.match(token)
        if match and int(match.group(1)) <= 23:
            return int(match.group(1))
    for run in number_runs(tokens):
        last = run[-1]
        if last.end < len(tokens) and tokens[last.end] in _HOUR_WORDS and 0 <= last.value <= 23:
            return last.value
    return None


def find_callback_slot(text: str | FoldedText) -> dict[str, object] | None:
    """{"day": ..., "period": ...} (either may be None; "hour" added when one was said) or None."""
    folded = fold(text) if isinstance(text, str) else text
    joined = folded.text
    day: str | None = None
    period: str | None = None
    for token in folded.tokens if "du lundi au vendredi" not in joined else ():
        if token in DAYS:
            day = token
            break
        if len(token) >= 6:
            hit = process.extractOne(token, _LONG_DAYS, scorer=fuzz.ratio, score_cutoff=85)
            if hit is not None:
                day = hit[0]
                break
    if day is None:
        day = next((name for name, pattern in _DAY_PHRASES if pattern.search(joined)), None)
    period = next((name for name, pattern in _PERIOD_PHRASES if pattern.search(joined)), None)
    hour = find_hour(folded)
    if period is None and hour is not None:
        period = period_of_hour(hour)
    if _ANY_TIME.search(joined):
        day, period = day or ANY_TIME, period or ANY_TIME
    if day is None and period is None:
        return None
    slot: dict[str, object] = {"day": day, "period": period}
    if hour is not None:
        slot["hour"] = hour
    return slot
