"""Logging set-up shared by every process: one line per record, the process name in each.

Two formats (`log_format`): "text", the seed's line (`time level process[pid] logger: message`),
and "json", one object per line for a log pipeline (Loki, Elasticsearch...). Every record about a
call carries its call id: in the message ("call <id> ...", our convention for every call's line),
and as the `call_id` field in JSON. The id comes from, in order: `extra={"call_id": ...}`, the
`call_context()` of the task that logs, or the argument of a message that starts "call %s".

What callers said, their numbers and their zip codes are personal data: no INFO line carries them
(a test reads a whole run's log for them); DEBUG may, for a developer's own machine.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rtcore.runtime.config import Settings

CALL_ID: contextvars.ContextVar[str] = contextvars.ContextVar("rtcore_call_id", default="")
_CALL_PREFIXES = ("call %s", "Call %s")


@contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """Records logged inside (and in the asyncio tasks created inside) are about this call."""
    token = CALL_ID.set(call_id)
    try:
        yield
    finally:
        CALL_ID.reset(token)


def call_id_of(record: logging.LogRecord) -> str:
    given = getattr(record, "call_id", "")
    if given:
        return str(given)
    current = CALL_ID.get()
    if current:
        return current
    if isinstance(record.msg, str) and record.msg.startswith(_CALL_PREFIXES) and isinstance(record.args, tuple) \
            and record.args:
        return str(record.args[0])
    return ""


class CallIdFilter(logging.Filter):
    """Sets `record.call_id` ("" when the record is about no call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = call_id_of(record)
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self._process,
            "pid": record.process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        call_id = getattr(record, "call_id", "") or call_id_of(record)
        if call_id:
            entry["call_id"] = call_id
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The seed's line; a record about a call whose message does not name it gets `[call <id>]`."""

    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {process}[%(process)d] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        call_id = getattr(record, "call_id", "") or call_id_of(record)
        if call_id and call_id not in record.getMessage():
            line += f" [call {call_id}]"
        return line


def setup_logging(settings: Settings, process: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(CallIdFilter())
    handler.setFormatter(JsonFormatter(process) if settings.log_format == "json" else TextFormatter(process))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
