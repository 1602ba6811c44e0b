"""ASR gateway process (a media node, or a role-all node with asr_transport stream): in place
of the dispatcher, utterances (from the VAD and the HTTP API, on the same ROUTER socket) go with
their audio onto the cluster's Redis stream; this node's transcripts come back from its own
stream (a second thread) and are published on the bus. Every half second an AsrStatus on the bus
says who it is (submitters resend to a restarted gateway) and how loaded the cluster's ASR is
(admission control). rtcore.asr.streams holds the logic."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque

import msgspec
import numpy as np
import numpy.typing as npt
import redis
import zmq

from rtcore.asr.streams import NO_ASR_WAIT_MS, StreamGateway
from rtcore.runtime.bus import HWM, Publisher, ZmqContext
from rtcore.runtime.cluster import ClusterKeys
from rtcore.runtime.messages import AsrStatus, MessageError, UtteranceReady, decode
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.redis_client import sync_client
from rtcore.runtime.ring import AudioRings, RingError, SlotLease

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
STATUS_EVERY_S = 0.5
REPLY_BLOCK_MS = 200
RETRY_MAX_S = 2.0


def read_transcripts(ctx: ProcessContext, gateway: StreamGateway, pub: Publisher, failing: threading.Event) -> None:
    """The second thread: this node's transcripts -> the bus, each acknowledged once published."""
    backoff = 0.1
    while not ctx.stopping.is_set():
        try:
            entries = gateway.read_transcripts(REPLY_BLOCK_MS)
            for _, transcript in entries:
                if transcript is not None:
                    pub.publish(transcript)
            gateway.acknowledge([entry_id for entry_id, _ in entries])
            backoff = 0.1
            failing.clear()
        except redis.RedisError as exc:
            if not failing.is_set():
                log.error("cannot read transcripts from Redis: %s (retrying)", exc)
            failing.set()
            ctx.wait(backoff)
            backoff = min(backoff * 2, RETRY_MAX_S)


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    started_wall = time.time()
    keys = ClusterKeys(s.cluster_name)
    # One client for both threads (its pool gives each a connection; a blocking read holds one).
    gateway = StreamGateway(sync_client(s, timeout_s=REPLY_BLOCK_MS / 1000 + 2.0), keys, s.node_id, s.asr_queue_limit)
    rings = AudioRings.attach(ctx.info.rings)
    pid = os.getpid()
    zctx: ZmqContext = zmq.Context.instance()
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.RCVHWM, HWM)
    router.bind(s.endpoint("asr"))
    pub = Publisher(s.endpoint("bus_pub"))
    reply_pub = Publisher(s.endpoint("bus_pub"))  # ZeroMQ sockets belong to one thread each
    redis_failing = threading.Event()
    reader = threading.Thread(target=read_transcripts, args=(ctx, gateway, reply_pub, redis_failing),
                              name="transcripts", daemon=True)
    # Utterances read from the rings but not on the stream yet (Redis not answering): retried in order.
    unsent: deque[tuple[UtteranceReady, npt.NDArray[np.int16]]] = deque()
    rejected = 0
    retry_at, backoff = 0.0, 0.1
    reader.start()
    ctx.ready()
    next_report = time.monotonic() + REPORT_EVERY_S
    next_status = time.monotonic()
    try:
        while not ctx.stopping.is_set():
            if router.poll(20 if not unsent else 5):
                while True:
                    try:
                        _, payload = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except ValueError:
                        rejected += 1
                        continue
                    try:
                        message = decode(payload)
                    except MessageError as exc:
                        rejected += 1
                        log.warning("from a submitter: %s", exc)
                        continue
                    if not isinstance(message, UtteranceReady):
                        continue
                    try:  # read now: the ring may overwrite it while Redis is away
                        pcm = rings.read(SlotLease(message.slot, message.generation), message.start_sample,
                                         message.end_sample)
                    except (RingError, ValueError) as exc:
                        log.error("utterance %s: %s", message.utterance_id, exc)
                        pub.publish(gateway.refusal(message, str(exc)))
                        continue
                    unsent.append((message, np.array(pcm, dtype=np.int16)))
            now = time.monotonic()
            while unsent and now >= retry_at:
                utterance, pcm = unsent[0]
                try:
                    if gateway.submit(utterance, pcm) == "full":
                        pub.publish(gateway.refusal(utterance))
                except redis.RedisError as exc:
                    if backoff == 0.1:
                        log.error("cannot put utterances on the Redis stream: %s (%d waiting, retrying)", exc,
                                  len(unsent))
                    retry_at, backoff = now + backoff, min(backoff * 2, RETRY_MAX_S)
                    break
                unsent.popleft()
                backoff = 0.1
            ctx.beat()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                try:
                    status, _, _ = gateway.status(pid, started_wall)
                    if unsent:  # not on the stream yet: they wait too
                        status = msgspec.structs.replace(status, pending=status.pending + len(unsent))
                except redis.RedisError:
                    # No Redis, no ASR: new calls are handed back, the calls in progress wait.
                    status = AsrStatus(pid=pid, started_at=started_wall, pending=len(unsent), in_flight=0, workers=0,
                                       capacity=0, throughput=0.0, expected_wait_ms=NO_ASR_WAIT_MS,
                                       queue_limit=s.asr_queue_limit, refused_full=gateway.stats.refused_full)
                pub.publish(status)
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                st = gateway.stats
                ctx.report({"submitted": float(st.submitted), "duplicate_utterances": float(st.duplicate_utterances),
                            "refused_full": float(st.refused_full), "published": float(st.published),
                            "duplicate_transcripts": float(st.duplicate_transcripts), "unsent": float(len(unsent)),
                            "rejected": float(rejected), "redis_failing": float(redis_failing.is_set())})
    finally:
        ctx.stopping.set()
        reader.join(timeout=2.0)
        router.close()
        pub.close()
        reply_pub.close()
        rings.close()


if __name__ == "__main__":
    run_process(main)
