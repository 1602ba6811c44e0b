"""Whisper on CTranslate2, for batches of utterances that share one encoder window.

faster-whisper provides the log-mel feature extractor and the tokenizer; CTranslate2 runs the
model. `generate` is called once per batch: all items are padded to the same number of frames
(the window), language forced, task transcribe, no timestamps. CTranslate2 accepts at most 3000
frames (30 s); longer audio is split into 30 s pieces whose texts are joined.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from rtcore.runtime.config import Settings

from rtcore.asr.filters import compression_ratio, echoes, flag

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame: 100 frames per second
MAX_WINDOW_S = 30.0

@dataclass(frozen=True)
class WhisperOptions:
    model_dir: str
    language: str = "fr"
    beam_size: int = 5
    device: str = "cpu"
    compute_type: str = "int8"
    intra_threads: int = 0
    inter_threads: int = 1
    # Generation stops after this many tokens per second of the batch's longest speech: a
    # repetition loop is cut short instead of running to 448 tokens (French speech is 3 to 6
    # tokens per second; the padding after it holds none).
    max_tokens_per_s: float = 15.0
    # Whisper's own rule: no_speech > 0.6 and avg_logprob < -1. Measured through the telephone band
    # (G.711 µ-law, `rtcore bench understanding`): 111 utterances of real French speech stayed at
    # no-speech <= 0.17 (avg_logprob >= -1.14); white, pink, hum and babble noise at -50 to -20 dBFS
    # that Whisper wrote words over had no-speech >= 0.68 (avg_logprob <= -1.48). 0.6 rejects all of
    # that noise and leaves real speech a wide margin (a real answer at 0.55 was lost with 0.5).
    # Wide-band hiss at -40 dBFS stays under it (0.58-0.59) but is far less sure of its words
    # (avg_logprob -1.6 with CTranslate2 4.7, -1.37 with 4.8.5): between 0.5 and 0.6, the bar for
    # the log-probability is lower, -1.3, still clear of real speech (>= -1.14).
    no_speech_threshold: float = 0.6
    no_speech_doubt: float = 0.5
    doubt_logprob_threshold: float = -1.3
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    # An utterance's context (what the dialog expects the caller to say) is given to Whisper as
    # exactly this many tokens of previous text (repeated or cut to fit: CTranslate2 wants the
    # transcript to start at the same position in every item of a batch); 0: contexts are ignored.
    context_tokens: int = 32

    @classmethod
    def from_settings(cls, settings: Settings, model_dir: Path) -> WhisperOptions:
        return cls(model_dir=str(model_dir), language=settings.asr_language, beam_size=settings.asr_beam_size,
                   device=settings.asr_device, compute_type=settings.asr_compute_type,
                   intra_threads=settings.asr_intra_threads, inter_threads=settings.asr_inter_threads,
                   context_tokens=settings.asr_context_tokens)


@dataclass(frozen=True)
class WhisperResult:
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    hallucination: bool  # flagged: not to be taken as the caller's words
    reason: str = ""  # why it was flagged


@dataclass(frozen=True)
class BatchTiming:
    features_s: float
    inference_s: float
    window_s: float
    batch_size: int


class WhisperEngine:
    """One loaded model. Thread-compatible but not thread-safe: one batch at a time per engine."""

    def __init__(self, options: WhisperOptions) -> None:
        try:
            import ctranslate2
            import tokenizers
            from faster_whisper.feature_extractor import FeatureExtractor
            from faster_whisper.tokenizer import Tokenizer
        except ImportError as exc:  # pragma: no cover - dependencies of rtcore
            raise RuntimeError(f"ASR needs ctranslate2 and faster-whisper: {exc}") from exc
        self.options = options
        self._ct2 = ctranslate2
        model_dir = Path(options.model_dir)
        self.model = ctranslate2.models.Whisper(
            str(model_dir), device=options.device, compute_type=options.compute_type,
            intra_threads=options.intra_threads, inter_threads=options.inter_threads)
        tokenizer_file = model_dir / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise RuntimeError(f"{model_dir} has no tokenizer.json")
        self.tokenizer = Tokenizer(tokenizers.Tokenizer.from_file(str(tokenizer_file)),
                                   self.model.is_multilingual, task="transcribe", language=options.language)
        self.features = FeatureExtractor(feature_size=self.model.n_mels)
        self.echoes = 0  # utterances heard again without their context (they copied it)
        self.prompt = list(self.tokenizer.sot_sequence) + [self.tokenizer.no_timestamps]
        self._prompts: dict[tuple[str, str], list[int]] = {(options.language, ""): self.prompt}
        log.info("Whisper %s on %s (%s), language %s, beam %d", model_dir.name, options.device,
                 options.compute_type, options.language, options.beam_size)

    def prompt_for(self, language: str, context: str = "") -> list[int]:
        """The decoder prompt forcing `language` (ValueError for a code Whisper does not know),
        after `context` as previous text (`context_tokens` long; none when that is 0)."""
        language = language or self.options.language
        context = context if self.options.context_tokens > 0 else ""
        prompt = self._prompts.get((language, context))
        if prompt is None:
            token = self.tokenizer.tokenizer.token_to_id(f"<|{language}|>")
            if token is None or (not self.model.is_multilingual and language != self.options.language):
                raise ValueError(f"unknown language {language!r} for this Whisper model")
            prompt = [token if t == self.tokenizer.language else t for t in self.prompt]
            if context:
                prompt = [self.tokenizer.sot_prev, *self._fit(self.tokenizer.encode(" " + context)), *prompt]
            if len(self._prompts) > 1024:  # contexts come from the script: a handful; bounded anyway
                self._prompts.clear()
            self._prompts[(language, context)] = prompt
        return prompt

    def _fit(self, tokens: list[int]) -> list[int]:
        """Exactly `context_tokens` tokens: the last ones of a long context, a short one repeated."""
        size = self.options.context_tokens
        if not tokens:
            return []
        if len(tokens) < size:
            tokens = tokens * math.ceil(size / len(tokens))
        return tokens[-size:]

    def transcribe(self, audios: list[npt.NDArray[np.float32]], window_s: float,
                   languages: list[str] | None = None, while_waiting: Callable[[], None] | None = None,
                   contexts: list[str] | None = None) -> tuple[list[WhisperResult], BatchTiming]:
        """Transcribe 16 kHz float32 signals, each padded to `window_s`, in one generate call
        (one per prompt length: items with and without a context are decoded apart).

        Audio longer than the window is split into window-long pieces (texts joined), so speech
        is never truncated; callers bucket by length so that this is rare."""
        if not audios:
            return [], BatchTiming(0.0, 0.0, window_s, 0)
        window_s = min(window_s, MAX_WINDOW_S)
        frames = int(round(window_s * SAMPLE_RATE / HOP))
        piece = frames * HOP
        owners: list[int] = []
        prompts: list[list[int]] = []
        t0 = time.perf_counter()
        mels = []
        for index, audio in enumerate(audios):
            for start in range(0, max(len(audio), 1), piece):
                mel = self.features(np.asarray(audio[start:start + piece], dtype=np.float32))
                mels.append(_pad_or_trim(mel, frames))
                owners.append(index)
                prompts.append(self.prompt_for(languages[index] if languages else "",
                                               contexts[index] if contexts else ""))
        t1 = time.perf_counter()
        opts = self.options
        longest_s = min(max(len(a) for a in audios), piece) / SAMPLE_RATE
        pending: list[Any] = [None] * len(mels)
        for size in sorted({len(p) for p in prompts}):
            group = [i for i, p in enumerate(prompts) if len(p) == size]
            batch = np.ascontiguousarray(np.stack([mels[i] for i in group]), dtype=np.float32)
            futures = self.model.generate(
                self._ct2.StorageView.from_array(batch), [prompts[i] for i in group], beam_size=opts.beam_size,
                return_scores=True, return_no_speech_prob=True, suppress_blank=True,
                max_length=min(448, size + max(16, math.ceil(longest_s * opts.max_tokens_per_s))),
                asynchronous=True)
            for i, future in zip(group, futures, strict=True):
                pending[i] = future
        # A big 30 s batch takes many seconds on a CPU: keep the caller's heartbeats going meanwhile.
        while while_waiting is not None and not all(r.done() for r in pending):
            while_waiting()
            time.sleep(0.02)
        results = [r.result() for r in pending]
        t2 = time.perf_counter()
        pieces: list[list[tuple[str, float, float]]] = [[] for _ in audios]
        for owner, result in zip(owners, results, strict=True):
            tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
            # As faster-whisper: the score is length-normalised; turn it back into a mean.
            cum_logprob = result.scores[0] * (len(tokens) ** 1.0)
            pieces[owner].append((self.tokenizer.decode(tokens).strip(), cum_logprob / (len(tokens) + 1),
                                  result.no_speech_prob))
        out = [self._judge(" ".join(p[0] for p in parts if p[0]), float(np.mean([p[1] for p in parts])),
                           float(max(p[2] for p in parts)), languages[i] if languages else "")
               for i, parts in enumerate(pieces)]
        timing = BatchTiming(t1 - t0, t2 - t1, window_s, len(mels))
        # Given a context, Whisper sometimes copies it instead of listening: those are heard again
        # without it (measured: README, "Context").
        echoed = [i for i, r in enumerate(out) if contexts and contexts[i] and self.options.context_tokens
                  and not r.hallucination and echoes(r.text, contexts[i])]
        if echoed:
            again, extra = self.transcribe([audios[i] for i in echoed], window_s,
                                           [languages[i] for i in echoed] if languages else None, while_waiting)
            for i, result in zip(echoed, again, strict=True):
                out[i] = result
            self.echoes += len(echoed)
            timing = BatchTiming(timing.features_s + extra.features_s, timing.inference_s + extra.inference_s,
                                 window_s, timing.batch_size)
        # A repetition loop usually means too little padding after the speech: retry those items
        # once with a longer window (as Whisper's own fallback retries a failed decode).
        loops = [i for i, r in enumerate(out) if r.reason == "repetition" and len(audios[i]) / SAMPLE_RATE < window_s]
        if loops and window_s < MAX_WINDOW_S:
            retried, extra = self.transcribe([audios[i] for i in loops], min(MAX_WINDOW_S, window_s + 10.0),
                                             [languages[i] for i in loops] if languages else None, while_waiting,
                                             [contexts[i] for i in loops] if contexts else None)
            for i, result in zip(loops, retried, strict=True):
                if not result.hallucination:
                    out[i] = result
            timing = BatchTiming(timing.features_s + extra.features_s, timing.inference_s + extra.inference_s,
                                 window_s, timing.batch_size)
        return out, timing

    def _judge(self, text: str, avg_logprob: float, no_speech_prob: float, language: str) -> WhisperResult:
        opts = self.options
        reason = flag(text, avg_logprob, no_speech_prob, language=language or opts.language,
                      no_speech_threshold=opts.no_speech_threshold, logprob_threshold=opts.logprob_threshold,
                      compression_ratio_threshold=opts.compression_ratio_threshold,
                      no_speech_doubt=opts.no_speech_doubt, doubt_logprob_threshold=opts.doubt_logprob_threshold)
        return WhisperResult(text, avg_logprob, no_speech_prob, compression_ratio(text), bool(reason), reason)


def _pad_or_trim(mel: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float32]:
    from faster_whisper.audio import pad_or_trim

    return pad_or_trim(mel, frames)
