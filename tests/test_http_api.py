"""The Whisper HTTP service: real HTTP against a real pipeline (ASR dispatcher, a Whisper worker,
the HTTP API process, under the supervisor), plus the transcriber's failure paths against a fake
ASR dispatcher on a real bus and rings."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
import pytest
import zmq

from rtcore.asr.transcriber import (
    PipelineTranscriber,
    ServiceBusy,
    TranscriptionFailed,
    TranscriptionTimeout,
    check_audio_fits,
)
from rtcore.launch.pipeline import http_service
from rtcore.runtime.audio import float_to_pcm16, load_audio
from rtcore.runtime.bus import BusProxy, Publisher
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import Transcript, UtteranceReady, decode
from rtcore.runtime.ring import AudioRings, RingSpec
from rtcore.runtime.supervisor import ProcessSpec, Supervisor, SupervisorError
from tests.conftest import REPO, require_shared_audio

SPEECH = "cheetah_test_fr.wav"  # "Les deux autres sont situés au bord de la mer jaune."
MAX_AUDIO_S = 20.0
MAX_UPLOAD_MB = 2.0
SLOTS = 4


def wav_bytes(samples: npt.NDArray[np.float32], rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(float_to_pcm16(samples).tobytes())
    return out.getvalue()


def tone(seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * 16000), dtype=np.float32) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def form(data: bytes | None = None, filename: str = "speech.wav", **fields: str) -> aiohttp.FormData:
    body = aiohttp.FormData(default_to_multipart=True)
    if data is not None:
        body.add_field("audio", data, filename=filename, content_type="application/octet-stream")
    for name, value in fields.items():
        body.add_field(name, value)
    return body


# --- the real pipeline -------------------------------------------------------------------------
@dataclass
class Service:
    supervisor: Supervisor
    url: str
    speech: bytes

    @property
    def rings(self) -> AudioRings:
        assert self.supervisor.rings is not None
        return self.supervisor.rings


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    speech = require_shared_audio(SPEECH).read_bytes()
    root = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    values: dict[str, Any] = {
        "instance": "t" + uuid.uuid4().hex[:8], "run_dir": str(root / "run"), "data_dir": str(root / "data"),
        "metrics_port": 0, "max_calls": SLOTS, "ring_seconds": MAX_AUDIO_S, "http_max_audio_s": MAX_AUDIO_S,
        "http_max_upload_mb": MAX_UPLOAD_MB, "http_port": 0, "asr_workers": 1,
        # A batch of 4 waits up to 1 s for its members: the concurrent requests below share one.
        "asr_batch_size": SLOTS, "asr_max_wait_ms": 1000}
    # A stopped process is reported after 2 s without a heartbeat, and left alone for a minute.
    values.update(heartbeat_timeout_s=2.0, unresponsive_kill_s=60.0)
    settings = Settings(**values)
    supervisor = Supervisor(settings, http_service(settings), private_redis=False)
    stopping = threading.Event()
    supervising = threading.Thread(target=supervisor.run, args=(stopping.is_set,), daemon=True)
    try:
        supervisor.start()
        assert supervisor.redis is None
        port = int(supervisor.children["http_api"].metrics["listening_port"])
        supervising.start()  # as `rtcore serve` does: RunStatus every second, restarts
        yield Service(supervisor, f"http://127.0.0.1:{port}", speech)
    finally:
        stopping.set()
        if supervising.is_alive():
            supervising.join(timeout=10)
        supervisor.stop()
        shutil.rmtree(root, ignore_errors=True)


async def post_transcribe(service: Service, body: Any, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with (aiohttp.ClientSession() as session,
                session.post(f"{service.url}/transcribe", data=body, **kwargs) as response):
        return response.status, await response.json()


async def post_whisper(service: Service, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(f"{service.url}/whisper", **kwargs) as response:
        return response.status, await response.json()


async def get_health(service: Service, path: str = "/health") -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"{service.url}{path}") as response:
        return response.status, await response.json()


async def until_health(service: Service, condition: Callable[[int, dict[str, Any]], bool],
                       timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await get_health(service)
        if condition(status, body):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)  # a poll of the endpoint, not a wait for a race


async def test_health(service: Service) -> None:
    body = await until_health(service, lambda status, body: status == 200)
    # The seed's fields, then the run's.
    assert {k: body[k] for k in ("status", "model", "device", "free_slots")} == {
        "status": "ok", "model": "whisper-base", "device": "cpu", "free_slots": SLOTS}
    assert set(body["processes"]) == {"asr_dispatch", "asr-0", "http_api"}
    assert all(p["up"] for p in body["processes"].values()) and body["reasons"] == []
    assert body["asr"]["workers"] == 1 and "redis" not in body and "ari" not in body  # `rtcore serve`: neither
    status, ready = await get_health(service, "/ready")
    assert status == 200 and ready["ready"] is True


async def test_health_reports_a_process_that_stopped_beating_then_recovers(service: Service) -> None:
    await until_health(service, lambda status, body: status == 200)
    worker = service.supervisor.children["asr-0"]
    os.kill(worker.pid, signal.SIGSTOP)  # alive but silent, as a hung process
    try:
        body = await until_health(service, lambda status, body: status == 503)
        assert body["status"] == "unavailable" and body["processes"]["asr-0"]["up"] is False
        assert any(re.fullmatch(r"process asr-0: no heartbeat for [\d.]+ s", r) for r in body["reasons"]), body
        status, _ = await get_health(service, "/ready")
        assert status == 503
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    body = await until_health(service, lambda status, body: status == 200)
    assert body["processes"]["asr-0"]["up"] is True and body["processes"]["asr-0"]["restarts"] == 0


async def test_transcribe_a_french_recording(service: Service) -> None:
    status, body = await post_transcribe(service, form(service.speech, filename="cheetah.wav", language="fr"))
    assert status == 200, body
    assert "mer" in body["text"].lower()
    assert body["filename"] == "cheetah.wav" and body["language"] == "fr"
    assert isinstance(body["processing_time"], float) and body["processing_time"] > 0
    assert body["batch_size"] >= 1
    assert service.rings.in_use() == []  # the request's slot was given back


async def test_whisper_endpoint_with_base64(service: Service) -> None:
    payload = {"audio": base64.b64encode(service.speech).decode(), "filename": "cheetah.wav", "connection_id": "c-42"}
    status, body = await post_whisper(service, json=payload)
    assert status == 200, body
    assert set(body) == {"transcription"} and "mer" in body["transcription"].lower()


BAD_TRANSCRIBE: list[tuple[str, Callable[[bytes], dict[str, Any]], int, str]] = [
    ("not multipart", lambda speech: {"data": speech, "headers": {"Content-Type": "audio/wav"}}, 400,
     "expected a multipart/form-data body with a file field 'audio' (got audio/wav)"),
    ("no audio field", lambda speech: {"data": form(language="fr")}, 400, "missing file field 'audio'"),
    ("url-encoded form", lambda speech: {"data": {"audio": "hello"}}, 400,
     "expected a multipart/form-data body with a file field 'audio' (got application/x-www-form-urlencoded)"),
    ("audio as text", lambda speech: {"data": form(audio="hello")}, 400,
     "field 'audio' must be a file (with a filename), not a text value"),
    ("empty file", lambda speech: {"data": form(b"", filename="empty.wav")}, 400,
     "the uploaded file 'empty.wav' is empty"),
    ("not audio", lambda speech: {"data": form(b"just some notes\n" * 10, filename="notes.txt")}, 415,
     "'notes.txt' is not audio FFmpeg can decode (Invalid data found when processing input)"),
    ("unknown language", lambda speech: {"data": form(speech, language="xx")}, 400,
     "unknown language 'xx': expected a Whisper language code (fr, en, de, ...)"),
]

BAD_WHISPER: list[tuple[str, dict[str, Any], int, str]] = [
    ("invalid JSON", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
     "body is not valid JSON: "),
    ("not an object", {"json": ["audio"]}, 400, "body must be a JSON object with a base64 'audio' field"),
    ("missing audio", {"json": {"filename": "a.wav"}}, 400,
     "field 'audio' (base64 of an audio file, a string) is missing"),
    ("audio not a string", {"json": {"audio": 123}}, 400, "field 'audio' must be a base64 string"),
    ("bad base64", {"json": {"audio": "@@not base64@@"}}, 400, "field 'audio' is not valid base64: "),
    ("empty audio", {"json": {"audio": ""}}, 400, "field 'audio' is empty"),
    ("not audio", {"json": {"audio": base64.b64encode(b"\x00\x01garbage" * 50).decode(), "filename": "x.bin"}},
     415, "'x.bin' is not audio FFmpeg can decode (Invalid data found when processing input)"),
]


async def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(service: Service) -> None:
    async with aiohttp.ClientSession() as session:
        for case, make_kwargs, status, message in BAD_TRANSCRIBE:
            async with session.post(f"{service.url}/transcribe", **make_kwargs(service.speech)) as response:
                body = await response.json()
                assert response.status == status, (case, body)
                assert body["error"].startswith(message), (case, body)
        for case, kwargs, status, message in BAD_WHISPER:
            async with session.post(f"{service.url}/whisper", **kwargs) as response:
                body = await response.json()
                assert response.status == status, (case, body)
                assert body["error"].startswith(message), (case, body)
        async with session.get(f"{service.url}/nothing-here") as response:
            assert response.status == 404
            assert await response.json() == {"error": "Not Found: GET /nothing-here"}
        async with session.get(f"{service.url}/transcribe") as response:
            assert response.status == 405
            assert await response.json() == {"error": "Method Not Allowed: GET /transcribe"}
    status, body = await post_transcribe(service, form(service.speech))
    assert status == 200 and "mer" in body["text"].lower(), body
    assert body["language"] == "fr"  # the default
    assert service.supervisor.children["http_api"].restarts == 0


async def test_body_over_the_upload_limit_is_413(service: Service) -> None:
    big = b"\x00" * 3 * (1 << 20)
    status, body = await post_transcribe(service, form(big, filename="big.wav"))
    assert status == 413 and body == {"error": "request body larger than 2 MiB (http_max_upload_mb)"}
    status, body = await post_whisper(service, json={"audio": base64.b64encode(big).decode()})
    assert status == 413 and body == {"error": "request body larger than 2 MiB (http_max_upload_mb)"}


async def test_audio_over_the_length_limit_is_413(service: Service) -> None:
    long_wav = wav_bytes(tone(25.0))
    assert len(long_wav) < MAX_UPLOAD_MB * (1 << 20)  # under the body limit: the length is what counts
    status, body = await post_transcribe(service, form(long_wav, filename="long.wav"))
    assert status == 413 and body == {"error": "audio is longer than 20 s (http_max_audio_s)"}
    status, body = await post_whisper(service, json={"audio": base64.b64encode(long_wav).decode()})
    assert status == 413 and body == {"error": "audio is longer than 20 s (http_max_audio_s)"}


async def test_concurrent_requests_are_batched_together(service: Service) -> None:
    results = await asyncio.gather(*(
        post_transcribe(service, form(service.speech, filename=f"call-{i}.wav")) for i in range(SLOTS)))
    for i, (status, body) in enumerate(results):
        assert status == 200, body
        assert body["filename"] == f"call-{i}.wav" and "mer" in body["text"].lower()
        assert body["batch_size"] == SLOTS  # one Whisper batch for all of them
    assert service.rings.in_use() == []


async def test_no_free_slot_is_503(service: Service) -> None:
    leases = [service.rings.allocate() for _ in range(SLOTS)]  # as if every slot held a call
    try:
        status, body = await post_transcribe(service, form(service.speech))
        assert status == 503
        assert body == {"error": f"all {SLOTS} audio slots are in use (calls and transcriptions); retry later"}
    finally:
        for lease in leases:
            service.rings.free(lease)
    status, body = await post_transcribe(service, form(service.speech))
    assert status == 200 and "mer" in body["text"].lower()


def test_request_counters_reach_the_supervisor(service: Service) -> None:
    before = service.supervisor.children["http_api"].metrics.get("responses_404", 0.0)

    async def one_404() -> None:
        async with aiohttp.ClientSession() as session, session.get(f"{service.url}/missing") as response:
            assert response.status == 404

    asyncio.run(one_404())
    child = service.supervisor.children["http_api"]
    deadline = time.monotonic() + 30
    while child.metrics.get("responses_404", 0.0) <= before:  # reported every second
        assert time.monotonic() < deadline, child.metrics
        time.sleep(0.1)  # the fixture's thread supervises; we only look
    assert child.metrics["requests"] >= child.metrics["responses_404"]


# --- start-up checks ---------------------------------------------------------------------------
def test_audio_limit_longer_than_a_ring_slot_fails_the_start(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ring_seconds=10.0, http_max_audio_s=30.0, http_port=0)
    message = ("http_max_audio_s (30 s) is longer than a ring slot (10.016 s, ring_seconds): "
               "lower http_max_audio_s or raise ring_seconds")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_audio_fits(settings, settings.ring_capacity)
    sup = Supervisor(settings, [ProcessSpec("http_api", "procs.http_api")], private_redis=False)
    with pytest.raises(SupervisorError, match="http_api failed to start: ValueError: http_max_audio_s"):
        sup.start()


def test_serve_command_prints_its_url_and_stops_on_ctrl_c(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    env = {**os.environ, "RTCORE_INSTANCE": settings.instance, "RTCORE_RUN_DIR": settings.run_dir,
           "RTCORE_DATA_DIR": settings.data_dir, "RTCORE_METRICS_PORT": "0", "RTCORE_HTTP_PORT": "0",
           "RTCORE_MAX_CALLS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "rtcore.cli", "serve"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        line = proc.stdout.readline()
        assert line.startswith("Whisper HTTP API on http://127.0.0.1:"), (line, proc.stderr.read() if not line else "")
        url = line.split()[4]

        async def health() -> dict[str, Any]:
            # The run's status reaches the API over the bus as the start ends: polled, briefly.
            deadline = time.monotonic() + 10
            async with aiohttp.ClientSession() as session:
                while True:
                    async with session.get(f"{url}/health") as response:
                        body = dict(await response.json())
                    if body["status"] == "ok" or time.monotonic() > deadline:
                        return body
                    await asyncio.sleep(0.1)

        body = asyncio.run(health())
        assert body["status"] == "ok", body
        assert {"asr_dispatch", "asr-0", "http_api"} <= set(body["processes"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        log = proc.stderr.read()
        assert "http_api ready" in log and "asr-0 ready" in log and "private redis-server" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the transcriber's failure paths, against a fake ASR dispatcher -------------------------------
Reply = Callable[[UtteranceReady, npt.NDArray[np.int16]], Transcript | None]


class FakeDispatcher:
    """Stands in for procs/asr_dispatch: reads each submitted utterance's audio from the ring and
    publishes what `reply` returns (None: never answers)."""

    def __init__(self, settings: Settings, rings: AudioRings, reply: Reply) -> None:
        self.reply = reply
        self.received: list[UtteranceReady] = []
        self._settings = settings
        self._rings = rings
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeDispatcher:
        self._thread.start()
        self._bound.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from rtcore.runtime.ring import SlotLease

        router: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind(self._settings.endpoint("asr"))
        publisher = Publisher(self._settings.endpoint("bus_pub"))
        self._bound.set()
        try:
            while not self._stop.is_set():
                if not router.poll(50):
                    continue
                _identity, payload = router.recv_multipart()
                utterance = decode(payload)
                assert isinstance(utterance, UtteranceReady)
                self.received.append(utterance)
                pcm = self._rings.read(SlotLease(utterance.slot, utterance.generation),
                                       utterance.start_sample, utterance.end_sample)
                transcript = self.reply(utterance, pcm)
                if transcript is not None:
                    publisher.publish(transcript)
        finally:
            router.close()
            publisher.close()


@pytest.fixture
def bus_and_rings(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, AudioRings]]:
    settings = make_settings(ring_seconds=2.0, http_max_audio_s=2.0, max_calls=2, http_request_timeout_s=30.0)
    settings.run_path.mkdir(parents=True, exist_ok=True)
    rings = AudioRings.create(RingSpec(f"rtcore.{settings.instance}.test.rings", 2, settings.ring_capacity))
    proxy = BusProxy(settings.endpoint("bus_pub"), settings.endpoint("bus_sub")).start()
    try:
        yield settings, rings
    finally:
        proxy.stop()
        rings.close()
        rings.unlink()


def said(utterance: UtteranceReady, text: str, **fields: Any) -> Transcript:
    return Transcript(utterance_id=utterance.utterance_id, call_id=utterance.call_id, text=text, **fields)


async def test_transcriber_writes_the_audio_and_returns_its_transcript(
        bus_and_rings: tuple[Settings, AudioRings]) -> None:
    settings, rings = bus_and_rings
    audio = tone(1.0)
    seen: list[npt.NDArray[np.int16]] = []

    def reply(utterance: UtteranceReady, pcm: npt.NDArray[np.int16]) -> Transcript:
        seen.append(pcm.copy())
        return said(utterance, "bonjour", batch_size=3)

    transcriber = PipelineTranscriber(settings, rings)
    with FakeDispatcher(settings, rings, reply) as fake:
        await transcriber.start()
        try:
            result = await transcriber.transcribe(audio, "de")
        finally:
            await transcriber.close()
    assert (result.text, result.batch_size, result.hallucination) == ("bonjour", 3, False)
    [utterance] = fake.received
    assert utterance.call_id == "http" and utterance.utterance_id.startswith("http-")
    assert (utterance.start_sample, utterance.end_sample, utterance.language) == (0, 16000, "de")
    np.testing.assert_array_equal(seen[0], float_to_pcm16(audio))
    assert rings.in_use() == []


async def test_transcriber_failures(bus_and_rings: tuple[Settings, AudioRings]) -> None:
    settings, rings = bus_and_rings

    def reply(utterance: UtteranceReady, pcm: npt.NDArray[np.int16]) -> Transcript | None:
        if utterance.language == "en":
            return said(utterance, "", error="slot 0: samples from 0 were overwritten")
        if utterance.language == "es":
            return said(utterance, "Sous-titres réalisés par la communauté d'Amara.org", hallucination=True)
        return None  # "it": never answered

    transcriber = PipelineTranscriber(settings.model_copy(update={"http_request_timeout_s": 0.3}), rings)
    with FakeDispatcher(settings, rings, reply):
        await transcriber.start()
        try:
            with pytest.raises(
                TranscriptionFailed, match="^transcription failed: slot 0: samples from 0 were overwritten$"
            ):
                await transcriber.transcribe(tone(0.5), "en")
            flagged = await transcriber.transcribe(tone(0.5), "es")
            assert flagged.text == "" and flagged.hallucination
            with pytest.raises(TranscriptionTimeout, match=r"^no transcript within 0.3 s \(http_request_timeout_s\)$"):
                await transcriber.transcribe(tone(0.5), "it")
            assert rings.in_use() == []  # freed on every path
            held = [rings.allocate() for _ in range(2)]
            with pytest.raises(ServiceBusy, match="^all 2 audio slots are in use"):
                await transcriber.transcribe(tone(0.5), "fr")
            for lease in held:
                rings.free(lease)
        finally:
            await transcriber.close()


def test_decoded_upload_matches_load_audio(tmp_path: Path) -> None:
    from rtcore.asr.http_api import decode_upload

    path = require_shared_audio(SPEECH)
    np.testing.assert_array_equal(decode_upload(path.read_bytes(), "x.wav", MAX_AUDIO_S), load_audio(path))


class _NoAudio:
    """The intent endpoints never transcribe: a transcriber that says so if called."""

    async def transcribe(self, audio, language):  # type: ignore[no-untyped-def]
        raise AssertionError("no transcription expected")

    def health(self) -> dict:  # type: ignore[type-arg]
        return {}


async def test_seed_intent_endpoints() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    from rtcore.asr.http_api import create_app
    from rtcore.runtime.config import Settings

    async with TestClient(TestServer(create_app(_NoAudio(), Settings()))) as client:  # real HTTP on loopback
        r = await client.post(
            "/embedding_main/", json={"sentence": "soixante-quinze zéro onze", "state": "ask_zip_code"}
        )
        assert r.status == 200 and (await r.json())["intent"] == "ok_zipcode"
        assert (await r.json())["slots"]["zip_code"] == "75011"
        r = await client.post("/embedding_main/", json={"sentence": "c'est gratuit ?"})
        assert (await r.json())["intent"] == "unknown"  # a FAQ: the FAQ endpoint's
        r = await client.post("/embedding_faqs/", json={"sentence": "c'est gratuit ?"})
        assert (await r.json())["intent"] == "faq3"
        r = await client.post("/embedding_faqs/", json={"sentence": "oui", "state": "init"})
        assert (await r.json())["intent"] == "unknown"
        for body, message in [
            (b"not json", "body is not valid JSON"),
            (b'{"text": "oui"}', "string field 'sentence'"),
            (b'{"sentence": "oui", "state": "nowhere"}', "unknown state 'nowhere'"),
        ]:
            r = await client.post("/embedding_main/", data=body, headers={"Content-Type": "application/json"})
            assert r.status == 400 and message in (await r.json())["error"]
        r = await client.post("/embedding_main/", json={"sentence": "oui", "state": "ask_owner_house"})
        assert (await r.json())["intent"] == "ok_proprio"  # still serving after the bad requests


def test_a_restarted_http_api_frees_the_slots_its_predecessor_held_and_only_those(
    bus_and_rings: tuple[Settings, AudioRings],
) -> None:
    settings, rings = bus_and_rings
    from rtcore.runtime.ring import SlotOwner

    call = rings.allocate(SlotOwner.CALL)
    rings.allocate(SlotOwner.HTTP)  # a request in flight when the previous API process died
    transcriber = PipelineTranscriber(settings, rings)
    try:
        assert transcriber.release_leftover_slots() == 1
        assert rings.in_use() == [call]
    finally:
        transcriber._asr.close()
        transcriber._transcripts.close()
