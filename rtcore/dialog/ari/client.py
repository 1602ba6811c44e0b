"""Asterisk ARI client: REST requests and the events WebSocket (asyncio, aiohttp).

Every request has its own timeout and raises AriError on failure, so an error on one call's
request is that call's problem only. The events stream reconnects with exponential backoff when
the WebSocket drops; each time it (re)connects it first yields a `{"type": "RtcoreConnected",
"reconnect": bool}` marker, so the controller can find out what it does not know (Asterisk does
not replay events: a call that arrived or ended meanwhile, or, for a restarted process, every
call in progress).

Only well-formed events reach the controller: a frame that is not a JSON object, has no string
`type`, belongs to another application, whose `channel`, `playback`, `bridge`, `args` or DTMF
`digit` are not what Asterisk sends (`malformed_reason`), or which escapes a lone surrogate (text
no UTF-8 write can hold) is counted (`malformed_events`), logged and dropped, so nothing a frame
holds can raise in the controller, act on a call, or poison what is written about it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CONNECTED = "RtcoreConnected"
NOT_IN_STASIS = "not in Stasis application"
# A frame larger than this breaks the WebSocket (aiohttp's default, explicit): reconnected and resynchronised.
MAX_EVENT_BYTES = 4 << 20
DTMF_DIGITS = frozenset("0123456789ABCDabcd*#")
# Objects an event may carry whose fields the controller reads: each must be a JSON object whose `id`,
# when present, is a non-empty string.
_OBJECT_FIELDS = ("channel", "playback", "bridge", "recording", "peer", "replace_channel")
_STRING_FIELDS = {"channel": ("id", "name", "state"), "playback": ("id", "state", "media_uri", "target_uri")}
_NEEDS = {"StasisStart": "channel", "StasisEnd": "channel", "ChannelDtmfReceived": "channel",
          "ChannelHangupRequest": "channel", "PlaybackStarted": "playback", "PlaybackFinished": "playback"}
_MALFORMED_LOGGED = 10  # the first ones are logged one by one, then every 1000th
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class AriError(Exception):
    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"ARI {method} {path}: {status or 'no answer'} {message}")
        self.method = method
        self.path = path
        self.status = status
        self.message = message

    @property
    def not_in_stasis(self) -> bool:
        """Asterisk's 409 (channel operations) or 422 (bridge operations) for a channel that has not
        entered the application yet: helper channels enter Stasis asynchronously (FACTS.md)."""
        return self.status in (409, 422) and NOT_IN_STASIS.lower() in self.message.lower()

    def about_channel(self, channel_id: str) -> bool:
        """Whether the request was on channel `channel_id` (e.g. POST /channels/<id>/answer)."""
        return self.path == f"/channels/{channel_id}" or self.path.startswith(f"/channels/{channel_id}/")

    @property
    def gone(self) -> bool:
        """The channel no longer exists (404), or has left the application (409 not in Stasis)."""
        return self.status == 404 or self.not_in_stasis


class AriClient:
    def __init__(self, base_url: str, user: str, password: str, app: str, timeout_s: float = 5.0,
                 backoff_max_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.app = app
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._headers = {"Authorization": f"Basic {token}"}
        self._session: aiohttp.ClientSession | None = None
        self._closing = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.malformed_events = 0  # frames dropped by malformed_reason (or not JSON)

    async def __aenter__(self) -> AriClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        self._closing.set()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    # --- REST ---------------------------------------------------------------------------------
    async def request(self, method: str, path: str, **params: Any) -> Any:
        query = {k: _query_value(v) for k, v in params.items() if v is not None}
        url = f"{self.base_url}{path}"
        try:
            async with self.session.request(method, url, params=query,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                text = await resp.text()
                if resp.status >= 400:
                    try:
                        message = json.loads(text).get("message", text)
                    except ValueError:
                        message = text
                    raise AriError(method, path, resp.status, message)
                return json.loads(text) if text else None
        except TimeoutError:
            raise AriError(method, path, 0, f"timed out after {self.timeout_s:.1f} s") from None
        except aiohttp.ClientError as exc:
            raise AriError(method, path, 0, str(exc) or type(exc).__name__) from None

    async def info(self) -> Any:
        return await self.request("GET", "/asterisk/info")

    async def answer(self, channel_id: str) -> None:
        await self.request("POST", f"/channels/{channel_id}/answer")

    async def hangup(self, channel_id: str) -> None:
        await self.request("DELETE", f"/channels/{channel_id}")

    async def continue_in_dialplan(self, channel_id: str, context: str | None = None, extension: str | None = None,
                                   priority: int | None = None, label: str | None = None) -> None:
        """The channel leaves our application (StasisEnd) and goes on in the dialplan: by default at
        the priority after its Stasis(). 404: no such channel; 409: not in a Stasis application;
        412: in an invalid state (an outbound channel not answered yet)."""
        await self.request("POST", f"/channels/{channel_id}/continue", context=context, extension=extension,
                           priority=priority, label=label)

    async def play(self, channel_id: str, media: str, playback_id: str) -> Any:
        return await self.request("POST", f"/channels/{channel_id}/play", media=media, playbackId=playback_id)

    async def stop_playback(self, playback_id: str) -> None:
        await self.request("DELETE", f"/playbacks/{playback_id}")

    async def snoop(self, channel_id: str, spy: str, app_args: str, snoop_id: str) -> Any:
        return await self.request("POST", f"/channels/{channel_id}/snoop", spy=spy, app=self.app,
                                  appArgs=app_args, snoopId=snoop_id)

    async def record(self, target: str, target_id: str, name: str, fmt: str = "wav") -> Any:
        """Record a channel or a bridge (`target` "channels" or "bridges")."""
        return await self.request("POST", f"/{target}/{target_id}/record", name=name, format=fmt, ifExists="overwrite")

    async def external_media(self, external_host: str, data: str, channel_id: str, fmt: str = "slin16") -> Any:
        return await self.request("POST", "/channels/externalMedia", app=self.app, external_host=external_host,
                                  format=fmt, encapsulation="rtp", transport="udp", data=data, channelId=channel_id)

    async def create_bridge(self, bridge_id: str, name: str) -> Any:
        return await self.request("POST", "/bridges", type="mixing", bridgeId=bridge_id, name=name)

    async def add_channels(self, bridge_id: str, channel_ids: list[str]) -> None:
        await self.request("POST", f"/bridges/{bridge_id}/addChannel", channel=channel_ids)

    async def delete_bridge(self, bridge_id: str) -> None:
        await self.request("DELETE", f"/bridges/{bridge_id}")

    async def channels(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/channels")
        return list(result or [])

    async def bridges(self) -> list[dict[str, Any]]:
        result = await self.request("GET", "/bridges")
        return list(result or [])

    async def sounds(self) -> list[dict[str, Any]]:
        """GET /sounds; Asterisk answers 404 when it has no sound at all: an empty list."""
        try:
            result = await self.request("GET", "/sounds")
        except AriError as exc:
            if exc.status == 404:
                return []
            raise
        return list(result or [])

    # --- events -------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Events of our application until close(); reconnects with backoff, forever."""
        ws_url = self.base_url.replace("http://", "ws://").replace("https://", "wss://") + "/events"
        backoff = 0.2
        first = True
        while not self._closing.is_set():
            try:
                async with self.session.ws_connect(ws_url, params={"app": self.app, "subscribeAll": "false"},
                                                   heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                                                   max_msg_size=MAX_EVENT_BYTES) as ws:
                    self._ws = ws
                    self.connected.set()
                    backoff = 0.2
                    if not first:
                        self.reconnects += 1
                        log.warning("ARI events WebSocket reconnected")
                    yield {"type": CONNECTED, "reconnect": not first}
                    first = False
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            event = self._parse_event(msg.data)
                            if event is not None:
                                yield event
                        elif msg.type == aiohttp.WSMsgType.ERROR:
                            log.warning("ARI events WebSocket failed: %s", ws.exception())
                            break
                        elif msg.type == aiohttp.WSMsgType.CLOSED:
                            break
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    log.error("ARI refused our credentials (401): check ari_user / ari_password")
                elif exc.status == 404 and not self.base_url.endswith("/ari"):
                    log.error("ARI events WebSocket not found (404) at %s: the ARI base URL ends in /ari", ws_url)
                else:
                    log.error("ARI events WebSocket refused: %s", exc)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("ARI events WebSocket unavailable: %s", exc or type(exc).__name__)
            finally:
                self._ws = None
                self.connected.clear()
            if self._closing.is_set():
                break
            try:
                await asyncio.wait_for(self._closing.wait(), timeout=backoff)
            except TimeoutError:
                pass
            backoff = min(backoff * 2, self.backoff_max_s)

    def _parse_event(self, text: str) -> dict[str, Any] | None:
        """The event a text frame holds, or None (counted, logged) when it is not a well-formed one."""
        event: Any = None
        try:
            event = json.loads(text)
        except (ValueError, RecursionError):  # nested too deep for the parser: not an event either
            reason: str | None = "not JSON"
        else:
            reason = malformed_reason(event, self.app)
            if reason is None and _SURROGATE_ESCAPE.search(text) and not _encodable(event):
                # JSON can escape what UTF-8 cannot hold; a caller number with one would break every
                # later write of its lead (Redis encodes as UTF-8).
                reason = "a lone surrogate escape (not UTF-8 text)"
        if reason is None:
            return dict(event)
        self.malformed_events += 1
        if self.malformed_events <= _MALFORMED_LOGGED or self.malformed_events % 1000 == 0:
            # An event carries callers' numbers: its text only at DEBUG.
            log.warning("ARI event dropped (%s; %d so far)", reason, self.malformed_events)
            log.debug("the dropped ARI event: %.200s", text)
        return None


def malformed_reason(event: Any, app: str | None = None) -> str | None:
    """Why `event` (parsed JSON) is not an ARI event the controller can act on safely; None if it is.

    Checked: a JSON object with a non-empty string `type`; `application`, when present, a string and
    one of `app` (comma-separated; with subscribeAll=false Asterisk sends only ours); `channel`,
    `playback`, `bridge` (and the other objects events carry) JSON objects whose `id` is a non-empty
    string, their names and states strings; `args` a list of strings; a DTMF `digit` one of 0-9 A-D
    * #; and the object each event the controller acts on is about (StasisStart's channel,
    PlaybackFinished's playback...) present."""
    if not isinstance(event, dict):
        return f"JSON {type(event).__name__}, not an object"
    kind = event.get("type")
    if not isinstance(kind, str) or not kind:
        return "no type" if kind is None else "type is not a non-empty string"
    application = event.get("application")
    if application is not None and (not isinstance(application, str)
                                    or (app is not None and application not in app.split(","))):
        return f"{kind} of another application ({application!r:.40})"
    for name in _OBJECT_FIELDS:
        value = event.get(name)
        if value is None:
            continue
        if not isinstance(value, dict):
            return f"{kind}.{name} is a {type(value).__name__}, not an object"
        object_id = value.get("id")
        if object_id is not None and (not isinstance(object_id, str) or not object_id):
            return f"{kind}.{name}.id is not a non-empty string"
        for field in _STRING_FIELDS.get(name, ()):
            if value.get(field) is not None and not isinstance(value[field], str):
                return f"{kind}.{name}.{field} is not a string"
        if name == "channel" and value.get("caller") is not None and not isinstance(value["caller"], dict):
            return f"{kind}.channel.caller is not an object"
    needed = _NEEDS.get(kind)
    if needed is not None and not isinstance((event.get(needed) or {}).get("id"), str):
        return f"{kind} without a {needed} id"
    args = event.get("args")
    if args is not None and (not isinstance(args, list) or not all(isinstance(a, str) for a in args)):
        return f"{kind}.args is not a list of strings"
    if kind == "ChannelDtmfReceived":
        digit = event.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            return f"ChannelDtmfReceived digit {digit!r:.20} is not one of 0-9 A-D * #"
    return None


def _encodable(event: Any) -> bool:
    try:
        json.dumps(event, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _query_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
