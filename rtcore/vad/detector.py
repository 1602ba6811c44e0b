"""The VAD process's work, as library code: follow every call's ring, run one batched Silero
inference per tick over the calls that have a new chunk, and turn probabilities into
SpeechStarted / UtteranceReady messages (sample ranges in the ring, no audio copied).

Nothing a caller says is lost to an ending or a restart:
- at CallEnded the call's last audio is still run (the ring keeps it), and speech still pending
  is cut there: a caller who hangs up mid-sentence has those words transcribed;
- every tick, each call's ring slot is bookmarked with where the speech not cut yet starts
  (`AudioRings.set_vad_resume`); a restarted VAD that learns a call in progress (the dialog
  announces them again) resumes from that bookmark, so the speech in progress when its
  predecessor died is cut whole, under the same utterance id if the old one had cut it already.

Each tick updates the VAD's Prometheus families (rtcore.runtime.telemetry): its duration, and an
overrun when it took longer than its period; the calls followed; each utterance cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rtcore.runtime import telemetry
from rtcore.runtime.audio import pcm16_to_float
from rtcore.runtime.messages import (
    AnyMessage,
    CallContext,
    CallEnded,
    CallStarted,
    ListenMode,
    Message,
    SpeechStarted,
    UtteranceReady,
)
from rtcore.runtime.ring import AudioRings, OverrunError, SlotLease, StaleSlotError
from rtcore.vad.segmenter import Segmenter, SegmenterOptions, SpeechStart, Utterance
from rtcore.vad.silero import CHUNK, BatchedVad

log = logging.getLogger(__name__)

# Chunks one call may consume per tick: normally 1 or 2 (20 ms packets, 32 ms chunks); more only
# while catching up, bounded so that one call far behind cannot starve the tick.
MAX_ROUNDS_PER_TICK = 8
TICK_S = CHUNK / 16000  # a tick per Silero chunk of 16 kHz audio: 32 ms


@dataclass
class CallStream:
    call_id: str
    lease: SlotLease
    segmenter: Segmenter
    next_sample: int = 0  # absolute position of the next chunk to run
    last_cursor: int = 0
    last_progress: float = 0.0  # monotonic time the ring cursor last moved
    ignoring: bool = False
    utterances: int = 0
    ending: bool = False  # CallEnded came: run what the ring still holds, cut, then forget the call


@dataclass
class DetectorStats:
    ticks: int = 0
    inferences: int = 0
    chunks: int = 0
    utterances: int = 0
    speech_starts: int = 0
    stalled_flushes: int = 0
    last_words: int = 0  # utterances cut at a call's end (the caller hung up while speaking)
    resumed_calls: int = 0  # calls picked up from a predecessor's bookmark
    overruns: int = 0  # the VAD fell a whole ring behind a call
    tick_overruns: int = 0  # ticks longer than their period
    dropped_clicks: int = 0
    busy_s: float = 0.0
    max_batch: int = 0


class UtteranceDetector:
    def __init__(self, rings: AudioRings, vad: BatchedVad, options: SegmenterOptions,
                 stall_timeout_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, period_s: float = TICK_S) -> None:
        self.rings = rings
        self.vad = vad
        self.options = options
        self.stall_timeout_s = stall_timeout_s
        self.period_s = period_s  # how often tick() is called: a longer tick is an overrun
        self.calls: dict[str, CallStream] = {}
        self.contexts: dict[str, str] = {}  # call id -> what its caller is expected to say (CallContext)
        self.dialog_states: dict[str, str] = {}  # call id -> its dialog state (CallContext)
        self.stats = DetectorStats()
        self._clock = clock
        self._wall = wall_clock
        self._pcm = np.empty((0, CHUNK), dtype=np.int16)  # reused batch buffer

    # --- control messages ---------------------------------------------------------------------
    def handle(self, message: AnyMessage) -> None:
        if isinstance(message, CallStarted):
            lease = SlotLease(message.slot, message.generation)
            known = self.calls.get(message.call_id)
            if known is not None and known.lease == lease:
                return  # a repeated announcement (publishers may resend): nothing changes
            self._drop(message.call_id)
            # A new call starts at 0. A call learnt late (this process restarted: the dialog
            # announces the calls again) resumes at its predecessor's bookmark: the speech it had
            # not cut yet is cut now, and what it had cut is not cut again. Without a bookmark (or
            # one the ring no longer holds) it starts at what is being written now.
            try:
                cursor = self.rings.cursor(lease)
                resume = self.rings.vad_resume(lease)
            except StaleSlotError:
                return  # already over
            start = cursor - cursor % CHUNK
            oldest = cursor - self.rings.spec.capacity + CHUNK
            if resume is not None and oldest <= resume <= cursor:
                start = resume
                self.stats.resumed_calls += 1
            self.calls[message.call_id] = CallStream(message.call_id, lease, Segmenter(self.options, start),
                                                     next_sample=start, last_cursor=cursor,
                                                     last_progress=self._clock())
            self.vad.add(message.call_id)
        elif isinstance(message, CallEnded):
            call = self.calls.get(message.call_id)
            if call is not None and call.lease == SlotLease(message.slot, message.generation):
                call.ending = True  # its last chunks run at the next tick, then it is cut and dropped
            else:
                self._drop(message.call_id, ended=True)
        elif isinstance(message, CallContext):
            # Kept apart from the streams: the dialog may say it before its CallStarted reaches us.
            self.contexts[message.call_id] = message.context
            self.dialog_states[message.call_id] = message.state
        elif isinstance(message, ListenMode):
            call = self.calls.get(message.call_id)
            if call is None:
                return
            ignoring = message.mode == "ignore"
            if ignoring != call.ignoring:
                # Either way nothing heard before the switch belongs to the next utterance.
                call.segmenter.reset(call.next_sample)
                call.ignoring = ignoring

    def _drop(self, call_id: str, ended: bool = False) -> None:
        call = self.calls.pop(call_id, None)
        if ended:  # else kept: the dialog may send a call's context before its CallStarted
            self.contexts.pop(call_id, None)
            self.dialog_states.pop(call_id, None)
        if call is not None:
            self.vad.remove(call_id)
            self.stats.dropped_clicks += call.segmenter.dropped

    def _finish(self, call: CallStream, out: list[Message]) -> None:
        """The call ended and its audio is all run: cut what is pending (its last words)."""
        events = call.segmenter.flush() if not call.ignoring else []
        before = len(out)
        self._emit(call, events, out)
        self.stats.last_words += sum(isinstance(m, UtteranceReady) for m in out[before:])
        self._drop(call.call_id, ended=True)

    # --- the tick -----------------------------------------------------------------------------
    def tick(self) -> list[Message]:
        """Run every complete chunk available (one batched inference per round); return messages."""
        t0 = time.perf_counter()
        out: list[Message] = []
        now = self._clock()
        ready: dict[str, int] = {}
        for call in list(self.calls.values()):
            try:
                cursor = self.rings.cursor(call.lease)
            except StaleSlotError:
                log.warning("call %s: slot %d was reused before CallEnded arrived", call.call_id, call.lease.slot)
                self._drop(call.call_id)
                continue
            if cursor != call.last_cursor:
                call.last_cursor = cursor
                call.last_progress = now
            elif call.segmenter.in_speech and not call.ending and now - call.last_progress >= self.stall_timeout_s:
                self.stats.stalled_flushes += 1
                self._emit(call, call.segmenter.flush(), out)
            available = (cursor - call.next_sample) // CHUNK
            if available > 0:
                ready[call.call_id] = min(available, MAX_ROUNDS_PER_TICK)
            elif call.ending:
                self._finish(call, out)
        for round_no in range(max(ready.values(), default=0)):
            calls = [self.calls[cid] for cid, n in ready.items() if n > round_no and cid in self.calls]
            self._run_round(calls, out)
        calls = list(self.calls.values())
        self.rings.set_vad_resumes([c.lease for c in calls], [c.segmenter.pending_start if c.segmenter.in_speech
                                                             else c.next_sample for c in calls])
        busy_s = time.perf_counter() - t0
        self.stats.ticks += 1
        self.stats.busy_s += busy_s
        telemetry.VAD_TICK.observe(busy_s)
        telemetry.VAD_STREAMS.set(len(self.calls))
        if busy_s > self.period_s:
            self.stats.tick_overruns += 1
            telemetry.VAD_OVERRUNS.inc()
        return out

    def _run_round(self, calls: list[CallStream], out: list[Message]) -> None:
        if len(calls) > self._pcm.shape[0]:
            self._pcm = np.empty((max(len(calls), 2 * self._pcm.shape[0]), CHUNK), dtype=np.int16)
        batch: list[CallStream] = []
        for call in calls:
            start = call.next_sample
            try:
                self.rings.read(call.lease, start, start + CHUNK, out=self._pcm[len(batch)])
            except OverrunError:
                # The VAD fell a whole ring behind: skip to what is still there, say so.
                self.stats.overruns += 1
                skip_to = self.rings.cursor(call.lease) - self.rings.spec.capacity // 2
                log.error("call %s: VAD fell behind, skipping %d samples", call.call_id, skip_to - start)
                call.next_sample = skip_to - skip_to % CHUNK
                call.segmenter.reset(call.next_sample)
                continue
            except StaleSlotError:
                self._drop(call.call_id)
                continue
            batch.append(call)
        if not batch:
            return
        probs = self.vad.step([c.call_id for c in batch], pcm16_to_float(self._pcm[:len(batch)]))
        self.stats.inferences += 1
        self.stats.chunks += len(batch)
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        for call, prob in zip(batch, probs.tolist(), strict=True):
            start = call.next_sample
            call.next_sample = start + CHUNK
            # While ignoring, the model still runs so the call's LSTM state stays continuous.
            if not call.ignoring:
                self._emit(call, call.segmenter.feed(start, prob), out)

    def _emit(self, call: CallStream, events: list[SpeechStart | Utterance], out: list[Message]) -> None:
        lease = call.lease
        for event in events:
            if isinstance(event, SpeechStart):
                self.stats.speech_starts += 1
                out.append(SpeechStarted(call_id=call.call_id, slot=lease.slot, generation=lease.generation,
                                         start_sample=event.sample, at=self._wall()))
            else:
                call.utterances += 1
                self.stats.utterances += 1
                telemetry.VAD_UTTERANCES.inc()
                # Named by where it starts in the call: unique, and the same if a restarted VAD
                # ever cut it again, so the dispatcher's de-duplication holds.
                out.append(UtteranceReady(
                    utterance_id=f"{call.call_id}-{event.start}", call_id=call.call_id, slot=lease.slot,
                    generation=lease.generation, start_sample=event.start, end_sample=event.end,
                    eos_at=self._wall(), context=self.contexts.get(call.call_id, ""),
                    dialog_state=self.dialog_states.get(call.call_id, "")))

    def metrics(self) -> dict[str, float]:
        s = self.stats
        return {
            "calls": float(len(self.calls)), "ticks": float(s.ticks), "inferences": float(s.inferences),
            "chunks": float(s.chunks), "mean_batch": s.chunks / s.inferences if s.inferences else 0.0,
            "max_batch": float(s.max_batch), "utterances": float(s.utterances),
            "speech_starts": float(s.speech_starts), "stalled_flushes": float(s.stalled_flushes),
            "last_words": float(s.last_words), "resumed_calls": float(s.resumed_calls),
            "overruns": float(s.overruns), "tick_overruns": float(s.tick_overruns), "busy_s": s.busy_s,
            "dropped_clicks": float(s.dropped_clicks + sum(c.segmenter.dropped for c in self.calls.values())),
        }
