from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rtcore.dialog.engine import DialogEngine
from rtcore.dialog.script import DEFAULT_SCRIPT, ScriptError, load_script

SCRIPT = load_script()


def engine() -> DialogEngine:
    return DialogEngine(SCRIPT)


def test_happy_path_collects_every_slot() -> None:
    e = engine()
    assert e.begin().prompts == ["init"]
    assert e.on_intent("ok_eligibility").prompts == ["ask_zip_code"]
    r = e.on_intent("ok_zipcode", {"zip_code": "75011"})
    assert r.prompts == ["ask_owner_house"] and r.saved == {"zip_code": "75011"}
    assert e.on_intent("ok_proprio").saved == {"owner": True}
    assert e.on_intent("ok_heating", {"heating": "gaz"}).prompts == ["ask_be_called_back"]
    assert e.on_intent("ok_callback").prompts == ["ask_slot_call_back"]
    r = e.on_intent("ok_slot", {"slot": {"day": "mardi", "period": "matin"}})
    assert r.prompts == ["bye_qualified"] and r.hangup and r.outcome == "qualified"
    assert e.state.slots == {"zip_code": "75011", "owner": True, "heating": "gaz", "callback": True,
                             "slot": {"day": "mardi", "period": "matin"}}
    assert e.on_intent("ok_eligibility").prompts == []  # ended: nothing more


def test_faq_answers_then_asks_the_current_question_again() -> None:
    e = engine()
    e.begin()
    e.on_intent("ok_eligibility")
    assert e.on_intent("faq3").prompts == ["faq3", "ask_zip_code_again"]
    assert e.on_intent("which_help").prompts == ["which_help_answer", "ask_zip_code_again"]
    assert e.state.state == "ask_zip_code"


@pytest.mark.parametrize("intent, counter_prompt, ending", [
    ("busy", "busy_once", "bye_busy"),
    ("not_interested", "not_interested_once", "bye_refused"),
])
def test_counters_allow_once_then_the_polite_way_out(intent: str, counter_prompt: str, ending: str) -> None:
    e = engine()
    e.begin()
    assert e.on_intent(intent).prompts == [counter_prompt, "init_again"]
    r = e.on_intent(intent)
    assert r.prompts == [ending] and r.hangup and r.outcome == "refused"


def test_state_counters() -> None:
    e = engine()
    e.begin()
    e.on_intent("ok_eligibility")
    assert e.on_intent("zipcode_why").prompts == ["zipcode_why_answer", "ask_zip_code_again"]
    assert e.on_intent("zipcode_why").outcome == "refused"
    e = engine()
    for intent, slots in [("ok_eligibility", {}), ("ok_zipcode", {"zip_code": "13001"}), ("ok_proprio", {}),
                          ("ok_heating", {"heating": "fioul"})]:
        e.on_intent(intent, slots)
    assert e.on_intent("no_callback").prompts == ["not_call_back_once", "ask_be_called_back_again"]
    r = e.on_intent("no_callback")
    assert r.outcome == "refused" and e.state.slots["callback"] is False
    e = engine()
    for intent, slots in [("ok_eligibility", {}), ("ok_zipcode", {"zip_code": "13001"}), ("ok_proprio", {}),
                          ("ok_heating", {"heating": "bois"}), ("ok_callback", {})]:
        e.on_intent(intent, slots)
    assert e.on_intent("slot_problem").prompts == ["slot_problem_once", "ask_slot_call_back_again"]
    assert e.on_intent("slot_problem").outcome == "refused"


def test_not_eligible_paths() -> None:
    e = engine()
    e.on_intent("ok_eligibility")
    assert e.on_intent("not_in_france").outcome == "not_eligible"
    e = engine()
    e.on_intent("ok_eligibility")
    e.on_intent("ok_zipcode", {"zip_code": "69003"})
    r = e.on_intent("not_proprio")
    assert r.outcome == "not_eligible" and e.state.slots["owner"] is False


def test_silence_and_unknown_reprompt_then_end() -> None:
    e = engine()
    e.begin()
    assert e.on_no_input().prompts == ["init_again"]
    assert e.on_intent("unknown").prompts == ["init_again"]
    r = e.on_no_input()
    assert r.prompts == ["bye_no_answer"] and r.outcome == "abandoned" and r.hangup
    e = engine()
    e.on_no_input()
    e.on_intent("ok_eligibility")  # an answer resets the count
    assert e.on_no_input().prompts == ["ask_zip_code_again"]


def test_zip_intent_without_a_zip_code_is_asked_again() -> None:
    e = engine()
    e.on_intent("ok_eligibility")
    assert e.on_intent("ok_zipcode", {}).prompts == ["ask_zip_code_again"]
    assert e.state.state == "ask_zip_code"


def test_dtmf_zip_code() -> None:
    e = engine()
    assert e.on_dtmf("7") is None  # not asking for the zip code yet
    e.on_intent("ok_eligibility")
    assert [e.on_dtmf(d) for d in "7501"] == [None] * 4
    r = e.on_dtmf("1")
    assert r is not None and r.saved == {"zip_code": "75011"} and r.prompts == ["ask_owner_house"]
    e = engine()
    e.on_intent("ok_eligibility")
    e.on_dtmf("7")
    r = e.on_dtmf("#")  # too short: asked again
    assert r is not None and r.prompts == ["ask_zip_code_again"]


def test_repeat_says_the_last_thing_again() -> None:
    e = engine()
    e.begin()
    e.on_intent("ok_eligibility")
    assert e.on_intent("repeat").prompts == ["ask_zip_code"]


def broken(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    data = yaml.safe_load(DEFAULT_SCRIPT.read_text())
    edit(data)
    path = tmp_path / "script.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda d: d["states"]["init"]["when"].update(ok_eligibility={"next": "ask_shoe_size"}),
            "states.init.when.ok_eligibility: unknown state 'ask_shoe_size'",
        ),
        (
            lambda d: d["states"]["ask_zip_code"].update(prompt="ask_zip"),
            "states.ask_zip_code.prompt: unknown prompt 'ask_zip'",
        ),
        (lambda d: d["global"].update(faq99={"say": "faq1"}), "global.faq99: unknown intent 'faq99'"),
        (lambda d: d["endings"]["bye_refused"].update(outcome="maybe"), "endings.bye_refused: outcome must be one of"),
        (
            lambda d: d["states"]["init"]["when"].update(busy={"counter": "nope", "exhausted": "bye_busy"}),
            "states.init.when.busy: counter 'nope' has no limit under counters",
        ),
        (
            lambda d: d["states"]["init"]["when"].update(busy={"goto": "init"}),
            "states.init.when.busy: unknown key(s) goto",
        ),
        (lambda d: d.pop("start"), "missing top-level key 'start'"),
        (lambda d: d["prompts"]["init"].update(text=""), "prompts.init: needs a non-empty text"),
    ],
)
def test_invalid_scripts_are_rejected_with_the_place(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ScriptError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_script(broken(tmp_path, edit))


def test_unparsable_script(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("states: [\n")
    with pytest.raises(ScriptError, match="not valid YAML"):
        load_script(bad)
