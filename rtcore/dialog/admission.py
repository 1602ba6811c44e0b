"""Admission control and graceful drain: which new callers the dialog takes, and how it stops.

A new caller (the StasisStart of a channel we do not know) is refused, before it is answered and
before it takes a call slot, when
- the dialog is draining (a `Drain` from the supervisor: SIGTERM, `rtcore drain`);
- the ASR is behind: the latest `AsrStatus` (at most ASR_STATUS_FRESH_S old: a dispatcher that
  stopped reporting says nothing about now) expects a wait over `admission_max_asr_wait_ms` (0: never
  on that ground). A caller taken on then answered seconds late hangs up on a bot that seems deaf;
  one refused at once can be routed elsewhere or call back;
- no call slot is free (`max_calls`; the HTTP API shares the slots).
It is refused as `admission_refuse` says: "continue" hands the channel back to the dialplan without
answering it (ARI continue: at the priority after Stasis(), where the dialplan can route it to a
queue, a voicemail or another trunk; the sample extensions.conf hangs up), "busy" answers, says the
script's `admission.busy` prompt and hangs up. Every refusal is a lead (outcome "rejected", its
end_reason says why), so ops see them and a benchmark counts them, and a counter.

Drain: no new call is taken, the calls in progress go on. At `timeout_s` after the drain was
requested the calls still in progress are ended politely: their prompts stopped, the script's
`admission.drain` prompt, hang-up (a call already saying its goodbye finishes it: it hangs up
within seconds). Their lead's end_reason is "drain timeout"; its outcome is "abandoned", as when a
caller leaves mid-way: the lead is incomplete, end_reason says we cut it, and the goodbye promised
a call back (a call that had reached an ending keeps its outcome). `Drain` is repeated until the
dialog reports `draining`: a repeat is a no-op, and a dialog restarted mid-drain gets it again and
keeps its deadline (`requested_at` + `timeout_s`).

`Admission` holds the state and decisions; the functions below act for the call controller
(rtcore.dialog.calls), as rtcore.dialog.recovery does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from rtcore.dialog.ari.client import AriError
from rtcore.dialog.call import Call
from rtcore.dialog.leads import Lead
from rtcore.runtime import telemetry
from rtcore.runtime.messages import AsrStatus, Drain

if TYPE_CHECKING:
    from rtcore.dialog.calls import CallController
    from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

ASR_STATUS_FRESH_S = 3.0  # the dispatcher reports every 0.5 s: older than this, it is not reporting
REJECTED = "rejected"
DRAIN_TIMEOUT = "drain timeout"
COUNTERS = ("refused", "refused_draining", "refused_slots", "refused_asr_wait", "drain_calls_at_start",
            "drain_finished", "drain_ended")


@dataclass(frozen=True)
class AdmissionOptions:
    refuse: Literal["continue", "busy"] = "continue"
    max_asr_wait_ms: float = 1500.0  # 0: the ASR's load never refuses a call

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionOptions:
        return cls(settings.admission_refuse, settings.admission_max_asr_wait_ms)


@dataclass(frozen=True)
class Refusal:
    counter: str  # refused_draining | refused_slots | refused_asr_wait
    reason: str  # the lead's end_reason

    @property
    def reason_label(self) -> str:
        """The rtcore_calls_refused_total label: draining, slots or asr_wait."""
        return self.counter.removeprefix("refused_")


DRAINING = Refusal("refused_draining", "draining")
NO_FREE_SLOT = Refusal("refused_slots", "no free call slot")
ASR_BEHIND = Refusal("refused_asr_wait", "ASR too far behind")  # its reason says by how much


class Admission:
    """The dialog's admission state: the ASR's latest load, the drain, and their counters."""

    def __init__(self, options: AdmissionOptions, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self._monotonic = monotonic
        self._asr: AsrStatus | None = None
        self._asr_at = 0.0
        self.draining = False
        self.drain_deadline = 0.0  # wall clock (the supervisor's requested_at + timeout_s)
        self._in_progress: set[str] = set()  # calls in progress when the drain began, not yet ended
        self._cut: set[str] = set()  # calls ended at the drain's timeout
        self.busy_playbacks: dict[str, Lead] = {}  # playback id of a busy prompt -> the refused call's lead
        self.drain_timer: asyncio.TimerHandle | None = None  # ends what is left at the drain's deadline
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})

    def asr_status(self, status: AsrStatus) -> None:
        self._asr, self._asr_at = status, self._monotonic()

    def refusal(self) -> Refusal | None:
        """Why a new caller cannot be taken now (the free slot is checked by allocating one), or None."""
        if self.draining:
            return DRAINING
        limit, status = self.options.max_asr_wait_ms, self._asr
        fresh = status is not None and self._monotonic() - self._asr_at <= ASR_STATUS_FRESH_S
        if limit > 0 and fresh and status is not None and status.expected_wait_ms > limit:
            wait = status.expected_wait_ms
            return Refusal(ASR_BEHIND.counter, f"ASR expected wait {wait:.0f} ms over {limit:.0f} ms")
        return None

    def refused(self, refusal: Refusal) -> None:
        self.counts["refused"] += 1
        self.counts[refusal.counter] += 1

    def start_drain(self, drain: Drain, in_progress: Iterable[str]) -> bool:
        """True if this starts the drain (a repeated Drain changes nothing)."""
        if self.draining:
            return False
        self.draining = True
        self.drain_deadline = drain.requested_at + drain.timeout_s
        self._in_progress = set(in_progress)
        self.counts["drain_calls_at_start"] = len(self._in_progress)
        return True

    def to_cut(self, call_ids: Iterable[str]) -> list[str]:
        """The drain's time is up: which of the calls in progress to end (each once)."""
        cut = [call_id for call_id in call_ids if call_id not in self._cut]
        self._cut.update(cut)
        self.counts["drain_ended"] += len(cut)
        return cut

    def call_ended(self, call_id: str) -> None:
        if call_id in self._in_progress:
            self._in_progress.discard(call_id)
            if call_id not in self._cut:
                self.counts["drain_finished"] += 1  # ended by itself during the drain

    def metrics(self) -> dict[str, float]:
        return {"draining": float(self.draining), **{name: float(n) for name, n in self.counts.items()}}


# --- what the controller does --------------------------------------------------------------------
async def refuse(ctrl: CallController, channel: dict[str, Any], refusal: Refusal) -> None:
    """Refuse a new caller as `admission_refuse` says; its lead says why."""
    admission = ctrl.admission
    call_id = str(channel["id"])
    caller = str((channel.get("caller") or {}).get("number", ""))
    ctrl.remember_ended(call_id)  # its dialplan h re-entry or a resynchronisation is not a new caller
    admission.refused(refusal)
    telemetry.CALLS_REFUSED.labels(reason=refusal.reason_label).inc()
    telemetry.CALLS_ENDED.labels(outcome=REJECTED).inc()
    mode = admission.options.refuse
    log.warning("call %s refused (%s): %s", call_id, mode, refusal.reason)
    lead = Lead(call_id=call_id, caller=caller, started_at=ctrl._clock(), outcome=REJECTED,
                end_reason=refusal.reason)
    try:
        if mode == "busy" and ctrl.script.admission.busy:
            await ctrl.ari.answer(call_id)
            prompt = ctrl.script.prompts[ctrl.script.admission.busy]
            playback_id = f"{call_id}-pb{ctrl._incarnation}-refused"
            admission.busy_playbacks[playback_id] = lead  # before the request: its end may come first
            await ctrl.ari.play(call_id, f"sound:{prompt.audio}", playback_id)
        elif mode == "busy":
            await ctrl.ari.hangup(call_id)  # no busy prompt in the script: refused without a word
        else:
            await ctrl.ari.continue_in_dialplan(call_id)
    except AriError as exc:
        admission.busy_playbacks = {k: v for k, v in admission.busy_playbacks.items() if v is not lead}
        if not (exc.gone and exc.about_channel(call_id)):
            # Not handed back nor told: hang up rather than leave the caller in our application.
            log.error("call %s: cannot refuse it politely (%s): hanging up", call_id, exc)
            await ctrl.quietly(ctrl.ari.hangup(call_id))
    lead.ended_at = ctrl._clock()
    ctrl.store.save_lead(lead)


async def busy_prompt_done(ctrl: CallController, playback_id: str) -> None:
    """A refused caller heard the busy prompt (or it failed, or the caller left): hang up."""
    lead = ctrl.admission.busy_playbacks.pop(playback_id, None)
    if lead is None:
        return
    await ctrl.quietly(ctrl.ari.hangup(lead.call_id))
    lead.ended_at = ctrl._clock()
    ctrl.store.save_lead(lead)


def schedule_drain_end(ctrl: CallController) -> None:
    """At the drain's deadline, end what is still in progress."""
    delay = max(0.0, ctrl.admission.drain_deadline - ctrl._clock())
    ctrl.admission.drain_timer = asyncio.get_running_loop().call_later(delay, lambda: ctrl.spawn(end_remaining(ctrl)))


async def end_remaining(ctrl: CallController) -> None:
    calls = {call.call_id: call for call in ctrl.calls.values()
             if not call.ended and not (call.hangup_after_prompts and call.playbacks)}  # not saying goodbye
    cut = ctrl.admission.to_cut(calls)
    if cut:
        log.warning("drain: time is up, ending the %d calls still in progress", len(cut))
    for call_id in cut:
        ctrl.spawn(cut_short(ctrl, calls[call_id]))


async def cut_short(ctrl: CallController, call: Call) -> None:
    """End a call in progress politely: stop its prompts, the drain goodbye, hang up."""
    assert call.engine is not None and call.lead is not None
    reply = call.engine.cut_short(ctrl.script.admission.drain)  # at once: a call still starting sees it
    call.lead.end_reason = DRAIN_TIMEOUT
    saying, call.saying = call.saying, True  # the prompts stopped now must not end the turn (or hang up)
    try:
        if call.playbacks:
            await ctrl._stop_prompts(call)
    finally:
        call.saying = saying
    if not call.ended:
        await ctrl.say(call, reply)
