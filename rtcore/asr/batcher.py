"""Batching utterances from many calls for Whisper.

Items of one CTranslate2 batch must share one encoder length, and Whisper needs padding after the
speech (windows close to the utterance's length make it loop: README, "Window policy"). So each
utterance goes to the smallest window bucket that leaves `margin_s` after it: buckets run from
`window_s` up in `step_s` steps to 30 s (CTranslate2's maximum; longer audio is split by the
engine). Steps are short because on a CPU the encoder's cost grows faster than the window (one
thread, per utterance: 118 ms at 10 s, 310 ms at 20 s, 779 ms at 30 s) while batching gains little.
A bucket's batch is due when it holds `batch_size` items or its oldest item has waited
`max_wait_s`; the oldest due batch goes first, and free places in it are filled with the oldest
waiting items of smaller buckets (padded up, never down, to at most twice their window), which
are served now instead of after another decoder pass.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from rtcore.asr.whisper import MAX_WINDOW_S, SAMPLE_RATE

if TYPE_CHECKING:
    from rtcore.runtime.config import Settings


@dataclass
class AsrRequest:
    key: str  # utterance id
    audio: npt.NDArray[np.float32]
    enqueued_at: float  # monotonic
    language: str = ""
    meta: Any = None  # what the caller needs back (e.g. the UtteranceReady)
    context: str = ""  # what the caller is expected to say (Whisper's previous text)
    window_s: float = field(default=0.0, init=False)

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True)
class BatchPolicy:
    # The defaults are rtcore's settings' (README, "Workers and threads on a CPU").
    batch_size: int = 4
    max_wait_s: float = 0.01
    window_s: float = 6.0  # the smallest bucket
    margin_s: float = 5.0
    step_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchPolicy:
        return cls(batch_size=settings.asr_batch_size, max_wait_s=settings.asr_max_wait_ms / 1000,
                   window_s=settings.asr_window_s, margin_s=settings.asr_window_margin_s,
                   step_s=settings.asr_window_step_s)

    def __post_init__(self) -> None:
        if self.step_s <= 0 or self.window_s <= 0:
            raise ValueError("BatchPolicy needs window_s > 0 and step_s > 0")

    @property
    def buckets(self) -> list[float]:
        smallest = min(self.window_s, MAX_WINDOW_S)
        count = math.ceil(round((MAX_WINDOW_S - smallest) / self.step_s, 6))
        return sorted({*(min(round(smallest + i * self.step_s, 3), MAX_WINDOW_S) for i in range(count)), MAX_WINDOW_S})

    def window_for(self, duration_s: float) -> float:
        for window in self.buckets:
            if duration_s + self.margin_s <= window:
                return window
        return MAX_WINDOW_S


def window_label(window_s: float) -> str:
    """A window bucket as a metric label: its seconds, "6", "7.5", "30"."""
    return f"{window_s:g}"


class AsrBatcher:
    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._buckets: dict[float, OrderedDict[str, AsrRequest]] = {w: OrderedDict() for w in policy.buckets}
        self._keys: set[str] = set()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: str) -> bool:
        return key in self._keys

    def keys(self) -> list[str]:
        """The keys queued, in no particular order."""
        return list(self._keys)

    def add(self, request: AsrRequest) -> bool:
        """Queue a request; False if one with the same key is already queued."""
        if request.key in self._keys:
            return False
        request.window_s = self.policy.window_for(request.duration_s)
        self._buckets[request.window_s][request.key] = request
        self._keys.add(request.key)
        return True

    def next_deadline(self) -> float:
        """Monotonic time the next batch becomes due (inf if nothing is queued; a full bucket is due now)."""
        deadline = math.inf
        for bucket in self._buckets.values():
            if not bucket:
                continue
            if len(bucket) >= self.policy.batch_size:
                return -math.inf
            oldest = next(iter(bucket.values()))
            deadline = min(deadline, oldest.enqueued_at + self.policy.max_wait_s)
        return deadline

    def pop_due(self, now: float, flush: bool = False) -> list[AsrRequest]:
        """The most urgent due batch (all of one window), or [] if none is due. `flush`: everything is due."""
        best: tuple[float, float] | None = None
        for window, bucket in self._buckets.items():
            if not bucket:
                continue
            oldest = next(iter(bucket.values())).enqueued_at
            if flush or len(bucket) >= self.policy.batch_size or now >= oldest + self.policy.max_wait_s:
                if best is None or oldest < best[1]:
                    best = (window, oldest)
        if best is None:
            return []
        window = best[0]
        bucket = self._buckets[window]
        batch = [bucket.popitem(last=False)[1] for _ in range(min(self.policy.batch_size, len(bucket)))]
        smaller = [r for w, b in self._buckets.items() if window / 2 <= w < window for r in b.values()]
        for request in sorted(smaller, key=lambda r: r.enqueued_at)[:self.policy.batch_size - len(batch)]:
            del self._buckets[request.window_s][request.key]
            request.window_s = window
            batch.append(request)
        for request in batch:
            self._keys.discard(request.key)
        return batch
