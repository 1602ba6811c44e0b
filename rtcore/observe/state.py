"""ObservedRun: the state of a run as ops see it, built from bus messages.

Fed by `handle(message)` with what the bus carries:
- CallView (dialog, at each change of a call, finally with state "ended", outcome and ended_at): the
  calls in progress by call id, and the last `finished_limit` finished ones (newest first);
- RunStatus (supervisor, every second): kept as `run_status`, its arrival (monotonic) in `run_status_at`;
  feeds the CPU series of each process;
- AsrStatus (ASR dispatcher, every half second): `asr_status`, `asr_status_at`; feeds the ASR queue series
  (pending + in flight);
- Transcript: for call transcripts (call_id != HTTP_CALL_ID, stamped by the dispatcher) eos -> transcript
  (published_at - eos_at); for every transcript from a batch, the batch size;
- TurnTaken (dialog): eos -> reply.

The series have one point per second (by arrival time) over the last `series_s` seconds: p50 and p95 of
the latencies that arrived in that second, the mean and max batch size, the last ASR queue figure and each
process's CPU. Memory is bounded whatever the traffic: at most `max_calls` calls in progress (the one not
updated for the longest is forgotten first), `finished_limit` finished ones, `series_s` seconds of points,
`samples_per_second` latency samples per second and series (a uniform sample beyond), `max_processes`
processes per status, and texts cut at `text_limit` characters.

Not thread-safe: feed it from the thread whose event loop serves the live view. Listeners
(`add_listener`) are called synchronously with ("call", call) at each call change.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from rtcore.runtime.messages import HTTP_CALL_ID, AsrStatus, CallView, Message, RunStatus, Transcript, TurnTaken

FINISHED_LIMIT = 50
SERIES_S = 300
MAX_CALLS = 2000
SAMPLES_PER_SECOND = 256
MAX_PROCESSES = 64
TEXT_LIMIT = 300  # characters of a transcript
ID_LIMIT = 120  # of a call id
WORD_LIMIT = 60  # of a state, intent, outcome or process name
LATENCY_TARGET_MS = 1500.0
RECENT_S = 60  # the window of a snapshot's `recent` latencies
ENDED = "ended"

Listener = Callable[[str, dict[str, Any]], None]

# The series of a snapshot, in the order of a _Second's point.
SERIES_NAMES = ("eos_to_transcript_p50_ms", "eos_to_transcript_p95_ms", "eos_to_reply_p50_ms",
                "eos_to_reply_p95_ms", "asr_batch_mean", "asr_batch_max", "asr_queue")


def _finite(value: float, digits: int = 1) -> float | None:
    """A float for JSON: rounded, None if NaN or infinite (JSON.parse would refuse NaN)."""
    return round(value, digits) if math.isfinite(value) else None


def _text(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); `values` non-empty."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    low = math.floor(k)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


class _Reservoir:
    """At most `cap` values of a stream, a uniform sample of it once it is longer."""

    __slots__ = ("values", "seen")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.seen = 0

    def add(self, value: float, cap: int, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < cap:
            self.values.append(value)
        else:
            j = rng.randrange(self.seen)
            if j < cap:
                self.values[j] = value


@dataclass
class _Second:
    """What arrived in one second."""

    transcript_ms: _Reservoir = field(default_factory=_Reservoir)
    reply_ms: _Reservoir = field(default_factory=_Reservoir)
    batch_sum: int = 0
    batch_n: int = 0
    batch_max: int = 0
    asr_queue: int | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    point: tuple[float | None, ...] | None = None  # computed once the second is over

    def compute(self) -> tuple[float | None, ...]:
        t, r = self.transcript_ms.values, self.reply_ms.values
        return (
            _finite(percentile(t, 0.5)) if t else None,
            _finite(percentile(t, 0.95)) if t else None,
            _finite(percentile(r, 0.5)) if r else None,
            _finite(percentile(r, 0.95)) if r else None,
            round(self.batch_sum / self.batch_n, 2) if self.batch_n else None,
            float(self.batch_max) if self.batch_n else None,
            float(self.asr_queue) if self.asr_queue is not None else None,
        )


def call_dict(view: CallView, now: float, limit: int = TEXT_LIMIT) -> dict[str, Any]:
    """A CallView as the live view shows it; `duration_s` up to `now` (wall clock) while in progress."""
    end = view.ended_at if view.state == ENDED and view.ended_at else now
    duration = max(0.0, end - view.started_at) if view.started_at > 0 else None
    return {
        "call_id": _text(view.call_id, ID_LIMIT),
        "state": _text(view.state, WORD_LIMIT),
        "started_at": _finite(view.started_at, 3),
        "turns": view.turns,
        "last_transcript": _text(view.last_transcript, limit),
        "last_intent": _text(view.last_intent, WORD_LIMIT),
        "last_turn_ms": _finite(view.last_turn_ms),
        "ended_at": _finite(view.ended_at, 3),
        "outcome": _text(view.outcome, WORD_LIMIT),
        "duration_s": _finite(duration, 1) if duration is not None else None,
    }


class ObservedRun:
    """The run as ops see it (module docstring). `clock`: monotonic seconds (the series' seconds and
    the `*_at` arrival times); `wall`: time.time() (call durations, `now` of a snapshot)."""

    def __init__(self, *, finished_limit: int = FINISHED_LIMIT, series_s: int = SERIES_S, max_calls: int = MAX_CALLS,
                 samples_per_second: int = SAMPLES_PER_SECOND, max_processes: int = MAX_PROCESSES,
                 text_limit: int = TEXT_LIMIT, latency_target_ms: float = LATENCY_TARGET_MS,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.finished_limit = finished_limit
        self.series_s = series_s
        self.max_calls = max_calls
        self.samples_per_second = samples_per_second
        self.max_processes = max_processes
        self.text_limit = text_limit
        self.latency_target_ms = latency_target_ms
        self._clock = clock
        self._wall = wall
        self._rng = random.Random(0)
        # In progress, least recently updated first (the one forgotten when over max_calls).
        self.calls: OrderedDict[str, CallView] = OrderedDict()
        self.finished: deque[CallView] = deque(maxlen=finished_limit)  # newest first
        self.run_status: RunStatus | None = None
        self.run_status_at = 0.0  # clock() when it arrived
        self.asr_status: AsrStatus | None = None
        self.asr_status_at = 0.0
        self._seconds: OrderedDict[int, _Second] = OrderedDict()  # only seconds that had data, oldest first
        self.calls_ended = 0  # "ended" CallViews seen (not only the ones kept)
        self.calls_forgotten = 0  # calls in progress dropped over max_calls
        self.messages = 0
        self.version = 0  # +1 per message that changed something
        self._listeners: list[Listener] = []

    # --- listeners ---------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- feeding -----------------------------------------------------------------------------
    def handle(self, message: Message) -> None:
        """One bus message; the types it does not use are ignored."""
        self.messages += 1
        if isinstance(message, CallView):
            self._call(message)
        elif isinstance(message, RunStatus):
            self.run_status = message
            self.run_status_at = self._clock()
            second = self._second()
            for process in message.processes[: self.max_processes]:
                if math.isfinite(process.cpu_percent):
                    second.cpu[_text(process.name, WORD_LIMIT)] = process.cpu_percent
        elif isinstance(message, AsrStatus):
            self.asr_status = message
            self.asr_status_at = self._clock()
            self._second().asr_queue = max(0, message.pending) + max(0, message.in_flight)
        elif isinstance(message, Transcript):
            if message.batch_size > 0:
                second = self._second()
                second.batch_sum += message.batch_size
                second.batch_n += 1
                second.batch_max = max(second.batch_max, message.batch_size)
            is_callers = message.call_id != HTTP_CALL_ID and not message.error
            if is_callers and message.eos_at > 0 and message.published_at > 0:
                latency = (message.published_at - message.eos_at) * 1000
                if math.isfinite(latency) and latency >= 0:
                    self._second().transcript_ms.add(latency, self.samples_per_second, self._rng)
        elif isinstance(message, TurnTaken):
            if message.eos_to_reply_ms > 0 and math.isfinite(message.eos_to_reply_ms):
                self._second().reply_ms.add(message.eos_to_reply_ms, self.samples_per_second, self._rng)
        else:
            return
        self.version += 1

    def _call(self, view: CallView) -> None:
        view = self._bounded(view)
        if view.state == ENDED:
            self.calls.pop(view.call_id, None)
            for i, old in enumerate(self.finished):  # the same end again (a repeat): updated in place
                if old.call_id == view.call_id:
                    del self.finished[i]
                    break
            else:
                self.calls_ended += 1
            self.finished.appendleft(view)
        else:
            if any(old.call_id == view.call_id for old in self.finished):
                return  # a call already over: a late or repeated view does not bring it back
            self.calls[view.call_id] = view
            self.calls.move_to_end(view.call_id)
            while len(self.calls) > self.max_calls:
                self.calls.popitem(last=False)
                self.calls_forgotten += 1
        data = call_dict(view, self._wall(), self.text_limit)
        for listener in list(self._listeners):
            listener("call", data)

    def _bounded(self, view: CallView) -> CallView:
        """The view with its texts cut to what is shown: what is held stays bounded whatever a message carries."""
        limits = {"call_id": ID_LIMIT, "state": WORD_LIMIT, "last_intent": WORD_LIMIT, "outcome": WORD_LIMIT,
                  "last_transcript": self.text_limit}
        cut = {name: _text(getattr(view, name), limit) for name, limit in limits.items()
               if len(getattr(view, name)) > limit}
        return msgspec.structs.replace(view, **cut) if cut else view

    def _second(self) -> _Second:
        now = math.floor(self._clock())
        second = self._seconds.get(now)
        if second is None:
            second = self._seconds[now] = _Second()
            self._prune(now)
        return second

    def _prune(self, now: int) -> None:
        horizon = now - self.series_s
        while self._seconds:
            oldest = next(iter(self._seconds))
            if oldest > horizon:
                break
            del self._seconds[oldest]

    # --- reading -----------------------------------------------------------------------------
    def series(self) -> dict[str, Any]:
        """One point per second, the oldest first, the last being the current second (in progress);
        None where nothing arrived. `end_at`: the wall-clock time of the last point's second."""
        mono = self._clock()
        now = math.floor(mono)
        self._prune(now)
        columns: list[list[float | None]] = [[] for _ in SERIES_NAMES]
        names = sorted({name for second in self._seconds.values() for name in second.cpu})
        cpu: dict[str, list[float | None]] = {name: [] for name in names}
        for t in range(now - self.series_s + 1, now + 1):
            second = self._seconds.get(t)
            if second is None:
                point: tuple[float | None, ...] = (None,) * len(SERIES_NAMES)
            elif t < now:
                if second.point is None:
                    second.point = second.compute()
                point = second.point
            else:
                point = second.compute()
            for column, value in zip(columns, point, strict=True):
                column.append(value)
            for name in names:
                value = second.cpu.get(name) if second is not None else None
                cpu[name].append(_finite(value) if value is not None else None)
        return {"step_s": 1, "points": self.series_s, "end_at": round(self._wall() - (mono - now), 3),
                **dict(zip(SERIES_NAMES, columns, strict=True)), "cpu_percent": cpu}

    def recent(self, window_s: int = RECENT_S) -> dict[str, Any]:
        """The latencies of the last `window_s` seconds together (p50, p95, how many)."""
        now = math.floor(self._clock())
        transcript: list[float] = []
        reply: list[float] = []
        for t, second in reversed(self._seconds.items()):
            if t <= now - window_s:
                break
            transcript += second.transcript_ms.values
            reply += second.reply_ms.values
        out: dict[str, Any] = {"window_s": window_s}
        for name, values in (("eos_to_transcript", transcript), ("eos_to_reply", reply)):
            out[f"{name}_p50_ms"] = _finite(percentile(values, 0.5)) if values else None
            out[f"{name}_p95_ms"] = _finite(percentile(values, 0.95)) if values else None
            out[f"{name}_n"] = len(values)
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-able (no NaN): see the keys below."""
        wall = self._wall()
        mono = self._clock()
        calls = sorted(self.calls.values(), key=lambda view: (view.started_at, view.call_id))
        return {
            "now": round(wall, 3),
            "latency_target_ms": self.latency_target_ms,
            "calls": [call_dict(view, wall, self.text_limit) for view in calls],
            "finished": [call_dict(view, wall, self.text_limit) for view in self.finished],
            "finished_limit": self.finished_limit,
            "counts": {"in_progress": len(self.calls), "ended": self.calls_ended, "forgotten": self.calls_forgotten,
                       "messages": self.messages},
            "run": self._run(mono),
            "asr": self._asr(mono),
            "recent": self.recent(),
            "series": self.series(),
        }

    def _run(self, mono: float) -> dict[str, Any] | None:
        status = self.run_status
        if status is None:
            return None
        return {
            "age_s": round(mono - self.run_status_at, 1),
            "sent_at": _finite(status.sent_at, 3),
            "call_slots": status.call_slots,
            "call_slots_in_use": status.call_slots_in_use,
            "has_dialog": status.has_dialog,
            "ari_connected": status.ari_connected,
            "redis_connected": status.redis_connected,
            "draining": status.draining,
            "processes": [
                {"name": _text(p.name, WORD_LIMIT), "pid": p.pid, "up": p.up,
                 "heartbeat_age_s": _finite(p.heartbeat_age_s), "restarts": p.restarts,
                 "cpu_percent": _finite(p.cpu_percent), "rss_bytes": p.rss_bytes}
                for p in status.processes[: self.max_processes]
            ],
        }

    def _asr(self, mono: float) -> dict[str, Any] | None:
        status = self.asr_status
        if status is None:
            return None
        return {
            "age_s": round(mono - self.asr_status_at, 1),
            "pid": status.pid,
            "pending": status.pending,
            "in_flight": status.in_flight,
            "workers": status.workers,
            "capacity": status.capacity,
            "throughput": _finite(status.throughput, 2),
            "expected_wait_ms": _finite(status.expected_wait_ms),
            "queue_limit": status.queue_limit,
            "refused_full": status.refused_full,
        }
