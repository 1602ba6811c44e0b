"""`rtcore cluster status`: the cluster's nodes, roles, capacity, queue depth and lag, from Redis."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from rtcore.runtime.config import Settings


def format_status(snapshot: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    nodes = snapshot["nodes"]
    stream = snapshot["utterances"]
    lines = [f"cluster {snapshot['cluster']}: {len(nodes)} nodes"]
    header = f"  {'node':<24} {'role':<6} {'calls':>9} {'asr workers':>11} {'asr capacity':>12}  {'ari app':<28} seen"
    lines.append(header)
    for n in nodes:
        calls = f"{n['calls_active']}/{n['call_slots']}" if n["role"] != "asr" else "-"
        workers = str(n["asr_workers"]) if n["role"] != "media" else "-"
        capacity = str(n["asr_capacity"]) if n["role"] != "media" else "-"
        state = " draining" if n["draining"] else ""
        lines.append(f"  {n['node']:<24} {n['role']:<6} {calls:>9} {workers:>11} {capacity:>12}  "
                     f"{n['ari_app'] or '-':<28} {max(0.0, now - n['updated_at']):.1f} s ago{state}")
    asr_workers = sum(n["asr_workers"] for n in nodes)
    lines.append(f"utterance stream: {stream['waiting']} waiting (oldest {stream['oldest_waiting_s']:.2f} s), "
                 f"{stream['taken']} being transcribed (oldest {stream['oldest_taken_s']:.2f} s); "
                 f"{asr_workers} ASR workers alive")
    for c in stream["consumers"]:
        lines.append(f"  consumer {c['name']:<32} holding {c['pending']:>3}, idle {c['idle_s']:.1f} s")
    unread = snapshot["transcripts_unread"]
    if unread:
        lines.append("transcripts not yet read by their media node: "
                     + ", ".join(f"{node} {count}" for node, count in unread.items()))
    if not asr_workers:
        lines.append("warning: no ASR worker is alive: media nodes hand every new call back")
    return "\n".join(lines)


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from rtcore.runtime.cluster import ClusterKeys, cluster_snapshot
    from rtcore.runtime.redis_client import describe, sync_client

    if not settings.redis_url and not settings.redis_sentinels:
        print("rtcore cluster: set redis_url (or redis_sentinels) to the cluster's shared Redis", file=sys.stderr)
        return 2
    client = sync_client(settings, timeout_s=5.0)
    try:
        snapshot = cluster_snapshot(client, ClusterKeys(settings.cluster_name))
    except redis.RedisError as exc:
        print(f"rtcore cluster: cannot read Redis at {describe(settings)}: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
    print(json.dumps(snapshot, indent=2) if args.json else format_status(snapshot))
    return 0
