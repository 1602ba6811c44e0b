"""`AriSimulator`: an HTTP + events-WebSocket server that answers like Asterisk 22's ARI, and drives a call.

The REST API lives under `/ari` (base `url`, e.g. http://127.0.0.1:PORT/ari); the events WebSocket is
`/ari/events?app=NAME[,NAME2]&subscribeAll=false`. Credentials are checked before anything else,
WebSocket upgrades included: an HTTP Basic header (it wins when present) or `api_key=user:pass`;
otherwise 401 `{"message":"Authentication required"}` with `WWW-Authenticate: Basic realm="Asterisk
REST Interface"`. Then routing and arguments (swagger.py), then the operation (rest.py,
rest_bridges.py). Replies are compact JSON with Asterisk's status, reason phrase and `Server` header.

The test (or `rtcore launch`) side drives the PBX: `place_call`, `send_dtmf`, `hangup` (the caller
hangs up), `finish_media` (a media item plays to its end now), `fail_playbacks` (media that fail as a
broken file does), `drop_event_sockets`, `inject_frames` (raw text frames, malformed ones included, on
the events WebSockets: what no Asterisk sends, for abuse tests); and inspects it:
`requests`, `events`, `channel()`, `playbacks`..., and `wait_for*` to wait without sleeping.

Test hooks over HTTP live outside `/ari` (so the ARI routes and their swagger checks never see them),
behind the same credentials: `POST /_sim/events` with `{"app": NAME, "frames": [text, ...]}` sends each
frame as it is to the WebSockets holding NAME and answers `{"frames": n, "sockets": m}`.

Usage:
    async with AriSimulator("voicebot", "asterisk", "secret") as sim:
        ... connect a client to sim.url / sim.events_url() ...
        await sim.wait_for_subscriber()
        caller_id = await sim.place_call("0612345678")
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Callable, Collection
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from aiohttp import hdrs, web

from rtcore.sim.ari import rest_bridges, rest_sounds  # noqa: F401  (they register their handlers)
from rtcore.sim.ari.events import ChangeNotifier, Event, EventHub, EventSubscriber, encode, trim
from rtcore.sim.ari.media import MediaHooks
from rtcore.sim.ari.pbx import SimulatedPbx
from rtcore.sim.ari.rest import HANDLERS, Reply
from rtcore.sim.ari.sounds import SoundLibrary
from rtcore.sim.ari.state import (
    ASTERISK_VERSION,
    DEFAULT_ASTERISK_ID,
    Bridge,
    Channel,
    LiveRecording,
    Playback,
    StoredRecording,
)
from rtcore.sim.ari.swagger import ApiDocs, AriError, Operation, parse_arguments

log = logging.getLogger(__name__)

T = TypeVar("T")
ARI_PREFIX = "/ari"
SIM_PREFIX = "/_sim"  # test hooks, outside ARI
AUTH_REQUIRED = AriError(401, "Unauthorized", "Authentication required",
                         {"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'})
DTMF_DIGITS = frozenset("0123456789ABCDabcd*#")
WEBSOCKET_EXIT_TIMEOUT_S = 5.0


class RequestRecord(NamedTuple):
    """One REST request or WebSocket upgrade as the simulator answered it (api_key left out of `query`)."""

    method: str
    path: str
    query: dict[str, str]
    status: int


class AriSimulator:
    def __init__(
        self,
        app_name: str = "voicebot",
        user: str = "asterisk",
        password: str = "asterisk",
        *,
        playback_duration: Callable[[str], float] | None = None,
        sounds: Collection[str] | Callable[[str], bool] | None = None,
        sounds_dir: Path | None = None,
        hooks: MediaHooks | None = None,
        api_docs: Path | None = None,
        replace_apps: bool = True,
        asterisk_id: str = DEFAULT_ASTERISK_ID,
        history_limit: int | None = None,
        stasis_delay_s: tuple[float, float] | None = (0.0, 0.05),
        seed: int | None = None,
    ) -> None:
        """`playback_duration(media_uri)` gives each media item's length in seconds (default 1 s, a tone
        until stopped); `sounds_dir` is Asterisk's sounds directory: `sound:` media are found, picked
        and opened there as Asterisk does (sounds.py) and last as long as the file, and GET /sounds lists
        it; without it, `sounds` says which `sound:` names exist (names, also listed by GET /sounds as if
        each were `<name>.sln16`; or a predicate; default: all but "no-such*");
        `hooks` replaces the timing-only media (and then `playback_duration` is unused);
        `replace_apps` (default, as Asterisk) makes a newer WebSocket take an application over (False:
        sockets share it);
        `history_limit` bounds the events and requests kept for inspection (None: all, for tests;
        a long-running embedded PBX keeps the last ones, with absolute `since` indices);
        `stasis_delay_s` is the range (seconds, uniform, `seed`ed) after which a snoop or externalMedia
        channel enters Stasis, after the REST reply as on a real Asterisk; None: at once, before the reply."""
        self.app_name = app_name
        self.user = user
        self.password = password
        self.docs = ApiDocs.load(api_docs)
        self.notifier = ChangeNotifier()
        self.hub = EventHub(asterisk_id, self.notifier, replace_apps=replace_apps, history_limit=history_limit)
        self.pbx = SimulatedPbx(self.hub, hooks or MediaHooks(playback_duration), SoundLibrary(sounds_dir, sounds),
                                stasis_delay_s, seed)
        self.requests: list[RequestRecord] = []
        self.requests_trimmed = 0  # forgotten before requests[0] (history_limit)
        self.unknown_params: list[tuple[str, str, str]] = []  # (method, path, name): accepted and ignored
        self._runner: web.AppRunner | None = None
        self._base = ""
        self._sockets: dict[EventSubscriber, asyncio.Future[None]] = {}

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", ARI_PREFIX + "{tail:.*}", self._dispatch)
        app.router.add_post(SIM_PREFIX + "/events", self._inject_events)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self._base = f"{bound_host}:{bound_port}"
        log.info("ARI simulator listening", extra={"url": self.url, "api_docs": self.docs.origin})

    async def stop(self) -> None:
        await self.drop_event_sockets()
        await self.pbx.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """The REST base, e.g. http://127.0.0.1:PORT/ari."""
        return f"http://{self._base}{ARI_PREFIX}"

    def events_url(self, app: str | None = None, *, subscribe_all: bool = False) -> str:
        """The events WebSocket URL (without credentials)."""
        return (f"ws://{self._base}{ARI_PREFIX}/events?app={app or self.app_name}"
                f"&subscribeAll={'true' if subscribe_all else 'false'}")

    # --- driving the PBX -----------------------------------------------------------------------
    async def place_call(self, caller_number: str = "0612345678", caller_name: str = "", exten: str = "100",
                         args: list[str] | None = None, *, app: str | None = None, endpoint: str = "client",
                         context: str = "from-sip", language: str = "en", native_format: str = "ulaw") -> str:
        """A SIP caller dials `exten` and enters Stasis(app, args or [exten]); returns its channel id.

        `language` is the channel's (where its `sound:` files are looked up first); `native_format` its
        codec (what a played file is translated to; real callers are 8 kHz G.711 µ-law).
        Raises StasisAppNotRegistered when no events WebSocket holds the application, as Asterisk fails then."""
        channel = self.pbx.place_call(app or self.app_name, caller_number, caller_name, exten,
                                      [exten] if args is None else list(args), endpoint, context,
                                      language, native_format)
        return channel.id

    async def send_dtmf(self, channel_id: str, digit: str, duration_ms: int = 100) -> None:
        if len(digit) != 1 or digit not in DTMF_DIGITS:
            raise ValueError(f"DTMF digit must be one of 0-9, A-D, * or #, not {digit!r}")
        self.pbx.send_dtmf(self._existing(channel_id), digit, duration_ms)

    async def hangup(self, channel_id: str) -> None:
        """The far end hangs up (a caller's BYE)."""
        self.pbx.hangup(self._existing(channel_id), by_app=False)

    async def finish_media(self, playback_id: str) -> None:
        """The playing media item of `playback_id` reaches its end now (natural end, not a stop)."""
        self.pbx.media.finish_media(playback_id)

    def fail_playbacks(self, match: Callable[[str], bool], times: int = 1) -> None:
        """The next `times` media items whose URI matches fail: PlaybackStarted, then PlaybackFinished
        `failed` (PlaybackContinuing if more items follow in the same playback), as a broken file does."""
        self.pbx.media.fail_playbacks(match, times)

    async def drop_event_sockets(self) -> None:
        """Drops every events WebSocket without a close frame, as a crash or network cut would."""
        dropping = list(self._sockets.items())
        for subscriber, _ in dropping:
            self.hub.remove(subscriber)
            subscriber.abort()
        if dropping:
            await asyncio.wait([ended for _, ended in dropping], timeout=WEBSOCKET_EXIT_TIMEOUT_S)

    def inject_frames(self, frames: list[str], app: str | None = None) -> int:
        """Sends each text frame as it is (not JSON, not an event, anything) to every events WebSocket
        holding `app` (default: ours) or subscribed to all, after the events already queued there;
        nothing enters `events`. Returns how many sockets got them."""
        target = app or self.app_name
        sockets = [s for s in self.hub.subscribers if s.holds(target) or s.subscribe_all]
        for subscriber in sockets:
            for frame in frames:
                subscriber.outbox.put_nowait(frame)
        return len(sockets)

    def _existing(self, channel_id: str) -> Channel:
        channel = self.pbx.channels.get(channel_id)
        if channel is None:
            raise KeyError(f"no channel {channel_id!r}")
        return channel

    # --- inspection ----------------------------------------------------------------------------
    @property
    def events(self) -> list[Event]:
        """Every event emitted (the last ones with a history_limit), in order, as sent (with its `application`)."""
        return self.hub.history

    def event_types(self, since: int = 0) -> list[str]:
        return [event["type"] for event in self.hub.history[max(0, since - self.hub.trimmed):]]

    def channel(self, channel_id: str) -> Channel | None:
        return self.pbx.channels.get(channel_id)

    @property
    def channels(self) -> dict[str, Channel]:
        return dict(self.pbx.channels)

    def bridge(self, bridge_id: str) -> Bridge | None:
        return self.pbx.bridges.get(bridge_id)

    @property
    def bridges(self) -> dict[str, Bridge]:
        return dict(self.pbx.bridges)

    def playback(self, playback_id: str) -> Playback | None:
        return self.pbx.media.playbacks.get(playback_id)

    @property
    def playbacks(self) -> dict[str, Playback]:
        return dict(self.pbx.media.playbacks)

    @property
    def live_recordings(self) -> dict[str, LiveRecording]:
        return dict(self.pbx.media.live_recordings)

    @property
    def stored_recordings(self) -> dict[str, StoredRecording]:
        return dict(self.pbx.media.stored_recordings)

    def subscriber_count(self, app: str | None = None) -> int:
        return self.hub.subscriber_count(app)

    async def wait_for(self, predicate: Callable[[Event], bool], timeout: float = 5.0, since: int = 0) -> Event:
        """The first event from index `since` on (past or future) that matches `predicate`."""
        return await self.hub.wait_for_event(predicate, timeout, since)

    wait_for_event = wait_for

    async def wait_for_request(self, predicate: Callable[[RequestRecord], bool], timeout: float = 5.0,
                               since: int = 0) -> RequestRecord:
        def check() -> RequestRecord | None:
            return next((r for r in self.requests[max(0, since - self.requests_trimmed):] if predicate(r)), None)

        return await self.notifier.wait(check, timeout, lambda: f"last requests: {self.requests[-5:]}")

    async def wait_until(self, condition: Callable[[], T | None], timeout: float = 5.0) -> T:
        """Until `condition()` is truthy; re-checked at every event, request and socket change."""
        return await self.notifier.wait(condition, timeout, lambda: f"condition {condition!r} stayed false")

    async def wait_for_subscriber(self, app: str | None = None, count: int = 1, timeout: float = 5.0) -> None:
        await self.wait_until(lambda: self.hub.subscriber_count(app or self.app_name) >= count, timeout)

    # --- HTTP ----------------------------------------------------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            return _basic_credentials(header) == (self.user, self.password)
        user, separator, password = request.query.get("api_key", "").partition(":")
        return bool(separator) and (user, password) == (self.user, self.password)

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        tail = request.rel_url.raw_path[len(ARI_PREFIX):]
        if tail and not tail.startswith("/"):
            raise web.HTTPNotFound()  # /arifoo is not ARI's
        try:
            if not self._authorized(request):
                raise AUTH_REQUIRED
            match = self.docs.route(request.method, tail)
            if match.operation is None:  # OPTIONS
                reply = Reply(204, headers={"Allow": match.node.allow_header()})
            elif match.operation.websocket:
                return await self._events_socket(request, match.operation)
            else:
                reply = await self._invoke(request, match.operation, match.path_params)
        except AriError as error:
            reply = Reply(error.status, {"message": error.message}, error.reason, error.headers)
        self._record(request, reply.status)
        return _response(reply)

    async def _invoke(self, request: web.Request, operation: Operation, path_params: dict[str, str]) -> Reply:
        body, form = await _read_body(request)
        args = parse_arguments(operation, [*request.query.items(), *form], path_params, body)
        for name in args.ignored:
            self.unknown_params.append((request.method, request.path, name))
            log.debug("unknown parameter ignored", extra={"operation": operation.key, "param": name})
        handler = HANDLERS.get(operation.key)
        if handler is None:
            log.warning("ARI operation not simulated", extra={"operation": operation.key})
            raise AriError(501, "Not Implemented", f"{operation.key} is not implemented by the ARI simulator")
        try:
            return handler(self.pbx, args)
        except AriError:
            raise
        except Exception:
            log.exception("simulator handler failed", extra={"operation": operation.key})
            raise AriError(500, "Internal Server Error", "Internal Server Error") from None

    async def _inject_events(self, request: web.Request) -> web.Response:
        """POST /_sim/events {"app", "frames": [str, ...]}: inject_frames over HTTP (a test hook)."""
        try:
            if not self._authorized(request):
                raise AUTH_REQUIRED
            try:
                # Not request.read(): its 1 MiB limit would refuse the enormous frames a test sends.
                body = json.loads(await request.content.read())
            except ValueError:
                raise AriError(400, "Bad Request", "Error parsing request body") from None
            frames = body.get("frames") if isinstance(body, dict) else None
            app = body.get("app") if isinstance(body, dict) else None
            if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
                raise AriError(400, "Bad Request", "'frames' must be a list of strings")
            try:
                for frame in frames:
                    frame.encode()
            except UnicodeEncodeError:  # a text frame is UTF-8: a lone surrogate cannot be sent
                raise AriError(400, "Bad Request", "'frames' must be valid UTF-8 text") from None
            if app is not None and not isinstance(app, str):
                raise AriError(400, "Bad Request", "'app' must be a string")
            reply = Reply(200, {"frames": len(frames), "sockets": self.inject_frames(frames, app)})
        except AriError as error:
            reply = Reply(error.status, {"message": error.message}, error.reason, error.headers)
        return _response(reply)  # not in `requests`: those are the ARI requests

    def _record(self, request: web.Request, status: int) -> None:
        query = {name: value for name, value in request.query.items() if name != "api_key"}
        self.requests.append(RequestRecord(request.method, request.path, query, status))
        self.requests_trimmed += trim(self.requests, self.hub.history_limit)
        self.notifier.changed()

    async def _events_socket(self, request: web.Request, operation: Operation) -> web.StreamResponse:
        args = parse_arguments(operation, request.query.items(), {}, None)
        websocket = web.WebSocketResponse(protocols=("ari",))
        if not websocket.can_prepare(request).ok:
            self._record(request, 426)
            return web.Response(status=426, reason="Upgrade Required", text="Upgrade Required")
        apps = args.texts("app")
        if not apps:
            self._record(request, 400)
            return _response(Reply(400, {"message": "Missing param 'app'"}, "Bad Request"))
        subscriber = EventSubscriber(apps, subscribe_all=args.flag("subscribeAll"))
        transport = request.transport
        subscriber.abort = transport.abort if transport is not None else subscriber.abort
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sockets[subscriber] = ended
        # Registered before the 101 goes out: once a client sees its upgrade, calls reach it.
        self.hub.add(subscriber)
        self._record(request, 101)
        sender: asyncio.Task[None] | None = None
        try:
            await websocket.prepare(request)
            sender = asyncio.create_task(_send_events(websocket, subscriber))
            async for _message in websocket:
                pass  # the client has nothing to say on this socket that the simulator acts on
        finally:
            self.hub.remove(subscriber)
            if sender is not None:
                await asyncio.wait([sender], timeout=WEBSOCKET_EXIT_TIMEOUT_S)
                sender.cancel()
            del self._sockets[subscriber]
            ended.set_result(None)
            self.notifier.changed()
        return websocket


async def _send_events(websocket: web.WebSocketResponse, subscriber: EventSubscriber) -> None:
    """Writes the subscriber's outbox in order; events emitted before the 101 was written waited there."""
    while (text := await subscriber.outbox.get()) is not None:
        try:
            await websocket.send_str(text)
        except (ConnectionError, RuntimeError):
            return


async def _read_body(request: web.Request) -> tuple[Any, list[tuple[str, str]]]:
    """The JSON body (parameters and `variables`), or form fields merged into the query, as res_ari reads them."""
    if not request.body_exists:
        return None, []
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        return None, [(name, str(value)) for name, value in form.items()]
    raw = await request.read()
    if request.content_type != "application/json" or not raw.strip():
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        raise AriError(400, "Bad Request", "Error parsing request body") from None


def _response(reply: Reply) -> web.Response:
    headers = {"Server": f"Asterisk/{ASTERISK_VERSION}", **reply.headers}
    reason = reply.reason or HTTPStatus(reply.status).phrase
    if reply.body is None:
        return web.Response(status=reply.status, reason=reason, headers=headers)
    return web.Response(status=reply.status, reason=reason, headers=headers,
                        body=encode(reply.body).encode(), content_type="application/json")


def _basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic Authorization header, None when it is not one."""
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None
    user, separator, password = decoded.partition(":")
    return (user, password) if separator else None

