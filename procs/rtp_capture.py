"""The RTP capture process: Asterisk's slin16 RTP into the shared-memory rings (rtcore.media.capture).

It learns which source belongs to which call slot from CallStarted / CallEnded on the bus, and
ticks every 20 ms: reorder deadlines, heartbeat, and a Metrics report every second.
"""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop
import zmq

from rtcore.media.capture import RtpCapture, open_capture
from rtcore.runtime.bus import Subscriber
from rtcore.runtime.messages import AnyMessage, CallEnded, CallStarted
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.ring import AudioRings, SlotLease

log = logging.getLogger(__name__)

TICK_S = 0.02
REPORT_EVERY_S = 1.0


def handle(capture: RtpCapture, message: AnyMessage) -> None:
    try:
        if isinstance(message, CallStarted):
            capture.add_call(message.call_id, SlotLease(message.slot, message.generation), message.rtp_source)
        elif isinstance(message, CallEnded):
            capture.remove_call(message.call_id)
    except ValueError as exc:  # a bad slot or source in a message: that call only
        log.error("ignored %s: %s", type(message).__name__, exc)


async def serve(ctx: ProcessContext) -> None:
    loop = asyncio.get_running_loop()
    rings = AudioRings.attach(ctx.info.rings)
    subscriber = Subscriber(ctx.settings.endpoint("bus_sub"), [CallStarted, CallEnded])
    transport, capture = await open_capture(loop, ctx.settings, rings)

    def drain_bus() -> None:
        # The ZeroMQ FD is edge-triggered: read everything queued each time, or wake no more.
        for message in subscriber.drain():
            handle(capture, message)

    bus_fd = int(subscriber.socket.getsockopt(zmq.FD))
    loop.add_reader(bus_fd, drain_bus)
    try:
        ctx.ready()
        next_report = time.monotonic() + REPORT_EVERY_S
        while not ctx.stopping.is_set():
            await asyncio.sleep(TICK_S)
            drain_bus()  # also here: a wake-up can be missed between an edge and add_reader
            now = time.monotonic()
            capture.tick(now)
            ctx.beat()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report(capture.stats())
    finally:
        loop.remove_reader(bus_fd)
        for call_id in list(capture.call_stats()):
            capture.remove_call(call_id)
        capture.export_metrics()  # the counts of the last second too
        transport.close()
        subscriber.close()
        rings.close()


def main(ctx: ProcessContext) -> None:
    uvloop.run(serve(ctx))


if __name__ == "__main__":
    run_process(main)
