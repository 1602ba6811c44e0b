"""The understanding benchmark's judgement: the lead a scripted call should give, and whether the
lead it gave is exactly that (the benchmark's figures are in the README, never asserted here)."""

from __future__ import annotations

from rtcore.dialog.leads import Lead
from rtcore.launch.understanding import lead_matches
from rtcore.sim.callers.scenarios import intended_lead


def test_the_intended_lead_follows_what_the_caller_said_and_typed() -> None:
    said = ["yes_time", "owner_yes", "heating_fuel", "callback_yes", "slot_tuesday_morning"]
    assert intended_lead("qualified", said, "75011") == {
        "outcome": "qualified", "zip_code": "75011", "owner": True, "heating": "fioul", "callback": True,
        "slot": {"day": "mardi", "period": "matin"}}
    # A later answer to the same question wins (the bot asked again).
    assert intended_lead("not_eligible", ["yes_time", "zip_75011", "owner_yes", "tenant"], "")["owner"] is False
    refused = intended_lead("refused", ["yes_time", "zip_75011", "owner_yes", "heating_gas", "callback_no"], "")
    assert refused["callback"] is False and refused["heating"] == "gaz"
    assert intended_lead("refused", ["not_interested"], "") == {
        "outcome": "refused", "zip_code": None, "owner": None, "heating": None, "callback": None, "slot": None}


def test_a_lead_matches_only_when_outcome_and_every_slot_are_the_intended_ones() -> None:
    intended = intended_lead("qualified", ["yes_time", "owner_yes", "heating_gas", "callback_yes",
                                           "slot_monday_evening"], "69003")
    lead = Lead(call_id="c", caller="", started_at=0.0, zip_code="69003", owner=True, heating="gaz", callback=True,
                slot={"day": "lundi", "period": "soir", "hour": 18}, outcome="qualified")
    assert lead_matches(lead, intended)  # an hour more than was meant is still the slot meant
    for change in ({"heating": "fioul"}, {"zip_code": "75011"}, {"outcome": "abandoned"},
                   {"slot": {"day": "mardi", "period": "soir"}}, {"owner": None}):
        other = Lead(**{**lead.__dict__, **change})
        assert not lead_matches(other, intended), change
    assert not lead_matches(None, intended)
    extra = Lead(call_id="c", caller="", started_at=0.0, outcome="refused", heating="gaz")
    assert not lead_matches(extra, intended_lead("refused", ["not_interested"], ""))  # a slot nobody said


def test_the_markdown_table_has_a_row_per_setting_and_dashes_for_what_was_not_run() -> None:
    from rtcore.launch.understanding import markdown

    answers = {"answers": 10, "intent_accuracy": 0.6, "intent_and_slots_accuracy": 0.5, "asr_seconds": 3.2}
    calls = {"calls": 12, "exact_share": 0.75, "scenarios": {"happy": {"calls": 12, "exact": 9}}}
    table = markdown({"rows": [
        {"model": "whisper-base (PyPI)", "context_tokens": 32, "caller_codec": "ulaw", "answers": answers,
         "real_speech": {"wer": 0.271}, "calls": calls},
        {"model": "/models/small", "context_tokens": 0, "caller_codec": "ulaw", "answers": answers},
    ]})
    lines = table.splitlines()
    assert "| whisper-base (PyPI) | 32 | ulaw | 10 | 60.0% | 50.0% | 3.2 | 27.1% | 75.0% of 12 |" in lines
    assert "| /models/small | none | ulaw | 10 | 60.0% | 50.0% | 3.2 | - | - |" in lines
    assert "| whisper-base (PyPI) | 32 | 9/12 |" in lines and "| /models/small | none | - |" in lines
