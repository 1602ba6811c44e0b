"""The Whisper HTTP service, seed-compatible, backed by the same batched ASR as the calls.

Endpoints (every error is JSON `{"error": "..."}` with a 4xx/5xx status; the service keeps serving):
- `POST /transcribe`: multipart form, file field `audio`, optional field `language` (default `asr_language`, fr)
  -> `{"text", "processing_time" (s), "filename", "language", "batch_size"}`.
- `POST /whisper`: JSON `{"audio": base64 of an audio file, "filename", "connection_id"}`
  -> `{"transcription": text}`, in `asr_language`.
- `GET /health` -> `{"status": "ok", "model", "device", "free_slots"}`.

An upload is decoded here (any format FFmpeg reads, resampled to 16 kHz mono) in a worker thread,
then handed to a `Transcriber`. `PipelineTranscriber` is the real one: it writes the audio into a
ring slot of its own, submits an UtteranceReady for it to the ASR dispatcher exactly as the VAD does
for a call, and waits for the Transcript with that utterance id on the bus. So HTTP requests and
calls share the workers and are batched together.

A transcript Whisper flagged as a hallucination (its inventions over silence or noise, e.g.
"Sous-titres réalisés par...") comes back as empty text: it is not what the caller said.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web

from rtcore.asr.transcriber import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    Transcriber,
    TranscriptionResult,
    UnsupportedMedia,
    model_name,
)
from rtcore.runtime.audio import SAMPLE_RATE, AudioError, load_audio, measure_duration
from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

MIB = 1 << 20
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


def decode_upload(data: bytes, filename: str, max_audio_s: float) -> npt.NDArray[np.float32]:
    """An uploaded audio file -> 16 kHz mono float32. Blocking CPU work: run it in a thread.
    Raises BadRequest (no samples), UnsupportedMedia (not audio), PayloadTooLarge (too long)."""
    suffix = Path(filename).suffix
    # FFmpeg reads the content, but a sane extension helps it with headerless formats.
    with tempfile.NamedTemporaryFile(prefix="rtcore-upload-", suffix=suffix if _SAFE_SUFFIX.match(suffix) else "") as f:
        f.write(data)
        f.flush()
        try:
            # Measure first, keeping nothing: a small compressed file can decode to hours of audio.
            seconds = measure_duration(f.name, stop_after_s=max_audio_s)
            if seconds > max_audio_s:
                raise PayloadTooLarge(f"audio is longer than {max_audio_s:g} s (http_max_audio_s)")
            audio = load_audio(f.name)
        except AudioError as exc:
            raise UnsupportedMedia(f"{filename!r} is not audio FFmpeg can decode ({_reason(exc, f.name)})") from None
    if audio.shape[0] == 0:
        raise BadRequest(f"{filename!r} contains no audio samples")
    if audio.shape[0] > max_audio_s * SAMPLE_RATE:
        raise PayloadTooLarge(f"audio is {audio.shape[0] / SAMPLE_RATE:.1f} s long, longer than "
                              f"{max_audio_s:g} s (http_max_audio_s)")
    return audio


def _reason(exc: AudioError, path: str) -> str:
    """FFmpeg's words for why a file failed, without our temporary path or the errno."""
    reason = str(exc).removeprefix(f"{path}: ").removeprefix("cannot decode audio: ")
    reason = re.sub(r"^\[Errno -?\d+\] ", "", reason)
    return reason.removesuffix(f": {path!r}").removesuffix(f": '{path}'")


def _json_response(body: dict[str, Any], status: int = 200) -> web.Response:
    # French text as UTF-8, not \u escapes: the same JSON, readable in a terminal.
    return web.json_response(body, status=status, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- the application ---------------------------------------------------------------------------
class HttpApi:
    """The request handlers, the limits they enforce, and request counters for Metrics."""

    def __init__(self, transcriber: Transcriber, settings: Settings, intents: Any = None) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # the codes Whisper's tokenizer knows

        self.transcriber = transcriber
        self._intents = intents
        self.settings = settings
        self.max_body_bytes = int(settings.http_max_upload_mb * MIB)
        self.languages = frozenset(_LANGUAGE_CODES)
        self.counters: Counter[str] = Counter()

    def metrics(self) -> dict[str, float]:
        """Monotonic counters: requests, responses by status, transcriptions, audio seconds."""
        return {key: float(value) for key, value in self.counters.items()}

    # --- middleware: every error as JSON, everything counted -------------------------------
    @web.middleware
    async def errors_as_json(self, request: web.Request,
                             handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        self.counters["requests"] += 1
        try:
            response = await handler(request)
        except ApiError as exc:
            response = self._error(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            response = self._error(413, f"request body larger than {self.settings.http_max_upload_mb:g} MiB "
                                        "(http_max_upload_mb)")
        except web.HTTPException as exc:  # the router's 404 and 405
            if exc.status < 400:
                raise
            response = self._error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = self._error(500, "internal error (see the service's log)")
        self.counters[f"responses_{response.status}"] += 1
        return response

    def _error(self, status: int, message: str) -> web.Response:
        if status >= 500 and status != 503:  # 503 is load, not a fault
            log.error("HTTP %d: %s", status, message)
        else:
            log.info("HTTP %d: %s", status, message)
        return _json_response({"error": message}, status=status)

    # --- handlers ------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return _json_response({"status": "ok", "model": model_name(self.settings),
                                  "device": self.settings.asr_device, **self.transcriber.health()})

    async def transcribe(self, request: web.Request) -> web.Response:
        """Seed's /transcribe: multipart `audio` file and optional `language`."""
        started = time.monotonic()
        if request.content_type != "multipart/form-data":
            raise BadRequest("expected a multipart/form-data body with a file field 'audio' "
                             f"(got {request.content_type or 'no content type'})")
        try:
            form = await request.post()
        except ValueError as exc:  # a malformed multipart body
            raise BadRequest(f"malformed multipart body: {exc}") from None
        upload = form.get("audio")
        if upload is None:
            raise BadRequest("missing file field 'audio'")
        if not isinstance(upload, web.FileField):
            raise BadRequest("field 'audio' must be a file (with a filename), not a text value")
        requested = form.get("language")
        if requested is not None and not isinstance(requested, str):
            raise BadRequest("field 'language' must be a text value (a language code such as fr)")
        language = self._language(requested or self.settings.asr_language)
        filename = upload.filename or "audio"
        data = await asyncio.to_thread(upload.file.read)
        if not data:
            raise BadRequest(f"the uploaded file {filename!r} is empty")
        result = await self._transcribe(data, filename, language)
        return _json_response({
            "text": result.text, "processing_time": round(time.monotonic() - started, 3), "filename": filename,
            "language": language, "batch_size": result.batch_size})

    async def whisper(self, request: web.Request) -> web.Response:
        """Seed's /whisper: JSON with a base64 audio file; answers in the configured language."""
        body = await request.read()
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise BadRequest("body must be a JSON object with a base64 'audio' field")
        encoded = payload.get("audio")
        if not isinstance(encoded, str):
            raise BadRequest("field 'audio' (base64 of an audio file, a string) is missing"
                             if encoded is None else "field 'audio' must be a base64 string")
        filename = payload.get("filename")
        filename = filename if isinstance(filename, str) and filename else "audio"
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"field 'audio' is not valid base64: {exc}") from None
        if not data:
            raise BadRequest("field 'audio' is empty")
        log.info("/whisper request, connection %s, file %r", payload.get("connection_id"), filename)
        result = await self._transcribe(data, filename, self.settings.asr_language)
        return _json_response({"transcription": result.text})

    async def embedding_main(self, request: web.Request) -> web.Response:
        """Seed's main intent API: `{"sentence", "state"?}` -> `{"intent"}` (FAQs answer "unknown":
        they are /embedding_faqs/'s, as the seed's two models split them)."""
        return await self._intent(request, faq=False)

    async def embedding_faqs(self, request: web.Request) -> web.Response:
        """Seed's FAQ intent API: the FAQ the sentence asks, or "unknown"."""
        return await self._intent(request, faq=True)

    async def _intent(self, request: web.Request, faq: bool) -> web.Response:
        from rtcore.intents import DIALOG_STATES, EmbeddedIntentSource

        try:
            payload = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("sentence"), str):
            raise BadRequest("body must be a JSON object with a string field 'sentence'")
        state = payload.get("state")
        if state is not None and state not in DIALOG_STATES:
            raise BadRequest(f"unknown state {state!r}: expected one of {', '.join(DIALOG_STATES)}")
        if self._intents is None:
            self._intents = EmbeddedIntentSource()
        result = await self._intents.classify(payload["sentence"], state)
        is_faq = result.intent.startswith("faq")
        intent = result.intent if is_faq == faq else "unknown"
        self.counters["intents"] += 1
        return _json_response({"intent": intent, "score": round(result.score, 4) if intent != "unknown" else 0.0,
                               "slots": result.slots if intent != "unknown" else {}})

    # --- shared steps ------------------------------------------------------------------------
    def _language(self, value: str) -> str:
        language = value.strip().lower()
        if language not in self.languages:
            raise BadRequest(f"unknown language {value!r}: expected a Whisper language code (fr, en, de, ...)")
        return language

    async def _transcribe(self, data: bytes, filename: str, language: str) -> TranscriptionResult:
        # Decoding is CPU work: in a thread, so the loop keeps serving (and heartbeating) meanwhile.
        audio = await asyncio.to_thread(decode_upload, data, filename, self.settings.http_max_audio_s)
        result = await self.transcriber.transcribe(audio, language)
        self.counters["transcriptions"] += 1
        self.counters["audio_seconds"] += audio.shape[0] / SAMPLE_RATE
        self.counters["hallucinations"] += result.hallucination
        return result


API_KEY = web.AppKey("api", HttpApi)


def create_app(transcriber: Transcriber, settings: Settings, intents: Any = None) -> web.Application:
    """The service as an aiohttp application (`app[API_KEY].metrics()` for the counters).
    `intents`: the IntentSource behind /embedding_main/ and /embedding_faqs/ (default: embedded)."""
    api = HttpApi(transcriber, settings, intents)
    # aiohttp refuses larger bodies itself (413, turned into JSON by the middleware).
    app = web.Application(client_max_size=api.max_body_bytes, middlewares=[api.errors_as_json])
    app[API_KEY] = api
    app.router.add_get("/health", api.health)
    app.router.add_post("/transcribe", api.transcribe)
    app.router.add_post("/whisper", api.whisper)
    # The seed's intent API, so its clients (and rtcore's own HTTP intent client) can use ours.
    app.router.add_post("/embedding_main/", api.embedding_main)
    app.router.add_post("/embedding_faqs/", api.embedding_faqs)
    return app


def listening_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
