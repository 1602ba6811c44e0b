"""Call control: each caller's life on Asterisk, driven by ARI events, transcripts and the dialog.

A caller's StasisStart: answer, greet, then connect the caller's audio to our capture
(rtcore.dialog.setup: snoops, externalMedia, bridge, recording) and announce CallStarted (ring slot
and RTP source) to the audio path. On the caller's StasisEnd: delete the media channel and the
bridge (Asterisk keeps both), free the slot, close the lead. After an ending's last prompt has
played, we hang up.

Turn-taking (prompts, barge-in, silence, the caller's transcripts and DTMF) is rtcore.dialog.turns.
Every ARI error is confined to its call.

Each (re)connection of the events WebSocket is followed by a synchronisation with what Asterisk
and Redis hold (rtcore.dialog.recovery): a restarted dialog process takes back the calls in progress.

A new caller is first admitted (rtcore.dialog.admission): while the dialog drains, while the ASR is
too far behind, or when no call slot is free, it is refused before it is answered or holds a slot.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

from rtcore.dialog.admission import (
    ASR_BEHIND,
    DRAINING,
    NO_FREE_SLOT,
    REJECTED,
    Admission,
    AdmissionOptions,
    busy_prompt_done,
    refuse,
    schedule_drain_end,
)
from rtcore.dialog.ari.client import CONNECTED, AriClient, AriError
from rtcore.dialog.call import Call
from rtcore.dialog.engine import DialogEngine
from rtcore.dialog.joining import TurnJoiner
from rtcore.dialog.leads import Lead, LeadStore, Turn
from rtcore.dialog.script import OUTCOMES, DialogScript
from rtcore.dialog.setup import (
    BRIDGE,
    HELPER_CHANNEL_TYPES,
    MEDIA,
    OWN_ARGS_PREFIX,
    SNOOP_IN,
    SNOOP_REC,
    SetupError,
    StasisWaiter,
    connect_media,
)
from rtcore.dialog.turns import IntentSource, TurnTaking
from rtcore.runtime import telemetry
from rtcore.runtime.logs import call_context
from rtcore.runtime.messages import (
    AsrStatus,
    CallEnded,
    CallStarted,
    CallView,
    Drain,
    Message,
    ProcessStarted,
    SpeechStarted,
    Transcript,
    UtteranceReady,
)
from rtcore.runtime.ring import AudioRings, NoFreeSlotError

log = logging.getLogger(__name__)

CALLER_HUNG_UP, BOT_HUNG_UP = "caller hung up", "bot hung up"
# Calls we ended may linger in Asterisk a moment (hanging up): a resynchronisation must not
# take them for new callers. Plenty for the calls ending within a reconnect's time.
RECENTLY_ENDED_KEPT = 4096
# A caller's last words (cut by the VAD at hang-up, or in flight when the caller left) are
# transcribed after the call ended: its lead stays at hand this long to take them.
# Processes that learn the calls in progress from the dialog's announcements.
REANNOUNCE_TO = frozenset({"rtp_capture", "vad"})
# The process that shows the calls in progress (the live view): told them all when it (re)starts.
VIEWS_TO = "http_api"
LAST_WORDS_WAIT_S = 60.0
LAST_WORDS_KEPT = 1024


class CallController(TurnTaking):
    def __init__(self, ari: AriClient, script: DialogScript, intents: IntentSource, rings: AudioRings,
                 store: LeadStore, publish: Callable[[Message], None], rtp_host: str, rtp_port: int,
                 barge_in: bool = True, clock: Callable[[], float] = time.time,
                 setup_timeout_s: float = 5.0, turn_join_s: float = 0.0,
                 admission: AdmissionOptions | None = None) -> None:
        self.ari = ari
        self.script = script
        self.intents = intents
        self.rings = rings
        self.store = store
        self.publish = publish
        self.rtp_target = f"{rtp_host}:{rtp_port}"
        self.barge_in = barge_in
        self.setup_timeout_s = setup_timeout_s
        self.turn_join_s = turn_join_s  # rtcore.dialog.joining; 0: every utterance is a turn
        self.calls: dict[str, Call] = {}
        self._owner: dict[str, str] = {}  # helper channel / playback id -> call id
        self.stasis = StasisWaiter()
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        # Playback ids must not collide with a predecessor's (a restarted process takes calls back).
        self._incarnation = secrets.token_hex(3)
        self._playback_seq = 0
        self.recently_ended: OrderedDict[str, None] = OrderedDict()  # not to be taken for new callers
        self.ended_calls: OrderedDict[str, tuple[float, Call]] = OrderedDict()  # for their last words
        self._last_words_taken: OrderedDict[str, None] = OrderedDict()  # utterance ids
        self.completed = 0
        self.failed = 0
        self.counters: Counter[str] = Counter()  # playback_failures, calls_resumed, setup_retries, ...
        self.admission = Admission(admission or AdmissionOptions())
        # Every outcome's and refusal's series from the start (at 0): a rate() in Grafana needs them.
        for outcome in (*OUTCOMES, REJECTED):
            telemetry.CALLS_ENDED.labels(outcome=outcome)
        for refusal in (DRAINING, NO_FREE_SLOT, ASR_BEHIND):
            telemetry.CALLS_REFUSED.labels(reason=refusal.reason_label)

    # --- event intake -------------------------------------------------------------------------
    async def run(self) -> None:
        from rtcore.dialog.recovery import synchronise

        async for event in self.ari.events():
            if event.get("type") == CONNECTED:
                # Before any later event is handled: what happened while we were not listening.
                await synchronise(self, first=not event.get("reconnect"))
                continue
            self.handle_event(event)

    def classify_event(self, event: dict[str, Any]) -> str:
        """What an ARI event means to us: new_call, own_channel, call_ended, playback_finished,
        dtmf, or ignored (the many events a client must tolerate)."""
        kind = event.get("type")
        # Fields of the wrong type (the ARI client drops such events; this holds whoever calls us)
        # make the event mean nothing rather than raise.
        channel = event.get("channel")
        channel = channel if isinstance(channel, dict) else {}
        channel_id = channel.get("id")
        channel_id = channel_id if isinstance(channel_id, str) else ""
        if kind == "StasisStart":
            if not channel_id:
                return "ignored"
            raw_args = event.get("args")
            args = [str(a) for a in raw_args] if isinstance(raw_args, list) else []
            if self.is_helper(channel_id, str(channel.get("name", "")), args):
                return "own_channel"
            if args[:1] == ["h"] or channel_id in self.calls or channel_id in self.recently_ended:
                return "ignored"  # the dialplan's h extension re-entering Stasis after a hangup
            return "new_call"
        if kind == "StasisEnd" and channel_id in self.calls:
            return "call_ended"
        if kind == "PlaybackFinished" and isinstance(event.get("playback"), dict):
            return "playback_finished"
        digit = event.get("digit")
        if kind == "ChannelDtmfReceived" and channel_id in self.calls and isinstance(digit, str) and len(digit) == 1:
            return "dtmf"
        return "ignored"

    def handle_event(self, event: dict[str, Any]) -> str:
        """Act on one ARI event (cheap: real work runs in per-call tasks); returns its meaning.
        What it logs, and the tasks it starts, are about the event's call (rtcore.runtime.logs)."""
        with call_context(self._call_of(event)):
            return self._handle_event(event)

    def _call_of(self, event: dict[str, Any]) -> str:
        """The call an event is about: its channel's (a caller, or one of our helpers), its playback's."""
        channel = event.get("channel")
        channel_id = channel.get("id") if isinstance(channel, dict) else None
        playback = event.get("playback")
        playback_id = playback.get("id") if isinstance(playback, dict) else None
        for key in (channel_id, playback_id):
            if isinstance(key, str) and key:
                if key in self.calls:
                    return key
                if key in self._owner:
                    return self._owner[key]
        return channel_id if isinstance(channel_id, str) and event.get("type") == "StasisStart" else ""

    def _handle_event(self, event: dict[str, Any]) -> str:
        meaning = self.classify_event(event)
        channel = event.get("channel") or {}
        if meaning == "new_call":
            self.spawn(self.start_call(channel))
        elif meaning == "own_channel":
            self.stasis.entered(channel.get("id", ""))
        elif meaning == "call_ended":
            call = self.calls[channel["id"]]
            self.spawn(self.end_call(call, reason=BOT_HUNG_UP if call.hung_up_by_bot else CALLER_HUNG_UP))
        elif meaning == "playback_finished":
            playback = event.get("playback") or {}
            if str(playback.get("id", "")) in self.admission.busy_playbacks:
                self.spawn(busy_prompt_done(self, str(playback["id"])))  # a refused caller was told
            elif playback.get("state") == "failed":
                self._playback_failed(str(playback.get("id", "")), str(playback.get("media_uri", "")))
            else:
                self._playback_finished(str(playback.get("id", "")))
        elif meaning == "dtmf":
            self.spawn(self._dtmf(self.calls[channel["id"]], str(event.get("digit", ""))))
        return meaning

    def handle_message(self, message: Message) -> None:
        """A bus message: about a call (from the audio path or the ASR), or about the run (a process
        back, the ASR's load, a drain)."""
        with call_context(str(getattr(message, "call_id", ""))):
            self._handle_message(message)

    def _handle_message(self, message: Message) -> None:
        if isinstance(message, ProcessStarted):
            if message.restarts and message.process in REANNOUNCE_TO:
                self.reannounce()  # it has just come back knowing no call: tell it now
            if message.process == VIEWS_TO:
                for in_progress in self.calls.values():
                    self.publish_view(in_progress)
            return
        if isinstance(message, (AsrStatus, Drain)):
            self.admission_message(message)
            return
        call = self.calls.get(getattr(message, "call_id", ""))
        if call is None or call.ended:
            if isinstance(message, Transcript):
                self.last_words(message)
            return
        if isinstance(message, Transcript):
            self.transcript_arrived(call, message)
        elif isinstance(message, UtteranceReady):
            self.utterance_cut(call, message)
        elif isinstance(message, SpeechStarted):
            self._cancel_no_input(call)
            if self.barge_in and call.playbacks and not call.hangup_after_prompts:
                self.spawn(self._stop_prompts(call))
            self.speech_started(call, message.at)

    def is_helper(self, channel_id: str, name: str, args: list[str]) -> bool:
        # Snoop and external media channels are never callers, whoever created them.
        return (channel_id in self._owner or name.startswith(HELPER_CHANNEL_TYPES)
                or any(a.startswith(OWN_ARGS_PREFIX) for a in args))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception())

    # --- call start ---------------------------------------------------------------------------
    def new_call(self, call_id: str, caller: str, started_at: float | None = None) -> Call:
        call = self.calls[call_id] = Call(call_id, caller, joiner=TurnJoiner(self.turn_join_s))
        call.engine = DialogEngine(self.script)
        call.lead = Lead(call_id=call_id, caller=caller, started_at=started_at or self._clock())
        return call

    async def start_call(self, channel: dict[str, Any]) -> None:
        call_id = channel["id"]
        if call_id in self.calls or call_id in self.recently_ended:
            return  # started (or refused) already: its StasisStart and a resynchronisation both found it
        # Admitted, and its slot taken, before anything is done on the channel: a refused caller
        # is neither answered nor holds a slot.
        refusal = self.admission.refusal()
        lease = None
        if refusal is None:
            try:
                lease = self.rings.allocate()
            except NoFreeSlotError:
                refusal = NO_FREE_SLOT
        if refusal is not None:
            await refuse(self, channel, refusal)
            return
        caller = (channel.get("caller") or {}).get("number", "")
        call = self.new_call(call_id, caller)
        call.lease = lease
        assert call.engine is not None and call.lead is not None
        telemetry.CALLS_STARTED.inc()
        # The caller's number is personal data: not in INFO logs.
        log.info("call %s answered", call_id)
        log.debug("call %s from %s", call_id, caller or "unknown")
        self.publish_view(call)
        try:
            await self.ari.answer(call_id)
            if not call.engine.ended:  # a drain's end may have cut it short already
                await self.say(call, call.engine.begin())
            media = await connect_media(self, call)
        except (AriError, SetupError) as exc:
            if call.ended:
                await self.release_helpers(call)  # the caller left during set-up
                return
            if isinstance(exc, AriError) and exc.gone and exc.about_channel(call_id):
                await self.end_call(call, reason=CALLER_HUNG_UP)  # before its StasisEnd reached us
                return
            log.error("call %s: set-up failed: %s", call_id, exc)
            await self.fail(call, f"set-up failed: {exc}")
            return
        if call.ended:
            await self.release_helpers(call)  # created after the caller's StasisEnd was handled
            return
        assert call.lease is not None
        call.rtp_source = media.rtp_source
        call.lead.recording = media.recording
        call.setup_done = True
        self.update_gauges()
        self.announce(call)
        self._listen_mode(call)
        self.save(call)

    def announce(self, call: Call) -> None:
        assert call.lease is not None and call.lead is not None
        call.started = CallStarted(call_id=call.call_id, slot=call.lease.slot, generation=call.lease.generation,
                                   caller=call.caller, rtp_source=call.rtp_source, started_at=call.lead.started_at)
        self.publish(call.started)
        self.publish_context(call, force=True)

    def reannounce(self) -> None:
        """Publish CallStarted again for every call in progress (idempotent for its readers)."""
        for call in self.calls.values():
            if call.setup_done and not call.ended and call.lease is not None and call.started is not None:
                self.publish(call.started)
                self.publish_context(call, force=True)

    def publish_view(self, call: Call) -> None:
        """The call as the live view shows it (after each change)."""
        if call.lead is None or call.engine is None:
            return
        turns = [turn for turn in call.lead.turns if turn.source in ("speech", "dtmf")]
        last = turns[-1] if turns else None
        self.publish(CallView(call_id=call.call_id, state="ended" if call.ended else call.engine.state.state,
                              started_at=call.lead.started_at, turns=len(turns),
                              last_transcript=last.transcript if last else "", last_intent=last.intent if last else "",
                              last_turn_ms=round(last.latency_ms.get("eos_to_reply", 0.0), 1) if last else 0.0,
                              ended_at=call.lead.ended_at, outcome=call.lead.outcome if call.ended else ""))

    def update_gauges(self) -> None:
        """Calls and ARI channels held now (rtcore_calls_active, rtcore_channels_active)."""
        active = [call for call in self.calls.values() if not call.ended]
        helpers = [helper for call in active for helper in call.helpers]
        telemetry.CALLS_ACTIVE.set(len(active))
        telemetry.CHANNELS_ACTIVE.labels(type="caller").set(len(active))
        telemetry.CHANNELS_ACTIVE.labels(type="snoop").set(
            sum(1 for helper in helpers if helper.endswith((SNOOP_IN, SNOOP_REC))))
        telemetry.CHANNELS_ACTIVE.labels(type="media").set(sum(1 for helper in helpers if helper.endswith(MEDIA)))

    def own(self, call: Call, helper_id: str) -> None:
        if helper_id not in call.helpers:
            call.helpers.append(helper_id)
        self._owner[helper_id] = call.call_id

    # --- the end ------------------------------------------------------------------------------
    async def hangup(self, call: Call) -> None:
        call.hung_up_by_bot = True
        try:
            await self.ari.hangup(call.call_id)
        except AriError as exc:
            if not exc.gone:
                log.error("call %s: hangup failed: %s", call.call_id, exc)
            await self.end_call(call, reason=CALLER_HUNG_UP if exc.gone else "hangup failed")

    async def fail(self, call: Call, reason: str) -> None:
        """End a call that cannot go on: the script's polite error ending first, if it has one and
        the call was not already ending (a call that reached an ending keeps its outcome)."""
        assert call.lead is not None and call.engine is not None
        if call.ended:
            return
        if not call.engine.ended:
            call.lead.outcome = "error"
        call.lead.end_reason = call.lead.end_reason or reason
        if call.playbacks:
            await self._stop_prompts(call)
        if not call.engine.ended and self.script.recovery.ending:
            await self.say(call, call.engine.fail())  # we hang up once it has played
            if call.playbacks or call.ended or call.hung_up_by_bot:
                return
        call.hung_up_by_bot = True
        await self.quietly(self.ari.hangup(call.call_id))
        await self.end_call(call, reason=reason)

    async def end_call(self, call: Call, reason: str) -> None:
        if call.ended:
            return
        call.ended = True
        call.gone.set()
        self._cancel_no_input(call)
        assert call.lead is not None
        call.lead.ended_at = self._clock()
        if not call.lead.outcome:
            call.lead.outcome = "abandoned"
        if not call.lead.end_reason:
            call.lead.end_reason = reason
        await self.release_helpers(call)
        if call.lease is not None:
            self.rings.free(call.lease)
            self.publish(CallEnded(call_id=call.call_id, slot=call.lease.slot, generation=call.lease.generation,
                                   reason=reason, ended_at=call.lead.ended_at))
        self.store.set_bot_speaking(call.call_id, False)
        self.save(call, ended=True)
        for helper in call.helpers + call.playbacks:
            self._owner.pop(helper, None)
        self.stasis.forget(call.helpers)
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
        self.remember_ended(call.call_id)
        self.admission.call_ended(call.call_id)
        now = time.monotonic()
        self.ended_calls[call.call_id] = (now, call)
        while self.ended_calls and (len(self.ended_calls) > LAST_WORDS_KEPT
                                    or now - next(iter(self.ended_calls.values()))[0] > LAST_WORDS_WAIT_S):
            self.ended_calls.popitem(last=False)
        if call.lead.outcome == "error":
            self.failed += 1
        else:
            self.completed += 1
        telemetry.CALLS_ENDED.labels(outcome=call.lead.outcome).inc()
        telemetry.CALL_DURATION.observe(max(0.0, call.lead.ended_at - call.lead.started_at))
        self.publish_view(call)
        self.update_gauges()
        log.info("call %s ended (%s): %s", call.call_id, reason, call.lead.outcome)

    def remember_ended(self, call_id: str) -> None:
        """A caller we are done with (ended, or refused) may linger in Asterisk a moment: not a new caller."""
        self.recently_ended[call_id] = None
        while len(self.recently_ended) > RECENTLY_ENDED_KEPT:
            self.recently_ended.popitem(last=False)

    def admission_message(self, message: AsrStatus | Drain) -> None:
        """The ASR's load (who may be admitted), or a drain: no new call; at its deadline what is
        still in progress is ended politely (rtcore.dialog.admission). A repeated Drain is a no-op."""
        if isinstance(message, AsrStatus):
            self.admission.asr_status(message)
        elif self.admission.start_drain(message, self.calls):
            log.warning("draining: no new call is taken; the %d calls in progress may go on for %.0f s",
                        len(self.calls), max(0.0, self.admission.drain_deadline - self._clock()))
            schedule_drain_end(self)

    def last_words(self, transcript: Transcript) -> None:
        """A transcript of a call that has ended: what the caller said as they hung up (the VAD
        cuts what it has at CallEnded) or before, still in flight. It goes into the lead as a turn
        (`after_hangup`), understood in the state the call ended in; nothing is played."""
        entry = self.ended_calls.get(transcript.call_id)
        if entry is None:
            return
        call = entry[1]
        if transcript.error or transcript.hallucination or not transcript.text.strip():
            return
        if transcript.utterance_id in self._last_words_taken:
            return  # a duplicate transcript
        self._last_words_taken[transcript.utterance_id] = None
        while len(self._last_words_taken) > LAST_WORDS_KEPT:
            self._last_words_taken.popitem(last=False)
        self.counters["last_words"] += 1
        self.spawn(self._last_words(call, transcript))

    async def _last_words(self, call: Call, transcript: Transcript) -> None:
        assert call.lead is not None and call.engine is not None
        result = await self.intents.classify(transcript.text, call.engine.state.state)
        turn = Turn(at=self._clock(), prompt=list(call.engine.state.last_prompts), transcript=transcript.text,
                    intent=result.intent, score=float(result.score), after_hangup=True,
                    utterance_id=transcript.utterance_id, slots=dict(result.slots),
                    latency_ms={"eos_to_transcript": ((transcript.published_at or self._clock())
                                                      - transcript.eos_at) * 1000 if transcript.eos_at else 0.0})
        call.lead.turns.append(turn)
        log.info("call %s: last words after the end of the call taken into its lead (%s)", call.call_id,
                 result.intent)
        if call.persist:
            self.store.save_lead(call.lead)

    async def release_helpers(self, call: Call) -> None:
        """Delete the call's external media channel, snoops and bridge: Asterisk keeps the media
        channel and the bridge after the caller left. Idempotent (already gone is fine)."""
        for helper in call.helpers:
            if helper.endswith(BRIDGE):
                await self.quietly(self.ari.delete_bridge(helper))
            else:
                await self.quietly(self.ari.hangup(helper))

    async def quietly(self, coro: Any) -> None:
        try:
            await coro
        except AriError as exc:
            if exc.status != 404:  # already gone is fine
                log.warning("clean-up: %s", exc)

    def save(self, call: Call, ended: bool = False) -> None:
        """The call's lead and working state, enough for a restarted process to take it back."""
        assert call.lead is not None and call.engine is not None
        if not call.persist:
            return
        self.store.save_lead(call.lead)
        self.store.save_call_state(call.call_id, {
            "state": call.engine.state.to_dict(), "caller": call.caller, "started_at": call.lead.started_at,
            "slot": call.lease.slot if call.lease else -1, "generation": call.lease.generation if call.lease else -1,
            "rtp_source": call.rtp_source, "setup_done": call.setup_done, "helpers": call.helpers,
            "playbacks": call.playbacks}, ended=ended)

    async def close(self) -> None:
        """Stop: end every call still in progress (their leads are closed as abandoned). After a
        drain nothing is left: this is the last resort."""
        for call in list(self.calls.values()):
            await self.hangup(call)
            await self.end_call(call, reason="shutdown")
        for playback_id in list(self.admission.busy_playbacks):
            await busy_prompt_done(self, playback_id)  # refused callers still hearing the busy prompt
        if self.admission.drain_timer is not None:
            self.admission.drain_timer.cancel()
        for task in list(self._tasks):
            task.cancel()
