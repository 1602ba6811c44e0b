"""Call control: each caller's life on Asterisk, driven by ARI events, transcripts and the dialog.

A caller's StasisStart: answer, greet, snoop the caller's audio (spy=in: only what the caller
says, never our prompts), snoop both directions and record them, create an externalMedia channel
that sends the snooped audio as slin16 RTP to our capture, bridge the snoop with it, and announce
CallStarted (ring slot and RTP source) to the audio path. Our own snoop and media channels arrive
with their own StasisStart too: we recognise them by the ids we gave them. On the caller's
StasisEnd: delete the media channel and the bridge (Asterisk keeps both), free the slot, close the
lead. After an ending's last prompt has played, we hang up.

Turn-taking: while the bot speaks the caller is either ignored (ListenMode "ignore": the seed's
way) or may barge in (SpeechStarted stops the prompts). After the bot's last prompt, a no-input
timer re-prompts on silence. Every ARI error is confined to its call: the call ends with the
outcome "error", the others go on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from rtcore.ari.client import RECONNECTED, AriClient, AriError
from rtcore.dialog.engine import DialogEngine, Reply
from rtcore.dialog.script import DialogScript
from rtcore.leads import Lead, LeadStore, Turn
from rtcore.messages import CallEnded, CallStarted, ListenMode, Message, SpeechStarted, Transcript, TurnTaken
from rtcore.ring import AudioRings, NoFreeSlotError, SlotLease

log = logging.getLogger(__name__)

# Suffixes of the ids we give our helper channels and bridge, so their events are never taken
# for a new caller (Asterisk echoes our ids and appArgs back).
SNOOP_IN, SNOOP_REC, MEDIA, BRIDGE = "-in", "-rec", "-media", "-bridge"
OWN_ARGS_PREFIX = "rtcore:"
HELPER_CHANNEL_TYPES = ("Snoop/", "UnicastRTP/", "WebSocket/", "AudioSocket/")


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
    playback_seq: int = 0
    hangup_after_prompts: bool = False
    no_input_timer: asyncio.TimerHandle | None = None
    last_prompt_at: float = 0.0
    setup_done: bool = False
    saying: bool = False  # requesting a reply's prompts: their ends are not yet the end of the turn
    ended: bool = False
    helpers: list[str] = field(default_factory=list)  # channel ids we created for this call
    started: CallStarted | None = None  # the announcement, repeated by reannounce()


class CallController:
    def __init__(self, ari: AriClient, script: DialogScript, intents: IntentSource, rings: AudioRings,
                 store: LeadStore, publish: Callable[[Message], None], rtp_host: str, rtp_port: int,
                 barge_in: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.ari = ari
        self.script = script
        self.intents = intents
        self.rings = rings
        self.store = store
        self.publish = publish
        self.rtp_target = f"{rtp_host}:{rtp_port}"
        self.barge_in = barge_in
        self.calls: dict[str, Call] = {}
        self._owner: dict[str, str] = {}  # helper channel / playback id -> call id
        self._clock = clock
        self._tasks: set[asyncio.Task[Any]] = set()
        self.completed = 0
        self.failed = 0

    # --- event intake -------------------------------------------------------------------------
    async def run(self) -> None:
        async for event in self.ari.events():
            self.handle_event(event)

    def classify_event(self, event: dict[str, Any]) -> str:
        """What an ARI event means to us: new_call, own_channel, call_ended, playback_finished,
        dtmf, reconnected, or ignored (the many events a client must tolerate)."""
        kind = event.get("type")
        channel = event.get("channel") or {}
        channel_id = channel.get("id", "")
        if kind == "StasisStart":
            args = [str(a) for a in event.get("args") or []]
            if self._is_ours(channel_id, str(channel.get("name", "")), args):
                return "own_channel"
            if args[:1] == ["h"] or channel_id in self.calls:
                return "ignored"  # the dialplan's h extension re-entering Stasis after a hangup
            return "new_call"
        if kind == "StasisEnd" and channel_id in self.calls:
            return "call_ended"
        if kind == "PlaybackFinished":
            return "playback_finished"
        if kind == "ChannelDtmfReceived" and channel_id in self.calls:
            return "dtmf"
        if kind == RECONNECTED:
            return "reconnected"
        return "ignored"

    def handle_event(self, event: dict[str, Any]) -> str:
        """Act on one ARI event (cheap: real work runs in per-call tasks); returns its meaning."""
        meaning = self.classify_event(event)
        channel = event.get("channel") or {}
        if meaning == "new_call":
            self._spawn(self._start_call(channel))
        elif meaning == "call_ended":
            self._spawn(self._end_call(self.calls[channel["id"]], reason="caller hung up"))
        elif meaning == "playback_finished":
            self._playback_finished(event.get("playback", {}).get("id", ""))
        elif meaning == "dtmf":
            self._spawn(self._dtmf(self.calls[channel["id"]], str(event.get("digit", ""))))
        elif meaning == "reconnected":
            self._spawn(self._reconcile())
        return meaning

    def handle_message(self, message: Message) -> None:
        """A bus message from the audio path or the ASR."""
        if isinstance(message, Transcript):
            call = self.calls.get(message.call_id)
            if call is not None and not call.ended:
                self._spawn(self._transcript(call, message))
        elif isinstance(message, SpeechStarted):
            call = self.calls.get(message.call_id)
            if call is not None and not call.ended:
                self._cancel_no_input(call)
                if self.barge_in and call.playbacks and not call.hangup_after_prompts:
                    self._spawn(self._stop_prompts(call))

    def _is_ours(self, channel_id: str, name: str, args: list[str]) -> bool:
        # Snoop and external media channels are never callers, whoever created them.
        return (channel_id in self._owner or name.startswith(HELPER_CHANNEL_TYPES)
                or any(a.startswith(OWN_ARGS_PREFIX) for a in args))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("call task failed", exc_info=task.exception())

    # --- call start ---------------------------------------------------------------------------
    async def _start_call(self, channel: dict[str, Any]) -> None:
        call_id = channel["id"]
        if call_id in self.calls:
            return
        caller = (channel.get("caller") or {}).get("number", "")
        call = self.calls[call_id] = Call(call_id, caller)
        started = self._clock()
        call.engine = DialogEngine(self.script)
        call.lead = Lead(call_id=call_id, caller=caller, started_at=started)
        log.info("call %s from %s", call_id, caller or "unknown")
        try:
            await self.ari.answer(call_id)
            try:
                call.lease = self.rings.allocate()
            except NoFreeSlotError:
                log.error("call %s: no free call slot (max_calls reached): ending it", call_id)
                await self._fail(call, "no free call slot")
                return
            await self._say(call, call.engine.begin())
            for suffix, spy in ((SNOOP_IN, "in"), (SNOOP_REC, "both")):
                self._own(call, call_id + suffix)
                await self.ari.snoop(call_id, spy=spy, app_args=f"{OWN_ARGS_PREFIX}{spy}:{call_id}",
                                     snoop_id=call_id + suffix)
            await self.ari.record("channels", call_id + SNOOP_REC, name=f"rtcore-{call_id}")
            self._own(call, call_id + MEDIA)
            media = await self.ari.external_media(self.rtp_target, data=f"{OWN_ARGS_PREFIX}media:{call_id}",
                                                  channel_id=call_id + MEDIA)
            variables = media.get("channelvars") or {}
            rtp_source = f"{variables.get('UNICASTRTP_LOCAL_ADDRESS', '')}:{variables.get('UNICASTRTP_LOCAL_PORT', '')}"
            self._own(call, call_id + BRIDGE)
            await self.ari.create_bridge(call_id + BRIDGE, name=f"rtcore-{call_id}")
            await self.ari.add_channels(call_id + BRIDGE, [call_id + SNOOP_IN, call_id + MEDIA])
        except AriError as exc:
            log.error("call %s: set-up failed: %s", call_id, exc)
            await self._fail(call, str(exc))
            return
        if call.ended:
            return
        assert call.lease is not None
        call.setup_done = True
        call.started = CallStarted(call_id=call_id, slot=call.lease.slot, generation=call.lease.generation,
                                   caller=caller, rtp_source=rtp_source, started_at=started)
        self.publish(call.started)
        self._listen_mode(call)
        self._save(call)

    def reannounce(self) -> None:
        """Publish CallStarted again for every call in progress (idempotent for its readers)."""
        for call in self.calls.values():
            if call.setup_done and not call.ended and call.lease is not None and call.started is not None:
                self.publish(call.started)

    def _own(self, call: Call, helper_id: str) -> None:
        call.helpers.append(helper_id)
        self._owner[helper_id] = call.call_id

    # --- speaking -----------------------------------------------------------------------------
    async def _say(self, call: Call, reply: Reply, turn: Turn | None = None) -> None:
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
                await self._hangup(call)
            return
        was_speaking = bool(call.playbacks)
        call.saying = True
        for name in reply.prompts:
            call.playback_seq += 1
            playback_id = f"{call.call_id}-pb{call.playback_seq}"
            call.playbacks.append(playback_id)
            self._owner[playback_id] = call.call_id
            try:
                await self.ari.play(call.call_id, f"sound:{self.script.prompts[name].audio}", playback_id)
            except AriError as exc:
                call.playbacks.remove(playback_id)
                self._owner.pop(playback_id, None)
                if exc.status == 404:  # the caller is gone; StasisEnd will clean up
                    call.saying = False
                    return
                log.error("call %s: cannot play %s: %s", call.call_id, name, exc)
        call.saying = False
        if not was_speaking:
            self.store.set_bot_speaking(call.call_id, True)
            self._listen_mode(call)
        if not call.playbacks:  # short prompts may all have ended already
            self._done_speaking(call)
        self._save(call)

    def _playback_finished(self, playback_id: str) -> None:
        call = self.calls.get(self._owner.pop(playback_id, ""))
        if call is None or playback_id not in call.playbacks:
            return
        call.playbacks.remove(playback_id)
        if call.playbacks or call.ended or call.saying:
            return
        self._done_speaking(call)

    def _done_speaking(self, call: Call) -> None:
        """The bot's last prompt has ended: hang up after an ending, else the caller's turn."""
        call.last_prompt_at = self._clock()
        self.store.set_bot_speaking(call.call_id, False)
        if call.hangup_after_prompts:
            self._spawn(self._hangup(call))
            return
        self._listen_mode(call)
        self._arm_no_input(call)

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
        mode = "ignore" if call.playbacks else "listen"
        self.publish(ListenMode(call_id=call.call_id, mode=mode))

    def _arm_no_input(self, call: Call) -> None:
        self._cancel_no_input(call)
        loop = asyncio.get_running_loop()
        call.no_input_timer = loop.call_later(self.script.no_input.timeout_s,
                                              lambda: self._spawn(self._no_input(call)))

    def _cancel_no_input(self, call: Call) -> None:
        if call.no_input_timer is not None:
            call.no_input_timer.cancel()
            call.no_input_timer = None

    # --- the caller's turns -------------------------------------------------------------------
    async def _no_input(self, call: Call) -> None:
        if call.ended or call.playbacks or call.engine is None:
            return
        turn = Turn(at=self._clock(), prompt=list(call.engine.state.last_prompts), source="silence")
        await self._say(call, call.engine.on_no_input(), turn)

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
            await self._say(call, call.engine.on_no_input(), turn)
            self._turn_taken(call, transcript, turn)
            return
        result = await self.intents.classify(transcript.text, call.engine.state.state)
        turn.intent, turn.score = result.intent, float(result.score)
        if call.ended:
            return
        if call.playbacks and not call.hangup_after_prompts:
            await self._stop_prompts(call)  # answered before the question ended
        await self._say(call, call.engine.on_intent(result.intent, dict(result.slots)), turn)
        self._turn_taken(call, transcript, turn)

    def _turn_taken(self, call: Call, transcript: Transcript, turn: Turn) -> None:
        self.publish(TurnTaken(call_id=call.call_id, utterance_id=transcript.utterance_id, intent=turn.intent,
                               eos_to_transcript_ms=turn.latency_ms.get("eos_to_transcript", 0.0),
                               eos_to_reply_ms=turn.latency_ms.get("eos_to_reply", 0.0)))

    async def _dtmf(self, call: Call, digit: str) -> None:
        if call.engine is None or call.ended:
            return
        reply = call.engine.on_dtmf(digit)
        if reply is not None:
            turn = Turn(at=self._clock(), prompt=list(call.engine.state.last_prompts), transcript=digit,
                        intent="ok_zipcode" if reply.saved.get("zip_code") else "unknown", source="dtmf")
            if call.playbacks and not call.hangup_after_prompts:
                await self._stop_prompts(call)
            await self._say(call, reply, turn)

    # --- the end ------------------------------------------------------------------------------
    async def _hangup(self, call: Call) -> None:
        try:
            await self.ari.hangup(call.call_id)
        except AriError as exc:
            if exc.status != 404:
                log.error("call %s: hangup failed: %s", call.call_id, exc)
            await self._end_call(call, reason="hangup failed" if exc.status != 404 else "gone")

    async def _fail(self, call: Call, reason: str) -> None:
        assert call.lead is not None
        call.lead.outcome = "error"
        try:
            await self.ari.hangup(call.call_id)
        except AriError:
            pass
        await self._end_call(call, reason=reason)

    async def _end_call(self, call: Call, reason: str) -> None:
        if call.ended:
            return
        call.ended = True
        self._cancel_no_input(call)
        assert call.lead is not None
        call.lead.ended_at = self._clock()
        if not call.lead.outcome:
            call.lead.outcome = "abandoned"
        # Asterisk keeps the external media channel and the bridge after the caller left.
        for channel_id in (call.call_id + MEDIA, call.call_id + SNOOP_IN, call.call_id + SNOOP_REC):
            if channel_id in call.helpers:
                await self._quietly(self.ari.hangup(channel_id))
        if call.call_id + BRIDGE in call.helpers:
            await self._quietly(self.ari.delete_bridge(call.call_id + BRIDGE))
        if call.lease is not None:
            self.rings.free(call.lease)
            self.publish(CallEnded(call_id=call.call_id, slot=call.lease.slot, generation=call.lease.generation,
                                   reason=reason, ended_at=call.lead.ended_at))
        self.store.set_bot_speaking(call.call_id, False)
        self._save(call, ended=True)
        for helper in call.helpers + call.playbacks:
            self._owner.pop(helper, None)
        self.calls.pop(call.call_id, None)
        if call.lead.outcome == "error":
            self.failed += 1
        else:
            self.completed += 1
        log.info("call %s ended (%s): %s", call.call_id, reason, call.lead.outcome)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except AriError as exc:
            if exc.status != 404:  # already gone is fine
                log.warning("clean-up: %s", exc)

    async def _reconcile(self) -> None:
        """After an events reconnect: end the calls whose caller channel no longer exists."""
        try:
            alive = {c["id"] for c in await self.ari.channels()}
        except AriError as exc:
            log.error("cannot list channels after reconnect: %s", exc)
            return
        for call in list(self.calls.values()):
            if call.call_id not in alive:
                await self._end_call(call, reason="gone while disconnected")

    def _save(self, call: Call, ended: bool = False) -> None:
        assert call.lead is not None and call.engine is not None
        self.store.save_lead(call.lead)
        self.store.save_call_state(call.call_id, {
            "state": call.engine.state.to_dict(), "caller": call.caller, "started_at": call.lead.started_at,
            "slot": call.lease.slot if call.lease else -1, "ended": ended})

    async def close(self) -> None:
        """Stop: end every call still in progress (their leads are closed as abandoned)."""
        for call in list(self.calls.values()):
            await self._hangup(call)
            await self._end_call(call, reason="shutdown")
        for task in list(self._tasks):
            task.cancel()
