from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from rtcore.media.capture import parse_source
from rtcore.media.rtp import RTP_HEADER, unpack_slin16
from rtcore.runtime.bus import Publisher
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import CallEnded, CallStarted, Metrics, decode, encode
from rtcore.runtime.ring import AudioRings, RingSpec, SlotLease
from rtcore.runtime.supervisor import ProcessSpec, Supervisor
from tests.conftest import REPO, StartCapture

SSRC = 0x21398419
PT = 118
N = 320  # samples per packet
BURST = 200  # datagrams in flight at once: far below what the 4 MiB receive buffer holds


def audio(seq: int) -> np.ndarray:
    """The 320 samples of packet `seq`: full int16 range, different for every packet."""
    return np.random.default_rng(seq).integers(-32768, 32768, N, dtype=np.int16)


def rtp(seq: int, ssrc: int = SSRC, pt: int = PT) -> bytes:
    return RTP_HEADER.pack(0x80, pt, seq & 0xFFFF, (seq * N) & 0xFFFFFFFF, ssrc) + audio(seq).astype(">i2").tobytes()


def expected(*parts: int | None) -> np.ndarray:
    """The ring contents for these packets; None is one lost packet (silence)."""
    return np.concatenate([np.zeros(N, np.int16) if p is None else audio(p) for p in parts])


class Sender:
    """A UDP socket on its own port: one Asterisk externalMedia channel."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.target = target
        self.sent = 0

    @property
    def source(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def send(self, *seqs: int) -> None:
        for seq in seqs:
            self.send_raw(rtp(seq))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)
        self.sent += 1

    def close(self) -> None:
        self.sock.close()


async def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    """Yield to the loop until the protocol has done what we wait for (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


@pytest.fixture
def rings() -> Iterator[AudioRings]:
    spec = RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.{os.getpid()}.rings", n_slots=4, capacity=64000)
    r = AudioRings.create(spec)
    yield r
    r.close()
    r.unlink()


MakeSender = Callable[[tuple[str, int]], Sender]


@pytest.fixture
def make_sender() -> Iterator[Callable[[tuple[str, int]], Sender]]:
    senders: list[Sender] = []

    def make(target: tuple[str, int]) -> Sender:
        senders.append(Sender(target))
        return senders[-1]

    yield make
    for sender in senders:
        sender.close()


def ring_audio(rings: AudioRings, lease: SlotLease) -> np.ndarray:
    return rings.read(lease, 0, rings.cursor(lease))


async def test_audio_lands_in_the_ring_bit_exact(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    sender.send(*range(100))
    await wait_until(lambda: rings.cursor(lease) == 100 * N, "100 packets in the ring")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(*range(100)))
    stats = capture.call_stats()["c1"]
    assert (stats.received, stats.lost, stats.invalid) == (100, 0, 0)


async def test_a_restarted_capture_fills_the_gap_it_left_and_keeps_the_calls_time(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    """kill -9 of the capture: its successor learns the call again (re-announced), and the packets
    sent while no capture ran are silence of their length, counted lost: packet 60 lands where a
    capture that never died would have put it."""
    first, address = await start_capture()
    lease = rings.allocate()
    sender = make_sender(address)
    first.add_call("c1", lease, sender.source)
    sender.send(*range(50))
    await wait_until(lambda: rings.cursor(lease) == 50 * N, "50 packets in the ring")
    for _ in range(10):
        first.tick()  # bookmarks its RTP position in the slot now and then
    sender.send(50)  # one more after the last bookmark
    await wait_until(lambda: rings.cursor(lease) == 51 * N, "51 packets in the ring")
    first.transport.close()  # type: ignore[union-attr]  # killed: packets 51..59 reach nobody

    second, address2 = await start_capture()
    second.add_call("c1", lease, sender.source)
    sender.target = address2
    sender.send(*range(60, 80))
    await wait_until(lambda: rings.cursor(lease) == 80 * N, "the call's audio resumed")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(*range(51), *[None] * 9, *range(60, 80)))
    stats = second.call_stats()["c1"]
    assert (stats.received, stats.lost) == (20, 9) and second.calls_resumed == 1 and second.resume_gaps == 1
    # A new call in a fresh slot has nothing to resume.
    fresh = rings.allocate()
    other = make_sender(address2)
    second.add_call("c2", fresh, other.source)
    other.send(*range(1000, 1010))
    await wait_until(lambda: rings.cursor(fresh) == 10 * N, "the new call's audio")
    assert second.calls_resumed == 1


async def test_reordering_duplicates_loss_and_late(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(reorder_window=3)
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    # 3 before 2: reordered; 4 twice: a duplicate; 5 missing until 6..9 overflow the window.
    sender.send(0, 1, 3, 2, 4, 4, 6, 7, 8, 9)
    await wait_until(lambda: capture.datagrams == 10, "10 datagrams")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(0, 1, 2, 3, 4, None, 6, 7, 8, 9))
    sender.send(5)  # too late: its silence is in the ring already
    await wait_until(lambda: capture.datagrams == 11, "11 datagrams")
    stats = capture.call_stats()["c1"]
    assert (stats.received, stats.lost, stats.duplicate, stats.late) == (11, 1, 1, 1)
    assert rings.cursor(lease) == 10 * N


async def test_gap_is_released_by_tick_after_the_wait(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(reorder_window=5)
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    sender.send(0, 2)
    await wait_until(lambda: capture.datagrams == 2, "2 datagrams")
    assert rings.cursor(lease) == N  # 2 is held, waiting for 1
    capture.tick(time.monotonic())  # not waited long enough yet
    assert rings.cursor(lease) == N
    capture.tick(time.monotonic() + 1.0)
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(0, None, 2))


async def test_remove_call_flushes_what_is_held(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(reorder_window=5)
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    sender.send(0, 2, 3)
    await wait_until(lambda: capture.datagrams == 3, "3 datagrams")
    stats = capture.remove_call("c1")
    assert stats is not None and stats.lost == 1
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(0, None, 2, 3))
    sender.send(4)  # no call any more: held as an unknown source
    await wait_until(lambda: capture.datagrams == 4, "4 datagrams")
    assert rings.cursor(lease) == 4 * N and capture.stats()["early_held"] == 1.0


async def test_sequence_numbers_wrap_around(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(reorder_window=3)
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    seqs = [65533, 65534, 65535, 1, 0, 2, 3]
    sender.send(*seqs)
    await wait_until(lambda: capture.datagrams == len(seqs), "all datagrams")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(65533, 65534, 65535, 0, 1, 2, 3))
    stats = capture.call_stats()["c1"]
    assert (stats.lost, stats.duplicate, stats.late, stats.resyncs) == (0, 0, 0, 0)


async def test_two_calls_from_two_ports_go_to_two_slots(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease_a, lease_b = rings.allocate(), rings.allocate()
    sender_a, sender_b = make_sender(address), make_sender(address)
    capture.add_call("a", lease_a, sender_a.source)
    capture.add_call("b", lease_b, sender_b.source)
    for seq in range(50):
        sender_a.send(seq)
        sender_b.send(1000 + seq)
    await wait_until(lambda: rings.cursor(lease_a) == rings.cursor(lease_b) == 50 * N, "both calls")
    np.testing.assert_array_equal(ring_audio(rings, lease_a), expected(*range(50)))
    np.testing.assert_array_equal(ring_audio(rings, lease_b), expected(*range(1000, 1050)))
    values = capture.stats()
    assert values["calls_active"] == 2.0 and values["received"] == 100.0
    assert values[f"slot{lease_a.slot}_received"] == 50.0 and values[f"slot{lease_b.slot}_received"] == 50.0


async def test_a_call_on_a_reused_source_takes_it_over(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease_a, lease_b = rings.allocate(), rings.allocate()
    sender = make_sender(address)
    capture.add_call("a", lease_a, sender.source)
    sender.send(0)
    await wait_until(lambda: rings.cursor(lease_a) == N, "call a's packet")
    capture.add_call("b", lease_b, sender.source)  # the port was reused before a's CallEnded came
    sender.send(500, 501)
    await wait_until(lambda: rings.cursor(lease_b) == 2 * N, "call b's packets")
    assert rings.cursor(lease_a) == N
    np.testing.assert_array_equal(ring_audio(rings, lease_b), expected(500, 501))
    assert capture.remove_call("a") is not None and capture.call_stats().keys() == {"b"}


async def test_unknown_source_is_dropped_and_counted(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(unknown_grace_s=2.0, max_unknown_sources=2, max_unknown_packets=4)
    lease = rings.allocate()
    known, strangers = make_sender(address), [make_sender(address) for _ in range(3)]
    capture.add_call("c1", lease, known.source)
    for stranger in strangers:
        stranger.send(*range(6))  # the third source finds no room; the others keep their last 4
    known.send(0, 1)
    await wait_until(lambda: capture.datagrams == 20, "20 datagrams")
    values = capture.stats()
    assert values["unknown_source"] == 2 + 2 + 6 and values["early_held"] == 8
    capture.tick(time.monotonic() + 3.0)  # past the grace
    values = capture.stats()
    assert values["unknown_source"] == 18 and values["early_held"] == 0 and values["early_replayed"] == 0
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(0, 1))


async def test_packets_sent_before_the_call_is_announced_are_replayed(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture(unknown_grace_s=30.0)
    lease = rings.allocate()
    sender = make_sender(address)
    sender.send(*range(10))  # RTP beats CallStarted
    await wait_until(lambda: capture.datagrams == 10, "10 datagrams")
    assert rings.cursor(lease) == 0
    capture.add_call("c1", lease, sender.source)
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(*range(10)))
    sender.send(10, 11)
    await wait_until(lambda: rings.cursor(lease) == 12 * N, "live packets after the replay")
    values = capture.stats()
    assert values["early_replayed"] == 10 and values["unknown_source"] == 0 and values["early_held"] == 0


async def test_call_announced_with_a_wildcard_host_matches_by_port(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease = rings.allocate()
    sender = make_sender(address)
    port = sender.sock.getsockname()[1]
    capture.add_call("c1", lease, f"0.0.0.0:{port}")
    sender.send(0, 1, 2)
    await wait_until(lambda: rings.cursor(lease) == 3 * N, "3 packets")
    capture.add_call("c1", lease, f"0.0.0.0:{port}")  # a repeated CallStarted changes nothing
    sender.send(3)
    await wait_until(lambda: rings.cursor(lease) == 4 * N, "4 packets")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(0, 1, 2, 3))


async def test_a_freed_slot_stops_the_call_without_crashing(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    sender.send(0)
    await wait_until(lambda: rings.cursor(lease) == N, "1 packet")
    rings.free(lease)  # the call ended; CallEnded has not reached the capture yet
    sender.send(1)
    await wait_until(lambda: capture.stale_slot == 1, "the stale write")
    assert capture.call_stats() == {} and capture.stats()["received"] == 2.0


def test_source_parsing() -> None:
    assert parse_source("127.0.0.1:10128") == ("127.0.0.1", 10128)
    assert parse_source("[::1]:4000") == ("::1", 4000)
    assert parse_source("[::ffff:10.0.0.5]:4000") == ("10.0.0.5", 4000)
    assert parse_source("0.0.0.0:4000") == ("", 4000)
    for bad in ("127.0.0.1", "host:", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError, match="is not host:port"):
            parse_source(bad)


def garbage(rng: random.Random) -> bytes:
    """One datagram that is not a valid slin16 packet of payload type 118, of a random kind."""
    good = rtp(rng.randrange(65536))
    kind = rng.randrange(9)
    if kind == 0:  # shorter than a header
        return rng.randbytes(rng.randrange(12))
    if kind == 1:  # random bytes, any version but 2
        data = bytearray(rng.randbytes(rng.randrange(12, 1500)))
        data[0] = (data[0] & 0x3F) | rng.choice((0, 1, 3)) << 6
        return bytes(data)
    if kind == 2:  # a valid packet truncated to an odd payload length
        return good[:12 + 2 * rng.randrange(320) + 1]
    if kind == 3:  # header only
        return good[:12]
    if kind == 4:  # another payload type
        return good[:1] + bytes((rng.choice([pt for pt in range(128) if pt != PT]) | (good[1] & 0x80),)) + good[2:]
    if kind == 5:  # CSRC count beyond the end
        cc = rng.randrange(1, 16)
        return bytes((0x80 | cc,)) + good[1:12 + rng.randrange(4 * cc)]
    if kind == 6:  # extension header, or its value, beyond the end
        words = rng.randrange(1, 100)
        extension = struct.pack("!HH", 0xBEDE, words) + rng.randbytes(4 * words)
        cut = rng.randrange(4) if rng.random() < 0.2 else rng.randrange(4, len(extension))
        return bytes((0x90,)) + good[1:12] + extension[:cut]
    if kind == 7:  # padding count of 0, or longer than what follows the header
        body = rng.randbytes(rng.randrange(254))
        count = 0 if rng.random() < 0.5 else rng.randrange(len(body) + 2, 256)
        return bytes((0xA0,)) + good[1:12] + body + bytes((count,))
    return good + bytes(4096 - len(good) + 1 + rng.randrange(1000))  # over the size limit


async def test_random_datagrams_never_crash_and_are_all_counted(
        rings: AudioRings, start_capture: StartCapture, make_sender: MakeSender) -> None:
    capture, address = await start_capture()
    lease = rings.allocate()
    sender = make_sender(address)
    capture.add_call("c1", lease, sender.source)
    sender.send(*range(10))
    rng = random.Random(1234)
    corpus = [garbage(rng) for _ in range(10_000)]
    for data in corpus:  # the test's own premise: every one of them is invalid
        with pytest.raises(ValueError):
            unpack_slin16(data, PT)
    for start in range(0, len(corpus), BURST):
        for data in corpus[start:start + BURST]:
            sender.send_raw(data)
        sent = sender.sent
        await wait_until(lambda sent=sent: capture.datagrams == sent, f"{sent} datagrams")  # type: ignore[misc]
    assert capture.invalid == 10_000 and capture.call_stats()["c1"].invalid == 10_000
    sender.send(*range(10, 20))  # the stream goes on as if nothing happened
    await wait_until(lambda: rings.cursor(lease) == 20 * N, "the valid stream")
    np.testing.assert_array_equal(ring_audio(rings, lease), expected(*range(20)))
    stats = capture.call_stats()["c1"]
    assert (stats.received, stats.lost, stats.duplicate, stats.late, stats.stray) == (20, 0, 0, 0, 0)
    values = capture.stats()
    assert values["invalid"] == 10_000 and values["datagrams"] == 10_020
    assert Metrics(process="rtp_capture", values=values) == decode(
        encode(Metrics(process="rtp_capture", values=values))
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rtp_capture_process_under_the_supervisor(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1", rtp_port=free_udp_port(), rtp_unknown_grace_s=30.0)
    sup = Supervisor(settings, [ProcessSpec("rtp_capture", "procs.rtp_capture", env={"PYTHONPATH": str(REPO)})])
    sup.start()
    publisher = Publisher(settings.endpoint("bus_pub"))
    sender = Sender((settings.rtp_ip, settings.rtp_port))
    try:
        assert sup.rings is not None
        rings = sup.rings
        lease = rings.allocate()
        started = CallStarted(call_id="c1", slot=lease.slot, generation=lease.generation, rtp_source=sender.source)
        sender.send(*range(10))  # held by the capture until it learns whose they are
        deadline = time.monotonic() + 30
        while rings.cursor(lease) < 10 * N:
            # PUB/SUB drops what is published before the subscription has propagated: repeat
            # (CallStarted is idempotent) until the audio shows the capture got it.
            assert time.monotonic() < deadline, "capture never wrote the call's audio"
            publisher.publish(started)
            sup.poll(0.05)
        sender.send(*range(10, 20))
        while rings.cursor(lease) < 20 * N:
            assert time.monotonic() < deadline, "live packets never reached the ring"
            sup.poll(0.05)
        np.testing.assert_array_equal(rings.read(lease, 0, 20 * N), expected(*range(20)))
        child = sup.children["rtp_capture"]
        while child.metrics.get("received") != 20.0:
            assert time.monotonic() < deadline, f"no metrics with the 20 packets: {child.metrics}"
            sup.poll(0.05)
        assert child.metrics["lost"] == 0.0 and child.metrics["early_replayed"] == 10.0
        publisher.publish(CallEnded(call_id="c1", slot=lease.slot, generation=lease.generation))
        while child.metrics.get("calls_active") != 0.0:
            assert time.monotonic() < deadline, "CallEnded not handled"
            sup.poll(0.05)
        assert child.ready and child.restarts == 0
    finally:
        sender.close()
        publisher.close()
        sup.stop()
