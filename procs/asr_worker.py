"""ASR worker process: utterances from the dispatcher, batched Whisper, transcripts back."""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import zmq

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.whisper import WhisperEngine, WhisperOptions
from rtcore.asr.worker import AsrWorker
from rtcore.runtime.bus import HWM, ZmqSocket
from rtcore.runtime.messages import AsrCredit, MessageError, UtteranceReady, decode, encode
from rtcore.runtime.models import whisper_model_dir
from rtcore.runtime.process import ProcessContext, run_process
from rtcore.runtime.ring import AudioRings

log = logging.getLogger(__name__)
KEEPALIVE_S = 1.0
REPORT_EVERY_S = 1.0


def main(ctx: ProcessContext) -> None:
    s = ctx.settings
    engine = WhisperEngine(WhisperOptions.from_settings(s, whisper_model_dir(s)))
    rings = AudioRings.attach(ctx.info.rings)
    policy = BatchPolicy.from_settings(s)
    # The first generate of each window size is several times slower (allocation, kernel
    # selection): pay it here, before ready, not on a caller's first answer.
    for window in policy.buckets:
        engine.transcribe([np.zeros(16000, np.float32)], window)
    worker = AsrWorker(ctx.name, engine, policy, rings)
    dealer: ZmqSocket = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 1000)
    dealer.setsockopt(zmq.SNDHWM, HWM)
    dealer.setsockopt(zmq.RCVHWM, HWM)
    dealer.setsockopt(zmq.IDENTITY, f"{ctx.name}.{os.getpid()}".encode())
    dealer.connect(s.endpoint("asr"))

    def send_credit() -> None:
        dealer.send(encode(AsrCredit(worker=ctx.name, pid=os.getpid(), capacity=worker.capacity,
                                     holding=worker.holding())))

    keepalive_due = [time.monotonic()]

    def beat_and_keepalive() -> None:
        ctx.beat()
        if time.monotonic() >= keepalive_due[0]:
            send_credit()
            keepalive_due[0] = time.monotonic() + KEEPALIVE_S

    ctx.ready()
    send_credit()
    next_keepalive = time.monotonic() + KEEPALIVE_S
    next_report = time.monotonic() + REPORT_EVERY_S
    try:
        while not ctx.stopping.is_set():
            now = time.monotonic()
            # next_deadline() is -inf for a full batch and inf for an empty batcher.
            wait_s = min(max(min(worker.next_deadline(), next_keepalive) - now, 0.0), 0.1)
            if dealer.poll(int(wait_s * 1000)):
                while True:
                    try:
                        payload = dealer.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        message = decode(payload)
                    except MessageError as exc:
                        log.warning("from the dispatcher: %s", exc)
                        continue
                    if isinstance(message, UtteranceReady):
                        failed = worker.accept(message)
                        if failed is not None:
                            dealer.send(encode(failed))
            transcripts = worker.run_due(while_waiting=beat_and_keepalive)
            for transcript in transcripts:
                dealer.send(encode(transcript))
            now = time.monotonic()
            if transcripts or now >= next_keepalive:
                send_credit()
                next_keepalive = now + KEEPALIVE_S
            ctx.beat()
            if now >= next_report:
                next_report = now + REPORT_EVERY_S
                ctx.report(worker.metrics())
    finally:
        dealer.close()
        rings.close()


if __name__ == "__main__":
    run_process(main)
