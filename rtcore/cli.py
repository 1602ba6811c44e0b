"""The `rtcore` command.

Every setting is also a flag (`--asr-batch-size 16`), layered over the config file and the
RTCORE_* environment; see rtcore.runtime.config.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import types
from pathlib import Path
import typing
from typing import Any, Callable, Sequence

from rtcore.runtime.config import ConfigError, Settings, load_settings

log = logging.getLogger("rtcore")


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override config file and RTCORE_* environment)")
    group.add_argument("--config", metavar="FILE", help="YAML, TOML or JSON config file (default: $RTCORE_CONFIG)")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        choices = None
        if typing.get_origin(annotation) is typing.Literal:
            choices = [str(c) for c in typing.get_args(annotation)]
        help_text = (info.description or "") + f" [default: {info.default!s}]"
        # Values stay strings here: pydantic converts and validates them with the other layers,
        # so a bad flag gets the same message (naming the field) as a bad env var.
        group.add_argument(flag, dest=f"setting_{name}", metavar=name.upper(), choices=choices,
                           default=None, help=help_text.replace("%", "%%"))


def _settings_from(args: argparse.Namespace) -> Settings:
    cli = {key[len("setting_"):]: value for key, value in vars(args).items()
           if key.startswith("setting_") and value is not None}
    return load_settings(config_file=args.config, cli=cli)


# --- subcommands -------------------------------------------------------------------------------
def cmd_launch(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.launch.launcher import LaunchError, run_launch
    from rtcore.runtime.logs import setup_logging
    from rtcore.launch.report import dump, format_report

    setup_logging(settings, process="supervisor")
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
    from procs import http_service
    from rtcore.asr.http_api import listening_url
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


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.runtime.models import silero_onnx_path, whisper_model_dir

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(json.dumps({"whisper": str(whisper_model_dir(settings, verify=args.verify)),
                      "silero_vad": str(silero_onnx_path())}, indent=2))
    return 0


def _segment_files(files: list[str], settings: Settings, command: str) -> tuple[list[str], list[Any], list[Any], int]:
    """Decode files (reporting the undecodable ones) and cut them into utterances, all files in one
    batched VAD inference per step, as the live VAD runs calls. (names, signals, utterances, failures)"""
    from rtcore.runtime.audio import AudioError, load_audio
    from rtcore.vad.segmenter import SegmenterOptions, segment_streams
    from rtcore.vad.silero import BatchedVad, SileroVad

    names, streams, failed = [], [], 0
    for name in files:
        try:
            streams.append(load_audio(name))
            names.append(name)
        except AudioError as exc:
            print(f"rtcore {command}: {exc}", file=sys.stderr)
            failed += 1
    segments = segment_streams(streams, SegmenterOptions.from_settings(settings),
                               BatchedVad(SileroVad(), capacity=max(1, len(streams))))
    return names, streams, segments, failed


def cmd_segment(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.runtime.audio import SAMPLE_RATE

    names, _, results, failed = _segment_files(args.files, settings, "segment")
    for name, utterances in zip(names, results):
        spans = [{"start": round(u.start / SAMPLE_RATE, 3), "end": round(u.end / SAMPLE_RATE, 3)} for u in utterances]
        if args.json:
            print(json.dumps({"file": name, "utterances": spans}, ensure_ascii=False))
        else:
            print(f"{name}: {len(spans)} utterances")
            for span in spans:
                print(f"  {span['start']:8.3f}  {span['end']:8.3f}")
    return 1 if failed else 0


def cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.asr.worker import transcribe_offline
    from rtcore.runtime.audio import SAMPLE_RATE
    from rtcore.asr.batcher import BatchPolicy
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.asr.whisper import WhisperEngine, WhisperOptions

    names, streams, segments, failed = _segment_files(args.files, settings, "transcribe")
    engine = WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings)))
    # Every utterance of every file through one batcher: batches mix files, as they mix calls.
    items = [(f"{i}:{j}", streams[i][u.start:u.end]) for i, utts in enumerate(segments) for j, u in enumerate(utts)]
    results = transcribe_offline(engine, BatchPolicy.from_settings(settings), items, language=settings.asr_language)
    for i, (name, utts) in enumerate(zip(names, segments)):
        rows = []
        for j, u in enumerate(utts):
            result = results[f"{i}:{j}"]
            row: dict[str, Any] = {"start": round(u.start / SAMPLE_RATE, 3), "end": round(u.end / SAMPLE_RATE, 3),
                                   "text": "" if result.hallucination else result.text}
            if result.hallucination:
                row["flagged"] = result.reason  # Whisper's output kept out of the text: not speech
            rows.append(row)
        text = " ".join(r["text"] for r in rows if r["text"])
        if args.json:
            print(json.dumps({"file": name, "text": text, "utterances": rows}, ensure_ascii=False))
        else:
            print(f"{name}:")
            for r in rows:
                shown = r["text"] if "flagged" not in r else f"[flagged: {r['flagged']}]"
                print(f"  {r['start']:8.3f}  {r['end']:8.3f}  {shown}")
    return 1 if failed else 0


def cmd_prompts(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.dialog.script import load_script
    from rtcore.dialog.prompts import build_prompts, install_prompts

    script = load_script(settings.dialog_script or None)
    if args.prompts_command == "install":
        sounds_dir = Path(args.sounds_dir)
        done = install_prompts(script, sounds_dir, settings.prompts_path, settings.tts_command, force=args.force)
        for r in done.rendered:
            exts = ",".join(path.suffix.lstrip(".") for path in r.files)
            print(f"{r.seconds:6.2f} s  {'cached  ' if r.cached else 'rendered'}  {sounds_dir / r.audio}.{{{exts}}}")
        for path in done.removed:
            print(f"removed stale {path} (a 16 kHz .wav fails every playback on Asterisk)")
        for warning in done.warnings:
            print(f"warning: {warning}")
        print(f"{len(done.written)} files of {len(done.rendered)} prompts installed in {sounds_dir} "
              f"({sum(not r.cached for r in done.rendered)} rendered, {len(done.removed)} stale removed)")
        if done.remote_hint():
            print(done.remote_hint())
        return 0
    out = Path(args.out) if args.out else settings.prompts_path
    rendered = build_prompts(script, out, settings.tts_command, force=args.force)
    for r in rendered:
        exts = ",".join(path.suffix.lstrip(".") for path in r.files)
        print(f"{r.seconds:6.2f} s  {'cached  ' if r.cached else 'rendered'}  {out / r.audio}.{{{exts}}}")
    print(f"{len(rendered)} prompts in {out} ({sum(not r.cached for r in rendered)} rendered)")
    return 0


def cmd_leads(args: argparse.Namespace, settings: Settings) -> int:
    import redis

    from rtcore.dialog.leads import export_leads, read_leads

    url = settings.redis_url or f"unix://{settings.run_path / 'redis.sock'}"
    client = redis.Redis.from_url(url, socket_timeout=5.0)
    try:
        sys.stdout.write(export_leads(read_leads(client), args.format))
    except redis.RedisError as exc:
        hint = "" if settings.redis_url else " (is `rtcore launch` running? set redis_url otherwise)"
        print(f"rtcore leads: cannot read Redis at {url}: {exc}{hint}", file=sys.stderr)
        return 2
    finally:
        client.close()
    return 0


def cmd_intent(args: argparse.Namespace, settings: Settings) -> int:
    """Classify transcripts (one, or state<TAB>text lines of a batch file) into intents and slots."""
    import asyncio

    from rtcore.intents.base import DIALOG_STATES, IntentResult, IntentSource

    if (args.text is None) == (args.batch is None):
        print("rtcore intent: give either TEXT or --batch FILE", file=sys.stderr)
        return 2
    items: list[tuple[str, str | None, str]] = []  # (where, state, text)
    failed = False
    if args.text is not None:
        items.append(("TEXT", args.state, args.text))
    else:
        name = "stdin" if args.batch == "-" else args.batch
        try:
            content = sys.stdin.read() if args.batch == "-" else Path(args.batch).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"rtcore intent: cannot read {name}: {exc}", file=sys.stderr)
            return 2
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[1].strip():
                print(f"rtcore intent: {name}:{number}: expected state<TAB>text, got {line!r}", file=sys.stderr)
                failed = True
                continue
            items.append((f"{name}:{number}", fields[0].strip() or None, fields[1]))

    source: IntentSource
    if args.remote:
        if not settings.intent_main_url:
            print("rtcore intent: --remote needs intent_main_url (and optionally intent_faq_url)", file=sys.stderr)
            return 2
        from rtcore.intents.http_client import HttpIntentClient, HttpIntentOptions

        source = HttpIntentClient(HttpIntentOptions.from_settings(settings))
    else:
        from rtcore.intents.classifier import EmbeddedIntentSource

        source = EmbeddedIntentSource()

    async def classify_all() -> bool:
        any_failed = False
        try:
            for where, state, text in items:
                if state is not None and state not in DIALOG_STATES:
                    print(f"rtcore intent: {where}: unknown state {state!r} (one of {', '.join(DIALOG_STATES)})",
                          file=sys.stderr)
                    any_failed = True
                    continue
                result: IntentResult = await source.classify(text, state)
                if result.error:
                    print(f"rtcore intent: {where}: {result.error}", file=sys.stderr)
                    any_failed = True
                print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                await close()
        return any_failed

    failed = asyncio.run(classify_all()) or failed
    return 1 if failed else 0


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


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtcore", description="Real-time French voice bot for Asterisk.")
    sub = parser.add_subparsers(dest="command", required=True)

    launch = sub.add_parser("launch", help="start every process and run until Ctrl-C (or the load is done)")
    launch.add_argument("--calls", type=int, metavar="N", help="simulated calls kept in progress (embedded PBX)")
    launch.add_argument("--total-calls", type=int, metavar="M", help="stop after M calls (embedded PBX)")
    launch.add_argument("--duration", type=float, metavar="S",
                        help="place calls for S seconds, then let them finish (with --ari-url: stop after S s)")
    launch.add_argument("--json", metavar="PATH", help="write the final report as JSON")
    launch.set_defaults(func=cmd_launch)

    serve = sub.add_parser("serve", help="run the Whisper HTTP API with the batched ASR until Ctrl-C")
    serve.add_argument("--duration", type=float, default=0.0, metavar="S", help="stop after S seconds")
    serve.set_defaults(func=cmd_serve)

    models = sub.add_parser("models", help="assemble and locate the models (no network)")
    models.add_argument("--verify", action="store_true", help="re-check the Whisper model's SHA-256")
    models.set_defaults(func=cmd_models)

    config = sub.add_parser("config", help="print the effective settings (passwords hidden)")
    config.set_defaults(func=cmd_config)

    segment = sub.add_parser("segment", help="cut audio files into utterances with the live VAD and segmenter")
    segment.add_argument("files", nargs="+", metavar="FILE", help="any format FFmpeg decodes; resampled to 16 kHz")
    segment.add_argument("--json", action="store_true", help="one JSON object per file")
    segment.set_defaults(func=cmd_segment)

    prompts = sub.add_parser("prompts", help="render the dialog's prompts to audio and install them for Asterisk")
    prompts_sub = prompts.add_subparsers(dest="prompts_command", required=True)
    build = prompts_sub.add_parser("build", help="render every prompt to .sln16 (16 kHz), .ulaw and .alaw (8 kHz) "
                                                 "with the TTS command and sox")
    build.add_argument("--out", metavar="DIR", help="output directory (default: prompts_dir)")
    build.add_argument("--force", action="store_true", help="render again even if unchanged")
    build.set_defaults(func=cmd_prompts)
    install = prompts_sub.add_parser(
        "install", help="render (cached in prompts_dir) and install every prompt into Asterisk's sounds directory "
                        "as <DIR>/rtcore/<name>.sln16|.ulaw|.alaw, removing stale .wav files")
    install.add_argument("--sounds-dir", required=True, metavar="DIR",
                         help="Asterisk's sounds directory, e.g. /var/lib/asterisk/sounds")
    install.add_argument("--force", action="store_true", help="render again even if unchanged")
    install.set_defaults(func=cmd_prompts)
    _add_setting_flags(install)

    leads = sub.add_parser("leads", help="the qualified leads stored in Redis")
    leads_sub = leads.add_subparsers(dest="leads_command", required=True)
    export = leads_sub.add_parser("export", help="print every lead")
    export.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    export.set_defaults(func=cmd_leads)

    bench = sub.add_parser("bench", help="benchmarks")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    load = bench_sub.add_parser("load", help="capacity@SLO of rtcore and two baselines under simulated calls")
    load.add_argument("--calls", default="1,2,4,8,16,32", help="concurrency levels (comma-separated)")
    load.add_argument("--duration", type=float, default=60.0, metavar="S", help="seconds of calls placed per level")
    load.add_argument("--out", default="bench/results", metavar="DIR", help="where load.json/.md/.png go")
    load.add_argument("--no-baselines", action="store_true", help="rtcore only")
    load.add_argument("--batch-size", help="sweep, e.g. 4,8,16")
    load.add_argument("--max-wait-ms", help="sweep, e.g. 20,50,100")
    load.add_argument("--window", help="sweep of asr_window_s, e.g. 10,15")
    load.add_argument("--workers", help="sweep of asr_workers, e.g. 1,2")
    load.add_argument("--threads", help="sweep of asr_intra_threads, e.g. 1,2")
    load.add_argument("--beam", help="sweep of asr_beam_size, e.g. 1,5")
    load.set_defaults(func=cmd_bench_load)

    transcribe = sub.add_parser("transcribe", help="segment audio files with the VAD and transcribe them with the batched ASR")
    transcribe.add_argument("files", nargs="+", metavar="FILE", help="any format FFmpeg decodes; resampled to 16 kHz")
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file")
    transcribe.set_defaults(func=cmd_transcribe)

    intent = sub.add_parser("intent", help="classify transcripts into intents and slots (embedded classifier or --remote)")
    intent.add_argument("text", nargs="?", metavar="TEXT", help="one transcript")
    intent.add_argument("--state", metavar="STATE", default=None,
                        help="dialog state the transcript answers (init, ask_zip_code, ask_owner_house, ...)")
    intent.add_argument("--batch", metavar="FILE", help="state<TAB>text lines ('-': stdin); one JSON line each")
    intent.add_argument("--remote", action="store_true", help="use the HTTP intent APIs (intent_main_url, intent_faq_url)")
    intent.set_defaults(func=cmd_intent)

    for p in (launch, serve, models, config, segment, transcribe, build, export, load, intent):
        _add_setting_flags(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings_from(args)
    except ConfigError as exc:
        print(f"rtcore: {exc}", file=sys.stderr)
        return 2
    from rtcore.dialog.script import ScriptError
    from rtcore.runtime.models import ModelError
    from rtcore.dialog.prompts import PromptError
    from rtcore.runtime.redis_server import RedisServerError

    try:
        result: Any = args.func(args, settings)
    except (ModelError, RedisServerError, ConfigError, PromptError, ScriptError) as exc:
        print(f"rtcore: {exc}", file=sys.stderr)
        return 2
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
