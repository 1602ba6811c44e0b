from __future__ import annotations

import pytest

from rtcore.media.jitterbuffer import MAX_DROPOUT, Item, JitterBuffer

SSRC = 0x21398419
SAMPLES = 320  # 20 ms at 16 kHz


class Stream:
    """Feeds a JitterBuffer packets named by sequence number; timestamps follow at +320 each."""

    def __init__(self, window: int = 5, ts0: int = 1000, seq0: int = 0) -> None:
        self.jb: JitterBuffer[str] = JitterBuffer(window=window)
        self.ts0 = ts0
        self.seq0 = seq0

    def ts(self, seq: int) -> int:
        return (self.ts0 + ((seq - self.seq0) & 0xFFFF) * SAMPLES) & 0xFFFFFFFF

    def push(self, seq: int, arrival: float = 0.0, ssrc: int = SSRC, ts: int | None = None) -> list[Item[str]]:
        return self.jb.push(seq, self.ts(seq) if ts is None else ts, ssrc, SAMPLES, f"p{seq}", arrival)


def test_in_order_packets_are_released_at_once() -> None:
    s = Stream()
    for seq in range(10):
        assert s.push(seq) == [f"p{seq}"]
    stats = s.jb.stats
    assert (stats.received, stats.lost, stats.late, stats.duplicate, s.jb.held) == (10, 0, 0, 0, 0)


def test_reordering_within_the_window_is_repaired_without_loss() -> None:
    s = Stream(window=3)
    assert s.push(0) == ["p0"]
    assert s.push(2) == []
    assert s.push(3) == []
    assert s.push(1) == ["p1", "p2", "p3"]
    assert s.push(5) == []
    assert s.push(4) == ["p4", "p5"]
    assert s.jb.stats.lost == 0 and s.jb.held == 0


def test_gap_is_declared_lost_when_more_than_window_packets_are_held() -> None:
    s = Stream(window=3)
    s.push(0)
    assert [s.push(seq) for seq in (2, 3, 4)] == [[], [], []]
    assert s.push(5) == [SAMPLES, "p2", "p3", "p4", "p5"]
    stats = s.jb.stats
    assert (stats.lost, stats.silence_samples) == (1, SAMPLES)


def test_silence_length_comes_from_the_timestamps() -> None:
    s = Stream(window=0)
    s.push(0)
    assert s.push(4) == [3 * SAMPLES, "p4"]  # window 0: a gap is lost at once
    # A sender whose packets are 10 ms: the timestamp delta says how much is missing, not the count.
    assert s.jb.push(6, s.ts(4) + SAMPLES + 160, SSRC, 160, "short", 0.0) == [160, "short"]
    assert s.jb.stats.lost == 4 and s.jb.stats.silence_samples == 3 * SAMPLES + 160


def test_fill_is_estimated_when_timestamps_disagree_and_capped() -> None:
    s = Stream(window=0)
    s.push(0)
    # Ten packets missing but the timestamp says ten minutes: estimated from the count instead.
    assert s.push(11, ts=s.ts(11) + 600 * 16000) == [10 * SAMPLES, "p11"]
    # Timestamp going backwards: the same estimate.
    assert s.push(14, ts=0) == [2 * SAMPLES, "p14"]
    capped: JitterBuffer[str] = JitterBuffer(window=0, max_fill_s=0.1)
    capped.push(0, 0, SSRC, SAMPLES, "p0", 0.0)
    assert capped.push(11, 11 * SAMPLES, SSRC, SAMPLES, "p11", 0.0) == [1600, "p11"]
    assert capped.stats.lost == 10


def test_flush_due_releases_a_gap_after_window_times_20_ms() -> None:
    s = Stream(window=5)
    s.push(0, arrival=10.0)
    assert s.push(2, arrival=10.04) == []
    assert s.push(3, arrival=10.06) == []
    assert s.jb.flush_due(10.04 + 0.1) == []  # waited exactly 5 x 20 ms: not more
    assert s.jb.flush_due(10.15) == [SAMPLES, "p2", "p3"]
    assert s.jb.stats.lost == 1 and s.jb.held == 0
    assert s.jb.flush_due(11.0) == []


def test_flush_releases_everything_held() -> None:
    s = Stream(window=5)
    s.push(0)
    s.push(2)
    s.push(5)
    assert s.jb.flush() == [SAMPLES, "p2", 2 * SAMPLES, "p5"]
    assert s.jb.stats.lost == 3


def test_duplicates_are_dropped_whether_released_or_held() -> None:
    s = Stream(window=5)
    s.push(0)
    s.push(1)
    assert s.push(1) == []  # already released
    assert s.push(0) == []
    s.push(3)
    assert s.push(3) == []  # held
    assert s.push(2) == ["p2", "p3"]
    stats = s.jb.stats
    assert (stats.duplicate, stats.late, stats.lost, stats.received) == (3, 0, 0, 7)


def test_packet_arriving_after_its_loss_was_declared_is_late() -> None:
    s = Stream(window=1)
    s.push(0)
    s.push(2)
    assert s.push(3) == [SAMPLES, "p2", "p3"]
    assert s.push(1) == []
    assert s.jb.stats.late == 1
    assert s.push(1) == []  # a second copy of it is a duplicate
    assert (s.jb.stats.late, s.jb.stats.duplicate) == (1, 1)


def test_packet_from_before_the_stream_start_is_late() -> None:
    s = Stream(seq0=10)
    s.push(10)
    s.push(11)
    assert s.push(9) == []
    assert (s.jb.stats.late, s.jb.stats.duplicate) == (1, 0)


def test_sequence_numbers_wrap_around() -> None:
    s = Stream(window=5, seq0=65534, ts0=0xFFFFFFFF - 400)  # timestamps wrap too
    assert s.push(65534) == ["p65534"]
    assert s.push(65535) == ["p65535"]
    assert s.push(1) == []
    assert s.push(0) == ["p0", "p1"]
    assert s.push(65535) == []  # behind, across the wrap: a duplicate
    s.jb.window = 0
    assert s.push(3) == [SAMPLES, "p3"]  # the loss of 2 spans no wrap, its timestamp does
    stats = s.jb.stats
    assert (stats.lost, stats.duplicate, stats.silence_samples) == (1, 1, SAMPLES)


def test_loss_across_the_wrap() -> None:
    s = Stream(window=0, seq0=65533)
    s.push(65533)
    assert s.push(1) == [3 * SAMPLES, "p1"]  # 65534, 65535, 0 lost
    assert s.push(0) == [] and s.jb.stats.late == 1


def test_new_ssrc_resynchronises_at_once_without_silence() -> None:
    s = Stream(window=5)
    s.push(0)
    s.push(2)  # held when the source changes
    assert s.jb.push(40000, 7, 0xABCD, SAMPLES, "new", 0.0) == [SAMPLES, "p2", "new"]
    assert s.jb.push(40001, 7 + SAMPLES, 0xABCD, SAMPLES, "next", 0.0) == ["next"]
    stats = s.jb.stats
    assert (stats.resyncs, stats.lost, stats.silence_samples) == (1, 1, SAMPLES)


def test_huge_jump_followed_by_its_successor_is_a_restart() -> None:
    s = Stream(window=5)
    s.push(0)
    s.push(1)
    far = 1 + MAX_DROPOUT + 1000
    assert s.push(far) == []  # could be a stray: wait for the next
    assert s.push(far + 1) == [f"p{far}", f"p{far + 1}"]
    assert s.push(far + 2) == [f"p{far + 2}"]
    stats = s.jb.stats
    assert (stats.resyncs, stats.lost, stats.silence_samples, stats.stray) == (1, 0, 0, 0)


def test_lone_stray_packet_is_dropped() -> None:
    s = Stream(window=5)
    s.push(0)
    s.push(1)
    assert s.push(30000) == []
    assert s.push(2) == ["p2"]
    assert s.push(30001) == []  # not a successor of anything accepted: another stray
    assert s.push(3) == ["p3"]
    stats = s.jb.stats
    assert (stats.stray, stats.resyncs, stats.lost) == (2, 0, 0)


def test_jitter_is_zero_for_a_perfectly_paced_stream() -> None:
    s = Stream()
    for seq in range(50):
        s.push(seq, arrival=100.0 + seq * 0.02)
    assert s.jb.stats.jitter_ms == pytest.approx(0.0, abs=1e-6)


def test_jitter_follows_rfc3550_on_alternating_arrivals() -> None:
    # Arrivals alternately 5 ms late and on time: every |D| is 5 ms = 80 timestamp units, so after
    # n differences J = 80 (1 - (15/16)^n) (J += (|D| - J) / 16 from 0).
    s = Stream()
    n = 40
    for seq in range(n + 1):
        s.push(seq, arrival=50.0 + seq * 0.02 + (0.005 if seq % 2 else 0.0))
    expected = 80 * (1 - (15 / 16) ** n)
    assert s.jb.stats.jitter == pytest.approx(expected, rel=1e-6)
    assert s.jb.stats.jitter_ms == pytest.approx(expected / 16, rel=1e-6)


def test_jitter_uses_arrival_order_for_reordered_packets() -> None:
    s = Stream(window=5)
    s.push(0, arrival=0.0)
    s.push(2, arrival=0.04)  # on time
    s.push(1, arrival=0.041)  # 21 ms late: D(2,1) = 1 ms - (-20 ms) = 21 ms = 336 units
    assert s.jb.stats.jitter == pytest.approx(336 / 16, rel=1e-6)


def test_only_the_last_lost_packets_are_remembered_as_late() -> None:
    s = Stream(window=0)
    s.push(0)
    assert s.push(201) == [200 * SAMPLES, "p201"]
    assert s.push(150) == []  # 51 behind, declared lost: late
    assert s.jb.stats.late == 1


def test_a_loss_is_not_remembered_once_the_numbering_has_wrapped() -> None:
    s = Stream(window=0)
    s.push(0)
    s.push(2)  # 1 is lost
    for seq in range(3, 65536 + 2):  # all the way round to 1 again, received this time
        s.push(seq & 0xFFFF)
    assert s.push(1) == []  # a copy of the new 1: a duplicate, not the old lost 1 arriving late
    assert (s.jb.stats.late, s.jb.stats.duplicate, s.jb.stats.lost) == (0, 1, 1)
