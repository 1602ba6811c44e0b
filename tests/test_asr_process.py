from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import zmq

from rtcore.launch import pipeline as procs_pipeline
from rtcore.runtime.audio import float_to_pcm16, load_audio
from rtcore.runtime.bus import AsrClient, Publisher, Subscriber
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import Transcript, UtteranceReady, topic
from rtcore.runtime.ring import SlotLease
from rtcore.runtime.supervisor import Supervisor
from rtcore.vad.segmenter import SegmenterOptions, Utterance, segment_streams
from rtcore.vad.silero import BatchedVad, SileroVad
from tests.conftest import require_shared_audio


def join_bus(settings: Settings, sub: Subscriber) -> None:
    """Publish probe transcripts until one comes back: our subscription is then in place."""
    pub = Publisher(settings.endpoint("bus_pub"))
    try:
        for _ in range(500):
            pub.publish(Transcript(utterance_id="probe", call_id="probe", text=""))
            if sub.recv(timeout_ms=20) is not None:
                sub.drain()
                return
        raise AssertionError("never joined the bus")
    finally:
        pub.close()


@contextmanager
def running_asr(settings: Settings) -> Iterator[tuple[Supervisor, Subscriber, AsrClient]]:
    """The ASR service under a real supervisor, a Transcript subscriber already on the bus, and a
    client submitting utterances to the dispatcher."""
    sup = Supervisor(settings, procs_pipeline.asr_service(settings))
    sup.start()
    sub = Subscriber(settings.endpoint("bus_sub"), [Transcript])
    client = AsrClient(settings.endpoint("asr"))
    try:
        join_bus(settings, sub)
        assert sup.rings is not None
        yield sup, sub, client
    finally:
        client.close()
        sub.close()
        sup.stop()


def submit_twice(client: AsrClient, lease: SlotLease, spans: list[Utterance]) -> list[str]:
    """The recording's sentences twice over: more utterances than both workers hold at once."""
    ids = []
    for round_no in range(2):
        for k, span in enumerate(spans):
            ids.append(f"call-{round_no}-{k:02d}")
            client.submit(UtteranceReady(utterance_id=ids[-1], call_id="call", slot=lease.slot,
                                         generation=lease.generation, start_sample=span.start,
                                         end_sample=span.end, eos_at=time.time()))
    return ids


def assert_exactly_once(got: list[Transcript], ids: list[str]) -> None:
    """One transcript, with text, for every utterance submitted; none twice."""
    counts = Counter(t.utterance_id for t in got)
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]
    assert all(t.error == "" and t.text for t in got)


def test_killing_a_worker_mid_run_loses_and_duplicates_nothing(make_settings: Callable[..., Settings]) -> None:
    audio = load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav"))
    [spans] = segment_streams([audio], SegmenterOptions(), BatchedVad(SileroVad()))
    settings = make_settings(redis_url="redis://127.0.0.1:1", ring_seconds=90.0, asr_workers=2,
                             asr_intra_threads=1, asr_batch_size=4, asr_worker_timeout_s=30.0)
    with running_asr(settings) as (sup, sub, client):
        assert sup.rings is not None
        lease = sup.rings.allocate()
        sup.rings.write(lease, float_to_pcm16(audio))
        ids = submit_twice(client, lease, spans)
        got: list[Transcript] = []
        victim = sup.children["asr-0"]
        killed_pid = 0
        deadline = time.monotonic() + 400
        while len({t.utterance_id for t in got}) < len(ids):
            assert time.monotonic() < deadline, f"{len(got)} of {len(ids)} transcripts"
            message = sub.recv(timeout_ms=100)
            if isinstance(message, Transcript):
                got.append(message)
                # asr-0 has just finished a batch and holds more: kill it now.
                if message.worker == "asr-0" and not killed_pid:
                    killed_pid = victim.pid
                    os.kill(killed_pid, signal.SIGKILL)
            sup.poll(0)
        # Let any late duplicate surface before counting: wait for the dispatcher's report to
        # show everything published, then drain the bus.
        dispatch = sup.children["asr_dispatch"]
        while dispatch.metrics.get("published", 0) < len(ids):
            assert time.monotonic() < deadline
            sup.poll(0.1)
        got += [m for m in sub.drain() if isinstance(m, Transcript)]
        assert_exactly_once(got, ids)
        assert killed_pid and victim.restarts == 1
        assert dispatch.metrics["requeued"] >= 1  # the kill did catch work in flight
        assert {t.worker for t in got} >= {"asr-0", "asr-1"}
        assert max(t.batch_size for t in got) > 1


def test_unreadable_utterances_get_error_transcripts_and_an_ended_calls_are_read(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1", ring_seconds=2.0, asr_workers=1, asr_intra_threads=1)
    with running_asr(settings) as (sup, sub, client):
        assert sup.rings is not None
        lease = sup.rings.allocate()
        sup.rings.write_silence(lease, 16000 * 5)  # 5 s into a 2 s ring: the first 3 s are gone
        client.submit(
            UtteranceReady(
                utterance_id="old",
                call_id="c",
                slot=lease.slot,
                generation=lease.generation,
                start_sample=0,
                end_sample=16000,
                eos_at=time.time(),
            )
        )
        message = None
        while not isinstance(message, Transcript):
            message = sub.recv(timeout_ms=60000)
            assert message is not None
        assert message.utterance_id == "old" and message.text == ""
        assert "were overwritten" in message.error

        def transcript_of(utterance_id: str, lease: SlotLease) -> Transcript:
            client.submit(
                UtteranceReady(
                    utterance_id=utterance_id,
                    call_id="c",
                    slot=lease.slot,
                    generation=lease.generation,
                    start_sample=0,
                    end_sample=16000,
                    eos_at=time.time(),
                )
            )
            while True:
                message = sub.recv(timeout_ms=60000)
                assert message is not None
                if isinstance(message, Transcript) and message.utterance_id == utterance_id:
                    return message

        # The caller hung up (slot freed) before the ASR read the last utterance: still read.
        ended = sup.rings.allocate()
        sup.rings.write_silence(ended, 16000)
        sup.rings.free(ended)
        assert transcript_of("last-words", ended).error == ""
        # Once the slot serves another call, the old range is refused, never read as the new audio.
        while (reused := sup.rings.allocate()).slot != ended.slot:
            pass
        sup.rings.write_silence(reused, 16000)
        assert "is gone" in transcript_of("stale", ended).error
        assert sup.children["asr-0"].restarts == 0


def test_killing_the_dispatcher_mid_run_loses_and_duplicates_nothing(make_settings: Callable[..., Settings]) -> None:
    """The dispatcher's queue lives in its memory. Killed with 36 utterances submitted, some queued,
    some at the workers: the submitter (here as the VAD does it: AsrClient, fed the bus's
    Transcript and AsrStatus) submits again what has no transcript when the restarted dispatcher
    announces itself, workers list what they hold, and every utterance gets exactly one transcript."""
    from rtcore.runtime.messages import AsrStatus

    audio = load_audio(require_shared_audio("OSR_fr_000_0041_8k.wav"))
    [spans] = segment_streams([audio], SegmenterOptions(), BatchedVad(SileroVad()))
    settings = make_settings(redis_url="redis://127.0.0.1:1", ring_seconds=90.0, asr_workers=2,
                             asr_intra_threads=1, asr_batch_size=4, asr_worker_timeout_s=30.0)
    with running_asr(settings) as (sup, sub, client):
        assert sup.rings is not None
        sub.socket.setsockopt(zmq.SUBSCRIBE, topic(AsrStatus))
        lease = sup.rings.allocate()
        sup.rings.write(lease, float_to_pcm16(audio))
        dispatch = sup.children["asr_dispatch"]
        statuses: list[AsrStatus] = []
        while not statuses:  # the client knows the first dispatcher before submitting
            message = sub.recv(timeout_ms=5000)
            if isinstance(message, AsrStatus):
                statuses.append(message)
                client.dispatcher_seen(message)
        ids = submit_twice(client, lease, spans)
        got: list[Transcript] = []
        killed_pid = 0
        deadline = time.monotonic() + 400
        while len({t.utterance_id for t in got}) < len(ids):
            assert time.monotonic() < deadline, f"{len(got)} of {len(ids)} transcripts"
            message = sub.recv(timeout_ms=100)
            if isinstance(message, AsrStatus):
                statuses.append(message)
                client.dispatcher_seen(message)
            elif isinstance(message, Transcript):
                got.append(message)
                client.settled(message.utterance_id)
                if len(got) == 6 and not killed_pid:  # work queued and at both workers
                    killed_pid = dispatch.pid
                    os.kill(killed_pid, signal.SIGKILL)
            sup.poll(0)
        # Any late duplicate would come from the new dispatcher: wait until it holds nothing more
        # (its report after the last transcript) before counting.
        idle_reports: list[dict[str, float]] = []
        sup.on_metrics = lambda process, values: idle_reports.append(values) if (
            process == "asr_dispatch" and values.get("pending") == 0 and values.get("in_flight") == 0) else None
        while not idle_reports:
            assert time.monotonic() < deadline
            sup.poll(0.1)
        got += [m for m in sub.drain() if isinstance(m, Transcript)]
        assert_exactly_once(got, ids)
        assert killed_pid and dispatch.restarts == 1
        assert len({(s.pid, s.started_at) for s in statuses}) == 2 and client.resubmitted > 0
        assert not client.outstanding
        # The workers' lists were adopted, so what they held was not run a second time.
        assert dispatch.metrics["adopted"] >= 1
