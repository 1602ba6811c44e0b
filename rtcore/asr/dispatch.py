"""The ASR dispatcher's bookkeeping: every utterance gets exactly one transcript.

Utterances come from the VAD (UtteranceReady on the bus). Workers announce their capacity
(AsrCredit); the dispatcher hands each pending utterance to the worker with the most free capacity and
remembers it as in flight. A worker that comes back under a new pid (the supervisor restarted it)
or stays silent for `worker_timeout_s` is presumed dead: its in-flight utterances go back to the
front of the queue. Transcripts go back through the dispatcher, which publishes the first one for
each utterance id and drops any later duplicate (a worker presumed dead that was only slow).
Socket-free, so it is tested directly; procs/asr_dispatch.py wires it to ZeroMQ.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from rtcore.runtime.messages import AsrCredit, Transcript, UtteranceReady

log = logging.getLogger(__name__)

# Utterance ids remembered as done, to recognise duplicates (a few minutes of a busy system).
DONE_MEMORY = 100_000


@dataclass
class WorkerState:
    identity: bytes  # the ZeroMQ routing id: "<worker>.<pid>"
    name: str
    pid: int
    capacity: int = 0
    last_seen: float = 0.0
    in_flight: dict[str, UtteranceReady] = field(default_factory=dict)

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


class AsrDispatcher:
    def __init__(self, worker_timeout_s: float = 10.0) -> None:
        self.worker_timeout_s = worker_timeout_s
        self.pending: deque[UtteranceReady] = deque()
        self.workers: dict[bytes, WorkerState] = {}
        self.stats = DispatchStats()
        self._owner: dict[str, bytes] = {}  # in-flight utterance id -> worker identity
        self._queued: set[str] = set()
        self._done: OrderedDict[str, None] = OrderedDict()

    def submit(self, utterance: UtteranceReady) -> bool:
        key = utterance.utterance_id
        if key in self._done or key in self._queued or key in self._owner:
            self.stats.duplicate_utterances += 1
            return False
        self.pending.append(utterance)
        self._queued.add(key)
        self.stats.received += 1
        return True

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

    def assign(self) -> list[tuple[bytes, UtteranceReady]]:
        """Hand pending utterances to workers with free capacity; returns (worker identity, utterance)."""
        out: list[tuple[bytes, UtteranceReady]] = []
        while self.pending:
            worker = max(self.workers.values(), key=lambda w: w.free, default=None)
            if worker is None or worker.free <= 0:
                break
            utterance = self.pending.popleft()
            self._queued.discard(utterance.utterance_id)
            worker.in_flight[utterance.utterance_id] = utterance
            self._owner[utterance.utterance_id] = worker.identity
            self.stats.dispatched += 1
            out.append((worker.identity, utterance))
        return out

    def complete(self, identity: bytes, transcript: Transcript, now: float) -> Transcript | None:
        """A worker's transcript: returned if it is the first for its utterance, else None."""
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
            self._queued.discard(key)
            self.pending = deque(u for u in self.pending if u.utterance_id != key)
        self._done[key] = None
        if len(self._done) > DONE_MEMORY:
            self._done.popitem(last=False)
        self.stats.published += 1
        return transcript

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
        for utterance in sorted(worker.in_flight.values(), key=lambda u: u.eos_at, reverse=True):
            if self._owner.get(utterance.utterance_id) == worker.identity:
                del self._owner[utterance.utterance_id]
                self.pending.appendleft(utterance)
                self._queued.add(utterance.utterance_id)
                self.stats.requeued += 1
        worker.in_flight.clear()

    def metrics(self) -> dict[str, float]:
        s = self.stats
        return {"pending": float(len(self.pending)), "in_flight": float(len(self._owner)),
                "workers": float(len(self.workers)), "received": float(s.received),
                "dispatched": float(s.dispatched), "published": float(s.published), "requeued": float(s.requeued),
                "duplicate_utterances": float(s.duplicate_utterances),
                "duplicate_transcripts": float(s.duplicate_transcripts)}
