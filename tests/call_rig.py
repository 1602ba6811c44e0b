"""A call controller against the ARI simulator (real HTTP + WebSocket, helper channels entering
Stasis asynchronously as on a real Asterisk), a real Redis and real rings. What the caller says
arrives as the ASR's Transcript messages. Shared by the call and recovery tests."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from rtcore.dialog.admission import AdmissionOptions
from rtcore.dialog.ari.client import AriClient
from rtcore.dialog.calls import CallController
from rtcore.dialog.leads import Lead, LeadStore, read_leads
from rtcore.dialog.script import DialogScript, load_script
from rtcore.intents import EmbeddedIntentSource
from rtcore.runtime.messages import CallStarted, Message, SpeechStarted, Transcript, UtteranceReady
from rtcore.runtime.redis_server import PrivateRedis
from rtcore.runtime.ring import AudioRings, RingSpec
from rtcore.sim.ari import AriSimulator

APP = "rtcore"
USER, PASSWORD = "bot", "s3cret"
_ids = itertools.count(1)

HAPPY = [("init", "Oui, allez-y, je vous écoute."), ("ask_zip_code", "C'est le 75011."),
         ("ask_owner_house", "Oui, je suis propriétaire."), ("ask_which_heating", "Au gaz."),
         ("ask_be_called_back", "Oui, vous pouvez me rappeler."), ("ask_slot_call_back", "Mardi matin."),
         ("bye_qualified", None)]


async def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.005)
    return value


class Rig:
    def __init__(self, short_dir: Path, barge_in: bool = True, prompt_seconds: Callable[[str], float] = lambda u: 0.02,
                 no_input_s: float = 0.3, slots: int = 4, sim: AriSimulator | None = None,
                 setup_timeout_s: float = 5.0, call_ttl_s: float = 3600.0, turn_join_s: float = 0.0,
                 admission: AdmissionOptions | None = None) -> None:
        self.dir = short_dir
        self.sim = sim or AriSimulator(app_name=APP, user=USER, password=PASSWORD, playback_duration=prompt_seconds)
        self.redis = PrivateRedis(short_dir / "run", short_dir / "data")
        self.rings = AudioRings.create(RingSpec(f"rtcore.test{next(_ids)}x{int(time.time() * 1e6)}.1.rings", slots,
                                                1600))
        script = load_script()
        self.script: DialogScript = dataclasses.replace(
            script, no_input=dataclasses.replace(script.no_input, timeout_s=no_input_s))
        self.published: list[Message] = []
        self.barge_in = barge_in
        self.setup_timeout_s = setup_timeout_s
        self.call_ttl_s = call_ttl_s
        self.turn_join_s = turn_join_s
        self.admission = admission
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        await self.sim.start()
        self.redis.start()
        await self.start_dialog()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_dialog()
        await self.sim.stop()
        self.redis.stop()
        self.rings.close()
        self.rings.unlink()

    # --- the dialog process, which a test may crash and restart -------------------------------
    async def start_dialog(self) -> None:
        self.store = LeadStore(self.redis.url, self.dir / "spool.jsonl", retry_max_s=0.2, call_ttl_s=self.call_ttl_s)
        self.store.start()
        self.ari = AriClient(self.sim.url, USER, PASSWORD, APP, timeout_s=5.0, backoff_max_s=0.2)
        self.controller = CallController(self.ari, self.script, EmbeddedIntentSource(), self.rings, self.store,
                                         self.published.append, "127.0.0.1", 40000, barge_in=self.barge_in,
                                         setup_timeout_s=self.setup_timeout_s, turn_join_s=self.turn_join_s,
                                         admission=self.admission)
        self.task = asyncio.get_running_loop().create_task(self.controller.run())
        await self.sim.wait_for_subscriber()

    async def stop_dialog(self) -> None:
        if self.task is None:
            return
        await self.controller.close()
        self.task.cancel()
        await self.ari.close()
        await self.store.close()
        self.task = None

    async def crash_dialog(self) -> None:
        """As a kill -9 would: the process's tasks stop where they are, its WebSocket goes away,
        nothing is hung up or cleaned. (Its Redis writes of a moment ago have landed: they take
        milliseconds, and what a crash loses of them the restarted process must cope with too.)"""
        assert self.task is not None
        await until(lambda: self.store.backlog == 0)
        for task in [self.task, *self.controller._tasks]:
            task.cancel()
        await asyncio.gather(self.task, *self.controller._tasks, return_exceptions=True)
        await self.ari.close()
        await self.store.close(flush_timeout_s=0.0)
        self.task = None
        await self.sim.wait_until(lambda: self.sim.subscriber_count(APP) == 0)

    # --- the caller's side --------------------------------------------------------------------
    def started(self, call_id: str) -> list[CallStarted]:
        return [m for m in self.published if isinstance(m, CallStarted) and m.call_id == call_id]

    async def call(self, number: str = "0611223344") -> str:
        channel_id = await self.sim.place_call(caller_number=number)
        await until(lambda: self.started(channel_id))
        return channel_id

    def media(self, prompt: str) -> str:
        return f"sound:{self.script.prompts[prompt].audio}"

    async def hears(self, prompt: str, since: int = 0) -> int:
        """Wait until `prompt` has played to its end; returns the event index after it."""
        started = await self.hears_start(prompt, since)
        pid = started["playback"]["id"]
        finished = await self.sim.wait_for(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == pid,
                                           since=since)
        # Just after that event: the next prompt may already have started.
        return next(i for i in range(len(self.sim.events) - 1, -1, -1) if self.sim.events[i] is finished) + 1

    async def hears_start(self, prompt: str, since: int = 0) -> dict[str, Any]:
        media = self.media(prompt)
        return await self.sim.wait_for(
            lambda e: e["type"] == "PlaybackStarted" and e["playback"]["media_uri"] == media, since=since)

    def cut(self, call_id: str, eos_at: float) -> str:
        """The VAD ends an utterance of the caller's at `eos_at` (UtteranceReady); its id."""
        utterance_id = f"{call_id}-{next(_ids)}"
        self.controller.handle_message(UtteranceReady(utterance_id=utterance_id, call_id=call_id, slot=0, generation=0,
                                                      start_sample=0, end_sample=16000, eos_at=eos_at))
        return utterance_id

    def heard(self, call_id: str, utterance_id: str, text: str, eos_at: float) -> None:
        """The ASR's transcript of that utterance."""
        self.controller.handle_message(Transcript(utterance_id=utterance_id, call_id=call_id, text=text, eos_at=eos_at))

    def speaks_again(self, call_id: str, at: float) -> None:
        """The VAD hears the caller start speaking at `at` (SpeechStarted)."""
        self.controller.handle_message(SpeechStarted(call_id=call_id, slot=0, generation=0, start_sample=0, at=at))

    def says(self, call_id: str, text: str) -> None:
        self.controller.handle_message(Transcript(utterance_id=f"{call_id}-{next(_ids)}", call_id=call_id, text=text,
                                                  eos_at=time.time() - 0.3))

    async def dialog(self, call_id: str, turns: list[tuple[str, str | None]], since: int = 0) -> int:
        """(prompt the caller waits for, what it then says) in order; returns the event index after."""
        for prompt, text in turns:
            since = await self.hears(prompt, since)
            if text is not None:
                self.says(call_id, text)
        return since

    def redis_client(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis.url)

    async def lead(self, call_id: str, timeout_s: float = 10.0) -> Lead:
        """The call's lead once it is closed (ended) in Redis."""
        client = self.redis_client()

        def closed() -> Lead | None:
            return next((lead for lead in read_leads(client) if lead.call_id == call_id and lead.ended_at), None)

        try:
            return await until(closed, timeout_s)
        finally:
            client.close()

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Channels and bridges still in the simulated Asterisk."""
        return sorted(self.sim.channels), sorted(self.sim.bridges)
