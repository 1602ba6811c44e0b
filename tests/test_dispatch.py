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
    assert d.submit(utt(1)) == "duplicate"  # and a resent utterance is not run twice
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


def test_a_restarted_dispatcher_rebuilds_its_queue_from_workers_and_submitters() -> None:
    """The dispatcher died with c-0000..c-0004 submitted: asr-0 holds 0 and 1, 2..4 were queued.
    Its successor hears asr-0's list and the submitter's resend: 0 and 1 stay where they are
    (not run twice), 2..4 are queued and handed out only after the grace for workers' lists."""
    d = AsrDispatcher(started=100.0, holding_grace_s=1.2)
    d.announce(b"asr-0.10", AsrCredit(worker="asr-0", pid=10, capacity=8, holding=("c-0000", "c-0001")), now=100.1)
    assert d.stats.adopted == 2 and d.metrics()["in_flight"] == 2
    outcomes = [d.submit(utt(i)) for i in range(5)]  # the VAD submits again what has no transcript
    assert outcomes == ["adopted", "adopted", "queued", "queued", "queued"]
    assert d.assign(now=100.5) == []  # within the grace: another worker's list may still come
    d.announce(b"asr-1.11", AsrCredit(worker="asr-1", pid=11, capacity=8, holding=("c-0002",)), now=100.6)
    assert [u.utterance_id for u in d.pending] == ["c-0003", "c-0004"]  # c-0002 is at asr-1 already
    sent = d.assign(now=101.3)
    assert sorted(u.utterance_id for _, u in sent) == ["c-0003", "c-0004"]
    # asr-0 dies before answering: what it held, known now from the resend, is run again elsewhere.
    d.announce(b"asr-0.12", AsrCredit(worker="asr-0", pid=12, capacity=8), now=102.0)
    again = d.assign(now=102.0)
    at_asr0 = [u.utterance_id for w, u in sent if w == b"asr-0.10"]
    assert sorted(u.utterance_id for _, u in again) == sorted(["c-0000", "c-0001", *at_asr0])
    assert d.stats.requeued == len(again)
    answers = [(w, u) for w, u in sent if w != b"asr-0.10"] + again + [(b"asr-1.11", utt(2))]
    published = [d.complete(w, done(u), now=103.0) for w, u in answers]
    assert all(p is not None for p in published) and d.stats.published == 5
    assert d.complete(b"asr-0.10", done(utt(0)), now=103.5) is None  # the dead one's late answer


def test_the_queue_is_bounded_and_the_expected_wait_is_what_utterances_wait() -> None:
    d = AsrDispatcher(queue_limit=3)
    assert [d.submit(utt(i), now=0.0) for i in range(4)] == ["queued", "queued", "queued", "full"]
    assert d.stats.refused_full == 1 and d.metrics()["refused_full"] == 1
    assert d.expected_wait_ms(now=2.0) == 2000.0  # no worker yet: the oldest has waited 2 s
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=2), now=2.0)
    for _, u in d.assign(now=2.0):
        d.complete(b"a.1", done(u, "a"), now=2.5, latency_ms=2600.0)
    assert d.throughput(now=2.5) == 0.2  # 2 transcripts in the last 10 s
    assert d.expected_wait_ms(now=2.5) == 2600.0  # what the last transcripts took
    d.announce(b"a.1", AsrCredit(worker="a", pid=1, capacity=2), now=3.0)
    [(_, last)] = d.assign(now=3.0)
    d.complete(b"a.1", done(last, "a"), now=3.2, latency_ms=300.0)
    assert d.expected_wait_ms(now=20.0) == 0.0  # nothing queued, nothing slow lately
