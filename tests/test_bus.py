from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from rtcore.runtime import messages as m
from rtcore.runtime.bus import BusProxy, ControlReceiver, ControlSender, Publisher, Subscriber
from tests.test_messages import EXAMPLES


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    c = zmq.Context()
    yield c
    c.term()


def _join(pub: Publisher, sub: Subscriber) -> None:
    """PUB/SUB drops what is sent before the subscription reaches the publisher: send probes until
    one arrives (bounded), then drain."""
    for _ in range(200):
        pub.publish(m.Heartbeat(process="probe", pid=0, seq=0, sent_at=0.0))
        if sub.recv(timeout_ms=20) is not None:
            sub.drain()
            return
    raise AssertionError("subscriber never joined")


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_every_message_crosses_the_forwarder(ctx: zmq.Context, short_dir: Path, transport: str) -> None:
    if transport == "ipc":
        pub_ep, sub_ep = f"ipc://{short_dir}/in.sock", f"ipc://{short_dir}/out.sock"
    else:
        pub_ep, sub_ep = "tcp://127.0.0.1:0", "tcp://127.0.0.1:0"
    proxy = BusProxy(pub_ep, sub_ep, ctx)
    if transport == "tcp":  # learn the ports the kernel chose
        pub_ep = proxy._frontend.getsockopt(zmq.LAST_ENDPOINT).decode()
        sub_ep = proxy._backend.getsockopt(zmq.LAST_ENDPOINT).decode()
    proxy.start()
    pub = Publisher(pub_ep, ctx)
    sub = Subscriber(sub_ep, m.MESSAGE_TYPES, ctx)
    try:
        _join(pub, sub)
        for message in EXAMPLES:
            pub.publish(message)
        got = [sub.recv(timeout_ms=2000) for _ in EXAMPLES]
        assert got == EXAMPLES
        assert sub.rejected == 0
    finally:
        pub.close()
        sub.close()
        proxy.stop()


def test_subscribers_get_only_their_types(ctx: zmq.Context, short_dir: Path) -> None:
    proxy = BusProxy(f"ipc://{short_dir}/in.sock", f"ipc://{short_dir}/out.sock", ctx).start()
    pub = Publisher(f"ipc://{short_dir}/in.sock", ctx)
    asr = Subscriber(f"ipc://{short_dir}/out.sock", [m.UtteranceReady, m.Heartbeat], ctx)
    try:
        _join(pub, asr)
        pub.publish(EXAMPLES[0])  # CallStarted: not for this subscriber
        pub.publish(EXAMPLES[4])  # UtteranceReady
        assert asr.recv(timeout_ms=2000) == EXAMPLES[4]
        assert asr.recv(timeout_ms=50) is None
    finally:
        pub.close()
        asr.close()
        proxy.stop()


def test_bad_frames_are_counted_and_skipped(ctx: zmq.Context, short_dir: Path) -> None:
    endpoint = f"ipc://{short_dir}/control.sock"
    receiver = ControlReceiver(endpoint, ctx)
    raw = ctx.socket(zmq.PUSH)
    raw.connect(endpoint)
    try:
        raw.send(b"\x93\xa8Teleport\x01\x02")  # msgpack ["Teleport", 1, 2]: unknown type
        raw.send(b"not msgpack at all \xc1")
        raw.send_multipart([b"two", b"frames"])
        raw.send(m.encode(m.Heartbeat(process="vad", pid=1, seq=1, sent_at=0.0)))
        assert receiver.recv(timeout_ms=2000) == m.Heartbeat(process="vad", pid=1, seq=1, sent_at=0.0)
        assert receiver.rejected == 3 and receiver.received == 1
        assert receiver.last_error == "rejected message: expected 1 frame, got 2"
    finally:
        raw.close(linger=0)
        receiver.close()


def test_control_channel_delivers_what_a_child_sends_before_the_supervisor_binds(
        ctx: zmq.Context, short_dir: Path) -> None:
    # A child may start sending before the supervisor's socket exists: PUSH queues, nothing is lost.
    endpoint = f"ipc://{short_dir}/control.sock"
    sender = ControlSender(endpoint, ctx)
    sender.send(m.ProcessReady(process="vad", pid=7))
    receiver = ControlReceiver(endpoint, ctx)
    try:
        assert receiver.recv(timeout_ms=2000) == m.ProcessReady(process="vad", pid=7)
    finally:
        sender.close()
        receiver.close()


def test_topic_must_match_the_payload(ctx: zmq.Context, short_dir: Path) -> None:
    proxy = BusProxy(f"ipc://{short_dir}/in.sock", f"ipc://{short_dir}/out.sock", ctx).start()
    pub = Publisher(f"ipc://{short_dir}/in.sock", ctx)
    sub = Subscriber(f"ipc://{short_dir}/out.sock", [m.UtteranceReady, m.Heartbeat], ctx)
    try:
        _join(pub, sub)
        received_before = sub.received
        # A CallEnded dressed as an UtteranceReady must not reach code expecting a sample range.
        pub.socket.send_multipart([b"UtteranceReady", m.encode(EXAMPLES[1])])
        pub.publish(EXAMPLES[4])
        assert sub.recv(timeout_ms=2000) == EXAMPLES[4]
        assert sub.last_error == "rejected message: topic b'UtteranceReady' does not match type CallEnded"
        pub.socket.send_multipart([b"UtteranceReady", b"\x00garbage"])
        pub.publish(EXAMPLES[4])
        assert sub.recv(timeout_ms=2000) == EXAMPLES[4]
        assert sub.rejected == 2 and sub.received == received_before + 2
    finally:
        pub.close()
        sub.close()
        proxy.stop()
