"""The ARI simulator over real HTTP and WebSocket, against what a real Asterisk 22.10.1 answered.

The trace replays (../shared/ari/traces) send each recorded request, with the recorded credentials, to
the simulator — ids are translated as the simulator's replies reveal them — and trigger what the far
end did in the recording (the call arriving, DTMF, the caller hanging up, a media item reaching its
end) at the same point of the event stream. They then compare every status, reason, error message,
reply shape and `Allow`, and the sequence of event types (with each event's fields). Nothing sleeps:
every wait is on an event or a request, with a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtcore.sim.ari import AriSimulator, MediaHooks, StasisAppNotRegistered
from rtcore.sim.ari.sounds import find_sound
from rtcore.sim.ari.state import Bridge, Channel, Playback, PlaybackState
from rtcore.sim.ari.swagger import SHARED_API_DOCS, VENDORED_API_DOCS, ApiDocs, vendor_api_docs

TRACES = Path(__file__).resolve().parent.parent.parent / "shared" / "ari" / "traces"
USER, PASSWORD = "asterisk", "s3cret"
APP = "voicebot"
WAIT_S = 5.0
NEVER_ENDS = 3600.0  # media that only ends when a test says so (finish_media) or stops it


def basic(user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def require_traces() -> None:
    if not TRACES.is_dir():
        pytest.skip(f"{TRACES} is absent (../shared not present): trace replays need the recorded traces")


def about(event_type: str, channel_id: str) -> Callable[[dict[str, Any]], bool]:
    """Matches an event of `event_type` about channel `channel_id`."""
    return lambda event: event["type"] == event_type and event.get("channel", {}).get("id") == channel_id


def playback_event(event_type: str, playback_id: str) -> Callable[[dict[str, Any]], bool]:
    """Matches an event of `event_type` about playback `playback_id`."""
    return lambda event: event["type"] == event_type and event.get("playback", {}).get("id") == playback_id


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")


class EventReader:
    """Collects what one events WebSocket receives, and lets a test wait for a count or a match."""

    def __init__(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        self.websocket = websocket
        self.events: list[dict[str, Any]] = []
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.websocket:
            if message.type is aiohttp.WSMsgType.TEXT:
                self.events.append(json.loads(message.data))
                self._arrived.set()
        self.closed.set()
        self._arrived.set()

    async def _until(self, check: Callable[[], Any]) -> Any:
        async def loop() -> Any:
            while not (result := check()):
                if self.closed.is_set():
                    raise AssertionError(f"socket closed; received {[e['type'] for e in self.events]}")
                self._arrived.clear()
                await self._arrived.wait()
            return result

        return await asyncio.wait_for(loop(), WAIT_S)

    async def count(self, n: int) -> None:
        try:
            await self._until(lambda: len(self.events) >= n)
        except TimeoutError:
            raise AssertionError(f"expected {n} events, got {[e['type'] for e in self.events]}") from None

    async def match(self, predicate: Callable[[dict[str, Any]], bool], since: int = 0) -> dict[str, Any]:
        return await self._until(lambda: next((e for e in self.events[since:] if predicate(e)), None))

    async def close(self) -> None:
        await self.websocket.close()
        self._task.cancel()


@pytest.fixture
async def sim() -> AsyncIterator[AriSimulator]:
    simulator = AriSimulator(APP, USER, PASSWORD, playback_duration=lambda media_uri: NEVER_ENDS)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=basic()) as session:
        yield session


async def connect(http: aiohttp.ClientSession, sim: AriSimulator, app: str = APP, **kwargs: Any) -> EventReader:
    websocket = await http.ws_connect(sim.events_url(app), **kwargs)
    return EventReader(websocket)


async def call(http: aiohttp.ClientSession, sim: AriSimulator, method: str, path: str,
               **params: str) -> tuple[int, Any]:
    async with http.request(method, sim.url + path, params=params) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


# --- trace replay ----------------------------------------------------------------------------------
ID_TOKEN = re.compile(r"\d{9,}\.\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
QOS_VARIABLE = re.compile(r"^RTPAUDIOQOS")


def shape(value: Any) -> Any:
    """A JSON value's structure: dict keys (recursively), list lengths; leaf values ignored."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return None


@dataclass
class TraceReplay:
    sim: AriSimulator
    http: aiohttp.ClientSession
    reader: EventReader
    ids: dict[str, str] = field(default_factory=dict)  # trace id -> simulator id
    hung_up: set[str] = field(default_factory=set)
    mismatches: list[str] = field(default_factory=list)

    def translate(self, text: str) -> str:
        return ID_TOKEN.sub(lambda m: self.ids.get(m.group(0), m.group(0)), text)

    async def run(self, name: str) -> list[dict[str, Any]]:
        requests = read_jsonl(TRACES / f"{name}.rest.jsonl")
        events = [e for e in read_jsonl(TRACES / f"{name}.events.jsonl") if e["application"] == APP]
        steps = [(parse_time(r["t_req"]), 0, n, "request") for n, r in enumerate(requests)]
        steps += [(parse_time(e["timestamp"]), 1, n, "event") for n, e in enumerate(events)]
        event_times = [parse_time(e["timestamp"]) for e in events]
        # A request goes first on a tie: an event in the same millisecond is its consequence.
        for moment, _, n, kind in sorted(steps):
            if kind == "event":
                await self.reader.count(n)
                await self.drive(events[n])
            else:
                await self.reader.count(sum(1 for t in event_times if t < moment))
                await self.request(requests[n])
        await self.reader.count(len(events))
        return events

    async def drive(self, event: dict[str, Any]) -> None:
        """Does what the far end did in the recording; events the PBX produces itself need nothing."""
        channel = event.get("channel", {})
        caller = channel.get("name", "").startswith("PJSIP/")
        if event["type"] == "StasisStart" and caller and channel["id"] not in self.ids:
            self.ids[channel["id"]] = await self.sim.place_call(
                channel["caller"]["number"], channel["caller"]["name"], channel["dialplan"]["exten"], event["args"])
        elif event["type"] == "ChannelDtmfReceived":
            await self.sim.send_dtmf(self.ids[channel["id"]], event["digit"], event["duration_ms"])
        elif caller and channel["id"] not in self.hung_up and (
            (event["type"] == "ChannelVarset" and QOS_VARIABLE.match(event["variable"]))
            or (event["type"] == "ChannelHangupRequest" and "soft" not in event)
        ):
            self.hung_up.add(channel["id"])
            await self.sim.hangup(self.ids[channel["id"]])
        elif event["type"] == "PlaybackContinuing" or (
            event["type"] == "PlaybackFinished" and event["playback"]["state"] == "done"
        ):
            playback = self.sim.playback(self.translate(event["playback"]["id"]))
            if playback is not None and playback.state is PlaybackState.PLAYING:
                await self.sim.finish_media(playback.id)

    async def request(self, record: dict[str, Any]) -> None:
        path = self.translate(record["path"].removeprefix("/ari"))
        params = {name: self.translate(value) for name, value in record["query"].items()}
        headers = {"ok": basic(), "wrong": basic(USER, "wrong")}.get(record["auth"], {})
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.request(record["method"], self.sim.url + path, params=params) as response,
        ):
            text = await response.text()
            body = json.loads(text) if text else None
            label = f"{record['label']} {record['method']} {path}"
            self.compare(label, "status", record["status"], response.status)
            self.compare(label, "reason", record["reason"], response.reason)
            for header in ("Allow", "WWW-Authenticate"):
                if header in record.get("headers", {}):
                    self.compare(label, header, record["headers"][header], response.headers.get(header))
        expected = record["body"]
        if isinstance(expected, dict) and set(expected) == {"message"}:
            self.compare(label, "message", {"message": self.translate(expected["message"])}, body)
        else:
            self.compare(label, "shape", shape(expected), shape(body))
        if isinstance(expected, dict) and isinstance(body, dict) and "id" in expected and "id" in body:
            self.ids.setdefault(expected["id"], body["id"])

    def compare(self, label: str, what: str, expected: Any, actual: Any) -> None:
        if expected != actual:
            self.mismatches.append(f"{label}: {what} {actual!r} != recorded {expected!r}")


async def replay(sim: AriSimulator, http: aiohttp.ClientSession, name: str) -> None:
    require_traces()
    reader = await connect(http, sim)
    replayer = TraceReplay(sim, http, reader)
    recorded = await replayer.run(name)
    assert replayer.mismatches == []
    # Same event types in the same order, each with the same fields (ids, times and values aside).
    assert [(e["type"], sorted(e)) for e in reader.events] == [(e["type"], sorted(e)) for e in recorded]
    assert [shape(e.get("channel")) for e in reader.events] == [shape(e.get("channel")) for e in recorded]
    await reader.close()


async def test_seed_topology_call_replays_like_asterisk(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    await replay(sim, http, "seed-topology-call")


async def test_error_responses_replay_like_asterisk(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    await replay(sim, http, "error-responses")


async def test_barge_in_trace_replays_like_asterisk(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    await replay(sim, http, "barge-in")


async def test_two_simultaneous_calls_replay_like_asterisk(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    await replay(sim, http, "two-simultaneous-calls")


# --- authentication --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "api_key", "status"),
    [
        ({}, None, 401),
        (basic(USER, "wrong"), None, 401),
        ({}, f"{USER}:wrong", 401),
        ({"Authorization": "Bearer abc"}, None, 401),
        (basic(), None, 200),
        ({}, f"{USER}:{PASSWORD}", 200),
        (basic(USER, "wrong"), f"{USER}:{PASSWORD}", 401),  # a Basic header wins over api_key
    ],
)
async def test_rest_authentication(sim: AriSimulator, headers: dict[str, str], api_key: str | None,
                                   status: int) -> None:
    params = {"api_key": api_key} if api_key else {}
    async with aiohttp.ClientSession(headers=headers) as session:
        for path in ("/asterisk/info", "/no/such/resource"):
            async with session.get(sim.url + path, params=params) as response:
                if status == 401:
                    assert response.status == 401  # checked before routing: even an unknown path
                    assert response.headers["WWW-Authenticate"] == 'Basic realm="Asterisk REST Interface"'
                    assert await response.json() == {"message": "Authentication required"}
                else:
                    assert response.status == (200 if path == "/asterisk/info" else 404)
    assert all("api_key" not in record.query for record in sim.requests)


async def test_websocket_authentication(sim: AriSimulator) -> None:
    async with aiohttp.ClientSession() as anonymous:
        for params in ({}, {"api_key": f"{USER}:wrong"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await anonymous.ws_connect(sim.events_url(), params=params)
            assert refused.value.status == 401
        assert sim.subscriber_count() == 0
        websocket = await anonymous.ws_connect(sim.events_url(), params={"api_key": f"{USER}:{PASSWORD}"})
        await sim.wait_for_subscriber()
        await websocket.close()
    async with aiohttp.ClientSession(headers=basic()) as session:
        websocket = await session.ws_connect(sim.events_url())
        await sim.wait_for_subscriber()
        await websocket.close()
    assert [r.status for r in sim.requests if r.path == "/ari/events"] == [401, 401, 101, 101]


# --- playback behaviour (barge-in) -----------------------------------------------------------------
async def test_stopping_playing_and_queued_playbacks(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call()
    assert (await call(http, sim, "POST", f"/channels/{caller}/answer"))[0] == 204

    status, first = await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:long", playbackId="p1")
    assert (status, first["state"]) == (201, "playing")  # the queue was idle: it started at once
    status, second = await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:next", playbackId="p2")
    assert (status, second["state"]) == (201, "queued")

    assert (await call(http, sim, "DELETE", "/playbacks/p2"))[0] == 204  # queued: cancelled
    assert (await call(http, sim, "GET", "/playbacks/p2"))[1]["state"] == "done"
    assert (await call(http, sim, "DELETE", "/playbacks/p1"))[0] == 204  # playing: stopped
    finished = await reader.match(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == "p2")
    stopped = [e for e in reader.events if e["type"] == "PlaybackFinished" and e["playback"]["id"] == "p1"]
    assert stopped[0]["playback"]["state"] == "done" and finished["playback"]["state"] == "done"
    assert not any(e["type"] == "PlaybackStarted" and e["playback"]["id"] == "p2" for e in reader.events)
    for playback_id in ("p1", "p2"):
        assert await call(http, sim, "GET", f"/playbacks/{playback_id}") == (404, {"message": "Playback not found"})
        assert (await call(http, sim, "DELETE", f"/playbacks/{playback_id}"))[0] == 404
    await reader.close()


async def test_media_list_missing_sound_and_unknown_scheme(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call()
    await call(http, sim, "POST", f"/channels/{caller}/answer")
    since = len(reader.events)
    status, multi = await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:a,sound:b",
                               playbackId="multi")
    assert status == 201 and multi["next_media_uri"] == "sound:b"
    await sim.finish_media("multi")
    await sim.finish_media("multi")
    await reader.match(lambda e: e["type"] == "PlaybackFinished", since)
    played = [(e["type"], e["playback"]["media_uri"], e["playback"]["state"])
              for e in reader.events[since:] if e.get("playback", {}).get("id") == "multi"]
    assert played == [
        ("PlaybackStarted", "sound:a", "playing"),
        ("PlaybackContinuing", "sound:a", "continuing"),
        ("PlaybackStarted", "sound:b", "playing"),
        ("PlaybackFinished", "sound:b", "done"),
    ]

    await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:no-such-sound", playbackId="missing")
    failed = await reader.match(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == "missing")
    assert failed["playback"]["state"] == "failed"

    # An unknown scheme starts and never finishes, but does not block what is queued behind it.
    since = len(reader.events)
    await call(http, sim, "POST", f"/channels/{caller}/play", media="foo:bar", playbackId="odd")
    await call(http, sim, "POST", f"/channels/{caller}/play", media="digits:42", playbackId="after")
    await reader.match(lambda e: e["type"] == "PlaybackStarted" and e["playback"]["id"] == "after", since)
    assert [e["type"] for e in reader.events[since:] if e["playback"]["id"] == "odd"] == ["PlaybackStarted"]
    assert await call(http, sim, "GET", "/playbacks/odd") == (404, {"message": "Playback not found"})
    assert await call(http, sim, "DELETE", "/playbacks/after") == (500, {"message": "Could not stop playback"})
    assert await call(http, sim, "POST", f"/channels/{caller}/play") == (
        500, {"message": "Failed to queue media for playback"})

    # The caller hanging up fails the playing playback before StasisEnd.
    since = len(reader.events)
    await sim.hangup(caller)
    await reader.match(lambda e: e["type"] == "StasisEnd", since)
    ending = [e["type"] for e in reader.events[since:]]
    assert ending[-3:] == ["ChannelHangupRequest", "PlaybackFinished", "StasisEnd"]
    assert reader.events[-2]["playback"]["state"] == "failed"
    await reader.close()


async def test_playback_durations_end_media_by_themselves(http: aiohttp.ClientSession) -> None:
    async with AriSimulator(APP, USER, PASSWORD, playback_duration=lambda uri: 0.01) as short:
        reader = await connect(http, short)
        caller = await short.place_call()
        await call(http, short, "POST", f"/channels/{caller}/play", media="sound:a,sound:b", playbackId="p")
        done = await short.wait_for(lambda e: e["type"] == "PlaybackFinished", timeout=WAIT_S)
        assert done["playback"]["state"] == "done"
        await reader.close()


# --- sounds: files as Asterisk finds them, GET /sounds, failures on demand ----------------------------
async def test_failing_playbacks_on_demand(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call()
    sim.fail_playbacks(lambda uri: uri == "sound:broken", times=2)
    for n in range(2):
        await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:broken", playbackId=f"f{n}")
        failed = await reader.match(playback_event("PlaybackFinished", f"f{n}"))
        assert failed["playback"]["state"] == "failed"
        assert [e["type"] for e in reader.events if e.get("playback", {}).get("id") == f"f{n}"] == [
            "PlaybackStarted", "PlaybackFinished"]
    # Used up: it plays. A failed item that is not the last lets the list go on, as Asterisk does.
    sim.fail_playbacks(lambda uri: uri == "sound:first")
    await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:first,sound:broken", playbackId="list")
    await reader.match(lambda e: e["type"] == "PlaybackStarted" and e["playback"]["media_uri"] == "sound:broken")
    await sim.finish_media("list")
    done = await reader.match(lambda e: e["type"] == "PlaybackFinished" and e["playback"]["id"] == "list")
    assert done["playback"]["state"] == "done"
    assert [e["type"] for e in reader.events if e.get("playback", {}).get("id") == "list"] == [
        "PlaybackStarted", "PlaybackContinuing", "PlaybackStarted", "PlaybackFinished"]
    await reader.close()


def write_sounds(root: Path, files: dict[str, bytes | tuple[int, int]]) -> None:
    """Files under a sounds directory: raw bytes, or (samples, rate) for a silent 16-bit mono WAV."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, tuple):
            samples, rate = content
            with wave.open(str(path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(bytes(2 * samples))
        else:
            path.write_bytes(content)


def test_sound_files_are_found_picked_and_opened_as_asterisk_does(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    write_sounds(tmp_path, {
        "fr/greet.ulaw": bytes(800), "greet.ulaw": bytes(1600), "en/greet.alaw": bytes(2400),
        "en/only-en.ulaw": bytes(800),
        "c/p.ulaw": bytes(4000), "c/p.alaw": bytes(4000), "c/p.sln16": bytes(16000),
        "w/narrow.wav": (4000, 8000), "w/wide.wav16": (8000, 16000), "w/bad.wav16": (4000, 8000),
        "w/both.wav": (16000, 16000), "w/both.sln16": bytes(32000),
    })

    def found(name: str, language: str = "en", codec: str = "ulaw") -> tuple[str, float] | None:
        sound = find_sound(tmp_path, name, language, codec)
        return None if sound is None else (sound.path.relative_to(tmp_path).as_posix(), sound.seconds)

    # The channel's language, then without its dialect, then no language, then en.
    assert found("greet", "fr") == found("greet", "fr_CA") == ("fr/greet.ulaw", 0.1)
    assert found("greet", "de") == ("greet.ulaw", 0.2)
    assert found("greet", "en") == ("en/greet.alaw", 0.3)
    assert found("only-en", "de") == ("en/only-en.ulaw", 0.1)
    assert found("nothing") is None
    # The caller's own codec when the file has it, else the cheapest translation.
    assert found("c/p", codec="ulaw") == ("c/p.ulaw", 0.5)
    assert found("c/p", codec="alaw") == ("c/p.alaw", 0.5)
    assert found("c/p", codec="slin16") == found("c/p", codec="g722") == ("c/p.sln16", 0.5)
    assert found("w/narrow") == ("w/narrow.wav", 0.5) and found("w/wide") == ("w/wide.wav16", 0.5)
    caplog.set_level(logging.WARNING, logger="rtcore.sim.ari")
    assert found("w/bad") is None
    assert "format_wav.c: Unexpected frequency mismatch 8000 (expecting 16000)" in caplog.messages
    assert found("w/both") is None  # measured: the 16 kHz .wav beats the .sln16 for µ-law, and fails
    assert "format_wav.c: Unexpected frequency mismatch 16000 (expecting 8000)" in caplog.messages
    assert found("w/both", codec="slin16") == ("w/both.sln16", 1.0)


class MediaSeconds(MediaHooks):
    """Records how long each sound the simulator resolved lasts, and plays it at once."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float | None] = {}

    async def play_media(self, target: Channel | Bridge, playback: Playback, media_uri: str) -> None:
        self.seconds[playback.id] = playback.media_seconds


async def test_playbacks_use_the_channels_language_and_codec(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    write_sounds(tmp_path, {"rtcore/init.ulaw": bytes(4000), "rtcore/init.sln16": bytes(64000),
                            "fr/rtcore/init.ulaw": bytes(2000), "rtcore/long.ulaw": bytes(80000)})
    hooks = MediaSeconds()
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path, hooks=hooks) as sim:
        reader = await connect(http, sim)
        english, french = await sim.place_call(), await sim.place_call(language="fr")
        wideband = await sim.place_call(native_format="slin16")
        assert (await call(http, sim, "GET", f"/channels/{french}"))[1]["language"] == "fr"
        plays = [(english, "en", {}), (french, "fr", {}), (wideband, "wb", {}), (english, "lang", {"lang": "fr"})]
        for channel, playback_id, extra in plays:
            await call(http, sim, "POST", f"/channels/{channel}/play", media="sound:rtcore/init",
                       playbackId=playback_id, **extra)
            await reader.match(playback_event("PlaybackFinished", playback_id))
        assert hooks.seconds == {"en": 0.5, "fr": 0.25, "wb": 2.0, "lang": 0.25}
        await reader.close()
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path) as sim:  # real timing: hang up mid-prompt
        reader = await connect(http, sim)
        caller = await sim.place_call()
        await call(http, sim, "POST", f"/channels/{caller}/play", media="sound:rtcore/long", playbackId="long")
        await reader.match(lambda e: e["type"] == "PlaybackStarted")
        await sim.hangup(caller)
        ended = await reader.match(lambda e: e["type"] == "PlaybackFinished")
        assert ended["playback"]["state"] == "failed"  # FACTS.md: a caller hanging up mid-prompt
        await reader.close()


async def test_get_sounds_answers_like_asterisk(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    write_sounds(tmp_path, {
        "rtcore/init.sln16": b"", "rtcore/init.ulaw": b"",  # `rtcore prompts install`'s layout
        "fr/rtcore/init.sln16": b"", "fr/rtcore/init.wav": b"",  # an older rtcore's suggestion
        "en/hello-world.gsm": b"", "en/digits/1.ulaw": b"", "en/odd.xyz": b"",
        "en/core-sounds-en.txt": b"; Asterisk's descriptions\nhello-world: Hello world.\nmore: two\nlines\n",
        "top.ulaw": b"",  # the top level is not indexed
    })
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path) as sim:
        status, listed = await call(http, sim, "GET", "/sounds")
        init = {"id": "init", "formats": [{"language": "rtcore", "format": "slin16"},
                                          {"language": "rtcore", "format": "ulaw"}]}
        french = {"id": "rtcore/init", "formats": [{"language": "fr", "format": "slin16"},
                                                   {"language": "fr", "format": "slin"}]}
        digits = {"id": "digits/1", "formats": [{"language": "en", "format": "ulaw"}]}
        assert (status, listed) == (200, [
            digits, {"id": "hello-world", "text": "Hello world.", "formats": [{"language": "en", "format": "gsm"}]},
            init, french])
        assert await call(http, sim, "GET", "/sounds", lang="fr") == (200, [french])
        assert await call(http, sim, "GET", "/sounds", format="ulaw") == (200, [
            digits, {"id": "init", "formats": [{"language": "rtcore", "format": "ulaw"}]}])
        assert await call(http, sim, "GET", "/sounds", lang="de") == (
            404, {"message": "No sounds found that matched the query"})
        assert await call(http, sim, "GET", "/sounds/rtcore%2Finit") == (200, french)
        assert await call(http, sim, "GET", "/sounds/init") == (200, init)
        for unknown in ("top", "odd", "more"):
            assert await call(http, sim, "GET", f"/sounds/{unknown}") == (404, {"message": "Sound not found"})
    async with AriSimulator(APP, USER, PASSWORD, sounds_dir=tmp_path / "absent") as sim:
        assert await call(http, sim, "GET", "/sounds") == (500, {"message": "Sounds index not available"})
    async with AriSimulator(APP, USER, PASSWORD, sounds=["rtcore/init", "beep"]) as sim:  # names: as if .sln16
        assert await call(http, sim, "GET", "/sounds") == (200, [
            {"id": "init", "formats": [{"language": "rtcore", "format": "slin16"}]}])


async def test_get_sounds_without_a_sounds_directory(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    assert await call(http, sim, "GET", "/sounds") == (404, {"message": "No sounds found that matched the query"})
    assert await call(http, sim, "GET", "/sounds/beep") == (404, {"message": "Sound not found"})


# --- helper channels, bridges, recordings -----------------------------------------------------------
async def test_external_media_has_a_real_local_port(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    replies = []
    for data in ("em-1", "em-2"):
        status, reply = await call(http, sim, "POST", "/channels/externalMedia", app=APP,
                                   external_host="127.0.0.1:40000", format="slin16", data=data)
        assert status == 200 and reply["state"] == "Down"
        assert reply["name"].startswith("UnicastRTP/127.0.0.1:40000-0x7f")
        replies.append(reply)
        started = await reader.match(about("StasisStart", reply["id"]))
        assert started["args"] == [data] and started["channel"]["state"] == "Up"
    ports = [int(reply["channelvars"]["UNICASTRTP_LOCAL_PORT"]) for reply in replies]
    assert ports[0] != ports[1]
    assert all(reply["channelvars"]["UNICASTRTP_LOCAL_ADDRESS"] == "127.0.0.1" for reply in replies)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(OSError):  # the simulator holds the port
        probe.bind(("127.0.0.1", ports[0]))
    probe.close()
    assert await call(http, sim, "GET", f"/channels/{replies[0]['id']}/variable", variable="UNICASTRTP_LOCAL_PORT") \
        == (200, {"value": str(ports[0])})
    assert "channelvars" not in (await call(http, sim, "GET", f"/channels/{replies[0]['id']}"))[1]
    for reply in replies:
        assert (await call(http, sim, "DELETE", f"/channels/{reply['id']}"))[0] == 204
        destroyed = await reader.match(about("ChannelDestroyed", reply["id"]))
        assert (destroyed["cause"], destroyed["cause_txt"]) == (16, "Normal Clearing")
    await reader.close()


async def test_caller_hangup_keeps_external_media_and_bridge(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call("0611223344", "Alice")
    _, snoop = await call(http, sim, "POST", f"/channels/{caller}/snoop", spy="in", app=APP, appArgs="snoop-in")
    assert snoop["name"] == f"Snoop/{caller}-00000000" and snoop["dialplan"]["app_name"] == ""
    _, media = await call(http, sim, "POST", "/channels/externalMedia", app=APP, external_host="127.0.0.1:40001",
                          format="slin16")
    _, bridge = await call(http, sim, "POST", "/bridges", type="mixing", name="call")
    for helper in (snoop, media):  # as a client must: helpers are usable once in Stasis
        await reader.match(about("StasisStart", helper["id"]))
    assert await call(http, sim, "POST", f"/bridges/{bridge['id']}/addChannel",
                      channel=f"{snoop['id']},{media['id']}") == (204, None)
    assert (await call(http, sim, "GET", f"/bridges/{bridge['id']}"))[1]["channels"] == [snoop["id"], media["id"]]

    await sim.hangup(caller)
    await reader.match(about("StasisEnd", snoop["id"]))
    assert [c["id"] for c in (await call(http, sim, "GET", "/channels"))[1]] == [media["id"]]
    assert (await call(http, sim, "GET", f"/bridges/{bridge['id']}"))[1]["channels"] == [media["id"]]
    assert await call(http, sim, "DELETE", f"/bridges/{bridge['id']}") == (204, None)
    assert await call(http, sim, "DELETE", f"/bridges/{bridge['id']}") == (404, {"message": "Bridge not found"})
    assert (await call(http, sim, "GET", f"/channels/{media['id']}"))[0] == 200  # still up, out of the bridge
    await reader.close()


async def test_helpers_enter_stasis_after_the_reply_and_refuse_requests_before(http: aiohttp.ClientSession) -> None:
    """FACTS.md "Seen with real SIP calls": a helper used before its own StasisStart is refused."""
    refused = {"message": "Channel not in Stasis application"}
    async with AriSimulator(APP, USER, PASSWORD, stasis_delay_s=(0.1, 0.1), seed=1) as late:
        reader = await connect(http, late)
        caller = await late.place_call()
        _, snoop = await call(http, late, "POST", f"/channels/{caller}/snoop", spy="both", app=APP, appArgs="s")
        assert not any(e["type"] == "StasisStart" and e["channel"]["id"] == snoop["id"] for e in late.events)
        assert await call(http, late, "POST", f"/channels/{snoop['id']}/record", name="r", format="wav") == (
            409, refused)
        status, media = await call(http, late, "POST", "/channels/externalMedia", app=APP,
                                   external_host="127.0.0.1:40003", format="slin16", data="em")
        assert (status, media["state"]) == (200, "Down") and "UNICASTRTP_LOCAL_PORT" in media["channelvars"]
        assert not any(e.get("channel", {}).get("id") == media["id"] or e.get("peer", {}).get("id") == media["id"]
                       for e in late.events)  # its Dial ... StasisStart come later
        _, bridge = await call(http, late, "POST", "/bridges", type="mixing")
        for helper in (snoop, media):
            assert await call(http, late, "POST", f"/bridges/{bridge['id']}/addChannel", channel=helper["id"]) == (
                422, refused)
        since = len(reader.events)
        started = await reader.match(about("StasisStart", media["id"]), since)
        assert started["args"] == ["em"] and started["channel"]["state"] == "Up"
        await reader.match(about("StasisStart", snoop["id"]))
        sequence = [e["type"] for e in reader.events[since:]
                    if e.get("channel", {}).get("id") == media["id"] or e.get("peer", {}).get("id") == media["id"]]
        assert sequence == ["Dial", "ChannelStateChange", "Dial", "ChannelVarset", "StasisStart"]
        assert (await call(http, late, "POST", f"/channels/{snoop['id']}/record", name="r", format="wav"))[0] == 201
        assert await call(http, late, "POST", f"/bridges/{bridge['id']}/addChannel", channel=media["id"]) == (
            204, None)
        await reader.close()


async def test_a_helper_gone_before_its_stasis_entry_never_enters(http: aiohttp.ClientSession) -> None:
    async with AriSimulator(APP, USER, PASSWORD, stasis_delay_s=(0.05, 0.05)) as late:
        reader = await connect(http, late)
        caller = await late.place_call()
        _, snoop = await call(http, late, "POST", f"/channels/{caller}/snoop", spy="in", app=APP)
        _, media = await call(http, late, "POST", "/channels/externalMedia", app=APP,
                              external_host="127.0.0.1:40004", format="slin16")
        await late.hangup(caller)  # the snoop's target goes away
        assert await call(http, late, "DELETE", f"/channels/{media['id']}") == (204, None)
        # A helper created after them enters after them (same delay): once it is in, theirs would be too.
        _, marker = await call(http, late, "POST", "/channels/externalMedia", app=APP,
                               external_host="127.0.0.1:40005", format="slin16")
        await reader.match(about("StasisStart", marker["id"]))
        about_dead = [e for e in reader.events if e.get("channel", {}).get("id") in (snoop["id"], media["id"])]
        assert [e["type"] for e in about_dead] == ["ChannelHangupRequest", "ChannelDestroyed"]  # the media's
        assert snoop["id"] not in late.channels and media["id"] not in late.channels
        await reader.close()


async def test_without_a_delay_helpers_enter_stasis_before_the_reply(http: aiohttp.ClientSession) -> None:
    async with AriSimulator(APP, USER, PASSWORD, stasis_delay_s=None) as prompt:
        reader = await connect(http, prompt)
        caller = await prompt.place_call()
        _, snoop = await call(http, prompt, "POST", f"/channels/{caller}/snoop", spy="in", app=APP)
        _, media = await call(http, prompt, "POST", "/channels/externalMedia", app=APP,
                              external_host="127.0.0.1:40006", format="slin16")
        entered = {e["channel"]["id"] for e in prompt.events if e["type"] == "StasisStart"}
        assert {snoop["id"], media["id"]} <= entered
        _, bridge = await call(http, prompt, "POST", "/bridges")
        assert (await call(http, prompt, "POST", f"/bridges/{bridge['id']}/addChannel",
                           channel=f"{snoop['id']},{media['id']}"))[0] == 204
        await reader.close()
    with pytest.raises(ValueError):
        AriSimulator(stasis_delay_s=(0.2, 0.1))


async def test_recordings(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call()
    status, live = await call(http, sim, "POST", f"/channels/{caller}/record", name="r1", format="wav")
    assert (status, live) == (201, {"name": "r1", "format": "wav", "state": "queued",
                                    "target_uri": f"channel:{caller}"})
    await reader.match(lambda e: e["type"] == "RecordingStarted")
    assert (await call(http, sim, "POST", f"/channels/{caller}/record", name="r1", format="wav"))[0] == 409
    _, bridge = await call(http, sim, "POST", "/bridges")
    assert await call(http, sim, "POST", f"/bridges/{bridge['id']}/addChannel", channel=caller) == (
        409, {"message": f"Channel {caller} currently recording"})
    assert (await call(http, sim, "POST", "/recordings/live/r1/stop"))[0] == 204
    finished = await reader.match(lambda e: e["type"] == "RecordingFinished")
    assert finished["recording"]["state"] == "done" and "duration" in finished["recording"]
    assert await call(http, sim, "GET", "/recordings/stored/r1") == (200, {"name": "r1", "format": "wav"})
    assert await call(http, sim, "GET", "/recordings/live/r1") == (404, {"message": "Recording not found"})
    assert (await call(http, sim, "POST", f"/channels/{caller}/record", name="r1", format="wav"))[0] == 409
    assert (await call(http, sim, "POST", f"/channels/{caller}/record", name="r1", format="wav",
                       ifExists="overwrite"))[0] == 201
    assert (await call(http, sim, "DELETE", "/recordings/live/r1"))[0] == 204
    await reader.match(lambda e: e["type"] == "RecordingFinished" and e["recording"]["state"] == "canceled")
    assert await call(http, sim, "GET", "/recordings/stored/r1") == (200, {"name": "r1", "format": "wav"})
    await reader.close()


async def test_unknown_query_parameters_are_ignored_and_recorded(sim: AriSimulator,
                                                                 http: aiohttp.ClientSession) -> None:
    assert (await call(http, sim, "POST", "/bridges", type="mixing", colour="blue"))[0] == 200
    assert sim.unknown_params == [("POST", "/ari/bridges", "colour")]
    assert sim.requests[-1].query == {"type": "mixing", "colour": "blue"}
    # A JSON body supplies parameters too, and a form body is merged into the query.
    async with http.post(sim.url + "/bridges", json={"type": "holding", "name": "hold"}) as response:
        assert (await response.json())["bridge_type"] == "holding"
    async with http.post(sim.url + "/bridges", data={"type": "bogus"}) as response:
        assert response.status == 500


# --- events sockets --------------------------------------------------------------------------------
async def test_events_go_to_the_subscribers_of_their_application(sim: AriSimulator,
                                                                 http: aiohttp.ClientSession) -> None:
    # As on Asterisk, a second socket for an application takes it over: the first one is told so
    # (ApplicationReplaced) and gets nothing more.
    first, second = await connect(http, sim), await connect(http, sim)
    await first.match(lambda e: e["type"] == "ApplicationReplaced")
    other = await connect(http, sim, app="other")
    everything = EventReader(await http.ws_connect(sim.events_url("watcher", subscribe_all=True)))
    await sim.wait_for_subscriber(count=1)
    caller = await sim.place_call(args=["100", "x"])
    for reader in (second, everything):
        started = await reader.match(lambda e: e["type"] == "StasisStart")
        assert started["channel"]["id"] == caller and started["args"] == ["100", "x"]
        assert set(started) >= {"type", "timestamp", "application", "asterisk_id"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", started["timestamp"])
    assert everything.events[0]["application"] == "watcher"
    callee = await sim.place_call(app="other")
    await other.match(about("StasisStart", callee))
    await sim.send_dtmf(caller, "1")  # a later voicebot event: once it is in, so would be a stray "other" one
    await second.match(lambda e: e["type"] == "ChannelDtmfReceived")
    assert [e["channel"]["id"] for e in other.events] == [callee]
    assert all(e["channel"]["id"] == caller for e in second.events)
    assert [e["type"] for e in first.events] == ["ApplicationReplaced"]
    for reader in (first, second, other, everything):
        await reader.close()


async def test_dropped_event_sockets_and_reconnection(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    reader = await connect(http, sim)
    caller = await sim.place_call()
    await reader.match(lambda e: e["type"] == "StasisStart")
    await sim.drop_event_sockets()
    await asyncio.wait_for(reader.closed.wait(), WAIT_S)
    assert sim.subscriber_count() == 0
    await sim.send_dtmf(caller, "5")  # nobody listens: lost, as with Asterisk
    with pytest.raises(StasisAppNotRegistered):
        await sim.place_call()

    again = await connect(http, sim)
    await sim.wait_for_subscriber()
    await sim.send_dtmf(caller, "7", duration_ms=250)
    dtmf = await again.match(lambda e: e["type"] == "ChannelDtmfReceived")
    assert (dtmf["digit"], dtmf["duration_ms"], dtmf["channel"]["id"]) == ("7", 250, caller)
    assert [e["type"] for e in again.events] == ["ChannelDtmfReceived"]
    await again.close()


async def test_replace_apps_sends_application_replaced(http: aiohttp.ClientSession) -> None:
    async with AriSimulator(APP, USER, PASSWORD, replace_apps=True) as strict:
        older = await connect(http, strict)
        await strict.wait_for_subscriber()
        newer = await connect(http, strict)
        await older.match(lambda e: e["type"] == "ApplicationReplaced")
        caller = await strict.place_call()
        await newer.match(about("StasisStart", caller))
        assert [e["type"] for e in older.events] == ["ApplicationReplaced"]
        await older.close()
        await newer.close()


async def test_wait_for_request(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    waiter = asyncio.create_task(sim.wait_for_request(lambda r: r.path.endswith("/asterisk/ping")))
    await call(http, sim, "GET", "/asterisk/ping")
    record = await asyncio.wait_for(waiter, WAIT_S)
    assert (record.method, record.status) == ("GET", 200)
    with pytest.raises(TimeoutError):
        await sim.wait_for(lambda e: e["type"] == "Nothing", timeout=0.01)


# --- hooks and api-docs -----------------------------------------------------------------------------
class RecordingHooks(MediaHooks):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def play_media(self, target: Channel | Bridge, playback: Playback, media_uri: str) -> None:
        self.calls.append(f"play {media_uri}")
        await self.release.wait()

    async def external_media_created(self, channel: Channel) -> None:
        assert channel.media is not None and channel.media.local_socket is not None
        self.calls.append(f"created {channel.media.local_port}")

    async def channel_entered_bridge(self, channel: Channel, bridge: Bridge) -> None:
        self.calls.append(f"entered {channel.kind.value}")

    async def playback_finished(self, target: Channel | Bridge, playback: Playback) -> None:
        self.calls.append(f"finished {playback.id} {playback.state.value}")

    async def external_media_destroyed(self, channel: Channel) -> None:
        self.calls.append("destroyed")


async def test_media_hooks_are_called(http: aiohttp.ClientSession) -> None:
    hooks = RecordingHooks()
    async with AriSimulator(APP, USER, PASSWORD, hooks=hooks) as hooked:
        reader = await connect(http, hooked)
        caller = await hooked.place_call()
        _, media = await call(http, hooked, "POST", "/channels/externalMedia", app=APP,
                              external_host="127.0.0.1:40002", format="ulaw")
        await reader.match(about("StasisStart", media["id"]))
        _, bridge = await call(http, hooked, "POST", "/bridges")
        await call(http, hooked, "POST", f"/bridges/{bridge['id']}/addChannel", channel=f"{caller},{media['id']}")
        await call(http, hooked, "POST", f"/channels/{caller}/play", media="sound:x", playbackId="h")
        await hooked.wait_until(lambda: "play sound:x" in hooks.calls)
        hooks.release.set()
        await reader.match(lambda e: e["type"] == "PlaybackFinished")
        await hooked.wait_until(lambda: "finished h done" in hooks.calls)
        await call(http, hooked, "DELETE", f"/channels/{media['id']}")
        await hooked.wait_until(lambda: "destroyed" in hooks.calls)
        port = media["channelvars"]["UNICASTRTP_LOCAL_PORT"]
        assert hooks.calls[:3] == [f"created {port}", "entered caller", "entered external_media"]
        await reader.close()


def test_vendored_api_docs_are_the_trimmed_shared_ones() -> None:
    if not SHARED_API_DOCS.is_dir():
        pytest.skip(f"{SHARED_API_DOCS} is absent (../shared not present): nothing to compare the copy with")
    vendored = json.loads(VENDORED_API_DOCS.read_text())
    implemented = {f"{op['resource']}.{op['nickname']}" for op in vendored["operations"] if "parameters" in op}
    assert vendor_api_docs(SHARED_API_DOCS, implemented) == vendored
    shared, trimmed = ApiDocs.load(SHARED_API_DOCS), ApiDocs.load(VENDORED_API_DOCS)
    assert [(op.method, op.path) for op in shared.operations] == [(op.method, op.path) for op in trimmed.operations]


async def test_simulator_runs_on_the_vendored_api_docs(http: aiohttp.ClientSession) -> None:
    async with AriSimulator(APP, USER, PASSWORD, api_docs=VENDORED_API_DOCS) as vendored:
        assert vendored.docs.origin == str(VENDORED_API_DOCS)
        async with http.put(vendored.url + "/channels") as response:
            assert (response.status, response.headers["Allow"]) == (405, "OPTIONS,GET,POST")
        async with http.get(vendored.url + "/channels/externalMedia") as response:
            assert (response.status, response.headers["Allow"]) == (405, "OPTIONS,POST")
        assert await call(http, vendored, "GET", "/foo") == (404, {"message": "Resource not found"})
        assert await call(http, vendored, "POST", "/channels/externalMedia", app=APP, format="slin16") == (
            400, {"message": "external_host is required for all but websocket server connections"})
        assert (await call(http, vendored, "POST", "/channels", endpoint="PJSIP/x"))[0] == 501  # originate
        reader = await connect(http, vendored)
        caller = await vendored.place_call()
        assert await call(http, vendored, "POST", f"/channels/{caller}/snoop", spy="bogus", app=APP) == (
            400, {"message": "Invalid direction specified for spy"})
        assert (await call(http, vendored, "POST", f"/channels/{caller}/answer"))[0] == 204
        await reader.close()


async def test_a_history_limit_bounds_what_a_long_run_keeps(http: aiohttp.ClientSession) -> None:
    simulator = AriSimulator(APP, USER, PASSWORD, history_limit=2)
    await simulator.start()
    try:
        reader = await connect(http, simulator)
        for n in range(7):
            assert (await call(http, simulator, "POST", "/bridges", type="mixing", name=f"b{n}"))[0] == 200
        # Between `limit` and twice `limit` are kept; indices stay absolute.
        assert 2 <= len(simulator.requests) <= 4
        assert simulator.requests_trimmed + len(simulator.requests) == 8  # the events socket, then 7 bridges
        assert simulator.requests[-1].query["name"] == "b6"
        found = await simulator.wait_for_request(lambda r: r.query.get("name") == "b6", timeout=1.0, since=0)
        assert found.method == "POST"
        with pytest.raises(TimeoutError):  # before the last request, but trimmed or not: never b0
            await simulator.wait_for_request(lambda r: r.query.get("name") == "b0", timeout=0.1)
        await reader.close()
    finally:
        await simulator.stop()
    hub = simulator.hub
    before = hub.trimmed + len(hub.history)
    for n in range(7):
        hub.emit([APP], "Probe", {"n": n})
    assert 2 <= len(hub.history) <= 4 and hub.trimmed + len(hub.history) == before + 7
    assert (await simulator.wait_for(lambda e: e["type"] == "Probe", timeout=1.0, since=before + 5))["n"] == 5
    assert simulator.event_types(since=hub.trimmed + len(hub.history) - 1) == ["Probe"]


async def test_an_application_whose_websocket_went_away_keeps_its_calls_but_declines_new_ones(
        sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    """Measured on Asterisk 22.10.1: the application is deactivated, its channels stay in Stasis and
    REST still works on them; its events are dropped; a new call is declined (603) until a socket
    comes back, and that socket gets the old channels' new events (nothing is replayed)."""
    reader = await connect(http, sim)
    await sim.wait_for_subscriber()
    caller = await sim.place_call()
    await reader.close()
    await sim.wait_until(lambda: sim.subscriber_count(APP) == 0)
    status, app = await call(http, sim, "GET", f"/applications/{APP}")
    assert status == 200 and app["channel_ids"] == [caller]
    assert (await call(http, sim, "POST", f"/channels/{caller}/answer"))[0] == 204
    with pytest.raises(StasisAppNotRegistered):
        await sim.place_call()
    back = await connect(http, sim)
    await sim.wait_for_subscriber()
    await sim.send_dtmf(caller, "5")
    dtmf = await back.match(lambda e: e["type"] == "ChannelDtmfReceived")
    assert dtmf["channel"]["id"] == caller and not any(e["type"] == "StasisStart" for e in back.events)
    await sim.hangup(caller)
    await back.match(about("StasisEnd", caller))
    await back.close()
    await sim.wait_until(lambda: sim.subscriber_count(APP) == 0)
    assert (await call(http, sim, "GET", f"/applications/{APP}"))[0] == 404
