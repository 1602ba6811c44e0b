"""Call state and lead records in Redis, written so that a Redis outage loses nothing.

Keys (prefix `rtcore:`), a single box (LeadStore(node="")):
- `call:<id>`          hash: the call's working state (dialog state JSON, ring slot and generation,
                       RTP source, helper channels, playbacks): what a restarted dialog process needs
                       to resume the call. Its TTL (`redis_call_ttl_s`) is renewed at every write, so
                       it expires that long after the call's last change;
- `call:<id>:bot_speaking` "1"/"0" while the bot speaks on that call (same TTL), and `bot_speaking`
                       (no prefix, the seed's global flag: "1" while the bot speaks on any call);
- `calls:active`       set of the ids of the calls in progress (removed when a call ends);
- `lead:<id>`          the lead record (JSON, rewritten whole at each change: idempotent); never expires;
- `leads`              sorted set of lead ids by call start time.

A node of a cluster (LeadStore(node=<node_id>)) shares the Redis with the others: its working keys
are its own, `node:<node>:call:<id>`, `node:<node>:call:<id>:bot_speaking`, `node:<node>:bot_speaking`
and `node:<node>:calls:active` (a restarted dialog takes back its node's calls, never another's);
its leads are `lead:<node>:<id>`, in the same `leads` sorted set as member `<node>:<id>` (two nodes
may see the same call id), and the record carries its `node`. The member is always what follows
`lead:` in the record's key, so `read_leads` reads single-box and clustered leads alike.

Every write is an idempotent operation queued to a writer task. If Redis is unreachable the
writer keeps the operations, appends them to a spool file in the data directory (so a restart of
the process loses nothing either), and retries with backoff; when Redis answers again the spool is
replayed in order, then the queue. Calls never wait for Redis.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from rtcore.runtime.redis_client import async_client_for_url

log = logging.getLogger(__name__)

PREFIX = "rtcore:"
GLOBAL_BOT_SPEAKING = "bot_speaking"  # the seed's key, kept for compatibility
ACTIVE_CALLS = f"{PREFIX}calls:active"
CALL_TTL_S = 3600


@dataclass
class Turn:
    at: float
    prompt: list[str]  # what the bot said before this turn
    transcript: str = ""
    intent: str = ""
    score: float = 0.0
    source: str = "speech"  # speech | dtmf | silence | noise | resume
    latency_ms: dict[str, float] = field(default_factory=dict)  # eos_to_transcript, eos_to_reply, ...
    utterance_id: str = ""  # the transcribed utterance (speech turns)
    slots: dict[str, Any] = field(default_factory=dict)  # what the classifier read in it (last words)
    after_hangup: bool = False  # the caller's last words, transcribed after the call ended


@dataclass
class Lead:
    call_id: str
    caller: str
    started_at: float
    ended_at: float = 0.0
    zip_code: str | None = None
    owner: bool | None = None
    heating: str | None = None
    callback: bool | None = None
    slot: dict[str, Any] | None = None
    outcome: str = ""  # qualified | not_eligible | refused | abandoned | error
    end_reason: str = ""  # who or what ended the call: "caller hung up", "bot hung up", ...
    # The call's recording, both directions, as Asterisk names it: <name>.<format> in Asterisk's
    # spool/asterisk/recording/ on the Asterisk host (ARI: GET /recordings/stored/<name>/file).
    recording: str = ""
    turns: list[Turn] = field(default_factory=list)
    node: str = ""  # the cluster node that took the call (empty: a single box)

    def to_json(self) -> str:
        text = json.dumps(asdict(self), ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from some odd input: escaped, still the same JSON
            text = json.dumps(asdict(self))
        return text

    @classmethod
    def from_json(cls, text: str | bytes) -> Lead:
        data = json.loads(text)
        turn_fields = set(Turn.__dataclass_fields__)
        data["turns"] = [Turn(**{k: v for k, v in t.items() if k in turn_fields}) for t in data.get("turns", [])]
        # A lead written by another version of rtcore may carry fields this one does not know.
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass
class CallRecord:
    """What Redis holds of a call in progress: its working state (decoded) and its lead."""

    call_id: str
    state: dict[str, Any]
    lead: Lead | None


# ["set", key, value, ttl_or_0] | ["hset", key, {field: value}, ttl_or_0] | ["zadd", key, score, member]
# | ["sadd", key, member] | ["srem", key, member]
Op = list[Any]


def lead_member(node: str, call_id: str) -> str:
    """The lead's member in `rtcore:leads`, and what follows `rtcore:lead:` in its key."""
    return f"{node}:{call_id}" if node else call_id


class LeadStore:
    """`client`: the Redis client (rtcore.runtime.redis_client.async_client(settings)), a factory
    of one, or a URL without credentials (the private redis-server); the store owns it and closes it.
    `node`: this node's id in a cluster, whose keys are then its own (module docstring); empty on
    a single box."""

    def __init__(self, client: aioredis.Redis | Callable[[], aioredis.Redis] | str, spool_path: Path,
                 retry_max_s: float = 5.0, call_ttl_s: float = CALL_TTL_S, node: str = "") -> None:
        self.spool_path = Path(spool_path)
        self.retry_max_s = retry_max_s
        self.call_ttl_s = int(call_ttl_s)
        self.node = node
        if isinstance(client, str):
            self._client = async_client_for_url(client)
        elif isinstance(client, aioredis.Redis):
            self._client = client
        else:
            self._client = client()
        working = f"{PREFIX}node:{node}:" if node else PREFIX
        self._call_prefix = f"{working}call:"
        self.active_calls_key = f"{working}calls:active" if node else ACTIVE_CALLS
        self._bot_speaking_key = f"{working}bot_speaking" if node else GLOBAL_BOT_SPEAKING
        self._queue: deque[Op] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._speaking: set[str] = set()
        self.connected = True
        self.written = 0
        self.spooled = 0

    # --- what the controller calls (never blocks on Redis) ----------------------------------
    def save_lead(self, lead: Lead) -> None:
        """The lead, stamped with this store's node."""
        lead.node = self.node
        member = lead_member(self.node, lead.call_id)
        self._push(["set", f"{PREFIX}lead:{member}", lead.to_json(), 0])
        self._push(["zadd", f"{PREFIX}leads", lead.started_at, member])

    def save_call_state(self, call_id: str, fields: dict[str, Any], ended: bool = False) -> None:
        """The call's working state; `ended` takes it off the active set (the hash then expires)."""
        # Every field JSON-encoded, strings included, so that reading back restores the types.
        encoded = {k: json.dumps(v, ensure_ascii=False) for k, v in {**fields, "ended": ended}.items()}
        self._push(["hset", f"{self._call_prefix}{call_id}", encoded, self.call_ttl_s])
        self._push(["srem" if ended else "sadd", self.active_calls_key, call_id])

    def set_bot_speaking(self, call_id: str, speaking: bool) -> None:
        if speaking:
            self._speaking.add(call_id)
        else:
            self._speaking.discard(call_id)
        self._push(["set", f"{self._call_prefix}{call_id}:bot_speaking", "1" if speaking else "0", self.call_ttl_s])
        self._push(["set", self._bot_speaking_key, "1" if self._speaking else "0", 0])

    @property
    def backlog(self) -> int:
        return len(self._queue) + self.spooled

    def _push(self, op: Op) -> None:
        self._queue.append(op)
        self._wake.set()

    # --- the writer ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lead-store-writer")
        self._wake.set()  # a spool left by an earlier process is replayed at once

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every write so far (and any spool) reached Redis; False if not within timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue or self.spool_path.exists() or not self.connected:
            if time.monotonic() >= deadline:
                return False
            self._wake.set()
            await asyncio.sleep(0.02)
        return True

    async def load_active_calls(self) -> list[CallRecord]:
        """The calls Redis says are in progress, with their state and lead (read directly, not
        queued: a restarted dialog process reads what its predecessor wrote). Raises RedisError
        or OSError when Redis cannot be read."""
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m)
                     for m in await self._client.smembers(self.active_calls_key))
        records = []
        for call_id in ids:
            raw_state = await self._client.hgetall(f"{self._call_prefix}{call_id}")
            state: dict[str, Any] = {}
            for key, value in raw_state.items():
                name = key.decode() if isinstance(key, bytes) else str(key)
                text = value.decode() if isinstance(value, bytes) else str(value)
                try:
                    state[name] = json.loads(text)
                except ValueError:
                    log.warning("call %s: unreadable field %r in Redis", call_id, name)
            raw_lead = await self._client.get(f"{PREFIX}lead:{lead_member(self.node, call_id)}")
            lead = None
            if raw_lead is not None:
                try:
                    lead = Lead.from_json(raw_lead)
                except (ValueError, TypeError) as exc:
                    log.error("call %s: unreadable lead in Redis (%s)", call_id, exc)
            records.append(CallRecord(call_id, state, lead))
        return records

    async def close(self, flush_timeout_s: float = 5.0) -> None:
        """Write what is queued (or spool it if Redis is away), then stop."""
        if self._task is not None:
            deadline = time.monotonic() + flush_timeout_s
            while self._queue and self.connected and time.monotonic() < deadline:
                self._wake.set()
                await asyncio.sleep(0.01)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._queue:
            self._spool(list(self._queue))
            self._queue.clear()
        await self._client.aclose()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self.spool_path.exists():
                    await self._replay_spool()
                while self._queue:
                    batch = [self._queue[i] for i in range(min(len(self._queue), 256))]
                    await self._apply(batch)
                    for _ in batch:
                        self._queue.popleft()
                if not self.connected:
                    log.info("Redis is back: backlog written")
                self.connected = True
                delay = 0.1
            except (RedisError, OSError) as exc:
                if self.connected:
                    log.error("Redis unreachable (%s): keeping call records, spooled to %s", exc, self.spool_path)
                self.connected = False
                # Spool, so a restart during the outage loses nothing either.
                self._spool(list(self._queue))
                self._queue.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)
                self._wake.set()

    async def _apply(self, ops: list[Op]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for op in ops:
            kind = op[0]
            if kind == "set":
                pipe.set(op[1], op[2], ex=op[3] or None)
            elif kind == "hset":
                pipe.hset(op[1], mapping=op[2])
                if op[3]:
                    pipe.expire(op[1], op[3])
            elif kind == "zadd":
                pipe.zadd(op[1], {op[3]: op[2]})
            elif kind == "sadd":
                pipe.sadd(op[1], op[2])
            elif kind == "srem":
                pipe.srem(op[1], op[2])
        await pipe.execute()
        self.written += len(ops)

    def _spool(self, ops: list[Op]) -> None:
        if not ops:
            return
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a", encoding="utf-8") as f:
            for op in ops:
                f.write(json.dumps(op) + "\n")  # ASCII: any string can be spooled
            f.flush()
            os.fsync(f.fileno())
        self.spooled += len(ops)

    async def _replay_spool(self) -> None:
        ops = [json.loads(line) for line in self.spool_path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for start in range(0, len(ops), 256):
            await self._apply(ops[start:start + 256])
        self.spool_path.unlink()
        log.info("replayed %d spooled Redis writes", len(ops))
        self.spooled = 0


# --- reading (export) -----------------------------------------------------------------------
def read_leads(client: Any) -> Iterable[Lead]:
    """Every lead of every node in start order (single-box and clustered alike: the member is
    the key's suffix), from a synchronous redis client."""
    for member in client.zrange(f"{PREFIX}leads", 0, -1):
        raw = client.get(f"{PREFIX}lead:{member.decode() if isinstance(member, bytes) else member}")
        if raw is not None:
            yield Lead.from_json(raw)


CSV_COLUMNS = ["call_id", "caller", "started_at", "ended_at", "outcome", "zip_code", "owner", "heating", "callback",
               "slot_day", "slot_period", "turns", "end_reason", "recording", "node"]


def export_leads(leads: Iterable[Lead], fmt: str) -> str:
    if fmt == "jsonl":
        return "".join(lead.to_json() + "\n" for lead in leads)
    if fmt != "csv":
        raise ValueError(f"unknown export format {fmt!r} (csv or jsonl)")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for lead in leads:
        slot = lead.slot or {}
        writer.writerow([lead.call_id, lead.caller, _iso(lead.started_at), _iso(lead.ended_at), lead.outcome,
                         lead.zip_code or "", _yes_no(lead.owner), lead.heating or "", _yes_no(lead.callback),
                         slot.get("day", ""), slot.get("period", ""), len(lead.turns), lead.end_reason,
                         lead.recording, lead.node])
    return out.getvalue()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) if t else ""


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")
