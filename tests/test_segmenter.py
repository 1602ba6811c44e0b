from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from rtcore.runtime.audio import load_audio
from rtcore.vad.segmenter import Segmenter, SegmenterOptions, SpeechStart, Utterance, segment_streams
from rtcore.vad.silero import CHUNK, BatchedVad, SileroVad
from tests.conftest import REPO, require_shared_audio

OPTS = SegmenterOptions(threshold=0.5, silence_chunks=3, context_chunks=2, max_samples=20 * CHUNK,
                        min_speech_samples=3 * CHUNK)


def run(probs: list[float], opts: SegmenterOptions = OPTS, flush: bool = False) -> list[object]:
    seg = Segmenter(opts)
    events: list[object] = []
    for i, p in enumerate(probs):
        events += seg.feed(i * CHUNK, p)
    if flush:
        events += seg.flush()
    return events


def test_utterance_with_context_and_trailing_silence() -> None:
    probs = [0.1] * 5 + [0.9] * 4 + [0.2] * 3 + [0.1] * 2
    assert run(probs) == [SpeechStart(5 * CHUNK), Utterance(3 * CHUNK, 12 * CHUNK, 4 * CHUNK)]


def test_short_pause_does_not_end_the_utterance() -> None:
    probs = [0.9] * 3 + [0.1] * 2 + [0.9] * 2 + [0.1] * 3
    assert run(probs) == [SpeechStart(0), Utterance(0, 10 * CHUNK, 5 * CHUNK)]


def test_threshold_is_inclusive() -> None:
    assert run([0.5] * 3 + [0.49] * 3)[-1] == Utterance(0, 6 * CHUNK, 3 * CHUNK)


def test_click_is_dropped() -> None:
    seg = Segmenter(OPTS)
    events = []
    for i, p in enumerate([0.9, 0.9, 0.1, 0.1, 0.1]):
        events += seg.feed(i * CHUNK, p)
    assert events == [SpeechStart(0)] and seg.dropped == 1


def test_context_never_reaches_into_the_previous_utterance() -> None:
    probs = [0.9] * 3 + [0.1] * 3 + [0.9] * 3 + [0.1] * 3
    utts = [e for e in run(probs) if isinstance(e, Utterance)]
    assert utts == [Utterance(0, 6 * CHUNK, 3 * CHUNK), Utterance(6 * CHUNK, 12 * CHUNK, 3 * CHUNK)]


def test_long_speech_is_cut_and_the_rest_is_kept_however_short() -> None:
    probs = [0.9] * 22 + [0.1] * 3
    utts = [e for e in run(probs) if isinstance(e, Utterance)]
    assert utts == [Utterance(0, 20 * CHUNK, 20 * CHUNK, forced=True), Utterance(20 * CHUNK, 25 * CHUNK, 2 * CHUNK)]


def test_flush_ends_pending_speech() -> None:
    assert run([0.1, 0.9, 0.9, 0.9, 0.9], flush=True)[-1] == Utterance(0, 5 * CHUNK, 4 * CHUNK, forced=True)


def test_reset_discards_pending_speech() -> None:
    seg = Segmenter(OPTS)
    seg.feed(0, 0.9)
    seg.feed(CHUNK, 0.9)
    seg.reset(2 * CHUNK)
    events = []
    for i in range(2, 8):
        events += seg.feed(i * CHUNK, 0.9 if i < 5 else 0.1)
    assert events[-1] == Utterance(2 * CHUNK, 8 * CHUNK, 3 * CHUNK)  # not before the reset point


@pytest.fixture(scope="module")
def vad() -> BatchedVad:
    return BatchedVad(SileroVad())


def test_read_sentences_are_cut_one_per_sentence(vad: BatchedVad) -> None:
    audio = load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav"))
    [utts] = segment_streams([audio], SegmenterOptions(), vad)
    assert 16 <= len(utts) <= 20, len(utts)
    for u in utts:
        assert 1.0 < (u.end - u.start) / 16000 < 6.0  # sentences of 2 to 4.5 s, with context


def test_silence_and_white_noise_give_no_utterance(vad: BatchedVad) -> None:
    rng = np.random.default_rng(1)
    silence = np.zeros(16000 * 20, np.float32)
    hiss = (rng.standard_normal(16000 * 20) * 0.05).astype(np.float32)
    loud = (rng.standard_normal(16000 * 20) * 0.3).astype(np.float32).clip(-1, 1)
    counts = [len(u) for u in segment_streams([silence, hiss, loud], SegmenterOptions(), vad)]
    assert counts[0] == 0
    assert counts[1] <= 1 and counts[2] <= 1, counts


def test_segment_command_prints_json_per_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    osr = require_shared_audio("OSR_fr_000_0041_8k.wav")
    # An 8 kHz WAV re-encoded as 44.1 kHz FLAC: any format and rate is resampled to 16 kHz.
    audio, rate = soundfile.read(osr)
    flac = tmp_path / "osr.flac"
    soundfile.write(flac, np.interp(np.arange(0, len(audio), rate / 44100), np.arange(len(audio)), audio), 44100)
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    proc = subprocess.run([sys.executable, "-m", "rtcore.cli", "segment", "--json", str(osr), str(broken), str(flac)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 1  # one file failed ...
    assert f"{broken}: cannot decode audio" in proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]  # ... the others are all there
    assert [d["file"] for d in lines] == [str(osr), str(flac)]
    a, b = (d["utterances"] for d in lines)
    assert 16 <= len(a) <= 20 and abs(len(a) - len(b)) <= 1
    assert all(set(u) == {"start", "end"} and 0 <= u["start"] < u["end"] <= 80 for u in a)
    assert abs(a[0]["start"] - b[0]["start"]) < 0.1
