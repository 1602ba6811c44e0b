"""The live view in a real browser: headless Debian chromium through selenium, against the live view
served on a real port. A simulated call appears in the table of calls in progress, its turn brings
its transcript and intent, then it ends: it leaves that table and shows among the finished calls with
its outcome. Every wait is on a DOM condition. A screenshot is saved (RTCORE_TEST_ARTIFACTS, default
build/test-artifacts/liveview.png)."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rtcore.observe import ObservedRun, add_live_view
from rtcore.runtime.messages import AsrStatus, CallView, Message, ProcessState, RunStatus, Transcript, TurnTaken
from tests.conftest import REPO

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
WAIT_S = 30.0

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is not installed (apt-get install chromium chromium-driver)",
                allow_module_level=True)

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


class LiveServer:
    """The live view on 127.0.0.1, served by its own event loop in a thread; `feed` hands messages to
    the ObservedRun in that loop (it is not thread-safe)."""

    def __init__(self, run: ObservedRun) -> None:
        self.run = run
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="live-view", daemon=True)
        self.runner: web.AppRunner | None = None
        self.url = ""

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout=WAIT_S)

    def start(self, port: int = 0) -> None:
        if not self.thread.is_alive():
            self.thread.start()
        port = self._call(self._start(port))
        self.url = f"http://127.0.0.1:{port}"

    async def _start(self, port: int) -> int:
        app = web.Application()
        add_live_view(app, self.run)
        self.runner = web.AppRunner(app, shutdown_timeout=5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        return int(self.runner.addresses[0][1])

    def feed(self, *messages: Message) -> None:
        async def handle() -> None:
            for message in messages:
                self.run.handle(message)

        self._call(handle())

    def stop_app(self) -> None:
        """The application shuts down (every stream ends); the loop goes on (`start` again)."""
        if self.runner is not None:
            self._call(self.runner.cleanup())
            self.runner = None

    def stop(self) -> None:
        self.stop_app()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=WAIT_S)
        self.loop.close()


class ShiftedClock:
    """time.monotonic() moved back by `shift` seconds: lets the test fill the last minutes of series."""

    def __init__(self) -> None:
        self.shift = 0.0

    def __call__(self) -> float:
        return time.monotonic() - self.shift


def processes(t: int) -> tuple[ProcessState, ...]:
    load = {"rtp_capture": 4, "vad": 22, "asr_dispatch": 3, "asr-0": 61, "asr-1": 57, "dialog": 9, "http_api": 2,
            "pbx_sim": 14}
    return tuple(ProcessState(name=name, pid=2000 + i, up=True, heartbeat_age_s=0.3 + 0.1 * (i % 3),
                              restarts=1 if name == "asr-1" else 0,
                              cpu_percent=round(base * (1 + 0.25 * math.sin(t / 17 + i)), 1),
                              rss_bytes=(80 + 40 * i) << 20)
                 for i, (name, base) in enumerate(load.items()))


def history(clock: ShiftedClock, run: ObservedRun, seconds: int = 240) -> None:
    """A few busy minutes before the page opens: status every second, turns and transcripts."""
    now = time.time()
    for k in range(seconds):
        clock.shift = float(seconds - k)
        t = k
        run.handle(RunStatus(sent_at=now, processes=processes(t), call_slots=24, call_slots_in_use=6, has_dialog=True,
                             ari_connected=True, redis_connected=True, draining=False))
        pending = max(0, round(2 + 3 * math.sin(t / 23)))
        in_flight = max(1, round(5 + 2 * math.sin(t / 13)))
        run.handle(AsrStatus(pid=2002, started_at=now - 600, pending=pending, in_flight=in_flight, workers=2,
                             capacity=8, throughput=2.4, expected_wait_ms=180.0 + 40 * math.sin(t / 9),
                             queue_limit=2000, refused_full=0))
        batch = max(1, round(2.5 + 1.5 * math.sin(t / 29)))
        for j in range(1 + t % 3):
            ms = 420 + 160 * math.sin(t / 11 + j) + 90 * j
            run.handle(Transcript(utterance_id=f"h{t}-{j}", call_id=f"past-{t % 6}", text="oui", eos_at=now,
                                  published_at=now + ms / 1000, batch_size=batch + j % 2))
            if j == 0 and t % 2 == 0:
                run.handle(TurnTaken(call_id=f"past-{t % 6}", utterance_id=f"h{t}-{j}", intent="oui",
                                     eos_to_transcript_ms=ms, eos_to_reply_ms=ms + 380 + 120 * math.sin(t / 5)))
    clock.shift = 0.0
    for i, outcome in enumerate(["qualified", "not_eligible", "abandoned"]):
        run.handle(CallView(call_id=f"earlier-{i}", state="ended", started_at=now - 400 + 60 * i, turns=5 + i,
                            last_transcript="d'accord, merci", last_intent="ok", ended_at=now - 200 + 60 * i,
                            outcome=outcome))
    for i, (state, said, intent) in enumerate([
        ("ask_owner_house", "soixante-quinze zéro onze", "ok_zipcode"),
        ("ask_heating", "oui je suis propriétaire", "ok_proprio"),
        ("ask_callback", "au fioul", "ok_chauffage"),
    ]):
        run.handle(CallView(call_id=f"sim-{i + 1:04d}", state=state, started_at=now - 30 - 25 * i, turns=i + 1,
                            last_transcript=said, last_intent=intent, last_turn_ms=780.0 + 310 * i))


@pytest.fixture
def live() -> Iterator[tuple[LiveServer, ShiftedClock]]:
    clock = ShiftedClock()
    run = ObservedRun(clock=clock)
    history(clock, run)
    server = LiveServer(run)
    server.start()
    try:
        yield server, clock
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1150",
                     "--disable-gpu", "--lang=en-US"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def artifacts_dir() -> Path:
    path = Path(os.environ.get("RTCORE_TEST_ARTIFACTS") or REPO / "build" / "test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def wait(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str) -> Any:
    def check(d: WebDriver) -> Any:
        try:
            return condition(d)
        except StaleElementReferenceException:  # a table re-rendered under our feet: look again
            return False

    return WebDriverWait(driver, WAIT_S).until(check, message=f"waited for: {what}")


def row(driver: WebDriver, table: str, call_id: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#{table} tbody tr[data-call-id="{call_id}"]')
    return rows[0] if rows else None


def field(row_element: Any, name: str) -> str:
    return str(row_element.find_element(By.CSS_SELECTOR, f'[data-field="{name}"]').text)


CALL = "call-under-test"
SAID = "C'est le <b>75011</b> & « Paris »"  # caller data: shown as text, never parsed as HTML


def test_a_call_in_progress_takes_a_turn_ends_and_is_finished(
        live: tuple[LiveServer, ShiftedClock], browser: WebDriver) -> None:
    server, _ = live
    browser.get(server.url + "/")  # redirected to /view
    wait(browser, lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live", "the stream is live")
    assert browser.current_url == server.url + "/view"
    wait(browser, lambda d: row(d, "active-calls", "sim-0001") is not None, "the calls in progress of the snapshot")

    started = time.time()
    server.feed(CallView(call_id=CALL, state="init", started_at=started))
    wait(browser, lambda d: row(d, "active-calls", CALL) is not None, "the new call in the calls in progress")
    assert field(row(browser, "active-calls", CALL), "state") == "init"

    server.feed(CallView(call_id=CALL, state="ask_owner_house", started_at=started, turns=1, last_transcript=SAID,
                         last_intent="ok_zipcode", last_turn_ms=912.0))
    wait(browser, lambda d: (r := row(d, "active-calls", CALL)) is not None and field(r, "transcript") == SAID
         and field(r, "intent") == "ok_zipcode", "the call's turn: its transcript and intent")
    in_progress = row(browser, "active-calls", CALL)
    assert field(in_progress, "state") == "ask_owner_house" and field(in_progress, "turns") == "1"
    assert field(in_progress, "last_turn") == "912 ms"
    assert in_progress.find_elements(By.TAG_NAME, "b") == []  # the caller's markup stayed text

    server.feed(CallView(call_id=CALL, state="ended", started_at=started, turns=4, last_transcript="merci",
                         last_intent="ok_creneau", last_turn_ms=700.0, ended_at=started + 42, outcome="qualified"))
    wait(browser, lambda d: row(d, "active-calls", CALL) is None and (r := row(d, "finished-calls", CALL)) is not None
         and field(r, "outcome") == "qualified", "the call gone from the calls in progress, finished as qualified")
    finished = row(browser, "finished-calls", CALL)
    assert field(finished, "turns") == "4" and field(finished, "duration") == "0:42"
    first = browser.find_element(By.CSS_SELECTOR, "#finished-calls tbody tr")
    assert first.get_attribute("data-call-id") == CALL  # the newest first

    # The rest of the page filled from the snapshots: processes, charts' legends.
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#processes tbody tr[data-process]")) == 8,
         "the process table")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend-cpu .item")) == 8, "the CPU chart")
    assert browser.find_element(By.ID, "tile-calls").text == "3"

    # Nothing was fetched from anywhere but this service, and the page raised no error.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(url.startswith(server.url + "/") for url in resources), resources
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []

    path = artifacts_dir() / "liveview.png"
    assert browser.save_screenshot(str(path)), f"no screenshot written to {path}"



def test_the_page_reconnects_by_itself_when_the_service_comes_back(
        live: tuple[LiveServer, ShiftedClock], browser: WebDriver) -> None:
    server, _ = live
    browser.get(server.url + "/view")
    wait(browser, lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live", "the stream is live")
    url = server.url

    # The service stops (its streams end) and the page says so; it comes back on the same port, and the
    # page is live again by itself, with a call that started meanwhile.
    server.stop_app()
    wait(browser, lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") in ("reconnecting", "offline"),
         "the page noticed the stream ended")
    server.feed(CallView(call_id="while-away", state="init", started_at=time.time()))
    server.start(int(url.rsplit(":", 1)[1]))
    assert server.url == url
    wait(browser, lambda d: d.find_element(By.ID, "conn").get_attribute("data-state") == "live"
         and row(d, "active-calls", "while-away") is not None, "live again, with the call that started meanwhile")
