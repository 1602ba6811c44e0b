"""ASR dispatcher process: utterances (from the VAD and the HTTP API, on its ROUTER socket) ->
workers by free capacity -> exactly one Transcript each, published on the bus. Every half second
an AsrStatus on the bus says who it is (a restarted dispatcher gets its queue back from the
submitters) and how loaded it is (admission control)."""

from __future__ import annotations

import logging
import os
import time

import zmq

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.dispatch import AsrDispatcher
from rtcore.runtime.bus import HWM, Publisher, ZmqContext
from rtcore.runtime.messages import AsrCredit, MessageError, Transcript, UtteranceReady, decode, encode
from rtcore.runtime.process import ProcessContext, run_process

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
STATUS_EVERY_S = 0.5
# Workers list what they hold in their AsrCredit every second (KEEPALIVE_S): a restarted
# dispatcher waits for those lists before handing out resubmitted work.
HOLDING_GRACE_S = 1.2


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    started_wall, started = time.time(), time.monotonic()
    dispatcher = AsrDispatcher(worker_timeout_s=s.asr_worker_timeout_s, queue_limit=s.asr_queue_limit,
                               started=started, holding_grace_s=HOLDING_GRACE_S, policy=BatchPolicy.from_settings(s))
    pid = os.getpid()
    zctx: ZmqContext = zmq.Context.instance()
    router = zctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.SNDHWM, HWM)
    router.setsockopt(zmq.RCVHWM, HWM)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable send raises instead of vanishing
    router.bind(s.endpoint("asr"))
    pub = Publisher(s.endpoint("bus_pub"))
    rejected = 0
    ctx.ready()
    next_report = time.monotonic() + REPORT_EVERY_S
    next_status = time.monotonic()
    try:
        while not ctx.stopping.is_set():
            ready = router.poll(100)
            now = time.monotonic()
            if ready:
                while True:
                    try:
                        identity, payload = router.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    except ValueError:  # not two frames
                        rejected += 1
                        continue
                    try:
                        message = decode(payload)
                    except MessageError as exc:
                        rejected += 1
                        log.warning("from ASR worker %r: %s", identity, exc)
                        continue
                    if isinstance(message, UtteranceReady):
                        if dispatcher.submit(message, now) == "full":
                            pub.publish(dispatcher.refusal(message, published_at=time.time()))
                    elif isinstance(message, AsrCredit):
                        dispatcher.announce(identity, message, now)
                    elif isinstance(message, Transcript):
                        # What it waited: its eos->transcript less its own batch's run (a long
                        # utterance takes long to transcribe however idle the ASR is).
                        published_at = time.time()
                        waited = ((published_at - message.eos_at) * 1000 - message.inference_ms - message.features_ms
                                  if message.eos_at and not message.error else None)
                        first = dispatcher.complete(identity, message, now, waited, published_at=published_at)
                        if first is not None:
                            pub.publish(first)
            dispatcher.expire(now)
            for identity, utterance in dispatcher.assign(now):
                try:
                    router.send_multipart([identity, encode(utterance)])
                except zmq.ZMQError:  # the worker disconnected: back to the queue
                    dispatcher.forget(identity)
            ctx.beat()
            if now >= next_status:
                next_status = now + STATUS_EVERY_S
                pub.publish(dispatcher.status(now, pid, started_wall))
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report({**dispatcher.metrics(), "rejected": float(rejected)})
    finally:
        router.close()
        pub.close()


if __name__ == "__main__":
    run_process(main)
