"""One call's state, as the controller holds it (its working part is saved in Redis: rtcore.dialog.leads)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from rtcore.dialog.engine import DialogEngine, DialogState
from rtcore.dialog.joining import TurnJoiner
from rtcore.dialog.leads import Lead
from rtcore.runtime.messages import CallStarted, Transcript
from rtcore.runtime.ring import SlotLease


@dataclass
class Call:
    call_id: str  # the caller's channel id
    caller: str
    lease: SlotLease | None = None
    engine: DialogEngine | None = None
    lead: Lead | None = None
    playbacks: list[str] = field(default_factory=list)  # ours, playing or queued, in order
    playback_prompts: dict[str, str] = field(default_factory=dict)  # playback id -> prompt name
    retries: set[str] = field(default_factory=set)  # playback ids that replay a failed prompt
    hangup_after_prompts: bool = False
    hung_up_by_bot: bool = False
    no_input_timer: asyncio.TimerHandle | None = None
    last_prompt_at: float = 0.0
    setup_done: bool = False
    saying: bool = False  # requesting a reply's prompts: their ends are not yet the end of the turn
    ended: bool = False
    gone: asyncio.Event = field(default_factory=asyncio.Event)  # set when the call ends
    helpers: list[str] = field(default_factory=list)  # channel and bridge ids we created for this call
    rtp_source: str = ""
    started: CallStarted | None = None  # the announcement, repeated by reannounce()
    context_sent: str | None = None  # the CallContext last published for this call
    state_sent: str | None = None  # and its dialog state
    persist: bool = True  # False: taken back without its Redis record, whose lead must not be overwritten
    # Turn continuation (rtcore.dialog.joining): which utterances make one turn, the last turn
    # understood and how to undo it, and the timer that stops waiting for a continuation.
    joiner: TurnJoiner = field(default_factory=lambda: TurnJoiner(0.0))
    last_turn: TurnUndo | None = None
    join_timer: asyncio.TimerHandle | None = None
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class TurnUndo:
    """What a speech turn changed, to undo it when the caller turns out to be still answering."""

    transcript: Transcript
    state: DialogState
    lead_fields: dict[str, Any]
    turns: int
    hangup_after_prompts: bool
