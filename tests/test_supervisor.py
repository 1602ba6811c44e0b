from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import pytest
import redis

from rtcore.runtime.config import Settings
from rtcore.runtime.ring import SHM_PREFIX
from rtcore.runtime.supervisor import ProcessSpec, Supervisor, SupervisorError
from tests.conftest import REPO

PROBE_ENV = {"PYTHONPATH": str(REPO)}


def probe(name: str = "probe", mode: str = "ok") -> ProcessSpec:
    return ProcessSpec(name, "tests.child_probe", env={**PROBE_ENV, "PROBE_MODE": mode})


def segments(instance: str) -> list[str]:
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{instance}."))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def poll_until(sup: Supervisor, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        sup.poll(0.05)


def test_children_start_in_order_and_a_killed_child_is_restarted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1")  # no private Redis for this test
    sup = Supervisor(settings, [probe("first"), probe("second")])
    sup.start()
    try:
        first, second = sup.children["first"], sup.children["second"]
        assert first.ready and second.ready and first.pid != second.pid
        assert segments(settings.instance) != []
        # One BLAS thread per child unless the operator says otherwise (spinning threads cost a core).
        with open(f"/proc/{first.pid}/environ", "rb") as f:
            child_env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert child_env[b"OPENBLAS_NUM_THREADS"] == os.environ.get("OPENBLAS_NUM_THREADS", "1").encode()
        old_pid = second.pid
        os.kill(old_pid, signal.SIGKILL)
        poll_until(sup, lambda: second.ready and second.pid != old_pid)
        assert second.restarts == 1 and first.restarts == 0
        assert alive(second.pid) and not alive(old_pid)
        # Heartbeats keep flowing from the new process.
        beat = second.last_beat
        poll_until(sup, lambda: second.last_beat > beat)
    finally:
        sup.stop()
    assert not alive(first.pid) and not alive(second.pid)
    assert segments(settings.instance) == []


def test_unresponsive_child_is_killed_and_restarted(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1", heartbeat_timeout_s=0.3, unresponsive_kill_s=0.8)
    sup = Supervisor(settings, [probe("stuck", mode="hang")])
    sup.start()
    try:
        child = sup.children["stuck"]
        old_pid = child.pid
        poll_until(sup, lambda: child.pid != old_pid and child.ready)
        assert child.restarts == 1 and not alive(old_pid)
    finally:
        sup.stop()


def test_start_up_failure_is_reported_and_nothing_is_left(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    sup = Supervisor(settings, [probe("model", mode="fail_init")])
    with pytest.raises(SupervisorError, match="model failed to start: RuntimeError: probe cannot start: no such model"):
        sup.start()
    assert segments(settings.instance) == []
    assert sup.redis is None
    assert not (settings.run_path / "redis.sock").exists()


def test_child_ignoring_sigterm_is_killed_at_stop(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1", stop_timeout_s=0.5)
    sup = Supervisor(settings, [probe("deaf", mode="ignore_term")])
    sup.start()
    pid = sup.children["deaf"].pid
    sup.stop()
    assert not alive(pid)


def test_one_supervisor_per_instance(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1")
    sup = Supervisor(settings, [])
    sup.start()
    try:
        with pytest.raises(
            SupervisorError, match=f"another rtcore supervisor of this instance is running \\(pid {os.getpid()}"
        ):
            Supervisor(settings, []).start()
        assert len(segments(settings.instance)) == 1  # the refused start swept nothing
    finally:
        sup.stop()


def test_private_redis_runs_with_the_supervisor(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    sup = Supervisor(settings, [probe()])
    sup.start()
    try:
        assert sup.redis is not None and sup.settings.redis_url.startswith("unix://")
        client = redis.Redis.from_url(sup.settings.redis_url)
        client.set("lead:1", "qualified")
        assert client.get("lead:1") == b"qualified"
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
        redis_pid = sup.redis.pid
    finally:
        sup.stop()
    assert redis_pid is not None and not alive(redis_pid)
    assert not (settings.run_path / "redis.sock").exists()


DRIVER = textwrap.dedent("""
    import json, sys
    from rtcore.runtime.config import Settings
    from rtcore.runtime.supervisor import ProcessSpec, Supervisor
    settings = Settings.model_validate_json(sys.argv[1])
    sup = Supervisor(settings, [ProcessSpec("probe", "tests.child_probe", env={"PYTHONPATH": sys.argv[2]})])
    sup.start()
    print(json.dumps({"child": sup.children["probe"].pid, "redis": sup.redis.pid,
                      "segment": sup.rings.spec.name}), flush=True)
    sup.run(lambda: False)
""")


def test_kill_9_of_the_supervisor_then_next_start_cleans_up(make_settings: Callable[..., Settings]) -> None:
    import json

    settings = make_settings()
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, settings.model_dump_json(), str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert driver.stdout is not None
    info = json.loads(driver.stdout.readline())
    assert segments(settings.instance) == [info["segment"]]
    driver.kill()
    driver.wait()
    # Its children must not outlive it (parent-death signal), shared memory does.
    for pid in (info["child"], info["redis"]):
        deadline = time.monotonic() + 10
        while alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} outlived its supervisor"
            time.sleep(0.02)  # waiting on another process's exit: no event to block on
    assert segments(settings.instance) == [info["segment"]]

    sup = Supervisor(settings, [])
    sup.start()
    try:
        assert segments(settings.instance) == [sup.rings.spec.name]  # type: ignore[union-attr]
        assert info["segment"] not in segments(settings.instance)
    finally:
        sup.stop()
    assert segments(settings.instance) == []


def test_launch_runs_and_stops_cleanly(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(ari_password="launch-secret")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        rtp_port = probe_socket.getsockname()[1]
    env = {
        **os.environ,
        "RTCORE_RTP_PORT": str(rtp_port),
        "RTCORE_INSTANCE": settings.instance,
        "RTCORE_RUN_DIR": settings.run_dir,
        "RTCORE_DATA_DIR": settings.data_dir,
        "RTCORE_METRICS_PORT": "0",
        "RTCORE_MAX_CALLS": "2",
        "RTCORE_ARI_PASSWORD": "launch-secret",
        "RTCORE_HTTP_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtcore.cli", "launch"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "Ctrl-C stops" in line:
            break
    assert len(segments(settings.instance)) == 1
    proc.send_signal(signal.SIGINT)
    lines += proc.stderr.read().splitlines()
    assert proc.wait(30) == 0
    log = "".join(lines)
    assert "stopped" in log and "launch-secret" not in log
    assert "rtp_capture ready" in log and "vad ready" in log
    assert segments(settings.instance) == []
