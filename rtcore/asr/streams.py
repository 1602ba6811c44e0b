"""Utterances across machines: the cluster's Redis stream, its consumer group, and exactly one
transcript per utterance.

A media node's **gateway** (procs/asr_gateway.py) stands where a single box has its dispatcher:
the VAD and the HTTP API submit to it as they would to the dispatcher (same socket, same
resubmission after a restart). It reads each utterance's audio from the rings and adds it to the
utterance stream (XADD), at most once per utterance id (a `queued` key set NX: a restarted
gateway's resubmissions are not added twice). It reads its own node's transcript stream through
a consumer group, publishes each transcript on the node's bus and acknowledges it, so a
gateway restarted between the two publishes what it had not acknowledged (the subscribers drop a
second copy by utterance id, as they do for the dispatcher).

**ASR workers** of any node (procs/asr_stream_worker.py) read the utterance stream through one
consumer group (XREADGROUP COUNT: as many as they have room for), batch and transcribe them with
the same batcher and window policy as a single box, and answer each with the ANSWER script: in
one atomic step it sets the utterance's `done` key (NX), adds the transcript to its node's stream
only if that key was not set yet, acknowledges the entry and deletes it (its audio is not kept).
Delivery is at least once: a worker that dies leaves its entries pending; any other worker claims
those idle longer than `stream_claim_idle_s` (XAUTOCLAIM). A worker keeps the entries it holds
fresh (XCLAIM to itself, which resets their idle time) while it is alive, however long its batch
takes, so only a dead worker's entries are claimed. The `done` key makes the answer exactly once:
a worker presumed dead that was only slow finds it set and adds nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt
import redis

from rtcore.asr.dispatch import QUEUE_FULL, transcript_result
from rtcore.runtime import telemetry
from rtcore.runtime.cluster import (
    DEDUP_TTL_S,
    GATEWAY_GROUP,
    UTTERANCE_GROUP,
    ClusterKeys,
    NodeInfo,
    StreamState,
    ensure_group,
    live_nodes,
    stream_state,
)
from rtcore.runtime.messages import (
    HTTP_CALL_ID,
    AsrStatus,
    MessageError,
    StreamedUtterance,
    Transcript,
    UtteranceReady,
    decode,
    encode,
)

log = logging.getLogger(__name__)

FIELD = b"m"  # each stream entry has one field: the encoded message
REPLY_MAXLEN = 100_000  # a media node down for long: its unread transcripts are bounded (trimmed, oldest first)
THROUGHPUT_WINDOW_S = 10.0
DONE_MEMORY = 100_000

# KEYS: utterance stream, the owner's transcript stream, the utterance's done key.
# ARGV: group, entry id, encoded transcript, done TTL, transcript stream max length.
# Returns 1 if this answer is the utterance's transcript, 0 if another had answered it already.
ANSWER = """
local first = redis.call('SET', KEYS[3], '1', 'NX', 'EX', ARGV[4])
if first then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'm', ARGV[3])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if first then return 1 end
return 0
"""

# KEYS: utterance stream, the utterance's queued key. ARGV: encoded StreamedUtterance, queued TTL,
# the stream's length limit. Returns 1: added; 0: added before (a resubmission); -1: stream full.
SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1])
return 1
"""

Submitted = Literal["queued", "duplicate", "full"]


@dataclass
class GatewayStats:
    submitted: int = 0
    duplicate_utterances: int = 0
    refused_full: int = 0
    published: int = 0
    duplicate_transcripts: int = 0


class StreamGateway:
    """A media node's end of the stream: utterances out, its transcripts in. Synchronous Redis
    calls; procs/asr_gateway.py runs `submit` and `status` in its main loop and `read_transcripts`
    in a second thread, each with its own client."""

    def __init__(self, client: redis.Redis, keys: ClusterKeys, node: str, queue_limit: int) -> None:
        self.client = client
        self.keys = keys
        self.node = node
        self.queue_limit = queue_limit
        self.stats = GatewayStats()
        self._replies = keys.transcripts(node)
        self._read_pending = True  # first read what a predecessor left unacknowledged
        self._done: OrderedDict[str, None] = OrderedDict()
        self._waits: deque[tuple[float, float | None]] = deque()  # (monotonic, ms waited) of recent transcripts
        self._submit = client.register_script(SUBMIT)
        self._lock = threading.Lock()  # transcripts are read in one thread, the status in another
        ensure_group(client, keys.utterances, UTTERANCE_GROUP)
        ensure_group(client, self._replies, GATEWAY_GROUP)

    def submit(self, utterance: UtteranceReady, pcm: npt.NDArray[np.int16]) -> Submitted:
        """Put an utterance and its audio on the stream, once per utterance id (one atomic step:
        a gateway that dies midway has either added it or not)."""
        entry = StreamedUtterance(
            utterance_id=utterance.utterance_id, node=self.node, call_id=utterance.call_id, eos_at=utterance.eos_at,
            audio=np.ascontiguousarray(pcm, dtype="<i2").tobytes(), language=utterance.language,
            context=utterance.context, dialog_state=utterance.dialog_state, sent_at=time.time())
        added = self._submit(keys=[self.keys.utterances, self.keys.queued(self.node, utterance.utterance_id)],
                             args=[encode(entry), DEDUP_TTL_S, self.queue_limit])
        if added == -1:
            self.stats.refused_full += 1
            telemetry.ASR_REFUSED.inc()
            log.error("cluster ASR stream full (%d utterances): utterance %s refused", self.queue_limit,
                      utterance.utterance_id)
            return "full"
        if added == 0:
            self.stats.duplicate_utterances += 1
            return "duplicate"
        self.stats.submitted += 1
        return "queued"

    def refusal(self, utterance: UtteranceReady, error: str = QUEUE_FULL) -> Transcript:
        """The error transcript of an utterance that cannot go on the stream (full, audio gone)."""
        transcript = Transcript(utterance_id=utterance.utterance_id, call_id=utterance.call_id, text="", error=error,
                                eos_at=utterance.eos_at, published_at=time.time())
        self._answered(transcript, None)
        return transcript

    def read_transcripts(self, block_ms: int, count: int = 256) -> list[tuple[bytes, Transcript | None]]:
        """This node's transcripts, oldest first, as (entry id, transcript or None if it is to
        be dropped: a duplicate, or unreadable). Acknowledge with `acknowledge` once published."""
        entries: Entries = []
        if self._read_pending:
            entries = first_stream(self.client.xreadgroup(GATEWAY_GROUP, self.node, {self._replies: "0"},
                                                          count=count))
            self._read_pending = len(entries) == count  # fewer: everything a predecessor left is read
        if not entries:
            entries = first_stream(self.client.xreadgroup(GATEWAY_GROUP, self.node, {self._replies: ">"},
                                                          count=count, block=block_ms))
        out: list[tuple[bytes, Transcript | None]] = []
        now_wall = time.time()
        for entry_id, fields in entries:
            if not fields:  # trimmed meanwhile
                out.append((entry_id, None))
                continue
            try:
                message = decode(fields[FIELD])
            except (MessageError, KeyError) as exc:
                log.error("unreadable transcript entry %s: %s", entry_id, exc)
                out.append((entry_id, None))
                continue
            if not isinstance(message, Transcript) or message.utterance_id in self._done:
                self.stats.duplicate_transcripts += isinstance(message, Transcript)
                out.append((entry_id, None))
                continue
            transcript = msgspec.structs.replace(message, published_at=now_wall)
            waited = ((now_wall - transcript.eos_at) * 1000 - transcript.inference_ms - transcript.features_ms
                      if transcript.eos_at and not transcript.error else None)
            self._answered(transcript, waited)
            out.append((entry_id, transcript))
        return out

    def acknowledge(self, entry_ids: list[bytes]) -> None:
        if entry_ids:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.xack(self._replies, GATEWAY_GROUP, *entry_ids)
                pipe.xdel(self._replies, *entry_ids)
                pipe.execute()

    def _answered(self, transcript: Transcript, waited_ms: float | None) -> None:
        """An utterance's one transcript: counted as the dispatcher counts it."""
        with self._lock:
            self._done[transcript.utterance_id] = None
            if len(self._done) > DONE_MEMORY:
                self._done.popitem(last=False)
            self.stats.published += 1
            self._waits.append((time.monotonic(), waited_ms))
        telemetry.ASR_UTTERANCES.labels(result=transcript_result(transcript)).inc()
        if (transcript.published_at and transcript.eos_at and not transcript.error
                and transcript.call_id != HTTP_CALL_ID):
            telemetry.EOS_TO_TRANSCRIPT.observe(transcript.published_at - transcript.eos_at)

    def status(self, pid: int, started_at: float) -> tuple[AsrStatus, StreamState, list[NodeInfo]]:
        """The AsrStatus of the cluster as this node's admission control needs it: the stream's
        backlog (all media nodes'), the live ASR nodes' capacity, and the expected wait: the 90th
        percentile of what this node's recent transcripts waited, or the age of the oldest
        utterance no worker has taken yet if longer. With no ASR node alive, the expected wait is
        how long the oldest utterance has waited, and at least `no_asr_wait_ms`: calls are
        handed back rather than taken with nobody to transcribe them."""
        now = time.monotonic()
        with self._lock:
            while self._waits and self._waits[0][0] < now - THROUGHPUT_WINDOW_S:
                self._waits.popleft()
            waits = sorted(ms for _, ms in self._waits if ms is not None)
        recent = waits[min(len(waits) - 1, int(0.9 * len(waits)))] if waits else 0.0
        stream = stream_state(self.client, self.keys)
        nodes = live_nodes(self.client, self.keys)
        workers = sum(n.asr_workers for n in nodes)
        capacity = sum(n.asr_capacity for n in nodes)
        expected = max(recent, stream.oldest_waiting_s * 1000)
        if workers == 0:
            expected = max(expected, NO_ASR_WAIT_MS)
        telemetry.ASR_IN_FLIGHT.set(stream.taken)
        telemetry.ASR_CAPACITY.set(capacity)
        telemetry.ASR_EXPECTED_WAIT.set(expected / 1000)
        status = AsrStatus(pid=pid, started_at=started_at, pending=stream.waiting, in_flight=stream.taken,
                           workers=workers, capacity=capacity, throughput=len(self._waits) / THROUGHPUT_WINDOW_S,
                           expected_wait_ms=expected, queue_limit=self.queue_limit,
                           refused_full=self.stats.refused_full)
        return status, stream, nodes


# No ASR worker alive in the cluster: the expected wait admission control reads (an hour).
NO_ASR_WAIT_MS = 3_600_000.0


@dataclass
class Taken:
    """A stream entry a worker holds: to answer (ANSWER) and to keep fresh."""

    entry_id: bytes
    utterance: StreamedUtterance


class StreamConsumer:
    """An ASR worker's end of the stream (one consumer of the group). Synchronous Redis calls."""

    def __init__(self, client: redis.Redis, keys: ClusterKeys, consumer: str, claim_idle_s: float) -> None:
        self.client = client
        self.keys = keys
        self.consumer = consumer
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self._answer = client.register_script(ANSWER)
        self.claimed = 0
        self.duplicates = 0  # answers another worker had given first
        self.unreadable = 0
        ensure_group(client, keys.utterances, UTTERANCE_GROUP)

    def _decode(self, entries: Entries) -> list[Taken]:
        out = []
        for entry_id, fields in entries:
            try:
                message = decode(fields[FIELD]) if fields else None
            except (MessageError, KeyError) as exc:
                message = None
                log.error("unreadable utterance entry %s: %s", entry_id, exc)
            if not isinstance(message, StreamedUtterance):
                # Nothing can ever answer it: acknowledged and deleted, not retried forever.
                self.unreadable += 1
                with self.client.pipeline(transaction=True) as pipe:
                    pipe.xack(self.keys.utterances, UTTERANCE_GROUP, entry_id)
                    pipe.xdel(self.keys.utterances, entry_id)
                    pipe.execute()
                continue
            out.append(Taken(entry_id, message))
        return out

    def take_back(self, count: int) -> list[Taken]:
        """What this consumer (the same name: a restarted worker) took and never answered."""
        return self._decode(first_stream(self.client.xreadgroup(UTTERANCE_GROUP, self.consumer,
                                                                {self.keys.utterances: "0"}, count=count)))

    def take(self, count: int, block_ms: int | None) -> list[Taken]:
        """Up to `count` new entries (waiting at most `block_ms`; None: not at all)."""
        if count <= 0:
            return []
        return self._decode(first_stream(self.client.xreadgroup(UTTERANCE_GROUP, self.consumer,
                                                                {self.keys.utterances: ">"}, count=count,
                                                                block=block_ms)))

    def claim(self, count: int) -> list[Taken]:
        """Entries another worker took and has not kept fresh for claim_idle_s: it is dead."""
        if count <= 0:
            return []
        taken: list[Taken] = []
        start = "0-0"
        while len(taken) < count:
            reply: Any = self.client.xautoclaim(self.keys.utterances, UTTERANCE_GROUP, self.consumer,
                                                self.claim_idle_ms, start_id=start, count=count - len(taken))
            start, entries = reply[0], reply[1]
            got = self._decode([e for e in entries if e[1]]) if entries else []
            for t in got:
                log.warning("utterance %s of node %s claimed: unanswered by its ASR worker for %.1f s",
                            t.utterance.utterance_id, t.utterance.node, self.claim_idle_ms / 1000)
            taken += got
            self.claimed += len(got)
            if start in (b"0-0", "0-0"):
                break
        return taken

    def keep_fresh(self, entry_ids: list[bytes]) -> None:
        """Reset the idle time of the entries held here: alive, however long the batch takes."""
        if entry_ids:
            ids: list[Any] = list(entry_ids)
            self.client.xclaim(self.keys.utterances, UTTERANCE_GROUP, self.consumer, 0, ids, justid=True)

    def answer(self, taken: Taken, transcript: Transcript) -> bool:
        """The transcript to its media node, the entry acknowledged and deleted, in one step. False:
        another worker answered it first (this one was presumed dead), nothing was added."""
        u = taken.utterance
        first = self._answer(keys=[self.keys.utterances, self.keys.transcripts(u.node), self.keys.done(u.node,
                                                                                                      u.utterance_id)],
                             args=[UTTERANCE_GROUP, taken.entry_id, encode(transcript), DEDUP_TTL_S, REPLY_MAXLEN])
        if not first:
            self.duplicates += 1
        return bool(first)


Entries = list[tuple[bytes, dict[bytes, bytes]]]


def first_stream(reply: Any) -> Entries:
    """The entries of the one stream an XREADGROUP read (RESP2 list or RESP3 map reply)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0]) if reply else []
    return list(reply[0][1])


def pcm_of(utterance: StreamedUtterance) -> npt.NDArray[np.int16]:
    return np.frombuffer(utterance.audio, dtype="<i2").astype(np.int16, copy=False)
