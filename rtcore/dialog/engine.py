"""Following the script for one call: intents in, prompts to say out.

Pure and synchronous (no I/O, no timers): the call controller feeds it what the caller said (an
intent with its slots), silence, or DTMF digits, and does what the returned Reply says. Its state
(`DialogState`) is a plain dataclass, stored in Redis with the call.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rtcore.dialog.script import Action, DialogScript

ZIP_DIGITS = 5


@dataclass
class DialogState:
    state: str
    counters: dict[str, int] = field(default_factory=dict)
    no_input: int = 0  # silences or unclear answers in a row
    slots: dict[str, Any] = field(default_factory=dict)  # zip_code, owner, heating, callback, slot
    dtmf: str = ""
    outcome: str = ""  # set once the call reached an ending
    ending: str = ""
    last_prompts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DialogState:
        return cls(**data)


@dataclass(frozen=True)
class Reply:
    prompts: list[str]  # prompt names, to play in order
    hangup: bool = False  # after the last prompt
    outcome: str = ""  # when the call reached an ending
    saved: dict[str, Any] = field(default_factory=dict)  # slots stored by this turn


class DialogEngine:
    def __init__(self, script: DialogScript, state: DialogState | None = None) -> None:
        self.script = script
        self.state = state or DialogState(script.start)

    @property
    def ended(self) -> bool:
        return bool(self.state.outcome)

    def begin(self) -> Reply:
        return self._reply([self.script.states[self.state.state].prompt])

    def on_intent(self, intent: str, slots: dict[str, Any] | None = None) -> Reply:
        if self.ended:
            return Reply([])
        slots = slots or {}
        current = self.script.states[self.state.state]
        action = current.on.get(intent) or self.script.global_actions.get(intent) or Action(reprompt=True)
        if action.save and self._slot_value(action.save, intent, slots) is None:
            action = Action(reprompt=True)  # "ok_zipcode" without a usable zip code: ask again
        if action.reprompt:
            return self.on_no_input()
        self.state.no_input = 0
        if action.counter:
            used = self.state.counters.get(action.counter, 0) + 1
            self.state.counters[action.counter] = used
            if used > self.script.counters[action.counter]:
                assert action.exhausted
                return self._end(action.exhausted, [])
        saved: dict[str, Any] = {}
        if action.save:
            saved[action.save] = self.state.slots[action.save] = self._slot_value(action.save, intent, slots)
        # Accepting a callback (or giving a slot straight away) is itself a slot of the lead.
        if intent in ("ok_callback", "ok_slot") or (intent == "ok_eligibility" and action.next == "ask_slot_call_back"):
            saved["callback"] = self.state.slots["callback"] = True
        prompts = [action.say] if action.say else []
        if action.end:
            reply = self._end(action.end, prompts)
            return Reply(reply.prompts, reply.hangup, reply.outcome, saved)
        if action.next:
            self.state.state = action.next
            prompts.append(self.script.states[action.next].prompt)
        elif action.repeat:
            prompts = list(self.state.last_prompts) or [current.prompt]
        else:
            prompts.append(current.reprompt)  # answered a side question: ask ours again, briefly
        return self._reply(prompts, saved)

    def on_no_input(self) -> Reply:
        """Silence after a question, or an answer that could not be understood."""
        if self.ended:
            return Reply([])
        self.state.no_input += 1
        if self.state.no_input > self.script.no_input.max_reprompts:
            return self._end(self.script.no_input.ending, [])
        return self._reply([self.script.states[self.state.state].reprompt])

    def resume(self) -> Reply:
        """A restarted dialog takes the call back: the current question again (after the script's
        `recovery.resume` words), or, if the call was ending, its goodbye again."""
        if self.ended:
            ending = self.script.endings[self.state.ending] if self.state.ending in self.script.endings else None
            return Reply([ending.prompt] if ending else [], hangup=True, outcome=self.state.outcome)
        self.state.dtmf = ""  # digits typed before the break are not trusted to be complete
        resume = [self.script.recovery.resume] if self.script.recovery.resume else []
        return self._reply(resume + [self.script.states[self.state.state].prompt])

    def fail(self) -> Reply:
        """The call cannot go on (it cannot be taken back, or its prompts cannot be played): the
        script's `recovery.ending` (outcome error), or a silent hang-up without one."""
        if self.script.recovery.ending:
            return self._end(self.script.recovery.ending, [])
        self.state.outcome = "error"
        return Reply([], hangup=True, outcome="error")

    def cut_short(self, prompt: str) -> Reply:
        """The call must end now, before its conversation does (a drain's time is up): `prompt`
        (none if empty), then hang up. A call that had reached an ending keeps its outcome; one
        that had not is `abandoned`, as when a caller leaves mid-way: its lead is incomplete and
        its end reason says who cut it."""
        if not self.ended:
            self.state.outcome = "abandoned"
            self.state.ending = ""
        return Reply([prompt] if prompt else [], hangup=True, outcome=self.state.outcome)

    def on_dtmf(self, digit: str) -> Reply | None:
        """A key pressed; in the zip-code state 5 digits (or digits then #) make a zip code answer."""
        if self.ended or self.state.state != "ask_zip_code" or self.script.states[self.state.state].on.get(
                "ok_zipcode") is None:
            return None
        if digit.isdigit():
            self.state.dtmf += digit
        if len(self.state.dtmf) < ZIP_DIGITS and digit != "#":
            return None
        digits, self.state.dtmf = self.state.dtmf, ""
        zip_code = digits if len(digits) == ZIP_DIGITS else None
        return self.on_intent("ok_zipcode", {"zip_code": zip_code} if zip_code else {})

    def _slot_value(self, slot: str, intent: str, slots: dict[str, Any]) -> Any:
        if slot == "owner":
            return intent != "not_proprio" and intent != "faq12"
        return slots.get(slot)

    def _end(self, ending_name: str, prompts: list[str]) -> Reply:
        ending = self.script.endings[ending_name]
        self.state.outcome = ending.outcome
        self.state.ending = ending_name
        if ending.outcome != "qualified" and "callback" not in self.state.slots and self.state.state in (
                "ask_be_called_back", "ask_slot_call_back"):
            self.state.slots["callback"] = False
        return Reply(prompts + [ending.prompt], hangup=True, outcome=ending.outcome)

    def _reply(self, prompts: list[str], saved: dict[str, Any] | None = None) -> Reply:
        self.state.last_prompts = prompts
        return Reply(prompts, saved=saved or {})
