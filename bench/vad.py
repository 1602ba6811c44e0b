"""VAD capacity: how many real-time call streams one core sustains, batched vs one at a time.

    python -m bench.vad [--calls 50,100,300,500] [--ticks 60]

Each call slot holds real French speech (../shared/audio/fr when present, else a synthetic
signal). "batched" is the live VAD path (rtcore.vad.detector: ring reads, one Silero inference per
tick for all calls, segmentation); "one-at-a-time" runs one inference per call per chunk, as a
per-call VAD would. streams/core = calls x 32 ms / CPU time per tick (the process is pinned to one
core and measured in CPU time, so the other core's load matters less).
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

import numpy as np

from rtcore.runtime.audio import float_to_pcm16, load_audio
from rtcore.runtime.messages import CallStarted
from rtcore.runtime.ring import AudioRings, RingSpec
from rtcore.vad.detector import UtteranceDetector
from rtcore.vad.segmenter import SegmenterOptions
from rtcore.vad.silero import CHUNK, BatchedVad, SileroVad

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "audio" / "fr"


def speech() -> np.ndarray:
    path = SHARED / "OSR_fr_000_0041_8k.wav"
    if path.exists():
        return float_to_pcm16(load_audio(path))
    t = np.arange(16000 * 60) / 16000
    return float_to_pcm16((0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 0.3 * t) > 0)).astype(np.float32))


def measure(calls: int, ticks: int, batched: bool, model: SileroVad, audio: np.ndarray) -> float:
    """CPU seconds per tick with `calls` streams each contributing one chunk per tick."""
    spec = RingSpec(f"rtcore.bench{uuid.uuid4().hex[:6]}.{os.getpid()}.rings", calls, 16000 * 20)
    rings = AudioRings.create(spec)
    try:
        detector = UtteranceDetector(rings, BatchedVad(model, capacity=calls), SegmenterOptions())
        sources = []
        for i in range(calls):
            lease = rings.allocate()
            offset = (i * 7919 * CHUNK) % (len(audio) - CHUNK * (ticks + 1))
            sources.append((lease, audio[offset:offset + CHUNK * (ticks + 1)]))
            detector.handle(CallStarted(call_id=f"c{i}", slot=lease.slot, generation=lease.generation))
        cpu = 0.0
        for tick in range(ticks + 1):
            # One new chunk per call per tick, as in real time (the writes are the capture's cost).
            for lease, signal in sources:
                rings.write(lease, signal[tick * CHUNK:(tick + 1) * CHUNK])
            t0 = time.process_time()
            if batched:
                detector.tick()
            else:
                for call in detector.calls.values():
                    s = call.next_sample
                    chunk = rings.read_float(call.lease, s, s + CHUNK)
                    call.segmenter.feed(s, float(detector.vad.step([call.call_id], chunk[None])[0]))
                    call.next_sample = s + CHUNK
            if tick:  # the first tick warms up
                cpu += time.process_time() - t0
        return cpu / ticks
    finally:
        rings.close()
        rings.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", default="50,100,300,500")
    parser.add_argument("--ticks", type=int, default=60)
    args = parser.parse_args()
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    except (AttributeError, OSError):
        pass
    model = SileroVad(threads=1)
    audio = speech()
    print(f"{'calls':>6} {'mode':>14} {'ms/tick':>8} {'streams/core':>13} {'real-time?':>10}")
    for calls in (int(c) for c in args.calls.split(",")):
        for batched in (True, False):
            per_tick = measure(calls, args.ticks, batched, model, audio)
            streams = calls * 0.032 / per_tick
            print(f"{calls:>6} {'batched' if batched else 'one-at-a-time':>14} {per_tick * 1e3:8.2f} "
                  f"{streams:13.0f} {'yes' if per_tick <= 0.032 else 'no':>10}")


if __name__ == "__main__":
    main()
