"""A whole run: supervisor, pipeline, (embedded PBX and its load), report. What `rtcore launch`
and `rtcore bench load` both do."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from rtcore.runtime.config import Settings
from rtcore.runtime.redis_client import sync_client

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    pass


def simulated_load_settings(settings: Settings, calls: int | None, total_calls: int | None,
                            duration_s: float | None) -> Settings:
    """The settings of a simulated load: its size, and call slots enough for it."""
    settings = settings.model_copy(update={
        k: v for k, v in (("sim_calls", calls), ("sim_total_calls", total_calls),
                          ("sim_duration_s", duration_s)) if v is not None})
    # A replacement call arrives as soon as one ends, before every process has let its slot go
    # (and freed slots rest before reuse): leave headroom, or the load would be refused for want
    # of call slots.
    needed = settings.sim_calls + max(8, settings.sim_calls // 4)
    if settings.max_calls < needed:
        log.info("max_calls raised from %d to %d for %d simulated calls", settings.max_calls, needed,
                 settings.sim_calls)
        settings = settings.model_copy(update={"max_calls": needed})
    return settings


def check_asterisk_first(settings: Settings) -> None:
    """The configured Asterisk answers, accepts our credentials and has every prompt (LaunchError if not)."""
    import asyncio

    from rtcore.dialog.ari.preflight import PreflightError, check_asterisk
    from rtcore.dialog.script import load_script

    script = load_script(settings.dialog_script or None)
    try:
        check = asyncio.run(check_asterisk(settings.ari_url, settings.ari_user,
                                           settings.ari_password.get_secret_value(), settings.ari_app, script,
                                           settings.ari_timeout, settings.ari_wait))
    except PreflightError as exc:
        raise LaunchError(str(exc)) from None
    for warning in check.warnings:
        log.warning("%s", warning)
    log.info("Asterisk %s at %s: credentials accepted, %d prompts installed", check.version, settings.ari_url,
             check.prompts)


def left_behind(supervisor: Any, wait_s: float = 5.0) -> dict[str, int]:
    """Once every call has ended: what is still held, which should be nothing: call slots in the
    rings, and our channels and bridges in the (embedded) Asterisk. Clean-up of the last calls runs
    just after their end, so this waits up to `wait_s` for it."""
    import asyncio

    from rtcore.dialog.ari.client import AriClient, AriError
    from rtcore.dialog.recovery import take_inventory
    from rtcore.runtime.ring import SlotOwner

    s = supervisor.settings

    async def count() -> dict[str, int]:
        async with AriClient(s.ari_base_url, s.ari_user, s.ari_password.get_secret_value(), s.ari_app, 5.0) as ari:
            inventory = take_inventory(s.ari_app, await ari.channels(), await ari.bridges())
        helpers = [h for hs in inventory.helpers.values() for h in hs]
        return {"call_slots": len(supervisor.rings.in_use(SlotOwner.CALL)) if supervisor.rings else 0,
                "calls": len(inventory.callers), "channels": sum(not h.endswith("-bridge") for h in helpers),
                "bridges": sum(h.endswith("-bridge") for h in helpers)}

    deadline = time.monotonic() + wait_s
    while True:
        try:
            counts = asyncio.run(count())
        except AriError as exc:
            log.warning("cannot count what the run left behind: %s", exc)
            return {}
        if not any(counts.values()) or time.monotonic() >= deadline:
            return counts
        time.sleep(0.2)


def run_launch(settings: Settings, calls: int | None = None, total_calls: int | None = None,
               duration_s: float | None = None, should_stop: Callable[[], bool] = lambda: False,
               progress: Callable[[str], None] | None = None, progress_every_s: float = 5.0,
               drain_requested: Callable[[], bool] = lambda: False) -> dict[str, Any]:
    """Run until the simulated load is done (every call placed and ended), `should_stop()`, or,
    against a real Asterisk, `duration_s`; returns the report (rtcore.launch.report).

    `drain_requested()` (SIGTERM, `rtcore drain`): the dialog takes no new call and the calls in
    progress may finish for `drain_timeout_s` (Supervisor.drain; `should_stop()` cuts it short),
    then the run stops as it would have; the report then has a `drain` part."""
    if not settings.runs_calls:
        return run_asr_node(settings, duration_s, should_stop, progress, progress_every_s, drain_requested)
    # Before any model is loaded: what is missing or misconfigured stops us within seconds.
    if not settings.redis_url:
        from rtcore.runtime.redis_server import require_redis_server

        require_redis_server()
    if settings.ari_url:
        check_asterisk_first(settings)
    from rtcore.dialog.leads import read_leads
    from rtcore.launch.pipeline import pipeline
    from rtcore.launch.report import CpuMeter, LoadCollector, RunHistograms, build_report
    from rtcore.runtime.bus import Subscriber
    from rtcore.runtime.messages import CallEnded, CallStarted, Transcript, TurnTaken, UtteranceReady
    from rtcore.runtime.metrics import serve_metrics
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.runtime.supervisor import Supervisor, SupervisorError

    simulated = not settings.ari_url
    if simulated:
        settings = simulated_load_settings(settings, calls, total_calls, duration_s)
    log.info("rtcore launch, instance %r, settings: %s", settings.instance, json.dumps(settings.redacted()))
    if settings.runs_asr:
        whisper_model_dir(settings)  # assembled once here, not concurrently in every ASR worker
    if simulated:
        from rtcore.sim.callers.prepare import prepare_simulation

        log.info("embedded PBX: %s", prepare_simulation(settings))
    supervisor = Supervisor(settings, pipeline(settings))
    try:
        supervisor.start()
    except SupervisorError as exc:
        raise LaunchError(str(exc)) from None
    cleanups: list[Callable[[], None]] = []
    try:
        if settings.metrics_port:
            _, stop_metrics = serve_metrics(supervisor, settings.metrics_host, settings.metrics_port)
            cleanups.append(stop_metrics)
            log.info("Prometheus metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
        collector = LoadCollector(Subscriber(supervisor.settings.endpoint("bus_sub"),
                                             [CallStarted, CallEnded, UtteranceReady, Transcript, TurnTaken]))
        cleanups.append(collector.subscriber.close)
        cpu = CpuMeter()
        started = time.monotonic()
        deadline = started + duration_s if (duration_s and not simulated) else float("inf")
        pbx = supervisor.children.get("pbx_sim")
        done_at: list[float] = []
        next_progress = [started + progress_every_s]

        def observe() -> float:
            """Read the bus and print progress now and then; the time."""
            collector.poll()
            now = time.monotonic()
            if progress is not None and now >= next_progress[0]:
                next_progress[0] = now + progress_every_s
                # Since the start, from the histograms Prometheus scrapes. Calls are counted from the
                # dialog's CallStarted/CallEnded: the same for any PBX.
                h = RunHistograms.read(supervisor.metrics_dir)
                progress(f"[{now - started:6.0f} s] calls active {collector.calls_active}, finished "
                         f"{len(collector.calls_ended)} | eos->transcript p50 {h.ms('eos_to_transcript', 0.5):.0f} "
                         f"p95 {h.ms('eos_to_transcript', 0.95):.0f} ms | eos->reply p50 "
                         f"{h.ms('eos_to_reply', 0.5):.0f} p95 {h.ms('eos_to_reply', 0.95):.0f} ms")
            return now

        def finished() -> bool:
            now = observe()
            if should_stop() or drain_requested() or now >= deadline:
                return True
            if pbx is not None and pbx.metrics.get("done"):
                # Every call placed and ended: give the last transcripts a moment.
                done_at.append(now)
                return collector.pending == 0 or now - done_at[0] > 15.0
            return False

        log.info("running (%d processes); Ctrl-C stops, SIGTERM drains (`rtcore drain`)", len(supervisor.children))
        supervisor.run(finished)
        drain: dict[str, int] | None = None
        if drain_requested() and not should_stop():
            log.info("draining: no new call; the calls in progress may go on for %.0f s", settings.drain_timeout_s)

            def drain_stop() -> bool:
                observe()  # progress goes on during the drain
                return should_stop()

            drain = supervisor.drain(settings.drain_timeout_s, should_stop=drain_stop)
        collector.poll()
        client = sync_client(supervisor.settings, timeout_s=5.0)
        try:
            # A shared Redis holds every node's leads: this run's report is about this node's.
            mine = supervisor.settings.node_id if supervisor.settings.clustered else ""
            leads = [lead for lead in read_leads(client) if lead.node == mine]
        finally:
            client.close()
        report = build_report(collector, leads, RunHistograms.read(supervisor.metrics_dir), cpu.percent(),
                              drain=drain)
        if simulated and pbx is not None and pbx.metrics.get("done"):
            report["left_behind"] = left_behind(supervisor)
        return report
    finally:
        for cleanup in cleanups:
            cleanup()
        supervisor.stop()
        log.info("stopped")


def run_asr_node(settings: Settings, duration_s: float | None, should_stop: Callable[[], bool],
                 progress: Callable[[str], None] | None, progress_every_s: float,
                 drain_requested: Callable[[], bool]) -> dict[str, Any]:
    """`rtcore launch --role asr`: ASR stream workers only, until stopped (or `duration_s`); no
    call, no private Redis. Returns what its workers did. SIGTERM stops it like Ctrl-C: what its
    workers held is claimed by the other ASR nodes after stream_claim_idle_s."""
    from rtcore.launch.pipeline import pipeline
    from rtcore.runtime.cluster import ClusterKeys, stream_state
    from rtcore.runtime.metrics import serve_metrics
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.runtime.redis_client import sync_client
    from rtcore.runtime.supervisor import Supervisor, SupervisorError

    log.info("rtcore launch --role asr, node %s, instance %r, settings: %s", settings.node_id, settings.instance,
             json.dumps(settings.redacted()))
    whisper_model_dir(settings)
    supervisor = Supervisor(settings, pipeline(settings), private_redis=False)
    try:
        supervisor.start()
    except SupervisorError as exc:
        raise LaunchError(str(exc)) from None
    stop_metrics: Callable[[], None] | None = None
    client = sync_client(settings, timeout_s=2.0)
    keys = ClusterKeys(settings.cluster_name)
    try:
        if settings.metrics_port:
            _, stop_metrics = serve_metrics(supervisor, settings.metrics_host, settings.metrics_port)
        started = time.monotonic()
        deadline = started + duration_s if duration_s else float("inf")
        next_progress = [started + progress_every_s]

        def finished() -> bool:
            now = time.monotonic()
            if progress is not None and now >= next_progress[0]:
                next_progress[0] = now + progress_every_s
                try:
                    stream = stream_state(client, keys)
                    queue = f"stream waiting {stream.waiting} (oldest {stream.oldest_waiting_s:.1f} s), taken " \
                            f"{stream.taken}"
                except redis.RedisError as exc:
                    queue = f"Redis: {exc}"
                done = sum(c.metrics.get("utterances", 0.0) for c in supervisor.children.values())
                progress(f"[{now - started:6.0f} s] node {settings.node_id}: {done:.0f} utterances transcribed"
                         f" | {queue}")
            return should_stop() or drain_requested() or now >= deadline

        log.info("ASR node %s running (%d workers); Ctrl-C or SIGTERM stops", settings.node_id,
                 len(supervisor.children))
        supervisor.run(finished)
        workers = {name: dict(child.metrics) for name, child in supervisor.children.items()}
        return {"role": "asr", "node": settings.node_id, "workers": workers,
                "utterances": int(sum(w.get("utterances", 0.0) for w in workers.values())),
                "batches": int(sum(w.get("batches", 0.0) for w in workers.values())),
                "claimed": int(sum(w.get("claimed", 0.0) for w in workers.values())),
                "duplicate_answers": int(sum(w.get("duplicate_answers", 0.0) for w in workers.values()))}
    finally:
        if stop_metrics is not None:
            stop_metrics()
        client.close()
        supervisor.stop()
        log.info("stopped")
