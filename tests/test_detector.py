from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from rtcore.runtime.audio import float_to_pcm16, load_audio, pcm16_to_float
from rtcore.runtime.messages import CallEnded, CallStarted, ListenMode, SpeechStarted, UtteranceReady
from rtcore.runtime.ring import AudioRings, RingSpec, SlotLease
from rtcore.vad.detector import UtteranceDetector
from rtcore.vad.segmenter import SegmenterOptions, segment_streams
from rtcore.vad.silero import BatchedVad, SileroVad
from tests.conftest import require_shared_audio

PACKET = 320


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def model() -> SileroVad:
    return SileroVad()


@pytest.fixture
def rings() -> Iterator[AudioRings]:
    r = AudioRings.create(RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.1.rings", 4, 16000 * 60))
    yield r
    r.close()
    r.unlink()


@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    return float_to_pcm16(load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav")))


def start(detector: UtteranceDetector, rings: AudioRings, call_id: str) -> SlotLease:
    lease = rings.allocate()
    detector.handle(CallStarted(call_id=call_id, slot=lease.slot, generation=lease.generation))
    return lease


def test_live_detection_matches_offline_segmentation(model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    """Two calls, audio arriving in 20 ms packets with different phases, ticks every 32 ms: the
    live path cuts exactly what the offline segmenter cuts, as ranges into each call's ring."""
    options = SegmenterOptions()
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model, capacity=1), options, clock=clock)
    a_audio, b_audio = pcm[:16000 * 40], pcm[16000 * 38:]
    a, b = start(detector, rings, "call-a"), start(detector, rings, "call-b")
    messages = []
    written = {"a": 0, "b": 0}
    for t in range(0, 16000 * 42, PACKET):  # t: samples of wall time; b starts 7 packets late
        for key, lease, audio, delay in (("a", a, a_audio, 0), ("b", b, b_audio, 7 * PACKET)):
            pos = written[key]
            if t >= delay and pos < len(audio):
                rings.write(lease, audio[pos:pos + PACKET])
                written[key] = pos + PACKET
        if t % 512 < PACKET:  # a tick every 32 ms of audio time
            clock.now += 0.032
            messages += detector.tick()
    clock.now += 5  # the audio stopped: a pending utterance is flushed
    messages += detector.tick()

    got = {cid: [(m.start_sample, m.end_sample) for m in messages if isinstance(m, UtteranceReady) and m.call_id == cid]
           for cid in ("call-a", "call-b")}
    vad = BatchedVad(model)
    expected_a, expected_b = segment_streams([pcm16_to_float(a_audio), pcm16_to_float(b_audio)], options, vad)
    assert got["call-a"] == [(u.start, u.end) for u in expected_a]
    assert got["call-b"] == [(u.start, u.end) for u in expected_b]
    assert len(got["call-a"]) >= 8 and len(got["call-b"]) >= 8
    ready = [m for m in messages if isinstance(m, UtteranceReady)]
    assert [m.utterance_id for m in ready if m.call_id == "call-a"] == [f"call-a-{s}" for s, _ in got["call-a"]]
    assert all((m.slot, m.generation) == (a.slot, a.generation) for m in ready if m.call_id == "call-a")
    starts = [m for m in messages if isinstance(m, SpeechStarted) and m.call_id == "call-a"]
    assert len(starts) >= len(got["call-a"])
    assert detector.stats.max_batch == 2 and detector.stats.inferences < detector.stats.chunks


def feed(detector: UtteranceDetector, rings: AudioRings, lease: SlotLease, audio: np.ndarray,
         clock: FakeClock) -> list[object]:
    out: list[object] = []
    for pos in range(0, len(audio), 512):
        rings.write(lease, audio[pos:pos + 512])
        clock.now += 0.032
        out += detector.tick()
    return out


def test_ignore_mode_suppresses_speech_and_listen_resumes(model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    lease = start(detector, rings, "c")
    detector.handle(ListenMode(call_id="c", mode="ignore"))  # the bot speaks, caller ignored
    ignored = feed(detector, rings, lease, pcm[:16000 * 20], clock)
    assert ignored == []
    detector.handle(ListenMode(call_id="c", mode="listen"))
    heard = feed(detector, rings, lease, pcm[16000 * 20:16000 * 40], clock)
    utts = [m for m in heard if isinstance(m, UtteranceReady)]
    assert len(utts) >= 3
    assert utts[0].start_sample >= 16000 * 20  # nothing from the ignored period


def test_stalled_audio_flushes_the_pending_utterance(model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), stall_timeout_s=1.0, clock=clock)
    lease = start(detector, rings, "c")
    # Audio up to the middle of the first sentence (2.56 s - 4.8 s), then nothing more arrives.
    out = feed(detector, rings, lease, pcm[:16000 * 4], clock)
    assert not any(isinstance(m, UtteranceReady) for m in out)
    clock.now += 0.5
    assert detector.tick() == []
    clock.now += 0.6
    [flushed] = detector.tick()
    assert isinstance(flushed, UtteranceReady) and flushed.end_sample == 16000 * 4 - (16000 * 4) % 512
    assert detector.stats.stalled_flushes == 1


def test_a_call_learnt_late_is_followed_from_now_not_cut_again(model: SileroVad, rings: AudioRings,
                                                                pcm: np.ndarray) -> None:
    """A restarted VAD hears of a call already 20 s old (the dialog re-announces its calls)."""
    clock = FakeClock()
    lease = rings.allocate()
    rings.write(lease, pcm[:16000 * 20])
    detector = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    detector.handle(CallStarted(call_id="old", slot=lease.slot, generation=lease.generation))
    assert detector.tick() == []  # nothing of the past 20 s
    out = [m for m in feed(detector, rings, lease, pcm[16000 * 20:16000 * 40], clock) if isinstance(m, UtteranceReady)]
    assert len(out) >= 3 and all(m.start_sample >= 16000 * 20 - 2 * 512 for m in out)


def test_ended_or_reused_calls_are_forgotten(model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    lease = start(detector, rings, "gone")
    feed(detector, rings, lease, pcm[:16000 * 3], clock)
    detector.handle(CallEnded(call_id="gone", slot=lease.slot, generation=lease.generation))
    detector.tick()  # its last audio runs, then it is forgotten
    assert "gone" not in detector.calls and len(detector.vad) == 0
    # A slot freed and reused before CallEnded reaches the VAD: dropped, no crash, no foreign audio.
    other = start(detector, rings, "other")
    rings.free(other)
    new = rings.allocate()
    while new.slot != other.slot:  # the slot freed longest ago goes last: take the others first
        new = rings.allocate()
    rings.write(new, pcm[:16000])
    assert detector.tick() == []
    assert "other" not in detector.calls


def test_utterances_carry_their_calls_context_even_when_it_came_before_the_call(
        model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    from rtcore.runtime.messages import CallContext

    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model, capacity=1), SegmenterOptions(), clock=clock)
    detector.handle(CallContext(call_id="call-a", context="Au gaz, au fioul."))  # before its CallStarted
    lease = start(detector, rings, "call-a")
    first = [m for m in feed(detector, rings, lease, pcm[:16000 * 12], clock) if isinstance(m, UtteranceReady)]
    detector.handle(CallContext(call_id="call-a", context="Oui, je suis propriétaire."))
    later = [m for m in feed(detector, rings, lease, pcm[16000 * 12:16000 * 24], clock)
             if isinstance(m, UtteranceReady)]
    assert first and {m.context for m in first} == {"Au gaz, au fioul."}
    assert later and {m.context for m in later} == {"Oui, je suis propriétaire."}
    detector.handle(CallEnded(call_id="call-a", slot=lease.slot, generation=lease.generation))
    detector.tick()
    assert "call-a" not in detector.contexts


def test_a_caller_hanging_up_mid_sentence_has_their_last_words_cut(model: SileroVad, rings: AudioRings,
                                                                   pcm: np.ndarray) -> None:
    """CallEnded arrives while the caller is speaking, with audio in the ring not yet run: that
    audio is run and the speech is cut at its end, not dropped with the call."""
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    lease = start(detector, rings, "c")
    # The first sentence runs 2.56 s - 4.8 s: the caller hangs up at 4 s, in the middle of it.
    out = feed(detector, rings, lease, pcm[:16000 * 3], clock)
    rings.write(lease, pcm[16000 * 3:16000 * 4])  # the last second, written but not yet run
    assert not any(isinstance(m, UtteranceReady) for m in out)
    detector.handle(CallEnded(call_id="c", slot=lease.slot, generation=lease.generation))
    rings.free(lease)  # the dialog frees the slot at once: its audio stays readable until reuse
    last: list[object] = []
    while "c" in detector.calls:
        clock.now += 0.032
        last += detector.tick()
    [words] = [m for m in last if isinstance(m, UtteranceReady)]
    assert words.start_sample < 16000 * 3 and words.end_sample == 16000 * 4 - (16000 * 4) % 512
    assert detector.stats.last_words == 1 and len(detector.vad) == 0
    # Silence at the end of a call is nothing to cut.
    quiet = start(detector, rings, "quiet")
    feed(detector, rings, quiet, np.zeros(16000 * 2, np.int16), clock)
    detector.handle(CallEnded(call_id="quiet", slot=quiet.slot, generation=quiet.generation))
    assert not any(isinstance(m, UtteranceReady) for m in detector.tick()) and "quiet" not in detector.calls


def test_a_restarted_vad_resumes_the_speech_in_progress_from_the_rings_bookmark(
        model: SileroVad, rings: AudioRings, pcm: np.ndarray) -> None:
    """The VAD dies (kill -9) in the middle of a sentence. Its successor learns the call from the
    dialog's re-announcement and resumes at the ring's bookmark: the sentence in progress is cut
    whole, nothing cut before is cut again, and the rest of the call is cut as usual."""
    clock = FakeClock()
    first = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    lease = start(first, rings, "c")
    # Up to 17.5 s: inside the sentence of 16.06 s - 19.01 s (the offline cut below says so).
    before = [m for m in feed(first, rings, lease, pcm[:16000 * 17 + 8000], clock) if isinstance(m, UtteranceReady)]
    assert first.calls["c"].segmenter.in_speech
    pending_start = first.calls["c"].segmenter.pending_start
    del first  # killed: nothing of it survives but the shared memory
    rings.write(lease, pcm[16000 * 17 + 8000:16000 * 19])  # what arrived while no VAD ran

    second = UtteranceDetector(rings, BatchedVad(model), SegmenterOptions(), clock=clock)
    second.handle(CallStarted(call_id="c", slot=lease.slot, generation=lease.generation))  # re-announced
    assert second.stats.resumed_calls == 1 and second.calls["c"].next_sample == pending_start
    after = []
    for _ in range(40):  # it catches up on the backlog, several chunks a tick
        clock.now += 0.032
        after += [m for m in second.tick() if isinstance(m, UtteranceReady)]
    after += [m for m in feed(second, rings, lease, pcm[16000 * 19:16000 * 40], clock) if isinstance(m, UtteranceReady)]

    offline = segment_streams([pcm16_to_float(pcm[:16000 * 40])], SegmenterOptions(), BatchedVad(model))[0]
    in_progress = next(u for u in offline if u.start <= 16000 * 17 + 8000 < u.end)
    assert after[0].start_sample == pending_start <= in_progress.start + 512
    assert after[0].end_sample >= in_progress.end - 3 * 512  # the whole sentence, not its tail
    assert before and before[-1].end_sample <= after[0].start_sample  # nothing cut twice
    ids = [m.utterance_id for m in before + after]
    assert len(ids) == len(set(ids))
    assert len(before) + len(after) == len([u for u in offline if u.end <= 16000 * 40 - 512 * 12])
