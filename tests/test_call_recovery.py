"""A dialog process that dies mid-call (as kill -9 leaves things) and starts again: it takes the
calls in progress back, or ends them cleanly; no externalMedia channel or bridge is leaked, every
lead is closed with an outcome, every ring slot is freed. Against the ARI simulator, a real Redis
and real rings; the crash stops the controller's tasks where they are and drops its WebSocket."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp

from rtcore.dialog.recovery import CALLER_LEFT_MEANWHILE
from rtcore.runtime.messages import CallEnded
from rtcore.runtime.ring import SlotOwner
from rtcore.sim.ari import AriSimulator
from tests.call_rig import APP, HAPPY, PASSWORD, USER, Rig, until

AUTH = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}


async def test_a_restarted_dialog_takes_the_call_back_where_it_was(short_dir: Path) -> None:
    # The crash comes while the third question plays.
    async with Rig(short_dir, prompt_seconds=lambda uri: 3600.0 if uri.endswith("/ask_owner_house") else 0.02,
                   no_input_s=5.0) as rig:
        call_id = await rig.call()
        since = await rig.dialog(call_id, HAPPY[:2])
        playing = await rig.hears_start("ask_owner_house", since)
        before = rig.started(call_id)[-1]
        await rig.crash_dialog()
        mark = len(rig.sim.events)
        await rig.start_dialog()
        # What our predecessor left playing is stopped, the call is re-announced on the same ring
        # slot and RTP source (capture and VAD follow it on), and the question is asked again.
        old = playing["playback"]["id"]
        await rig.sim.wait_for_request(lambda r: r.method == "DELETE" and r.path.endswith(f"/playbacks/{old}"))
        await until(lambda: len(rig.started(call_id)) == 2)
        after = rig.started(call_id)[-1]
        assert (after.slot, after.generation, after.rtp_source) == (before.slot, before.generation, before.rtp_source)
        since = await rig.hears("resume", mark)
        await rig.hears_start("ask_owner_house", since)
        rig.says(call_id, "Oui, je suis propriétaire.")
        await rig.dialog(call_id, HAPPY[3:], since)
        lead = await rig.lead(call_id)
        assert lead.outcome == "qualified" and (lead.zip_code, lead.owner, lead.heating) == ("75011", True, "gaz")
        assert [t.source for t in lead.turns].count("resume") == 1
        assert [t.intent for t in lead.turns if t.source == "speech"] == [
            "ok_eligibility", "ok_zipcode", "ok_proprio", "ok_heating", "ok_callback", "ok_slot"]
        assert rig.controller.counters["calls_resumed"] == 1
        assert rig.rings.in_use() == []
        await until(lambda: rig.leftovers() == ([], []))


async def test_a_caller_who_hung_up_while_the_dialog_was_down_is_closed_and_cleaned_up(short_dir: Path) -> None:
    async with Rig(short_dir, no_input_s=5.0) as rig:
        call_id = await rig.call()
        await rig.hears("init")
        await rig.crash_dialog()
        await rig.sim.hangup(call_id)
        # Asterisk keeps the externalMedia channel and the bridge: nobody else will delete them.
        assert rig.sim.channel(f"{call_id}-media") is not None and rig.sim.bridge(f"{call_id}-bridge") is not None
        await rig.start_dialog()
        lead = await rig.lead(call_id)
        assert lead.outcome == "abandoned" and lead.end_reason == CALLER_LEFT_MEANWHILE
        assert any(isinstance(m, CallEnded) and m.call_id == call_id for m in rig.published)
        assert rig.rings.in_use() == []
        await until(lambda: rig.leftovers() == ([], []))
        client = rig.redis_client()
        try:
            assert client.smembers("rtcore:calls:active") == set()
        finally:
            client.close()


async def test_a_call_that_arrived_while_the_dialog_was_down_is_answered(short_dir: Path) -> None:
    async with Rig(short_dir, no_input_s=5.0) as rig:
        await rig.crash_dialog()
        # Another consumer holds the application meanwhile (else the simulator, like Asterisk,
        # declines a Stasis() nobody listens to), so the caller's StasisStart reaches nobody of ours.
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.ws_connect(rig.sim.events_url(APP)):
                await rig.sim.wait_for_subscriber()
                caller = await rig.sim.place_call()
                await rig.start_dialog()
                await until(lambda: rig.started(caller))
                await rig.hears("init")
                await rig.sim.hangup(caller)
        assert (await rig.lead(caller)).outcome == "abandoned"
        assert rig.controller.counters["calls_found"] == 1
        await until(lambda: rig.leftovers() == ([], []))


async def test_slots_and_helpers_no_call_holds_are_released_and_http_slots_kept(short_dir: Path) -> None:
    async with Rig(short_dir) as rig:
        unrecorded = rig.rings.allocate(SlotOwner.CALL)  # the predecessor died before recording it
        http = rig.rings.allocate(SlotOwner.HTTP)  # a transcription in flight: not the dialog's
        async with aiohttp.ClientSession(headers=AUTH) as session:
            orphan = {"type": "mixing", "bridgeId": "17.3-bridge"}
            async with session.post(f"{rig.sim.url}/bridges", params=orphan) as r:
                assert r.status == 200
        await rig.crash_dialog()
        await rig.start_dialog()
        await until(lambda: rig.sim.bridge("17.3-bridge") is None)
        assert rig.rings.in_use() == [http] and unrecorded not in rig.rings.in_use()
        assert rig.controller.counters["slots_freed"] == 1 and rig.controller.counters["orphans_deleted"] == 1


async def test_a_call_whose_set_up_was_cut_short_is_ended_politely(short_dir: Path) -> None:
    # Helper channels take a second to enter Stasis: the crash comes in the middle of the set-up.
    sim = AriSimulator(app_name=APP, user=USER, password=PASSWORD, playback_duration=lambda uri: 0.02,
                       stasis_delay_s=(1.0, 1.0))
    async with Rig(short_dir, sim=sim, no_input_s=5.0) as rig:
        caller = await rig.sim.place_call()
        await rig.sim.wait_for_request(lambda r: r.path.endswith("/externalMedia") and r.status == 200)
        await rig.crash_dialog()
        mark = len(rig.sim.events)
        await rig.start_dialog()
        await rig.hears("bye_technical_problem", mark)
        lead = await rig.lead(caller)
        assert lead.outcome == "error" and lead.end_reason == "could not be taken back after a dialog restart"
        assert rig.rings.in_use() == []
        await until(lambda: rig.leftovers() == ([], []), timeout_s=10.0)
