"""BusFeed: the bus messages the live view shows, read in the event loop into an ObservedRun.

A Subscriber on the bus (`bus_sub` endpoint) for OBSERVED_TYPES, whose ZeroMQ FD is watched by the
loop (`loop.add_reader`). That FD is edge-triggered: it signals that the socket's state changed, not
that a message is there, so every wake-up reads everything queued (Receiver.drain). `drain()` may
also be called now and then from the process's own loop as a safety net (procs/http_api.py does).
"""

from __future__ import annotations

import asyncio

import zmq

from rtcore.observe.state import ObservedRun
from rtcore.runtime.bus import Subscriber, ZmqContext
from rtcore.runtime.messages import AsrStatus, CallView, Message, RunStatus, Transcript, TurnTaken

OBSERVED_TYPES: tuple[type[Message], ...] = (CallView, RunStatus, AsrStatus, Transcript, TurnTaken)


class BusFeed:
    """`start()` in the running loop; `close()` stops reading and closes the socket."""

    def __init__(self, endpoint: str, run: ObservedRun, ctx: ZmqContext | None = None) -> None:
        self.run = run
        self.subscriber = Subscriber(endpoint, OBSERVED_TYPES, ctx)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = int(self.subscriber.socket.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self.drain)
        self.drain()  # whatever came before the reader was there

    def drain(self) -> int:
        """Feed every message queued now; returns how many."""
        messages = self.subscriber.drain()
        for message in messages:
            self.run.handle(message)
        return len(messages)

    @property
    def rejected(self) -> int:
        return self.subscriber.rejected

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self.subscriber.close()
