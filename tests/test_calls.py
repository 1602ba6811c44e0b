"""Call lifecycle against the ARI simulator (real HTTP + WebSocket), a real Redis, real rings and
the embedded intent classifier. What the caller says arrives as the ASR's Transcript messages."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import redis

from rtcore.ari.client import AriClient
from rtcore.ari_sim import AriSimulator
from rtcore.calls import CallController
from rtcore.dialog.script import load_script
from rtcore.intents import EmbeddedIntentSource
from rtcore.leads import Lead, LeadStore, read_leads
from rtcore.messages import CallEnded, CallStarted, ListenMode, Message, SpeechStarted, Transcript, TurnTaken
from rtcore.redis_server import PrivateRedis
from rtcore.ring import AudioRings, RingSpec
from tests.conftest import SHARED

APP = "rtcore"
_ids = itertools.count(1)


async def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
    return value


class Rig:
    def __init__(self, short_dir: Path, barge_in: bool, prompt_seconds: Callable[[str], float],
                 no_input_s: float) -> None:
        self.dir = short_dir
        self.sim = AriSimulator(app_name=APP, user="bot", password="s3cret", playback_duration=prompt_seconds)
        self.redis = PrivateRedis(short_dir / "run", short_dir / "data")
        self.rings = AudioRings.create(RingSpec(f"rtcore.test{next(_ids)}x{int(time.time() * 1e6)}.1.rings", 4, 16000))
        script = load_script()
        self.script = dataclasses.replace(script, no_input=dataclasses.replace(script.no_input, timeout_s=no_input_s))
        self.published: list[Message] = []
        self.barge_in = barge_in

    async def __aenter__(self) -> "Rig":
        await self.sim.start()
        self.redis.start()
        self.store = LeadStore(self.redis.url, self.dir / "spool.jsonl", retry_max_s=0.2)
        self.store.start()
        self.ari = AriClient(self.sim.url, "bot", "s3cret", APP, timeout_s=5.0, backoff_max_s=0.2)
        self.controller = CallController(self.ari, self.script, EmbeddedIntentSource(), self.rings, self.store,
                                         self.published.append, "127.0.0.1", 40000, barge_in=self.barge_in)
        self.task = asyncio.get_running_loop().create_task(self.controller.run())
        await self.sim.wait_for_subscriber()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.controller.close()
        self.task.cancel()
        await self.ari.close()
        await self.store.close()
        await self.sim.stop()
        self.redis.stop()
        self.rings.close()
        self.rings.unlink()

    # --- the caller's side --------------------------------------------------------------------
    async def call(self, number: str = "0611223344") -> str:
        channel_id = await self.sim.place_call(caller_number=number)
        await until(lambda: any(isinstance(m, CallStarted) and m.call_id == channel_id for m in self.published))
        return channel_id

    async def hears(self, prompt: str, since: int = 0) -> int:
        """Wait until `prompt` has played to its end; returns the event index after it."""
        media = f"sound:{self.script.prompts[prompt].audio}"
        started = await self.sim.wait_for(lambda e: e["type"] == "PlaybackStarted" and e["playback"]["media_uri"] == media,
                                          since=since)
        pid = started["playback"]["id"]
        finished = await self.sim.wait_for(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == pid,
                                           since=since)
        # Just after that event: the next prompt may already have started.
        return next(i for i in range(len(self.sim.events) - 1, -1, -1) if self.sim.events[i] is finished) + 1

    def says(self, call_id: str, text: str) -> None:
        self.controller.handle_message(Transcript(utterance_id=f"{call_id}-{next(_ids)}", call_id=call_id, text=text,
                                                  eos_at=time.time() - 0.3))

    async def dialog(self, call_id: str, turns: list[tuple[str, str | None]]) -> None:
        """(prompt the caller waits for, what it then says) in order."""
        since = 0
        for prompt, text in turns:
            since = await self.hears(prompt, since)
            if text is not None:
                self.says(call_id, text)

    async def lead(self, call_id: str) -> Lead:
        await until(lambda: call_id not in self.controller.calls)
        await until(lambda: self.store.backlog == 0 and self.store.connected)
        client = redis.Redis.from_url(self.redis.url)
        try:
            return next(lead for lead in read_leads(client) if lead.call_id == call_id)
        finally:
            client.close()


@pytest.fixture
async def rig(short_dir: Path) -> AsyncIterator[Rig]:
    async with Rig(short_dir, barge_in=True, prompt_seconds=lambda uri: 0.02, no_input_s=0.3) as r:
        yield r


HAPPY = [("init", "Oui, allez-y, je vous écoute."), ("ask_zip_code", "C'est le 75011."),
         ("ask_owner_house", "Oui, je suis propriétaire."), ("ask_which_heating", "Au gaz."),
         ("ask_be_called_back", "Oui, vous pouvez me rappeler."), ("ask_slot_call_back", "Mardi matin."),
         ("bye_qualified", None)]


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


@pytest.mark.parametrize("turns", [
    [("init", "oui"), ("ask_zip_code", "75011"), ("ask_owner_house", "non je suis locataire"), ("bye_not_eligible", None)],
    [("init", "oui"), ("ask_zip_code", "j'habite en Belgique"), ("bye_not_eligible", None)],
])
async def test_not_eligible(rig: Rig, turns: list[Any]) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, turns)
    assert (await rig.lead(call_id)).outcome == "not_eligible"


async def test_faq_mid_flow_answers_and_asks_again(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, [("init", "oui"), ("ask_zip_code", "75011"),
                               ("ask_owner_house", "c'est gratuit votre truc ?"), ("faq3", None),
                               ("ask_owner_house_again", "oui je suis propriétaire"),
                               ("ask_which_heating", "je suis au gaz")])
    await rig.hears("ask_be_called_back")
    lead_turns = rig.controller.calls[call_id].lead.turns  # type: ignore[union-attr]
    assert [t.intent for t in lead_turns][2:4] == ["faq3", "ok_proprio"]


async def test_silence_reprompts_then_ends(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.dialog(call_id, [("init", None), ("init_again", None), ("init_again", None), ("bye_no_answer", None)])
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned" and [t.source for t in lead.turns] == ["silence"] * 3


async def test_dtmf_zip_code(rig: Rig) -> None:
    call_id = await rig.call()
    since = await rig.hears("init")
    rig.says(call_id, "oui")
    since = await rig.hears("ask_zip_code", since)
    for digit in "69003":
        await rig.sim.send_dtmf(call_id, digit)
    await rig.hears("ask_owner_house", since)
    assert rig.controller.calls[call_id].lead.zip_code == "69003"  # type: ignore[union-attr]


async def test_caller_hanging_up_mid_call_is_abandoned_and_cleaned_up(rig: Rig) -> None:
    call_id = await rig.call()
    await rig.hears("init")
    await rig.sim.hangup(call_id)
    lead = await rig.lead(call_id)
    assert lead.outcome == "abandoned" and lead.ended_at >= lead.started_at
    assert rig.sim.channel(f"{call_id}-media") is None and rig.sim.bridge(f"{call_id}-bridge") is None


async def test_barge_in_stops_the_prompt(short_dir: Path) -> None:
    async with Rig(short_dir, barge_in=True, prompt_seconds=lambda uri: 3600.0 if "init" in uri else 0.02,
                   no_input_s=5.0) as rig:
        call_id = await rig.call()
        started = await rig.sim.wait_for(lambda e: e["type"] == "PlaybackStarted")
        lease = rig.controller.calls[call_id].lease
        assert lease is not None
        rig.controller.handle_message(SpeechStarted(call_id=call_id, slot=lease.slot, generation=lease.generation,
                                                    start_sample=16000, at=time.time()))
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
    controller = CallController(None, load_script(), EmbeddedIntentSource(), None, None,  # type: ignore[arg-type]
                                lambda m: None, "127.0.0.1", 40000)
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
    assert {m for t, m in meanings if t in ("ChannelVarset", "Dial", "ChannelStateChange", "ChannelEnteredBridge",
                                            "ChannelConnectedLine", "BridgeDestroyed")} == {"ignored"}
    assert ("ChannelDtmfReceived", "dtmf") in meanings
