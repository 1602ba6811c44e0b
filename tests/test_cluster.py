"""Several nodes over one Redis, on loopback: two media nodes (each its embedded PBX and simulated
callers, its own ARI application) and two ASR nodes, one Redis server with a password. One ASR node
is killed with SIGKILL (its whole process group) while it holds utterances: nothing is lost or
transcribed twice, every call of both media nodes ends with its lead in the shared Redis. A media
node with no ASR node alive hands its callers back to the dialplan."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rtcore.runtime.cluster import ClusterKeys, live_nodes
from tests.conftest import REPO, free_port

PASSWORD = "cluster-secret"
KEYS = ClusterKeys("rtcore")


@pytest.fixture
def shared_redis(short_dir: Path) -> Iterator[str]:
    """A redis-server on a loopback TCP port with a password, as the cluster's shared Redis."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--requirepass", PASSWORD,
                             "--save", "", "--appendonly", "no", "--dir", str(short_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, password=PASSWORD, socket_timeout=1.0)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


class Node:
    """One `rtcore launch` of a node, in its own process group (killed whole, like a machine)."""

    def __init__(self, name: str, role: str, url: str, root: Path, *args: str) -> None:
        self.name = name
        self.killed = False
        self.log = root / f"{name}.log"
        self.report = root / f"{name}.json"
        env = {**os.environ, "RTCORE_REDIS_PASSWORD": PASSWORD}
        command = [sys.executable, "-m", "rtcore.cli", "launch", "--role", role, "--redis-url", url,
                   "--node-id", name, "--instance", name, "--run-dir", str(root / name / "run"),
                   "--data-dir", str(root / name / "data"), "--metrics-port", "0", "--http-port", "0",
                   "--stream-claim-idle-s", "2", "--node-ttl-s", "2", "--asr-workers", "1", *args]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def kill_machine(self) -> None:
        self.killed = True
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=60)
        return self.log.read_text()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def media_node(name: str, url: str, root: Path, calls: int, total: int, seed: int, *args: str) -> Node:
    return Node(name, "media", url, root, "--calls", str(calls), "--total-calls", str(total), "--sim-seed",
                str(seed), "--sim-ari-port", str(free_port()), "--rtp-port", str(free_port(socket.SOCK_DGRAM)),
                "--json", str(root / f"{name}.json"), *args)


def wait_for(condition, timeout_s: float, what: str, nodes: list[Node]):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for node in nodes:
            if not node.killed and node.proc.poll() is not None and node.proc.returncode != 0:
                raise AssertionError(f"{node.name} exited ({node.proc.returncode}):\n{node.log.read_text()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def cluster_status(url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "rtcore.cli", "cluster", "status", "--json", "--redis-url", url],
                         cwd=REPO, env={**os.environ, "RTCORE_REDIS_PASSWORD": PASSWORD}, capture_output=True,
                         text=True, timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.timeout(900)
def test_two_media_and_two_asr_nodes_lose_nothing_when_an_asr_node_is_killed(shared_redis: str,
                                                                              short_dir: Path) -> None:
    client = redis.Redis.from_url(shared_redis, password=PASSWORD, socket_timeout=5.0)
    nodes: list[Node] = []
    try:
        nodes += [Node("asr-a", "asr", shared_redis, short_dir), Node("asr-b", "asr", shared_redis, short_dir)]
        wait_for(lambda: sum(n.asr_workers for n in live_nodes(client, KEYS)) == 2, 300, "two ASR nodes", nodes)
        media = [media_node("media-a", shared_redis, short_dir, 3, 3, 1),
                 media_node("media-b", shared_redis, short_dir, 3, 3, 2)]
        nodes += media
        wait_for(lambda: len(live_nodes(client, KEYS)) == 4, 300, "four nodes registered", nodes)
        status = cluster_status(shared_redis)
        roles = {n["node"]: (n["role"], n["ari_app"]) for n in status["nodes"]}
        assert roles == {"asr-a": ("asr", ""), "asr-b": ("asr", ""), "media-a": ("media", "rtcore-media-a"),
                         "media-b": ("media", "rtcore-media-b")}

        def asr_a_holds_work() -> bool:
            try:
                consumers = client.xinfo_consumers(KEYS.utterances, "asr")
            except redis.ResponseError:
                return False
            return any(c["name"] == b"asr-a.asr-0" and c["pending"] > 0 for c in consumers)

        # Under load, while asr-a holds utterances it has not answered: the machine dies.
        wait_for(asr_a_holds_work, 300, "asr-a to hold utterances", nodes)
        held = next(c["pending"] for c in client.xinfo_consumers(KEYS.utterances, "asr") if c["name"] == b"asr-a.asr-0")
        nodes[0].kill_machine()
        assert held > 0
        # Its registration expires: the cluster's capacity drops to asr-b's.
        wait_for(lambda: [n.node for n in live_nodes(client, KEYS) if n.role == "asr"] == ["asr-b"], 30,
                 "asr-a gone from the cluster", nodes)
        for node in media:
            node.proc.wait(timeout=600)
            assert node.proc.returncode == 0, node.log.read_text()[-3000:]
        for node in media:
            report = json.loads(node.report.read_text())
            utts = report["utterances"]
            assert utts["total"] > 3, node.name
            assert (utts["dropped"], utts["failed"], utts["duplicate_transcripts"]) == (0, 0, 0), (node.name, utts)
            assert report["calls_completed"] + report["calls_failed"] == 3
            assert report["left_behind"] == {"call_slots": 0, "calls": 0, "channels": 0, "bridges": 0}
        asr_b = nodes[1].stop()
        claimed = [line for line in asr_b.splitlines() if "claimed:" in line]
        assert claimed, "asr-b claimed nothing of what asr-a held"
        # Nothing left in the stream: every utterance answered, acknowledged and deleted.
        assert client.xlen(KEYS.utterances) == 0
        assert client.xpending(KEYS.utterances, "asr")["pending"] == 0
        # Both media nodes' leads in the shared Redis, each with its node.
        export = subprocess.run([sys.executable, "-m", "rtcore.cli", "leads", "export", "--format", "jsonl",
                                 "--redis-url", shared_redis], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "RTCORE_REDIS_PASSWORD": PASSWORD}, check=True)
        leads = [json.loads(line) for line in export.stdout.splitlines() if line.strip()]
        assert sorted(lead["node"] for lead in leads) == ["media-a"] * 3 + ["media-b"] * 3
        assert all(lead["outcome"] and lead["turns"] for lead in leads)
    finally:
        for node in nodes:
            node.close()
        client.close()


@pytest.mark.timeout(600)
def test_a_media_node_with_no_asr_node_alive_hands_its_callers_back(shared_redis: str, short_dir: Path) -> None:
    node = media_node("media-a", shared_redis, short_dir, 2, 3, 1)
    try:
        node.proc.wait(timeout=500)
        assert node.proc.returncode == 0, node.log.read_text()[-3000:]
        report = json.loads(node.report.read_text())
        log = node.log.read_text()
    finally:
        node.close()
    # Every caller was handed back to the dialplan (ARI continue), none answered with nobody to
    # transcribe them.
    assert report["calls_completed"] == 0 and report["utterances"]["total"] == 0, report
    assert "continue" in log and "no ASR" in log or "ASR expected wait" in log
