"""The `rtcore` command: its parser and `main` here, the commands in running.py (those that run
processes: launch, serve, bench load) and tools.py (those that work in-process).

Every setting is also a flag (`--asr-batch-size 16`), layered over the config file and the
RTCORE_* environment; see rtcore.runtime.config.
"""

from __future__ import annotations

import argparse
import sys
import typing
from collections.abc import Sequence
from typing import Any

from rtcore.cli.cluster import cmd_cluster
from rtcore.cli.running import (
    cmd_bench_chaos,
    cmd_bench_load,
    cmd_bench_understanding,
    cmd_drain,
    cmd_launch,
    cmd_serve,
)
from rtcore.cli.tools import (
    cmd_config,
    cmd_intent,
    cmd_leads,
    cmd_models,
    cmd_prompts,
    cmd_segment,
    cmd_transcribe,
)
from rtcore.runtime.config import ConfigError, Settings, load_settings


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtcore", description="Real-time French voice bot for Asterisk.")
    sub = parser.add_subparsers(dest="command", required=True)

    launch = sub.add_parser("launch", help="start every process and run until Ctrl-C (or the load is done)")
    launch.add_argument("--calls", type=int, metavar="N", help="simulated calls kept in progress (embedded PBX)")
    launch.add_argument("--total-calls", type=int, metavar="M", help="stop after M calls (embedded PBX)")
    launch.add_argument("--duration", type=float, metavar="S",
                        help="place calls for S seconds, then let them finish (with --ari-url: stop after S s)")
    launch.add_argument("--json", metavar="PATH", help="write the final report as JSON")
    launch.add_argument("--caller-codec", choices=["ulaw", "alaw", "slin16"], default=None,
                        help="how simulated callers reach the embedded PBX (setting sim_caller_codec; default ulaw)")
    launch.set_defaults(func=cmd_launch)

    drain = sub.add_parser("drain", help="drain the running `rtcore launch` of the instance: no new call, let the "
                                         "calls in progress finish (drain_timeout_s), then stop; waits for it")
    drain.set_defaults(func=cmd_drain)

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

    cluster = sub.add_parser("cluster", help="the nodes sharing this Redis (role media / asr)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    status = cluster_sub.add_parser("status", help="nodes, roles, capacity, queue depth and lag, from Redis")
    status.add_argument("--json", action="store_true", help="the snapshot as JSON")
    status.set_defaults(func=cmd_cluster)
    _add_setting_flags(status)

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
    load.add_argument("--topology", default="local",
                      help="comma-separated: local (one box, its ZeroMQ dispatcher), stream (one box through a Redis "
                           "stream), media+1asr, media+2asr (a media node and ASR nodes on this machine)")
    load.set_defaults(func=cmd_bench_load)
    understanding = bench_sub.add_parser(
        "understanding", help="share of scripted phone calls ending with exactly the right lead, answer accuracy, WER")
    understanding.add_argument("--scenarios", default="happy,tenant,refusal,faq_mid_flow,hesitant,barge_in",
                               help="caller scenarios, played in turn")
    understanding.add_argument("--calls-per-scenario", type=int, default=10, metavar="N")
    understanding.add_argument("--concurrency", type=int, default=4, metavar="N", help="calls in progress at once")
    understanding.add_argument("--contexts", default="32,0", help="asr_context_tokens values to compare (0: none)")
    understanding.add_argument("--model-path", action="append", default=[], metavar="DIR",
                               help="a CTranslate2 Whisper directory to compare with Whisper base (repeatable)")
    understanding.add_argument("--caller-codec", choices=["ulaw", "alaw", "slin16"], default=None)
    understanding.add_argument("--no-calls", action="store_true", help="only the offline measures (answers, WER)")
    understanding.add_argument("--out", default="bench/results", metavar="DIR")
    understanding.set_defaults(func=cmd_bench_understanding)
    chaos = bench_sub.add_parser(
        "chaos", help="kill every process type, stop Redis, throw malformed input at a loaded run; what was lost")
    chaos.add_argument("--calls", type=int, default=16, metavar="N", help="simulated calls in progress")
    chaos.add_argument("--interval", type=float, default=40.0, metavar="S", help="seconds between faults")
    chaos.add_argument("--redis-down", type=float, default=8.0, metavar="S", help="how long Redis stays stopped")
    chaos.add_argument("--rtp-datagrams", type=int, default=100_000, metavar="N", help="random RTP datagrams sent")
    chaos.add_argument("--soak", type=float, default=0.0, metavar="S",
                       help="no faults: run the load this long, report memory and descriptors per process")
    chaos.add_argument("--faults", default="", help="comma-separated subset of: rtp_capture, vad, asr_dispatch, "
                                                    "asr-0, dialog, http_api, redis, abuse (default: all)")
    chaos.add_argument("--no-drain", action="store_true", help="end without the SIGTERM drain")
    chaos.add_argument("--out", default="bench/results", metavar="DIR", help="where chaos.json/.md go")
    chaos.set_defaults(func=cmd_bench_chaos)

    transcribe = sub.add_parser(
        "transcribe", help="segment audio files with the VAD and transcribe them with the batched ASR"
    )
    transcribe.add_argument("files", nargs="+", metavar="FILE", help="any format FFmpeg decodes; resampled to 16 kHz")
    transcribe.add_argument("--json", action="store_true", help="one JSON object per file")
    transcribe.set_defaults(func=cmd_transcribe)

    intent = sub.add_parser(
        "intent", help="classify transcripts into intents and slots (embedded classifier or --remote)"
    )
    intent.add_argument("text", nargs="?", metavar="TEXT", help="one transcript")
    intent.add_argument(
        "--state",
        metavar="STATE",
        default=None,
        help="dialog state the transcript answers (init, ask_zip_code, ask_owner_house, ...)",
    )
    intent.add_argument("--batch", metavar="FILE", help="state<TAB>text lines ('-': stdin); one JSON line each")
    intent.add_argument(
        "--remote", action="store_true", help="use the HTTP intent APIs (intent_main_url, intent_faq_url)"
    )
    intent.set_defaults(func=cmd_intent)

    for p in (launch, drain, serve, models, config, segment, transcribe, build, export, load, understanding, chaos,
              intent):
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
    from rtcore.dialog.prompts import PromptError
    from rtcore.dialog.script import ScriptError
    from rtcore.runtime.models import ModelError
    from rtcore.runtime.redis_server import RedisServerError

    try:
        result: Any = args.func(args, settings)
    except (ModelError, RedisServerError, ConfigError, PromptError, ScriptError) as exc:
        print(f"rtcore: {exc}", file=sys.stderr)
        return 2
    return int(result)
