from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import redis

from rtcore.dialog.leads import Lead, LeadStore, Turn, export_leads, read_leads
from rtcore.runtime.redis_server import PrivateRedis


async def until(condition, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for the writer task to reach a state (yielding to it), bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def lead(i: int, outcome: str = "qualified") -> Lead:
    return Lead(
        call_id=f"call-{i}",
        caller=f"06000000{i:02d}",
        started_at=1_800_000_000.0 + i,
        ended_at=1_800_000_060.0 + i,
        zip_code="75011",
        owner=True,
        heating="gaz",
        callback=True,
        slot={"day": "mardi", "period": "matin"},
        outcome=outcome,
        turns=[
            Turn(
                at=1.0,
                prompt=["init"],
                transcript="oui",
                intent="ok_eligibility",
                score=0.9,
                latency_ms={"eos_to_reply": 420.0},
            )
        ],
    )


async def test_leads_survive_a_redis_outage(short_dir: Path) -> None:
    server = PrivateRedis(short_dir / "run", short_dir / "data").start()
    store = LeadStore(server.url, short_dir / "spool.jsonl", retry_max_s=0.2)
    store.start()
    try:
        store.save_lead(lead(1))
        store.set_bot_speaking("call-1", True)
        await until(lambda: store.backlog == 0 and store.written >= 4)
        server.stop()  # Redis goes away mid-call
        store.save_lead(lead(2))
        store.save_call_state("call-2", {"state": {"state": "ask_zip_code"}}, ended=False)
        await until(lambda: not store.connected and store.spooled > 0)
        assert (short_dir / "spool.jsonl").exists()
        server.start()  # and comes back
        await until(lambda: store.connected and store.backlog == 0)
        assert not (short_dir / "spool.jsonl").exists()
        client = redis.Redis.from_url(server.url)
        assert [lead.call_id for lead in read_leads(client)] == ["call-1", "call-2"]
        assert client.get("bot_speaking") == b"1" and client.get("rtcore:call:call-1:bot_speaking") == b"1"
        assert json.loads(client.hget("rtcore:call:call-2", "state")) == {"state": "ask_zip_code"}
        client.close()
    finally:
        await store.close()
        server.stop()


async def test_spool_written_during_an_outage_is_replayed_by_the_next_process(short_dir: Path) -> None:
    server = PrivateRedis(short_dir / "run", short_dir / "data")
    dead = LeadStore(f"unix://{short_dir}/run/redis.sock", short_dir / "spool.jsonl", retry_max_s=0.2)
    dead.start()
    dead.save_lead(lead(7, outcome="refused"))
    await until(lambda: dead.spooled > 0)
    await dead.close()  # the dialog process stops while Redis is still down
    server.start()
    try:
        store = LeadStore(server.url, short_dir / "spool.jsonl")
        store.start()
        store.save_lead(lead(8))
        await until(lambda: store.backlog == 0 and not (short_dir / "spool.jsonl").exists())
        await store.close()
        client = redis.Redis.from_url(server.url)
        leads = list(read_leads(client))
        client.close()
        assert [(x.call_id, x.outcome) for x in leads] == [("call-7", "refused"), ("call-8", "qualified")]
        assert leads[0] == lead(7, outcome="refused")  # every field round-trips
    finally:
        server.stop()


def test_export_formats() -> None:
    rows = list(csv.DictReader(io.StringIO(export_leads([lead(1), lead(2, "not_eligible")], "csv"))))
    assert [r["outcome"] for r in rows] == ["qualified", "not_eligible"]
    assert rows[0]["zip_code"] == "75011" and rows[0]["owner"] == "yes" and rows[0]["slot_day"] == "mardi"
    lines = export_leads([lead(1)], "jsonl").splitlines()
    assert Lead.from_json(lines[0]) == lead(1)


async def test_two_nodes_leads_with_the_same_call_id_are_all_exported_with_their_node(short_dir: Path) -> None:
    with PrivateRedis(short_dir / "run", short_dir / "data") as server:
        stores = {node: LeadStore(server.url, short_dir / f"spool-{node}.jsonl", node=node)
                  for node in ("", "node-a", "node-b")}  # a single box's leads, then two nodes'
        for store, outcome in zip(stores.values(), ("qualified", "refused", "not_eligible"), strict=True):
            store.start()
            store.save_lead(lead(1, outcome=outcome))
        await until(lambda: all(store.backlog == 0 and store.written == 2 for store in stores.values()))
        for store in stores.values():
            await store.close()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.get("rtcore:lead:call-1") is not None  # the single-box key, as before
            assert sorted(client.zrange("rtcore:leads", 0, -1)) == [b"call-1", b"node-a:call-1", b"node-b:call-1"]
            assert json.loads(client.get("rtcore:lead:node-b:call-1"))["node"] == "node-b"
            leads = list(read_leads(client))
        finally:
            client.close()
    assert sorted((x.node, x.call_id, x.outcome) for x in leads) == [
        ("", "call-1", "qualified"), ("node-a", "call-1", "refused"), ("node-b", "call-1", "not_eligible")]
    rows = list(csv.DictReader(io.StringIO(export_leads(leads, "csv"))))
    assert sorted((r["node"], r["call_id"], r["outcome"]) for r in rows) == [
        ("", "call-1", "qualified"), ("node-a", "call-1", "refused"), ("node-b", "call-1", "not_eligible")]
    assert sorted(json.loads(line)["node"] for line in export_leads(leads, "jsonl").splitlines()) == [
        "", "node-a", "node-b"]


async def test_a_nodes_calls_in_progress_are_its_own(short_dir: Path) -> None:
    with PrivateRedis(short_dir / "run", short_dir / "data") as server:
        a = LeadStore(server.url, short_dir / "spool-a.jsonl", node="node-a")
        b = LeadStore(server.url, short_dir / "spool-b.jsonl", node="node-b")
        single = LeadStore(server.url, short_dir / "spool.jsonl")
        for store in (a, b, single):
            store.start()
        a.save_lead(lead(1))
        a.save_call_state("call-1", {"state": {"state": "ask_zip_code"}, "slot": 3})
        a.set_bot_speaking("call-1", True)
        b.save_call_state("call-2", {"state": {"state": "init"}})
        b.save_call_state("call-1", {"state": {"state": "bye"}}, ended=True)  # B's own call-1 ended
        await until(lambda: a.written == 6 and b.written == 4 and a.backlog == b.backlog == 0)
        try:
            # A restarted dialog reads its own node's calls back, never another node's.
            [mine] = await a.load_active_calls()
            assert (mine.call_id, mine.state["slot"], mine.state["state"]) == ("call-1", 3, {"state": "ask_zip_code"})
            assert mine.lead is not None and mine.lead.node == "node-a" and mine.lead.zip_code == "75011"
            assert [r.call_id for r in await b.load_active_calls()] == ["call-2"]
            assert await single.load_active_calls() == []
        finally:
            for store in (a, b, single):
                await store.close()
        client = redis.Redis.from_url(server.url)
        try:
            assert client.smembers("rtcore:node:node-a:calls:active") == {b"call-1"}
            assert client.smembers("rtcore:node:node-b:calls:active") == {b"call-2"}
            assert client.get("rtcore:node:node-a:call:call-1:bot_speaking") == b"1"
            assert client.get("rtcore:node:node-a:bot_speaking") == b"1"
            assert not client.exists("rtcore:calls:active", "rtcore:call:call-1", "bot_speaking")
        finally:
            client.close()
