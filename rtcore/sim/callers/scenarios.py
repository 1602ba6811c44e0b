"""Caller scripts: for each prompt a simulated caller hears, what it does next.

A response is `say:<answer>` (a phrasebook answer), `dtmf:<digits>`, `human` (a sentence of real
French speech from ../shared/audio/fr: ASR load the classifier reads as unclear), or `silence`.
When a prompt appears several times, its responses are used in order (the last one repeats).
`barge_in` names a prompt the caller talks over, `barge_in_after_s` into it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    responses: dict[str, tuple[str, ...]]
    outcome: str  # what the call should end as
    weight: float = 1.0
    barge_in: str = ""
    barge_in_after_s: float = 1.5
    needs_human: bool = False
    extra: dict[str, str] = field(default_factory=dict)


_HAPPY: dict[str, tuple[str, ...]] = {
    "init": ("say:yes_time",), "init_again": ("say:yes_time",),
    "ask_zip_code": ("say:zip_75011",), "ask_zip_code_again": ("dtmf:75011",),
    "ask_owner_house": ("say:owner_yes",), "ask_owner_house_again": ("say:owner_yes",),
    "ask_which_heating": ("say:heating_gas",), "ask_which_heating_again": ("say:heating_electric",),
    "ask_be_called_back": ("say:callback_yes",), "ask_be_called_back_again": ("say:callback_yes",),
    "ask_slot_call_back": ("say:slot_tuesday_morning",), "ask_slot_call_back_again": ("say:slot_friday_afternoon",),
}


def _with(**changes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    return {**_HAPPY, **changes}


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("happy", _HAPPY, "qualified", weight=4),
    Scenario("dtmf_zip", _with(ask_zip_code=("dtmf:69003",)), "qualified", weight=1),
    Scenario("faq_mid_flow", _with(ask_owner_house=("say:faq_free",)), "qualified", weight=1.5),
    Scenario("barge_in", _HAPPY, "qualified", weight=1, barge_in="init"),
    Scenario("human_turn", _with(ask_which_heating=("human",)), "qualified", weight=1, needs_human=True),
    # Asked again (not understood), a tenant is still a tenant.
    Scenario("tenant", _with(ask_owner_house=("say:tenant",), ask_owner_house_again=("say:tenant",)), "not_eligible",
             weight=1),
    Scenario("refusal", _with(init=("say:not_interested",), init_again=("say:not_interested",)), "refused", weight=1),
    Scenario("busy", _with(init=("say:busy",), init_again=("say:busy",)), "refused", weight=0.5),
    Scenario(
        "no_callback",
        _with(ask_be_called_back=("say:callback_no",), ask_be_called_back_again=("say:callback_no",)),
        "refused",
        weight=0.5,
    ),
    Scenario("silent", {}, "abandoned", weight=0.3),
    # Pauses inside answers ("Oui, [pause] je suis propriétaire."): the VAD may cut them in two.
    Scenario("hesitant", _with(ask_owner_house=("say:owner_yes_hesitant",),
                               ask_which_heating=("say:heating_gas_hesitant",),
                               ask_be_called_back=("say:callback_yes_hesitant",)), "qualified", weight=1),
)
SCENARIOS_BY_NAME = {s.name: s for s in SCENARIOS}


def pick_scenario(rng: random.Random, human_available: bool, names: tuple[str, ...] = ()) -> Scenario:
    """A weighted random scenario, among `names` if given (ValueError for an unknown one)."""
    unknown = [n for n in names if n not in SCENARIOS_BY_NAME]
    if unknown:
        raise ValueError(f"unknown caller scenario(s) {', '.join(unknown)} (known: {', '.join(SCENARIOS_BY_NAME)})")
    choices = [s for s in SCENARIOS if (not names or s.name in names) and (human_available or not s.needs_human)]
    if not choices:
        raise ValueError(f"no caller scenario to play among {', '.join(names)} without ../shared/audio/fr")
    return rng.choices(choices, weights=[s.weight for s in choices])[0]


LEAD_FIELDS = ("zip_code", "owner", "heating", "callback", "slot")


def intended_lead(outcome: str, answers: list[str], typed: str) -> dict[str, Any]:
    """The lead a call should end with, from what its caller said (phrasebook answer keys, in
    order: a later answer to the same question wins) and typed: outcome and every slot."""
    from rtcore.sim.callers.phrasebook import ANSWERS_BY_KEY

    lead: dict[str, Any] = {"outcome": outcome, **dict.fromkeys(LEAD_FIELDS)}
    for key in answers:
        answer = ANSWERS_BY_KEY.get(key)
        if answer is None:
            continue
        slots = dict(answer.slots)
        if answer.intent == "ok_zipcode":
            lead["zip_code"] = slots.get("zip_code")
        elif answer.intent in ("ok_proprio", "not_proprio"):
            lead["owner"] = answer.intent == "ok_proprio"
        elif answer.intent == "ok_heating":
            lead["heating"] = slots.get("heating")
        elif answer.intent in ("ok_callback", "no_callback"):
            lead["callback"] = answer.intent == "ok_callback"
        elif answer.intent == "ok_slot":
            lead["slot"], lead["callback"] = slots.get("slot"), True
    digits = "".join(d for d in typed if d.isdigit())
    if len(digits) >= 5:
        lead["zip_code"] = digits[-5:]
    callback_states = ("ask_be_called_back", "ask_slot_call_back")
    if outcome == "refused" and lead["callback"] is None and any(
            ANSWERS_BY_KEY[k].state in callback_states for k in answers if k in ANSWERS_BY_KEY):
        lead["callback"] = False  # refused at the callback questions: the engine records "no callback"
    return lead


@dataclass
class ScenarioRun:
    """A scenario being played by one caller: which response comes next for each prompt."""

    scenario: Scenario
    used: dict[str, int] = field(default_factory=dict)

    def response(self, prompt: str) -> str | None:
        options = self.scenario.responses.get(prompt)
        if options is None:
            return None  # not a question this caller answers (an FAQ answer, an ending)
        n = self.used.get(prompt, 0)
        self.used[prompt] = n + 1
        return options[min(n, len(options) - 1)]
