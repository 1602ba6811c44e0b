"""Throughput of the RTP capture: `calls` concurrent slin16 streams at 20 ms into one capture process.

    python -m bench.rtp [--calls 1000] [--seconds 5] [--warmup 1]

The capture is rtcore.media.capture.RtpCapture under uvloop with a 20 ms tick, as procs/rtp_capture.py
runs it (without the bus), in a child process pinned to one core. This process is the sender,
pinned to another core: one UDP socket per call (each call has its own source port, as each
Asterisk externalMedia channel does), 652-byte packets (12-byte header, 640-byte payload) every
20 ms per call, the calls staggered over the 20 ms in 1 ms slices.

Prints the packets/s the capture processed, the capture's CPU seconds per wall second (from its
own process_time), the calls one core would carry at that cost, and the losses: sent - received,
the kernel's drop counter of the capture socket, and the jitter buffers' lost count.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import time
import uuid
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import uvloop

from rtcore.media.capture import CaptureOptions, RtpCapture, bind_rtp_socket
from rtcore.media.rtp import RTP_HEADER
from rtcore.runtime.ring import AudioRings, RingSpec, SlotLease

SAMPLES_PER_PACKET = 320
PACKET_S = 0.02
SLICES = 20  # sends per call period: the calls are spread over the 20 ms in 1 ms steps
RECV_BUFFER_BYTES = 8 << 20


def _capture_counters(capture: RtpCapture) -> dict[str, float]:
    values = capture.stats()
    return {"cpu_s": time.process_time(), "wall_s": time.monotonic(), "datagrams": values["datagrams"],
            "received": values["received"], "lost": values["lost"], "late": values["late"],
            "duplicate": values["duplicate"], "invalid": values["invalid"],
            "unknown_source": values["unknown_source"], "kernel_drops": values.get("kernel_drops", -1.0),
            "jitter_ms_max": values["jitter_ms_max"]}


async def _serve(spec: RingSpec, calls: list[tuple[str, int, int, str]], conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    rings = AudioRings.attach(spec)
    sock = bind_rtp_socket("127.0.0.1", 0, RECV_BUFFER_BYTES)
    transport, capture = await loop.create_datagram_endpoint(lambda: RtpCapture(rings, CaptureOptions()), sock=sock)
    for call_id, slot, generation, source in calls:
        capture.add_call(call_id, SlotLease(slot, generation), source)
    stop = asyncio.Event()

    def on_command() -> None:
        command = conn.recv()
        if command == "stop":
            stop.set()
        else:
            conn.send(_capture_counters(capture))

    loop.add_reader(conn.fileno(), on_command)
    conn.send(sock.getsockname()[1])
    while not stop.is_set():
        await asyncio.sleep(PACKET_S)
        capture.tick()
    loop.remove_reader(conn.fileno())
    transport.close()
    rings.close()


def _capture_process(spec: RingSpec, calls: list[tuple[str, int, int, str]], conn: Connection,
                     cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    uvloop.run(_serve(spec, calls, conn))


def _ask(conn: Connection) -> dict[str, float]:
    conn.send("stats")
    counters: dict[str, float] = conn.recv()
    return counters


def run(calls: int, seconds: float, warmup: float) -> dict[str, Any]:
    cpus = sorted(os.sched_getaffinity(0))
    capture_cpu, sender_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    spec = RingSpec(f"rtcore.benchrtp{uuid.uuid4().hex[:6]}.{os.getpid()}.rings", calls, 2 * 16000)
    rings = AudioRings.create(spec)
    sockets: list[socket.socket] = []
    proc = None
    try:
        leases = [rings.allocate() for _ in range(calls)]
        for _ in range(calls):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        table = [(f"call{i}", lease.slot, lease.generation, f"127.0.0.1:{s.getsockname()[1]}")
                 for i, (lease, s) in enumerate(zip(leases, sockets, strict=True))]
        parent_conn, child_conn = mp.get_context("spawn").Pipe()
        proc = mp.get_context("spawn").Process(target=_capture_process, args=(spec, table, child_conn, capture_cpu))
        proc.start()
        port = parent_conn.recv()
        if sender_cpu is not None:
            os.sched_setaffinity(0, {sender_cpu})
        target = ("127.0.0.1", port)

        rng = np.random.default_rng(0)
        packets = [bytearray(RTP_HEADER.size) + rng.integers(-3000, 3000, SAMPLES_PER_PACKET, dtype=np.int16)
                   .astype(">i2").tobytes() for _ in range(calls)]
        sends = [s.sendto for s in sockets]
        pack_into = RTP_HEADER.pack_into
        per_slice = -(-calls // SLICES)
        sent = 0
        seq = 0
        first: dict[str, float] | None = None
        sent_at_first = 0
        late_slices = 0
        start = time.perf_counter()
        next_slice = start
        measure_from, measure_to = start + warmup, start + warmup + seconds
        while True:
            now = time.perf_counter()
            if first is None and now >= measure_from:
                first, sent_at_first = _ask(parent_conn), sent
            if now >= measure_to:
                break
            ts = seq * SAMPLES_PER_PACKET & 0xFFFFFFFF
            for slice_index in range(SLICES):
                for i in range(slice_index * per_slice, min(calls, (slice_index + 1) * per_slice)):
                    packet = packets[i]
                    pack_into(packet, 0, 0x80, 118, seq & 0xFFFF, ts, 0x10000 + i)
                    sends[i](packet, target)
                sent += min(calls, (slice_index + 1) * per_slice) - min(calls, slice_index * per_slice)
                next_slice += PACKET_S / SLICES
                delay = next_slice - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                else:
                    late_slices += 1
            seq += 1
        last = _ask(parent_conn)
        sent_at_last = sent
        # Let the capture finish what is queued, then take the final counts.
        final = last
        while True:
            time.sleep(0.2)
            final_now = _ask(parent_conn)
            if final_now["datagrams"] == final["datagrams"]:
                break
            final = final_now
        parent_conn.send("stop")
        proc.join(10)
    finally:
        for sock in sockets:
            sock.close()
        if proc is not None and proc.is_alive():
            proc.kill()
        rings.close()
        rings.unlink()
    assert first is not None
    wall = last["wall_s"] - first["wall_s"]
    cpu = last["cpu_s"] - first["cpu_s"]
    return {
        "calls": calls, "seconds": wall, "capture_cpu": capture_cpu, "sender_cpu": sender_cpu,
        "sent": sent, "send_rate": (sent_at_last - sent_at_first) / wall, "late_slices": late_slices,
        "processed_rate": (last["datagrams"] - first["datagrams"]) / wall,
        "cpu_per_s": cpu / wall, "final": final,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=1.0, help="sent before the measurement starts")
    args = parser.parse_args()
    r = run(args.calls, args.seconds, args.warmup)
    final = r["final"]
    print(f"{r['calls']} calls x 50 packets/s, {r['seconds']:.2f} s measured after {args.warmup:.1f} s warm-up; "
          f"capture on CPU {r['capture_cpu']}, sender on CPU {r['sender_cpu']}")
    print(f"sent:       {r['sent']} packets, {r['send_rate']:.0f}/s while measured "
          f"({r['late_slices']} of the sender's 1 ms slices ran late)")
    print(f"processed:  {r['processed_rate']:.0f} packets/s")
    print(
        f"capture CPU: {r['cpu_per_s']:.3f} s per s ({100 * r['cpu_per_s']:.1f} % of one core) -> "
        f"{r['calls'] / r['cpu_per_s']:.0f} calls per core, "
        f"{r['processed_rate'] / r['cpu_per_s']:.0f} packets/s per core"
    )
    print(
        f"loss:       sent - received = {r['sent'] - final['datagrams']:.0f}, "
        f"kernel drops {final['kernel_drops']:.0f}, "
        f"jitter-buffer lost {final['lost']:.0f}, late {final['late']:.0f}, duplicate {final['duplicate']:.0f}, "
        f"invalid {final['invalid']:.0f}, unknown source {final['unknown_source']:.0f}"
    )
    print(f"jitter:     max over calls {final['jitter_ms_max']:.2f} ms (loopback, paced by this sender)")


if __name__ == "__main__":
    main()
