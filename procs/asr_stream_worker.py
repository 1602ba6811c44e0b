"""ASR stream worker process (an ASR node, or a role-all node with asr_transport stream): one
consumer of the cluster's utterance stream. It takes as many utterances as it has room for
(XREADGROUP COUNT), claims those a dead worker left (XAUTOCLAIM), transcribes them with the same
batcher and window policy as a single box's worker, and answers each to its media node
(rtcore.asr.streams: exactly once per utterance id)."""

from __future__ import annotations

import logging
import time

import numpy as np
import redis

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.streams import StreamConsumer, Taken, pcm_of
from rtcore.asr.whisper import WhisperEngine, WhisperOptions
from rtcore.asr.worker import AsrWorker
from rtcore.runtime.cluster import ClusterKeys
from rtcore.runtime.messages import Transcript
from rtcore.runtime.models import whisper_model_dir
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.redis_client import sync_client

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
FRESH_EVERY_S = 1.0  # held entries' idle time reset this often (well under stream_claim_idle_s)
MAX_BLOCK_S = 0.1
RETRY_MAX_S = 2.0


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    engine = WhisperEngine(WhisperOptions.from_settings(s, whisper_model_dir(s)))
    policy = BatchPolicy.from_settings(s)
    for window in policy.buckets:  # the first generate of each window is slow: paid before ready
        engine.transcribe([np.zeros(16000, np.float32)], window)
    worker = AsrWorker(ctx.name, engine, policy, None)
    consumer_name = f"{s.node_id}.{ctx.name}"
    client = sync_client(s, timeout_s=MAX_BLOCK_S + 2.0)
    consumer = StreamConsumer(client, ClusterKeys(s.cluster_name), consumer_name, s.stream_claim_idle_s)
    held: dict[str, Taken] = {}  # batcher key ("<node>/<utterance id>") -> the entry
    unanswered: list[tuple[Taken, Transcript]] = []  # transcribed, Redis away: answered when it is back
    fresh_due = [time.monotonic() + FRESH_EVERY_S]

    def keep_fresh(now: float) -> None:
        if now >= fresh_due[0] and held:
            fresh_due[0] = now + FRESH_EVERY_S
            try:
                consumer.keep_fresh([t.entry_id for t in held.values()])
            except redis.RedisError as exc:
                log.warning("cannot keep held utterances fresh: %s", exc)

    def while_waiting() -> None:  # a long batch: heartbeats, and its entries kept ours
        ctx.beat()
        keep_fresh(time.monotonic())

    def hold(entries: list[Taken]) -> None:
        for taken in entries:
            key = f"{taken.utterance.node}/{taken.utterance.utterance_id}"
            if key in held:  # claimed back what is ours already
                continue
            held[key] = taken
            worker.accept_audio(key, taken.utterance, pcm_of(taken.utterance))

    # A restarted worker (same consumer name) first takes back what it held: still pending for it.
    hold(consumer.take_back(worker.capacity))
    ctx.ready()
    next_claim = time.monotonic()
    next_report = time.monotonic() + REPORT_EVERY_S
    retry_at, backoff = 0.0, 0.1
    try:
        while not ctx.stopping.is_set():
            now = time.monotonic()
            if now >= retry_at:
                try:
                    while unanswered:
                        consumer.answer(*unanswered[0])
                        unanswered.pop(0)
                    free = worker.capacity - len(held)
                    wait_s = min(max(worker.next_deadline() - now, 0.0), MAX_BLOCK_S)
                    if free > 0:
                        hold(consumer.take(free, int(wait_s * 1000) if wait_s >= 0.002 else None))
                    if now >= next_claim:
                        next_claim = now + s.stream_claim_idle_s / 2
                        hold(consumer.claim(worker.capacity - len(held)))
                    keep_fresh(time.monotonic())
                    backoff = 0.1
                except redis.RedisError as exc:
                    if backoff == 0.1:
                        log.error("Redis stream: %s (retrying; %d utterances held)", exc, len(held))
                    retry_at, backoff = now + backoff, min(backoff * 2, RETRY_MAX_S)
            elif worker.next_deadline() > now:
                ctx.wait(min(retry_at - now, MAX_BLOCK_S))
            for key, transcript in worker.run_due_keyed(while_waiting=while_waiting):
                taken = held.pop(key)
                try:
                    if unanswered:
                        raise redis.ConnectionError("answers are waiting already")
                    consumer.answer(taken, transcript)
                except redis.RedisError:
                    unanswered.append((taken, transcript))
            ctx.beat()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report({**worker.metrics(), "held": float(len(held)), "claimed": float(consumer.claimed),
                            "duplicate_answers": float(consumer.duplicates), "unanswered": float(len(unanswered)),
                            "unreadable": float(consumer.unreadable)})
    finally:
        client.close()


if __name__ == "__main__":
    run_process(main)
