"""The `rtcore` commands that work in-process on files, Redis or text: models, segment, transcribe,
prompts, leads, intent, config."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from rtcore.runtime.config import Settings

log = logging.getLogger("rtcore")


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
    for name, utterances in zip(names, results, strict=True):
        spans = [{"start": round(u.start / SAMPLE_RATE, 3), "end": round(u.end / SAMPLE_RATE, 3)} for u in utterances]
        if args.json:
            print(json.dumps({"file": name, "utterances": spans}, ensure_ascii=False))
        else:
            print(f"{name}: {len(spans)} utterances")
            for span in spans:
                print(f"  {span['start']:8.3f}  {span['end']:8.3f}")
    return 1 if failed else 0


def cmd_transcribe(args: argparse.Namespace, settings: Settings) -> int:
    from rtcore.asr.batcher import BatchPolicy
    from rtcore.asr.whisper import WhisperEngine, WhisperOptions
    from rtcore.asr.worker import transcribe_offline
    from rtcore.runtime.audio import SAMPLE_RATE
    from rtcore.runtime.models import whisper_model_dir

    names, streams, segments, failed = _segment_files(args.files, settings, "transcribe")
    engine = WhisperEngine(WhisperOptions.from_settings(settings, whisper_model_dir(settings)))
    # Every utterance of every file through one batcher: batches mix files, as they mix calls.
    items = [(f"{i}:{j}", streams[i][u.start:u.end]) for i, utts in enumerate(segments) for j, u in enumerate(utts)]
    results = transcribe_offline(engine, BatchPolicy.from_settings(settings), items, language=settings.asr_language)
    for i, (name, utts) in enumerate(zip(names, segments, strict=True)):
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
    from rtcore.dialog.prompts import build_prompts, install_prompts
    from rtcore.dialog.script import load_script

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
    from rtcore.runtime.redis_client import explain, sync_client

    shared = bool(settings.redis_url or settings.redis_sentinels)
    if not shared:  # the private redis-server of the instance's `rtcore launch`
        settings = settings.model_copy(update={"redis_url": f"unix://{settings.run_path / 'redis.sock'}"})
    client = sync_client(settings, timeout_s=5.0)
    try:
        sys.stdout.write(export_leads(read_leads(client), args.format))
    except redis.RedisError as exc:
        hint = "" if shared else " (is `rtcore launch` running? set redis_url otherwise)"
        print(f"rtcore leads: {explain(exc, settings)}{hint}", file=sys.stderr)
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


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    print(json.dumps(settings.redacted(), indent=2))
    return 0
