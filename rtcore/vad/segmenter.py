"""Cutting one stream into utterances from per-chunk speech probabilities.

The seed's buffering algorithm, generalised and expressed in absolute sample positions (so the
result is a range in the call's ring, never a copy of audio):
- a chunk is speech when its probability >= threshold;
- on speech after silence, the utterance starts `context_chunks` chunks before the onset (the
  seed's SILENCE_CHUNKS_CONTEXT), never before the previous utterance's end;
- it ends once `silence_chunks` silent chunks in a row have followed speech (the trailing silence
  is kept: Whisper transcribes a word's end better with it);
- it is cut when it reaches `max_samples` (the next one goes on from there, mid-speech);
- an utterance with less than `min_speech_samples` of speech is dropped as a click;
- `flush()` ends a pending utterance when the stream's audio stops arriving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rtcore.vad.silero import CHUNK

if TYPE_CHECKING:
    import numpy.typing as npt

    from rtcore.runtime.config import Settings
    from rtcore.vad.silero import BatchedVad


@dataclass(frozen=True)
class SegmenterOptions:
    threshold: float = 0.5
    silence_chunks: int = 12  # 384 ms: see README "Choosing the end-of-speech silence"
    context_chunks: int = 2
    max_samples: int = 20 * 16000
    min_speech_samples: int = 4000  # 250 ms

    @classmethod
    def from_settings(cls, settings: Settings) -> SegmenterOptions:
        return cls(threshold=settings.vad_threshold, silence_chunks=settings.silence_threshold,
                   context_chunks=settings.silence_chunks_context, max_samples=settings.max_buffer_size,
                   min_speech_samples=int(settings.vad_min_speech_ms * settings.sample_rate / 1000))


@dataclass(frozen=True)
class SpeechStart:
    sample: int  # first sample of the chunk where speech was detected


@dataclass(frozen=True)
class Utterance:
    start: int  # absolute sample positions, [start, end)
    end: int
    speech_samples: int
    forced: bool = False  # cut at max_samples (or by flush) rather than by silence


Event = SpeechStart | Utterance


class Segmenter:
    def __init__(self, options: SegmenterOptions, first_sample: int = 0) -> None:
        self.options = options
        self.in_speech = False
        self.dropped = 0  # utterances dropped as clicks
        self._start = 0
        self._floor = first_sample  # an utterance never starts before this
        self._speech = 0
        self._silent_run = 0
        self._continued = False  # the pending utterance continues one cut at max_samples
        self._last_end = first_sample  # end of the last chunk fed

    @property
    def pending_start(self) -> int:
        """Where the utterance in progress starts (meaningful while in_speech)."""
        return self._start

    def feed(self, chunk_start: int, probability: float) -> list[Event]:
        """One chunk [chunk_start, chunk_start + 512) and its speech probability."""
        opts = self.options
        chunk_end = chunk_start + CHUNK
        self._last_end = chunk_end
        events: list[Event] = []
        speech = probability >= opts.threshold
        if not self.in_speech:
            if speech:
                self.in_speech = True
                self._start = max(chunk_start - opts.context_chunks * CHUNK, self._floor)
                self._speech = CHUNK
                self._silent_run = 0
                self._continued = False
                events.append(SpeechStart(chunk_start))
            return events
        if speech:
            self._speech += CHUNK
            self._silent_run = 0
        else:
            self._silent_run += 1
            if self._silent_run >= opts.silence_chunks:
                self._close(chunk_end, forced=False, events=events)
                return events
        if chunk_end - self._start >= opts.max_samples:
            self._close(chunk_end, forced=True, events=events)
            if speech:  # still talking: the next utterance goes on from here, no new onset
                self.in_speech = True
                self._start = chunk_end
                self._speech = 0
                self._silent_run = 0
                self._continued = True
        return events

    def flush(self) -> list[Event]:
        """End a pending utterance at the last chunk fed (the stream's audio stopped)."""
        events: list[Event] = []
        if self.in_speech:
            self._close(self._last_end, forced=True, events=events)
        return events

    def reset(self, position: int) -> None:
        """Forget any pending speech; the next utterance starts no earlier than `position`."""
        self.in_speech = False
        self._floor = max(self._floor, position)
        self._silent_run = 0
        self._speech = 0

    def _close(self, end: int, forced: bool, events: list[Event]) -> None:
        self.in_speech = False
        self._floor = end
        # The rest of a cut utterance is speech however short: only a whole short one is a click.
        if self._continued or self._speech >= self.options.min_speech_samples:
            events.append(Utterance(self._start, end, self._speech, forced))
        else:
            self.dropped += 1


def segment_streams(streams: list[npt.NDArray[np.float32]], options: SegmenterOptions,
                    vad: BatchedVad) -> list[list[Utterance]]:
    """Offline: cut whole 16 kHz float32 signals, all streams in one batched inference per step
    (the same VAD and segmenter as the live path). Returns each stream's utterances."""
    keys = [("offline", i) for i in range(len(streams))]
    for key in keys:
        vad.add(key)
    segmenters = [Segmenter(options) for _ in streams]
    results: list[list[Utterance]] = [[] for _ in streams]
    n_chunks = [len(s) // CHUNK for s in streams]
    try:
        for step in range(max(n_chunks, default=0)):
            active = [i for i, n in enumerate(n_chunks) if step < n]
            chunks = np.stack([streams[i][step * CHUNK:(step + 1) * CHUNK] for i in active])
            probs = vad.step([keys[i] for i in active], chunks)
            for i, p in zip(active, probs, strict=True):
                for event in segmenters[i].feed(step * CHUNK, float(p)):
                    if isinstance(event, Utterance):
                        results[i].append(event)
        for i, seg in enumerate(segmenters):
            results[i].extend(e for e in seg.flush() if isinstance(e, Utterance))
    finally:
        for key in keys:
            vad.remove(key)
    return results
