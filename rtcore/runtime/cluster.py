"""The cluster's shared state in Redis: its key names, the node registry, and what
`rtcore cluster status` reads.

Nodes of one cluster share one Redis and one `cluster_name`. Every key is under
`rtcore:{<cluster>}:` (the braces are a Redis Cluster hash tag: all of one cluster's keys live on
one shard, so the Lua script that answers an utterance may touch several of them):

- `asr:utterances`        stream: every media node's utterances (StreamedUtterance, with audio);
                          consumer group `asr`, one consumer per ASR worker (`<node>.<worker>`);
- `asr:transcripts:<node>` stream: the transcripts for the media node `<node>`; consumer group
                          `gateway` (its gateway reads what it has not acknowledged after a restart);
- `asr:queued:<node>:<utterance>` / `asr:done:<node>:<utterance>`: set once (NX), so that an
                          utterance is put on the stream once and answered once, whatever is
                          retried or claimed (they expire after DEDUP_TTL_S);
- `node:<node>`           hash: the node's registration, refreshed every second by its
                          supervisor, expiring after `node_ttl_s` (a dead node disappears).

Library code (socket-free but for the Redis client it is given): the supervisor registers, the
ASR gateway and stream workers (rtcore.asr.streams) use the keys, the CLI reads the snapshot.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

log = logging.getLogger(__name__)

UTTERANCE_GROUP = "asr"
GATEWAY_GROUP = "gateway"
DEDUP_TTL_S = 3600  # an utterance is retried or claimed within minutes, never an hour later


@dataclass(frozen=True)
class ClusterKeys:
    cluster: str

    @property
    def prefix(self) -> str:
        return f"rtcore:{{{self.cluster}}}:"

    @property
    def utterances(self) -> str:
        return f"{self.prefix}asr:utterances"

    def transcripts(self, node: str) -> str:
        return f"{self.prefix}asr:transcripts:{node}"

    def queued(self, node: str, utterance_id: str) -> str:
        return f"{self.prefix}asr:queued:{node}:{utterance_id}"

    def done(self, node: str, utterance_id: str) -> str:
        return f"{self.prefix}asr:done:{node}:{utterance_id}"

    def node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    @property
    def node_pattern(self) -> str:
        return f"{self.prefix}node:*"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_id_ms(entry_id: Any) -> int:
    """The milliseconds timestamp of a stream entry id ("<ms>-<seq>"): when it was added."""
    return int(_text(entry_id).split("-", 1)[0])


def ensure_group(client: redis.Redis, stream: str, group: str) -> None:
    """The consumer group, reading the stream from its start (id 0: entries added before the
    group existed are not skipped), created with the stream if need be."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@dataclass
class NodeInfo:
    """A node's registration, as `rtcore cluster status` shows it."""

    node: str
    role: str
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    updated_at: float = 0.0
    ari_app: str = ""
    call_slots: int = 0
    calls_active: int = 0
    draining: bool = False
    asr_workers: int = 0  # up and ready
    asr_capacity: int = 0  # utterances its workers hold at once (2 batches each)
    asr_batch_size: int = 0

    def to_hash(self) -> dict[str, str]:
        return {k: str(int(v) if isinstance(v, bool) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: Mapping[Any, Any]) -> NodeInfo:
        text = {_text(k): _text(v) for k, v in data.items()}
        out: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            if name not in text:
                continue
            kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
            raw = text[name]
            try:
                out[name] = (int(float(raw)) if kind == "int" else float(raw) if kind == "float"
                             else raw in ("1", "True") if kind == "bool" else raw)
            except ValueError:
                continue  # a field written by another version: left at its default
        out.setdefault("node", "")
        out.setdefault("role", "")
        return cls(**out)


class NodeRegistry:
    """The node's registration in Redis, refreshed by its supervisor every second. A Redis that
    does not answer is logged once and retried at the next refresh: calls never wait for it."""

    def __init__(self, client: redis.Redis, keys: ClusterKeys, ttl_s: float) -> None:
        self.client = client
        self.keys = keys
        self.ttl_ms = int(ttl_s * 1000)
        self._failing = False

    def register(self, info: NodeInfo) -> bool:
        key = self.keys.node(info.node)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=info.to_hash())  # type: ignore[arg-type]
                pipe.pexpire(key, self.ttl_ms)
                pipe.execute()
        except redis.RedisError as exc:
            if not self._failing:
                log.warning("cannot register node %s in Redis: %s (retrying every second)", info.node, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("node %s registered in Redis again", info.node)
        self._failing = False
        return True

    def deregister(self, node: str) -> None:
        try:
            self.client.delete(self.keys.node(node))
        except redis.RedisError as exc:
            log.warning("cannot remove node %s from Redis: %s (it expires by itself)", node, exc)


def live_nodes(client: redis.Redis, keys: ClusterKeys) -> list[NodeInfo]:
    """Every registered node (registrations expire: these are alive), by name."""
    nodes = []
    for key in client.scan_iter(match=keys.node_pattern, count=100):
        data = client.hgetall(key)
        if data:
            nodes.append(NodeInfo.from_hash(data))
    return sorted(nodes, key=lambda n: n.node)


@dataclass
class StreamState:
    """The utterance stream as its consumer group sees it."""

    length: int = 0  # entries in the stream: answered ones are deleted, so waiting + taken
    waiting: int = 0  # not yet taken by any ASR worker
    taken: int = 0  # taken, not answered yet (the group's pending entries)
    oldest_waiting_s: float = 0.0  # how long the oldest entry nobody has taken has waited
    oldest_taken_s: float = 0.0
    consumers: list[dict[str, Any]] = field(default_factory=list)  # name, pending, idle_s


def stream_state(client: redis.Redis, keys: ClusterKeys, now: float | None = None) -> StreamState:
    """The queue depth and lag of the cluster's utterance stream (a few O(1) commands)."""
    now = time.time() if now is None else now
    stream = keys.utterances
    state = StreamState()
    state.length = int(client.xlen(stream))
    groups = client.xinfo_groups(stream) if state.length or client.exists(stream) else []
    group = next((g for g in groups if g["name"] in (UTTERANCE_GROUP, UTTERANCE_GROUP.encode())), None)
    if group is None:
        state.waiting = state.length
        first: Any = client.xrange(stream, count=1)
        if first:
            state.oldest_waiting_s = max(0.0, now - stream_id_ms(first[0][0]) / 1000)
        return state
    state.taken = int(group["pending"])
    state.waiting = max(0, state.length - state.taken)
    last = group["last-delivered-id"]
    last = last.decode() if isinstance(last, bytes) else str(last)
    after: Any = client.xrange(stream, min=f"({last}", count=1)
    if after:
        state.oldest_waiting_s = max(0.0, now - stream_id_ms(after[0][0]) / 1000)
    if state.taken:
        summary = client.xpending(stream, UTTERANCE_GROUP)
        if summary.get("min"):
            state.oldest_taken_s = max(0.0, now - stream_id_ms(summary["min"]) / 1000)
    for consumer in client.xinfo_consumers(stream, UTTERANCE_GROUP):
        name = consumer["name"]
        state.consumers.append({"name": name.decode() if isinstance(name, bytes) else name,
                                "pending": int(consumer["pending"]), "idle_s": int(consumer["idle"]) / 1000})
    return state


def cluster_snapshot(client: redis.Redis, keys: ClusterKeys) -> dict[str, Any]:
    """What `rtcore cluster status` prints: nodes, the utterance stream, each media node's replies."""
    nodes = live_nodes(client, keys)
    stream = stream_state(client, keys)
    replies = {n.node: int(client.xlen(keys.transcripts(n.node))) for n in nodes if n.role != "asr"}
    return {"cluster": keys.cluster, "at": time.time(), "nodes": [asdict(n) for n in nodes],
            "utterances": asdict(stream), "transcripts_unread": replies}
