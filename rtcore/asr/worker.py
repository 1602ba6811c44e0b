"""An ASR worker's work, as library code: utterance ranges in -> batched Whisper -> transcripts.

The worker reads each utterance's audio from the call's ring by absolute sample range (an
overrun or a slot already reused yields an error transcript for that utterance, not a crash),
queues it in the batcher, and runs a batch when one is due. Each batch run updates the workers'
Prometheus families (rtcore.runtime.telemetry): its size, window and run time, and what each of
its utterances waited here. procs/asr_worker.py wires it to the dispatcher's socket.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from rtcore.asr.batcher import AsrBatcher, AsrRequest, BatchPolicy, window_label
from rtcore.asr.whisper import WhisperEngine, WhisperResult
from rtcore.runtime import telemetry
from rtcore.runtime.audio import pcm16_to_float
from rtcore.runtime.messages import StreamedUtterance, Transcript, UtteranceReady
from rtcore.runtime.ring import AudioRings, RingError, SlotLease

if TYPE_CHECKING:
    import numpy.typing as npt

log = logging.getLogger(__name__)
SLOW_BATCH_S = 2.0  # a batch this slow is logged: it is what sets the latency tail


class AsrWorker:
    def __init__(self, name: str, engine: WhisperEngine, policy: BatchPolicy, rings: AudioRings | None,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.engine = engine
        self.batcher = AsrBatcher(policy)
        self.rings = rings
        self._clock = clock
        self._wall = wall_clock
        self.batches = 0
        self.utterances = 0
        self.errors = 0
        self.flagged = 0
        self.running: list[str] = []  # the utterance ids of the batch being run
        for window in policy.buckets:  # every window's series, at 0 until its first batch
            telemetry.ASR_BATCHES.labels(window=window_label(window))

    def holding(self) -> tuple[str, ...]:
        """Every utterance id this worker has (queued or running): told to the dispatcher with each
        credit, so that a restarted dispatcher knows what is in flight here."""
        return (*self.running, *self.batcher.keys())

    @property
    def capacity(self) -> int:
        """Utterances to hold at once: the batch being run and the next one filling meanwhile;
        more stays at the dispatcher, where any free worker can take it."""
        return 2 * self.batcher.policy.batch_size

    def accept(self, utterance: UtteranceReady) -> Transcript | None:
        """Queue an utterance; returns an error transcript at once if its audio cannot be read."""
        if self.rings is None:
            raise RuntimeError("this worker has no rings to read utterances from")
        if utterance.utterance_id in self.batcher or utterance.utterance_id in self.running:
            return None  # sent again by a restarted dispatcher: already here, one transcript will come
        try:
            pcm = self.rings.read(SlotLease(utterance.slot, utterance.generation),
                                  utterance.start_sample, utterance.end_sample)
        except (RingError, ValueError) as exc:
            self.errors += 1
            log.error("utterance %s: %s", utterance.utterance_id, exc)
            return Transcript(utterance_id=utterance.utterance_id, call_id=utterance.call_id, text="",
                              error=str(exc), eos_at=utterance.eos_at, worker=self.name)
        self.accept_audio(utterance.utterance_id, utterance, pcm)
        return None

    def accept_audio(self, key: str, utterance: UtteranceReady | StreamedUtterance, pcm: npt.NDArray[np.int16]) -> None:
        """Queue an utterance whose audio is at hand (a stream entry carries it); `key` names it
        in the batcher and `holding()`."""
        self.batcher.add(AsrRequest(key, pcm16_to_float(pcm), self._clock(), language=utterance.language,
                                    meta=utterance, context=utterance.context))

    def next_deadline(self) -> float:
        return self.batcher.next_deadline()

    def run_due(self, flush: bool = False, while_waiting: Callable[[], None] | None = None) -> list[Transcript]:
        """Run the most urgent due batch, if any; its transcripts. `while_waiting` is called
        about every 20 ms while the model runs (heartbeats)."""
        return [transcript for _, transcript in self.run_due_keyed(flush, while_waiting)]

    def run_due_keyed(self, flush: bool = False,
                      while_waiting: Callable[[], None] | None = None) -> list[tuple[str, Transcript]]:
        """As `run_due`, each transcript with the key its utterance was accepted under."""
        batch = self.batcher.pop_due(self._clock(), flush=flush)
        if not batch:
            return []
        started = self._clock()
        self.running = [r.key for r in batch]
        try:
            results, timing = self.engine.transcribe([r.audio for r in batch], batch[0].window_s,
                                                     [r.language for r in batch], while_waiting,
                                                     [r.context for r in batch])
        finally:
            self.running = []
        self.batches += 1
        telemetry.ASR_BATCHES.labels(window=window_label(batch[0].window_s)).inc()
        telemetry.ASR_BATCH_SIZE.observe(len(batch))
        telemetry.ASR_INFERENCE.observe(timing.features_s + timing.inference_s)
        for request in batch:
            telemetry.ASR_QUEUE_WAIT.observe(started - request.enqueued_at)
        if timing.inference_s > SLOW_BATCH_S:
            reasons = [r.reason for r in results if r.reason]
            log.warning("slow batch: %d utterances (%.1f s of audio at most) in a %g s window took %.2f s%s",
                        len(batch), max(r.duration_s for r in batch), timing.window_s, timing.inference_s,
                        f"; flagged: {', '.join(reasons)}" if reasons else "")
        out: list[tuple[str, Transcript]] = []
        for request, result in zip(batch, results, strict=True):
            utterance: UtteranceReady | StreamedUtterance = request.meta
            self.utterances += 1
            self.flagged += result.hallucination
            out.append((request.key, Transcript(
                utterance_id=utterance.utterance_id, call_id=utterance.call_id, text=result.text,
                avg_logprob=result.avg_logprob, no_speech_prob=result.no_speech_prob,
                hallucination=result.hallucination, error="", eos_at=utterance.eos_at,
                queue_ms=(started - request.enqueued_at) * 1000, features_ms=timing.features_s * 1000,
                inference_ms=timing.inference_s * 1000, batch_size=len(batch), worker=self.name,
                window_s=timing.window_s)))
        return out

    def metrics(self) -> dict[str, float]:
        return {"batches": float(self.batches), "utterances": float(self.utterances),
                "mean_batch": self.utterances / self.batches if self.batches else 0.0,
                "errors": float(self.errors), "flagged": float(self.flagged), "queued": float(len(self.batcher))}


def transcribe_offline(engine: WhisperEngine, policy: BatchPolicy,
                       items: list[tuple[str, npt.NDArray[np.float32]]], language: str = "",
                       contexts: dict[str, str] | None = None) -> dict[str, WhisperResult]:
    """Whole files' utterances at once (`rtcore transcribe`, benchmarks): the same batcher, every
    batch due at once, so each batch is as full as the length buckets allow. `contexts`: key ->
    what that utterance's speaker was expected to say (as a call's CallContext)."""
    batcher = AsrBatcher(policy)
    for key, audio in items:
        batcher.add(AsrRequest(key, audio, 0.0, language=language, context=(contexts or {}).get(key, "")))
    results: dict[str, WhisperResult] = {}
    while batch := batcher.pop_due(0.0, flush=True):
        outputs, _ = engine.transcribe([r.audio for r in batch], batch[0].window_s, [r.language for r in batch],
                                       contexts=[r.context for r in batch])
        results.update((r.key, out) for r, out in zip(batch, outputs, strict=True))
    return results
