"""Micro-benchmarks of the foundation: shared-memory ring throughput and bus message rate.

    python -m bench.foundation [--seconds 3]

Ring: the RTP capture's pattern (320-sample big-endian packets into every call slot) and the VAD's
(512-sample chunks out, as float32). Bus: UtteranceReady messages from a publisher process through
the forwarder to a subscriber, and plain encode/decode.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid

import numpy as np

from rtcore.runtime import messages as m
from rtcore.runtime.bus import BusProxy, Publisher, Subscriber
from rtcore.runtime.ring import AudioRings, RingSpec

SR = 16000


def bench_ring(seconds: float, n_slots: int = 64) -> dict[str, float]:
    spec = RingSpec(f"rtcore.bench{uuid.uuid4().hex[:6]}.{os.getpid()}.rings", n_slots, 60 * SR)
    rings = AudioRings.create(spec)
    try:
        leases = [rings.allocate() for _ in range(n_slots)]
        packet = np.frombuffer((np.arange(320, dtype=np.int16) * 7).astype(">i2").tobytes(), dtype=">i2")
        written = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for lease in leases:
                rings.write(lease, packet)
            written += 320 * n_slots
        write_s = time.perf_counter() - t0
        read = 0
        # Walk through what each ring still holds, one VAD chunk per slot per round.
        first = {lease: max(0, rings.cursor(lease) - spec.capacity) for lease in leases}
        offset = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for lease in leases:
                start = first[lease] + offset
                rings.read_float(lease, start, start + 512)
            offset = (offset + 512) % (spec.capacity - 512)
            read += 512 * n_slots
        read_s = time.perf_counter() - t0
    finally:
        rings.close()
        rings.unlink()
    return {"write_samples_per_s": written / write_s, "read_samples_per_s": read / read_s}


def _publisher(endpoint: str, n: int, go: mp.synchronize.Event) -> None:
    pub = Publisher(endpoint)
    message = m.UtteranceReady(utterance_id="c0001-000001", call_id="c0001", slot=3, generation=1,
                               start_sample=160000, end_sample=208000, eos_at=time.time())
    go.wait()
    for _ in range(n):
        pub.publish(message)
    pub.publish(m.Heartbeat(process="bench", pid=0, seq=-1, sent_at=0.0))
    pub.close()


def bench_bus(n: int) -> dict[str, float]:
    message = m.UtteranceReady(utterance_id="c0001-000001", call_id="c0001", slot=3, generation=1,
                               start_sample=160000, end_sample=208000, eos_at=time.time())
    t0 = time.perf_counter()
    for _ in range(n):
        m.decode(m.encode(message))
    codec_rate = n / (time.perf_counter() - t0)

    run = tempfile.mkdtemp(prefix="rtb-")
    pub_ep, sub_ep = f"ipc://{run}/in.sock", f"ipc://{run}/out.sock"
    proxy = BusProxy(pub_ep, sub_ep).start()
    sub = Subscriber(sub_ep, [m.UtteranceReady, m.Heartbeat])
    # Make sure the subscription is in place before the measured burst.
    probe = Publisher(pub_ep)
    while sub.recv(timeout_ms=10) is None:
        probe.publish(m.Heartbeat(process="probe", pid=0, seq=0, sent_at=0.0))
    sub.drain()
    probe.close()
    go = mp.get_context("spawn").Event()
    proc = mp.get_context("spawn").Process(target=_publisher, args=(pub_ep, n, go))
    proc.start()
    got = 0
    # Let the publisher connect and its subscription filter arrive before timing.
    time.sleep(0.5)
    t0 = time.perf_counter()
    go.set()
    while True:
        received = sub.recv(timeout_ms=10000)
        if received is None:
            break
        if isinstance(received, m.Heartbeat) and received.seq == -1:
            break
        got += 1
    elapsed = time.perf_counter() - t0
    proc.join()
    sub.close()
    proxy.stop()
    return {"codec_msgs_per_s": codec_rate, "bus_msgs_per_s": got / elapsed, "bus_sent": n, "bus_received": got}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--messages", type=int, default=200_000)
    args = parser.parse_args()
    ring = bench_ring(args.seconds)
    print(f"ring write  (64 slots, 320-sample BE packets): {ring['write_samples_per_s'] / 1e6:8.1f} M samples/s"
          f" = {ring['write_samples_per_s'] / SR:9.0f} real-time calls")
    print(f"ring read   (64 slots, 512-sample float chunks): {ring['read_samples_per_s'] / 1e6:6.1f} M samples/s"
          f" = {ring['read_samples_per_s'] / SR:9.0f} real-time calls")
    bus = bench_bus(args.messages)
    print(f"msgpack encode+decode UtteranceReady:           {bus['codec_msgs_per_s']:10.0f} msgs/s")
    print(f"bus publisher process -> forwarder -> subscriber: {bus['bus_msgs_per_s']:9.0f} msgs/s"
          f" ({bus['bus_received']:.0f}/{bus['bus_sent']:.0f} received)")


if __name__ == "__main__":
    main()
