"""VAD process: every 32 ms, one batched Silero inference over every call with a new chunk.

Each utterance is kept until its transcript is on the bus, and submitted again to a restarted
ASR dispatcher (rtcore.runtime.bus.AsrClient)."""

from __future__ import annotations

import time

from rtcore.runtime.bus import AsrClient, Publisher, Subscriber
from rtcore.runtime.messages import (
    AnyMessage,
    AsrStatus,
    CallContext,
    CallEnded,
    CallStarted,
    ListenMode,
    Transcript,
    UtteranceReady,
)
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.ring import AudioRings
from rtcore.vad.detector import TICK_S, UtteranceDetector
from rtcore.vad.segmenter import SegmenterOptions
from rtcore.vad.silero import BatchedVad, SileroVad

REPORT_EVERY_S = 1.0


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    rings = AudioRings.attach(ctx.info.rings)
    detector = UtteranceDetector(rings, BatchedVad(SileroVad(), capacity=s.max_calls),
                                 SegmenterOptions.from_settings(s), stall_timeout_s=s.vad_stall_timeout_s,
                                 period_s=TICK_S)
    sub = Subscriber(s.endpoint("bus_sub"), [CallStarted, CallEnded, ListenMode, CallContext, Transcript, AsrStatus])
    pub = Publisher(s.endpoint("bus_pub"))
    asr = AsrClient(s.endpoint("asr"))

    def handle(message: AnyMessage) -> None:
        if isinstance(message, Transcript):
            asr.settled(message.utterance_id)
        elif isinstance(message, AsrStatus):
            asr.dispatcher_seen(message)
        else:
            detector.handle(message)
    ctx.ready()
    next_tick = time.monotonic()
    next_report = next_tick + REPORT_EVERY_S
    try:
        while not ctx.stopping.is_set():
            # Wait for the next tick, handling call messages as they come.
            while (wait := next_tick - time.monotonic()) > 0:
                message = sub.recv(timeout_ms=max(1, int(wait * 1000)))
                if message is not None:
                    handle(message)
            for message in sub.drain():
                handle(message)
            for out in detector.tick():
                if isinstance(out, UtteranceReady):
                    asr.submit(out)  # reliable to the ASR dispatcher
                pub.publish(out)  # and on the bus, for whoever follows calls (dialog, load bench)
            now = time.monotonic()
            # Keep the 32 ms cadence; after a stall, resume from now rather than bursting.
            next_tick = max(next_tick + TICK_S, now)
            ctx.beat()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report({**detector.metrics(), "bus_rejected": float(sub.rejected),
                            "asr_outstanding": float(len(asr.outstanding)), "asr_resubmitted": float(asr.resubmitted),
                            "asr_expired": float(asr.expired)})
    finally:
        sub.close()
        pub.close()
        asr.close()
        rings.close()


if __name__ == "__main__":
    run_process(main)
