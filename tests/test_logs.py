"""Log lines (rtcore.runtime.logs): the seed's text line or JSON, each line about a call with its id."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from rtcore.runtime.config import Settings
from rtcore.runtime.logs import call_context, setup_logging


def capture(fmt: str) -> tuple[io.StringIO, logging.Logger]:
    setup_logging(Settings(log_format=fmt), process="dialog")  # type: ignore[arg-type]
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return stream, logging.getLogger("rtcore.test")


def test_json_lines_carry_the_call_id_however_the_call_is_named() -> None:
    stream, log = capture("json")

    async def in_a_call_task() -> None:
        log.warning("playback failed twice")  # a task started inside the call's context

    with call_context("c-ctx"):
        asyncio.run(in_a_call_task())
    log.info("call %s ended (%s): %s", "c-arg", "caller hung up", "qualified")
    log.info("something about %s", "the run", extra={"call_id": "c-extra"})
    log.info("ASR dispatcher restarted")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line.get("call_id") for line in lines] == ["c-ctx", "c-arg", "c-extra", None]
    assert lines[1]["msg"] == "call c-arg ended (caller hung up): qualified"
    assert {"ts", "level", "process", "pid", "logger", "msg"} <= set(lines[0]) and lines[0]["process"] == "dialog"
    logging.getLogger().handlers.clear()


def test_text_lines_keep_the_seed_format_and_name_the_call() -> None:
    stream, log = capture("text")
    log.info("call %s answered", "c1")
    with call_context("c2"):
        log.info("prompt played")
    first, second = stream.getvalue().splitlines()
    assert " INFO    dialog[" in first and first.endswith("rtcore.test: call c1 answered")
    assert second.endswith("rtcore.test: prompt played [call c2]")
    logging.getLogger().handlers.clear()
