"""Admission control and graceful drain (rtcore.dialog.admission), against the ARI simulator with a
real Redis and real rings, as the call tests run (tests/call_rig.py): who is refused, how (handed
back to the dialplan, or told busy), what their leads say, and what a drain does to the calls in
progress. The ASR's load arrives as the dispatcher's AsrStatus messages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from rtcore.dialog.admission import ASR_STATUS_FRESH_S, Admission, AdmissionOptions
from rtcore.runtime.messages import AsrStatus, CallStarted, Drain
from rtcore.sim.ari import AriSimulator
from rtcore.sim.callers.pbx import CallerMedia, CallerPbx
from rtcore.sim.callers.scenarios import SCENARIOS_BY_NAME
from tests.call_rig import APP, HAPPY, PASSWORD, USER, Rig, until


def asr_status(expected_wait_ms: float) -> AsrStatus:
    return AsrStatus(pid=4242, started_at=1.0, pending=12, in_flight=4, workers=2, capacity=4, throughput=3.0,
                     expected_wait_ms=expected_wait_ms, queue_limit=2000, refused_full=0)


def about(event_type: str, channel_id: str) -> Any:
    return lambda e: e["type"] == event_type and (e.get("channel") or {}).get("id") == channel_id


def requests_on(rig: Rig, channel_id: str) -> list[tuple[str, str]]:
    """(method, what) of every request about that caller's channel: "answer", "play", "continue", "" (DELETE)."""
    prefix = f"/ari/channels/{channel_id}"
    return [(r.method, r.path[len(prefix):].lstrip("/")) for r in rig.sim.requests
            if r.path == prefix or r.path.startswith(prefix + "/")]


async def handed_back(rig: Rig, channel_id: str) -> None:
    """The caller was handed back to the dialplan (204), left our application, and the dialplan hung up."""
    request = await rig.sim.wait_for_request(
        lambda r: r.method == "POST" and r.path == f"/ari/channels/{channel_id}/continue")
    assert request.status == 204
    await rig.sim.wait_for(about("StasisEnd", channel_id))
    await rig.sim.wait_until(lambda: rig.sim.channel(channel_id) is None)


@pytest.fixture
async def rig(short_dir: Path) -> AsyncIterator[Rig]:
    async with Rig(short_dir, no_input_s=30.0) as r:
        yield r


async def test_a_caller_beyond_max_calls_is_handed_back_to_the_dialplan_unanswered(short_dir: Path) -> None:
    from prometheus_client import REGISTRY

    def refused_for_slots() -> float:
        return REGISTRY.get_sample_value("rtcore_calls_refused_total", {"reason": "slots"}) or 0.0

    def rejected() -> float:
        return REGISTRY.get_sample_value("rtcore_calls_ended_total", {"outcome": "rejected"}) or 0.0

    async with Rig(short_dir, slots=1, no_input_s=30.0) as rig:
        before = (refused_for_slots(), rejected())
        taken = await rig.call("0611111111")
        extra = await rig.sim.place_call(caller_number="0655443322")
        await handed_back(rig, extra)
        assert (refused_for_slots() - before[0], rejected() - before[1]) == (1.0, 1.0)
        lead = await rig.lead(extra)
        assert (lead.outcome, lead.end_reason, lead.caller, lead.turns) == ("rejected", "no free call slot",
                                                                            "0655443322", [])
        assert requests_on(rig, extra) == [("POST", "continue")]  # neither answered nor connected
        assert not rig.started(extra) and extra not in rig.controller.calls
        held = rig.controller.calls[taken].lease
        assert rig.rings.in_use() == [held]  # the refused caller took no slot
        metrics = rig.controller.admission.metrics()
        assert (metrics["refused"], metrics["refused_slots"], metrics["refused_asr_wait"]) == (1.0, 1.0, 0.0)
        # The call in progress is untouched by the refusal.
        await rig.dialog(taken, HAPPY)
        assert (await rig.lead(taken)).outcome == "qualified"


async def test_a_new_caller_is_refused_while_the_asr_expects_a_long_wait(rig: Rig) -> None:
    rig.controller.handle_message(asr_status(2300.0))
    refused = await rig.sim.place_call()
    await handed_back(rig, refused)
    lead = await rig.lead(refused)
    assert (lead.outcome, lead.end_reason) == ("rejected", "ASR expected wait 2300 ms over 1500 ms")
    rig.controller.handle_message(asr_status(300.0))  # the ASR caught up
    taken = await rig.call()
    assert taken in rig.controller.calls and not rig.started(refused)
    assert rig.controller.admission.metrics()["refused_asr_wait"] == 1.0


def test_only_a_fresh_asr_status_over_the_limit_refuses() -> None:
    now = [100.0]
    admission = Admission(AdmissionOptions(max_asr_wait_ms=1500.0), monotonic=lambda: now[0])
    assert admission.refusal() is None  # no status yet: the ASR's load is unknown, not high
    admission.asr_status(asr_status(1500.0))
    assert admission.refusal() is None  # at the limit is within it
    admission.asr_status(asr_status(1501.0))
    refusal = admission.refusal()
    assert refusal is not None and refusal.reason == "ASR expected wait 1501 ms over 1500 ms"
    now[0] += ASR_STATUS_FRESH_S + 0.1
    assert admission.refusal() is None  # a dispatcher that stopped reporting says nothing of now
    off = Admission(AdmissionOptions(max_asr_wait_ms=0.0))
    off.asr_status(asr_status(1e6))
    assert off.refusal() is None


async def test_busy_mode_answers_says_the_busy_prompt_then_hangs_up(short_dir: Path) -> None:
    async with Rig(short_dir, admission=AdmissionOptions(refuse="busy"), no_input_s=30.0) as rig:
        rig.controller.handle_message(asr_status(5000.0))
        refused = await rig.sim.place_call()
        started = await rig.hears_start("busy_refused")
        assert started["playback"]["target_uri"] == f"channel:{refused}"
        await rig.hears("busy_refused")
        hangup = await rig.sim.wait_for_request(lambda r: r.method == "DELETE" and r.path == f"/ari/channels/{refused}")
        assert hangup.status == 204
        lead = await rig.lead(refused)
        assert (lead.outcome, lead.end_reason) == ("rejected", "ASR expected wait 5000 ms over 1500 ms")
        # Answered, told, hung up once the prompt had played; never connected to our audio path.
        assert requests_on(rig, refused) == [("POST", "answer"), ("POST", "play"), ("DELETE", "")]
        finished = next(i for i, e in enumerate(rig.sim.events)
                        if e["type"] == "PlaybackFinished" and e["playback"]["id"] == started["playback"]["id"])
        hung_up = next(i for i, e in enumerate(rig.sim.events) if about("ChannelHangupRequest", refused)(e))
        assert finished < hung_up
        assert not any(isinstance(m, CallStarted) for m in rig.published) and rig.rings.in_use() == []
        assert not rig.controller.admission.busy_playbacks


async def test_a_drain_lets_calls_finish_refuses_new_callers_and_ends_the_rest_politely(short_dir: Path) -> None:
    # The caller cut short at the drain's timeout is hearing an endless FAQ answer: it must be stopped.
    async with Rig(short_dir, prompt_seconds=lambda uri: 3600.0 if uri.endswith("/faq3") else 0.02,
                   no_input_s=30.0) as rig:
        finishing = await rig.call("0611111111")
        since = await rig.dialog(finishing, HAPPY[:5])
        await rig.hears("ask_slot_call_back", since)  # one answer from its end
        since = len(rig.sim.events)
        cut = await rig.call("0622222222")
        await rig.hears("init", since)
        rig.says(cut, "c'est gratuit votre truc ?")
        faq = await rig.hears_start("faq3", since)

        requested_at = time.time()
        rig.controller.handle_message(Drain(timeout_s=4.0, requested_at=requested_at))
        rig.controller.handle_message(Drain(timeout_s=60.0, requested_at=requested_at + 5))  # a repeat: a no-op
        admission = rig.controller.admission
        assert admission.drain_deadline == requested_at + 4.0
        assert (admission.metrics()["draining"], admission.metrics()["drain_calls_at_start"]) == (1.0, 2.0)

        rig.says(finishing, "Mardi matin.")  # the call in progress finishes by itself
        newcomer = await rig.sim.place_call(caller_number="0633333333")
        await handed_back(rig, newcomer)
        assert (await rig.lead(newcomer)).end_reason == "draining"
        finished = await rig.lead(finishing)
        assert (finished.outcome, finished.end_reason) == ("qualified", "bot hung up")
        assert finished.ended_at < admission.drain_deadline

        # At the deadline: the FAQ answer (and the question queued behind it) stopped, the
        # goodbye said, then the hang-up.
        stop = await rig.sim.wait_for_request(
            lambda r: r.method == "DELETE" and r.path == f"/ari/playbacks/{faq['playback']['id']}")
        assert stop.status == 204
        bye = await rig.hears_start("bye_drain", since)
        assert bye["playback"]["target_uri"] == f"channel:{cut}"
        assert time.time() >= admission.drain_deadline
        await rig.hears("bye_drain", since)
        hangup = await rig.sim.wait_for_request(lambda r: r.method == "DELETE" and r.path == f"/ari/channels/{cut}")
        assert hangup.status == 204
        lead = await rig.lead(cut)
        assert (lead.outcome, lead.end_reason) == ("abandoned", "drain timeout")
        assert [t.intent for t in lead.turns] == ["faq3"]
        assert not any(e["type"] == "PlaybackStarted" and e["playback"]["media_uri"] == rig.media("init_again")
                       for e in rig.sim.events[since:])

        assert rig.controller.calls == {}
        await rig.sim.wait_until(lambda: rig.leftovers() == ([], []))
        assert rig.rings.in_use() == []
        metrics = admission.metrics()
        assert {k: metrics[k] for k in ("drain_finished", "drain_ended", "refused_draining", "refused")} == {
            "drain_finished": 1.0, "drain_ended": 1.0, "refused_draining": 1.0, "refused": 1.0}


@pytest.mark.parametrize("refuse", ["continue", "busy"])
async def test_a_simulated_caller_sees_its_call_was_not_taken(short_dir: Path,
                                                             refuse: Literal["continue", "busy"]) -> None:
    media = CallerMedia(None, prompt_seconds=lambda uri: 0.02)
    sim = AriSimulator(app_name=APP, user=USER, password=PASSWORD, hooks=media)
    ended: list[dict[str, Any]] = []
    async with Rig(short_dir, sim=sim, admission=AdmissionOptions(refuse=refuse)) as rig:
        callers = CallerPbx(sim, media, {}, [], on_call_end=ended.append)
        rig.controller.handle_message(Drain(timeout_s=60.0, requested_at=time.time()))
        call = await callers.place_call(SCENARIOS_BY_NAME["happy"])
        await until(lambda: callers.reap() or not callers.calls)
        await callers.close()
        assert (await rig.lead(call.channel_id)).outcome == "rejected"
    assert (callers.placed, callers.finished, callers.refused) == (1, 1, 1)
    assert call.told_busy == (refuse == "busy")
    assert ended[0]["call_id"] == call.channel_id and ended[0]["refused"] is True
