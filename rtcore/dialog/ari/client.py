"""Asterisk ARI client: REST requests and the events WebSocket (asyncio, aiohttp).

Every request has its own timeout and raises AriError on failure, so an error on one call's
request is that call's problem only. The events stream reconnects with exponential backoff when
the WebSocket drops; each time it (re)connects it first yields a `{"type": "RtcoreConnected",
"reconnect": bool}` marker, so the controller can find out what it does not know (Asterisk does
not replay events: a call that arrived or ended meanwhile, or, for a restarted process, every
call in progress).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CONNECTED = "RtcoreConnected"
NOT_IN_STASIS = "not in Stasis application"


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
                                                   heartbeat=20.0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0)) as ws:
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
                            try:
                                event = json.loads(msg.data)
                            except ValueError:
                                log.warning("ARI sent a non-JSON event: %.200s", msg.data)
                                continue
                            if isinstance(event, dict) and "type" in event:
                                yield event
                        elif msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSED):
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


def _query_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
