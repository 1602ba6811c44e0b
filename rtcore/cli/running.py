"""`rtcore launch`, `rtcore serve` and `rtcore bench load`: the commands that run processes."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time
import types
from pathlib import Path

from rtcore.runtime.config import Settings

log = logging.getLogger("rtcore")


def cmd_launch(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.launcher import LaunchError, run_launch
    from rtcore.launch.report import dump, format_report
    from rtcore.runtime.logs import setup_logging

    setup_logging(settings, process="supervisor")
    if args.caller_codec:
        settings = settings.model_copy(update={"sim_caller_codec": args.caller_codec})
    stop_requested: list[int] = []

    def on_signal(signum: int, _frame: types.FrameType | None) -> None:
        if stop_requested:  # a second Ctrl-C: stop waiting for the children to finish nicely
            raise KeyboardInterrupt
        stop_requested.append(signum)
        log.info("received %s: stopping", signal.Signals(signum).name)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        report = run_launch(settings, calls=args.calls, total_calls=args.total_calls, duration_s=args.duration,
                            should_stop=lambda: bool(stop_requested), progress=lambda line: print(line, flush=True))
    except LaunchError as exc:
        log.error("%s", exc)
        return 1
    print(("partial report (stopped early):\n" if stop_requested else "report:\n") + format_report(report))
    if args.json:
        Path(args.json).write_text(dump(report) + "\n")
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
    try:
        # The API reports its bound port before it reports ready (http_port 0: any free port).
        port = int(supervisor.children["http_api"].metrics.get("listening_port", settings.http_port))
        print(f"Whisper HTTP API on {listening_url(settings.http_host, port)} (Ctrl-C stops)", flush=True)
        deadline = time.monotonic() + args.duration if args.duration else float("inf")
        supervisor.run(lambda: bool(stop_requested) or time.monotonic() >= deadline)
    finally:
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
    out = Path(args.out)
    result = run_bench(settings, [int(v) for v in args.calls.split(",")], args.duration, out, tuning,
                       baselines=not args.no_baselines)
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
