"""Loading and checking the dialog script (YAML that ops edit)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtcore.intents.base import INTENTS

DEFAULT_SCRIPT = Path(__file__).with_name("script.yaml")
SLOTS = ("zip_code", "owner", "heating", "slot")
OUTCOMES = ("qualified", "not_eligible", "refused", "abandoned", "error")


class ScriptError(ValueError):
    """The script is not valid; the message says where."""


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    audio: str


@dataclass(frozen=True)
class Action:
    """What an intent does in a state (see script.yaml's header)."""

    say: str | None = None
    next: str | None = None
    end: str | None = None
    save: str | None = None
    counter: str | None = None
    exhausted: str | None = None
    repeat: bool = False
    reprompt: bool = False


@dataclass(frozen=True)
class State:
    name: str
    prompt: str
    reprompt: str
    on: dict[str, Action]
    # What callers say here, in their words: given to Whisper as the text before the utterance
    # (its "previous text"), it biases recognition towards the expected vocabulary.
    asr_context: str = ""


@dataclass(frozen=True)
class Ending:
    name: str
    prompt: str
    outcome: str


@dataclass(frozen=True)
class NoInput:
    timeout_s: float
    max_reprompts: int
    ending: str


@dataclass(frozen=True)
class Recovery:
    """What a restarted dialog says to the calls it takes back (see script.yaml's header)."""

    resume: str = ""  # a prompt said before the current question is asked again
    ending: str = ""  # an ending (outcome error) for a call that cannot go on


@dataclass(frozen=True)
class Admission:
    """What the bot says to callers it does not take or cannot keep (see script.yaml's header)."""

    busy: str = ""  # a prompt said to a new caller refused with admission_refuse=busy, then hung up
    drain: str = ""  # a prompt said to the calls still in progress when a drain's time is up


@dataclass(frozen=True)
class DialogScript:
    start: str
    prompts: dict[str, Prompt]
    states: dict[str, State]
    endings: dict[str, Ending]
    global_actions: dict[str, Action]
    counters: dict[str, int]
    no_input: NoInput
    recovery: Recovery = field(default_factory=Recovery)
    admission: Admission = field(default_factory=Admission)
    source: str = field(default="", compare=False)


def load_script(path: str | Path | None = None) -> DialogScript:
    path = Path(path) if path else DEFAULT_SCRIPT
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScriptError(f"{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScriptError(f"{path}: not valid YAML: {exc}") from None
    try:
        return _build(data, str(path))
    except ScriptError as exc:
        raise ScriptError(f"{path}: {exc}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ScriptError(f"{where} must be a mapping")
    return value


def _action(value: Any, where: str) -> Action:
    data = _mapping(value, where)
    known = set(Action.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ScriptError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    return Action(**data)


def _build(data: Any, source: str) -> DialogScript:
    data = _mapping(data, "the script")
    for key in ("start", "prompts", "states", "endings"):
        if key not in data:
            raise ScriptError(f"missing top-level key {key!r}")
    prompts = {}
    for name, value in _mapping(data["prompts"], "prompts").items():
        value = _mapping(value, f"prompts.{name}")
        if not isinstance(value.get("text"), str) or not value["text"].strip():
            raise ScriptError(f"prompts.{name}: needs a non-empty text")
        prompts[name] = Prompt(name, value["text"].strip(), str(value.get("audio") or f"rtcore/{name}"))
    counters = {str(k): int(v) for k, v in _mapping(data.get("counters", {}), "counters").items()}
    no_input_data = _mapping(data.get("no_input", {}), "no_input")
    no_input = NoInput(float(no_input_data.get("timeout_s", 7.0)), int(no_input_data.get("max_reprompts", 2)),
                       str(no_input_data.get("ending", "")))
    endings = {}
    for name, value in _mapping(data["endings"], "endings").items():
        value = _mapping(value, f"endings.{name}")
        if value.get("outcome") not in OUTCOMES:
            raise ScriptError(
                f"endings.{name}: outcome must be one of {', '.join(OUTCOMES)}, got {value.get('outcome')!r}"
            )
        endings[name] = Ending(name, str(value.get("prompt", "")), value["outcome"])
    states = {}
    for name, value in _mapping(data["states"], "states").items():
        value = _mapping(value, f"states.{name}")
        on = {
            str(i): _action(a, f"states.{name}.when.{i}")
            for i, a in _mapping(value.get("when", {}), f"states.{name}.when").items()
        }
        unknown = set(value) - {"prompt", "reprompt", "when", "asr_context"}
        if unknown:
            raise ScriptError(f"states.{name}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                              "(known: asr_context, prompt, reprompt, when)")
        states[name] = State(
            name, str(value.get("prompt", "")), str(value.get("reprompt") or value.get("prompt", "")), on,
            " ".join(str(value.get("asr_context") or "").split()),
        )
    recovery_data = _mapping(data.get("recovery", {}), "recovery")
    unknown_keys = set(recovery_data) - {"resume", "ending"}
    if unknown_keys:
        raise ScriptError(
            f"recovery: unknown key(s) {', '.join(sorted(map(str, unknown_keys)))} (known: ending, resume)"
        )
    recovery = Recovery(str(recovery_data.get("resume") or ""), str(recovery_data.get("ending") or ""))
    admission_data = _mapping(data.get("admission", {}), "admission")
    unknown_keys = set(admission_data) - {"busy", "drain"}
    if unknown_keys:
        raise ScriptError(
            f"admission: unknown key(s) {', '.join(sorted(map(str, unknown_keys)))} (known: busy, drain)"
        )
    admission = Admission(str(admission_data.get("busy") or ""), str(admission_data.get("drain") or ""))
    global_actions = {str(i): _action(a, f"global.{i}") for i, a in _mapping(data.get("global", {}), "global").items()}
    for intent, prompt in _mapping(data.get("faq", {}), "faq").items():
        global_actions.setdefault(str(intent), Action(say=str(prompt)))
    script = DialogScript(
        str(data["start"]), prompts, states, endings, global_actions, counters, no_input, recovery, admission, source
    )
    _check(script)
    return script


def _check(s: DialogScript) -> None:
    """Every reference resolves; every intent name is one the classifiers produce."""

    def prompt(name: str | None, where: str) -> None:
        if name and name not in s.prompts:
            raise ScriptError(f"{where}: unknown prompt {name!r}")

    if s.start not in s.states:
        raise ScriptError(f"start: unknown state {s.start!r}")
    if s.no_input.ending not in s.endings:
        raise ScriptError(f"no_input.ending: unknown ending {s.no_input.ending!r}")
    prompt(s.recovery.resume, "recovery.resume")
    prompt(s.admission.busy, "admission.busy")
    prompt(s.admission.drain, "admission.drain")
    if s.recovery.ending and s.recovery.ending not in s.endings:
        raise ScriptError(f"recovery.ending: unknown ending {s.recovery.ending!r}")
    for ending in s.endings.values():
        prompt(ending.prompt, f"endings.{ending.name}")
        if not ending.prompt:
            raise ScriptError(f"endings.{ending.name}: needs a prompt")
    scopes = [(f"states.{st.name}.when", st.on) for st in s.states.values()] + [("global", s.global_actions)]
    for st in s.states.values():
        if not st.prompt:
            raise ScriptError(f"states.{st.name}: needs a prompt")
        prompt(st.prompt, f"states.{st.name}.prompt")
        prompt(st.reprompt, f"states.{st.name}.reprompt")
    for where, actions in scopes:
        for intent, action in actions.items():
            here = f"{where}.{intent}"
            if intent not in INTENTS:
                raise ScriptError(f"{here}: unknown intent {intent!r}")
            prompt(action.say, here)
            if action.next and action.next not in s.states:
                raise ScriptError(f"{here}: unknown state {action.next!r}")
            for ending_name in (action.end, action.exhausted):
                if ending_name and ending_name not in s.endings:
                    raise ScriptError(f"{here}: unknown ending {ending_name!r}")
            if action.save and action.save not in SLOTS:
                raise ScriptError(f"{here}: unknown slot {action.save!r} (slots: {', '.join(SLOTS)})")
            if action.counter and action.counter not in s.counters:
                raise ScriptError(f"{here}: counter {action.counter!r} has no limit under counters")
            if action.counter and not action.exhausted:
                raise ScriptError(f"{here}: counter {action.counter!r} needs `exhausted`")
            if action.next and action.end:
                raise ScriptError(f"{here}: `next` and `end` together")
