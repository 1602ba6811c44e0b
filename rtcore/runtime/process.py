"""The child side of supervision: what every `procs/` module runs inside.

A child reads its launch description (settings, ring spec, its name) as one JSON document on stdin,
reports `ProcessReady` once initialised (or `ProcessFailed` with the reason, then exits), and sends
heartbeats from its own work loop: a loop that hangs stops beating, which is what the supervisor
watches. SIGTERM or SIGINT sets `stopping`; the loop finishes its current step and returns.
"""

from __future__ import annotations

import ctypes
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rtcore.runtime.bus import ControlSender
from rtcore.runtime.config import Settings
from rtcore.runtime.logs import setup_logging
from rtcore.runtime.messages import Heartbeat, Metrics, ProcessFailed, ProcessReady
from rtcore.runtime.ring import RingSpec

log = logging.getLogger(__name__)

EXIT_INIT_FAILED = 3


@dataclass(frozen=True)
class LaunchInfo:
    """What the supervisor tells a child at start (on its stdin)."""

    process: str
    settings: Settings
    rings: RingSpec

    def to_json(self) -> str:
        return json.dumps({
            "process": self.process,
            "settings": json.loads(self.settings.to_child_json()),
            "rings": asdict(self.rings),
        })

    @classmethod
    def from_json(cls, text: str) -> LaunchInfo:
        data = json.loads(text)
        return cls(process=data["process"], settings=Settings.model_validate(data["settings"]),
                   rings=RingSpec(**data["rings"]))


class ProcessContext:
    """Handed to a child's main function."""

    def __init__(self, info: LaunchInfo, control: ControlSender) -> None:
        self.info = info
        self.name = info.process
        self.settings = info.settings
        self.control = control
        self.stopping = threading.Event()
        self._seq = 0
        self._next_beat = 0.0
        self._interval = info.settings.heartbeat_interval_s
        self._parent = os.getppid()

    def ready(self) -> None:
        self.control.send(ProcessReady(process=self.name, pid=os.getpid()))
        log.info("%s ready (pid %d)", self.name, os.getpid())
        self.beat(force=True)

    def beat(self, force: bool = False) -> None:
        """Call from the work loop as often as convenient; sends a heartbeat when one is due."""
        now = time.monotonic()
        if not force and now < self._next_beat:
            return
        self._next_beat = now + self._interval
        if os.getppid() != self._parent:  # the supervisor died: do not outlive it
            log.error("%s: supervisor is gone, stopping", self.name)
            self.stopping.set()
            return
        self._seq += 1
        self.control.send(Heartbeat(process=self.name, pid=os.getpid(), seq=self._seq, sent_at=time.time()))

    def report(self, values: dict[str, float]) -> None:
        self.control.send(Metrics(process=self.name, values=values))

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds` unless asked to stop; True if stopping."""
        return self.stopping.wait(seconds)


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to signal this process when its parent dies (the supervisor killed with -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, sig)
    except OSError:  # pragma: no cover - not Linux: the heartbeat's parent check still applies
        pass


def run_process(main: Callable[[ProcessContext], Any], stdin_text: str | None = None) -> None:
    """Entry point of every child: parse the launch info, run `main(ctx)`, report failures, exit."""
    info = LaunchInfo.from_json(stdin_text if stdin_text is not None else sys.stdin.readline())
    setup_logging(info.settings, process=info.process)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the supervisor's "dump your stacks"
    control = ControlSender(info.settings.endpoint("control"))
    ctx = ProcessContext(info, control)

    def on_signal(signum: int, _frame: object) -> None:
        ctx.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        main(ctx)
    except Exception as exc:  # noqa: BLE001 - everything a child can die of must reach the supervisor
        if ctx._seq == 0:  # never got ready: a configuration or model problem, not a crash
            control.send(ProcessFailed(process=ctx.name, pid=os.getpid(), error=f"{type(exc).__name__}: {exc}"))
            log.error("%s failed to start: %s", ctx.name, exc)
            code = EXIT_INIT_FAILED
        else:
            log.error("%s crashed:\n%s", ctx.name, traceback.format_exc())
            code = 1
    finally:
        control.close()
    sys.exit(code)
