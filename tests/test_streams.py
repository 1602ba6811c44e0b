"""The cluster's utterance stream on a real Redis: utterances out with their audio, exactly one
transcript back per utterance, whatever dies, retries or is claimed (rtcore.asr.streams)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from rtcore.asr.streams import NO_ASR_WAIT_MS, StreamConsumer, StreamGateway, Taken, pcm_of
from rtcore.runtime.cluster import ClusterKeys, NodeInfo, NodeRegistry, cluster_snapshot, live_nodes, stream_state
from rtcore.runtime.messages import Transcript, UtteranceReady
from rtcore.runtime.redis_server import PrivateRedis

KEYS = ClusterKeys("test")


@pytest.fixture
def client(short_dir: Path) -> Iterator[redis.Redis]:
    server = PrivateRedis(short_dir / "run", short_dir / "data").start()
    c = redis.Redis.from_url(server.url, socket_timeout=5.0)
    try:
        yield c
    finally:
        c.close()
        server.stop()


def utterance(i: int, call: str = "call-1") -> UtteranceReady:
    return UtteranceReady(utterance_id=f"{call}-{i}", call_id=call, slot=0, generation=1, start_sample=i * 1000,
                          end_sample=i * 1000 + 800, eos_at=time.time(), context="code postal",
                          dialog_state="ask_zip_code")


def audio(i: int) -> np.ndarray:
    return (np.arange(800, dtype=np.int16) * (i + 1)).astype(np.int16)


def transcript_for(taken: Taken, text: str = "bonjour") -> Transcript:
    u = taken.utterance
    return Transcript(utterance_id=u.utterance_id, call_id=u.call_id, text=text, eos_at=u.eos_at, worker="w")


def until(condition, timeout_s: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_an_utterance_crosses_with_its_audio_and_comes_back_once(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    consumer = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30)
    assert gateway.submit(utterance(1), audio(1)) == "queued"
    # A restarted gateway gets the VAD's resubmission: not put on the stream twice.
    assert StreamGateway(client, KEYS, "media-a", queue_limit=100).submit(utterance(1), audio(1)) == "duplicate"
    taken = consumer.take(10, block_ms=None)
    assert len(taken) == 1
    u = taken[0].utterance
    assert (u.utterance_id, u.node, u.call_id, u.context, u.dialog_state) == (
        "call-1-1", "media-a", "call-1", "code postal", "ask_zip_code")
    assert np.array_equal(pcm_of(u), audio(1))
    assert consumer.answer(taken[0], transcript_for(taken[0]))
    # Answered: acknowledged and deleted (the audio is not kept), the transcript on media-a's stream.
    assert client.xlen(KEYS.utterances) == 0
    assert client.xpending(KEYS.utterances, "asr")["pending"] == 0
    got = gateway.read_transcripts(block_ms=100)
    assert [(t.utterance_id, t.text) for _, t in got if t is not None] == [("call-1-1", "bonjour")]
    assert got[0][1] is not None and got[0][1].published_at > 0
    gateway.acknowledge([entry_id for entry_id, _ in got])
    assert client.xlen(KEYS.transcripts("media-a")) == 0
    assert gateway.read_transcripts(block_ms=50) == []


def test_a_dead_workers_utterances_are_claimed_and_answered_exactly_once(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    dead = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=0.5)
    alive = StreamConsumer(client, KEYS, "asr-y.asr-0", claim_idle_s=0.5)
    for i in range(4):
        gateway.submit(utterance(i), audio(i))
    held = dead.take(3, block_ms=None)  # then it dies, holding three
    assert len(held) == 3
    own = alive.take(10, block_ms=None)
    assert [t.utterance.utterance_id for t in own] == ["call-1-3"]
    assert alive.claim(10) == []  # not idle long enough yet: its holder may be alive
    # A live worker keeps what it holds fresh (every second in procs/asr_stream_worker.py).
    claimed = until(lambda: alive.keep_fresh([t.entry_id for t in own]) or alive.claim(10))
    assert sorted(t.utterance.utterance_id for t in claimed) == ["call-1-0", "call-1-1", "call-1-2"]
    assert alive.claimed == 3
    for t in [*own, *claimed]:
        assert alive.answer(t, transcript_for(t, "vivant"))
    # The "dead" one was only slow: its late answers add nothing.
    for t in held:
        assert not dead.answer(t, transcript_for(t, "en retard"))
    assert dead.duplicates == 3
    got = [t for _, t in gateway.read_transcripts(block_ms=100) if t is not None]
    assert sorted(t.utterance_id for t in got) == [f"call-1-{i}" for i in range(4)]
    assert {t.text for t in got} == {"vivant"}
    assert client.xlen(KEYS.utterances) == 0


def test_a_live_worker_keeps_what_it_holds_however_long_its_batch(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    slow = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=0.5)
    other = StreamConsumer(client, KEYS, "asr-y.asr-0", claim_idle_s=0.5)
    gateway.submit(utterance(1), audio(1))
    held = slow.take(1, block_ms=None)
    deadline = time.monotonic() + 1.5  # three claim idle times
    while time.monotonic() < deadline:
        slow.keep_fresh([t.entry_id for t in held])
        assert other.claim(10) == []
        time.sleep(0.1)
    assert slow.answer(held[0], transcript_for(held[0]))


def test_a_restarted_worker_takes_back_what_it_held(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    gateway.submit(utterance(1), audio(1))
    assert len(StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30).take(5, block_ms=None)) == 1
    again = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30)  # same name: the restarted process
    back = again.take_back(5)
    assert [t.utterance.utterance_id for t in back] == ["call-1-1"]
    assert again.take(5, block_ms=None) == []


def test_transcripts_a_gateway_did_not_acknowledge_go_to_its_successor(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    consumer = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30)
    for i in range(2):
        gateway.submit(utterance(i), audio(i))
    for t in consumer.take(5, block_ms=None):
        consumer.answer(t, transcript_for(t))
    assert len(gateway.read_transcripts(block_ms=100)) == 2  # read, then the gateway dies unacknowledged
    successor = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    got = successor.read_transcripts(block_ms=100)
    assert sorted(t.utterance_id for _, t in got if t is not None) == ["call-1-0", "call-1-1"]
    successor.acknowledge([e for e, _ in got])
    assert successor.read_transcripts(block_ms=50) == []


def test_media_nodes_get_only_their_own_transcripts(client: redis.Redis) -> None:
    a = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    b = StreamGateway(client, KEYS, "media-b", queue_limit=100)
    a.submit(utterance(1, "same-call"), audio(1))
    b.submit(utterance(1, "same-call"), audio(2))  # the same utterance id on another node: another utterance
    consumer = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30)
    taken = consumer.take(5, block_ms=None)
    assert sorted(t.utterance.node for t in taken) == ["media-a", "media-b"]
    for t in taken:
        consumer.answer(t, transcript_for(t, t.utterance.node))
    assert [t.text for _, t in a.read_transcripts(block_ms=100) if t] == ["media-a"]
    assert [t.text for _, t in b.read_transcripts(block_ms=100) if t] == ["media-b"]


def test_a_full_stream_refuses_with_an_error_transcript(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=2)
    assert [gateway.submit(utterance(i), audio(i)) for i in range(3)] == ["queued", "queued", "full"]
    refusal = gateway.refusal(utterance(2))
    assert refusal.error and refusal.utterance_id == "call-1-2"
    assert gateway.stats.refused_full == 1


def test_an_unreadable_entry_is_dropped_not_retried_forever(client: redis.Redis) -> None:
    consumer = StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30)
    client.xadd(KEYS.utterances, {b"m": b"\x93not a message"})
    client.xadd(KEYS.utterances, {b"other": b"x"})
    assert consumer.take(5, block_ms=None) == []
    assert consumer.unreadable == 2
    assert client.xlen(KEYS.utterances) == 0


def test_status_reads_the_clusters_backlog_and_capacity(client: redis.Redis) -> None:
    gateway = StreamGateway(client, KEYS, "media-a", queue_limit=100)
    status, stream, nodes = gateway.status(pid=1, started_at=1.0)
    assert nodes == [] and status.workers == 0
    assert status.expected_wait_ms >= NO_ASR_WAIT_MS  # nobody to transcribe: calls are handed back
    registry = NodeRegistry(client, KEYS, ttl_s=5)
    registry.register(NodeInfo(node="asr-x", role="asr", asr_workers=2, asr_capacity=16, asr_batch_size=4))
    registry.register(NodeInfo(node="media-a", role="media", call_slots=8, calls_active=3, ari_app="rtcore-media-a"))
    for i in range(3):
        gateway.submit(utterance(i), audio(i))
    StreamConsumer(client, KEYS, "asr-x.asr-0", claim_idle_s=30).take(1, block_ms=None)
    time.sleep(0.3)  # the backlog's age is what is measured
    status, stream, nodes = gateway.status(pid=1, started_at=1.0)
    assert [n.node for n in nodes] == ["asr-x", "media-a"]
    assert (status.workers, status.capacity, status.pending, status.in_flight) == (2, 16, 2, 1)
    assert stream.length == 3 and stream.oldest_waiting_s >= 0.25 and stream.oldest_taken_s >= 0.25
    assert 250 <= status.expected_wait_ms < NO_ASR_WAIT_MS
    snapshot = cluster_snapshot(client, KEYS)
    assert snapshot["utterances"]["waiting"] == 2
    assert [c["name"] for c in snapshot["utterances"]["consumers"]] == ["asr-x.asr-0"]
    assert snapshot["nodes"][1]["calls_active"] == 3 and snapshot["transcripts_unread"] == {"media-a": 0}
    registry.deregister("asr-x")
    assert [n.node for n in live_nodes(client, KEYS)] == ["media-a"]


def test_a_registration_expires_with_its_node(client: redis.Redis) -> None:
    registry = NodeRegistry(client, KEYS, ttl_s=1)
    registry.register(NodeInfo(node="asr-x", role="asr", asr_workers=1, asr_capacity=8))
    assert client.pttl(KEYS.node("asr-x")) > 0
    info = live_nodes(client, KEYS)[0]
    assert (info.role, info.asr_workers, info.draining) == ("asr", 1, False)
    until(lambda: not live_nodes(client, KEYS), timeout_s=5)
    assert stream_state(client, KEYS).length == 0
