"""Per-stream reordering and loss, duplicate and late detection for one call's RTP.

The ring must receive the call's audio strictly in sequence order, with lost packets replaced by
silence of the same duration so that sample indices stay aligned with the caller's time. Rules:

- In order (the expected sequence number, nothing held): released at once, no added delay.
- Ahead of the expected one (a gap): held. The gap is declared lost when more than `window`
  packets are held, or when `flush_due(now)` finds a held packet older than `window` x 20 ms; the
  missing packets are then released as silence followed by the held packets that now follow in
  order. The silence lasts what the RTP timestamps say is missing; where they disagree with the
  numbering (backwards, or more than `max_fill_s`) it is the missing count x the last packet's
  length, capped at `max_fill_s`.
- Behind the expected one, at most MAX_MISORDER: late if its sequence number was declared lost
  (its silence is already in the ring) or precedes the stream's first packet, else a duplicate;
  either way dropped and counted. A packet already held is a duplicate too.
- Further away than MAX_DROPOUT ahead or MAX_MISORDER behind (RFC 3550 A.1): a stray, dropped,
  unless the next packet follows it: then the sender restarted its numbering, and the stream is
  resynchronised there without any silence fill. A new SSRC resynchronises at once.

`push` returns what to write, in order: each item is a payload (as pushed) or an int, a number of
silence samples. 16-bit wrap-around is handled everywhere (rtcore.media.seqnum).

Interarrival jitter is RFC 3550 §6.4.1 / A.8: J += (|D| - J) / 16, D being the difference of
relative transit times in timestamp units (arrival seconds x clock rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeAlias, TypeVar

from rtcore.media.seqnum import uint16_diff, uint32_diff

P = TypeVar("P")
Item: TypeAlias = P | int  # a payload, or a count of silence samples

MAX_DROPOUT = 250  # packets ahead (5 s at 20 ms) still treated as a gap to fill
MAX_MISORDER = 100  # packets behind still recognised as late or duplicate


@dataclass
class StreamStats:
    """Counters of one stream. `received` counts every valid packet, whatever became of it."""

    received: int = 0
    lost: int = 0  # sequence numbers declared missing and filled with silence
    late: int = 0  # arrived after being declared lost
    duplicate: int = 0
    stray: int = 0  # sequence number too far off to place, dropped
    invalid: int = 0  # malformed datagrams from the stream's source (counted by the capture)
    resyncs: int = 0
    silence_samples: int = 0
    jitter: float = 0.0  # RFC 3550 estimate, in timestamp units
    clock_rate: int = 16000

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate


class JitterBuffer(Generic[P]):
    """Reorders one RTP stream. Payloads are opaque; `samples` says how long each one is."""

    def __init__(self, window: int = 5, clock_rate: int = 16000, packet_ms: float = 20.0,
                 max_fill_s: float = 5.0) -> None:
        self.window = window
        self.clock_rate = clock_rate
        self.max_wait_s = window * packet_ms / 1000.0
        self.max_fill = int(max_fill_s * clock_rate)
        self.stats = StreamStats(clock_rate=clock_rate)
        self._started = False
        self._ssrc = 0
        self._next_seq = 0  # the sequence number expected next
        self._next_ts = 0  # its expected timestamp
        self._samples = int(packet_ms * clock_rate / 1000)  # last packet's length, for fills
        # Index of _next_seq counted from the (re)start: unlike sequence numbers it never wraps.
        self._advanced = 0
        self._held: dict[int, tuple[int, int, P, float]] = {}  # seq -> (timestamp, samples, payload, arrival)
        self._lost_recent: dict[int, int] = {}  # seq -> index, of the last ones declared lost
        self._stray: tuple[int, int, int, P] | None = None  # (seq, timestamp, samples, payload)
        # Previous packet (in arrival order) of the jitter estimate; no previous one while False.
        self._has_transit = False
        self._last_arrival = 0.0
        self._last_timestamp = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def position(self) -> tuple[int, int, int] | None:
        """(ssrc, sequence number, timestamp) of the packet expected next, i.e. of what follows
        everything released so far; None before the first packet."""
        return (self._ssrc, self._next_seq, self._next_ts) if self._started else None

    def push(self, seq: int, timestamp: int, ssrc: int, samples: int, payload: P, arrival: float) -> list[Item[P]]:
        stats = self.stats
        stats.received += 1
        if seq == self._next_seq and ssrc == self._ssrc and not self._held and self._stray is None and self._started:
            # The common case, kept short: in order, nothing waiting; _update_jitter inlined.
            if self._has_transit:
                d = (arrival - self._last_arrival) * self.clock_rate - uint32_diff(timestamp, self._last_timestamp)
                stats.jitter += (abs(d) - stats.jitter) / 16.0
            self._has_transit = True
            self._last_arrival = arrival
            self._last_timestamp = timestamp
            self._next_seq = (seq + 1) & 0xFFFF
            self._next_ts = (timestamp + samples) & 0xFFFFFFFF
            self._samples = samples
            self._advanced += 1
            return [payload]
        if not self._started or ssrc != self._ssrc:
            flushed = self.flush()
            self._restart(seq, timestamp, ssrc)
            self._update_jitter(arrival, timestamp)
            return flushed + self._release(seq, timestamp, samples, payload)
        distance = uint16_diff(seq, self._next_seq)
        if 0 <= distance <= MAX_DROPOUT:
            self._forget_stray()
            if seq in self._held:
                stats.duplicate += 1
                return []
            self._update_jitter(arrival, timestamp)
            if distance == 0:
                return self._release(seq, timestamp, samples, payload) + self._release_held()
            self._held[seq] = (timestamp, samples, payload, arrival)
            out: list[Item[P]] = []
            while len(self._held) > self.window:
                out += self._declare_gap_lost()
            return out
        if -MAX_MISORDER <= distance < 0:
            self._forget_stray()
            if self._lost_recent.get(seq) == self._advanced + distance:
                del self._lost_recent[seq]  # a second copy is a duplicate
                stats.late += 1
                self._update_jitter(arrival, timestamp)
            elif -distance > self._advanced:
                stats.late += 1  # from before the stream started here
            else:
                stats.duplicate += 1
            return []
        return self._push_stray(seq, timestamp, samples, payload, arrival)

    def flush_due(self, now: float) -> list[Item[P]]:
        """Declare lost the gaps whose held packets have waited longer than the window."""
        out: list[Item[P]] = []
        while self._held and now - min(entry[3] for entry in self._held.values()) > self.max_wait_s:
            out += self._declare_gap_lost()
        return out

    def flush(self) -> list[Item[P]]:
        """Release everything held, gaps as silence (end of the call, or before a resync)."""
        self._forget_stray()
        out: list[Item[P]] = []
        while self._held:
            out += self._declare_gap_lost()
        return out

    # --- internals ----------------------------------------------------------------------------
    def _restart(self, seq: int, timestamp: int, ssrc: int) -> None:
        if self._started:
            self.stats.resyncs += 1
        self._started = True
        self._ssrc = ssrc
        self._next_seq = seq
        self._next_ts = timestamp
        self._advanced = 0
        self._lost_recent.clear()
        self._has_transit = False  # the new numbering's timestamps have another origin

    def _push_stray(self, seq: int, timestamp: int, samples: int, payload: P, arrival: float) -> list[Item[P]]:
        candidate = self._stray
        if candidate is None or seq != (candidate[0] + 1) & 0xFFFF:
            if candidate is not None:
                self.stats.stray += 1  # the previous one was not followed: it was a stray
            self._stray = (seq, timestamp, samples, payload)
            return []
        # Two in a row: the sender's numbering jumped. Start over at the first of them.
        self._stray = None
        out = self.flush()
        self._restart(candidate[0], candidate[1], self._ssrc)
        self._update_jitter(arrival, timestamp)
        out += self._release(candidate[0], candidate[1], candidate[2], candidate[3])
        return out + self._release(seq, timestamp, samples, payload)

    def _release(self, seq: int, timestamp: int, samples: int, payload: P) -> list[Item[P]]:
        self._next_seq = (seq + 1) & 0xFFFF
        self._next_ts = (timestamp + samples) & 0xFFFFFFFF
        self._samples = samples
        self._advanced += 1
        return [payload]

    def _release_held(self) -> list[Item[P]]:
        out: list[Item[P]] = []
        held = self._held
        while self._next_seq in held:
            timestamp, samples, payload, _ = held.pop(self._next_seq)
            out += self._release(self._next_seq, timestamp, samples, payload)
        return out

    def _declare_gap_lost(self) -> list[Item[P]]:
        """The packets between the expected one and the first held one are lost: fill, move on."""
        first = min(self._held, key=lambda s: (s - self._next_seq) & 0xFFFF)
        missing = (first - self._next_seq) & 0xFFFF
        fill = uint32_diff(self._held[first][0], self._next_ts)
        if not 0 < fill <= self.max_fill:  # timestamps disagree with the numbering: estimate
            fill = min(missing * self._samples, self.max_fill)
        stats = self.stats
        stats.lost += missing
        stats.silence_samples += fill
        # Only the last MAX_MISORDER can still be recognised as late.
        lost_recent = self._lost_recent
        for k in range(max(0, missing - MAX_MISORDER), missing):
            lost_recent[(self._next_seq + k) & 0xFFFF] = self._advanced + k
        self._next_seq = first
        self._advanced += missing
        if len(lost_recent) > 2 * MAX_MISORDER:
            oldest = self._advanced - MAX_MISORDER
            self._lost_recent = {s: i for s, i in lost_recent.items() if i >= oldest}
        out: list[Item[P]] = [fill]
        return out + self._release_held()

    def _update_jitter(self, arrival: float, timestamp: int) -> None:
        if self._has_transit:
            d = (arrival - self._last_arrival) * self.clock_rate - uint32_diff(timestamp, self._last_timestamp)
            self.stats.jitter += (abs(d) - self.stats.jitter) / 16.0
        self._has_transit = True
        self._last_arrival = arrival
        self._last_timestamp = timestamp

    def _forget_stray(self) -> None:
        """A packet fit the stream after a stray candidate: the candidate was a stray."""
        if self._stray is not None:
            self.stats.stray += 1
            self._stray = None
