"""The supervisor: owns the run's resources and keeps its processes alive.

Start: take the instance lock (one supervisor per instance), sweep shared memory an earlier run
left behind after a kill -9, create the audio rings, start the bus forwarder and the control
channel, start a private redis-server if no Redis is configured, then start the children in order,
each acknowledging with ProcessReady before the next starts.
Run: watch exits and heartbeats; restart a dead or unresponsive child with backoff.
Drain (before a stop, on request): the dialog takes no new call and lets those in progress finish
(`drain`), supervision going on meanwhile.
Stop: children in reverse order (SIGTERM, then SIGKILL after stop_timeout), then Redis, the bus,
and the shared memory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil
import zmq

from rtcore.runtime import telemetry
from rtcore.runtime.bus import BusProxy, ControlReceiver, Publisher
from rtcore.runtime.cluster import ClusterKeys, NodeInfo, NodeRegistry
from rtcore.runtime.config import Settings
from rtcore.runtime.messages import (
    Drain,
    Heartbeat,
    Message,
    Metrics,
    ProcessFailed,
    ProcessReady,
    ProcessStarted,
    ProcessState,
    RunStatus,
)
from rtcore.runtime.process import EXIT_INIT_FAILED, LaunchInfo, set_parent_death_signal
from rtcore.runtime.redis_client import sync_client
from rtcore.runtime.redis_server import PrivateRedis
from rtcore.runtime.ring import AudioRings, RingSpec, segment_name, sweep_leftovers

log = logging.getLogger(__name__)


class SupervisorError(RuntimeError):
    pass


# numpy's OpenBLAS starts a thread per core that spins after every call: in an ASR worker (one
# CTranslate2 thread by design) its small log-mel matmuls kept a BLAS thread busy for 8.8 s of CPU
# against CTranslate2's 40 s (48 calls). Our processes make small numpy calls, so one BLAS thread
# each (the operator's environment wins).
CHILD_ENV_DEFAULTS = {"OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# A drain ends when the dialog has no call left, or this long after its timeout: the calls ended
# at the timeout say their goodbye and hang up meanwhile.
DRAIN_MARGIN_S = 15.0
DRAIN_RESULT_FILE = "drain.json"  # in run_dir: the last drain's counters, for `rtcore drain` to print
STATUS_EVERY_S = 1.0  # RunStatus on the bus
DRAIN_COUNTERS = {"calls_in_progress": "drain_calls_at_start", "finished": "drain_finished",
                  "ended": "drain_ended", "refused": "refused_draining"}


@dataclass(frozen=True)
class ProcessSpec:
    """One child: run as `python -m module`."""

    name: str
    module: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Child:
    spec: ProcessSpec
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0
    ready: bool = False
    started_at: float = 0.0
    last_beat: float = 0.0
    restarts: int = 0
    warned: bool = False
    next_start: float = 0.0  # monotonic time of the next (re)start attempt; 0: none pending
    backoff_s: float = 0.5
    metrics: dict[str, float] = field(default_factory=dict)
    usage: psutil.Process | None = None  # for its CPU and memory figures
    cpu_seconds: float = 0.0  # user + system at the last status
    cpu_percent: float = 0.0  # of one core, over the last status interval

    @property
    def up(self) -> bool:
        return self.proc is not None and self.ready


class InstanceLock:
    """An flock on run_dir/supervisor.lock, held for the supervisor's life. While it is held no
    other supervisor of the instance runs, so any segment of the instance found at start is a
    leftover, whatever pid its name carries (pids get reused)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "supervisor.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SupervisorError(
                f"another rtcore supervisor of this instance is running (pid {holder}, lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def holder(self) -> int | None:
        """The pid of the supervisor holding the lock, None if none does. (Probing takes the lock
        for an instant: a supervisor starting at that very instant fails as if one ran.)"""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 32).decode(errors="replace").strip()
                return int(text) if text.isdigit() else None
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class Supervisor:
    def __init__(self, settings: Settings, specs: list[ProcessSpec], private_redis: bool = True) -> None:
        """`private_redis`: start a redis-server when no `redis_url` is set (False: the processes
        need no Redis, e.g. `rtcore serve`)."""
        self.settings = settings
        self.private_redis = private_redis
        self.children = {spec.name: Child(spec) for spec in specs}
        self.redis: PrivateRedis | None = None
        self.rings: AudioRings | None = None
        self._lock = InstanceLock(settings.run_path)
        self._bus: BusProxy | None = None
        self._control: ControlReceiver | None = None
        self._publisher: Publisher | None = None  # the supervisor's own voice on the bus
        self._ctx = zmq.Context()
        self._started = False
        self._next_status = 0.0
        self._status_at = time.monotonic()
        # Every child's Prometheus metrics files (prometheus-client's multiprocess mode).
        self.metrics_dir = settings.run_path / "metrics"
        self.on_metrics: Callable[[str, dict[str, float]], None] | None = None
        self.registry: NodeRegistry | None = None  # in a cluster: this node's registration in Redis
        self._started_wall = time.time()

    # --- start --------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        self._lock.acquire()
        try:
            s.run_path.chmod(0o700)
            sweep_leftovers(s.instance)
            telemetry.prepare_directory(self.metrics_dir)
            # An ASR node takes no call: one small slot (the rings are every child's to attach).
            spec = (RingSpec(segment_name(s.instance, os.getpid()), s.max_calls, s.ring_capacity) if s.runs_calls
                    else RingSpec(segment_name(s.instance, os.getpid()), 1, s.chunk_size))
            self.rings = AudioRings.create(spec)
            log.info("audio rings: %d slots x %.0f s (%d MiB) in /dev/shm/%s", spec.n_slots,
                     spec.capacity / s.sample_rate, spec.total_bytes >> 20, spec.name)
            self._bus = BusProxy(s.endpoint("bus_pub"), s.endpoint("bus_sub"), self._ctx).start()
            self._control = ControlReceiver(s.endpoint("control"), self._ctx)
            self._publisher = Publisher(s.endpoint("bus_pub"), self._ctx)
            if not s.redis_url and not s.redis_sentinels and self.private_redis:
                self.redis = PrivateRedis(s.run_path, s.data_path / "redis").start()
                self.settings = s = s.model_copy(update={"redis_url": self.redis.url})
            if s.clustered:
                self.registry = NodeRegistry(sync_client(s, timeout_s=0.5), ClusterKeys(s.cluster_name), s.node_ttl_s)
            self._started = True
            for child in self.children.values():
                self._spawn(child)
                self._await_ready(child)
        except BaseException:
            self.stop()
            raise

    def _launch_info(self, child: Child) -> LaunchInfo:
        assert self.rings is not None
        return LaunchInfo(process=child.spec.name, settings=self.settings, rings=self.rings.spec)

    def _spawn(self, child: Child) -> None:
        env = {**CHILD_ENV_DEFAULTS, **os.environ, **child.spec.env,
               telemetry.MULTIPROC_ENV: str(self.metrics_dir)}
        # The configuration travels on stdin: no password in argv or the environment.
        proc = subprocess.Popen([sys.executable, "-m", child.spec.module], stdin=subprocess.PIPE,
                                env=env, preexec_fn=set_parent_death_signal)
        stdin: IO[bytes] = proc.stdin  # type: ignore[assignment]
        stdin.write(self._launch_info(child).to_json().encode() + b"\n")
        stdin.close()
        child.proc = proc
        child.pid = proc.pid
        child.ready = False
        child.warned = False
        child.started_at = child.last_beat = time.monotonic()
        child.next_start = 0.0
        child.cpu_seconds = child.cpu_percent = 0.0
        try:
            child.usage = psutil.Process(proc.pid)
        except psutil.Error:  # pragma: no cover - it died at once: poll() sees the exit
            child.usage = None
        log.info("started %s (pid %d)", child.spec.name, proc.pid)

    def _await_ready(self, child: Child) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not child.ready:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SupervisorError(
                    f"{child.spec.name} did not report ready within {self.settings.start_timeout_s:.0f} s"
                )
            failure = self._handle_control(min(remaining, 0.2))
            self._publish_status_if_due(time.monotonic())  # a child may wait for it (the HTTP API's /health)
            if failure and failure.process == child.spec.name:
                raise SupervisorError(f"{child.spec.name} failed to start: {failure.error}")
            assert child.proc is not None
            if child.proc.poll() is not None and not child.ready:
                # It may have sent ProcessFailed just before exiting: read what is queued first.
                failure = self._handle_control(0)
                detail = f": {failure.error}" if failure else ""
                raise SupervisorError(
                    f"{child.spec.name} exited with code {child.proc.returncode} before ready{detail}"
                )

    # --- run ----------------------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.1) -> None:
        """One supervision step: handle control messages, then check every child."""
        failure = self._handle_control(timeout_s)
        if failure:
            log.error("%s failed to start: %s", failure.process, failure.error)
        now = time.monotonic()
        s = self.settings
        for child in self.children.values():
            proc = child.proc
            if proc is None:
                if child.next_start and now >= child.next_start:
                    self._spawn(child)
                continue
            code = proc.poll()
            if code is not None:
                log.error(
                    "%s (pid %d) exited with code %s%s",
                    child.spec.name,
                    child.pid,
                    code,
                    " during start-up" if code == EXIT_INIT_FAILED else "",
                )
                self._schedule_restart(child, now)
                continue
            silent = now - child.last_beat
            if child.ready and silent > s.unresponsive_kill_s:
                log.error(
                    "%s (pid %d) unresponsive for %.1f s: dumping its stacks and killing it",
                    child.spec.name,
                    child.pid,
                    silent,
                )
                self._dump_and_kill(child)
                self._schedule_restart(child, now)
            elif not child.ready and silent > s.start_timeout_s:
                log.error("%s (pid %d) not ready after %.0f s: killing it", child.spec.name, child.pid, silent)
                self._dump_and_kill(child)
                self._schedule_restart(child, now)
            elif child.ready and silent > s.heartbeat_timeout_s and not child.warned:
                log.warning("%s (pid %d): no heartbeat for %.1f s", child.spec.name, child.pid, silent)
                child.warned = True

        self._publish_status_if_due(now)

    def _publish_status_if_due(self, now: float) -> None:
        if now >= self._next_status:
            self._next_status = now + STATUS_EVERY_S
            status = self.status()
            self.publish(status)
            if self.registry is not None:
                self.registry.register(self.node_info(status))

    def node_info(self, status: RunStatus) -> NodeInfo:
        """This node as the cluster sees it (rtcore cluster status, the gateways' ASR capacity)."""
        s = self.settings
        asr_up = sum(p.up for p in status.processes if p.name.startswith("asr-"))
        return NodeInfo(node=s.node_id, role=s.role, host=socket.gethostname(), pid=os.getpid(),
                        started_at=self._started_wall, updated_at=time.time(),
                        ari_app=s.ari_app if s.runs_calls else "", call_slots=status.call_slots if s.runs_calls else 0,
                        calls_active=status.call_slots_in_use if s.runs_calls else 0, draining=status.draining,
                        asr_workers=asr_up if s.runs_asr else 0,
                        asr_capacity=asr_up * 2 * s.asr_batch_size if s.runs_asr else 0,
                        asr_batch_size=s.asr_batch_size)

    def status(self) -> RunStatus:
        """Every child's state, CPU and memory; the call slots; the dialog's ARI and Redis reports."""
        now = time.monotonic()
        interval = max(now - self._status_at, 1e-3)
        self._status_at = now
        states = []
        for name, child in self.children.items():
            rss = 0
            if child.proc is not None and child.usage is not None:
                try:
                    with child.usage.oneshot():
                        times = child.usage.cpu_times()
                        rss = child.usage.memory_info().rss
                    seconds = times.user + times.system
                    child.cpu_percent = max(0.0, 100.0 * (seconds - child.cpu_seconds) / interval)
                    child.cpu_seconds = seconds
                except psutil.Error:
                    child.cpu_percent = 0.0
            else:
                child.cpu_percent = 0.0
            age = now - child.last_beat if child.proc is not None else -1.0
            states.append(ProcessState(name=name, pid=child.pid if child.proc is not None else 0, up=child.up,
                                       heartbeat_age_s=round(age, 3), restarts=child.restarts,
                                       cpu_percent=round(child.cpu_percent, 1), rss_bytes=rss))
        dialog = self.children.get("dialog")
        reports = dialog.metrics if dialog is not None and dialog.up else {}
        rings = self.rings
        return RunStatus(sent_at=time.time(), processes=tuple(states),
                         call_slots=rings.spec.n_slots if rings is not None else 0,
                         call_slots_in_use=len(rings.in_use()) if rings is not None else 0,
                         has_dialog=dialog is not None, ari_connected=reports.get("ari_connected") == 1.0,
                         redis_connected=reports.get("redis_connected") == 1.0,
                         draining=reports.get("draining") == 1.0)

    def _schedule_restart(self, child: Child, now: float) -> None:
        # A child that ran healthily for a while starts again at the shortest backoff.
        if child.ready and now - child.started_at > 60:
            child.backoff_s = 0.5
        child.proc = None
        child.ready = False
        child.restarts += 1
        telemetry.process_died(child.pid, self.metrics_dir)
        child.next_start = now + child.backoff_s
        log.info("restarting %s in %.1f s (restart #%d)", child.spec.name, child.backoff_s, child.restarts)
        child.backoff_s = min(child.backoff_s * 2, self.settings.restart_backoff_max_s)

    def _dump_and_kill(self, child: Child) -> None:
        assert child.proc is not None
        try:
            child.proc.send_signal(signal.SIGUSR1)  # faulthandler prints every thread's stack
            child.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:  # pragma: no cover
            pass
        child.proc.kill()
        child.proc.wait()

    def _handle_control(self, timeout_s: float) -> ProcessFailed | None:
        """Read control messages for up to timeout_s; returns a start-up failure if one came."""
        assert self._control is not None
        message = self._control.recv(int(timeout_s * 1000))
        failure: ProcessFailed | None = None
        while message is not None:
            child = self.children.get(getattr(message, "process", ""))
            if child is None:
                log.warning("control message from unknown process: %r", message)
            elif isinstance(message, (Heartbeat, ProcessReady)) and message.pid == child.pid:
                child.last_beat = time.monotonic()
                child.warned = False
                if isinstance(message, ProcessReady):
                    child.ready = True
                    log.info("%s ready (pid %d)", child.spec.name, child.pid)
                    # Its peers may have to tell it what it missed (the dialog: the calls in progress).
                    self.publish(ProcessStarted(process=child.spec.name, pid=child.pid, restarts=child.restarts))
                    self.publish(self.status())  # /health sees it up now, not at the next second
            elif isinstance(message, Metrics):
                child.metrics.update(message.values)
                if self.on_metrics:
                    self.on_metrics(message.process, message.values)
            elif isinstance(message, ProcessFailed):
                failure = message
            message = self._control.recv(0)
        return failure

    def publish(self, message: Message) -> None:
        """Publish on the event bus (a no-op before start and after stop)."""
        if self._publisher is not None:
            self._publisher.publish(message)

    def run(self, should_stop: Callable[[], bool]) -> None:
        while not should_stop():
            self.poll(0.1)

    def drain(self, timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> dict[str, int]:
        """Tell the dialog to take no new call and let those in progress finish for `timeout_s`
        (then it ends the rest politely), supervising meanwhile. Drain is published every second
        until the dialog reports `draining` (a dialog that restarts mid-drain gets it again); done
        when it reports no call left, `timeout_s` + DRAIN_MARGIN_S after the start, or
        `should_stop()`. Returns its counters: calls_in_progress (at the start), finished (by
        themselves), ended (at the timeout), refused (new callers meanwhile); also written to
        run_dir/drain.json."""
        dialog = self.children.get("dialog")
        if dialog is None:
            return {}
        drain = Drain(timeout_s=timeout_s, requested_at=time.time())
        started = time.monotonic()
        next_send = started
        while not should_stop():
            now = time.monotonic()
            acknowledged = dialog.ready and dialog.metrics.get("draining") == 1.0
            if acknowledged and dialog.metrics.get("calls", 0.0) == 0.0:
                log.info("drain: every call has ended (%.1f s)", now - started)
                break
            if now - started > timeout_s + DRAIN_MARGIN_S:
                log.warning("drain: %.0f calls still in progress after %.0f s: stopping anyway",
                            dialog.metrics.get("calls", 0.0), now - started)
                break
            if not acknowledged and now >= next_send:
                self.publish(drain)
                next_send = now + 1.0
            self.poll(0.1)
        result = {name: int(dialog.metrics.get(key, 0.0)) for name, key in DRAIN_COUNTERS.items()}
        log.info("drain: %s", json.dumps(result))
        path = self.settings.run_path / DRAIN_RESULT_FILE
        path.with_suffix(".tmp").write_text(json.dumps(result))
        path.with_suffix(".tmp").replace(path)
        return result

    # --- stop ---------------------------------------------------------------------------------
    def stop(self) -> None:
        """Reverse order: children, Redis, bus, shared memory. Safe to call more than once."""
        for child in reversed(list(self.children.values())):
            self._stop_child(child)
        if self.registry is not None:  # gone from the cluster now, not at its registration's expiry
            self.registry.deregister(self.settings.node_id)
            self.registry.client.close()
            self.registry = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        if self._bus is not None:
            self._bus.stop()
            self._bus = None
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.rings is not None:
            rings, self.rings = self.rings, None
            rings.close()
            rings.unlink()
        if not self._ctx.closed:
            self._ctx.term()
        self._lock.release()
        self._started = False

    def _stop_child(self, child: Child) -> None:
        proc = child.proc
        child.next_start = 0.0
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.settings.stop_timeout_s)
            log.info("stopped %s (pid %d)", child.spec.name, child.pid)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.1f s: killing it", child.spec.name, self.settings.stop_timeout_s)
            proc.kill()
            proc.wait()
        child.proc = None
        telemetry.process_died(child.pid, self.metrics_dir)
