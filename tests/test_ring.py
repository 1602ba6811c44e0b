from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rtcore.runtime.ring import (
    AudioRings,
    NoFreeSlotError,
    NotYetWrittenError,
    OverrunError,
    RingError,
    RingSpec,
    StaleSlotError,
    segment_name,
    sweep_leftovers,
)


@pytest.fixture
def rings() -> Iterator[AudioRings]:
    spec = RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.1.rings", n_slots=3, capacity=1000)
    r = AudioRings.create(spec)
    yield r
    r.close()
    r.unlink()


def ramp(start: int, n: int) -> np.ndarray:
    return (np.arange(start, start + n) % 30000).astype(np.int16)


def test_write_then_read_returns_the_samples(rings: AudioRings) -> None:
    lease = rings.allocate()
    assert rings.write(lease, ramp(0, 300)) == 300
    np.testing.assert_array_equal(rings.read(lease, 50, 250), ramp(50, 200))
    view = rings.view(lease, 0, 300)
    np.testing.assert_array_equal(view, ramp(0, 300))
    assert not view.flags.writeable
    rings.check(lease, 0)


def test_view_is_zero_copy(rings: AudioRings) -> None:
    lease = rings.allocate()
    rings.write(lease, ramp(0, 100))
    view = rings.view(lease, 0, 100)
    rings.write(lease, ramp(100, 1000))  # overwrite everything underneath the view
    assert view[0] != 0  # the view sees the new audio: it is the ring's memory, not a copy
    with pytest.raises(OverrunError):
        rings.check(lease, 0)


def test_wrap_around_reads_across_the_end(rings: AudioRings) -> None:
    lease = rings.allocate()
    for start in range(0, 2600, 260):  # 2.6 rings' worth, in writes that straddle the end
        rings.write(lease, ramp(start, 260))
    assert rings.cursor(lease) == 2600
    np.testing.assert_array_equal(rings.read(lease, 1700, 2600), ramp(1700, 900))
    with pytest.raises(RingError, match="wraps around"):
        rings.view(lease, 1900, 2100)


def test_big_endian_input_is_converted_while_copying(rings: AudioRings) -> None:
    lease = rings.allocate()
    payload = np.array([1, -2, 300, -32768], dtype=">i2").tobytes()
    rings.write(lease, np.frombuffer(payload, dtype=">i2"))
    np.testing.assert_array_equal(rings.read(lease, 0, 4), [1, -2, 300, -32768])


def test_overrun_raises_with_the_positions(rings: AudioRings) -> None:
    lease = rings.allocate()
    rings.write(lease, ramp(0, 800))
    rings.write(lease, ramp(800, 800))
    with pytest.raises(OverrunError, match=r"samples from 599 were overwritten \(writer at 1600, ring holds 1000\)"):
        rings.read(lease, 599, 700)
    np.testing.assert_array_equal(rings.read(lease, 600, 1600), ramp(600, 1000))


def test_not_yet_written_raises(rings: AudioRings) -> None:
    lease = rings.allocate()
    rings.write(lease, ramp(0, 100))
    with pytest.raises(NotYetWrittenError, match="samples up to 101 requested, only 100 written"):
        rings.read(lease, 0, 101)
    with pytest.raises(ValueError, match="bad sample range"):
        rings.read(lease, 50, 40)


def test_silence_fill_keeps_the_timeline(rings: AudioRings) -> None:
    lease = rings.allocate()
    rings.write(lease, ramp(1, 10))
    assert rings.write_silence(lease, 2500) == 2510  # more than a ring: written in pieces
    assert not rings.read(lease, 1600, 2510).any()


def test_an_ended_calls_audio_stays_readable_until_its_slot_is_reused(rings: AudioRings) -> None:
    first = rings.allocate()
    rings.write(first, ramp(0, 100))
    rings.free(first)
    # An utterance still queued for the ASR when the caller hung up is read, not lost...
    assert (rings.read(first, 10, 20) == ramp(10, 10)).all()
    # ...but the ended call can no longer be written to.
    with pytest.raises(StaleSlotError, match="is gone"):
        rings.write(first, ramp(100, 10))
    # The slot freed longest ago is reused last: the two never-used slots go first.
    others = [rings.allocate(), rings.allocate()]
    assert first.slot not in {lease.slot for lease in others}
    assert (rings.read(first, 0, 100) == ramp(0, 100)).all()
    second = rings.allocate()
    assert second.slot == first.slot and second.generation > first.generation
    with pytest.raises(StaleSlotError, match="is gone"):
        rings.read(first, 0, 10)
    assert rings.cursor(second) == 0  # the new call starts its own timeline
    rings.write(second, ramp(5000, 100))
    with pytest.raises(StaleSlotError):
        rings.read(first, 0, 10)
    with pytest.raises(StaleSlotError):
        rings.write(first, ramp(0, 10))
    rings.free(first)  # freeing a stale lease must not free the new call's slot
    assert sorted(rings.in_use(), key=lambda lease: lease.slot) == sorted(
        [*others, second], key=lambda lease: lease.slot
    )


def test_the_slot_freed_longest_ago_is_reused_first(rings: AudioRings) -> None:
    leases = [rings.allocate() for _ in range(3)]
    for index in (2, 0, 1):
        rings.free(leases[index])
    assert [rings.allocate().slot for _ in range(3)] == [2, 0, 1]


def test_all_slots_in_use(rings: AudioRings) -> None:
    leases = [rings.allocate() for _ in range(3)]
    assert sorted(lease.slot for lease in leases) == [0, 1, 2]
    with pytest.raises(NoFreeSlotError, match="all 3 call slots are in use"):
        rings.allocate()
    rings.free(leases[1])
    assert rings.allocate().slot == 1


def test_attach_to_missing_segment_is_a_clear_error() -> None:
    with pytest.raises(RingError, match="does not exist"):
        AudioRings.attach(RingSpec("rtcore.nosuch.1.rings", 1, 10))


def test_sweep_removes_only_this_instances_segments() -> None:
    mine = AudioRings.create(RingSpec(segment_name("sweepme", 999999), 1, 10))
    other = AudioRings.create(RingSpec(segment_name("keepme", 999999), 1, 10))
    try:
        assert sweep_leftovers("sweepme") == [segment_name("sweepme", 999999)]
        assert not Path("/dev/shm", segment_name("sweepme", 999999)).exists()
        assert Path("/dev/shm", segment_name("keepme", 999999)).exists()
    finally:
        for r in (mine, other):
            r.close()
        other.unlink()


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from rtcore.runtime.ring import AudioRings, RingSpec, SlotLease
    spec = RingSpec(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    lease = SlotLease(int(sys.argv[4]), int(sys.argv[5]))
    rings = AudioRings.attach(spec)
    print("attached", flush=True)
    sys.stdin.readline()  # go
    total = int(sys.argv[6])
    for start in range(0, total, 320):
        rings.write(lease, (np.arange(start, start + 320) % 30000).astype(">i2"))
    rings.close()
""")


def test_writer_process_and_reader_process_share_a_slot() -> None:
    """A writer process runs flat out through 100 ring lengths while this process reads the newest
    audio: every read returns exactly the right samples or raises OverrunError, never garbage."""
    spec = RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.1.rings", n_slots=2, capacity=16000)
    owner = AudioRings.create(spec)
    try:
        owner.allocate()
        lease = owner.allocate()  # slot 1: the writer must address the right slot
        total = 320 * 5000
        writer = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                spec.name,
                str(spec.n_slots),
                str(spec.capacity),
                str(lease.slot),
                str(lease.generation),
                str(total),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "attached"
        reader = AudioRings.attach(spec)
        writer.stdin.write("go\n")
        writer.stdin.flush()
        good = overruns = 0
        while writer.poll() is None or good == 0:
            end = reader.cursor(lease)
            # Old enough that the writer often overwrites it during the copy.
            start = max(0, end - 15_900)
            try:
                data = reader.read(lease, start, end)
            except OverrunError:
                overruns += 1
                continue
            np.testing.assert_array_equal(data, ramp(start, end - start))
            good += 1
        assert writer.wait() == 0
        assert good > 0
        assert reader.cursor(lease) == total
        np.testing.assert_array_equal(reader.read(lease, total - 16000, total), ramp(total - 16000, 16000))
        with pytest.raises(OverrunError):
            reader.read(lease, total - 16001, total)
        assert owner.cursor(owner.in_use()[0]) == 0  # the other slot untouched
        reader.close()
    finally:
        owner.close()
        owner.unlink()


def test_vad_bookmarks_set_together_skip_a_slot_reused_meanwhile() -> None:
    import uuid

    from rtcore.runtime.ring import AudioRings, RingSpec

    rings = AudioRings.create(RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.1.rings", 3, 1600))
    try:
        a, b = rings.allocate(), rings.allocate()
        rings.set_vad_resumes([a, b], [512, 1024])
        assert (rings.vad_resume(a), rings.vad_resume(b)) == (512, 1024)
        rings.free(b)
        c = rings.allocate()  # the never-used slot goes first
        rings.free(c)
        b2 = rings.allocate()
        assert b2.slot == b.slot and rings.vad_resume(b2) is None  # a new allocation starts without one
        rings.set_vad_resumes([a, b], [2048, 4096])  # b is stale: its bookmark must not land on b2
        assert rings.vad_resume(a) == 2048 and rings.vad_resume(b2) is None
    finally:
        rings.close()
        rings.unlink()
