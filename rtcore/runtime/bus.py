"""The ZeroMQ bus between processes.

Three channels:
- events: every process publishes to one XSUB endpoint and subscribes at one XPUB endpoint; the
  supervisor runs the forwarder between them (`BusProxy`). Frames: [topic, msgpack payload], the
  topic being the message type's name so subscribers filter in ZeroMQ, not in Python.
- control: children PUSH handshakes, heartbeats and metrics to the supervisor's PULL socket.
  PUSH queues until the peer is connected, so a child's first message cannot be lost the way a
  PUB's first messages are before its subscriptions arrive.
- ASR work: utterances to the ASR dispatcher's ROUTER (from the VAD and the HTTP API through
  `AsrClient`, DEALER), which hands them to the workers (DEALER) and publishes one Transcript per
  utterance on the event bus.

Endpoints are `ipc://` in the run directory by default and `tcp://` by configuration.
A malformed message is counted in `rejected`, logged, and skipped: it never stops a receiver.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable

import zmq

from rtcore.runtime.messages import (
    AnyMessage,
    AsrStatus,
    Message,
    MessageError,
    UtteranceReady,
    decode,
    encode,
    topic,
)

log = logging.getLogger(__name__)

# pyzmq's sockets and contexts are generic over what recv() returns: bytes for every socket here.
ZmqSocket = zmq.Socket[bytes]
ZmqContext = zmq.Context[ZmqSocket]
# Generous queues: an utterance message must not be dropped because the consumer blinked.
HWM = 100_000


def _socket(ctx: ZmqContext, kind: int, linger_ms: int) -> ZmqSocket:
    sock: ZmqSocket = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    return sock


class Receiver:
    """Decodes frames off a socket; counts and skips what is not a valid message."""

    def __init__(self, sock: ZmqSocket, with_topic: bool) -> None:
        self.socket = sock
        self._with_topic = with_topic
        self.received = 0
        self.rejected = 0
        self.last_error = ""

    def parse(self, frames: list[bytes]) -> AnyMessage | None:
        """One multipart message -> a Message, or None (counted) if it is not a valid one."""
        try:
            if self._with_topic:
                if len(frames) != 2:
                    raise MessageError(f"rejected message: expected 2 frames [topic, payload], got {len(frames)}")
                message = decode(frames[1])
                if topic(type(message)) != frames[0]:
                    raise MessageError(
                        f"rejected message: topic {frames[0]!r} does not match type {type(message).__name__}")
            else:
                if len(frames) != 1:
                    raise MessageError(f"rejected message: expected 1 frame, got {len(frames)}")
                message = decode(frames[0])
        except MessageError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            log.warning("%s (%d rejected so far)", exc, self.rejected)
            return None
        self.received += 1
        return message

    def recv(self, timeout_ms: int | None = None) -> AnyMessage | None:
        """The next valid message, or None if none arrived within `timeout_ms` (None: wait)."""
        while True:
            if timeout_ms is not None and not self.socket.poll(timeout_ms):
                return None
            message = self.parse(self.socket.recv_multipart())
            if message is not None:
                return message

    def drain(self) -> list[AnyMessage]:
        """Every valid message already queued, without waiting."""
        out: list[AnyMessage] = []
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            message = self.parse(frames)
            if message is not None:
                out.append(message)

    def close(self) -> None:
        self.socket.close(linger=0)


class Publisher:
    """Publishes event messages to the bus (connects to the forwarder's XSUB endpoint)."""

    def __init__(self, endpoint: str, ctx: ZmqContext | None = None) -> None:
        self.socket = _socket(ctx or zmq.Context.instance(), zmq.PUB, linger_ms=1000)
        self.socket.connect(endpoint)

    def publish(self, message: Message) -> None:
        self.socket.send_multipart([topic(type(message)), encode(message)])

    def close(self) -> None:
        self.socket.close()


class Subscriber(Receiver):
    """Receives the event messages of the given types (connects to the forwarder's XPUB endpoint)."""

    def __init__(self, endpoint: str, types: Iterable[type[Message]], ctx: ZmqContext | None = None) -> None:
        sock = _socket(ctx or zmq.Context.instance(), zmq.SUB, linger_ms=0)
        for message_type in types:
            sock.setsockopt(zmq.SUBSCRIBE, topic(message_type))
        sock.connect(endpoint)
        super().__init__(sock, with_topic=True)


class ControlSender:
    """A child's channel to the supervisor."""

    def __init__(self, endpoint: str, ctx: ZmqContext | None = None) -> None:
        self.socket = _socket(ctx or zmq.Context.instance(), zmq.PUSH, linger_ms=1000)
        self.socket.connect(endpoint)

    def send(self, message: Message) -> None:
        self.socket.send(encode(message))

    def close(self) -> None:
        self.socket.close()


class ControlReceiver(Receiver):
    """The supervisor's end of the control channel."""

    def __init__(self, endpoint: str, ctx: ZmqContext | None = None) -> None:
        sock = _socket(ctx or zmq.Context.instance(), zmq.PULL, linger_ms=0)
        sock.bind(endpoint)
        super().__init__(sock, with_topic=False)


class AsrClient:
    """Submits utterances to the ASR dispatcher (DEALER to its ROUTER). Unlike a PUB, a DEALER
    queues what it sends until the dispatcher is there, so no utterance is lost to a slow join;
    the transcript comes back on the bus (Transcript, matched by utterance id).

    The dispatcher's queue lives in its memory, so the client keeps every utterance it submitted
    until its transcript comes back (`settled`), and submits them all again when a dispatcher it
    has not seen before announces itself (`dispatcher_seen`, from AsrStatus on the bus): after a
    dispatcher restart nothing queued or in flight is lost, and the dispatcher's de-duplication
    by utterance id keeps a transcript from being published twice. Kept utterances are forgotten
    after `keep_s` (a transcript that never comes: counted in `expired`)."""

    def __init__(self, endpoint: str, ctx: ZmqContext | None = None, keep_s: float = 300.0) -> None:
        self.socket = _socket(ctx or zmq.Context.instance(), zmq.DEALER, linger_ms=1000)
        self.socket.connect(endpoint)
        self.keep_s = keep_s
        self.outstanding: OrderedDict[str, tuple[float, UtteranceReady]] = OrderedDict()
        self.dispatcher: tuple[int, float] | None = None  # (pid, started_at) of the one last seen
        self.resubmitted = 0
        self.expired = 0

    def submit(self, utterance: UtteranceReady) -> None:
        self.socket.send(encode(utterance))
        self.outstanding[utterance.utterance_id] = (time.monotonic(), utterance)
        self._expire()

    def settled(self, utterance_id: str) -> None:
        """Its transcript came back: nothing more to keep."""
        self.outstanding.pop(utterance_id, None)

    def dispatcher_seen(self, status: AsrStatus) -> int:
        """A dispatcher's AsrStatus; if it is another one than before, submit again everything
        still without a transcript. Returns how many were submitted again."""
        who = (status.pid, status.started_at)
        if who == self.dispatcher:
            return 0
        first = self.dispatcher is None
        self.dispatcher = who
        self._expire()
        for _, utterance in self.outstanding.values():
            self.socket.send(encode(utterance))
        if self.outstanding and not first:
            log.warning("ASR dispatcher restarted (pid %d): %d utterances without a transcript submitted again",
                        status.pid, len(self.outstanding))
        self.resubmitted += len(self.outstanding)
        return len(self.outstanding)

    def _expire(self) -> None:
        horizon = time.monotonic() - self.keep_s
        while self.outstanding and next(iter(self.outstanding.values()))[0] < horizon:
            utterance_id, _ = self.outstanding.popitem(last=False)
            self.expired += 1
            log.error("utterance %s: no transcript after %.0f s; forgotten", utterance_id, self.keep_s)

    def close(self) -> None:
        self.socket.close()


class BusProxy:
    """The event forwarder: XSUB (publishers connect) <-> XPUB (subscribers connect), in a thread.

    zmq.proxy runs in C without the GIL, so hosting it in the supervisor costs no Python time.
    """

    def __init__(self, pub_endpoint: str, sub_endpoint: str, ctx: ZmqContext | None = None) -> None:
        self._ctx = ctx or zmq.Context.instance()
        self._frontend = _socket(self._ctx, zmq.XSUB, linger_ms=0)
        self._frontend.bind(pub_endpoint)
        self._backend = _socket(self._ctx, zmq.XPUB, linger_ms=0)
        self._backend.bind(sub_endpoint)
        self._control_endpoint = f"inproc://bus-proxy-control-{id(self)}"
        self._control = self._ctx.socket(zmq.PAIR)
        self._control.bind(self._control_endpoint)
        self._thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)

    def start(self) -> BusProxy:
        self._thread.start()
        return self

    def _run(self) -> None:
        peer = self._ctx.socket(zmq.PAIR)
        peer.connect(self._control_endpoint)
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, peer)
        except zmq.ContextTerminated:  # pragma: no cover
            pass
        finally:
            peer.close(linger=0)

    def stop(self) -> None:
        if self._thread.is_alive():
            self._control.send(b"TERMINATE")
            self._thread.join(timeout=5)
        for sock in (self._control, self._frontend, self._backend):
            sock.close(linger=0)
