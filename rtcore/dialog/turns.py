"""Turn-taking: the bot's prompts (ARI playbacks) and the caller's turns (transcripts, silence, DTMF).

While the bot speaks the caller is either ignored (ListenMode "ignore": the seed's way) or may barge
in (SpeechStarted stops the prompts). After the bot's last prompt, a no-input timer re-prompts on
silence. A prompt Asterisk fails to play is played again once; a second failure ends the call
politely (outcome "error"). `TurnTaking` is the part of the call controller (rtcore.dialog.calls)
that does this; the controller provides the call lifecycle it calls back into.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from rtcore.dialog.ari.client import AriClient, AriError
from rtcore.dialog.call import Call, TurnUndo
from rtcore.dialog.engine import Reply
from rtcore.dialog.leads import LeadStore, Turn
from rtcore.dialog.script import DialogScript
from rtcore.intents import INTENTS
from rtcore.runtime import telemetry
from rtcore.runtime.messages import CallContext, ListenMode, Message, Transcript, TurnTaken, UtteranceReady

log = logging.getLogger(__name__)

# How long a continuation may take to become an utterance (its speech, then the VAD's silence)
# before the first piece is understood alone; re-armed while its transcript is on its way.
JOIN_WAIT_S = 6.0
UNDONE_LEAD_FIELDS = ("zip_code", "owner", "heating", "callback", "slot", "outcome")
KNOWN_INTENTS = frozenset(INTENTS) | {"unknown"}


def intent_label(intent: str) -> str:
    """An intent as a metric label: an HTTP intent API may answer anything, a label set must stay small."""
    return intent if intent in KNOWN_INTENTS else "other"


class IntentSource(Protocol):
    async def classify(self, text: str, state: str | None = None) -> Any: ...


class CountedIntentApi:
    """The seed's HTTP intent API, each classification counted by result: "ok" or the seed's error
    code (rtcore_intent_api_requests_total)."""

    def __init__(self, source: IntentSource) -> None:
        from rtcore.intents.base import ERROR_CODES

        self._source = source
        for result in ("ok", *ERROR_CODES):  # every series from the start: a Grafana rate() needs its zero
            telemetry.INTENT_API_REQUESTS.labels(result=result)

    async def classify(self, text: str, state: str | None = None) -> Any:
        result = await self._source.classify(text, state)
        telemetry.INTENT_API_REQUESTS.labels(result=getattr(result, "error", "") or "ok").inc()
        return result


class TurnTaking:
    """Speaking and listening on the calls of a `CallController` (which sets these attributes)."""

    ari: AriClient
    script: DialogScript
    intents: IntentSource
    store: LeadStore
    publish: Callable[[Message], None]
    barge_in: bool
    calls: dict[str, Call]
    counters: Counter[str]
    _owner: dict[str, str]  # helper channel / playback id -> call id
    _clock: Callable[[], float]
    _incarnation: str
    _playback_seq: int

    # --- what the controller provides -----------------------------------------------------------
    def spawn(self, coro: Any) -> None:
        raise NotImplementedError

    def save(self, call: Call, ended: bool = False) -> None:
        raise NotImplementedError

    def publish_view(self, call: Call) -> None:
        raise NotImplementedError

    async def hangup(self, call: Call) -> None:
        raise NotImplementedError

    async def fail(self, call: Call, reason: str) -> None:
        raise NotImplementedError

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
            if call.hangup_after_prompts and not call.playbacks and not call.saying:
                await self.hangup(call)  # else once the goodbye playing now has ended
            return
        # Saved before the prompts are requested too: a process that dies while asking them must
        # leave its successor the turn it took (the saved state says which question to ask again).
        self.save(call)
        self.publish_context(call)
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

    def publish_context(self, call: Call, force: bool = False) -> None:
        """Tell the audio path what the caller is expected to say now (the state's asr_context),
        for the ASR to give Whisper; only when it changed, unless `force` (re-announcement)."""
        assert call.engine is not None
        state = self.script.states.get(call.engine.state.state)
        context = state.asr_context if state is not None and not call.engine.ended else ""
        name = call.engine.state.state
        if force or (context, name) != (call.context_sent, call.state_sent):
            call.context_sent, call.state_sent = context, name
            self.publish(CallContext(call_id=call.call_id, context=context, state=name))

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
        """Barge-in: the caller speaks over the bot; stop what plays and what is queued. The queued
        ones first: stopping the one playing first would start the next before its stop arrives."""
        for playback_id in reversed(list(call.playbacks)):
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

    # --- turn continuation (rtcore.dialog.joining) --------------------------------------------
    def utterance_cut(self, call: Call, utterance: UtteranceReady) -> None:
        call.joiner.cut(utterance.utterance_id, utterance.eos_at)

    def speech_started(self, call: Call, at: float) -> None:
        """The caller speaks: maybe still the last answer, whose turn must then be undone."""
        if call.hung_up_by_bot or call.ended:
            return
        continued = call.joiner.speech_started(at)
        if continued is None:
            return
        self.counters["turns_joined"] += 1
        log.info("call %s: the caller goes on after a pause: one turn with %s", call.call_id, continued)
        self._arm_join_timer(call, rounds=3)
        if call.last_turn is not None and call.last_turn.transcript.utterance_id == continued:
            self.spawn(self._undo_turn(call))

    def transcript_arrived(self, call: Call, transcript: Transcript) -> None:
        ready = call.joiner.transcript(transcript)
        if ready is not None:
            self._cancel_join_timer(call)
            self.spawn(self._transcript(call, ready))

    async def _undo_turn(self, call: Call) -> None:
        async with call.turn_lock:  # after the turn being undone has finished being taken
            undo = call.last_turn
            if undo is None or call.ended or call.engine is None or call.lead is None:
                return
            call.last_turn = None
            call.engine.state = undo.state
            for name, value in undo.lead_fields.items():
                setattr(call.lead, name, value)
            del call.lead.turns[undo.turns:]
            call.hangup_after_prompts = undo.hangup_after_prompts
            call.joiner.hold(undo.transcript)
            if call.playbacks:
                await self._stop_prompts(call)
            self.save(call)
            self.publish_context(call)

    def _arm_join_timer(self, call: Call, rounds: int) -> None:
        """Stop waiting for a continuation that does not come (speech too short to be an utterance);
        while its utterance is being cut and transcribed, wait on, a few rounds at most."""
        self._cancel_join_timer(call)
        cuts_now = len(call.joiner.cuts)

        def expired() -> None:
            call.join_timer = None
            if call.joiner.joining is None or call.ended:
                return
            if len(call.joiner.cuts) > cuts_now and rounds > 1:
                self._arm_join_timer(call, rounds - 1)  # it was cut: its transcript is on its way
                return
            ready = call.joiner.give_up()
            if ready is not None:
                self.spawn(self._transcript(call, ready))

        call.join_timer = asyncio.get_running_loop().call_later(JOIN_WAIT_S, expired)

    def _cancel_join_timer(self, call: Call) -> None:
        if call.join_timer is not None:
            call.join_timer.cancel()
            call.join_timer = None

    async def _transcript(self, call: Call, transcript: Transcript) -> None:
        async with call.turn_lock:
            await self._take_turn(call, transcript)

    async def _take_turn(self, call: Call, transcript: Transcript) -> None:
        assert call.engine is not None and call.lead is not None
        now = self._clock()
        self._cancel_no_input(call)
        turn = Turn(at=now, prompt=list(call.engine.state.last_prompts), transcript=transcript.text,
                    utterance_id=transcript.utterance_id,
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
        call.last_turn = TurnUndo(transcript, copy.deepcopy(call.engine.state),
                                  {name: copy.deepcopy(getattr(call.lead, name)) for name in UNDONE_LEAD_FIELDS},
                                  len(call.lead.turns), call.hangup_after_prompts)
        await self.say(call, call.engine.on_intent(result.intent, dict(result.slots)), turn)
        self._turn_taken(call, transcript, turn)

    def _turn_taken(self, call: Call, transcript: Transcript, turn: Turn) -> None:
        eos_to_reply_ms = turn.latency_ms.get("eos_to_reply", 0.0)
        if eos_to_reply_ms > 0:
            telemetry.EOS_TO_REPLY.observe(eos_to_reply_ms / 1000)
        if turn.source == "speech":
            telemetry.INTENTS.labels(intent=intent_label(turn.intent), source="speech").inc()
        self.publish_view(call)
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
            telemetry.INTENTS.labels(intent=intent_label(turn.intent), source="dtmf").inc()
            if call.playbacks and not call.hangup_after_prompts:
                await self._stop_prompts(call)
            await self.say(call, reply, turn)
            self.publish_view(call)
        else:
            self.save(call)  # the digits so far are part of the call's state
