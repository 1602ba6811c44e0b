"""The Whisper HTTP service, seed-compatible, backed by the same batched ASR as the calls.

Endpoints (every error is JSON `{"error": "..."}` with a 4xx/5xx status; the service keeps serving):
- `POST /transcribe`: multipart form, file field `audio`, optional field `language` (default `asr_language`, fr)
  -> `{"text", "processing_time" (s), "filename", "language", "batch_size"}`.
- `POST /whisper`: JSON `{"audio": base64 of an audio file, "filename", "connection_id"}`
  -> `{"transcription": text}`, in `asr_language`.
- `GET /health` -> `{"status": "ok", "model", "device", "free_slots"}`, and with a run's health checks
  (rtcore.observe.health) every process, ARI, Redis, the call slots and `reasons`; 503 when not serving.
- `GET /ready` -> the same, 503 while a new call could not be taken (no slot, draining, ASR behind).

Access: with `http_token` set, every request must carry it (`Authorization: Bearer <token>`, as the
basic-auth password, or `?token=` for a browser: the live view passes its query on to its event
stream); 401 otherwise. A token is required when `http_host` is beyond loopback (Settings refuses to start
without): what callers said goes through this service. Every answer is counted in
rtcore_http_requests_total{endpoint,status} and timed in rtcore_http_request_duration_seconds,
the endpoint being the route's path (never the request's own path: a bounded label set).

An upload is decoded here (any format FFmpeg reads, resampled to 16 kHz mono) in a worker thread,
then handed to a `Transcriber`. `PipelineTranscriber` is the real one: it writes the audio into a
ring slot of its own, submits an UtteranceReady for it to the ASR dispatcher exactly as the VAD does
for a call, and waits for the Transcript with that utterance id on the bus. So HTTP requests and
calls share the workers and are batched together.

A transcript Whisper flagged as a hallucination (its inventions over silence or noise, e.g.
"Sous-titres réalisés par...") comes back as empty text: it is not what the caller said.

`HttpServer` listens for it behind `ConnectionLimits`, which aiohttp has no equivalent of: a
connection has `header_timeout_s` to send each request's line and headers (counted from its
connection, or from the end of its previous request: an idle keep-alive connection is closed as
well), a request `body_timeout_s` to send its body (408 after, and the connection is closed), and
at most `max_connections` are open at once (more are closed as they are accepted). So slow clients
("slow loris") are cut and cannot hold every file descriptor. Errors of the HTTP layer itself (a
garbage request line, an oversized header, a bad Content-Length) are JSON too, with status 400.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import logging
import re
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from rtcore.asr.transcriber import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    Transcriber,
    TranscriptionResult,
    UnsupportedMedia,
    model_name,
)
from rtcore.runtime import telemetry
from rtcore.runtime.audio import SAMPLE_RATE, AudioError, load_audio, measure_duration
from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

MIB = 1 << 20
_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,10}$")


class RequestTimeout(ApiError):
    """The request's body did not arrive within `ConnectionLimits.body_timeout_s`."""

    status = 408


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client may hold of the service (the http_header_timeout_s, http_body_timeout_s and
    http_max_connections settings)."""

    header_timeout_s: float = 10.0  # a request's line and headers, from the connection or the previous request
    body_timeout_s: float = 60.0  # a request's body, from the end of its headers
    max_connections: int = 256  # open at once; more are closed when accepted

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(header_timeout_s=settings.http_header_timeout_s, body_timeout_s=settings.http_body_timeout_s,
                   max_connections=settings.http_max_connections)


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


def _one_line(text: str, limit: int = 200) -> str:
    """aiohttp's multi-line error text (the offending bytes, a caret under them) on one line."""
    parts = [line.strip() for line in text.splitlines()]
    line = " ".join(part for part in parts if part and set(part) != {"^"})
    return re.sub(r"^\d{3}, message: ", "", line)[:limit]  # aiohttp's HttpProcessingError prefix


class HealthVerdict(Protocol):
    healthy: bool
    ready: bool
    body: dict[str, Any]


class RunHealth(Protocol):
    """The run's health checks (rtcore.observe.health.HealthChecks)."""

    async def assess(self) -> HealthVerdict: ...


def endpoint_label(request: web.Request) -> str:
    """The route that answered, as a metric label: its path pattern, or "unmatched" (a 404's path is
    the client's invention: never a label)."""
    resource = request.match_info.route.resource  # None for the router's 404 and 405
    return resource.canonical if resource is not None else "unmatched"


def bearer_or_basic_token(header: str) -> str:
    """The token an Authorization header carries: Bearer <token>, or Basic with the token as password."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, ValueError):
            return ""
    return ""


# --- the application ---------------------------------------------------------------------------
class HttpApi:
    """The request handlers, the limits they enforce, and request counters for Metrics."""

    def __init__(self, transcriber: Transcriber, settings: Settings, intents: Any = None,
                 run_health: RunHealth | None = None) -> None:
        from faster_whisper.tokenizer import _LANGUAGE_CODES  # the codes Whisper's tokenizer knows

        self.transcriber = transcriber
        self.run_health = run_health
        self._token = settings.http_token.get_secret_value().encode()
        self._intents = intents
        self.settings = settings
        self.limits = ConnectionLimits.from_settings(settings)
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
        started = time.monotonic()
        connection = request.protocol if isinstance(request.protocol, _Connection) else None
        if connection is not None:
            connection.request_started()  # its headers are in: the header deadline no longer runs
        try:
            if self._token and not self._authorized(request):
                response: web.StreamResponse = self._error(401, "this service needs its access token (http_token): "
                                                                "Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = 'Basic realm="rtcore", charset="UTF-8"'
            else:
                response = await self._answer(request, handler)
            self.counters[f"responses_{response.status}"] += 1
            endpoint = endpoint_label(request)
            telemetry.HTTP_REQUESTS.labels(endpoint=endpoint, status=str(response.status)).inc()
            telemetry.HTTP_DURATION.labels(endpoint=endpoint).observe(time.monotonic() - started)
            if connection is not None and connection.close_after_answer:
                # The rest of a body this slow (or broken) is not worth reading: answer, then close at once.
                with suppress(ConnectionError):
                    await response.prepare(request)
                    await response.write_eof()
                connection.force_close()
            return response
        finally:
            if connection is not None:
                connection.request_finished()

    async def _answer(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        too_large = (f"request body larger than {self.settings.http_max_upload_mb:g} MiB (http_max_upload_mb)")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._error(413, too_large)  # said by its Content-Length: refused before reading any of it
        try:
            return await handler(request)
        except ApiError as exc:
            return self._error(exc.status, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return self._error(413, too_large)
        except web.HTTPException as exc:  # the router's 404 and 405
            if exc.status < 400:
                raise
            return self._error(exc.status, f"{exc.reason}: {request.method} {request.path}")
        except ConnectionError:  # the client left before its body was read: nobody to answer
            self.counters["clients_gone"] += 1
            log.info("%s %s: the client closed the connection before its body was read", request.method,
                     request.path)
            return _json_response({"error": "the connection was closed before the body was read"}, status=400)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return self._error(500, "internal error (see the service's log)")

    def _error(self, status: int, message: str) -> web.Response:
        if status >= 500 and status != 503:  # 503 is load, not a fault
            log.error("HTTP %d: %s", status, message)
        else:
            log.info("HTTP %d: %s", status, message)
        return _json_response({"error": message}, status=status)

    def _authorized(self, request: web.Request) -> bool:
        # `?token=`: a browser's EventSource (the live view's stream) cannot send a header.
        given = bearer_or_basic_token(request.headers.get("Authorization", "")) or request.query.get("token", "")
        return hmac.compare_digest(given.encode(), self._token)

    # --- handlers ------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return await self._health(ready=False)

    async def ready(self, request: web.Request) -> web.Response:
        return await self._health(ready=True)

    async def _health(self, ready: bool) -> web.Response:
        body: dict[str, Any] = {"status": "ok", "model": model_name(self.settings), "device": self.settings.asr_device,
                                **self.transcriber.health()}
        if self.run_health is None:
            return _json_response(body)
        verdict = await self.run_health.assess()
        good = verdict.ready if ready else verdict.healthy
        body.update(verdict.body)
        body["status"] = "ok" if good else "unavailable"
        body["ready"] = verdict.ready
        return _json_response(body, status=200 if good else 503)

    async def transcribe(self, request: web.Request) -> web.Response:
        """Seed's /transcribe: multipart `audio` file and optional `language`."""
        started = time.monotonic()
        if request.content_type != "multipart/form-data":
            raise BadRequest("expected a multipart/form-data body with a file field 'audio' "
                             f"(got {request.content_type or 'no content type'})")
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                form = await request.post()
        except TimeoutError:
            raise self._body_timeout(request) from None
        except (ValueError, HttpProcessingError, RequestPayloadError) as exc:  # a malformed multipart body
            if isinstance(exc, RequestPayloadError):
                _close_after_answer(request)
            raise BadRequest(f"malformed multipart body: {_one_line(str(exc))}") from None
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
        payload = _parse_json(await self._body(request))
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

        payload = _parse_json(await self._body(request))
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
    async def _body(self, request: web.Request) -> bytes:
        """The whole body, within the body deadline (aiohttp refuses one over client_max_size: 413)."""
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                return await request.read()
        except TimeoutError:
            raise self._body_timeout(request) from None
        except RequestPayloadError as exc:  # e.g. a Content-Encoding it is not in, a broken chunked body
            _close_after_answer(request)
            raise BadRequest(f"request body could not be read: {_one_line(str(exc))}") from None

    def _body_timeout(self, request: web.Request) -> RequestTimeout:
        _close_after_answer(request)
        return RequestTimeout(f"request body not received within {self.limits.body_timeout_s:g} s "
                              "(http_body_timeout_s)")

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


def _close_after_answer(request: web.Request) -> None:
    """The rest of this request's body is not worth reading (too slow, or broken): close once answered."""
    if isinstance(request.protocol, _Connection):
        request.protocol.close_after_answer = True


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None


API_KEY = web.AppKey("api", HttpApi)


def create_app(transcriber: Transcriber, settings: Settings, intents: Any = None,
               run_health: RunHealth | None = None) -> web.Application:
    """The service as an aiohttp application (`app[API_KEY].metrics()` for the counters).
    `intents`: the IntentSource behind /embedding_main/ and /embedding_faqs/ (default: embedded).
    `run_health`: the run's health checks behind /health and /ready (None: the seed's plain answer)."""
    api = HttpApi(transcriber, settings, intents, run_health)
    # aiohttp refuses larger bodies itself (413, turned into JSON by the middleware).
    app = web.Application(client_max_size=api.max_body_bytes, middlewares=[api.errors_as_json])
    app[API_KEY] = api
    app.router.add_get("/health", api.health)
    app.router.add_get("/ready", api.ready)
    app.router.add_post("/transcribe", api.transcribe)
    app.router.add_post("/whisper", api.whisper)
    # The seed's intent API, so its clients (and rtcore's own HTTP intent client) can use ours.
    app.router.add_post("/embedding_main/", api.embedding_main)
    app.router.add_post("/embedding_faqs/", api.embedding_faqs)
    return app


def listening_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --- listening, with limits on connections ------------------------------------------------------
class HttpServer:
    """The application on a TCP port, each connection held to `limits` (module docstring).

    `start()` returns the bound port; `close()` stops accepting, then lets requests in flight finish
    for up to `shutdown_timeout_s`. Counters (`connections_refused`, `connections_timed_out`,
    `bad_http_requests`, `responses_400`...) go into the application's HttpApi counters."""

    def __init__(self, app: web.Application, limits: ConnectionLimits | None = None,
                 shutdown_timeout_s: float = 5.0) -> None:
        self.app = app
        self.limits = limits or (app[API_KEY].limits if API_KEY in app else ConnectionLimits())
        self.counters: Counter[str] = app[API_KEY].counters if API_KEY in app else Counter()
        self.open_connections = 0
        self._runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout_s)
        self._listener: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self._runner.setup()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # aiohttp's own idle timer is only a backstop, a second after ours: with the same deadline
        # whichever fired first closed the connection, and one cut by aiohttp's went uncounted.
        keepalive = self.limits.header_timeout_s + 1.0

        def connection() -> _Connection:
            return _Connection(self, server, loop=loop, keepalive_timeout=keepalive)

        self._listener = await loop.create_server(connection, host, port, backlog=128)
        self.port = int(self._listener.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        await self._runner.cleanup()  # open connections: in-flight requests get the shutdown timeout


class _Connection(web.RequestHandler):
    """aiohttp's protocol for one connection, held to its server's limits; HTTP-layer errors as JSON."""

    def __init__(self, owner: HttpServer, manager: web.Server, *, loop: asyncio.AbstractEventLoop,
                 **kwargs: Any) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._owner = owner
        self._timer_loop = loop
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None
        self.close_after_answer = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        owner = self._owner
        if owner.open_connections >= owner.limits.max_connections:
            owner.counters["connections_refused"] += 1
            if owner.counters["connections_refused"] & (owner.counters["connections_refused"] - 1) == 0:
                log.warning("HTTP connection refused: %d open already (http_max_connections); %d refused so far",
                            owner.open_connections, owner.counters["connections_refused"])
            cast(asyncio.Transport, transport).abort()  # never handed to aiohttp: nothing to clean there
            return
        self._admitted = True
        owner.open_connections += 1
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._owner.open_connections -= 1
        self._disarm()
        super().connection_lost(exc)

    def request_started(self) -> None:
        self._disarm()

    def request_finished(self) -> None:
        if self._admitted:
            self._arm()  # the next request's headers (or an idle keep-alive) are timed from now

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self._timer_loop.call_later(self._owner.limits.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        self._owner.counters["connections_timed_out"] += 1
        log.debug("HTTP connection closed: no complete request within %g s (http_header_timeout_s)",
                  self._owner.limits.header_timeout_s)
        self.force_close()

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A request the HTTP layer refused (400: unparsable) or a failure outside our middleware:
        JSON like every other error, logged without a traceback unless it is ours (500)."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        counters = self._owner.counters
        counters[f"responses_{status}"] += 1
        if status >= 500:
            log.error("HTTP %d outside the handlers", status, exc_info=exc)
            text = "internal error (see the service's log)"
        else:
            counters["bad_http_requests"] += 1
            text = _one_line(message or (exc and str(exc)) or HTTPStatus(status).phrase)
            log.info("HTTP %d: request refused by the HTTP parser: %s", status, text)
        response = _json_response({"error": text}, status=status)
        response.force_close()
        return response
