"""The Prometheus families of the media, VAD and ASR stages move where the work happens.

Outside a run the families of rtcore.runtime.telemetry are plain in-process metrics of
prometheus-client's default registry: each test drives a stage's real library object and compares
the samples before and after.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import REGISTRY

from rtcore.asr.batcher import BatchPolicy
from rtcore.asr.dispatch import QUEUE_FULL, AsrDispatcher
from rtcore.asr.whisper import WhisperEngine, WhisperOptions
from rtcore.asr.worker import AsrWorker
from rtcore.media.rtp import RTP_HEADER
from rtcore.runtime.audio import float_to_pcm16, load_audio
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import HTTP_CALL_ID, AsrCredit, CallEnded, CallStarted, Transcript, UtteranceReady
from rtcore.runtime.models import whisper_model_dir
from rtcore.runtime.ring import AudioRings, RingSpec
from rtcore.vad.detector import UtteranceDetector
from rtcore.vad.segmenter import SegmenterOptions
from rtcore.vad.silero import CHUNK, BatchedVad, SileroVad
from tests.conftest import StartCapture, require_shared_audio
from tests.test_capture import Sender, rtp, wait_until


def sample(name: str, **labels: str) -> float:
    """The sample's value now; 0 for a series not created yet."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Samples:
    """Samples read at construction, to compare with their values later."""

    def __init__(self, *series: tuple[str, dict[str, str]]) -> None:
        self._before = {(name, tuple(sorted(labels.items()))): sample(name, **labels) for name, labels in series}

    def gained(self, name: str, **labels: str) -> float:
        return sample(name, **labels) - self._before[(name, tuple(sorted(labels.items())))]


def series(name: str, **labels: str) -> tuple[str, dict[str, str]]:
    return name, labels


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rings() -> Iterator[AudioRings]:
    spec = RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.{os.getpid()}.rings", n_slots=4, capacity=16000 * 60)
    r = AudioRings.create(spec)
    yield r
    r.close()
    r.unlink()


# --- RTP capture --------------------------------------------------------------------------------


@pytest.fixture
def senders() -> Iterator[list[Sender]]:
    made: list[Sender] = []
    yield made
    for sender in made:
        sender.close()


RTP_SERIES = (
    series("rtcore_rtp_packets_received_total"), series("rtcore_rtp_packets_lost_total"),
    series("rtcore_rtp_packets_late_total"),
    series("rtcore_rtp_packets_discarded_total", reason="duplicate"),
    series("rtcore_rtp_packets_discarded_total", reason="stray"),
    series("rtcore_rtp_packets_invalid_total", reason="malformed"),
    series("rtcore_rtp_packets_invalid_total", reason="payload_type"),
    series("rtcore_rtp_packets_invalid_total", reason="unknown_source"),
)


def rtp_gains(before: Samples) -> dict[str, float]:
    return {(labels.get("reason") or name.removeprefix("rtcore_rtp_packets_").removesuffix("_total")):
            before.gained(name, **labels) for name, labels in RTP_SERIES}


async def test_capture_counts_every_datagram_once_by_what_became_of_it(
        rings: AudioRings, start_capture: StartCapture, senders: list[Sender]) -> None:
    capture, address = await start_capture(reorder_window=3, unknown_grace_s=0.0)
    lease = rings.allocate()
    known, stranger = Sender(address), Sender(address)
    senders += [known, stranger]
    capture.add_call("c1", lease, known.source)
    before = Samples(*RTP_SERIES)
    # 3 before 2: reordered; 4 twice: a duplicate; 5 declared lost when 6..9 overflow the window,
    # then it comes: late. 10 of payload type 0 is refused; 5000 is too far off to place, a stray
    # once the real 10 follows.
    known.send(0, 1, 3, 2, 4, 4, 6, 7, 8, 9, 5)
    known.send_raw(rtp(10, pt=0))
    known.send(5000, 10)
    known.send_raw(b"\x80\x76")  # shorter than a header
    known.send_raw(rtp(11)[:RTP_HEADER.size + 3])  # an odd payload length
    stranger.send(0, 1, 2)  # no call announced this source, no grace: dropped at once
    await wait_until(lambda: capture.datagrams == known.sent + stranger.sent, "every datagram")
    assert rtp_gains(before) == dict.fromkeys(rtp_gains(before), 0.0)  # nothing before the tick's export

    capture.tick(1000.0)
    expected = {"received": 13, "lost": 1, "late": 1, "duplicate": 1, "stray": 1, "malformed": 2,
                "payload_type": 1, "unknown_source": 3}
    assert rtp_gains(before) == expected
    capture.tick(1000.5)  # within the second: not exported again, and nothing is counted twice
    capture.tick(1001.5)
    assert rtp_gains(before) == expected

    # An ended call's packets stay counted; what its end flushes (12 held, 11 lost) is added.
    known.send(12)
    await wait_until(lambda: capture.datagrams == known.sent + stranger.sent, "packet 12")
    capture.remove_call("c1")
    capture.export_metrics()
    assert rtp_gains(before) == {**expected, "received": 14, "lost": 2}
    values = capture.stats()  # the Metrics message says the same
    assert (values["received"], values["lost"], values["invalid"], values["unknown_source"]) == (14, 2, 3, 3)


async def test_capture_samples_each_calls_rfc3550_jitter_once_a_second(
        rings: AudioRings, start_capture: StartCapture, senders: list[Sender]) -> None:
    """Packets 20 ms apart in RTP time (320 samples at 16 kHz) arriving alternately 30 and 10 ms
    apart: each transit difference D is 160 timestamp units, so after n packets J = 160 (1 -
    (15/16)^(n-1)) (J += (|D| - J) / 16 from J = 0), observed in seconds."""
    clock = FakeClock()
    capture, address = await start_capture(clock=clock)
    lease, quiet_lease = rings.allocate(), rings.allocate()
    sender, quiet = Sender(address), Sender(address)
    senders += [sender, quiet]
    capture.add_call("c1", lease, sender.source)
    capture.add_call("quiet", quiet_lease, quiet.source)
    first_arrival = clock.now

    async def send_at(seq: int) -> None:
        clock.now = first_arrival + 0.020 * seq + (0.010 if seq % 2 else 0.0)
        arrived = capture.datagrams + 1
        sender.send(seq)
        # The clock is read as the datagram arrives: the next one is sent only once it has been.
        await wait_until(lambda: capture.datagrams == arrived, f"packet {seq}")

    before = Samples(series("rtcore_rtp_jitter_seconds_count"), series("rtcore_rtp_jitter_seconds_sum"))
    quiet.send(0)  # one packet: no jitter estimate yet
    await wait_until(lambda: capture.datagrams == 1, "the quiet call's packet")
    for seq in range(20):
        await send_at(seq)
    capture.tick(clock.now)
    jitter_s = 160 * (1 - (15 / 16) ** 19) / 16000
    assert before.gained("rtcore_rtp_jitter_seconds_count") == 1  # c1 only
    assert before.gained("rtcore_rtp_jitter_seconds_sum") == pytest.approx(jitter_s, rel=1e-9)
    assert capture.stats()[f"slot{lease.slot}_jitter_ms"] == pytest.approx(jitter_s * 1000, rel=1e-9)

    capture.tick(clock.now + 1.5)  # a second later, nothing received since: no sample
    assert before.gained("rtcore_rtp_jitter_seconds_count") == 1
    for seq in range(20, 22):
        await send_at(seq)
    capture.tick(clock.now + 3.0)
    jitter_s = 160 * (1 - (15 / 16) ** 21) / 16000
    assert before.gained("rtcore_rtp_jitter_seconds_count") == 2
    assert before.gained("rtcore_rtp_jitter_seconds_sum") == pytest.approx(
        160 * (1 - (15 / 16) ** 19) / 16000 + jitter_s, rel=1e-9)


# --- VAD ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pcm() -> np.ndarray:
    return float_to_pcm16(load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav")))


VAD_SERIES = (series("rtcore_vad_tick_seconds_count"), series("rtcore_vad_tick_seconds_sum"),
              series("rtcore_vad_utterances_total"), series("rtcore_vad_tick_overruns_total"))


def test_vad_times_each_tick_counts_utterances_and_streams(rings: AudioRings, pcm: np.ndarray) -> None:
    clock = FakeClock()
    detector = UtteranceDetector(rings, BatchedVad(SileroVad()), SegmenterOptions(), clock=clock,
                                 period_s=math.inf)  # no tick is an overrun
    leases = {}
    for call_id in ("a", "b"):
        leases[call_id] = lease = rings.allocate()
        detector.handle(CallStarted(call_id=call_id, slot=lease.slot, generation=lease.generation))
    before = Samples(*VAD_SERIES)
    out = []
    audio = pcm[:16000 * 20]
    for pos in range(0, len(audio), CHUNK):
        rings.write(leases["a"], audio[pos:pos + CHUNK])
        rings.write(leases["b"], audio[pos:pos + CHUNK])
        clock.now += 0.032
        out += detector.tick()
        assert sample("rtcore_vad_streams") == 2
    utterances = [m for m in out if isinstance(m, UtteranceReady)]
    ticks = detector.stats.ticks
    assert len(utterances) >= 4 and {u.call_id for u in utterances} == {"a", "b"}  # a sentence every ~3 s
    assert before.gained("rtcore_vad_utterances_total") == len(utterances) == detector.stats.utterances
    assert before.gained("rtcore_vad_tick_seconds_count") == ticks
    assert before.gained("rtcore_vad_tick_seconds_sum") == pytest.approx(detector.stats.busy_s, rel=1e-9)
    assert before.gained("rtcore_vad_tick_overruns_total") == 0

    # The calls end: their last words are cut and counted, and nobody is listened to any more.
    for call_id, lease in leases.items():
        detector.handle(CallEnded(call_id=call_id, slot=lease.slot, generation=lease.generation))
    last = [m for m in detector.tick() if isinstance(m, UtteranceReady)]
    assert sample("rtcore_vad_streams") == 0
    assert before.gained("rtcore_vad_utterances_total") == len(utterances) + len(last)
    assert before.gained("rtcore_vad_tick_seconds_count") == ticks + 1


def test_vad_counts_ticks_longer_than_their_period(rings: AudioRings) -> None:
    detector = UtteranceDetector(rings, BatchedVad(SileroVad()), SegmenterOptions(), period_s=0.0)
    lease = rings.allocate()
    detector.handle(CallStarted(call_id="c", slot=lease.slot, generation=lease.generation))
    before = Samples(*VAD_SERIES)
    for _ in range(3):
        rings.write(lease, np.zeros(CHUNK, np.int16))
        detector.tick()  # any work outlasts a period of 0
    assert before.gained("rtcore_vad_tick_overruns_total") == 3 == detector.stats.tick_overruns
    assert detector.metrics()["tick_overruns"] == 3


# --- ASR dispatcher -------------------------------------------------------------------------
def utt(key: str, seconds: float, call_id: str = "c", eos_at: float = 5000.0) -> UtteranceReady:
    return UtteranceReady(utterance_id=key, call_id=call_id, slot=0, generation=1, start_sample=0,
                          end_sample=int(seconds * 16000), eos_at=eos_at)


def answer(u: UtteranceReady, text: str = "oui", hallucination: bool = False, error: str = "",
           no_speech_prob: float = 0.0, avg_logprob: float = -0.2) -> Transcript:
    return Transcript(utterance_id=u.utterance_id, call_id=u.call_id, text=text, hallucination=hallucination,
                      error=error, no_speech_prob=no_speech_prob, avg_logprob=avg_logprob, eos_at=u.eos_at)


RESULTS = ("text", "no_speech", "hallucination", "error")
DISPATCH_SERIES = (
    *(series("rtcore_asr_utterances_total", result=r) for r in RESULTS),
    series("rtcore_asr_refused_total"),
    series("rtcore_eos_to_transcript_seconds_count"), series("rtcore_eos_to_transcript_seconds_sum"),
)


def results(before: Samples) -> dict[str, float]:
    return {r: before.gained("rtcore_asr_utterances_total", result=r) for r in RESULTS}


def depth(window: str) -> float | None:
    return REGISTRY.get_sample_value("rtcore_asr_queue_depth", {"window": window})


def test_dispatcher_gauges_show_its_queue_by_window_and_what_admission_reads() -> None:
    policy = BatchPolicy(window_s=6.0, step_s=2.0, margin_s=5.0)
    d = AsrDispatcher(policy=policy)
    for key, seconds in (("u1", 1.0), ("u2", 0.5), ("u3", 4.0), ("u4", 40.0)):
        assert d.submit(utt(key, seconds), now=100.0) == "queued"
    status = d.status(now=102.0, pid=7, started_at=50.0)
    # 1 s + 5 s of margin fits 6 s; 4 s needs 10 s; past 25 s, the largest window.
    assert {w: depth(w) for w in ("6", "8", "10", "30")} == {"6": 2, "8": 0, "10": 1, "30": 1}
    assert all(depth(f"{w:g}") is not None for w in policy.buckets)  # every bucket has its series
    assert sample("rtcore_asr_expected_wait_seconds") == status.expected_wait_ms / 1000 == 2.0
    assert (sample("rtcore_asr_in_flight"), sample("rtcore_asr_capacity")) == (0, 0)

    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=3), now=102.0)
    sent = d.assign(now=102.0)
    status = d.status(now=102.0, pid=7, started_at=50.0)
    assert [u.utterance_id for _, u in sent] == ["u1", "u2", "u3"]
    assert {w: depth(w) for w in ("6", "10", "30")} == {"6": 0, "10": 0, "30": 1}
    assert (sample("rtcore_asr_in_flight"), sample("rtcore_asr_capacity")) == (3, 3) == (status.in_flight,
                                                                                          status.capacity)
    # The worker dies: what it held is queued again, in its buckets.
    d.announce(b"a.2", AsrCredit(worker="a", pid=2, capacity=0), now=103.0)
    d.status(now=103.0, pid=7, started_at=50.0)
    assert {w: depth(w) for w in ("6", "10", "30")} == {"6": 2, "10": 1, "30": 1}
    assert sample("rtcore_asr_in_flight") == 0
    # A transcript from the dead one (only slow) settles its utterance: out of the queue.
    d.complete(b"a.1", answer(utt("u3", 4.0)), now=103.5, published_at=5001.0)
    d.status(now=103.5, pid=7, started_at=50.0)
    assert {w: depth(w) for w in ("6", "10", "30")} == {"6": 2, "10": 0, "30": 1}


def test_dispatcher_counts_each_utterance_once_by_result_when_its_transcript_is_published() -> None:
    d = AsrDispatcher(queue_limit=3)
    before = Samples(*DISPATCH_SERIES)
    calls = [utt(f"c-{i}", 1.0, eos_at=5000.0 + i) for i in range(3)]
    for u in calls:
        d.submit(u, now=0.0)
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=8), now=0.0)
    assert len(d.assign(now=0.0)) == 3
    first = d.complete(b"a.1", answer(calls[0]), now=1.0, published_at=5000.7)
    assert first is not None and first.published_at == 5000.7
    assert d.complete(b"a.1", answer(calls[0]), now=1.1, published_at=5000.8) is None  # a duplicate
    # Whisper's no-speech verdict: probably silent, unsure of its words.
    d.complete(b"a.1", answer(calls[1], "Merci.", True, no_speech_prob=0.9, avg_logprob=-1.5), now=1.2,
               published_at=5001.5)
    d.complete(b"a.1", answer(calls[2], "Sous-titres réalisés par la communauté d'Amara.org", True), now=1.3,
               published_at=5002.25)
    assert results(before) == {"text": 1, "no_speech": 1, "hallucination": 1, "error": 0}
    assert before.gained("rtcore_eos_to_transcript_seconds_count") == 3
    assert before.gained("rtcore_eos_to_transcript_seconds_sum") == pytest.approx(0.7 + 0.5 + 0.25)

    # The HTTP API's utterances are counted, but their latency is not a caller's.
    http = utt("http-1", 1.0, call_id=HTTP_CALL_ID)
    d.submit(http, now=2.0)
    d.assign(now=2.0)
    d.complete(b"a.1", answer(http, "", True), now=2.5, published_at=5003.0)  # nothing but silence
    assert results(before)["no_speech"] == 2
    assert before.gained("rtcore_eos_to_transcript_seconds_count") == 3

    # A worker's error transcript (the audio could not be read) is a failure, not a latency.
    broken = utt("c-broken", 1.0)
    d.submit(broken, now=3.0)
    d.assign(now=3.0)
    d.complete(b"a.1", answer(broken, "", error="slot reused"), now=3.5, published_at=5004.0)
    assert results(before) == {"text": 1, "no_speech": 2, "hallucination": 1, "error": 1}
    assert before.gained("rtcore_eos_to_transcript_seconds_count") == 3


def test_a_refused_utterance_is_counted_once_and_answered_once() -> None:
    d = AsrDispatcher(queue_limit=1)
    before = Samples(*DISPATCH_SERIES)
    assert d.submit(utt("c-0", 1.0), now=0.0) == "queued"
    refused = utt("c-1", 1.0)
    assert d.submit(refused, now=0.0) == "full"
    transcript = d.refusal(refused, published_at=5001.0)
    assert (transcript.utterance_id, transcript.error, transcript.published_at) == ("c-1", QUEUE_FULL, 5001.0)
    assert d.submit(refused, now=0.5) == "duplicate"  # sent again: it has its transcript already
    assert before.gained("rtcore_asr_refused_total") == 1
    assert results(before) == {"text": 0, "no_speech": 0, "hallucination": 0, "error": 1}
    assert before.gained("rtcore_eos_to_transcript_seconds_count") == 0


def test_a_restarted_dispatchers_adopted_and_requeued_utterances_are_counted_once() -> None:
    """asr-0 held c-0 and c-1 when the dispatcher died; its successor adopts them, the VAD submits
    them again, asr-0 dies too: they are run again at asr-1, and the dead one's late answers are
    duplicates."""
    d = AsrDispatcher(started=100.0, holding_grace_s=1.2)
    before = Samples(*DISPATCH_SERIES)
    d.announce(b"asr-0.10", AsrCredit(worker="asr-0", pid=10, capacity=8, holding=("c-0", "c-1")), now=100.1)
    held = [utt("c-0", 1.0), utt("c-1", 1.0)]
    assert [d.submit(u, now=100.2) for u in held] == ["adopted", "adopted"]
    assert d.submit(held[0], now=100.3) == "duplicate"
    d.announce(b"asr-1.11", AsrCredit(worker="asr-1", pid=11, capacity=8), now=101.5)
    d.announce(b"asr-0.12", AsrCredit(worker="asr-0", pid=12, capacity=0), now=101.5)
    again = d.assign(now=101.5)
    assert sorted(u.utterance_id for _, u in again) == ["c-0", "c-1"] and {w for w, _ in again} == {b"asr-1.11"}
    for u in held:
        assert d.complete(b"asr-1.11", answer(u), now=102.0, published_at=5001.0) is not None
        assert d.complete(b"asr-0.10", answer(u), now=102.5, published_at=5001.5) is None
    assert results(before) == {"text": 2, "no_speech": 0, "hallucination": 0, "error": 0}
    assert before.gained("rtcore_eos_to_transcript_seconds_count") == 2


# --- ASR worker -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    settings = Settings()
    return WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings)))


def test_worker_observes_each_batch_and_each_utterances_wait(rings: AudioRings, pcm: np.ndarray,
                                                             engine: WhisperEngine) -> None:
    clock = FakeClock()
    policy = BatchPolicy(batch_size=2, max_wait_s=0.01, window_s=6.0, step_s=2.0, margin_s=5.0)
    worker = AsrWorker("asr-0", engine, policy, rings, clock=clock)
    lease = rings.allocate()
    rings.write(lease, pcm[16000 * 2:16000 * 10])
    # 4 s (a 10 s window), then two of 1 s (6 s): the oldest, the 4 s, goes first with the older
    # 1 s one filling its batch; the other 1 s one is a batch of its own.
    spans = [(0, 4 * 16000), (4 * 16000, 5 * 16000), (5 * 16000, 6 * 16000)]
    before = Samples(series("rtcore_asr_batches_total", window="10"), series("rtcore_asr_batches_total", window="6"),
                     series("rtcore_asr_batch_size_count"), series("rtcore_asr_batch_size_sum"),
                     series("rtcore_asr_inference_seconds_count"), series("rtcore_asr_inference_seconds_sum"),
                     series("rtcore_asr_queue_wait_seconds_count"), series("rtcore_asr_queue_wait_seconds_sum"))
    for n, (start, end) in enumerate(spans):
        clock.now = 1000.0 + 0.1 * n  # queued at 1000.0, 1000.1, 1000.2
        assert worker.accept(UtteranceReady(utterance_id=f"u{n}", call_id="c", slot=lease.slot,
                                            generation=lease.generation, start_sample=start, end_sample=end,
                                            eos_at=5000.0)) is None
    clock.now = 1000.5
    transcripts = worker.run_due()
    clock.now = 1001.0
    transcripts += worker.run_due()
    assert worker.run_due(flush=True) == []
    assert sorted((t.utterance_id, t.window_s, t.batch_size) for t in transcripts) == [
        ("u0", 10.0, 2), ("u1", 10.0, 2), ("u2", 6.0, 1)]
    assert before.gained("rtcore_asr_batches_total", window="10") == 1
    assert before.gained("rtcore_asr_batches_total", window="6") == 1
    assert (before.gained("rtcore_asr_batch_size_count"), before.gained("rtcore_asr_batch_size_sum")) == (2, 3)
    assert before.gained("rtcore_asr_queue_wait_seconds_count") == 3
    assert before.gained("rtcore_asr_queue_wait_seconds_sum") == pytest.approx(0.5 + 0.4 + 0.8)
    batch_runs = {(t.window_s, t.features_ms + t.inference_ms) for t in transcripts}  # one per batch
    assert before.gained("rtcore_asr_inference_seconds_count") == 2 == len(batch_runs)
    assert before.gained("rtcore_asr_inference_seconds_sum") == pytest.approx(
        sum(ms for _, ms in batch_runs) / 1000, rel=1e-6)
    assert [t.queue_ms for t in sorted(transcripts, key=lambda t: t.utterance_id)] == pytest.approx([500, 400, 800])


def test_worker_creates_every_windows_series(rings: AudioRings, engine: WhisperEngine) -> None:
    policy = BatchPolicy(window_s=6.0, step_s=2.0)
    AsrWorker("asr-0", engine, policy, rings)
    assert all(REGISTRY.get_sample_value("rtcore_asr_batches_total", {"window": f"{w:g}"}) is not None
               for w in policy.buckets)
