"""`rtcore launch`, `rtcore serve` and `rtcore bench load`: the commands that run processes."""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import time
import types
from pathlib import Path

from rtcore.runtime.config import Settings

log = logging.getLogger("rtcore")
STOP_MARGIN_S = 30.0  # `rtcore drain`: what a stop may take beyond the children's stop_timeout_s (Redis, models)


def cmd_launch(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.launcher import LaunchError, run_launch
    from rtcore.launch.report import dump, format_report
    from rtcore.runtime.logs import setup_logging

    setup_logging(settings, process="supervisor")
    if settings.redis_url or settings.redis_sentinels:  # a shared Redis: usable, before any process starts
        from rtcore.runtime.redis_client import RedisConfigError, check_redis, describe

        try:
            log.info("Redis %s at %s", check_redis(settings), describe(settings))
        except RedisConfigError as exc:
            log.error("%s", exc)
            return 1
    if args.caller_codec:
        settings = settings.model_copy(update={"sim_caller_codec": args.caller_codec})
    # SIGTERM (a service manager, `rtcore drain`) drains: no new call, the calls in progress may
    # finish (drain_timeout_s), then stop. Ctrl-C (SIGINT) stops now. A signal during a drain stops
    # now; one more stops without waiting for the children to finish nicely.
    drain_requested: list[int] = []
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: types.FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_requested:
            raise KeyboardInterrupt
        if signum == signal.SIGTERM and not drain_requested:
            drain_requested.append(signum)
            log.info("received %s: draining (no new call; up to %.0f s for the calls in progress), then stopping",
                     name, settings.drain_timeout_s)
            return
        stop_requested.append(signum)
        log.info("received %s: stopping%s", name, " now, without waiting for the drain" if drain_requested else "")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        report = run_launch(settings, calls=args.calls, total_calls=args.total_calls, duration_s=args.duration,
                            should_stop=lambda: bool(stop_requested), progress=lambda line: print(line, flush=True),
                            drain_requested=lambda: bool(drain_requested))
    except LaunchError as exc:
        log.error("%s", exc)
        return 1
    heading = ("partial report (stopped early):\n" if stop_requested
               else "report (drained, then stopped):\n" if drain_requested else "report:\n")
    print(heading + format_report(report))
    if args.json:
        Path(args.json).write_text(dump(report) + "\n")
    return 0


def cmd_drain(args: argparse.Namespace, settings: Settings) -> int:
    """Drain the instance's running `rtcore launch` (SIGTERM to its supervisor) and wait for it to exit."""
    from rtcore.runtime.supervisor import DRAIN_MARGIN_S, DRAIN_RESULT_FILE, InstanceLock

    lock = InstanceLock(settings.run_path)
    pid = lock.holder()
    if pid is None:
        print(f"rtcore drain: no rtcore supervisor of instance {settings.instance!r} is running "
              f"(nothing holds {lock.path})", file=sys.stderr)
        return 1
    result = settings.run_path / DRAIN_RESULT_FILE
    result.unlink(missing_ok=True)  # an earlier drain's
    # Its drain, then its stop: every child in turn (up to stop_timeout_s each), Redis, the rest.
    limit = settings.drain_timeout_s + DRAIN_MARGIN_S + STOP_MARGIN_S + 10 * settings.stop_timeout_s
    try:
        # A pidfd names that very process (no pid reuse) and becomes readable once it has exited,
        # whether or not its parent has reaped it yet.
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        print(f"rtcore drain: supervisor pid {pid} of instance {settings.instance!r} has just exited", file=sys.stderr)
        return 1
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGTERM)
        print(f"draining rtcore (instance {settings.instance!r}, supervisor pid {pid}): no new call; the calls in "
              f"progress may go on for {settings.drain_timeout_s:.0f} s, then it stops", flush=True)
        started = time.monotonic()
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        exited = bool(poller.poll(int(limit * 1000)))
    finally:
        os.close(pidfd)
    if not exited:
        print(f"rtcore drain: the supervisor (pid {pid}) is still running after {limit:.0f} s; stop it with "
              f"`kill {pid}` (again: at once)", file=sys.stderr)
        return 1
    if result.exists():
        drained = json.loads(result.read_text())
        print(f"drained: {drained.get('calls_in_progress', 0)} calls in progress, {drained.get('finished', 0)} "
              f"finished, {drained.get('ended', 0)} ended at the timeout, {drained.get('refused', 0)} new callers "
              "refused")
    print(f"stopped after {time.monotonic() - started:.1f} s")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The Whisper HTTP service alone: the ASR dispatcher and workers plus the HTTP API (no Redis)."""
    from rtcore.asr.http_api import listening_url
    from rtcore.launch.pipeline import http_service
    from rtcore.runtime.logs import setup_logging
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.runtime.supervisor import Supervisor, SupervisorError

    setup_logging(settings, process="supervisor")
    log.info("rtcore serve, instance %r, settings: %s", settings.instance, json.dumps(settings.redacted()))
    whisper_model_dir(settings)  # assembled once here, not concurrently in every worker
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: types.FrameType | None) -> None:
        if stop_requested:
            raise KeyboardInterrupt
        stop_requested.append(signum)
        log.info("received %s: stopping", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    supervisor = Supervisor(settings, http_service(settings), private_redis=False)
    try:
        supervisor.start()
    except SupervisorError as exc:
        log.error("%s", exc)
        return 1
    stop_metrics = None
    try:
        if settings.metrics_port:
            from rtcore.runtime.metrics import serve_metrics

            _, stop_metrics = serve_metrics(supervisor, settings.metrics_host, settings.metrics_port)
            log.info("Prometheus metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
        # The API reports its bound port before it reports ready (http_port 0: any free port).
        port = int(supervisor.children["http_api"].metrics.get("listening_port", settings.http_port))
        print(f"Whisper HTTP API on {listening_url(settings.http_host, port)} (Ctrl-C stops)", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else float("inf")
        supervisor.run(lambda: bool(stop_requested) or time.monotonic() >= deadline)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        supervisor.stop()
        log.info("stopped")
    return 0


def cmd_bench_load(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.loadbench import run_bench
    from rtcore.runtime.logs import setup_logging

    setup_logging(settings.model_copy(update={"log_level": "WARNING"}), process="bench")

    def numbers(text: str | None) -> list[float]:
        return [float(v) for v in text.split(",")] if text else []

    tuning = {"batch_size": numbers(args.batch_size), "max_wait_ms": numbers(args.max_wait_ms),
              "window_s": numbers(args.window), "workers": numbers(args.workers),
              "threads": numbers(args.threads), "beam": numbers(args.beam)}
    from rtcore.launch.loadbench import TOPOLOGIES

    topologies = tuple(t.strip() for t in args.topology.split(",") if t.strip())
    unknown = [t for t in topologies if t not in TOPOLOGIES]
    if unknown or not topologies:
        print(f"rtcore bench load: --topology {args.topology}: expected some of {', '.join(TOPOLOGIES)}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    result = run_bench(settings, [int(v) for v in args.calls.split(",")], args.duration, out, tuning,
                       baselines=not args.no_baselines, topologies=topologies)
    print((out / "load.md").read_text())
    print(f"wrote {out / 'load.json'}, {out / 'load.md'}, {out / 'load.png'}")
    return 0 if result["rows"] else 1


def cmd_bench_understanding(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.understanding import run_understanding
    from rtcore.runtime.logs import setup_logging

    setup_logging(settings.model_copy(update={"log_level": "WARNING"}), process="bench")
    if args.caller_codec:
        settings = settings.model_copy(update={"sim_caller_codec": args.caller_codec})
    shared = Path(__file__).resolve().parents[3] / "shared" / "audio" / "fr"  # ../shared beside the checkout
    audio = Path(settings.sim_audio_dir) if settings.sim_audio_dir else shared
    out = Path(args.out)
    run_understanding(settings, out, scenarios=tuple(n.strip() for n in args.scenarios.split(",") if n.strip()),
                      per_scenario=args.calls_per_scenario, concurrency=args.concurrency,
                      context_tokens=tuple(int(v) for v in args.contexts.split(",")),
                      model_paths=("", *args.model_path), calls=not args.no_calls,  # base first, always
                      audio_dir=audio if audio.is_dir() else None)
    print((out / "understanding.md").read_text())
    print(f"wrote {out / 'understanding.json'}, {out / 'understanding.md'}")
    return 0


def cmd_bench_chaos(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.chaos import FAULTS, run_chaos
    from rtcore.runtime.logs import setup_logging

    setup_logging(settings.model_copy(update={"log_level": "WARNING"}), process="bench")
    shared = Path(__file__).resolve().parents[3] / "shared" / "audio" / "fr"  # ../shared beside the checkout
    audio = Path(settings.sim_audio_dir) if settings.sim_audio_dir else shared
    out = Path(args.out)
    report = run_chaos(settings, out, calls=args.calls, interval_s=args.interval, redis_down_s=args.redis_down,
                       rtp_datagrams=args.rtp_datagrams, soak_s=args.soak, drain=not args.no_drain,
                       faults_wanted=tuple(f.strip() for f in args.faults.split(",") if f.strip()) or FAULTS,
                       audio_dir=audio if audio.is_dir() else None, progress=lambda line: print(line, flush=True))
    print(Path(report["files"][1]).read_text())
    print("wrote " + ", ".join(report["files"]))
    lost = report["totals"]["lost"] + report["totals"]["duplicated"]
    return 1 if lost else 0
