"""The live view's HTTP side (rtcore.observe.liveview) over real HTTP: the page and its files (nothing
from anywhere else), the snapshot, the event stream (snapshot at connect, call changes, periodic
snapshots, keep-alives), and how streams end (client gone, application shutdown)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rtcore.observe import ObservedRun, add_live_view
from rtcore.observe.liveview import LIVE_VIEW_KEY, STATIC_FILES, static_text
from rtcore.runtime.messages import CallView

T0 = 1_700_000_000.0


def view(call_id: str, state: str = "ask_zip_code", **fields: Any) -> CallView:
    return CallView(call_id=call_id, state=state, started_at=T0, **fields)


class Links(HTMLParser):
    """Every URL an element of the page points at."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "poster", "data", "srcset", "formaction") and value is not None:
                self.urls.append((tag, name, value))


def test_the_page_references_nothing_outside_the_service() -> None:
    """No CDN, no external font or script: every src/href is a path of this service (or data:)."""
    links = Links()
    links.feed(static_text("view.html"))
    assert links.urls, "the page links its script and style"
    for tag, attribute, url in links.urls:
        assert url.startswith("data:") or (url.startswith("/") and not url.startswith("//")), \
            f"<{tag} {attribute}={url!r}>: not a path of this service"
    # Nor anything the script or the style would fetch from elsewhere.
    for name in STATIC_FILES:
        text = static_text(name)
        assert not re.search(r"(?i)\b(?:https?|wss?|ftp)://", text), f"{name} names an absolute URL"
        assert not re.search(r"(?i)@import|url\(\s*['\"]?(?!data:)", text), f"{name} loads a stylesheet or font"
    # And the script never parses text as HTML (transcripts are what callers said).
    assert not re.search(r"\.(?:inner|outer)HTML\s*\+?=|insertAdjacentHTML|document\.write|\beval\(",
                         static_text("view.js"))


@pytest.fixture
async def client() -> AsyncIterator[tuple[TestClient[web.Request, web.Application], ObservedRun]]:
    run = ObservedRun()
    app = web.Application()
    add_live_view(app, run, snapshot_every_s=3600, heartbeat_every_s=3600)
    async with TestClient(TestServer(app)) as c:
        yield c, run


async def next_event(response: aiohttp.ClientResponse, comments: list[str] | None = None) -> tuple[str, Any]:
    """The next Server-Sent Event (name, parsed data); comment lines go to `comments`."""
    name, data = "message", []
    while True:
        line = (await response.content.readline()).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if not line:
            if data:
                return name, json.loads("\n".join(data))
            continue
        if line.startswith(":"):
            if comments is not None:
                comments.append(line)
        elif line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data.append(line[len("data: "):])


async def test_page_files_snapshot_and_redirect(
        client: tuple[TestClient[web.Request, web.Application], ObservedRun]) -> None:
    c, run = client
    run.handle(view("c1", last_transcript="bonjour"))
    r = await c.get("/view")
    assert r.status == 200 and r.content_type == "text/html"
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    for url, kind in (("/view/view.js", "text/javascript"), ("/view/view.css", "text/css")):
        r = await c.get(url)
        assert r.status == 200 and r.content_type == kind and await r.text()
    r = await c.get("/view/snapshot")
    assert r.status == 200
    snap = await r.json()
    assert snap["calls"][0]["call_id"] == "c1" and snap["calls"][0]["last_transcript"] == "bonjour"
    assert set(snap) >= {"now", "calls", "finished", "counts", "run", "asr", "recent", "series", "latency_target_ms"}
    r = await c.get("/?token=abc", allow_redirects=False)
    assert r.status == 302 and r.headers["Location"] == "/view?token=abc"
    # The page's own files get the same query string (an access token there opens them too), escaped.
    page = await (await c.get("/view", params={"token": 'a"b<c'})).text()
    assert 'src="/view/view.js?token=a%22b%3Cc"' in page and 'href="/view/view.css?token=a%22b%3Cc"' in page


async def test_events_a_snapshot_at_connect_then_each_call_change(
        client: tuple[TestClient[web.Request, web.Application], ObservedRun]) -> None:
    c, run = client
    run.handle(view("c1"))
    r = await c.get("/view/events")
    assert r.status == 200 and r.content_type == "text/event-stream"
    name, snap = await next_event(r)
    assert name == "snapshot" and [call["call_id"] for call in snap["calls"]] == ["c1"]

    run.handle(view("c1", "ask_owner_house", turns=1, last_transcript="75011", last_intent="ok_zipcode"))
    run.handle(view("c2", "init"))
    run.handle(view("c1", "ended", turns=1, ended_at=T0 + 9, outcome="qualified"))
    # The latest change of each call, in the order of their last change.
    name, call = await next_event(r)
    assert name == "call" and call["call_id"] == "c2" and call["state"] == "init"
    name, call = await next_event(r)
    assert name == "call" and call["call_id"] == "c1" and call["state"] == "ended" and call["outcome"] == "qualified"
    assert call["turns"] == 1 and call["duration_s"] == 9.0
    r.close()


async def test_snapshots_repeat_and_keep_alives_are_sent() -> None:
    run = ObservedRun()
    app = web.Application()
    add_live_view(app, run, snapshot_every_s=0.02, heartbeat_every_s=0.02)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/view/events")
        comments: list[str] = []
        names = [(await next_event(r, comments))[0] for _ in range(3)]
        assert names == ["snapshot"] * 3 and ": keep-alive" in comments
        r.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Yield to the loop until `condition` holds (the test's timeout bounds it)."""
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_stream_ends_when_its_client_goes_and_at_most_max_clients_are_open() -> None:
    run = ObservedRun()
    app = web.Application()
    live = add_live_view(app, run, snapshot_every_s=0.02, max_clients=1)
    async with TestClient(TestServer(app)) as c:
        r = await c.get("/view/events")
        assert (await next_event(r))[0] == "snapshot"
        assert len(live.clients) == 1
        second = await c.get("/view/events")
        assert second.status == 503 and "too many" in (await second.json())["error"]
        r.close()  # the browser tab closed
        await wait_until(lambda: not live.clients)
        r = await c.get("/view/events")  # its place is free again
        assert r.status == 200 and (await next_event(r))[0] == "snapshot"
        r.close()


async def test_the_application_shutdown_ends_every_stream() -> None:
    """on_shutdown ends the streams at once: the server's stop does not wait its grace time for them."""
    run = ObservedRun()
    app = web.Application()
    live = add_live_view(app, run, snapshot_every_s=3600, heartbeat_every_s=3600)
    runner = web.AppRunner(app, shutdown_timeout=120)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(f"http://127.0.0.1:{port}/view/events") for _ in range(3)]
        for r in streams:
            assert (await next_event(r))[0] == "snapshot"
        assert len(live.clients) == 3
        await asyncio.wait_for(runner.cleanup(), timeout=30)  # far below the 120 s grace
        for r in streams:
            assert await r.content.read() == b""  # the end of the stream
        assert not live.clients and live.closing
    assert app[LIVE_VIEW_KEY] is live


async def test_behind_the_http_service_middleware_and_connection_limits() -> None:
    """The stream outlives the HTTP service's header deadline (it times requests' headers, not answers)."""
    from rtcore.asr.http_api import HttpServer, create_app
    from rtcore.runtime.config import Settings

    class NoAudio:
        async def transcribe(self, audio: Any, language: str) -> Any:
            raise AssertionError("no transcription expected")

        def health(self) -> dict[str, Any]:
            return {}

    settings = Settings(http_header_timeout_s=0.2)
    app = create_app(NoAudio(), settings)  # type: ignore[arg-type]
    run = ObservedRun()
    add_live_view(app, run, snapshot_every_s=0.05, heartbeat_every_s=3600)
    server = HttpServer(app, shutdown_timeout_s=60)
    port = await server.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            r = await session.get(f"http://127.0.0.1:{port}/view/events")
            assert r.status == 200
            started = asyncio.get_running_loop().time()
            count = 0
            while asyncio.get_running_loop().time() - started < 0.6:  # three header deadlines
                assert (await next_event(r))[0] == "snapshot"
                count += 1
            run.handle(view("c9", last_transcript="oui"))
            while True:
                name, data = await next_event(r)
                if name == "call" or any(call["call_id"] == "c9" for call in data["calls"]):
                    break
            r.close()
    finally:
        await asyncio.wait_for(server.close(), timeout=30)


def test_the_bus_feed_reads_the_bus_in_the_event_loop(short_dir: Path) -> None:
    """BusFeed (what procs/http_api.py runs) under uvloop, as in the process: messages published on a
    real bus reach the ObservedRun through the loop's reader alone (no polling by the test)."""
    import uvloop
    import zmq

    from rtcore.observe import BusFeed
    from rtcore.runtime.bus import BusProxy, Publisher
    from rtcore.runtime.messages import AsrStatus, RunStatus

    ctx: zmq.Context[Any] = zmq.Context()
    pub_ep, sub_ep = f"ipc://{short_dir}/in.sock", f"ipc://{short_dir}/out.sock"
    proxy = BusProxy(pub_ep, sub_ep, ctx).start()
    publisher = Publisher(pub_ep, ctx)
    run = ObservedRun()

    async def main() -> None:
        feed = BusFeed(sub_ep, run, ctx)
        feed.start()
        try:
            # PUB/SUB drops what is sent before the subscription reaches the publisher: probe until one arrives.
            while run.asr_status is None:
                publisher.publish(AsrStatus(pid=1, started_at=T0, pending=0, in_flight=0, workers=1, capacity=2,
                                            throughput=0.0, expected_wait_ms=0.0, queue_limit=10, refused_full=0))
                await asyncio.sleep(0.02)
            for i in range(50):
                publisher.publish(view(f"c{i}", last_transcript="oui"))
            publisher.publish(RunStatus(sent_at=T0, processes=(), call_slots=4, call_slots_in_use=0,
                                        has_dialog=True, ari_connected=True, redis_connected=True, draining=False))
            await wait_until(lambda: run.run_status is not None)
            assert sorted(run.calls) == sorted(f"c{i}" for i in range(50))  # all of them, in order before it
            assert feed.rejected == 0
        finally:
            feed.close()

    try:
        uvloop.run(main())
    finally:
        publisher.close()
        proxy.stop()
        ctx.term()
