"""ASR dispatcher process: utterances (from the VAD and the HTTP API, on its ROUTER socket) ->
workers by free capacity -> exactly one Transcript each, published on the bus."""

from __future__ import annotations

import logging
import time

import msgspec
import zmq

from rtcore.asr.dispatch import AsrDispatcher
from rtcore.runtime.bus import HWM, Publisher, ZmqContext
from rtcore.runtime.messages import AsrCredit, MessageError, Transcript, UtteranceReady, decode, encode
from rtcore.runtime.process import ProcessContext, run_process

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    dispatcher = AsrDispatcher(worker_timeout_s=s.asr_worker_timeout_s)
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
                        dispatcher.submit(message)
                    elif isinstance(message, AsrCredit):
                        dispatcher.announce(identity, message, now)
                    elif isinstance(message, Transcript):
                        first = dispatcher.complete(identity, message, now)
                        if first is not None:
                            pub.publish(msgspec.structs.replace(first, published_at=time.time()))
            dispatcher.expire(now)
            for identity, utterance in dispatcher.assign():
                try:
                    router.send_multipart([identity, encode(utterance)])
                except zmq.ZMQError:  # the worker disconnected: back to the queue
                    dispatcher.forget(identity)
            ctx.beat()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report({**dispatcher.metrics(), "rejected": float(rejected)})
    finally:
        router.close()
        pub.close()


if __name__ == "__main__":
    run_process(main)
