from __future__ import annotations

import math

import numpy as np
import pytest

from rtcore.asr.batcher import AsrBatcher, AsrRequest, BatchPolicy

POLICY = BatchPolicy(batch_size=3, max_wait_s=0.05, window_s=10.0, margin_s=5.0, step_s=10.0)


def req(key: str, seconds: float, at: float) -> AsrRequest:
    return AsrRequest(key, np.zeros(int(seconds * 16000), np.float32), at)


def test_window_buckets_leave_the_margin() -> None:
    assert POLICY.buckets == [10.0, 20.0, 30.0]
    assert [POLICY.window_for(d) for d in (0.5, 5.0, 5.1, 15.0, 15.1, 29.0, 45.0)] == \
        [10.0, 10.0, 20.0, 20.0, 30.0, 30.0, 30.0]
    assert BatchPolicy(window_s=30.0).buckets == [30.0]
    assert BatchPolicy(window_s=25.0, margin_s=2.0).window_for(10.0) == 25.0
    assert BatchPolicy(window_s=6.0, step_s=2.0).buckets == [6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0,
                                                             22.0, 24.0, 26.0, 28.0, 30.0]
    assert BatchPolicy(window_s=25.0, step_s=2.0).buckets == [25.0, 27.0, 29.0, 30.0]
    assert [BatchPolicy(window_s=6.0, step_s=2.0).window_for(d) for d in (0.5, 1.0, 1.1, 3.2, 24.9, 25.1)] == \
        [6.0, 6.0, 8.0, 10.0, 30.0, 30.0]
    with pytest.raises(ValueError, match="step_s > 0"):
        BatchPolicy(step_s=0.0)


def test_a_full_bucket_is_due_at_once() -> None:
    b = AsrBatcher(POLICY)
    for i in range(3):
        b.add(req(f"u{i}", 2.0, at=100.0))
    assert b.next_deadline() == -math.inf
    batch = b.pop_due(now=100.0)
    assert [r.key for r in batch] == ["u0", "u1", "u2"] and {r.window_s for r in batch} == {10.0}
    assert len(b) == 0 and b.next_deadline() == math.inf


def test_a_partial_bucket_waits_for_max_wait_from_its_oldest() -> None:
    b = AsrBatcher(POLICY)
    b.add(req("a", 2.0, at=100.0))
    b.add(req("b", 2.0, at=100.03))
    assert b.next_deadline() == 100.05
    assert b.pop_due(now=100.049) == []
    assert [r.key for r in b.pop_due(now=100.05)] == ["a", "b"]


def test_a_window_never_shrinks_and_the_oldest_goes_first() -> None:
    b = AsrBatcher(POLICY)
    b.add(req("short0", 2.0, at=99.0))
    b.add(req("long", 12.0, at=100.0))
    b.add(req("short1", 2.0, at=100.01))
    assert [(r.key, r.window_s) for r in b.pop_due(now=101.0)] == [("short0", 10.0), ("short1", 10.0)]
    assert [(r.key, r.window_s) for r in b.pop_due(now=101.0)] == [("long", 20.0)]


def test_free_places_take_the_oldest_smaller_items_padded_up_to_twice_their_window() -> None:
    policy = BatchPolicy(batch_size=3, max_wait_s=0.05, window_s=6.0, margin_s=5.0, step_s=2.0)
    b = AsrBatcher(policy)
    b.add(req("w10", 4.0, at=100.0))      # due first
    b.add(req("w6-late", 1.0, at=100.3))
    b.add(req("w8", 2.5, at=100.1))
    b.add(req("w6-early", 1.0, at=100.2))
    b.add(req("w30", 24.0, at=100.25))    # larger: never joins a smaller window
    assert [(r.key, r.window_s) for r in b.pop_due(now=100.06)] == [("w10", 10.0), ("w8", 10.0), ("w6-early", 10.0)]
    assert len(b) == 2 and "w6-early" not in b
    b.add(req("w18", 12.0, at=100.4))
    # 6 s items are not padded to 30 s (more than twice their window) and wait for their own batch.
    assert [(r.key, r.window_s) for r in b.pop_due(now=100.4)] == [("w30", 30.0), ("w18", 30.0)]
    assert [(r.key, r.window_s) for r in b.pop_due(now=100.4)] == [("w6-late", 6.0)]


def test_flush_and_duplicates() -> None:
    b = AsrBatcher(POLICY)
    assert b.add(req("x", 1.0, at=0.0)) and not b.add(req("x", 1.0, at=0.0))
    assert "x" in b and len(b) == 1
    assert [r.key for r in b.pop_due(now=0.0, flush=True)] == ["x"]


def test_the_worker_gives_each_utterance_its_context() -> None:
    import uuid

    from rtcore.asr.whisper import BatchTiming, WhisperResult
    from rtcore.asr.worker import AsrWorker
    from rtcore.runtime.messages import UtteranceReady
    from rtcore.runtime.ring import AudioRings, RingSpec

    seen: list[list[str]] = []

    class Engine:
        def transcribe(self, audios, window_s, languages=None, while_waiting=None, contexts=None):  # type: ignore[no-untyped-def]
            seen.append(list(contexts or []))
            return ([WhisperResult("oui", -0.1, 0.0, 1.0, False) for _ in audios],
                    BatchTiming(0.0, 0.0, window_s, len(audios)))

    rings = AudioRings.create(RingSpec(f"rtcore.test{uuid.uuid4().hex[:8]}.1.rings", 2, 16000))
    try:
        worker = AsrWorker("asr-0", Engine(), BatchPolicy(batch_size=2, max_wait_s=0.0), rings)  # type: ignore[arg-type]
        for n, context in enumerate(("Au gaz, au fioul.", "")):
            lease = rings.allocate()
            rings.write(lease, np.zeros(8000, dtype=np.int16))
            assert worker.accept(UtteranceReady(utterance_id=f"u{n}", call_id=f"c{n}", slot=lease.slot,
                                                generation=lease.generation, start_sample=0, end_sample=8000,
                                                eos_at=0.0, context=context)) is None
        transcripts = worker.run_due(flush=True)
        assert [t.text for t in transcripts] == ["oui", "oui"] and seen == [["Au gaz, au fioul.", ""]]
    finally:
        rings.close()
        rings.unlink()
