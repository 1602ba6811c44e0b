"""Malformed input and abuse (rtcore.launch.abuse) against the real thing: the RTP capture on a real
socket with a live call, the dialog against the ARI simulator's events WebSocket with a live call,
the HTTP API on a real port (its limits on slow clients), and the HTTP service under the supervisor
killed with -9 while a request is in flight."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from rtcore.asr.http_api import ConnectionLimits, HttpServer, create_app
from rtcore.dialog.ari.client import malformed_reason
from rtcore.launch.abuse import (
    ABUSE_MARK,
    MALFORMED_KINDS,
    RTP_KINDS,
    abuse_http,
    abuse_http_async,
    ari_frames,
    fuzz_rtp_async,
    inject_ari_events_async,
    slow_loris,
    slow_loris_async,
)
from rtcore.launch.pipeline import http_service
from rtcore.media.capture import CaptureOptions, RtpCapture, bind_rtp_socket
from rtcore.media.rtp import RTP_HEADER
from rtcore.runtime.config import Settings
from rtcore.runtime.ring import AudioRings, RingSpec, SlotOwner
from rtcore.runtime.supervisor import Supervisor
from tests.call_rig import APP, HAPPY, PASSWORD, USER, Rig, until
from tests.conftest import SHARED, free_port, require_shared_audio

N = 320  # samples per 20 ms slin16 packet


async def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """Yield to the loop until `condition()` holds (no fixed sleeps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := condition()):
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)
    return value


# --- RTP -------------------------------------------------------------------------------------------
def live_packet(seq: int) -> bytes:
    samples = np.random.default_rng(seq).integers(-32768, 32768, N, dtype=np.int16)
    return RTP_HEADER.pack(0x80, 118, seq & 0xFFFF, (seq * N) & 0xFFFFFFFF, 0x5EED) + samples.astype(">i2").tobytes()


def live_audio(count: int) -> np.ndarray:
    return np.concatenate([np.random.default_rng(seq).integers(-32768, 32768, N, dtype=np.int16)
                           for seq in range(count)])


@pytest.fixture
def rings() -> Iterator[AudioRings]:
    spec = RingSpec(f"rtcore.abuse{uuid.uuid4().hex[:8]}.{os.getpid()}.rings", n_slots=2, capacity=4000 * N)
    r = AudioRings.create(spec)
    yield r
    r.close()
    r.unlink()


async def test_fuzzed_rtp_is_counted_and_a_live_call_keeps_its_audio_intact(rings: AudioRings) -> None:
    loop = asyncio.get_running_loop()
    sock = bind_rtp_socket("127.0.0.1", 0, 4 << 20)
    host, port = sock.getsockname()
    transport, capture = await loop.create_datagram_endpoint(
        lambda: RtpCapture(rings, CaptureOptions(unknown_grace_s=2.0)), sock=sock)
    live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    live.bind(("127.0.0.1", 0))
    try:
        live_lease, fuzzed_lease = rings.allocate(), rings.allocate()
        capture.add_call("live", live_lease, "{}:{}".format(*live.getsockname()))
        # One fuzzing port is announced as a call, so that the capture parses what it sends.
        fuzzed_port = free_port(socket.SOCK_DGRAM)
        fuzzed_source = f"127.0.0.1:{fuzzed_port}"
        capture.add_call("fuzzed", fuzzed_lease, fuzzed_source)
        fuzzing = asyncio.create_task(fuzz_rtp_async(host, port, 100_000, seed=7, sources=3, strangers=2,
                                               source_ports=[fuzzed_port], rate_pps=25_000))
        sent_live = 0
        while not fuzzing.done() and sent_live < 3900:  # the live call talks all along
            live.sendto(live_packet(sent_live), (host, port))
            sent_live += 1
            await asyncio.sleep(0.001)
        fuzz = await fuzzing
        assert sent_live > 1000, "the live call's packets did not overlap the fuzzing"
        assert fuzz["sent"] == 100_000 and fuzz["send_errors"] == 0
        assert set(fuzz["by_kind"]) == set(RTP_KINDS), fuzz["by_kind"]
        assert fuzz["kernel_drops"] == 0, f"the kernel dropped datagrams: {fuzz}"
        await wait_until(lambda: capture.datagrams == fuzz["sent"] + sent_live, "every datagram read")

        stats = capture.call_stats()["live"]
        assert (stats.received, stats.lost, stats.late, stats.duplicate, stats.stray, stats.invalid) == (
            sent_live, 0, 0, 0, 0, 0)
        np.testing.assert_array_equal(rings.read(live_lease, 0, rings.cursor(live_lease)), live_audio(sent_live))
        # What the announced fuzzing port sent was parsed: invalid, or (rarely, random bytes that
        # happen to be a packet) received as audio; the other ports are unknown sources.
        from_fuzzed = fuzz["by_source"][fuzzed_source]
        fuzzed = capture.call_stats()["fuzzed"]
        assert capture.invalid == fuzzed.invalid and capture.invalid + fuzzed.received == from_fuzzed
        assert capture.invalid > 0.9 * from_fuzzed
        capture.tick(time.monotonic() + 3.0)  # past the grace: the unknown sources' packets are dropped
        values = capture.stats()
        assert values["unknown_source"] == fuzz["sent"] - from_fuzzed and values["early_held"] == 0
        assert values["early_replayed"] == 0

        for seq in range(sent_live, sent_live + 10):  # and the stream goes on
            live.sendto(live_packet(seq), (host, port))
        await wait_until(lambda: rings.cursor(live_lease) == (sent_live + 10) * N, "the live call's next packets")
    finally:
        live.close()
        transport.close()


# --- ARI events ------------------------------------------------------------------------------------
def test_every_real_asterisk_event_is_well_formed() -> None:
    traces = sorted((SHARED / "ari" / "traces").glob("*.events.jsonl"))
    if not traces:
        pytest.skip("../shared/ari/traces is absent")
    events = [json.loads(line) for path in traces for line in path.read_text().splitlines() if line.strip()]
    assert len(events) > 200
    assert [(e["type"], malformed_reason(e, e["application"])) for e in events
            if malformed_reason(e, e["application"])] == []


def test_every_malformed_frame_is_named_and_the_others_pass() -> None:
    for kind, text in ari_frames("rtcore", ["1795599410.8"], enormous_bytes=1000):
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):
            assert kind in ("not_json", "nested_too_deep", "enormous_not_json"), (kind, text[:80])
            continue
        reason = malformed_reason(event, "rtcore")
        if kind == "lone_surrogate":  # well-formed JSON and fields: the client's text check drops it
            assert reason is None and "\\ud800" in text
            continue
        assert (reason is not None) == (kind in MALFORMED_KINDS), (kind, text[:200], reason)


async def test_the_dialog_survives_malformed_and_out_of_order_events_and_the_live_call_goes_on(
        short_dir: Path) -> None:
    async with Rig(short_dir, no_input_s=60.0) as rig:
        controller = rig.controller
        handled: list[tuple[dict[str, Any], str]] = []
        handle = controller.handle_event

        def recording(event: dict[str, Any]) -> str:
            meaning = handle(event)  # an exception here would end controller.run(): the test sees it
            handled.append((event, meaning))
            return meaning

        controller.handle_event = recording  # type: ignore[method-assign]
        call_id = await rig.call()
        malformed = well_formed = 0
        since = 0
        for i, (prompt, text) in enumerate(HAPPY):
            since = await rig.hears(prompt, since)
            result = await inject_ari_events_async(rig.sim.url, APP, [call_id], user=USER, password=PASSWORD, seed=i)
            assert result["sockets"] == 1 and result["malformed"] > 50 and result["well_formed"] > 30
            malformed += result["malformed"]
            well_formed += result["well_formed"]
            # Every frame has been through the client and the controller (frames keep their order).
            await until(lambda n=well_formed: sum(1 for e, _ in handled if e.get(ABUSE_MARK)) == n, 20.0)
            assert rig.ari.malformed_events == malformed
            assert not rig.task.done(), rig.task  # the events loop is alive
            if text is not None:  # (after the goodbye the bot hangs up: the call may be over)
                assert call_id in controller.calls and not controller.calls[call_id].ended
                rig.says(call_id, text)
        lead = await rig.lead(call_id)
        assert lead.outcome == "qualified", lead
        assert (lead.zip_code, lead.owner, lead.heating, lead.callback) == ("75011", True, "gaz", True)
        assert [turn.source for turn in lead.turns] == ["speech"] * 6  # no DTMF, no resume, no extra turn
        meanings = [meaning for event, meaning in handled if event.get(ABUSE_MARK)]
        assert "call_ended" not in meanings and "dtmf" not in meanings and "own_channel" not in meanings
        # The backwards "ghost" channels ended with a StasisStart: answered, refused (404), closed.
        ghosts = {e["channel"]["id"] for e, m in handled if e.get(ABUSE_MARK) and m == "new_call"}
        assert len(ghosts) == 2 * len(HAPPY) and call_id not in ghosts
        await until(lambda: not controller.calls, 10.0)
        assert rig.rings.in_use() == [] and rig.leftovers() == ([], [])
        # Should anything hand the controller what the client drops, it neither raises nor takes a
        # malformed event about a call for its end or a key pressed.
        controller.calls[call_id] = object()  # type: ignore[assignment]  # classify_event only looks it up
        try:
            for kind, text in ari_frames(APP, [call_id]):
                if kind in MALFORMED_KINDS and kind != "nested_too_deep":
                    try:
                        event = json.loads(text)
                    except ValueError:
                        continue
                    if isinstance(event, dict):
                        assert controller.classify_event(event) in ("ignored", "new_call", "playback_finished"), text
        finally:
            del controller.calls[call_id]
        # And nothing the simulator sent as Asterisk was taken for malformed.
        assert [e["type"] for e in rig.sim.events if malformed_reason(e, APP)] == []
        assert not rig.task.done()


async def test_the_events_hook_refuses_what_it_cannot_send(short_dir: Path) -> None:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    async with Rig(short_dir) as rig, aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as session:
        base = rig.sim.url.removesuffix("/ari")
        for body, status in [({"frames": "x"}, 400), ({"frames": [1]}, 400), ({"frames": ["\ud800"]}, 400),
                             ({"app": APP, "frames": []}, 200)]:
            async with session.post(f"{base}/_sim/events", json=body) as response:
                assert response.status == status, (body, await response.text())
        async with aiohttp.ClientSession() as anonymous, anonymous.post(f"{base}/_sim/events", json={}) as response:
            assert response.status == 401
        assert not any(r.path.startswith("/_sim") for r in rig.sim.requests)  # not ARI requests


# --- HTTP ------------------------------------------------------------------------------------------
class NoAudio:
    """The abuse never gets as far as a transcription."""

    async def transcribe(self, audio: Any, language: str) -> Any:
        raise AssertionError("no transcription expected")

    def health(self) -> dict[str, Any]:
        return {"free_slots": 1}


@pytest.fixture
async def api() -> AsyncIterator[HttpServer]:
    settings = Settings(http_max_upload_mb=1.0, http_header_timeout_s=1.0, http_body_timeout_s=1.0,
                        http_max_connections=500)
    server = HttpServer(create_app(NoAudio(), settings))  # type: ignore[arg-type]
    await server.start("127.0.0.1", 0)
    yield server
    await server.close()


async def test_http_abuse_gets_the_documented_answers_and_health_keeps_answering(api: HttpServer) -> None:
    result = await abuse_http_async(f"http://127.0.0.1:{api.port}", max_upload_mb=1.0, rounds=2, probe_every_s=0.02)
    assert result["unexpected"] == [], result
    assert result["by_outcome"]["413"] >= 4 and result["by_outcome"]["400"] > 50, result
    assert result["health_ok"] >= 1 and result["health_failed"] == 0 and result["health_after"], result
    assert api.counters["responses_500"] == 0 and api.counters["bad_http_requests"] >= 20, api.counters
    await wait_until(lambda: api.open_connections == 0, "every abusive connection closed")


async def test_slow_clients_are_cut_at_their_deadline_while_normal_requests_are_served(api: HttpServer) -> None:
    result = await slow_loris_async("127.0.0.1", api.port, connections=80, duration_s=8.0, byte_interval_s=0.2,
                              probe_every_s=0.1)
    assert result["opened"] == 80 and result["cut"] == 80 and result["still_open"] == 0, result
    assert result["answered"] == {"408": 40}, result  # the slow bodies are told why; slow headers just closed
    assert result["cut_s_min"] >= 0.95 and result["cut_s_max"] < 2.5, result  # 1 s limits, never early
    assert result["probe_ok"] >= 5 and result["probe_failed"] == 0 and result["probe_ms_max"] < 1000, result
    assert api.counters["connections_timed_out"] >= 40 and api.counters["responses_408"] == 40, api.counters
    await wait_until(lambda: api.open_connections == 0, "no connection left")


async def test_connections_over_the_cap_are_closed_at_once() -> None:
    settings = Settings(http_header_timeout_s=2.0, http_max_connections=10)
    server = HttpServer(create_app(NoAudio(), settings))  # type: ignore[arg-type]
    port = await server.start("127.0.0.1", 0)
    assert server.limits == ConnectionLimits(header_timeout_s=2.0, body_timeout_s=60.0, max_connections=10)
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(15)]
    try:
        await wait_until(lambda: server.counters["connections_refused"] == 5 and server.open_connections == 10,
                         "10 connections held, 5 refused")
        for reader, _ in streams[10:]:  # accepted last, closed at once
            assert await asyncio.wait_for(reader.read(), 1.0) == b""
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):  # no room while the 10 idle ones hold it...
                async with session.get(f"http://127.0.0.1:{port}/health"):
                    pass
            for reader, _ in streams[:10]:  # ...until their header deadline cuts them
                assert await asyncio.wait_for(reader.read(), 5.0) == b""
            await wait_until(lambda: server.open_connections == 0, "the idle connections cut")
            async with session.get(f"http://127.0.0.1:{port}/health") as response:
                assert response.status == 200
    finally:
        for _, writer in streams:
            writer.close()
        await server.close()


# --- the HTTP service under the supervisor -----------------------------------------------------------
SPEECH = "cheetah_test_fr.wav"  # "Les deux autres sont situés au bord de la mer jaune."


@pytest.fixture(scope="module")
def serve() -> Iterator[tuple[Supervisor, Settings]]:
    require_shared_audio(SPEECH)
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    settings = Settings(
        instance="t" + uuid.uuid4().hex[:8], run_dir=str(root / "run"), data_dir=str(root / "data"), metrics_port=0,
        max_calls=4, ring_seconds=20.0, http_max_audio_s=20.0, http_max_upload_mb=2.0,
        http_port=free_port(socket.SOCK_STREAM), asr_workers=1, heartbeat_interval_s=0.2,
        # A lone request waits up to 1 s for batch companions: time to kill the API while it waits.
        asr_batch_size=4, asr_max_wait_ms=1000, http_header_timeout_s=2.0, http_body_timeout_s=2.0)
    supervisor = Supervisor(settings, http_service(settings), private_redis=False)
    stopping = threading.Event()
    # Supervised as `rtcore serve` does: /health needs the supervisor's RunStatus every second.
    supervising = threading.Thread(target=supervisor.run, args=(stopping.is_set,), daemon=True)
    try:
        supervisor.start()
        supervising.start()
        yield supervisor, settings
    finally:
        stopping.set()
        if supervising.is_alive():
            supervising.join(timeout=10)
        supervisor.stop()
        shutil.rmtree(root, ignore_errors=True)


async def transcribe(url: str, speech: bytes, timeout_s: float = 60.0) -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData()
    form.add_field("audio", speech, filename="speech.wav", content_type="audio/wav")
    async with (aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
                session.post(f"{url}/transcribe", data=form) as response):
        return response.status, await response.json()


async def test_the_real_http_service_answers_abuse_as_documented(serve: tuple[Supervisor, Settings]) -> None:
    supervisor, settings = serve
    url = f"http://127.0.0.1:{settings.http_port}"
    # The blocking forms, from threads, as a benchmark calls them.
    result = await asyncio.to_thread(abuse_http, url, max_upload_mb=settings.http_max_upload_mb)
    assert result["unexpected"] == [] and result["health_failed"] == 0 and result["health_after"], result
    loris = await asyncio.to_thread(slow_loris, "127.0.0.1", settings.http_port, 20, 10.0, byte_interval_s=0.25,
                                    probe_every_s=0.2)
    assert loris["cut"] == 20 and loris["cut_s_min"] >= 1.9 and loris["cut_s_max"] < 4.0, loris
    assert loris["probe_failed"] == 0 and loris["probe_ok"] >= 5, loris
    assert supervisor.children["http_api"].restarts == 0


async def test_killed_http_api_fails_its_request_cleanly_and_its_successor_serves_and_frees_the_slot(
        serve: tuple[Supervisor, Settings]) -> None:
    supervisor, settings = serve
    assert supervisor.rings is not None
    rings = supervisor.rings
    url = f"http://127.0.0.1:{settings.http_port}"
    speech = require_shared_audio(SPEECH).read_bytes()
    child = supervisor.children["http_api"]
    victim, restarts = child.pid, child.restarts

    in_flight = asyncio.create_task(transcribe(url, speech))
    await wait_until(lambda: rings.in_use(SlotOwner.HTTP) or in_flight.done(), "the request holding its slot")
    assert not in_flight.done(), "the request finished before it could be interrupted"
    held = rings.in_use(SlotOwner.HTTP)
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(aiohttp.ClientError):  # reset or closed: a clean failure...
        await asyncio.wait_for(in_flight, 10.0)  # ...and soon, not a hang
    # The dead process could not free it (its successor starts after the restart backoff, 0.5 s at least).
    assert rings.in_use(SlotOwner.HTTP) == held

    def restarted() -> bool:
        return child.restarts == restarts + 1 and child.ready and child.pid != victim

    deadline = time.monotonic() + 120
    while not restarted():  # the fixture's supervisor notices the exit and starts a new one
        await asyncio.sleep(0.05)
        assert time.monotonic() < deadline, "http_api not restarted"
    assert rings.in_use(SlotOwner.HTTP) == []  # freed by the successor at its start
    status, body = await transcribe(url, speech)
    assert status == 200 and "mer" in body["text"].lower(), body
    assert rings.in_use(SlotOwner.HTTP) == [] and rings.in_use() == []
