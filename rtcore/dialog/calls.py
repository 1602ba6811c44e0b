"""Call control: each caller's life on Asterisk, driven by ARI events, transcripts and the dialog.

A caller's StasisStart: answer, greet, then connect the caller's audio to our capture
(rtcore.dialog.setup: snoops, externalMedia, bridge, recording) and announce CallStarted (ring slot
and RTP source) to the audio path. On the caller's StasisEnd: delete the media channel and the
bridge (Asterisk keeps both), free the slot, close the lead. After an ending's last prompt has
played, we hang up.

Turn-taking: while the bot speaks the caller is either ignored (ListenMode "ignore": the seed's
way) or may barge in (SpeechStarted stops the prompts). After the bot's last prompt, a no-input
timer re-prompts on silence. A prompt Asterisk fails to play is played again once; a second
failure ends the call politely (outcome "error"). Every ARI error is confined to its call.

Each (re)connection of the events WebSocket is followed by a synchronisation with what Asterisk
and Redis hold (rtcore.dialog.recovery): a restarted dialog process takes back the calls in progress.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from rtcore.dialog.ari.client import CONNECTED, AriClient, AriError
from rtcore.dialog.setup import BRIDGE, HELPER_CHANNEL_TYPES, OWN_ARGS_PREFIX, SetupError, StasisWaiter, connect_media
from rtcore.dialog.engine import DialogEngine, Reply
from rtcore.dialog.script import DialogScript
from rtcore.dialog.leads import Lead, LeadStore, Turn
from rtcore.runtime.messages import CallEnded, CallStarted, ListenMode, Message, SpeechStarted, Transcript, TurnTaken
from rtcore.runtime.ring import AudioRings, NoFreeSlotError, SlotLease

log = logging.getLogger(__name__)

CALLER_HUNG_UP, BOT_HUNG_UP = "caller hung up", "bot hung up"
# Calls we ended may linger in Asterisk a moment (hanging up): a resynchronisation must not
# take them for new callers. Plenty for the calls ending within a reconnect's time.
RECENTLY_ENDED_KEPT = 4096


class IntentSource(Protocol):
    async def classify(self, text: str, state: str | None = None) -> Any: ...


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
    persist: bool = True  # False: taken back without its Redis record, whose lead must not be overwritten


class CallController:
    def __init__(self, ari: AriClient, script: DialogScript, intents: IntentSource, rings: AudioRings,
                 store: LeadStore, publish: Callable[[Message], None], rtp_host: str, rtp_port: int,
                 barge_in: bool = True, clock: Callable[[], float] = time.time,
                 setup_timeout_s: float = 5.0) -> None:
        self.ari = ari
        self.script = script
        self.intents = intents
        self.rings = rings
        self.store = store
        self.publish = publish
        self.rtp_target = f"{rtp_host}:{rtp_port}"
        self.barge_in = barge_in
        self.setup_timeout_s = setup_timeout_s
        self.calls: dict[str, Call] = {}
        self._owner: dict[str, str] = {}  # helper channel / playback id -> call id
        self.stasis = StasisWaiter()
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        # Playback ids must not collide with a predecessor's (a restarted process takes calls back).
        self._incarnation = secrets.token_hex(3)
        self._playback_seq = 0
        self.recently_ended: OrderedDict[str, None] = OrderedDict()  # not to be taken for new callers
        self.completed = 0
        self.failed = 0
        self.counters: Counter[str] = Counter()  # playback_failures, calls_resumed, setup_retries, ...

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
        channel = event.get("channel") or {}
        channel_id = channel.get("id", "")
        if kind == "StasisStart":
            args = [str(a) for a in event.get("args") or []]
            if self.is_helper(channel_id, str(channel.get("name", "")), args):
                return "own_channel"
            if args[:1] == ["h"] or channel_id in self.calls or channel_id in self.recently_ended:
                return "ignored"  # the dialplan's h extension re-entering Stasis after a hangup
            return "new_call"
        if kind == "StasisEnd" and channel_id in self.calls:
            return "call_ended"
        if kind == "PlaybackFinished":
            return "playback_finished"
        if kind == "ChannelDtmfReceived" and channel_id in self.calls:
            return "dtmf"
        return "ignored"

    def handle_event(self, event: dict[str, Any]) -> str:
        """Act on one ARI event (cheap: real work runs in per-call tasks); returns its meaning."""
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
            if playback.get("state") == "failed":
                self._playback_failed(str(playback.get("id", "")), str(playback.get("media_uri", "")))
            else:
                self._playback_finished(str(playback.get("id", "")))
        elif meaning == "dtmf":
            self.spawn(self._dtmf(self.calls[channel["id"]], str(event.get("digit", ""))))
        return meaning

    def handle_message(self, message: Message) -> None:
        """A bus message from the audio path or the ASR."""
        if isinstance(message, Transcript):
            call = self.calls.get(message.call_id)
            if call is not None and not call.ended:
                self.spawn(self._transcript(call, message))
        elif isinstance(message, SpeechStarted):
            call = self.calls.get(message.call_id)
            if call is not None and not call.ended:
                self._cancel_no_input(call)
                if self.barge_in and call.playbacks and not call.hangup_after_prompts:
                    self.spawn(self._stop_prompts(call))

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
        call = self.calls[call_id] = Call(call_id, caller)
        call.engine = DialogEngine(self.script)
        call.lead = Lead(call_id=call_id, caller=caller, started_at=started_at or self._clock())
        return call

    async def start_call(self, channel: dict[str, Any]) -> None:
        call_id = channel["id"]
        if call_id in self.calls:
            return
        caller = (channel.get("caller") or {}).get("number", "")
        call = self.new_call(call_id, caller)
        assert call.engine is not None and call.lead is not None
        log.info("call %s from %s", call_id, caller or "unknown")
        try:
            await self.ari.answer(call_id)
            try:
                call.lease = self.rings.allocate()
            except NoFreeSlotError:
                log.error("call %s: no free call slot (max_calls reached): ending it", call_id)
                await self.fail(call, "no free call slot")
                return
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
        self.announce(call)
        self._listen_mode(call)
        self.save(call)

    def announce(self, call: Call) -> None:
        assert call.lease is not None and call.lead is not None
        call.started = CallStarted(call_id=call.call_id, slot=call.lease.slot, generation=call.lease.generation,
                                   caller=call.caller, rtp_source=call.rtp_source, started_at=call.lead.started_at)
        self.publish(call.started)

    def reannounce(self) -> None:
        """Publish CallStarted again for every call in progress (idempotent for its readers)."""
        for call in self.calls.values():
            if call.setup_done and not call.ended and call.lease is not None and call.started is not None:
                self.publish(call.started)

    def own(self, call: Call, helper_id: str) -> None:
        if helper_id not in call.helpers:
            call.helpers.append(helper_id)
        self._owner[helper_id] = call.call_id

    # --- speaking -----------------------------------------------------------------------------
    async def say(self, call: Call, reply: Reply, turn: Turn | None = None) -> None:
        """Play a reply's prompts (queued one after the other by Asterisk)."""
        self._cancel_no_input(call)
        if reply.hangup:
            call.hangup_after_prompts = True
        assert call.lead is not None and call.engine is not None
        for name, value in reply.saved.items():
            setattr(call.lead, name, value)
        if reply.outcome:
            call.lead.outcome = reply.outcome
        if turn is not None:
            if turn.latency_ms.get("eos_at"):
                turn.latency_ms["eos_to_reply"] = (self._clock() - turn.latency_ms.pop("eos_at")) * 1000
            call.lead.turns.append(turn)
        if not reply.prompts:
            if call.hangup_after_prompts:
                await self.hangup(call)
            return
        # Saved before the prompts are requested too: a process that dies while asking them must
        # leave its successor the turn it took (the saved state says which question to ask again).
        self.save(call)
        was_speaking = bool(call.playbacks)
        call.saying = True
        for name in reply.prompts:
            playback_id = self._register_playback(call, name)
            if await self._request_play(call, playback_id, name) == "gone":
                call.saying = False
                return  # the caller is gone; StasisEnd will clean up
        call.saying = False
        if call.ended:
            return
        if not was_speaking:
            self.store.set_bot_speaking(call.call_id, True)
            self._listen_mode(call)
        if not call.playbacks:  # short prompts may all have ended already
            self._done_speaking(call)
        self.save(call)

    def _register_playback(self, call: Call, prompt: str, retry: bool = False) -> str:
        self._playback_seq += 1
        playback_id = f"{call.call_id}-pb{self._incarnation}-{self._playback_seq}"
        call.playbacks.append(playback_id)
        call.playback_prompts[playback_id] = prompt
        if retry:
            call.retries.add(playback_id)
        self._owner[playback_id] = call.call_id
        return playback_id

    def _forget_playback(self, call: Call, playback_id: str) -> None:
        if playback_id in call.playbacks:
            call.playbacks.remove(playback_id)
        call.playback_prompts.pop(playback_id, None)
        call.retries.discard(playback_id)
        self._owner.pop(playback_id, None)

    async def _request_play(self, call: Call, playback_id: str, prompt: str) -> str:
        """POST /play: "queued", "gone" (the caller left) or "refused" (another error, logged)."""
        try:
            await self.ari.play(call.call_id, f"sound:{self.script.prompts[prompt].audio}", playback_id)
            return "queued"
        except AriError as exc:
            self._forget_playback(call, playback_id)
            if exc.gone:
                return "gone"
            log.error("call %s: cannot play %s: %s", call.call_id, prompt, exc)
            return "refused"

    def _playback_finished(self, playback_id: str) -> None:
        call = self.calls.get(self._owner.get(playback_id, ""))
        if call is None or playback_id not in call.playbacks:
            self._owner.pop(playback_id, None)
            return
        self._forget_playback(call, playback_id)
        if call.playbacks or call.ended or call.saying:
            return
        self._done_speaking(call)

    def _playback_failed(self, playback_id: str, media_uri: str) -> None:
        """Asterisk could not play a prompt (a missing or unplayable file; also what a caller
        hanging up mid-prompt looks like): play it again once; a second failure ends the call."""
        call = self.calls.get(self._owner.get(playback_id, ""))
        if call is None or playback_id not in call.playbacks or call.ended:
            self._playback_finished(playback_id)
            return
        prompt = call.playback_prompts.get(playback_id, "")
        final = playback_id in call.retries
        # The replacement is registered before the failed one goes, so the turn never looks over.
        retry_id = None if final else self._register_playback(call, prompt, retry=True)
        self._forget_playback(call, playback_id)
        if retry_id is None:
            self.counters["playbacks_failed_twice"] += 1
            log.error("call %s: prompt %s (%s) failed again: ending the call", call.call_id, prompt, media_uri)
            self.spawn(self.fail(call, f"prompt {prompt} could not be played"))
            return
        self.spawn(self._retry_prompt(call, retry_id, prompt, media_uri))

    async def _retry_prompt(self, call: Call, playback_id: str, prompt: str, media_uri: str) -> None:
        result = await self._request_play(call, playback_id, prompt)
        if result == "queued":
            # Counted only now: a caller who hung up mid-prompt also fails it, which is no fault.
            self.counters["playbacks_failed"] += 1
            log.warning("call %s: Asterisk failed to play %s (%s): playing it again", call.call_id, prompt, media_uri)
        elif result == "refused":
            await self.fail(call, f"prompt {prompt} could not be played")
        elif not call.playbacks and not call.saying and not call.ended:
            log.debug("call %s: %s failed as the caller left", call.call_id, prompt)

    def _done_speaking(self, call: Call) -> None:
        """The bot's last prompt has ended: hang up after an ending, else the caller's turn."""
        call.last_prompt_at = self._clock()
        self.store.set_bot_speaking(call.call_id, False)
        if call.hangup_after_prompts:
            self.spawn(self.hangup(call))
            return
        self._listen_mode(call)
        self._arm_no_input(call)
        self.save(call)

    async def _stop_prompts(self, call: Call) -> None:
        """Barge-in: the caller speaks over the bot; stop what plays and what is queued."""
        for playback_id in list(call.playbacks):
            try:
                await self.ari.stop_playback(playback_id)
            except AriError as exc:
                if exc.status != 404:  # already finished: nothing to stop
                    log.warning("call %s: cannot stop %s: %s", call.call_id, playback_id, exc)

    def _listen_mode(self, call: Call) -> None:
        if not call.setup_done or self.barge_in:
            return  # with barge-in the VAD always listens
        self.publish(ListenMode(call_id=call.call_id, mode="ignore" if call.playbacks else "listen"))

    def _arm_no_input(self, call: Call) -> None:
        self._cancel_no_input(call)
        loop = asyncio.get_running_loop()
        call.no_input_timer = loop.call_later(self.script.no_input.timeout_s,
                                              lambda: self.spawn(self._no_input(call)))

    def _cancel_no_input(self, call: Call) -> None:
        if call.no_input_timer is not None:
            call.no_input_timer.cancel()
            call.no_input_timer = None

    # --- the caller's turns -------------------------------------------------------------------
    async def _no_input(self, call: Call) -> None:
        if call.ended or call.playbacks or call.engine is None:
            return
        turn = Turn(at=self._clock(), prompt=list(call.engine.state.last_prompts), source="silence")
        await self.say(call, call.engine.on_no_input(), turn)

    async def _transcript(self, call: Call, transcript: Transcript) -> None:
        assert call.engine is not None
        now = self._clock()
        self._cancel_no_input(call)
        turn = Turn(at=now, prompt=list(call.engine.state.last_prompts), transcript=transcript.text,
                    latency_ms={"eos_to_transcript": ((transcript.published_at or now) - transcript.eos_at) * 1000
                                if transcript.eos_at else 0.0,
                                "asr_queue": transcript.queue_ms, "asr_inference": transcript.inference_ms,
                                "eos_at": transcript.eos_at})
        if transcript.error or transcript.hallucination or not transcript.text.strip():
            # Not the caller's words (noise, Whisper inventing, audio lost): nothing was said.
            turn.intent = "unknown"
            if call.playbacks:
                return  # the bot is still speaking: no reprompt on top of it
            turn.source = "noise"
            await self.say(call, call.engine.on_no_input(), turn)
            self._turn_taken(call, transcript, turn)
            return
        result = await self.intents.classify(transcript.text, call.engine.state.state)
        turn.intent, turn.score = result.intent, float(result.score)
        if call.ended:
            return
        if call.playbacks and not call.hangup_after_prompts:
            await self._stop_prompts(call)  # answered before the question ended
        await self.say(call, call.engine.on_intent(result.intent, dict(result.slots)), turn)
        self._turn_taken(call, transcript, turn)

    def _turn_taken(self, call: Call, transcript: Transcript, turn: Turn) -> None:
        self.publish(TurnTaken(call_id=call.call_id, utterance_id=transcript.utterance_id, intent=turn.intent,
                               eos_to_transcript_ms=turn.latency_ms.get("eos_to_transcript", 0.0),
                               eos_to_reply_ms=turn.latency_ms.get("eos_to_reply", 0.0)))

    async def _dtmf(self, call: Call, digit: str) -> None:
        if call.engine is None or call.ended:
            return
        pressed = call.engine.state.dtmf + digit  # what this turn typed, before the engine resets it
        reply = call.engine.on_dtmf(digit)
        if reply is not None:
            turn = Turn(at=self._clock(), prompt=list(call.engine.state.last_prompts), transcript=pressed,
                        intent="ok_zipcode" if reply.saved.get("zip_code") else "unknown", source="dtmf")
            if call.playbacks and not call.hangup_after_prompts:
                await self._stop_prompts(call)
            await self.say(call, reply, turn)
        else:
            self.save(call)  # the digits so far are part of the call's state

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
        self.recently_ended[call.call_id] = None
        while len(self.recently_ended) > RECENTLY_ENDED_KEPT:
            self.recently_ended.popitem(last=False)
        if call.lead.outcome == "error":
            self.failed += 1
        else:
            self.completed += 1
        log.info("call %s ended (%s): %s", call.call_id, reason, call.lead.outcome)

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
        """Stop: end every call still in progress (their leads are closed as abandoned)."""
        for call in list(self.calls.values()):
            await self.hangup(call)
            await self.end_call(call, reason="shutdown")
        for task in list(self._tasks):
            task.cancel()
