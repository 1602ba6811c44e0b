"""ObservedRun, the live view's state, from bus messages: calls in progress and finished, the run and
ASR status, the rolling series, and its bounds."""

from __future__ import annotations

import json
from typing import Any

from rtcore.observe.state import ObservedRun, percentile
from rtcore.runtime.messages import (
    AsrStatus,
    CallView,
    ProcessState,
    RunStatus,
    SpeechStarted,
    Transcript,
    TurnTaken,
)

T0 = 1_700_000_000.0  # wall clock of the fake clocks at start


class Clocks:
    """A monotonic and a wall clock that move together, by hand."""

    def __init__(self) -> None:
        self.mono = 1000.25
        self.wall = T0

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def observed(clocks: Clocks, **options: Any) -> ObservedRun:
    return ObservedRun(clock=lambda: clocks.mono, wall=lambda: clocks.wall, **options)


def view(call_id: str, state: str = "ask_zip_code", **fields: Any) -> CallView:
    return CallView(call_id=call_id, state=state, started_at=fields.pop("started_at", T0), **fields)


def transcript(ms: float, call_id: str = "c1", batch_size: int = 0, **fields: Any) -> Transcript:
    return Transcript(utterance_id=f"u{ms}", call_id=call_id, text="oui", eos_at=T0,
                      published_at=T0 + ms / 1000, batch_size=batch_size, **fields)


def run_status(**cpu: float) -> RunStatus:
    processes = tuple(ProcessState(name=name, pid=100 + i, up=True, heartbeat_age_s=0.2, restarts=i,
                                   cpu_percent=value, rss_bytes=50 << 20)
                      for i, (name, value) in enumerate(cpu.items()))
    return RunStatus(sent_at=T0, processes=processes, call_slots=8, call_slots_in_use=1, has_dialog=True,
                     ari_connected=True, redis_connected=True, draining=False)


def asr_status(pending: int, in_flight: int) -> AsrStatus:
    return AsrStatus(pid=42, started_at=T0, pending=pending, in_flight=in_flight, workers=2, capacity=16,
                     throughput=3.5, expected_wait_ms=120.0, queue_limit=2000, refused_full=0)


def test_a_call_appears_is_updated_by_its_turns_then_ends_and_is_finished() -> None:
    clocks = Clocks()
    run = observed(clocks)
    changes: list[dict[str, Any]] = []
    run.add_listener(lambda kind, data: changes.append(data) if kind == "call" else None)

    run.handle(view("c1", "init"))
    clocks.advance(4)
    snap = run.snapshot()
    assert [c["call_id"] for c in snap["calls"]] == ["c1"]
    assert snap["calls"][0]["state"] == "init" and snap["calls"][0]["duration_s"] == 4.0

    run.handle(view("c1", "ask_owner_house", turns=1, last_transcript="c'est le 75011", last_intent="ok_zipcode",
                    last_turn_ms=812.4))
    (call,) = run.snapshot()["calls"]
    assert call | {"duration_s": None} == {
        "call_id": "c1", "state": "ask_owner_house", "started_at": T0, "turns": 1,
        "last_transcript": "c'est le 75011", "last_intent": "ok_zipcode", "last_turn_ms": 812.4,
        "ended_at": 0.0, "outcome": "", "duration_s": None}

    clocks.advance(6)
    run.handle(view("c1", "ended", turns=5, last_intent="ok_creneau", ended_at=T0 + 10, outcome="qualified"))
    snap = run.snapshot()
    assert snap["calls"] == []
    (done,) = snap["finished"]
    assert done["outcome"] == "qualified" and done["turns"] == 5 and done["duration_s"] == 10.0
    assert snap["counts"]["ended"] == 1 and snap["counts"]["in_progress"] == 0
    # Every change went to the listeners, the last one the end.
    assert [c["state"] for c in changes] == ["init", "ask_owner_house", "ended"]

    # A repeat of the end is the same call, and a late view does not bring it back.
    run.handle(view("c1", "ended", turns=5, ended_at=T0 + 10, outcome="qualified"))
    run.handle(view("c1", "ask_callback", turns=4))
    snap = run.snapshot()
    assert snap["calls"] == [] and len(snap["finished"]) == 1 and snap["counts"]["ended"] == 1


def test_calls_in_progress_by_start_and_finished_newest_first() -> None:
    clocks = Clocks()
    run = observed(clocks)
    run.handle(view("b", started_at=T0 + 2))
    run.handle(view("a", started_at=T0 + 1))
    run.handle(view("c", started_at=T0 + 3))
    assert [c["call_id"] for c in run.snapshot()["calls"]] == ["a", "b", "c"]
    for call_id in ("b", "a"):
        run.handle(view(call_id, "ended", ended_at=T0 + 5, outcome="abandoned"))
    snap = run.snapshot()
    assert [c["call_id"] for c in snap["calls"]] == ["c"]
    assert [c["call_id"] for c in snap["finished"]] == ["a", "b"]


def test_run_and_asr_status_are_kept_with_their_arrival() -> None:
    clocks = Clocks()
    run = observed(clocks)
    assert run.run_status is None and run.asr_status is None
    snap = run.snapshot()
    assert snap["run"] is None and snap["asr"] is None

    status = run_status(vad=12.5, dialog=3.0)
    run.handle(status)
    at = clocks.mono
    clocks.advance(0.5)
    run.handle(asr_status(pending=3, in_flight=4))
    clocks.advance(1.0)
    assert run.run_status is status and run.run_status_at == at
    assert run.asr_status is not None and run.asr_status_at == at + 0.5
    snap = run.snapshot()
    assert snap["run"]["age_s"] == 1.5 and snap["run"]["call_slots"] == 8 and snap["run"]["ari_connected"] is True
    assert snap["run"]["processes"][0] == {"name": "vad", "pid": 100, "up": True, "heartbeat_age_s": 0.2,
                                           "restarts": 0, "cpu_percent": 12.5, "rss_bytes": 50 << 20}
    assert snap["asr"]["age_s"] == 1.0 and snap["asr"]["pending"] == 3 and snap["asr"]["in_flight"] == 4


def test_series_one_point_per_second() -> None:
    clocks = Clocks()
    run = observed(clocks, series_s=10)
    # second 0: five call transcripts 100..500 ms in batches of 2 and 4, an HTTP one (no latency), two turns
    for ms, batch in [(100, 2), (200, 2), (300, 4), (400, 4), (500, 4)]:
        run.handle(transcript(ms, batch_size=batch))
    run.handle(transcript(9000, call_id="http", batch_size=4))
    run.handle(transcript(7000, error="ring overrun"))  # no text: no latency
    run.handle(TurnTaken(call_id="c1", utterance_id="u1", intent="oui", eos_to_transcript_ms=300, eos_to_reply_ms=900))
    run.handle(TurnTaken(call_id="c1", utterance_id="u2", intent="oui", eos_to_transcript_ms=300, eos_to_reply_ms=1100))
    run.handle(asr_status(pending=1, in_flight=2))
    run.handle(asr_status(pending=5, in_flight=2))  # the last of the second counts
    run.handle(run_status(vad=20.0, dialog=5.0))
    clocks.advance(2)  # second 1: nothing; second 2: the current one
    run.handle(run_status(vad=30.0))

    s = run.snapshot()["series"]
    assert s["step_s"] == 1 and s["points"] == 10 and s["end_at"] == T0 + 2 - 0.25
    for name in ("eos_to_transcript_p50_ms", "asr_queue", "asr_batch_mean"):
        assert len(s[name]) == 10
    assert s["eos_to_transcript_p50_ms"][-3:] == [300.0, None, None]
    assert s["eos_to_transcript_p95_ms"][-3] == 480.0
    assert s["eos_to_reply_p50_ms"][-3] == 1000.0 and s["eos_to_reply_p95_ms"][-3] == 1090.0
    assert s["asr_batch_mean"][-3] == round(20 / 6, 2) and s["asr_batch_max"][-3] == 4.0
    assert s["asr_queue"][-3:] == [7.0, None, None]
    assert s["cpu_percent"] == {"dialog": [None] * 7 + [5.0, None, None], "vad": [None] * 7 + [20.0, None, 30.0]}
    assert s["eos_to_transcript_p50_ms"][:7] == [None] * 7

    recent = run.snapshot()["recent"]
    assert recent["eos_to_transcript_n"] == 5 and recent["eos_to_transcript_p50_ms"] == 300.0
    assert recent["eos_to_reply_n"] == 2 and recent["eos_to_reply_p95_ms"] == 1090.0

    # Ten seconds later the first second has left the window.
    clocks.advance(10)
    s = run.snapshot()["series"]
    assert all(v is None for v in s["eos_to_transcript_p50_ms"]) and s["cpu_percent"] == {}
    assert run.snapshot()["recent"]["eos_to_reply_n"] == 0


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([10.0, 0.0, 20.0], 0.95) == 19.0


def test_other_messages_are_ignored_and_the_snapshot_is_json() -> None:
    clocks = Clocks()
    run = observed(clocks)
    run.handle(SpeechStarted(call_id="c1", slot=0, generation=1, start_sample=0, at=T0))
    assert run.version == 0
    run.handle(view("c1", last_transcript='<img src=x onerror="alert(1)"> « élan »', last_turn_ms=float("nan")))
    run.handle(run_status(vad=float("inf")))
    snap = run.snapshot()
    text = json.dumps(snap, allow_nan=False)  # no NaN anywhere: the browser's JSON.parse refuses it
    assert json.loads(text)["calls"][0]["last_transcript"].startswith("<img")
    assert snap["calls"][0]["last_turn_ms"] is None


def test_memory_is_bounded_whatever_the_traffic() -> None:
    clocks = Clocks()
    run = observed(clocks, series_s=30, max_calls=100, samples_per_second=64, max_processes=5, text_limit=50)
    for i in range(1000):
        run.handle(view(f"ended-{i}", "init"))
        run.handle(view(f"ended-{i}", "ended", ended_at=T0 + 1, outcome="qualified"))
    assert len(run.finished) == 50 and run.calls_ended == 1000
    assert run.snapshot()["finished"][0]["call_id"] == "ended-999"

    for i in range(500):  # calls that never end: the least recently updated are forgotten
        run.handle(view(f"open-{i}", last_transcript="x" * 10_000))
    assert len(run.calls) == 100 and run.calls_forgotten == 400
    assert min(run.calls) == "open-400"
    assert all(len(v.last_transcript) == 50 for v in run.calls.values())
    assert len(run.snapshot()["calls"][0]["last_transcript"]) == 50

    for second in range(100):
        for i in range(500):
            run.handle(transcript(float(i), batch_size=4))
            run.handle(TurnTaken(call_id="c", utterance_id="u", intent="", eos_to_transcript_ms=1,
                                 eos_to_reply_ms=i + 1))
        run.handle(RunStatus(sent_at=T0, processes=tuple(
            ProcessState(name=f"p{second}-{k}", pid=k, up=True, heartbeat_age_s=0, restarts=0, cpu_percent=1.0,
                         rss_bytes=0) for k in range(20)), call_slots=1, call_slots_in_use=0, has_dialog=False,
            ari_connected=False, redis_connected=False, draining=False))
        clocks.advance(1)
    seconds = run._seconds
    assert len(seconds) <= 31
    assert all(len(b.transcript_ms.values) <= 64 and len(b.reply_ms.values) <= 64 for b in seconds.values())
    assert all(len(b.cpu) <= 5 for b in seconds.values())
    s = run.snapshot()["series"]
    assert len(s["eos_to_reply_p50_ms"]) == 30 and len(s["cpu_percent"]) <= 5 * 31
    assert len(run.snapshot()["run"]["processes"]) == 5
    # A uniform sample of 0..499: its median is near the stream's.
    assert 150 < s["eos_to_transcript_p50_ms"][-2] < 350
