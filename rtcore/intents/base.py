"""What every intent source returns, and the one-method interface the dialog calls.

The embedded classifier and the seed's HTTP intent API sit behind the same `IntentSource`, so the
dialog cannot tell one from the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

# Dialog states, in the order the bot asks its questions.
DIALOG_STATES: Final[tuple[str, ...]] = ("init", "ask_zip_code", "ask_owner_house", "ask_which_heating",
                                         "ask_be_called_back", "ask_slot_call_back", "bye")

FAQ_INTENTS: Final[tuple[str, ...]] = tuple(f"faq{n}" for n in range(1, 25))
INTENTS: Final[tuple[str, ...]] = (
    "ok_eligibility", "not_interested", "busy", "ok_zipcode", "zipcode_why", "not_in_france", "ok_proprio",
    "not_proprio", "ok_heating", "ok_callback", "no_callback", "ok_slot", "slot_problem", "which_help", "repeat",
    "unknown", *FAQ_INTENTS)

# Error codes of IntentResult.error (the seed's names).
REQUEST_TIMEOUT_ERROR: Final = "request_timeout_error"
API_REQUEST_ERROR: Final = "api_request_error"
JSON_DECODE_ERROR: Final = "json_decode_error"
UNKNOWN_ERROR: Final = "unknown_error"
ERROR_CODES: Final = (REQUEST_TIMEOUT_ERROR, API_REQUEST_ERROR, JSON_DECODE_ERROR, UNKNOWN_ERROR)


@dataclass(slots=True)
class IntentResult:
    """An utterance's intent. `score` in [0, 1] is the confidence in `intent` (for "unknown" chosen
    for lack of a match: one minus the best rejected score). `slots` holds what was extracted:
    "zip_code" (five-character string), "owner" (bool), "heating", "slot" ({"day", "period"}),
    "answer" ("yes"/"no" for a bare yes or no). `error` is set only by a remote source that failed."""

    intent: str
    score: float
    slots: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"intent": self.intent, "score": round(self.score, 4), "slots": self.slots}
        if self.error:
            data["error"] = self.error
        return data


@runtime_checkable
class IntentSource(Protocol):
    """Anything that classifies a transcript in a dialog state: embedded classifier or HTTP API."""

    async def classify(self, text: str, state: str | None = None) -> IntentResult: ...


def read_labelled(path: Path) -> list[tuple[str, str, str]]:
    """A labelled set (tests/data/intents_*.tsv): one `state<TAB>text<TAB>intent` per line, `#`
    comments and blank lines skipped."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            state, text, intent = line.split("\t")
            rows.append((state, text, intent))
    return rows
