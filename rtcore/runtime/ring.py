"""Per-call audio rings in one shared-memory segment.

Layout: a header of `n_slots` rows of uint64 words (HEADER_WORDS), then `n_slots` rings of `capacity` int16
samples (16 kHz mono). Each slot has one writer (the RTP capture) and any number of readers (VAD,
ASR workers) that address audio by absolute sample index since the call started, so messages on the
bus carry sample ranges, never audio.

Consistency without locks (one writer per slot, aligned 8-byte stores are atomic on the platforms
we run on): the writer first advances `reserved` (the end of what it is about to overwrite), then
stores the samples, then advances `cursor`. A reader checks after copying that the samples it read
were not overwritten meanwhile: `start >= reserved - capacity`. A reader that held a view must call
`check()` after using it for the same guarantee.

Generations: every allocation of a slot increments its generation. A reader names the generation
it expects; a slot reused by another call has another generation, so a stale reader gets
StaleSlotError instead of another caller's audio. A freed slot keeps its generation and its audio
until it is reused, and allocation takes the slot freed longest ago: an utterance still queued for
the ASR when its caller hangs up is transcribed, not lost. Only the writer needs the slot in use.
"""

from __future__ import annotations

import _posixshmem
import enum
import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np
import numpy.typing as npt

from rtcore.runtime.audio import pcm16_to_float

log = logging.getLogger(__name__)

SAMPLE_DTYPE = np.dtype(np.int16)
HEADER_WORDS = 10
# Header word indices. _FREED orders freed slots (0: never used): the oldest is reused first.
# _OWNER says which kind of process allocated the slot (SlotOwner), so that a restarted process
# can free what its dead predecessor held without touching the others' slots.
# The last four are bookmarks that let a restarted reader or writer carry on where its
# predecessor stopped (a process killed with -9 leaves nothing else behind):
# - _VAD_RESUME + 1: where a restarted VAD resumes, the start of the speech it had not cut yet
#   (or what it had read up to): everything before was cut and handed to the ASR;
# - _RTP_SSRC, _RTP_NEXT (next sequence number << 32 | next timestamp), _RTP_CURSOR + 1: the
#   RTP position matching a ring cursor, so a restarted capture fills the gap its restart left
#   with silence of the right length instead of shifting the call's audio in time.
(_GENERATION, _RESERVED, _CURSOR, _STATE, _FREED, _OWNER,
 _VAD_RESUME, _RTP_SSRC, _RTP_NEXT, _RTP_CURSOR) = range(HEADER_WORDS)
_FREE, _IN_USE = 0, 1
# The header is padded to a page so that sample rings start page-aligned.
_PAGE = 4096
SHM_PREFIX = "rtcore."


class RingError(Exception):
    """Base of every error a ring read or write can raise."""


class OverrunError(RingError):
    """The requested samples were already overwritten by newer audio."""


class NotYetWrittenError(RingError):
    """The requested samples are beyond what the writer has published."""


class StaleSlotError(RingError):
    """The slot was freed, or reused by another call, since the reader learnt its generation."""


class NoFreeSlotError(RingError):
    """Every slot is in use: more concurrent calls than `max_calls`."""


@dataclass(frozen=True)
class RingSpec:
    """What crosses process boundaries to attach to the rings."""

    name: str
    n_slots: int
    capacity: int

    @property
    def header_bytes(self) -> int:
        raw = self.n_slots * HEADER_WORDS * 8
        return -(-raw // _PAGE) * _PAGE

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.n_slots * self.capacity * SAMPLE_DTYPE.itemsize


class SlotOwner(enum.IntEnum):
    """Who allocated a slot: the call controller (dialog) or the HTTP API (one request each)."""

    CALL = 1
    HTTP = 2


@dataclass(frozen=True)
class SlotLease:
    """A slot allocated to one call: the pair a reader must present."""

    slot: int
    generation: int


def segment_name(instance: str, pid: int) -> str:
    """Segments carry the owner's pid so that a later run can tell a leftover from a live one."""
    return f"{SHM_PREFIX}{instance}.{pid}.rings"


class AudioRings:
    """All call slots of one run. `create()` in the supervisor, `attach()` everywhere else."""

    def __init__(self, spec: RingSpec, shm: shared_memory.SharedMemory, owner: bool) -> None:
        self.spec = spec
        self._shm = shm
        self._owner = owner
        buf = shm.buf
        assert buf is not None
        self._header: npt.NDArray[np.uint64] = np.ndarray(
            (spec.n_slots, HEADER_WORDS), dtype=np.uint64, buffer=buf)
        self._samples: npt.NDArray[np.int16] = np.ndarray(
            (spec.n_slots, spec.capacity), dtype=SAMPLE_DTYPE, buffer=buf, offset=spec.header_bytes)

    # --- lifetime -----------------------------------------------------------------------------
    @classmethod
    def create(cls, spec: RingSpec) -> AudioRings:
        if spec.n_slots < 1 or spec.capacity < 1:
            raise ValueError(f"ring spec needs at least one slot and one sample: {spec}")
        shm = shared_memory.SharedMemory(name=spec.name, create=True, size=spec.total_bytes)
        _untrack(shm)
        rings = cls(spec, shm, owner=True)
        rings._header[:] = 0
        return rings

    @classmethod
    def attach(cls, spec: RingSpec) -> AudioRings:
        try:
            shm = shared_memory.SharedMemory(name=spec.name, create=False)
        except FileNotFoundError:
            raise RingError(f"shared memory {spec.name!r} does not exist (is the supervisor running?)") from None
        _untrack(shm)
        if shm.size < spec.total_bytes:
            shm.close()
            raise RingError(f"shared memory {spec.name!r} is {shm.size} bytes, spec needs {spec.total_bytes}")
        return cls(spec, shm, owner=False)

    def close(self) -> None:
        """Detach this process. Views handed out before must not be used afterwards."""
        # Drop our numpy views first: SharedMemory.close() refuses while exports exist.
        del self._header, self._samples
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment from the system (the owner, once every process is stopped)."""
        # Not SharedMemory.unlink(): it would also tell the resource tracker, which we left out.
        try:
            _posixshmem.shm_unlink("/" + self.spec.name)
        except FileNotFoundError:
            pass

    def __enter__(self) -> AudioRings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- allocation (the call controller; serialised across processes by a file lock) --------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(f"/dev/shm/{self.spec.name}", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def allocate(self, owner: SlotOwner = SlotOwner.CALL) -> SlotLease:
        with self._locked():
            free = np.flatnonzero(self._header[:, _STATE] == _FREE)
            if free.size == 0:
                raise NoFreeSlotError(f"all {self.spec.n_slots} call slots are in use")
            slot = int(free[np.argmin(self._header[free, _FREED])])  # first minimum: lowest index
            row = self._header[slot]
            row[_STATE] = _IN_USE
            row[_OWNER] = int(owner)
            row[_GENERATION] += 1
            row[_CURSOR] = 0
            row[_RESERVED] = 0
            row[_VAD_RESUME:] = 0
            return SlotLease(slot, int(row[_GENERATION]))

    def free(self, lease: SlotLease) -> None:
        """Release a slot. Freeing an already freed or reused slot is a no-op (idempotent clean-up)."""
        with self._locked():
            row = self._header[lease.slot]
            if int(row[_GENERATION]) != lease.generation or row[_STATE] == _FREE:
                return
            row[_FREED] = int(self._header[:, _FREED].max()) + 1
            row[_STATE] = _FREE

    def in_use(self, owner: SlotOwner | None = None) -> list[SlotLease]:
        """The slots in use (by `owner` only, if given)."""
        taken = self._header[:, _STATE] == _IN_USE
        if owner is not None:
            taken &= self._header[:, _OWNER] == int(owner)
        return [SlotLease(int(s), int(self._header[s, _GENERATION])) for s in np.flatnonzero(taken)]

    def holds(self, lease: SlotLease) -> bool:
        """Whether `lease` is still the slot's current allocation (in use, same generation)."""
        if not 0 <= lease.slot < self.spec.n_slots:
            return False
        row = self._header[lease.slot]
        return bool(row[_STATE] == _IN_USE and int(row[_GENERATION]) == lease.generation)

    # --- bookmarks for restarted processes ---------------------------------------------------
    def set_vad_resume(self, lease: SlotLease, sample: int) -> None:
        """The VAD has cut and handed on everything before `sample` (see the header words)."""
        if int(self._header[lease.slot, _GENERATION]) == lease.generation:
            self._header[lease.slot, _VAD_RESUME] = sample + 1

    def set_vad_resumes(self, leases: list[SlotLease], samples: list[int]) -> None:
        """set_vad_resume for many slots in one store (the VAD does it every tick for every call)."""
        if not leases:
            return
        slots = np.fromiter((lease.slot for lease in leases), dtype=np.int64, count=len(leases))
        generations = np.fromiter((lease.generation for lease in leases), dtype=np.uint64, count=len(leases))
        values = np.asarray(samples, dtype=np.uint64) + np.uint64(1)
        current = self._header[slots, _GENERATION] == generations  # a slot reused meanwhile is not ours
        self._header[slots[current], _VAD_RESUME] = values[current]

    def vad_resume(self, lease: SlotLease) -> int | None:
        """Where a restarted VAD resumes on this slot, or None if no VAD ever ran on it."""
        self._check_generation(lease)
        word = int(self._header[lease.slot, _VAD_RESUME])
        return word - 1 if word else None

    def set_rtp_mark(self, lease: SlotLease, ssrc: int, next_seq: int, next_timestamp: int, cursor: int) -> None:
        """The capture's RTP position: the packet (`next_seq`, `next_timestamp`) of stream `ssrc`
        would be written at `cursor`. Written by the slot's writer only."""
        row = self._header[lease.slot]
        if int(row[_GENERATION]) != lease.generation:
            return
        row[_RTP_CURSOR] = 0  # invalid while the three words change
        row[_RTP_SSRC] = ssrc
        row[_RTP_NEXT] = (next_seq & 0xFFFF) << 32 | (next_timestamp & 0xFFFFFFFF)
        row[_RTP_CURSOR] = cursor + 1

    def rtp_mark(self, lease: SlotLease) -> tuple[int, int, int, int] | None:
        """(ssrc, next_seq, next_timestamp, cursor) of the last capture on this slot, or None."""
        self._check_generation(lease)
        row = self._header[lease.slot]
        cursor = int(row[_RTP_CURSOR])
        if not cursor:
            return None
        packed = int(row[_RTP_NEXT])
        return int(row[_RTP_SSRC]), packed >> 32, packed & 0xFFFFFFFF, cursor - 1

    # --- writer -------------------------------------------------------------------------------
    def write(self, lease: SlotLease, samples: npt.ArrayLike) -> int:
        """Append samples (any integer dtype/byte order, converted while copying); returns the new cursor."""
        data = np.asarray(samples)
        n = data.shape[0]
        cap = self.spec.capacity
        if n > cap:
            raise ValueError(f"cannot write {n} samples at once into a ring of {cap}")
        row = self._header[lease.slot]
        self._check_generation(lease, writing=True)
        cursor = int(row[_CURSOR])
        end = cursor + n
        row[_RESERVED] = end
        ring = self._samples[lease.slot]
        pos = cursor % cap
        first = min(n, cap - pos)
        ring[pos:pos + first] = data[:first]
        if first < n:
            ring[:n - first] = data[first:]
        row[_CURSOR] = end
        return int(end)

    def write_silence(self, lease: SlotLease, n: int) -> int:
        """Append n zero samples (lost packets): the timeline stays aligned with real time."""
        cap = self.spec.capacity
        cursor = self.cursor(lease)
        while n > 0:
            step = min(n, cap)
            cursor = self.write(lease, np.zeros(step, dtype=SAMPLE_DTYPE))
            n -= step
        return cursor

    # --- readers ------------------------------------------------------------------------------
    def cursor(self, lease: SlotLease) -> int:
        """Absolute index one past the last published sample."""
        self._check_generation(lease)
        return int(self._header[lease.slot, _CURSOR])

    def view(self, lease: SlotLease, start: int, end: int) -> npt.NDArray[np.int16]:
        """Zero-copy view of [start, end) when it does not wrap around the ring (else RingError:
        use read()). Call check(lease, start) after using it: the writer may overwrite it meanwhile."""
        self._check_range(lease, start, end)
        cap = self.spec.capacity
        pos = start % cap
        if pos + (end - start) > cap:
            raise RingError(f"range [{start}, {end}) wraps around the ring; use read()")
        out = self._samples[lease.slot, pos:pos + (end - start)]
        out.flags.writeable = False
        return out

    def read(self, lease: SlotLease, start: int, end: int,
             out: npt.NDArray[np.int16] | None = None) -> npt.NDArray[np.int16]:
        """Copy [start, end) out of the ring (into `out` if given), checked after the copy."""
        self._check_range(lease, start, end)
        n = end - start
        if out is None:
            out = np.empty(n, dtype=SAMPLE_DTYPE)
        elif out.shape != (n,):
            raise ValueError(f"out has shape {out.shape}, range needs ({n},)")
        cap = self.spec.capacity
        ring = self._samples[lease.slot]
        pos = start % cap
        first = min(n, cap - pos)
        out[:first] = ring[pos:pos + first]
        if first < n:
            out[first:] = ring[:n - first]
        self.check(lease, start)
        return out

    def read_float(self, lease: SlotLease, start: int, end: int) -> npt.NDArray[np.float32]:
        """[start, end) as float32 in [-1, 1), the input both Silero and Whisper take."""
        return pcm16_to_float(self.read(lease, start, end))

    def check(self, lease: SlotLease, start: int) -> None:
        """Raise if samples from `start` on may have been overwritten, or the slot changed hands."""
        self._check_generation(lease)
        reserved = int(self._header[lease.slot, _RESERVED])
        if start < reserved - self.spec.capacity:
            raise OverrunError(
                f"slot {lease.slot}: samples from {start} were overwritten "
                f"(writer at {reserved}, ring holds {self.spec.capacity})")

    def _check_range(self, lease: SlotLease, start: int, end: int) -> None:
        if start < 0 or end < start:
            raise ValueError(f"bad sample range [{start}, {end})")
        cursor = self.cursor(lease)
        if end > cursor:
            raise NotYetWrittenError(f"slot {lease.slot}: samples up to {end} requested, only {cursor} written")
        self.check(lease, start)

    def _check_generation(self, lease: SlotLease, writing: bool = False) -> None:
        """Readers may still read an ended call's slot until it is reused; the writer may not write."""
        if not 0 <= lease.slot < self.spec.n_slots:
            raise ValueError(f"slot {lease.slot} out of range (0..{self.spec.n_slots - 1})")
        row = self._header[lease.slot]
        if int(row[_GENERATION]) != lease.generation or (writing and row[_STATE] != _IN_USE):
            raise StaleSlotError(
                f"slot {lease.slot}: generation {lease.generation} is gone "
                f"(now {int(row[_GENERATION])}, {'in use' if row[_STATE] == _IN_USE else 'free'})")


def _untrack(shm: shared_memory.SharedMemory) -> None:
    # Python 3.11's resource tracker would unlink the segment when *any* attached process exits;
    # lifetime is the supervisor's business (and its leftover sweep after a kill -9).
    try:
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - tracker internals differ across versions
        pass


def sweep_leftovers(instance: str) -> list[str]:
    """Unlink every segment of `instance`. Only the holder of the instance lock (a supervisor that
    just started) may call this: then any such segment was left by an earlier run killed with -9.
    Returns the names removed."""
    removed: list[str] = []
    prefix = f"{SHM_PREFIX}{instance}."
    try:
        names = os.listdir("/dev/shm")
    except FileNotFoundError:  # pragma: no cover - non-Linux
        return removed
    for name in sorted(names):
        if not name.startswith(prefix):
            continue
        try:
            os.unlink(f"/dev/shm/{name}")
            removed.append(name)
        except FileNotFoundError:
            pass
    if removed:
        log.warning("removed shared memory left by an earlier run: %s", ", ".join(removed))
    return removed
