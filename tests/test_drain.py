"""A drain from the supervisor's side: Supervisor.drain against a child that plays the dialog
(tests/child_probe.py, mode drain), and the `rtcore drain` command against a running supervisor.
What the dialog does during a drain is tests/test_admission.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable

from rtcore.runtime.config import Settings
from rtcore.runtime.supervisor import DRAIN_RESULT_FILE, InstanceLock, ProcessSpec, Supervisor
from tests.conftest import REPO
from tests.test_supervisor import PROBE_ENV, poll_until

NO_REDIS = "redis://127.0.0.1:1"  # the probes need none: no private redis-server is started


def dialog_probe() -> ProcessSpec:
    return ProcessSpec("dialog", "tests.child_probe", env={**PROBE_ENV, "PROBE_MODE": "drain"})


def test_drain_is_repeated_until_the_dialog_drains_then_waits_for_its_calls(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=NO_REDIS)
    sup = Supervisor(settings, [dialog_probe()])
    sup.start()
    try:
        dialog = sup.children["dialog"]
        poll_until(sup, lambda: dialog.metrics.get("calls") == 2.0)
        result = sup.drain(30.0)
        assert result == {"calls_in_progress": 2, "finished": 2, "ended": 0, "refused": 0}
        assert dialog.metrics["calls"] == 0.0
        assert dialog.metrics["drains_received"] >= 2  # the first Drain went unheeded: it was sent again
        assert json.loads((settings.run_path / DRAIN_RESULT_FILE).read_text()) == result
        assert dialog.restarts == 0  # supervision went on: the child beat throughout
    finally:
        sup.stop()


def test_drain_without_a_dialog_has_nothing_to_do(make_settings: Callable[..., Settings]) -> None:
    sup = Supervisor(make_settings(redis_url=NO_REDIS), [])
    sup.start()
    try:
        assert sup.drain(30.0) == {}
    finally:
        sup.stop()


# A supervisor that drains on SIGTERM, as `rtcore launch` does (without the pipeline's models).
DRAINING_SUPERVISOR = textwrap.dedent("""
    import signal, sys
    from rtcore.runtime.config import Settings
    from rtcore.runtime.supervisor import ProcessSpec, Supervisor
    settings = Settings.model_validate_json(sys.argv[1])
    sup = Supervisor(settings, [ProcessSpec("dialog", "tests.child_probe",
                                            env={"PYTHONPATH": sys.argv[2], "PROBE_MODE": "drain"})])
    term = []
    signal.signal(signal.SIGTERM, lambda *_: term.append(1))
    sup.start()
    print("running", flush=True)
    sup.run(lambda: bool(term))
    sup.drain(settings.drain_timeout_s)
    sup.stop()
""")


def run_drain(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RTCORE_INSTANCE": settings.instance, "RTCORE_RUN_DIR": settings.run_dir,
           "RTCORE_DATA_DIR": settings.data_dir, "RTCORE_DRAIN_TIMEOUT_S": "30"}
    return subprocess.run([sys.executable, "-m", "rtcore.cli", "drain"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_rtcore_drain_drains_the_running_supervisor_and_waits_for_it_to_exit(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(redis_url=NO_REDIS)
    supervisor = subprocess.Popen([sys.executable, "-c", DRAINING_SUPERVISOR, settings.model_dump_json(), str(REPO)],
                                  stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert supervisor.stdout is not None and supervisor.stdout.readline() == "running\n"
        assert InstanceLock(settings.run_path).holder() == supervisor.pid
        proc = run_drain(settings)
        assert proc.returncode == 0, proc.stderr
        assert supervisor.poll() == 0  # it had exited when the command returned
        lines = proc.stdout.splitlines()
        assert lines[0].startswith(f"draining rtcore (instance {settings.instance!r}, supervisor pid "
                                   f"{supervisor.pid}): no new call")
        assert lines[1] == "drained: 2 calls in progress, 2 finished, 0 ended at the timeout, 0 new callers refused"
        assert lines[2].startswith("stopped after ")
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        supervisor.wait()
    assert InstanceLock(settings.run_path).holder() is None


def test_rtcore_drain_without_a_running_supervisor_says_so(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    proc = run_drain(settings)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == (f"rtcore drain: no rtcore supervisor of instance {settings.instance!r} is running "
                                   f"(nothing holds {settings.run_path / 'supervisor.lock'})")
    # Nor when an earlier supervisor left its lock file behind.
    sup = Supervisor(settings.model_copy(update={"redis_url": NO_REDIS}), [])
    sup.start()
    sup.stop()
    assert (settings.run_path / "supervisor.lock").exists()
    assert run_drain(settings).returncode == 1
