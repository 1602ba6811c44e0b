"""RTP capture: slin16 from Asterisk's externalMedia channels into the calls' shared-memory rings.

One UDP port for every call, demultiplexed by source address. Asterisk sends each externalMedia
channel's RTP from that channel's own local port (UNICASTRTP_LOCAL_ADDRESS:UNICASTRTP_LOCAL_PORT,
reported to the dialog in the externalMedia reply and passed on as CallStarted.rtp_source), so the
source "host:port" names the call. One port rather than one per call means one socket to read, no
port pool to allocate and recycle between the dialog and the capture, no race where a port freed by
one call still receives the previous call's late packets, and a single firewall rule between
Asterisk and us. (Asterisk's strict RTP also locks onto the address that answers; we never send.)

Per datagram: look the source up, parse and check the packet (rtcore.media.rtp), reorder it
(rtcore.media.jitterbuffer), then copy the big-endian samples into the call's ring, which converts the
byte order while copying; lost packets become silence of the same length.

Nothing a datagram contains can stop the capture: a malformed one or one of another payload type is
counted as invalid and dropped. A datagram from a source no call has announced is held for
`unknown_grace_s` (RTP can beat the CallStarted message here), replayed when the call is added, or
else dropped and counted as unknown_source; held memory is bounded by source and packet counts.

The capture runs in one asyncio loop: `datagram_received` per packet, `tick(now)` every 20 ms for
the reorder deadlines and the expiry of unknown sources, `stats()` for the Metrics message. The
Prometheus families (rtcore.runtime.telemetry, RTP capture) follow the same counters: once a second
the tick adds to each what it gained since (`export_metrics`), never an increment per packet, and
samples each receiving call's interarrival jitter.

A restarted capture (kill -9, then the supervisor) carries on in the same slots: every tick
bookmarks each call's RTP position against its ring cursor (`AudioRings.set_rtp_mark`), and a call
learnt again whose ring already holds audio resumes from that bookmark. The first packet after
the gap is placed where its timestamp says, the packets missed meanwhile become silence and are
counted as lost: the call's audio is not shifted in time, so sample positions stay the caller's
time for the VAD's resumed cuts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from rtcore.media.jitterbuffer import Item, JitterBuffer, StreamStats
from rtcore.media.rtp import PayloadTypeError, unpack_slin16
from rtcore.media.seqnum import uint16_diff, uint32_diff
from rtcore.runtime import telemetry
from rtcore.runtime.config import Settings
from rtcore.runtime.ring import AudioRings, RingError, SlotLease

log = logging.getLogger(__name__)

BIG_ENDIAN_INT16 = np.dtype(">i2")
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
MAX_RESUME_GAP_S = 60.0  # a longer gap after a restart is not filled: the stream starts afresh
BOOKMARK_EVERY_TICKS = 5  # 100 ms at the 20 ms tick
EXPORT_EVERY_S = 1.0  # Prometheus counters and jitter samples
_IPV4_MAPPED_PREFIX = "::ffff:"

Samples = npt.NDArray[np.int16]
Source = tuple[str, int]  # (host, port) as the socket reports it for IPv4


@dataclass(frozen=True)
class CaptureOptions:
    """How the capture treats its stream; `from_settings` maps the rtp_* settings."""

    payload_type: int = 118
    reorder_window: int = 5  # packets held to reorder before a gap is declared lost
    clock_rate: int = 16000
    unknown_grace_s: float = 2.0  # how long packets of an unannounced source are held
    max_unknown_sources: int = 64
    max_unknown_packets: int = 150  # per source (3 s of 20 ms packets); the oldest go first

    @classmethod
    def from_settings(cls, settings: Settings) -> CaptureOptions:
        return cls(payload_type=settings.rtp_payload_type, reorder_window=settings.rtp_reorder_window,
                   clock_rate=settings.sample_rate, unknown_grace_s=settings.rtp_unknown_grace_s)


def parse_source(text: str) -> Source:
    """"host:port" or "[v6 host]:port" -> (host, port); a wildcard host matches any host."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"RTP source {text!r} is not host:port")
    host = host.strip("[]").removeprefix(_IPV4_MAPPED_PREFIX)
    return ("" if host in _WILDCARD_HOSTS else host), int(port_text)


class _Call:
    __slots__ = ("addresses", "call_id", "jitter", "jitter_sampled", "lease", "resume", "source")

    def __init__(self, call_id: str, lease: SlotLease, source: Source | None, jitter: JitterBuffer[Samples]) -> None:
        self.call_id = call_id
        self.lease = lease
        self.source = source
        self.jitter = jitter
        self.addresses: list[Any] = []  # keys of the capture's routing table that lead here
        # A predecessor's RTP bookmark (ssrc, next seq, next timestamp, ring cursor), until the
        # first packet has been placed by it.
        self.resume: tuple[int, int, int, int] | None = None
        self.jitter_sampled = 0  # packets received when its jitter was last sampled


class _EarlySource:
    """Packets from a source no call has announced yet, waiting for its CallStarted."""

    __slots__ = ("first_seen", "packets")

    def __init__(self, first_seen: float, max_packets: int) -> None:
        self.first_seen = first_seen
        self.packets: deque[tuple[bytes, float]] = deque(maxlen=max_packets)


class RtpCapture(asyncio.DatagramProtocol):
    """Receives every call's RTP on one socket and writes each call's audio into its ring slot."""

    def __init__(self, rings: AudioRings, options: CaptureOptions | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or CaptureOptions()
        self._rings = rings
        self._clock = clock
        self._payload_type = self.options.payload_type
        self._calls: dict[str, _Call] = {}
        self._routes: dict[Any, _Call] = {}  # source address as received -> call
        self._by_port: dict[int, _Call] = {}  # calls announced with a wildcard host
        self._early: dict[Source, _EarlySource] = {}
        self.transport: asyncio.DatagramTransport | None = None
        # Process-wide counters (since start).
        self.datagrams = 0
        self.invalid = 0
        self.invalid_payload_type = 0  # of `invalid`: well-formed RTP of another payload type
        self.unknown_source = 0
        self.early_replayed = 0
        self.stale_slot = 0
        self.calls_total = 0
        self.calls_resumed = 0  # calls taken over from a predecessor's bookmark
        self._ticks = 0
        self.resume_gaps = 0  # restart gaps filled with silence
        self.last_error = ""
        self._ended = StreamStats(clock_rate=self.options.clock_rate)  # sums over ended calls
        self._exported: dict[str, int] = {}  # counter -> what export_metrics has added to it so far
        self._export_due = -math.inf

    # --- asyncio.DatagramProtocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams += 1
        call = self._routes.get(addr)
        if call is None:
            call = self._route_new_address(addr)
            if call is None:
                self._hold_early(data, addr)
                return
        self._receive(call, data, self._clock())

    def error_received(self, exc: Exception) -> None:
        log.warning("RTP socket error: %s", exc)

    # --- calls --------------------------------------------------------------------------------
    def add_call(self, call_id: str, lease: SlotLease, rtp_source: str) -> None:
        """Route RTP from `rtp_source` ("host:port"; empty: not known yet) into the slot. Idempotent;
        a repeat with a source sets or changes it. Packets the source sent early are replayed."""
        if not 0 <= lease.slot < self._rings.spec.n_slots:
            raise ValueError(f"call {call_id}: slot {lease.slot} out of range (0..{self._rings.spec.n_slots - 1})")
        source = parse_source(rtp_source) if rtp_source else None
        call = self._calls.get(call_id)
        if call is not None and call.lease != lease:
            self.remove_call(call_id)  # same call id on another slot: start over there
            call = None
        if call is None:
            for other in list(self._calls.values()):
                if other.lease.slot == lease.slot:  # that call's CallEnded never reached us
                    log.warning("call %s takes slot %d from call %s", call_id, lease.slot, other.call_id)
                    self.remove_call(other.call_id)
            o = self.options
            call = _Call(call_id, lease, None, JitterBuffer(o.reorder_window, o.clock_rate))
            try:
                call.resume = self._rings.rtp_mark(lease) if self._rings.cursor(lease) else None
            except RingError:
                call.resume = None
            if call.resume is not None:
                self.calls_resumed += 1
            self._calls[call_id] = call
            self.calls_total += 1
            log.info("call %s: slot %d, RTP from %s", call_id, lease.slot, rtp_source or "(not known yet)")
        if source is not None and source != call.source:
            self._unroute(call)
            call.source = source
            previous = self._routes.get(source) if source[0] else self._by_port.get(source[1])
            if previous is not None:  # Asterisk reused the port before that call's CallEnded reached us
                log.warning("call %s takes RTP source %s from call %s", call_id, rtp_source, previous.call_id)
                self._unroute(previous)
                previous.source = None
            if source[0]:
                self._routes[source] = call
                call.addresses.append(source)
            else:
                self._by_port[source[1]] = call
            self._replay_early(call)

    def remove_call(self, call_id: str) -> StreamStats | None:
        """Stop routing the call's RTP; what is held is written first (gaps as silence)."""
        call = self._calls.get(call_id)
        if call is None:
            return None
        self._write(call, call.jitter.flush())
        return self._forget(call)

    def _forget(self, call: _Call) -> StreamStats:
        if self._calls.get(call.call_id) is call:
            del self._calls[call.call_id]
        self._unroute(call)
        call_id = call.call_id
        stats = call.jitter.stats
        for f in fields(StreamStats):
            if f.name not in ("jitter", "clock_rate"):
                setattr(self._ended, f.name, getattr(self._ended, f.name) + getattr(stats, f.name))
        log.info("call %s ended: %d packets, %d lost, %d late, %d duplicate, %d invalid, jitter %.1f ms",
                 call_id, stats.received, stats.lost, stats.late, stats.duplicate, stats.invalid, stats.jitter_ms)
        return stats

    def call_stats(self) -> dict[str, StreamStats]:
        return {call_id: call.jitter.stats for call_id, call in self._calls.items()}

    # --- periodic -----------------------------------------------------------------------------
    def tick(self, now: float | None = None) -> None:
        """Every ~20 ms: release gaps whose wait expired, drop unknown sources whose grace expired."""
        now = self._clock() if now is None else now
        rings = self._rings
        self._ticks += 1
        # Any consistent (position, cursor) pair will do, however old: bookmark now and then.
        bookmark = self._ticks % BOOKMARK_EVERY_TICKS == 0
        for call in list(self._calls.values()):
            if call.jitter.held:
                self._write(call, call.jitter.flush_due(now))
            position = call.jitter.position() if bookmark else None
            if position is not None and call.resume is None:
                try:
                    rings.set_rtp_mark(call.lease, *position, rings.cursor(call.lease))
                except RingError:
                    pass  # the slot changed hands: CallEnded is on its way
        if self._early:
            grace = self.options.unknown_grace_s
            for source, early in list(self._early.items()):
                if now - early.first_seen > grace:
                    del self._early[source]
                    self.unknown_source += len(early.packets)
                    log.warning("dropped %d RTP packets from %s:%d: no call announced this source",
                                len(early.packets), source[0], source[1])
        if now >= self._export_due:
            self._export_due = now + EXPORT_EVERY_S
            self.export_metrics()

    def export_metrics(self) -> None:
        """Bring the Prometheus families up to date: each counter gets what the capture's own
        counter gained since the last export, and each call that received packets since then
        has its RFC 3550 interarrival jitter observed (in seconds)."""
        totals = self._totals()
        current = {
            "received": totals.received, "lost": totals.lost, "late": totals.late,
            "duplicate": totals.duplicate, "stray": totals.stray,
            "malformed": self.invalid - self.invalid_payload_type, "payload_type": self.invalid_payload_type,
            "unknown_source": self.unknown_source,
        }
        exported = self._exported
        for name, value in current.items():
            gained = value - exported.get(name, 0)
            if gained > 0:
                _COUNTERS[name].inc(gained)
                exported[name] = value
        for call in self._calls.values():
            stats = call.jitter.stats
            # One packet gives no estimate yet, and a call gone quiet has no current jitter.
            if stats.received > max(call.jitter_sampled, 1):
                call.jitter_sampled = stats.received
                telemetry.RTP_JITTER.observe(stats.jitter / stats.clock_rate)

    def _totals(self) -> StreamStats:
        """The stream counters summed over every call since start (ended and active)."""
        totals = StreamStats()
        calls = list(self._calls.values())
        for f in fields(StreamStats):
            if f.name not in ("jitter", "clock_rate"):
                setattr(totals, f.name, getattr(self._ended, f.name)
                        + sum(getattr(c.jitter.stats, f.name) for c in calls))
        return totals

    def stats(self) -> dict[str, float]:
        """Counters for the Metrics message: process totals, then per active call keyed by slot
        (bounded key set: at most max_calls slots, however many calls come and go)."""
        totals = self._totals()
        calls = list(self._calls.values())
        values: dict[str, float] = {
            "datagrams": self.datagrams,
            "invalid": self.invalid,
            "unknown_source": self.unknown_source,
            "early_held": sum(len(e.packets) for e in self._early.values()),
            "early_replayed": self.early_replayed,
            "stale_slot": self.stale_slot,
            "calls_active": len(calls),
            "calls_total": self.calls_total,
            "calls_resumed": self.calls_resumed,
            "resume_gaps": self.resume_gaps,
            "received": totals.received,
            "lost": totals.lost,
            "late": totals.late,
            "duplicate": totals.duplicate,
            "stray": totals.stray,
            "resyncs": totals.resyncs,
            "silence_samples": totals.silence_samples,
            "jitter_ms_max": max((c.jitter.stats.jitter_ms for c in calls), default=0.0),
        }
        drops = self.kernel_drops()
        if drops is not None:
            values["kernel_drops"] = drops
        for call in calls:
            s = call.jitter.stats
            prefix = f"slot{call.lease.slot}_"
            values[prefix + "received"] = s.received
            values[prefix + "lost"] = s.lost
            values[prefix + "late"] = s.late
            values[prefix + "duplicate"] = s.duplicate
            values[prefix + "invalid"] = s.invalid
            values[prefix + "jitter_ms"] = s.jitter_ms
        return {k: float(v) for k, v in values.items()}

    def kernel_drops(self) -> int | None:
        """Datagrams the kernel dropped on our socket (receive buffer full), from /proc/net/udp."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return None
        return socket_drops(sock.fileno())

    # --- hot path -----------------------------------------------------------------------------
    def _receive(self, call: _Call, data: bytes, arrival: float) -> None:
        try:
            seq, timestamp, ssrc, start, end = unpack_slin16(data, self._payload_type)
        except ValueError as exc:
            self.invalid += 1
            if isinstance(exc, PayloadTypeError):
                self.invalid_payload_type += 1
            call.jitter.stats.invalid += 1
            self.last_error = exc.args[0]
            if call.jitter.stats.invalid == 1:
                log.warning("call %s: invalid RTP datagram dropped: %s", call.call_id, exc)
            return
        n = (end - start) >> 1
        if call.resume is not None:
            self._resume(call, seq, timestamp, ssrc, n)
        self._write(call, call.jitter.push(seq, timestamp, ssrc, n, np.frombuffer(data, BIG_ENDIAN_INT16, n, start),
                                           arrival))

    def _resume(self, call: _Call, seq: int, timestamp: int, ssrc: int, samples: int) -> None:
        """The first packet of a call taken over from a predecessor: fill the gap since its last
        written sample with silence of what the timestamps say is missing, count it as lost."""
        mark_ssrc, mark_seq, mark_ts, mark_cursor = call.resume  # type: ignore[misc]
        call.resume = None
        if ssrc != mark_ssrc:
            return  # another stream: nothing to line up with
        try:
            cursor = self._rings.cursor(call.lease)
        except RingError:
            return
        # The bookmark says which timestamp goes at mark_cursor; samples written after it (up to
        # 20 ms of them) followed on from it.
        fill = uint32_diff(timestamp, mark_ts) - (cursor - mark_cursor)
        missing = uint16_diff(seq, mark_seq) - (cursor - mark_cursor) // max(samples, 1)
        if not 0 < fill <= MAX_RESUME_GAP_S * self.options.clock_rate or missing <= 0:
            return
        stats = call.jitter.stats
        stats.lost += missing
        stats.silence_samples += fill
        self.resume_gaps += 1
        log.info("call %s: resumed after a capture restart; %d packets (%.2f s) missed, filled with silence",
                 call.call_id, missing, fill / self.options.clock_rate)
        self._write(call, [fill])

    def _write(self, call: _Call, items: list[Item[Samples]]) -> None:
        rings = self._rings
        try:
            for item in items:
                if item.__class__ is int:
                    rings.write_silence(call.lease, item)
                else:
                    rings.write(call.lease, item)
        except RingError as exc:
            # The slot was freed (the call ended) before CallEnded reached us: stop writing there.
            self.stale_slot += 1
            if self._calls.get(call.call_id) is call:
                log.warning("call %s: %s; dropping the call", call.call_id, exc)
                self._forget(call)

    # --- routing ------------------------------------------------------------------------------
    def _route_new_address(self, addr: Any) -> _Call | None:
        """An address not in the routing table: an IPv6 socket's form of a known source, a call
        announced with a wildcard host, or nobody (None). Found ones are cached for the next packet."""
        source = _normalise(addr)
        call = self._routes.get(source) or self._by_port.get(source[1])
        if call is not None:
            self._routes[addr] = call
            call.addresses.append(addr)
        return call

    def _unroute(self, call: _Call) -> None:
        for address in call.addresses:
            if self._routes.get(address) is call:
                del self._routes[address]
        call.addresses.clear()
        if call.source is not None and self._by_port.get(call.source[1]) is call:
            del self._by_port[call.source[1]]

    def _hold_early(self, data: bytes, addr: Any) -> None:
        source = _normalise(addr)
        early = self._early.get(source)
        if early is None:
            o = self.options
            if len(self._early) >= o.max_unknown_sources or o.unknown_grace_s <= 0:
                self.unknown_source += 1
                return
            early = self._early[source] = _EarlySource(self._clock(), o.max_unknown_packets)
        if len(early.packets) == early.packets.maxlen:
            self.unknown_source += 1  # the deque drops its oldest
        early.packets.append((data, self._clock()))

    def _replay_early(self, call: _Call) -> None:
        assert call.source is not None
        host, port = call.source
        waiting = [s for s in self._early if s[1] == port and (not host or s[0] == host)]
        for source in waiting:
            early = self._early.pop(source)
            if len(waiting) > 1 and not host:  # a wildcard host and several candidates: none replayed
                self.unknown_source += len(early.packets)
                continue
            self.early_replayed += len(early.packets)
            for data, arrival in early.packets:
                if self._calls.get(call.call_id) is not call:
                    break  # dropped meanwhile (its slot was freed)
                self._receive(call, data, arrival)


# What export_metrics adds to, by the name of the capture's counter.
_COUNTERS = {
    "received": telemetry.RTP_RECEIVED, "lost": telemetry.RTP_LOST, "late": telemetry.RTP_LATE,
    "duplicate": telemetry.RTP_DISCARDED.labels(reason="duplicate"),
    "stray": telemetry.RTP_DISCARDED.labels(reason="stray"),
    "malformed": telemetry.RTP_INVALID.labels(reason="malformed"),
    "payload_type": telemetry.RTP_INVALID.labels(reason="payload_type"),
    "unknown_source": telemetry.RTP_INVALID.labels(reason="unknown_source"),
}


def _normalise(addr: Any) -> Source:
    host: str = addr[0]
    return host.removeprefix(_IPV4_MAPPED_PREFIX), addr[1]


def udp_sockets() -> Iterator[list[str]]:
    """The rows of the kernel's UDP socket tables (/proc/net/udp and udp6), split in columns:
    [1] local address:port (hex), [9] inode, [-1] drops. Nothing where they cannot be read."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                next(f)
                rows = [line.split() for line in f]
        except (OSError, StopIteration):
            continue
        yield from (cols for cols in rows if len(cols) > 9)


def socket_drops(fd: int) -> int | None:
    """The kernel's drop counter of a UDP socket (last column of /proc/net/udp), by inode."""
    inode = str(os.fstat(fd).st_ino)
    return next((int(cols[-1]) for cols in udp_sockets() if cols[9] == inode), None)


def bind_rtp_socket(ip: str, port: int, recv_buffer_bytes: int) -> socket.socket:
    """A non-blocking UDP socket bound to (ip, port) with the receive buffer asked for.

    The buffer absorbs bursts while the loop is busy elsewhere (2 s of 1000 calls is ~8 MiB of
    kernel memory). SO_RCVBUFFORCE goes past net.core.rmem_max when we may (CAP_NET_ADMIN)."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), recv_buffer_bytes)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer_bytes)
        effective = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
        if effective < recv_buffer_bytes:
            log.warning("RTP receive buffer is %d bytes, %d asked: raise net.core.rmem_max",
                        effective, recv_buffer_bytes)
        sock.bind((ip, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_capture(loop: asyncio.AbstractEventLoop, settings: Settings,
                       rings: AudioRings) -> tuple[asyncio.DatagramTransport, RtpCapture]:
    """Bind (rtp_ip, rtp_port) and start receiving into `rings`."""
    sock = bind_rtp_socket(settings.rtp_ip, settings.rtp_port, settings.rtp_recv_buffer_bytes)
    options = CaptureOptions.from_settings(settings)
    transport, protocol = await loop.create_datagram_endpoint(lambda: RtpCapture(rings, options), sock=sock)
    log.info("RTP capture on %s:%d (payload type %d, reorder window %d packets)", settings.rtp_ip,
             settings.rtp_port, options.payload_type, options.reorder_window)
    return transport, protocol
