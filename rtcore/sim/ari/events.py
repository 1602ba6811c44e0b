"""ARI events: building them as Asterisk does, routing them to the events WebSockets, and waiting on them.

Every event carries `type`, `timestamp`, `asterisk_id` and `application` (compact JSON, as Asterisk
sends). An event goes to the WebSockets subscribed to its application (`?app=a,b`), or to every
`subscribeAll=true` socket; each socket has its own FIFO outbox, so a socket sees events in emission
order. Events emitted while no socket holds the application are lost, like Asterisk's.

Real Asterisk lets one WebSocket hold an application at a time: a newer one takes it over and the
older gets `ApplicationReplaced`, then nothing more (measured on Asterisk 22.10.1). The simulator
does the same by default; `replace_apps=False` lets several sockets share one (an observer's).

`ChangeNotifier` lets tests and drivers wait for a condition without sleeping: every event, request
and socket change re-checks the pending waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rtcore.sim.ari.state import ari_timestamp

log = logging.getLogger(__name__)

T = TypeVar("T")
Event = dict[str, Any]


def encode(message: Mapping[str, Any]) -> str:
    """Asterisk's compact JSON (its Content-Length values match separators without spaces)."""
    return json.dumps(message, separators=(",", ":"))


class ChangeNotifier:
    """Pending waits, each a check re-run whenever something changes; a truthy result resolves it."""

    def __init__(self) -> None:
        self._waits: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []

    def changed(self) -> None:
        for check, future in list(self._waits):
            if future.done():
                continue
            try:
                result = check()
            except Exception as exc:  # noqa: BLE001 - a failing check fails its waiter, not the emitter
                future.set_exception(exc)
                continue
            if result is not None and result is not False:
                future.set_result(result)

    async def wait(self, check: Callable[[], T | None], timeout: float, describe: Callable[[], str]) -> T:
        result = check()
        if result is not None and result is not False:
            return result
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        entry = (check, future)
        self._waits.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(f"nothing matched within {timeout} s: {describe()}") from None
        finally:
            self._waits.remove(entry)


@dataclass(eq=False)
class EventSubscriber:
    """One events WebSocket: its applications and its outbox (None in the outbox ends the sender)."""

    apps: list[str]
    subscribe_all: bool = False
    outbox: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    abort: Callable[[], None] = lambda: None  # set by the server: drops the TCP connection

    def holds(self, app: str) -> bool:
        return app in self.apps


def trim(log: list[Any], limit: int | None) -> int:
    """Forget the oldest entries of a log past twice `limit` (down to `limit`); how many went."""
    if limit is None or len(log) <= 2 * limit:
        return 0
    drop = len(log) - limit
    del log[:drop]
    return drop


class EventHub:
    def __init__(self, asterisk_id: str, notifier: ChangeNotifier, *, replace_apps: bool = False,
                 history_limit: int | None = None) -> None:
        self.asterisk_id = asterisk_id
        self.notifier = notifier
        self.replace_apps = replace_apps
        # Tests read the whole history; a long load run keeps only the last `history_limit` events
        # (indices stay absolute: `trimmed` events were forgotten before history[0]).
        self.history: list[Event] = []
        self.history_limit = history_limit
        self.trimmed = 0
        self.subscribers: list[EventSubscriber] = []

    # --- sockets -------------------------------------------------------------------------------
    def add(self, subscriber: EventSubscriber) -> None:
        if self.replace_apps:
            for app in subscriber.apps:
                for older in self.subscribers:
                    if older.holds(app):
                        older.apps.remove(app)
                        self._deliver(older, self._stamp("ApplicationReplaced", {}, {}, app))
        self.subscribers.append(subscriber)
        log.debug("events socket added", extra={"apps": subscriber.apps, "sockets": len(self.subscribers)})
        self.notifier.changed()

    def remove(self, subscriber: EventSubscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
            subscriber.outbox.put_nowait(None)
            self.notifier.changed()

    def is_registered(self, app: str) -> bool:
        return any(s.holds(app) for s in self.subscribers)

    def subscriber_count(self, app: str | None = None) -> int:
        return sum(1 for s in self.subscribers if app is None or s.holds(app))

    # --- events --------------------------------------------------------------------------------
    def emit(
        self,
        apps: Iterable[str | None],
        event_type: str,
        fields: Mapping[str, Any],
        *,
        leading: Mapping[str, Any] | None = None,
    ) -> None:
        """Sends one event to each application in `apps` (None entries and repeats are skipped).

        `leading` fields come before `type`, as in Asterisk's ChannelVarset and ChannelHangupRequest.
        """
        targets = list(dict.fromkeys(app for app in apps if app))
        delivered_all: set[int] = set()
        for app in targets:
            event = self._stamp(event_type, fields, leading or {}, app)
            self.history.append(event)
            self.trimmed += trim(self.history, self.history_limit)
            for subscriber in self.subscribers:
                if subscriber.holds(app):
                    self._deliver(subscriber, event)
                elif subscriber.subscribe_all and id(subscriber) not in delivered_all:
                    delivered_all.add(id(subscriber))
                    self._deliver(subscriber, {**event, "application": subscriber.apps[0]})
        if targets:
            self.notifier.changed()

    def _stamp(self, event_type: str, fields: Mapping[str, Any], leading: Mapping[str, Any], app: str) -> Event:
        return {
            **leading,
            "type": event_type,
            "timestamp": ari_timestamp(),
            **fields,
            "asterisk_id": self.asterisk_id,
            "application": app,
        }

    @staticmethod
    def _deliver(subscriber: EventSubscriber, event: Event) -> None:
        subscriber.outbox.put_nowait(encode(event))

    async def wait_for_event(self, predicate: Callable[[Event], bool], timeout: float, since: int = 0) -> Event:
        """The first event from index `since` of the history on that matches (already emitted or to come)."""
        cursor = since

        def check() -> Event | None:
            nonlocal cursor
            cursor = max(cursor, self.trimmed)
            while cursor < self.trimmed + len(self.history):
                event = self.history[cursor - self.trimmed]
                cursor += 1
                if predicate(event):
                    return event
            return None

        def describe() -> str:
            return "last events: " + ", ".join(e["type"] for e in self.history[-8:])

        return await self.notifier.wait(check, timeout, describe)
