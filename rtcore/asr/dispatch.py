"""The ASR dispatcher's bookkeeping: every utterance gets exactly one transcript.

Utterances come from the VAD (UtteranceReady on the bus). Workers announce their capacity
(AsrCredit); the dispatcher hands each pending utterance to the worker with the most free capacity and
remembers it as in flight. A worker that comes back under a new pid (the supervisor restarted it)
or stays silent for `worker_timeout_s` is presumed dead: its in-flight utterances go back to the
front of the queue. Transcripts go back through the dispatcher, which publishes the first one for
each utterance id and drops any later duplicate (a worker presumed dead that was only slow).

A restarted dispatcher starts with nothing in memory; what was queued or in flight is rebuilt:
the submitters (VAD, HTTP API) submit again everything that has no transcript yet when they see
its first AsrStatus, and workers list what they hold in every AsrCredit (`holding`), which the
dispatcher adopts as in flight there. For `holding_grace_s` after its start it hands out no work,
so that the workers' lists arrive before a resubmitted utterance is sent to a second worker.
The queue is bounded (`queue_limit`): beyond it an utterance is refused (`submit` says "full";
`refusal` is the error transcript that answers it), and admission control, which reads the
expected wait in AsrStatus, keeps new calls away long before.

The dispatcher's Prometheus families (rtcore.runtime.telemetry) follow the same bookkeeping: each
utterance's one transcript is counted by result as it is published (`complete`, `refusal`), with
its end-of-speech -> transcript latency for a call's; the queue by window bucket, the in-flight
count, the capacity and the expected wait are set with each AsrStatus (`status`).
Socket-free, so it is tested directly; procs/asr_dispatch.py wires it to ZeroMQ.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from rtcore.asr.batcher import BatchPolicy, window_label
from rtcore.asr.filters import flag
from rtcore.asr.whisper import SAMPLE_RATE, WhisperOptions
from rtcore.runtime import telemetry
from rtcore.runtime.messages import HTTP_CALL_ID, AsrCredit, AsrStatus, Transcript, UtteranceReady

log = logging.getLogger(__name__)

# Utterance ids remembered as done, to recognise duplicates (a few minutes of a busy system).
DONE_MEMORY = 100_000
THROUGHPUT_WINDOW_S = 10.0  # transcripts per second are measured over this long
Submitted = Literal["queued", "duplicate", "adopted", "full"]
Result = Literal["text", "no_speech", "hallucination", "error"]
QUEUE_FULL = "ASR queue full"
# The workers judge Whisper's output with WhisperOptions' thresholds (from_settings keeps them).
_JUDGE = WhisperOptions(model_dir="")


def transcript_result(transcript: Transcript) -> Result:
    """What an utterance's transcript amounts to, as rtcore_asr_utterances_total counts it. A
    flagged transcript does not say why: Whisper's no-speech verdicts ("empty", "no speech"),
    which `flag` tries before any other, are found again from what it carries."""
    if transcript.error:
        return "error"
    if not transcript.hallucination:
        return "text"
    o = _JUDGE
    reason = flag(transcript.text, transcript.avg_logprob, transcript.no_speech_prob, language="",
                  no_speech_threshold=o.no_speech_threshold, logprob_threshold=o.logprob_threshold,
                  compression_ratio_threshold=o.compression_ratio_threshold, no_speech_doubt=o.no_speech_doubt,
                  doubt_logprob_threshold=o.doubt_logprob_threshold)
    return "no_speech" if reason in ("empty", "no speech") else "hallucination"


@dataclass
class WorkerState:
    identity: bytes  # the ZeroMQ routing id: "<worker>.<pid>"
    name: str
    pid: int
    capacity: int = 0
    last_seen: float = 0.0
    # None: a worker said it holds it (after our restart) before its submitter sent it again.
    in_flight: dict[str, UtteranceReady | None] = field(default_factory=dict)

    @property
    def free(self) -> int:
        return self.capacity - len(self.in_flight)


@dataclass
class DispatchStats:
    received: int = 0
    dispatched: int = 0
    published: int = 0
    requeued: int = 0
    duplicate_utterances: int = 0
    duplicate_transcripts: int = 0
    adopted: int = 0  # utterances a worker held when we started, taken as in flight there
    refused_full: int = 0


class AsrDispatcher:
    def __init__(self, worker_timeout_s: float = 10.0, queue_limit: int = 100_000, started: float = 0.0,
                 holding_grace_s: float = 0.0, policy: BatchPolicy | None = None) -> None:
        self.worker_timeout_s = worker_timeout_s
        self.queue_limit = queue_limit
        self.policy = policy or BatchPolicy()  # the workers' window buckets, to report the queue by
        self.assign_from = started + holding_grace_s  # (monotonic) no work handed out before
        self.pending: deque[UtteranceReady] = deque()
        # (monotonic time, ms waited) of recent transcripts: throughput and expected wait
        self._published_at: deque[tuple[float, float | None]] = deque()
        self._queued_at: dict[str, float] = {}  # utterance id -> monotonic time it was queued
        self.workers: dict[bytes, WorkerState] = {}
        self.stats = DispatchStats()
        self._owner: dict[str, bytes] = {}  # in-flight utterance id -> worker identity
        self._queued: dict[str, float] = {}  # queued utterance id -> its window bucket
        self._depth = dict.fromkeys(self.policy.buckets, 0)  # queued utterances by window bucket
        self._done: OrderedDict[str, None] = OrderedDict()

    def submit(self, utterance: UtteranceReady, now: float | None = None) -> Submitted:
        key = utterance.utterance_id
        owner = self._owner.get(key)
        holder = self.workers.get(owner) if owner is not None else None
        if holder is not None and key in holder.in_flight and holder.in_flight[key] is None:
            holder.in_flight[key] = utterance  # what a worker said it holds: now re-queueable
            return "adopted"
        if key in self._done or key in self._queued or owner is not None:
            self.stats.duplicate_utterances += 1
            return "duplicate"
        if len(self.pending) >= self.queue_limit:
            self.stats.refused_full += 1
            telemetry.ASR_REFUSED.inc()
            log.error("ASR queue full (%d utterances): utterance %s refused", len(self.pending), key)
            return "full"
        self._enqueue(utterance, time.monotonic() if now is None else now)
        self.stats.received += 1
        return "queued"

    def refusal(self, utterance: UtteranceReady, published_at: float) -> Transcript:
        """The error transcript to publish for an utterance `submit` refused ("full"). It is that
        utterance's one transcript: the same utterance submitted again is a duplicate."""
        transcript = Transcript(utterance_id=utterance.utterance_id, call_id=utterance.call_id, text="",
                                error=QUEUE_FULL, eos_at=utterance.eos_at, published_at=published_at)
        self._remember_done(utterance.utterance_id)
        self._answered(transcript)
        return transcript

    def announce(self, identity: bytes, message: AsrCredit, now: float) -> None:
        worker = self.workers.get(identity)
        if worker is None:
            # The same worker name under another pid: that process is gone.
            for other in [w for w in self.workers.values() if w.name == message.worker and w.identity != identity]:
                log.warning("ASR worker %s is back as pid %d: re-queueing %d utterances of pid %d",
                            message.worker, message.pid, len(other.in_flight), other.pid)
                self._forget(other)
            worker = self.workers[identity] = WorkerState(identity, message.worker, message.pid)
        # Capacity, not a delta: the dispatcher counts what is in flight, so nothing drifts.
        worker.capacity = max(0, message.capacity)
        worker.last_seen = now
        for key in message.holding:
            # Held by a worker but unknown here: sent by our predecessor. In flight there now.
            if key in self._owner or key in self._done:
                continue
            queued = next((u for u in self.pending if u.utterance_id == key), None) if key in self._queued else None
            if queued is not None:  # resubmitted already: not to be run a second time
                self._unqueue(key)
                self.pending.remove(queued)
            worker.in_flight[key] = queued
            self._owner[key] = identity
            self.stats.adopted += 1

    def assign(self, now: float = float("inf")) -> list[tuple[bytes, UtteranceReady]]:
        """Hand pending utterances to workers with free capacity; returns (worker identity, utterance)."""
        out: list[tuple[bytes, UtteranceReady]] = []
        if now < self.assign_from:
            return out
        while self.pending:
            worker = max(self.workers.values(), key=lambda w: w.free, default=None)
            if worker is None or worker.free <= 0:
                break
            utterance = self.pending.popleft()
            self._unqueue(utterance.utterance_id)
            worker.in_flight[utterance.utterance_id] = utterance
            self._owner[utterance.utterance_id] = worker.identity
            self.stats.dispatched += 1
            out.append((worker.identity, utterance))
        return out

    def complete(self, identity: bytes, transcript: Transcript, now: float,
                 latency_ms: float | None = None, published_at: float = 0.0) -> Transcript | None:
        """A worker's transcript: returned, to be published, if it is the first for its utterance,
        else None. `latency_ms`: how long it waited (eos->transcript less its batch's run), for the
        expected wait. `published_at`: when it is published (wall clock), stamped on it."""
        key = transcript.utterance_id
        worker = self.workers.get(identity)
        if worker is not None:
            worker.last_seen = now
            worker.in_flight.pop(key, None)
        if key in self._done:
            self.stats.duplicate_transcripts += 1
            return None
        owner = self._owner.pop(key, None)
        if owner is not None and owner != identity and owner in self.workers:
            self.workers[owner].in_flight.pop(key, None)
        if key in self._queued:  # re-queued meanwhile: it is done now, do not run it again
            self._unqueue(key)
            self.pending = deque(u for u in self.pending if u.utterance_id != key)
        self._remember_done(key)
        self.stats.published += 1
        self._published_at.append((now, latency_ms))
        if published_at:
            transcript = msgspec.structs.replace(transcript, published_at=published_at)
        self._answered(transcript)
        return transcript

    def _remember_done(self, key: str) -> None:
        self._done[key] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)

    def _answered(self, transcript: Transcript) -> None:
        """An utterance's one transcript is published: count it; a call's, unless it is an
        error, also gives its eos -> transcript latency (as `rtcore launch` reports it: HTTP
        requests' and failures' are not the callers' latency)."""
        telemetry.ASR_UTTERANCES.labels(result=transcript_result(transcript)).inc()
        if (transcript.published_at and transcript.eos_at and not transcript.error
                and transcript.call_id != HTTP_CALL_ID):
            telemetry.EOS_TO_TRANSCRIPT.observe(transcript.published_at - transcript.eos_at)

    def _enqueue(self, utterance: UtteranceReady, at: float, front: bool = False) -> None:
        if front:
            self.pending.appendleft(utterance)
        else:
            self.pending.append(utterance)
        window = self.policy.window_for((utterance.end_sample - utterance.start_sample) / SAMPLE_RATE)
        self._queued[utterance.utterance_id] = window
        self._queued_at[utterance.utterance_id] = at
        self._depth[window] += 1

    def _unqueue(self, key: str) -> None:
        """Forget that `key` is queued (the caller takes it out of `pending`)."""
        window = self._queued.pop(key, None)
        if window is not None:
            self._depth[window] -= 1
        self._queued_at.pop(key, None)

    def _recent(self, now: float) -> deque[tuple[float, float | None]]:
        while self._published_at and self._published_at[0][0] < now - THROUGHPUT_WINDOW_S:
            self._published_at.popleft()
        return self._published_at

    def throughput(self, now: float) -> float:
        """Transcripts per second over the last THROUGHPUT_WINDOW_S."""
        return len(self._recent(now)) / THROUGHPUT_WINDOW_S

    def expected_wait_ms(self, now: float) -> float:
        """How long a new utterance can expect to wait before it is transcribed: the 90th
        percentile of what the transcripts of the last THROUGHPUT_WINDOW_S waited (eos->transcript
        less their batch's run), or the age of the oldest utterance still queued here if that is
        longer (a backlog builds up before transcripts show it). Measured, not modelled: a queue
        under light load empties at once whatever its length."""
        latencies = sorted(ms for _, ms in self._recent(now) if ms is not None)
        recent = latencies[min(len(latencies) - 1, int(0.9 * len(latencies)))] if latencies else 0.0
        oldest = (now - min(self._queued_at.values())) * 1000 if self._queued_at else 0.0
        return max(recent, oldest)

    def expire(self, now: float) -> None:
        """Presume silent workers dead and re-queue their utterances."""
        for worker in [w for w in self.workers.values() if now - w.last_seen > self.worker_timeout_s]:
            log.warning("ASR worker %s (pid %d) silent for %.0f s: re-queueing %d utterances",
                        worker.name, worker.pid, now - worker.last_seen, len(worker.in_flight))
            self._forget(worker)

    def forget(self, identity: bytes) -> None:
        """A worker that can no longer be reached: re-queue what it holds."""
        worker = self.workers.get(identity)
        if worker is not None:
            self._forget(worker)

    def _forget(self, worker: WorkerState) -> None:
        self.workers.pop(worker.identity, None)
        # Back to the front, oldest first: they have waited longest.
        known = [u for u in worker.in_flight.values() if u is not None]
        for utterance in sorted(known, key=lambda u: u.eos_at, reverse=True):
            if self._owner.get(utterance.utterance_id) == worker.identity:
                del self._owner[utterance.utterance_id]
                self._enqueue(utterance, time.monotonic(), front=True)
                self.stats.requeued += 1
        for key, held in worker.in_flight.items():
            # Adopted from the worker's list, its submitter's copy not here yet: that copy is
            # queued like a new utterance when it comes (submitters resend at our start).
            if held is None and self._owner.get(key) == worker.identity:
                del self._owner[key]
        worker.in_flight.clear()

    def status(self, now: float, pid: int, started_at: float) -> AsrStatus:
        """The AsrStatus to publish: who this dispatcher is (pid, wall-clock start) and how
        loaded. Its figures are also set on the Prometheus gauges, so that a Grafana panel shows
        what admission control reads."""
        workers = self.workers.values()
        in_flight = sum(len(w.in_flight) for w in workers)
        capacity = sum(w.capacity for w in workers)
        expected_wait_ms = self.expected_wait_ms(now)
        telemetry.ASR_IN_FLIGHT.set(in_flight)
        telemetry.ASR_CAPACITY.set(capacity)
        telemetry.ASR_EXPECTED_WAIT.set(expected_wait_ms / 1000)
        for window, queued in self._depth.items():  # every bucket: an empty one is a series at 0
            telemetry.ASR_QUEUE_DEPTH.labels(window=window_label(window)).set(queued)
        return AsrStatus(pid=pid, started_at=started_at, pending=len(self.pending), in_flight=in_flight,
                         workers=len(workers), capacity=capacity, throughput=self.throughput(now),
                         expected_wait_ms=expected_wait_ms, queue_limit=self.queue_limit,
                         refused_full=self.stats.refused_full)

    def metrics(self) -> dict[str, float]:
        s = self.stats
        return {"pending": float(len(self.pending)), "in_flight": float(len(self._owner)),
                "workers": float(len(self.workers)), "received": float(s.received),
                "dispatched": float(s.dispatched), "published": float(s.published), "requeued": float(s.requeued),
                "duplicate_utterances": float(s.duplicate_utterances),
                "duplicate_transcripts": float(s.duplicate_transcripts), "adopted": float(s.adopted),
                "refused_full": float(s.refused_full), "queue_limit": float(self.queue_limit)}
