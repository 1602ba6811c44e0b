from __future__ import annotations

from rtcore.asr.dispatch import AsrDispatcher
from rtcore.runtime.messages import AsrCredit, Transcript, UtteranceReady


def utt(i: int) -> UtteranceReady:
    return UtteranceReady(utterance_id=f"c-{i:04d}", call_id="c", slot=0, generation=1, start_sample=0,
                          end_sample=16000, eos_at=float(i))


def done(u: UtteranceReady, worker: str = "w") -> Transcript:
    return Transcript(utterance_id=u.utterance_id, call_id=u.call_id, text="oui", worker=worker)


def test_work_goes_to_the_worker_with_most_free_capacity() -> None:
    d = AsrDispatcher()
    for i in range(5):
        d.submit(utt(i))
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=2), now=0.0)
    d.announce(b"b.2", AsrCredit(worker="b", pid=2, capacity=3), now=0.0)
    sent = d.assign()
    assert sorted(w for w, _ in sent) == [b"a.1", b"a.1", b"b.2", b"b.2", b"b.2"]
    assert d.assign() == []  # everyone full
    d.submit(utt(5))
    assert d.assign() == []
    first = next(u for w, u in sent if w == b"a.1")
    assert d.complete(b"a.1", done(first), now=1.0) == done(first)
    assert d.assign() == [(b"a.1", utt(5))]  # a slot freed at a


def test_restarted_worker_gets_its_work_requeued_and_no_transcript_is_duplicated() -> None:
    d = AsrDispatcher()
    for i in range(3):
        d.submit(utt(i))
    d.announce(b"asr-0.10", AsrCredit(worker="asr-0", pid=10, capacity=8), now=0.0)
    assert len(d.assign()) == 3
    # asr-0 answered one, then died; the supervisor restarted it as pid 11.
    assert d.complete(b"asr-0.10", done(utt(0)), now=1.0) is not None
    d.announce(b"asr-0.11", AsrCredit(worker="asr-0", pid=11, capacity=8), now=2.0)
    again = d.assign()
    assert [u.utterance_id for _, u in again] == ["c-0001", "c-0002"] and {w for w, _ in again} == {b"asr-0.11"}
    assert d.stats.requeued == 2
    published = [d.complete(b"asr-0.11", done(u), now=3.0) for _, u in again]
    assert all(p is not None for p in published)
    assert d.complete(b"asr-0.10", done(utt(1)), now=3.0) is None  # the old one was only slow
    assert d.submit(utt(1)) is False  # and a resent utterance is not run twice
    assert d.stats.published == 3 and d.stats.duplicate_transcripts == 1


def test_silent_worker_is_presumed_dead() -> None:
    d = AsrDispatcher(worker_timeout_s=10.0)
    d.submit(utt(0))
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=1), now=0.0)
    d.announce(b"b.2", AsrCredit(worker="b", pid=2, capacity=0), now=0.0)
    assert d.assign() == [(b"a.1", utt(0))]
    d.announce(b"b.2", AsrCredit(worker="b", pid=2, capacity=1), now=9.0)
    d.expire(now=9.0)
    assert d.assign() == []
    d.expire(now=10.5)
    assert d.assign() == [(b"b.2", utt(0))]
    assert d.complete(b"b.2", done(utt(0)), now=11.0) is not None
    # a's late answer arrives after all: a duplicate, dropped.
    assert d.complete(b"a.1", done(utt(0)), now=12.0) is None


def test_transcript_for_requeued_utterance_cancels_the_rerun() -> None:
    d = AsrDispatcher(worker_timeout_s=1.0)
    d.submit(utt(0))
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=1), now=0.0)
    d.assign()
    d.expire(now=5.0)  # presumed dead, utterance back in the queue, no other worker yet
    assert len(d.pending) == 1
    assert d.complete(b"a.1", done(utt(0)), now=5.5) is not None
    assert len(d.pending) == 0 and d.metrics()["in_flight"] == 0
