"""Dialog / ARI control process: ARI events, transcripts and speech starts in; prompts, call
announcements and lead records out (rtcore.dialog.calls). Restarted after a crash, it takes back the
calls in progress (rtcore.dialog.recovery) as soon as its events WebSocket connects. The ASR's load
(AsrStatus) and the supervisor's Drain decide which new callers it takes (rtcore.dialog.admission)."""

from __future__ import annotations

import asyncio
import logging
import time

import uvloop
import zmq

from rtcore.dialog.admission import AdmissionOptions
from rtcore.dialog.ari.client import AriClient
from rtcore.dialog.calls import CallController
from rtcore.dialog.leads import LeadStore
from rtcore.dialog.script import load_script
from rtcore.dialog.turns import CountedIntentApi
from rtcore.intents import intent_source
from rtcore.runtime import telemetry
from rtcore.runtime.bus import Publisher, Subscriber
from rtcore.runtime.messages import AsrStatus, Drain, ProcessStarted, SpeechStarted, Transcript, UtteranceReady
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.redis_client import async_client
from rtcore.runtime.ring import AudioRings

log = logging.getLogger(__name__)
REPORT_EVERY_S = 1.0
# Calls are announced again now and then: a capture or VAD process that restarted (or joined the
# bus late) learns the calls in progress; both treat a repeated announcement as a no-op.
REANNOUNCE_EVERY_S = 2.0


async def serve(ctx: ProcessContext) -> None:
    s = ctx.settings
    loop = asyncio.get_running_loop()
    script = load_script(s.dialog_script or None)
    intents = intent_source(s)
    if s.intent_main_url:
        intents = CountedIntentApi(intents)
    rings = AudioRings.attach(ctx.info.rings)
    store = LeadStore(async_client(s), s.data_path / "lead-spool.jsonl", call_ttl_s=s.redis_call_ttl_s,
                      node=s.node_id if s.clustered else "")
    store.start()
    publisher = Publisher(s.endpoint("bus_pub"))
    subscriber = Subscriber(s.endpoint("bus_sub"),
                            [Transcript, SpeechStarted, UtteranceReady, ProcessStarted, AsrStatus, Drain])
    ari = AriClient(s.ari_base_url, s.ari_user, s.ari_password.get_secret_value(), s.ari_app, s.ari_timeout)
    controller = CallController(ari, script, intents, rings, store, publisher.publish, s.rtp_ip, s.rtp_port,
                                barge_in=s.dialog_barge_in, setup_timeout_s=s.dialog_setup_timeout_s,
                                turn_join_s=s.dialog_turn_join_s, admission=AdmissionOptions.from_settings(s))

    def drain_bus() -> None:
        # Edge-triggered ZeroMQ FD: read everything queued at each wake-up.
        for message in subscriber.drain():
            controller.handle_message(message)

    bus_fd = int(subscriber.socket.getsockopt(zmq.FD))
    loop.add_reader(bus_fd, drain_bus)
    events = loop.create_task(controller.run(), name="ari-events")
    reconnects_counted = 0

    def update_gauges() -> None:
        nonlocal reconnects_counted
        controller.update_gauges()
        telemetry.ARI_CONNECTED.set(float(ari.connected.is_set()))
        telemetry.ARI_RECONNECTS.inc(ari.reconnects - reconnects_counted)
        reconnects_counted = ari.reconnects
        telemetry.REDIS_CONNECTED.set(float(store.connected))
        telemetry.REDIS_SPOOL_DEPTH.set(store.backlog)

    try:
        ctx.ready()
        next_report = time.monotonic() + REPORT_EVERY_S
        next_announce = time.monotonic() + REANNOUNCE_EVERY_S
        while not ctx.stopping.is_set():
            await asyncio.sleep(0.1)
            drain_bus()
            if events.done():
                events.result()  # re-raise: the supervisor restarts us
            ctx.beat()
            now = time.monotonic()
            if now >= next_announce:
                next_announce = now + REANNOUNCE_EVERY_S
                controller.reannounce()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                update_gauges()
                ctx.report({"calls": float(len(controller.calls)), "completed": float(controller.completed),
                            "failed": float(controller.failed), "ari_connected": float(ari.connected.is_set()),
                            "ari_reconnects": float(ari.reconnects),
                            "ari_malformed_events": float(ari.malformed_events),
                            "redis_connected": float(store.connected),
                            "redis_backlog": float(store.backlog), "bus_rejected": float(subscriber.rejected),
                            **{name: float(n) for name, n in controller.counters.items()},
                            **controller.admission.metrics()})
    finally:
        loop.remove_reader(bus_fd)
        await controller.close()
        events.cancel()
        await ari.close()
        await store.close()
        publisher.close()
        subscriber.close()
        rings.close()


def main(ctx: ProcessContext) -> None:
    uvloop.run(serve(ctx))


if __name__ == "__main__":
    run_process(main)
