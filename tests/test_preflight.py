"""`rtcore launch` against an Asterisk it cannot use stops before it loads any model, with a
non-zero exit and a message saying what to fix. The Asterisk is the ARI simulator, served from a
thread of the test over real HTTP; `rtcore launch` runs as its own process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rtcore.dialog.ari.preflight import PreflightError, asterisk_info
from rtcore.dialog.script import load_script
from rtcore.sim.ari import AriSimulator
from tests.conftest import REPO

USER, PASSWORD = "rtcore", "right-one"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThreadedAsterisk:
    """The ARI simulator on its own event loop in a thread, for a client in another process."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.sim: AriSimulator | None = None

    def start(self, port: int = 0) -> ThreadedAsterisk:
        self.thread.start()

        async def start() -> AriSimulator:
            sim = AriSimulator(app_name="rtcore", user=USER, password=PASSWORD, **self.options)
            await sim.start("127.0.0.1", port)
            return sim

        self.sim = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    @property
    def url(self) -> str:
        assert self.sim is not None
        return self.sim.url

    def stop(self) -> None:
        if self.sim is not None:
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def asterisk(tmp_path: Path) -> Iterator[ThreadedAsterisk]:
    (tmp_path / "sounds").mkdir()  # an Asterisk with no sound installed at all
    server = ThreadedAsterisk(sounds_dir=tmp_path / "sounds").start()
    yield server
    server.stop()


def launch(short_dir: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "RTCORE_INSTANCE": "preflight", "RTCORE_RUN_DIR": str(short_dir / "run"),
               "RTCORE_DATA_DIR": str(short_dir / "data"), "RTCORE_METRICS_PORT": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "rtcore.cli", "launch", *flags], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def assert_stopped_before_starting(proc: subprocess.CompletedProcess[str], short_dir: Path) -> None:
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    # Nothing was started: no supervisor (its instance lock), no model, no process.
    assert not (short_dir / "run" / "supervisor.lock").exists()
    assert "started " not in proc.stderr and "Whisper" not in proc.stderr


def test_a_wrong_password_stops_launch_with_what_to_fix(asterisk: ThreadedAsterisk, short_dir: Path) -> None:
    # The password comes from the environment, as the README advises (not the command line).
    proc = launch(short_dir, "--ari-url", asterisk.url, "--ari-user", USER, env={"RTCORE_ARI_PASSWORD": "wrong"})
    assert_stopped_before_starting(proc, short_dir)
    assert "refused the ARI credentials for user 'rtcore' (401" in proc.stderr
    assert "ari_password" in proc.stderr and "wrong" not in proc.stderr


def test_an_ari_url_without_the_ari_suffix_is_named(asterisk: ThreadedAsterisk, short_dir: Path) -> None:
    base = asterisk.url.removesuffix("/ari")
    proc = launch(short_dir, "--ari-url", base, env={"RTCORE_ARI_USER": USER, "RTCORE_ARI_PASSWORD": PASSWORD})
    assert_stopped_before_starting(proc, short_dir)
    assert f"answered 404: the ARI base URL ends in /ari, e.g. --ari-url {base}/ari" in proc.stderr


def test_no_asterisk_listening_stops_launch(short_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/ari"
    proc = launch(short_dir, "--ari-url", url)
    assert_stopped_before_starting(proc, short_dir)
    assert f"cannot reach Asterisk's ARI at {url}" in proc.stderr and "--ari-wait" in proc.stderr


def test_missing_prompts_are_named_with_the_install_command(asterisk: ThreadedAsterisk, short_dir: Path) -> None:
    proc = launch(short_dir, "--ari-url", asterisk.url, env={"RTCORE_ARI_USER": USER, "RTCORE_ARI_PASSWORD": PASSWORD})
    assert_stopped_before_starting(proc, short_dir)
    total = len(load_script().prompts)
    assert f"lacks {total} of the dialog's {total} prompts in a playable format: " in proc.stderr
    assert "init" in proc.stderr and "ask_zip_code" in proc.stderr
    assert "rtcore prompts install --sounds-dir" in proc.stderr


async def test_ari_wait_allows_an_asterisk_that_is_still_starting(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/ari"
    with pytest.raises(PreflightError, match="cannot reach"):
        await asterisk_info(url, USER, PASSWORD, timeout_s=2.0, wait_s=0.0)
    sim = AriSimulator(app_name="rtcore", user=USER, password=PASSWORD)
    loop = asyncio.get_running_loop()
    starting = loop.create_task(asyncio.sleep(1.5))  # Asterisk comes up 1.5 s from now
    starting.add_done_callback(lambda _: loop.create_task(sim.start("127.0.0.1", port)))
    try:
        info = await asterisk_info(url, USER, PASSWORD, timeout_s=2.0, wait_s=20.0)
        assert info["system"]["version"]
    finally:
        await sim.stop()
