"""Call lifecycle against the ARI simulator (real HTTP + WebSocket, helper channels entering Stasis
asynchronously as on a real Asterisk), a real Redis, real rings and the embedded intent classifier.
What the caller says arrives as the ASR's Transcript messages."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rtcore.dialog.calls import CallController
from rtcore.dialog.script import load_script
from rtcore.intents import EmbeddedIntentSource
from rtcore.runtime.messages import CallEnded, CallStarted, ListenMode, SpeechStarted, TurnTaken
from rtcore.sim.ari import AriSimulator
from tests.call_rig import APP, HAPPY, PASSWORD, USER, Rig, until
from tests.conftest import SHARED


@pytest.fixture
async def rig(short_dir: Path) -> AsyncIterator[Rig]:
    async with Rig(short_dir, barge_in=True, prompt_seconds=lambda uri: 0.02, no_input_s=0.3) as r:
        yield r


async def test_happy_path_qualifies_the_lead(rig: Rig) -> None:
    call_id = await rig.call("0699887766")
    await rig.dialog(call_id, HAPPY)
    lead = await rig.lead(call_id)
    assert lead.outcome == "qualified" and lead.caller == "0699887766"
    assert (lead.zip_code, lead.owner, lead.heating, lead.callback) == ("75011", True, "gaz", True)
    assert lead.slot is not None and (lead.slot["day"], lead.slot["period"]) == ("mardi", "matin")
    assert [t.intent for t in lead.turns] == ["ok_eligibility", "ok_zipcode", "ok_proprio", "ok_heating",
                                              "ok_callback", "ok_slot"]
    assert all(t.latency_ms["eos_to_reply"] > 0 for t in lead.turns)
    # The topology the seed used, and its clean-up: media channel and bridge deleted by us.
    methods = [(r.method, r.path.split("/")[-1] if "/" in r.path else r.path) for r in rig.sim.requests]
    assert ("POST", "answer") in methods and ("POST", "externalMedia") in methods
    assert ("DELETE", f"{call_id}-media") in methods and ("DELETE", f"{call_id}-bridge") in methods
    assert rig.sim.bridge(f"{call_id}-bridge") is None
    started = next(m for m in rig.published if isinstance(m, CallStarted))
    port = int(started.rtp_source.split(":")[1])
    assert started.rtp_source.startswith("127.0.0.1:") and port > 0
    assert any(isinstance(m, CallEnded) and m.call_id == call_id for m in rig.published)
    assert len([m for m in rig.published if isinstance(m, TurnTaken)]) == 6
    assert rig.rings.in_use() == []  # the slot was freed


async def test_hangup_is_ours_after_the_final_prompt(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, HAPPY)
    request = await rig.sim.wait_for_request(lambda r: r.method == "DELETE" and r.path.endswith(f"/channels/{call_id}"))
    assert request.status == 204


@pytest.mark.parametrize("turns, outcome", [
    ([("init", "Non merci, ça ne m'intéresse pas."), ("init_again", "Non, vraiment pas intéressé."),
      ("bye_refused", None)], "refused"),
    ([("init", "J'ai pas le temps là."), ("init_again", "Je suis occupé je vous dis."), ("bye_busy", None)], "refused"),
    ([("init", "oui"), ("ask_zip_code", "pourquoi vous voulez mon code postal ?"),
      ("ask_zip_code_again", "mais pourquoi vous avez besoin de ça ?"), ("bye_refused", None)], "refused"),
    ([("init", "oui"), ("ask_zip_code", "75011"), ("ask_owner_house", "oui"), ("ask_which_heating", "au fioul"),
      ("ask_be_called_back", "non je ne veux pas être rappelé"), ("ask_be_called_back_again", "non merci"),
      ("bye_refused", None)], "refused"),
    ([("init", "oui"), ("ask_zip_code", "75011"), ("ask_owner_house", "oui"), ("ask_which_heating", "au bois"),
      ("ask_be_called_back", "oui"), ("ask_slot_call_back", "aucun créneau ne me convient"),
      ("ask_slot_call_back_again", "je ne suis jamais disponible"), ("bye_refused", None)], "refused"),
])
async def test_every_counter_allows_once_then_ends_politely(rig: Rig, turns: list[Any], outcome: str) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, turns)
    assert (await rig.lead(call_id)).outcome == outcome


@pytest.mark.parametrize(
    "turns",
    [
        [
            ("init", "oui"),
            ("ask_zip_code", "75011"),
            ("ask_owner_house", "non je suis locataire"),
            ("bye_not_eligible", None),
        ],
        [("init", "oui"), ("ask_zip_code", "j'habite en Belgique"), ("bye_not_eligible", None)],
    ],
)
async def test_not_eligible(rig: Rig, turns: list[Any]) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, turns)
    assert (await rig.lead(call_id)).outcome == "not_eligible"


async def test_faq_mid_flow_answers_and_asks_again(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(
        call_id,
        [
            ("init", "oui"),
            ("ask_zip_code", "75011"),
            ("ask_owner_house", "c'est gratuit votre truc ?"),
            ("faq3", None),
            ("ask_owner_house_again", "oui je suis propriétaire"),
            ("ask_which_heating", "je suis au gaz"),
        ],
    )
    await rig.hears("ask_be_called_back")
    lead_turns = rig.controller.calls[call_id].lead.turns  # type: ignore[union-attr]
    assert [t.intent for t in lead_turns][2:4] == ["faq3", "ok_proprio"]


async def test_silence_reprompts_then_ends(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, [("init", None), ("init_again", None), ("init_again", None), ("bye_no_answer", None)])
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned" and [t.source for t in lead.turns] == ["silence"] * 3


async def test_caller_hanging_up_mid_call_is_abandoned_and_cleaned_up(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.hears("init")
    await rig.sim.hangup(call_id)
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned" and lead.ended_at >= lead.started_at
    assert rig.sim.channel(f"{call_id}-media") is None and rig.sim.bridge(f"{call_id}-bridge") is None


async def test_barge_in_stops_the_prompt(short_dir: Path) -> None:
    async with Rig(
        short_dir, barge_in=True, prompt_seconds=lambda uri: 3600.0 if "init" in uri else 0.02, no_input_s=5.0
    ) as rig:
        call_id = await rig.call()
        started = await rig.sim.wait_for(lambda e: e["type"] == "PlaybackStarted")
        lease = rig.controller.calls[call_id].lease
        assert lease is not None
        rig.controller.handle_message(
            SpeechStarted(
                call_id=call_id, slot=lease.slot, generation=lease.generation, start_sample=16000, at=time.time()
            )
        )
        pid = started["playback"]["id"]
        stop = await rig.sim.wait_for_request(lambda r: r.method == "DELETE" and r.path.endswith(f"/playbacks/{pid}"))
        assert stop.status == 204
        await rig.sim.wait_for(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == pid)
        rig.says(call_id, "oui allez-y")
        await rig.hears("ask_zip_code")


async def test_ignore_policy_tells_the_vad_to_ignore_the_caller_while_the_bot_speaks(short_dir: Path) -> None:
    async with Rig(short_dir, barge_in=False, prompt_seconds=lambda uri: 0.05, no_input_s=5.0) as rig:
        call_id = await rig.call()
        since = await rig.hears("init")
        rig.says(call_id, "oui")
        await rig.hears("ask_zip_code", since)

        def modes() -> list[str]:
            return [m.mode for m in rig.published if isinstance(m, ListenMode) and m.call_id == call_id]

        # The question was asked with the caller ignored, and the caller is listened to after it.
        await until(lambda: modes()[-2:] == ["ignore", "listen"])
        speech = SpeechStarted(call_id=call_id, slot=0, generation=0, start_sample=0, at=time.time())
        rig.controller.handle_message(speech)  # no barge-in with this policy: nothing is stopped
        assert not any(r.method == "DELETE" and "/playbacks/" in r.path for r in rig.sim.requests)


async def test_events_websocket_dropped_mid_call_reconnects_and_the_call_goes_on(rig: Rig) -> None:
    call_id = await rig.call()
    since = await rig.hears("init")
    await rig.sim.drop_event_sockets()
    await rig.sim.wait_for_subscriber()  # the client came back by itself
    rig.says(call_id, "oui")
    since = await rig.hears("ask_zip_code", since)
    assert rig.ari.reconnects == 1
    rig.says(call_id, "75011")
    await rig.hears("ask_owner_house", since)


async def test_call_that_ended_while_disconnected_is_closed_on_reconnect(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.hears("init")
    await rig.sim.drop_event_sockets()
    await rig.sim.hangup(call_id)  # its StasisEnd is lost with the socket
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned"


async def test_redis_stopped_mid_call_loses_no_lead(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, HAPPY[:3])
    rig.redis.stop()
    await rig.dialog(call_id, HAPPY[3:])
    await until(lambda: call_id not in rig.controller.calls)
    await until(lambda: not rig.store.connected)
    rig.redis.start()
    lead = await rig.lead(call_id)
    assert lead.outcome == "qualified" and lead.heating == "gaz" and len(lead.turns) == 6


async def test_an_ari_error_on_one_call_does_not_disturb_another(rig: Rig) -> None:
    first = await rig.call("0600000001")
    second = await rig.call("0600000002")
    await rig.hears("init")
    # The first call's channel vanishes behind the controller's back: its requests now fail.
    await rig.sim.hangup(first)
    rig.says(first, "oui")
    await rig.dialog(second, HAPPY)
    assert (await rig.lead(second)).outcome == "qualified"
    assert (await rig.lead(first)).outcome == "abandoned"


def test_real_trace_events_are_told_apart() -> None:
    """Replaying a real Asterisk trace: only the SIP caller is a call; snoop and external media
    channels, the h-extension re-entry and the noise events are not."""
    trace = SHARED / "ari" / "traces" / "real-call-rtp-externalmedia.events.jsonl"
    if not trace.exists():
        pytest.skip("../shared is absent")
    controller = CallController(
        None,
        load_script(),
        EmbeddedIntentSource(),
        None,
        None,  # type: ignore[arg-type]
        lambda m: None,
        "127.0.0.1",
        40000,
    )
    events = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
    meanings = []
    for event in events:
        meaning = controller.classify_event(event)
        meanings.append((event["type"], meaning))
        if meaning == "new_call":  # what _start_call records first
            controller.calls[event["channel"]["id"]] = None  # type: ignore[assignment]
    starts = [m for t, m in meanings if t == "StasisStart"]
    assert starts == ["new_call", "own_channel", "own_channel", "ignored"]
    assert [m for t, m in meanings if t == "StasisEnd"].count("call_ended") == 2  # the caller, then its h re-entry
    assert {
        m
        for t, m in meanings
        if t
        in (
            "ChannelVarset",
            "Dial",
            "ChannelStateChange",
            "ChannelEnteredBridge",
            "ChannelConnectedLine",
            "BridgeDestroyed",
        )
    } == {"ignored"}
    assert ("ChannelDtmfReceived", "dtmf") in meanings


# --- set-up that cannot race Asterisk's asynchronous Stasis entry ------------------------------
async def test_200_calls_set_up_with_helpers_entering_stasis_late_and_no_setup_error(short_dir: Path) -> None:
    """Every snoop and externalMedia channel enters Stasis 0-150 ms after its REST reply (a real
    Asterisk: either side of the reply), and a request that uses it earlier gets Asterisk's 409/422."""
    sim = AriSimulator(
        app_name=APP,
        user=USER,
        password=PASSWORD,
        playback_duration=lambda uri: 3600.0,
        stasis_delay_s=(0.0, 0.15),
        seed=7,
    )
    async with Rig(short_dir, slots=200, sim=sim, no_input_s=60.0, setup_timeout_s=10.0) as rig:
        callers = await asyncio.gather(*(rig.sim.place_call(caller_number=f"06{i:08d}") for i in range(200)))
        await until(lambda: all(rig.started(c) for c in callers), timeout_s=60.0)
        refused = [r for r in rig.sim.requests if r.status in (409, 422)]
        assert refused == [] and rig.controller.counters["setup_retries"] == 0
        assert rig.controller.failed == 0 and len(rig.controller.calls) == 200
        for caller in callers:  # the topology is complete: the caller's audio reaches the capture
            bridge = rig.sim.bridge(f"{caller}-bridge")
            assert bridge is not None and sorted(bridge.channel_ids) == sorted([f"{caller}-in", f"{caller}-media"])
        assert len({m.slot for m in rig.published if isinstance(m, CallStarted)}) == 200
        await asyncio.gather(*(rig.sim.hangup(c) for c in callers))
        await until(lambda: not rig.controller.calls, timeout_s=60.0)
        assert rig.rings.in_use() == [] and rig.controller.failed == 0
        await until(lambda: rig.leftovers() == ([], []), timeout_s=10.0)


async def test_a_request_refused_as_not_in_stasis_is_retried_not_fatal(short_dir: Path) -> None:
    """Even when Asterisk still refuses a helper after its StasisStart arrived, the call goes on."""
    sim = AriSimulator(app_name=APP, user=USER, password=PASSWORD, playback_duration=lambda uri: 3600.0)
    async with Rig(short_dir, sim=sim, no_input_s=60.0) as rig:
        real_add = rig.ari.add_channels
        refusals = [2]

        async def add_channels_refused_twice(bridge_id: str, channel_ids: list[str]) -> None:
            if refusals[0]:
                refusals[0] -= 1
                from rtcore.dialog.ari.client import AriError

                raise AriError("POST", f"/bridges/{bridge_id}/addChannel", 422, "Channel not in Stasis application")
            await real_add(bridge_id, channel_ids)

        rig.ari.add_channels = add_channels_refused_twice  # type: ignore[method-assign]
        call_id = await rig.call()
        assert rig.controller.counters["setup_retries"] == 2 and rig.controller.failed == 0
        assert rig.sim.bridge(f"{call_id}-bridge") is not None


# --- prompts Asterisk fails to play -----------------------------------------------------------
async def test_a_failed_playback_is_played_again_once_and_the_call_goes_on(rig: Rig) -> None:
    rig.sim.fail_playbacks(lambda uri: uri == rig.media("ask_zip_code"), times=1)
    call_id = await rig.call()
    since = await rig.dialog(call_id, HAPPY[:1])
    failed = await rig.sim.wait_for(
        lambda e: e["type"] == "PlaybackFinished" and e["playback"]["state"] == "failed", since=since
    )
    assert failed["playback"]["media_uri"] == rig.media("ask_zip_code")
    await rig.dialog(call_id, HAPPY[1:], since)
    lead = await rig.lead(call_id)
    assert lead.outcome == "qualified" and lead.zip_code == "75011"
    assert rig.controller.counters["playbacks_failed"] == 1


async def test_a_prompt_failing_twice_ends_the_call_politely_with_outcome_error(rig: Rig) -> None:
    rig.sim.fail_playbacks(lambda uri: uri == rig.media("ask_zip_code"), times=2)
    call_id = await rig.call()
    since = await rig.dialog(call_id, HAPPY[:1])
    await rig.hears("bye_technical_problem", since)
    lead = await rig.lead(call_id)
    assert lead.outcome == "error" and lead.end_reason == "prompt ask_zip_code could not be played"
    assert rig.controller.counters["playbacks_failed_twice"] == 1 and rig.controller.failed == 1
    assert rig.rings.in_use() == []
    await until(lambda: rig.leftovers() == ([], []))


async def test_when_no_prompt_can_play_the_call_is_hung_up_with_outcome_error(rig: Rig) -> None:
    rig.sim.fail_playbacks(lambda uri: True, times=100)
    call_id = await rig.sim.place_call()
    lead = await rig.lead(call_id)
    assert lead.outcome == "error" and lead.end_reason == "prompt init could not be played"
    await until(lambda: rig.leftovers() == ([], []))


async def test_a_caller_hanging_up_mid_prompt_is_no_playback_failure(short_dir: Path) -> None:
    async with Rig(short_dir, prompt_seconds=lambda uri: 3600.0) as rig:
        call_id = await rig.call()
        await rig.hears_start("init")
        await rig.sim.hangup(call_id)
        lead = await rig.lead(call_id)
        failed = [e for e in rig.sim.events if e["type"] == "PlaybackFinished" and e["playback"]["state"] == "failed"]
        assert failed and rig.controller.counters["playbacks_failed"] == 0  # Asterisk reports it failed
        assert lead.outcome == "abandoned" and lead.end_reason == "caller hung up"


# --- what the lead and the call's keys say -----------------------------------------------------
async def test_the_lead_says_who_hung_up_and_names_its_recording(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, HAPPY)
    lead = await rig.lead(call_id)
    assert lead.end_reason == "bot hung up" and lead.recording == f"rtcore-{call_id}.wav"
    await until(lambda: f"rtcore-{call_id}" in rig.sim.stored_recordings)
    other = await rig.call()
    await rig.hears("init")
    await rig.sim.hangup(other)
    assert (await rig.lead(other)).end_reason == "caller hung up"


async def test_a_dtmf_turn_records_every_digit(rig: Rig) -> None:
    call_id = await rig.call()
    since = await rig.hears("init")
    rig.says(call_id, "oui")
    since = await rig.hears("ask_zip_code", since)
    for digit in "69003":
        await rig.sim.send_dtmf(call_id, digit)
    await rig.hears("ask_owner_house", since)
    await rig.sim.hangup(call_id)
    lead = await rig.lead(call_id)
    assert lead.zip_code == "69003"
    turn = lead.turns[-1]
    assert (turn.source, turn.transcript, turn.intent) == ("dtmf", "69003", "ok_zipcode")


async def test_per_call_keys_expire_and_leads_do_not(short_dir: Path) -> None:
    async with Rig(short_dir, call_ttl_s=120.0) as rig:
        call_id = await rig.call()
        await rig.dialog(call_id, HAPPY)
        await rig.lead(call_id)
        client = rig.redis_client()
        try:
            assert 0 < client.ttl(f"rtcore:call:{call_id}") <= 120
            assert 0 < client.ttl(f"rtcore:call:{call_id}:bot_speaking") <= 120
            assert client.ttl(f"rtcore:lead:{call_id}") == -1 and client.ttl("rtcore:leads") == -1
            assert client.sismember("rtcore:calls:active", call_id) == 0
        finally:
            client.close()


# --- turn continuation: a pause inside an answer -----------------------------------------------
async def test_an_answer_cut_at_a_pause_is_one_turn(short_dir: Path) -> None:
    """"Oui." (cut by the VAD at a pause) is understood and answered, then the caller goes on within
    the window: the reply is stopped and undone, and "Oui. Je suis propriétaire." is one turn."""
    async with Rig(short_dir, prompt_seconds=lambda uri: 3600.0 if "heating" in uri else 0.02,
                   no_input_s=60.0, turn_join_s=1.2) as rig:
        call_id = await rig.call()
        since = await rig.dialog(call_id, HAPPY[:2])
        since = await rig.hears("ask_owner_house", since)
        eos = time.time()
        first = rig.cut(call_id, eos)
        rig.heard(call_id, first, "Oui.", eos)
        reply = await rig.hears_start("ask_which_heating", since)  # the bot moved on...
        rig.speaks_again(call_id, eos + 0.5)  # ...but the caller was not done
        stop = await rig.sim.wait_for_request(
            lambda r: r.method == "DELETE" and r.path.endswith(f"/playbacks/{reply['playback']['id']}"))
        assert stop.status == 204
        second = rig.cut(call_id, eos + 2.0)
        rig.heard(call_id, second, "Je suis propriétaire.", eos + 2.0)
        mark = len(rig.sim.events)
        await rig.hears_start("ask_which_heating", mark)  # asked again, after the whole answer
        turns = rig.controller.calls[call_id].lead.turns  # type: ignore[union-attr]
        assert [(t.transcript, t.intent) for t in turns[2:]] == [("Oui. Je suis propriétaire.", "ok_proprio")]
        assert rig.controller.calls[call_id].engine.state.state == "ask_which_heating"  # type: ignore[union-attr]
        assert rig.controller.counters["turns_joined"] == 1


async def test_a_continuation_that_starts_before_the_first_transcript_is_joined(short_dir: Path) -> None:
    async with Rig(short_dir, no_input_s=60.0, turn_join_s=1.2) as rig:
        call_id = await rig.call()
        since = await rig.dialog(call_id, HAPPY[:3])
        await rig.hears("ask_which_heating", since)
        eos = time.time()
        first = rig.cut(call_id, eos)
        rig.speaks_again(call_id, eos + 0.3)  # the caller goes on before "Alors." is transcribed
        rig.heard(call_id, first, "Alors,", eos)
        second = rig.cut(call_id, eos + 1.5)
        rig.heard(call_id, second, "au gaz.", eos + 1.5)
        await until(lambda: len(rig.controller.calls[call_id].lead.turns) == 4)  # type: ignore[union-attr]
        lead = rig.controller.calls[call_id].lead
        assert lead is not None and lead.heating == "gaz"
        assert [(t.transcript, t.intent) for t in lead.turns[3:]] == [("Alors, au gaz.", "ok_heating")]


async def test_speech_after_the_window_is_a_new_turn_and_a_missing_continuation_gives_up(
        short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rtcore.dialog import turns as turns_module

    monkeypatch.setattr(turns_module, "JOIN_WAIT_S", 0.2)
    async with Rig(short_dir, no_input_s=60.0, turn_join_s=1.2) as rig:
        call_id = await rig.call()
        since = await rig.dialog(call_id, HAPPY[:2])
        await rig.hears("ask_owner_house", since)
        eos = time.time()
        first = rig.cut(call_id, eos)
        rig.heard(call_id, first, "Oui, je suis propriétaire.", eos)
        await until(lambda: rig.controller.calls[call_id].engine.state.state == "ask_which_heating")  # type: ignore[union-attr]
        rig.speaks_again(call_id, eos + 3.0)  # long after: nothing to join
        assert rig.controller.counters["turns_joined"] == 0
        eos = time.time()
        second = rig.cut(call_id, eos)
        rig.heard(call_id, second, "Au gaz.", eos)
        await until(lambda: rig.controller.calls[call_id].engine.state.state == "ask_be_called_back")  # type: ignore[union-attr]
        rig.speaks_again(call_id, eos + 0.4)  # within the window, but no utterance follows (a click)
        assert rig.controller.counters["turns_joined"] == 1
        await until(lambda: rig.controller.calls[call_id].engine.state.state == "ask_be_called_back"  # type: ignore[union-attr]
                    and rig.controller.calls[call_id].joiner.joining is None)
        lead = rig.controller.calls[call_id].lead
        assert lead is not None and lead.heating == "gaz"
        assert [t.transcript for t in lead.turns[2:]] == ["Oui, je suis propriétaire.", "Au gaz."]


async def test_the_dialog_tells_the_audio_path_what_it_expects_the_caller_to_say(rig: Rig) -> None:
    from rtcore.runtime.messages import CallContext

    call_id = await rig.call()
    await rig.dialog(call_id, HAPPY[:1])
    await rig.hears("ask_zip_code")

    def contexts() -> list[str]:
        return [m.context for m in rig.published if isinstance(m, CallContext) and m.call_id == call_id]

    states = rig.script.states
    await until(lambda: states["ask_zip_code"].asr_context in contexts())
    assert contexts()[0] == states["init"].asr_context and "75011" in states["ask_zip_code"].asr_context
    rig.controller.reannounce()  # a restarted VAD learns it again
    assert contexts()[-1] == states["ask_zip_code"].asr_context


async def test_a_call_moves_the_dialog_metrics_and_its_live_view(rig: Rig) -> None:
    from prometheus_client import REGISTRY

    from rtcore.runtime.messages import CallView

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    names = [("rtcore_calls_started_total", {}), ("rtcore_calls_ended_total", {"outcome": "qualified"}),
             ("rtcore_call_duration_seconds_count", {}), ("rtcore_eos_to_reply_seconds_count", {}),
             ("rtcore_intents_total", {"intent": "ok_zipcode", "source": "speech"}),
             ("rtcore_intents_total", {"intent": "ok_slot", "source": "speech"})]
    before = [sample(name, **labels) for name, labels in names]
    call_id = await rig.call("0699887766")
    await until(lambda: rig.controller.calls.get(call_id) is not None and rig.controller.calls[call_id].setup_done)
    rig.controller.update_gauges()
    assert sample("rtcore_calls_active") == 1.0
    assert (sample("rtcore_channels_active", type="caller"), sample("rtcore_channels_active", type="snoop"),
            sample("rtcore_channels_active", type="media")) == (1.0, 2.0, 1.0)
    await rig.dialog(call_id, HAPPY)
    await rig.lead(call_id)
    after = [sample(name, **labels) for name, labels in names]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 6, 1, 1]
    assert sample("rtcore_calls_active") == 0.0 and sample("rtcore_channels_active", type="media") == 0.0
    views = [m for m in rig.published if isinstance(m, CallView) and m.call_id == call_id]
    assert views[0].state == "init" and views[0].turns == 0
    assert [v.turns for v in views if v.state != "ended"][-1] == 6
    zip_turn = next(v for v in views if v.last_intent == "ok_zipcode")
    assert zip_turn.last_transcript == "C'est le 75011." and zip_turn.last_turn_ms > 0
    assert views[-1].state == "ended" and views[-1].outcome == "qualified" and views[-1].ended_at > 0
