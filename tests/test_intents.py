"""rtcore.intents: accuracy on the labelled sets, slots, state dependence, debug evidence, HTTP
client, CLI.

Three labelled sets (state<TAB>text<TAB>intent): intents_test.tsv (written before the examples),
intents_dev.tsv (what the classifier is tuned on) and intents_holdout.tsv (written before tuning,
never tuned on: its test prints aggregate figures only, never its misclassified lines). Run with
`-s` to see the per-intent accuracy tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from rtcore.cli import main as cli_main
from rtcore.intents import INTENTS, IntentSource, intent_source
from rtcore.intents.base import (
    API_REQUEST_ERROR,
    DIALOG_STATES,
    JSON_DECODE_ERROR,
    REQUEST_TIMEOUT_ERROR,
    IntentResult,
    read_labelled,
)
from rtcore.intents.classifier import EmbeddedIntentSource, IntentClassifier, default_classifier
from rtcore.intents.http_client import HttpIntentClient, HttpIntentOptions, parse_answer
from rtcore.intents.slots import (
    department_of,
    find_callback_slot,
    find_heating,
    find_owner,
    find_zip_code,
    mentions_abroad,
    zip_code_from_dtmf,
)
from rtcore.intents.text import clauses, fold
from rtcore.intents.topics import topics_said

DATA = Path(__file__).parent / "data"
TEST_SET = DATA / "intents_test.tsv"
DEV_SET = DATA / "intents_dev.tsv"
HOLDOUT_SET = DATA / "intents_holdout.tsv"
# Behaviour thresholds: the holdout's is the requirement; the test and dev sets' are their
# figures when the classifier was last tuned (98.0 % and 97.3 %) minus a margin.
MIN_ACCURACY = 0.97
MIN_DEV_ACCURACY = 0.96
MIN_HOLDOUT_ACCURACY = 0.95


def load_test_set(path: Path = TEST_SET) -> list[tuple[str, str, str]]:
    return read_labelled(path)


def accuracy_table(classifier: IntentClassifier, path: Path, *, show_errors: bool) -> float:
    """Prints per-intent accuracy on a labelled set (and its misclassified lines when asked)."""
    rows = load_test_set(path)
    per_intent: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    errors = []
    started = time.perf_counter()
    for state, text, expected in rows:
        result = classifier.classify(text, state)
        per_intent[expected][1] += 1
        if result.intent == expected:
            per_intent[expected][0] += 1
        else:
            errors.append(f"  [{state}] {text!r}: expected {expected}, got {result.intent} ({result.score:.2f})")
    per_call_ms = (time.perf_counter() - started) / len(rows) * 1000
    correct = sum(ok for ok, _ in per_intent.values())
    accuracy = correct / len(rows)
    print(f"\nintent accuracy on {path.name} ({per_call_ms:.2f} ms per call):")
    print(f"  {'intent':<16} {'correct':>7} {'total':>5} {'accuracy':>8}")
    for intent in INTENTS:
        ok, total = per_intent[intent]
        if total:
            print(f"  {intent:<16} {ok:>7} {total:>5} {ok / total:>8.0%}")
    print(f"  {'overall':<16} {correct:>7} {len(rows):>5} {accuracy:>8.1%}")
    if show_errors:
        print("misclassified:\n" + "\n".join(errors))
    return accuracy


@pytest.fixture(scope="module")
def classifier() -> IntentClassifier:
    return default_classifier()


# --- the labelled test set -----------------------------------------------------------------------
def test_test_set_is_well_formed_and_unseen(classifier: IntentClassifier) -> None:
    rows = load_test_set()
    assert len(rows) >= 220
    counts: dict[str, int] = defaultdict(int)
    for state, _text, intent in rows:
        assert state in DIALOG_STATES
        assert intent in INTENTS
        counts[intent] += 1
    for intent in INTENTS:
        assert counts[intent] >= 4, f"{intent} has {counts[intent]} test lines"
    examples = {fold(p).text for phrases in classifier.examples.values() for p in phrases}
    copied = [text for _, text, _ in rows if fold(text).text in examples]
    assert not copied, f"test lines equal to classifier examples: {copied}"


def test_dev_and_holdout_are_well_formed_and_apart(classifier: IntentClassifier) -> None:
    examples = {fold(p).text for phrases in classifier.examples.values() for p in phrases}
    test_lines = {fold(text).text for _, text, _ in load_test_set(TEST_SET)}
    dev = load_test_set(DEV_SET)
    holdout = load_test_set(HOLDOUT_SET)
    assert len(dev) >= 300 and len(holdout) >= 400
    for rows in (dev, holdout):
        for state, _text, intent in rows:
            assert state in DIALOG_STATES and intent in INTENTS
    counts: dict[str, int] = defaultdict(int)
    for _state, _text, intent in holdout:
        counts[intent] += 1
    assert all(counts[intent] >= 5 for intent in INTENTS), counts
    holdout_lines = {fold(text).text for _, text, _ in holdout}
    # The holdout's lines are nowhere else: not examples (never copy them there), not dev or test lines.
    assert not holdout_lines & examples, "holdout lines copied into the examples"
    assert not holdout_lines & test_lines
    assert not holdout_lines & {fold(text).text for _, text, _ in dev}
    assert not {fold(text).text for _, text, _ in dev} & examples, "dev lines copied into the examples"


def test_accuracy_on_test_set(classifier: IntentClassifier) -> None:
    assert accuracy_table(classifier, TEST_SET, show_errors=True) >= MIN_ACCURACY


def test_accuracy_on_dev_set(classifier: IntentClassifier) -> None:
    assert accuracy_table(classifier, DEV_SET, show_errors=True) >= MIN_DEV_ACCURACY


def test_accuracy_on_holdout(classifier: IntentClassifier) -> None:
    # Aggregate figures only: the holdout's misclassified lines are never shown (nor tuned on).
    assert accuracy_table(classifier, HOLDOUT_SET, show_errors=False) >= MIN_HOLDOUT_ACCURACY


# --- zip codes -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("spoken", "zip_code"), [
    ("75011", "75011"),
    ("C'est le 13100.", "13100"),
    ("75 011", "75011"),
    ("75 0 11", "75011"),
    ("69.003", "69003"),
    ("soixante-quinze zéro onze", "75011"),
    ("sept cinq zéro un un", "75011"),
    ("soixante quinze mille onze", "75011"),
    ("c'est le 13 100", "13100"),
    ("treize mille cent", "13100"),
    ("treize cent", "13100"),  # département then commune, as said in Provence
    ("quatre-vingt-treize deux cents", "93200"),
    ("trente et un mille", "31000"),
    ("zéro six deux cents", "06200"),
    ("06 200", "06200"),
    ("quatre-vingt-dix-sept quatre cents", "97400"),
    ("soixante et onze mille", "71000"),
    ("vingt mille quatre-vingt-dix", "20090"),  # Corse-du-Sud
    ("vingt-deux cents", "22100"),  # same rule as "treize cent"
    ("deux mille deux cents", None),  # 2200: four digits only count when a zip code was asked
    ("j'ai deux minutes", None),
    ("ça coûte 15000 euros", None),  # a price, not a zip code
    ("06 12 34 56 78", None),  # a phone number
])
def test_zip_code_spoken_forms(spoken: str, zip_code: str | None) -> None:
    match = find_zip_code(spoken)
    assert (match.code if match and match.valid else None) == zip_code


@pytest.mark.parametrize(("spoken", "zip_code"), [("6200", "06200"), ("mille trois cents", "01300"),
                                                  ("six mille deux cents", "06200")])
def test_four_digit_zip_codes_when_asked(spoken: str, zip_code: str) -> None:
    match = find_zip_code(spoken, allow_four_digits=True)
    assert match is not None and match.code == zip_code and match.valid
    assert find_zip_code(spoken) is None


@pytest.mark.parametrize("code", ["00100", "96100", "98000", "99100", "20700", "97700", "97000"])
def test_invalid_departments(code: str) -> None:
    assert department_of(code) is None
    match = find_zip_code(f"c'est le {code}")
    assert match is not None and not match.valid


@pytest.mark.parametrize(("code", "department"), [("01000", "01"), ("20000", "2A"), ("20100", "2A"),
                                                  ("20200", "2B"), ("20600", "2B"), ("97100", "971"),
                                                  ("97600", "976"), ("95880", "95"), ("13100", "13")])
def test_valid_departments(code: str, department: str) -> None:
    assert department_of(code) == department


@pytest.mark.parametrize(("keys", "zip_code"), [("75011#", "75011"), ("75011", "75011"), ("13*75011#", "75011"),
                                                ("7501#", None), ("750111#", None), ("99100#", None),
                                                ("", None), ("#", None), ("2A000#", None)])
def test_dtmf_zip_code(keys: str, zip_code: str | None) -> None:
    assert zip_code_from_dtmf(keys) == zip_code


def test_abroad() -> None:
    assert mentions_abroad("j'habite en Belgique")
    assert mentions_abroad("je vis à l'étranger")
    assert not mentions_abroad("j'habite à Paris")


# --- owner, heating, callback slot ---------------------------------------------------------------
@pytest.mark.parametrize(("text", "owner"), [
    ("oui je suis propriétaire", True), ("proprio", True), ("on est propriétère", True),
    ("la maison est à nous", True), ("on l'a achetée en 2010", True),
    ("je suis locataire", False), ("locatère", False), ("non, locataire", False), ("je loue", False),
    ("je suis pas propriétaire", False),
    ("je ne suis pas locataire", True), ("c'est à mes parents", False), ("on est en location", False),
    ("au gaz", None), ("ma maison est récente", None),
])
def test_owner(text: str, owner: bool | None) -> None:
    assert find_owner(text) is owner


@pytest.mark.parametrize(("text", "heating"), [
    ("au gaz", "gaz"), ("gaz de ville", "gaz"), ("chaudière gaz", "gaz"), ("propane", "gaz"),
    ("fioul", "fioul"), ("au fuel", "fioul"), ("mazout", "fioul"),
    ("électrique", "électricité"), ("radiateurs électriques", "électricité"), ("électrisité", "électricité"),
    ("des convecteurs", "électricité"),
    ("bois", "bois"), ("poêle à bois", "bois"), ("granulés", "bois"), ("une cheminée", "bois"),
    ("pompe à chaleur", "pompe à chaleur"), ("une PAC air eau", "pompe à chaleur"),
    ("pompe à chaleur électrique", "pompe à chaleur"), ("solaire", "autre"), ("chauffage collectif", "autre"),
    ("on n'a plus de fioul, c'est au bois", "bois"), ("je sais pas", None),
])
def test_heating(text: str, heating: str | None) -> None:
    assert find_heating(text) == heating


@pytest.mark.parametrize(("text", "day", "period"), [
    ("demain matin", "demain", "matin"), ("après-demain vers 14h", "après-demain", "après-midi"),
    ("lundi après-midi", "lundi", "après-midi"), ("mercredi vers 10 heures", "mercredi", "matin"),
    ("mecredi soir", "mercredi", "soir"), ("jeudi à quatorze heures", "jeudi", "après-midi"),
    ("samedi midi", "samedi", "midi"), ("en semaine", "semaine", None), ("le week-end", "week-end", None),
    ("plutôt le soir", None, "soir"), ("en fin de journée", None, "soir"), ("à 18h30", None, "soir"),
    ("ce soir", "aujourd'hui", "soir"), ("n'importe quand", "indifférent", "indifférent"),
    ("du lundi au vendredi le matin", "semaine", "matin"),
])
def test_callback_slot(text: str, day: str | None, period: str | None) -> None:
    slot = find_callback_slot(text)
    assert slot is not None and (slot["day"], slot["period"]) == (day, period)


def test_no_callback_slot() -> None:
    assert find_callback_slot("je ne sais pas") is None


# --- classifier behaviour ------------------------------------------------------------------------
@pytest.mark.parametrize(("state", "intent"), [
    ("init", "ok_eligibility"), ("ask_owner_house", "ok_proprio"), ("ask_be_called_back", "ok_callback"),
    ("ask_zip_code", "unknown"), ("ask_which_heating", "unknown"),
])
def test_yes_depends_on_state(classifier: IntentClassifier, state: str, intent: str) -> None:
    result = classifier.classify("oui", state)
    assert result.intent == intent
    assert result.slots.get("answer") == "yes"


@pytest.mark.parametrize(("state", "intent"), [
    ("init", "not_interested"), ("ask_owner_house", "not_proprio"), ("ask_be_called_back", "no_callback"),
    ("ask_slot_call_back", "slot_problem"),
])
def test_no_depends_on_state(classifier: IntentClassifier, state: str, intent: str) -> None:
    assert classifier.classify("non", state).intent == intent


def test_slots_in_results(classifier: IntentClassifier) -> None:
    result = classifier.classify("c'est le soixante-quinze zéro onze", "ask_zip_code")
    assert (result.intent, result.slots["zip_code"]) == ("ok_zipcode", "75011")
    assert 0.0 <= result.score <= 1.0
    result = classifier.classify("on a une chaudière au fioul", "ask_which_heating")
    assert (result.intent, result.slots["heating"]) == ("ok_heating", "fioul")
    result = classifier.classify("oui je suis propriétaire", "ask_owner_house")
    assert (result.intent, result.slots["owner"]) == ("ok_proprio", True)
    result = classifier.classify("jeudi vers 14h", "ask_slot_call_back")
    assert result.intent == "ok_slot" and result.slots["slot"]["day"] == "jeudi"
    assert result.slots["slot"]["period"] == "après-midi"


def test_flat_answer_versus_flat_question(classifier: IntentClassifier) -> None:
    assert classifier.classify("j'habite en appartement", "ask_owner_house").intent == "not_proprio"
    assert classifier.classify("et en appartement j'y ai droit ?", "ask_owner_house").intent == "faq12"


@pytest.mark.parametrize(("text", "intent"), [
    ("Propriétaire, oui, mais d'un appartement.", "faq12"),  # an owner, of a flat: why flats are out
    ("Oui, mais c'est un appartement en copropriété.", "faq12"),
    ("Je suis locataire d'un appartement.", "not_proprio"),  # a tenant answers the question
    ("Non, c'est mon frère qui est propriétaire.", "not_proprio"),  # someone else's ownership
    ("Moi je ne suis pas locataire.", "ok_proprio"),  # negation
])
def test_owner_and_flat_rules(classifier: IntentClassifier, text: str, intent: str) -> None:
    assert classifier.classify(text, "ask_owner_house").intent == intent


def test_owner_of_someone_else() -> None:
    assert find_owner("c'est ma fille qui est propriétaire") is False
    assert find_owner("c'est le propriétaire qu'il faut appeler") is False
    assert find_owner("la maison appartient à mon père") is False
    assert find_owner("c'est moi la propriétaire") is True
    assert find_owner("je suis le propriétaire") is True


def test_question_after_a_yes_is_answered_first(classifier: IntentClassifier) -> None:
    # The caller waits for the answer to what they asked last; the bot then asks again.
    assert classifier.classify("Oui, mais c'est gratuit ?", "init").intent == "faq3"
    assert classifier.classify("oui d'accord mais vous êtes qui", "ask_be_called_back").intent == "faq1"
    # A yes with mumbled words after it is still a yes; "oui ?" on its own asks who is there.
    assert classifier.classify("Oui, brr mlem plouf.", "ask_owner_house").intent == "ok_proprio"
    assert classifier.classify("Allô, oui ?", "init").intent != "ok_eligibility"


def test_topic_words_decide_between_look_alike_questions(classifier: IntentClassifier) -> None:
    assert topics_said(fold("Le conseiller, c'est payant ?").text) == ["faq3"]
    assert "faq23" in topics_said(fold("Les travaux commencent quand ?").text)
    assert "faq7" not in topics_said(fold("Les travaux durent combien de temps ?").text)
    assert topics_said(fold("Le match commence à quelle heure ?").text) == []
    assert classifier.classify("Et le conseiller, il faut le payer ?", "ask_be_called_back").intent == "faq3"
    assert classifier.classify("Le conseiller, c'est quelqu'un de chez vous ?", "ask_be_called_back").intent == "faq9"
    # A question about an FAQ's topic is no answer to the heating question, though it names one.
    result = classifier.classify("Avec le gaz, ma facture va baisser ?", "ask_which_heating")
    assert result.intent == "faq15" and result.slots["heating"] == "gaz"


def test_heating_by_sound_when_asked(classifier: IntentClassifier) -> None:
    assert find_heating("au bwa", by_sound=True) == "bois"
    assert find_heating("au fiou", by_sound=True) == "fioul"
    assert find_heating("au bwa") is None  # only when the heating was asked for
    assert find_heating("vous êtes quelle boîte", by_sound=True) is None
    assert classifier.classify("Gazz.", "ask_which_heating").intent == "ok_heating"


def test_callback_times_before_the_callback_question_mean_busy(classifier: IntentClassifier) -> None:
    assert classifier.classify("Rappelez-moi demain, là je ne peux pas.", "init").intent == "busy"
    assert classifier.classify("Vous me rappelez plus tard ?", "ask_zip_code").intent == "busy"
    assert classifier.classify("Oui, rappelez-moi demain matin.", "ask_slot_call_back").intent == "ok_slot"


def test_negated_callback_slot_is_a_slot_problem(classifier: IntentClassifier) -> None:
    assert classifier.classify("Je ne peux ni le matin ni le soir.", "ask_slot_call_back").intent == "slot_problem"


def test_clauses() -> None:
    assert [(c.text, c.question) for c in clauses("Oui, mais c'est gratuit ?")] == [
        ("oui", False), ("c est gratuit", True)]
    assert [c.text for c in clauses("non mais laissez tomber")] == ["non", "laissez tomber"]
    assert [c.text for c in clauses("C'est le 75.011, 33 600.")] == ["c est le 75 011 33 600"]


def test_debug_log_shows_the_evidence(classifier: IntentClassifier, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rtcore.intents.classifier")
    classifier.classify("c'est gratuit ?", "init")
    assert not [r for r in caplog.records if r.levelno == logging.DEBUG]  # nothing is built at INFO
    caplog.set_level(logging.DEBUG, logger="rtcore.intents.classifier")
    result = classifier.classify("Oui d'accord, mais c'est payant ?", "init")
    assert result.intent == "faq3"
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    # The decision, the nearest examples with their similarity and label, the clause rules, the
    # state's bonus and the ranked scores.
    assert message.startswith("intent faq3 (")
    assert re.search(r"nearest: _yes 0\.\d\d \"Oui c'est d'accord\.\"; faq3 0\.\d\d ", message), message
    assert "clause 'c est payant': faq3" in message and "final question faq3" in message
    assert "state init: +0.08 to busy, not_interested, ok_eligibility" in message
    assert "scores faq3 " in message
    caplog.clear()
    classifier.classify("c'est le 75011", "ask_zip_code")
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "zip code 75011 -> ok_zipcode 0.88" in message


def test_a_near_tie_of_weak_readings_is_unknown(classifier: IntentClassifier,
                                                caplog: pytest.LogCaptureFixture) -> None:
    # Garbled words (Whisper over a phone line) that read as owner and tenant alike: the dialog must
    # ask again, not end the call as not eligible.
    garbled = "Je suis au taille et elle m'amène."
    with caplog.at_level(logging.DEBUG, logger="rtcore.intents.classifier"):
        assert classifier.classify(garbled, "ask_owner_house").intent == "unknown"
    assert "too close to" in caplog.text
    no_rule = IntentClassifier(dataclasses.replace(classifier.options, ambiguity_margin=0.0))
    assert no_rule.classify(garbled, "ask_owner_house").intent != "unknown"
    # A clear answer is not affected.
    assert classifier.classify("Non, je suis locataire.", "ask_owner_house").intent == "not_proprio"


def test_zip_code_rules(classifier: IntentClassifier) -> None:
    assert classifier.classify("c'est le 99100", "ask_zip_code").intent != "ok_zipcode"
    assert classifier.classify("je vis en Suisse, 1200 Genève", "ask_zip_code").intent == "not_in_france"
    # An answer to an earlier question is still understood, less strongly.
    assert classifier.classify("75011", "ask_owner_house").intent == "ok_zipcode"


def test_nothing_said_is_unknown(classifier: IntentClassifier) -> None:
    assert classifier.classify("euh...", "init").intent == "unknown"
    assert classifier.classify("", None).intent == "unknown"


def test_unknown_state_is_an_error(classifier: IntentClassifier) -> None:
    with pytest.raises(ValueError, match="unknown dialog state 'nowhere'"):
        classifier.classify("oui", "nowhere")


async def test_embedded_source_has_the_interface() -> None:
    source = EmbeddedIntentSource()
    assert isinstance(source, IntentSource)
    result = await source.classify("c'est gratuit ?", "init")
    assert result.intent == "faq3" and result.error == ""


# --- HTTP client against a real server -----------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def intent_api() -> AsyncIterator[tuple[str, dict[str, Handler], asyncio.Event]]:
    """A server on 127.0.0.1 with /main and /faq, whose handlers each test sets; and an event that
    a handler may wait on (set only at teardown, to let the server stop)."""
    never = asyncio.Event()
    handlers: dict[str, Handler] = {}

    async def route(request: web.Request) -> web.StreamResponse:
        return await handlers[request.path.strip("/")](request)

    app = web.Application()
    app.router.add_post("/main", route)
    app.router.add_post("/faq", route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", handlers, never
    never.set()
    await runner.cleanup()


def answering(payload: object, seen: list[str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if seen is not None:
            seen.append(body["sentence"])
        return web.json_response(payload)
    return handler


async def test_http_main_answer(intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    url, handlers, _ = intent_api
    seen: list[str] = []
    handlers["main"] = answering({"intent": "ok_zipcode", "score": 0.9, "slots": {"zip_code": "75011"}}, seen)
    handlers["faq"] = answering({"intent": "faq1"})
    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", f"{url}/faq", 2.0)) as client:
        assert isinstance(client, IntentSource)
        result = await client.classify("75011", "ask_zip_code")
    assert result == IntentResult("ok_zipcode", 0.9, {"zip_code": "75011"})
    assert seen == ["75011"]


async def test_http_falls_back_to_faq(intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    url, handlers, _ = intent_api
    faq_seen: list[str] = []
    handlers["main"] = answering({"intent": "unknown", "score": 0.2})
    handlers["faq"] = answering({"intent": "faq3", "score": 0.8}, faq_seen)
    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", f"{url}/faq", 2.0)) as client:
        result = await client.classify("c'est gratuit ?")
        assert (result.intent, result.score, result.error) == ("faq3", 0.8, "")
        handlers["main"] = answering({"intent": ""})
        handlers["faq"] = answering({"intent": "unknown"})
        result = await client.classify("le chien aboie")
        assert (result.intent, result.error) == ("unknown", "")
    assert faq_seen == ["c'est gratuit ?"]


async def test_http_timeout(intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    url, handlers, never = intent_api

    async def stuck(request: web.Request) -> web.StreamResponse:
        await never.wait()
        return web.json_response({"intent": "faq1"})

    handlers["main"] = stuck
    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", "", 0.2)) as client:
        result = await client.classify("allô")
    assert (result.intent, result.error) == ("unknown", REQUEST_TIMEOUT_ERROR)


async def test_http_error_status(intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    url, handlers, _ = intent_api

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"detail": "boom"}, status=500)

    handlers["main"] = broken
    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", "", 2.0)) as client:
        result = await client.classify("oui")
    assert (result.intent, result.error) == ("unknown", API_REQUEST_ERROR)


async def test_http_non_json(intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    url, handlers, _ = intent_api

    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    handlers["main"] = html
    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", "", 2.0)) as client:
        result = await client.classify("oui")
    assert (result.intent, result.error) == ("unknown", JSON_DECODE_ERROR)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_http_connection_refused() -> None:
    async with HttpIntentClient(HttpIntentOptions(f"http://127.0.0.1:{free_port()}/main", "", 2.0)) as client:
        result = await client.classify("oui")
    assert (result.intent, result.error) == ("unknown", API_REQUEST_ERROR)


def test_parse_answer_shapes() -> None:
    assert parse_answer({"intent": {"name": "faq2", "confidence": 0.7}}) == IntentResult("faq2", 0.7)
    assert parse_answer({"intent": "busy", "confidence": "0.5"}).score == 0.5
    assert parse_answer(["not", "a", "dict"]).intent == "unknown"


def test_intent_source_from_settings(make_settings: Callable[..., object]) -> None:
    assert isinstance(intent_source(make_settings()), EmbeddedIntentSource)
    remote = intent_source(make_settings(intent_main_url="http://127.0.0.1:1/main"))
    assert isinstance(remote, HttpIntentClient)


# --- CLI -----------------------------------------------------------------------------------------
def test_cli_one_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["intent", "--state", "ask_zip_code", "soixante-quinze zéro onze"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output == {"intent": "ok_zipcode", "score": output["score"], "slots": {"zip_code": "75011"}}


def test_cli_batch_reports_bad_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = tmp_path / "batch.tsv"
    batch.write_text("init\tc'est gratuit ?\nno tab here\nmoon\toui\nask_owner_house\tje suis locataire\n",
                     encoding="utf-8")
    assert cli_main(["intent", "--batch", str(batch)]) == 1
    captured = capsys.readouterr()
    intents = [json.loads(line)["intent"] for line in captured.out.splitlines()]
    assert intents == ["faq3", "not_proprio"]
    assert f"{batch}:2: expected state<TAB>text" in captured.err
    assert f"{batch}:3: unknown state 'moon'" in captured.err


def test_cli_unknown_state(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["intent", "--state", "nowhere", "oui"]) == 1
    assert "unknown state 'nowhere'" in capsys.readouterr().err


async def test_cli_remote(intent_api: tuple[str, dict[str, Handler], asyncio.Event],
                          capsys: pytest.CaptureFixture[str]) -> None:
    url, handlers, _ = intent_api
    handlers["main"] = answering({"intent": "unknown"})
    handlers["faq"] = answering({"intent": "faq5", "score": 0.75})
    # The CLI runs its own event loop: in a thread, while this loop serves the API.
    code = await asyncio.to_thread(cli_main, ["intent", "--remote", "--intent-main-url", f"{url}/main",
                                              "--intent-faq-url", f"{url}/faq", "--state", "init", "un robot ?"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"intent": "faq5", "score": 0.75, "slots": {}}


async def test_intent_api_results_are_counted_for_prometheus(
        intent_api: tuple[str, dict[str, Handler], asyncio.Event]) -> None:
    from prometheus_client import REGISTRY

    from rtcore.dialog.turns import CountedIntentApi

    url, handlers, _ = intent_api

    def counted(result: str) -> float:
        value = REGISTRY.get_sample_value("rtcore_intent_api_requests_total", {"result": result})
        assert value is not None, f"no series for {result}"  # every series exists from the start
        return value

    async def broken(request: web.Request) -> web.StreamResponse:
        return web.json_response({"detail": "boom"}, status=500)

    async with HttpIntentClient(HttpIntentOptions(f"{url}/main", "", 2.0)) as client:
        counting = CountedIntentApi(client)
        before = {r: counted(r) for r in ("ok", API_REQUEST_ERROR, REQUEST_TIMEOUT_ERROR)}
        handlers["main"] = answering({"intent": "ok_proprio", "score": 0.9})
        assert (await counting.classify("oui", "ask_owner_house")).intent == "ok_proprio"
        handlers["main"] = broken
        assert (await counting.classify("oui")).error == API_REQUEST_ERROR
    assert counted("ok") - before["ok"] == 1 and counted(API_REQUEST_ERROR) - before[API_REQUEST_ERROR] == 1
    assert counted(REQUEST_TIMEOUT_ERROR) == before[REQUEST_TIMEOUT_ERROR]
