"""rtcore.intents: accuracy on the labelled test set, slots, state dependence, HTTP client, CLI.

Run with `-s` to see the per-intent accuracy table.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from rtcore.cli import main as cli_main
from rtcore.intents import INTENTS, IntentSource, intent_source
from rtcore.intents.base import API_REQUEST_ERROR, DIALOG_STATES, JSON_DECODE_ERROR, REQUEST_TIMEOUT_ERROR, IntentResult
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
from rtcore.intents.text import fold

TEST_SET = Path(__file__).parent / "data" / "intents_test.tsv"
MIN_ACCURACY = 0.85


def load_test_set() -> list[tuple[str, str, str]]:
    rows = []
    for line in TEST_SET.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            state, text, intent = line.split("\t")
            rows.append((state, text, intent))
    return rows


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


def test_accuracy_on_test_set(classifier: IntentClassifier) -> None:
    rows = load_test_set()
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
    print(f"\nintent accuracy on {TEST_SET.name} ({per_call_ms:.2f} ms per call):")
    print(f"  {'intent':<16} {'correct':>7} {'total':>5} {'accuracy':>8}")
    for intent in INTENTS:
        ok, total = per_intent[intent]
        print(f"  {intent:<16} {ok:>7} {total:>5} {ok / total:>8.0%}")
    print(f"  {'overall':<16} {correct:>7} {len(rows):>5} {accuracy:>8.1%}")
    print("misclassified:\n" + "\n".join(errors))
    assert accuracy >= MIN_ACCURACY


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
