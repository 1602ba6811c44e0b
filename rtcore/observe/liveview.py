"""The live view's routes on an aiohttp application: `add_live_view(app, run)`.

- `GET /` -> redirect to /view; the query string is kept, and /view passes it on to its script, style and
  event stream, so an access token in the page's URL opens all of them;
- `GET /view`: the page (rtcore/observe/static/view.html, with view.js and view.css at /view/view.js and
  /view/view.css; a Content-Security-Policy that allows nothing but this origin);
- `GET /view/snapshot`: `ObservedRun.snapshot()` as JSON, once;
- `GET /view/events`: Server-Sent Events. `retry` first, then event `snapshot` (the whole snapshot) at
  connect and every `snapshot_every_s`; event `call` (one call, as in a snapshot's `calls`) as soon as a
  call changes between two snapshots (its state "ended": it moved to the finished ones); a comment line
  (`: keep-alive`) every `heartbeat_every_s`. A client that goes away is noticed at the next write (within
  a second); one that does not read for `write_timeout_s` is dropped; at the application's shutdown
  (on_shutdown) every stream ends at once, so the server's graceful stop is not held up by them.
  At most `max_clients` streams at once (503 beyond).

Everything runs in the loop that serves the application, which must be the one feeding the ObservedRun.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from contextlib import suppress
from importlib import resources
from typing import Any

from aiohttp import web

from rtcore.observe.state import ObservedRun

log = logging.getLogger(__name__)

SNAPSHOT_EVERY_S = 1.0
HEARTBEAT_EVERY_S = 15.0
WRITE_TIMEOUT_S = 10.0
MAX_CLIENTS = 64
MAX_PENDING_CALLS = 500  # call changes held for one client between two writes; beyond: a whole snapshot
RETRY_MS = 2000  # what the browser waits before reconnecting

STATIC_FILES = {"view.html": "text/html", "view.js": "text/javascript", "view.css": "text/css"}
# The page needs nothing from anywhere else; say so to the browser as well.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}


def _dumps(value: Any) -> str:
    # No NaN (JSON.parse refuses it: ObservedRun never gives one) and no raw newline (SSE data is one line).
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def sse_event(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {_dumps(data)}\n\n".encode()


def static_text(name: str) -> str:
    return (resources.files("rtcore.observe") / "static" / name).read_text(encoding="utf-8")


class _Client:
    """One event stream: the call changes not written yet (latest per call), and its wake-up."""

    def __init__(self) -> None:
        self.pending: dict[str, dict[str, Any]] = {}
        self.resync = False
        self.wake = asyncio.Event()
        self.writing = False
        self.task = asyncio.current_task()

    def call_changed(self, call: dict[str, Any]) -> None:
        call_id = call["call_id"]
        self.pending.pop(call_id, None)  # re-inserted last: written in the order of their last change
        if len(self.pending) >= MAX_PENDING_CALLS:
            self.pending.clear()
            self.resync = True
        else:
            self.pending[call_id] = call
        self.wake.set()


class LiveView:
    """The handlers; `add_live_view` puts them on an application."""

    def __init__(self, run: ObservedRun, *, snapshot_every_s: float = SNAPSHOT_EVERY_S,
                 heartbeat_every_s: float = HEARTBEAT_EVERY_S, write_timeout_s: float = WRITE_TIMEOUT_S,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.run = run
        self.snapshot_every_s = snapshot_every_s
        self.heartbeat_every_s = heartbeat_every_s
        self.write_timeout_s = write_timeout_s
        self.max_clients = max_clients
        self.clients: set[_Client] = set()
        self.closing = False
        self.streams_opened = 0
        self._files = {name: static_text(name).encode() for name in STATIC_FILES}
        self._cached: tuple[tuple[int, int], bytes] | None = None
        run.add_listener(self._changed)

    def _changed(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "call":
            for client in self.clients:
                client.call_changed(data)

    def _snapshot_json(self) -> bytes:
        """One snapshot shared by every stream of the same moment (same message count, same second)."""
        key = (self.run.version, int(asyncio.get_running_loop().time()))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, _dumps(self.run.snapshot()).encode())
        return self._cached[1]

    # --- handlers ----------------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.raw_query_string
        raise web.HTTPFound(f"/view?{query}" if query else "/view")

    async def page(self, request: web.Request) -> web.StreamResponse:
        query = request.rel_url.raw_query_string
        if not query:
            return self._file("view.html")
        # The query string goes to the page's own files too (the script gives it to its event stream):
        # an access token in the page's URL opens all of them.
        query = "?" + html.escape(query, quote=True)
        body = self._files["view.html"].decode()
        for name in ("view.js", "view.css"):
            body = body.replace(f'"/view/{name}"', f'"/view/{name}{query}"')
        return web.Response(text=body, content_type="text/html", headers=PAGE_HEADERS)

    async def script(self, request: web.Request) -> web.StreamResponse:
        return self._file("view.js")

    async def style(self, request: web.Request) -> web.StreamResponse:
        return self._file("view.css")

    def _file(self, name: str) -> web.Response:
        return web.Response(body=self._files[name], content_type=STATIC_FILES[name], charset="utf-8",
                            headers=PAGE_HEADERS)

    async def snapshot(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._snapshot_json(), content_type="application/json", charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self.closing:
            return web.json_response({"error": "shutting down"}, status=503)
        if len(self.clients) >= self.max_clients:
            return web.json_response({"error": f"too many live views open ({self.max_clients})"}, status=503,
                                     headers={"Retry-After": "5"})
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold the events back
        })
        client = _Client()
        self.clients.add(client)
        self.streams_opened += 1
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            await self._write(client, response, f"retry: {RETRY_MS}\n\n".encode()
                              + b"event: snapshot\ndata: " + self._snapshot_json() + b"\n\n")
            client.pending.clear()
            next_snapshot = loop.time() + self.snapshot_every_s
            next_beat = loop.time() + self.heartbeat_every_s
            while not self.closing:
                wait_s = min(next_snapshot, next_beat) - loop.time()
                if wait_s > 0 and not client.wake.is_set():
                    with suppress(TimeoutError):
                        async with asyncio.timeout(wait_s):
                            await client.wake.wait()
                if self.closing:
                    break
                client.wake.clear()
                now = loop.time()
                chunks: list[bytes] = []
                if client.resync or now >= next_snapshot:
                    # The snapshot holds every call as it is now: the changes pending are in it.
                    client.pending.clear()
                    client.resync = False
                    chunks.append(b"event: snapshot\ndata: " + self._snapshot_json() + b"\n\n")
                    next_snapshot = now + self.snapshot_every_s
                else:
                    chunks += [sse_event("call", call) for call in client.pending.values()]
                    client.pending.clear()
                if now >= next_beat:
                    chunks.append(b": keep-alive\n\n")
                    next_beat = now + self.heartbeat_every_s
                if chunks:
                    await self._write(client, response, b"".join(chunks))
        except (ConnectionError, TimeoutError) as exc:  # the client left, or stopped reading
            log.debug("live view stream closed: %s", exc or type(exc).__name__)
        finally:
            self.clients.discard(client)
        return response

    async def _write(self, client: _Client, response: web.StreamResponse, data: bytes) -> None:
        client.writing = True
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await response.write(data)
        finally:
            client.writing = False

    async def on_shutdown(self, app: web.Application) -> None:
        """Every stream ends now: the ones waiting are woken, the ones stuck writing are cancelled."""
        self.closing = True
        for client in list(self.clients):
            client.wake.set()
            if client.writing and client.task is not None:
                client.task.cancel()
        self.run.remove_listener(self._changed)


LIVE_VIEW_KEY = web.AppKey("live_view", LiveView)


def add_live_view(app: web.Application, run: ObservedRun, **options: Any) -> LiveView:
    """Adds the live view's routes to `app` (module docstring); `options`: LiveView's."""
    view = LiveView(run, **options)
    app[LIVE_VIEW_KEY] = view
    app.router.add_get("/", view.root)
    app.router.add_get("/view", view.page)
    app.router.add_get("/view/view.js", view.script)
    app.router.add_get("/view/view.css", view.style)
    app.router.add_get("/view/snapshot", view.snapshot)
    app.router.add_get("/view/events", view.events, allow_head=False)
    app.on_shutdown.append(view.on_shutdown)
    return view
