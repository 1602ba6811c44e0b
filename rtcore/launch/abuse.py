"""Malformed input and abuse against running endpoints, for chaos benchmarks (and their tests).

Nothing here starts a process: each function takes the address of something already running and
returns a dict of counts for a report table. Each is blocking (it runs its own event loop: call it
from a thread, e.g. a ThreadPoolExecutor, several at once) and has a coroutine twin, `*_async`, for
code already in an event loop (the tests, which run the capture or the simulator in the same loop).

- `fuzz_rtp`: datagrams of every malformed kind (and well-formed slin16 from sources no call
  announced) to the RTP capture's port, paced, with the receiving socket's kernel drops when the
  capture runs on this host.
- `abuse_http`: oversized, truncated, malformed and garbage requests to the HTTP API, each answer
  checked against what the README documents (JSON 400/404/405/413/415, or a closed connection),
  with `GET /health` probed during and after.
- `slow_loris`: connections that send their headers, or their body, a byte at a time, while a
  normal request is timed; reports when the server cut each one.
- `inject_ari_events`: malformed and out-of-order ARI events through the ARI simulator's
  `POST /_sim/events` hook to the dialog's events WebSocket.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import aiohttp

from rtcore.media.capture import udp_sockets

RTP_HEADER = struct.Struct("!BBHII")
SLIN16_PT = 118
MAX_RTP_PACKET_SIZE = 4096  # what the capture accepts at most (rtcore.media.rtp)
KIB, MIB = 1 << 10, 1 << 20


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- RTP -------------------------------------------------------------------------------------------
# Kind -> weight. All but `stranger_slin16` are malformed by construction, except `random_bytes`,
# which is whatever the dice say (almost never a valid packet).
RTP_KINDS = {
    "random_bytes": 20, "jumbo": 1, "truncated_header": 8, "bad_version": 8, "bad_csrc": 8, "bad_extension": 8,
    "bad_padding": 8, "wrong_payload_type": 8, "odd_payload": 8, "empty_payload": 5, "stranger_slin16": 16,
}


def _rtp_header(rng: random.Random, first: int = 0x80, pt: int = SLIN16_PT) -> bytes:
    return RTP_HEADER.pack(first, pt | (rng.random() < 0.1) << 7, rng.randrange(65536), rng.randrange(1 << 32),
                           rng.randrange(1 << 32))


def malformed_rtp(kind: str, rng: random.Random, payload_type: int = SLIN16_PT) -> bytes:
    """One datagram of `kind` (RTP_KINDS, but stranger_slin16, which is a stream: `_Stranger`)."""
    if kind == "random_bytes":
        return rng.randbytes(rng.randrange(1501))
    if kind == "jumbo":  # over the capture's size limit (a valid header in front)
        return _rtp_header(rng, pt=payload_type) + rng.randbytes(rng.randrange(MAX_RTP_PACKET_SIZE, 9000) & ~1)
    if kind == "truncated_header":
        return bytes((0x80,)) + rng.randbytes(rng.randrange(11))
    if kind == "bad_version":
        first = rng.choice((0, 1, 3)) << 6 | rng.randrange(64)
        return _rtp_header(rng, first=first, pt=payload_type) + rng.randbytes(640)
    if kind == "bad_csrc":  # a CSRC count whose entries are not there
        count = rng.randrange(1, 16)
        return _rtp_header(rng, first=0x80 | count, pt=payload_type) + rng.randbytes(rng.randrange(4 * count))
    if kind == "bad_extension":  # X bit with a header, or a value, past the end
        words = rng.randrange(1, 1000)
        extension = struct.pack("!HH", 0xBEDE, words) + rng.randbytes(min(4 * words, 1400))
        cut = rng.randrange(4) if rng.random() < 0.2 else rng.randrange(4, min(len(extension), 4 + 4 * words))
        return _rtp_header(rng, first=0x90, pt=payload_type) + extension[:cut]
    if kind == "bad_padding":  # a padding count of 0, or longer than what follows the header
        body = rng.randbytes(rng.randrange(254))
        count = 0 if rng.random() < 0.5 else rng.randrange(len(body) + 2, 256)
        return _rtp_header(rng, first=0xA0, pt=payload_type) + body + bytes((count,))
    if kind == "wrong_payload_type":
        pt = rng.choice([p for p in range(128) if p != payload_type])
        return _rtp_header(rng, pt=pt) + rng.randbytes(640)
    if kind == "odd_payload":
        return _rtp_header(rng, pt=payload_type) + rng.randbytes(2 * rng.randrange(400) + 1)
    if kind == "empty_payload":
        return _rtp_header(rng, pt=payload_type)
    raise ValueError(f"unknown RTP fuzz kind {kind!r}")


class _Stranger:
    """A well-formed slin16 stream (sequence +1, timestamp +320, one SSRC) from a port no call announced."""

    def __init__(self, rng: random.Random, payload_type: int) -> None:
        self.seq = rng.randrange(65536)
        self.timestamp = rng.randrange(1 << 32)
        self.ssrc = rng.randrange(1 << 32)
        self.pt = payload_type
        self.payload = rng.randbytes(640)

    def next(self) -> bytes:
        data = RTP_HEADER.pack(0x80, self.pt, self.seq, self.timestamp, self.ssrc) + self.payload
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + 320) & 0xFFFFFFFF
        return data


def udp_drops(port: int) -> int | None:
    """The kernel's drop counter summed over this host's UDP sockets bound to `port` (/proc/net/udp*),
    None when none is found (the receiver is on another host, or not Linux)."""
    drops = [int(cols[-1]) for cols in udp_sockets() if int(cols[1].rsplit(":", 1)[1], 16) == port]
    return sum(drops) if drops else None


async def fuzz_rtp_async(host: str, port: int, count: int = 100_000, seed: int = 1, *, sources: int = 4,
                         strangers: int = 2, source_ports: Sequence[int] = (), rate_pps: float = 10_000.0,
                   burst: int = 100, payload_type: int = SLIN16_PT) -> dict[str, Any]:
    """Sends `count` datagrams to the RTP capture at (host, port), `rate_pps` on average in bursts of
    `burst`: malformed ones of every kind in RTP_KINDS from `sources` ports (`source_ports` first, so
    a test can announce one as a call and have the capture parse them; the rest ephemeral), and
    well-formed slin16 streams from `strangers` other ports no call announced.

    Returns {"sent", "by_kind": {kind: n}, "by_source": {"host:port": n}, "send_errors" (the
    sender's own buffer was full three times running: not sent), "kernel_drops" (the receiving
    socket's drops meanwhile, when it is on this host, else None), "seconds", "rate_pps"}."""
    rng = random.Random(seed)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    if host not in ("127.0.0.1", "::1", "localhost"):
        bind_host = "::" if family == socket.AF_INET6 else "0.0.0.0"
    ports = list(source_ports) + [0] * max(0, sources - len(source_ports))
    sockets: list[socket.socket] = []
    try:
        for bind_port in ports + [0] * strangers:
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setblocking(False)
            sock.bind((bind_host, bind_port))
        bad, good = sockets[:len(ports)], sockets[len(ports):]
        streams = [_Stranger(rng, payload_type) for _ in good]
        kinds = [k for k in RTP_KINDS if good or k != "stranger_slin16"]
        weights = [RTP_KINDS[k] for k in kinds]
        by_kind: Counter[str] = Counter()
        by_source: Counter[str] = Counter()
        names = {sock: "{}:{}".format(*sock.getsockname()[:2]) for sock in sockets}
        drops_before = udp_drops(port)
        errors = 0
        started = time.monotonic()
        target = (host, port)
        for index in range(count):
            kind = rng.choices(kinds, weights)[0]
            if kind == "stranger_slin16":
                which = rng.randrange(len(good))
                sock, data = good[which], streams[which].next()
            else:
                sock, data = rng.choice(bad), malformed_rtp(kind, rng, payload_type)
            for attempt in range(3):
                try:
                    sock.sendto(data, target)
                    break
                except (BlockingIOError, InterruptedError):  # our own send buffer is full: let it drain
                    await asyncio.sleep(0.001 * (attempt + 1))
            else:
                errors += 1
                continue
            by_kind[kind] += 1
            by_source[names[sock]] += 1
            if (index + 1) % burst == 0:
                due = started + (index + 1) / rate_pps
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        seconds = time.monotonic() - started
        drops_after = udp_drops(port)
    finally:
        for sock in sockets:
            sock.close()
    sent = sum(by_kind.values())
    return {"sent": sent, "by_kind": dict(by_kind), "by_source": dict(by_source), "send_errors": errors,
            "kernel_drops": None if drops_before is None or drops_after is None else drops_after - drops_before,
            "seconds": round(seconds, 3), "rate_pps": round(sent / seconds, 1) if seconds > 0 else 0.0}


# --- HTTP: one exchange on a raw connection --------------------------------------------------------
Body = bytes | Callable[[asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return status, headers, body


async def exchange(host: str, port: int, head: bytes, body: Body = b"", *, timeout_s: float = 10.0,
                   close_after_send: bool = False, half_close: bool = False) -> str:
    """Sends one request (`head` then `body`: bytes, or a coroutine writing it, which may stop when
    the answer comes) on a fresh connection; its outcome: the status ("413"; "400_not_json" when
    the body is not a JSON object), "closed" (closed or reset before an answer), "sent" (we closed
    it ourselves, `close_after_send`), or "timeout" (no answer, the connection still open)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return "refused"
    answer: asyncio.Task[tuple[int, dict[str, str], bytes]] = asyncio.create_task(_read_response(reader))
    try:
        try:
            writer.write(head)
            if isinstance(body, bytes):
                writer.write(body)
                await writer.drain()
            else:
                sending = asyncio.create_task(body(writer))
                await asyncio.wait([sending, answer], return_when=asyncio.FIRST_COMPLETED)
                if not sending.done():
                    sending.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await sending
            if close_after_send:
                return "sent"
            if half_close and writer.can_write_eof():
                writer.write_eof()
        except ConnectionError:
            pass  # the server may have answered before closing: read on
        try:
            status, headers, content = await asyncio.wait_for(answer, timeout_s)
        except TimeoutError:
            return "timeout"
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, IndexError):
            return "closed"
        try:
            is_json = isinstance(json.loads(content), dict)
        except ValueError:
            is_json = False
        return str(status) if is_json else f"{status}_not_json"
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _post(host: str, path: str, content_type: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n{framing}{extra}"
            "Connection: close\r\n\r\n").encode()


def _stream(total: int, chunked: bool, prefix: bytes = b"", chunk: int = 64 * KIB) -> Callable[
        [asyncio.StreamWriter], Coroutine[Any, Any, None]]:
    """A body of `total` bytes, `prefix` first, written chunk by chunk (waiting on the socket each time)."""

    async def write(writer: asyncio.StreamWriter) -> None:
        remaining = total - len(prefix)
        data = prefix
        while data or remaining > 0:
            size = min(chunk, remaining)
            data += bytes(size)
            remaining -= size
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n" if chunked else data)
            await writer.drain()
            data = b""
        if chunked:
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return write


_PART = (b'--xyz\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n'
         b"Content-Type: application/octet-stream\r\n\r\n")
MULTIPART = "multipart/form-data; boundary=xyz"


def http_cases(host: str, max_upload_mb: float) -> list[tuple[str, bytes, Body, dict[str, bool], frozenset[str]]]:
    """(case, head, body, exchange options, accepted outcomes) of every abusive request."""
    over = int(max_upload_mb * MIB) + MIB
    ok_or_closed = frozenset({"413", "closed"})
    bad, gone = frozenset({"400"}), frozenset({"closed", "400"})

    def post(path: str, ctype: str, body: bytes, extra: str = "") -> tuple[bytes, bytes]:
        return _post(host, path, ctype, len(body), extra), body

    cases: list[tuple[str, bytes, Body, dict[str, bool], frozenset[str]]] = [
        ("oversized_content_length_whisper", _post(host, "/whisper", "application/json", over),
         _stream(over, chunked=False), {}, ok_or_closed),
        ("oversized_content_length_transcribe", _post(host, "/transcribe", MULTIPART, over),
         _stream(over, chunked=False, prefix=_PART), {}, ok_or_closed),
        ("oversized_chunked_whisper", _post(host, "/whisper", "application/json", None),
         _stream(over, chunked=True), {}, ok_or_closed),
        ("oversized_chunked_transcribe", _post(host, "/transcribe", MULTIPART, None),
         _stream(over, chunked=True, prefix=_PART), {}, ok_or_closed),
        ("truncated_then_closed", _post(host, "/whisper", "application/json", 100_000), b'{"audio": "' + b"A" * 1000,
         {"close_after_send": True}, frozenset({"sent"})),
        ("truncated_then_half_closed", _post(host, "/whisper", "application/json", 100_000),
         b'{"audio": "' + b"A" * 1000, {"half_close": True}, gone),
        ("truncated_multipart_then_half_closed", _post(host, "/transcribe", MULTIPART, 100_000),
         _PART + b"RIFF" * 250, {"half_close": True}, gone),
        ("truncated_chunked_then_half_closed", _post(host, "/whisper", "application/json", None),
         b"400\r\n" + b"A" * 100, {"half_close": True}, gone),
    ]
    for case, ctype, body in [
        ("multipart_without_boundary", "multipart/form-data", b"--xyz\r\n\r\n"),
        ("multipart_garbage", MULTIPART, b"garbage\r\n\r\n"),
        ("multipart_unterminated", MULTIPART, _PART + b"RIFF"),
        ("multipart_bad_part_header", MULTIPART, b"--xyz\r\nGarbage header\r\n\r\nabc\r\n--xyz--\r\n"),
        ("multipart_unnamed_part", MULTIPART, b"--xyz\r\nContent-Type: text/plain\r\n\r\nabc\r\n--xyz--\r\n"),
        ("multipart_nested", MULTIPART, b'--xyz\r\nContent-Disposition: form-data; name="audio"\r\n'
                                        b"Content-Type: multipart/mixed; boundary=abc\r\n\r\n"
                                        b"--abc\r\n\r\nx\r\n--abc--\r\n--xyz--\r\n"),
        ("multipart_boundary_too_long", "multipart/form-data; boundary=" + "b" * 100, b"x"),
        ("multipart_empty_file", MULTIPART, _PART + b"\r\n--xyz--\r\n"),
        ("not_multipart", "audio/wav", b"RIFF...."),
    ]:
        cases.append((case, *post("/transcribe", ctype, body), {}, bad))
    cases.append(("multipart_not_audio", *post("/transcribe", MULTIPART, _PART + b"notes" * 100 + b"\r\n--xyz--\r\n"),
                  {}, frozenset({"415"})))
    for case, body, extra in [
        ("json_invalid", b"{not json", ""), ("json_not_object", b'["audio"]', ""), ("json_no_audio", b"{}", ""),
        ("json_audio_not_string", b'{"audio": 123}', ""), ("json_bad_base64", b'{"audio": "@@not base64@@"}', ""),
        ("json_empty_audio", b'{"audio": ""}', ""), ("json_not_utf8", b'{"audio": "\xff\xfe"}', ""),
        ("json_nested_too_deep", b"[" * 100_000 + b"]" * 100_000, ""),
        ("json_content_encoding_lie", b"not gzip at all", "Content-Encoding: gzip\r\n"),
        ("json_empty_body", b"", ""),
    ]:
        cases.append((case, *post("/whisper", "application/json", body, extra), {}, bad))
    garbage_audio = json.dumps({"audio": base64.b64encode(b"\0\1garbage" * 50).decode(), "filename": "x.bin"})
    cases.append(("json_audio_not_decodable", *post("/whisper", "application/json", garbage_audio.encode()), {},
                  frozenset({"415"})))
    for case, raw in [
        ("garbage_request_line", b"GARBAGE\r\n\r\n"), ("bad_http_version", b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n"),
        ("header_without_colon", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n"),
        ("request_line_too_long", b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("header_too_long", b"GET /health HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 10_000 + b"\r\n\r\n"),
        ("too_many_headers", b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X%d: y\r\n" % i for i in range(200))
         + b"\r\n"),
        ("nul_in_path", b"GET /he\0alth HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("content_length_not_a_number", b"POST /whisper HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"),
        ("content_length_negative", b"POST /whisper HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n"),
        ("content_length_and_chunked", b"POST /whisper HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                       b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad_chunk_size", b"POST /whisper HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"),
        ("no_host_header", b"GET /health HTTP/1.1\r\n\r\n"),
        ("tls_handshake", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100)),
        ("http2_preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ]:
        cases.append((case, raw, b"", {}, gone))
    cases.append(("unknown_path", f"GET /nothing-here HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), b"", {},
                  frozenset({"404"})))
    cases.append(("wrong_method", f"DELETE /transcribe HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), b"", {},
                  frozenset({"405"})))
    return cases


async def _health(host: str, port: int, timeout_s: float) -> float | None:
    """Milliseconds a `GET /health` took to answer 200 with status ok; None if it did not."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError):
        return None
    try:
        writer.write(f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, _, body = await asyncio.wait_for(_read_response(reader), timeout_s)
        ok = status == 200 and json.loads(body).get("status") == "ok"
    except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError):
        ok = False
    finally:
        writer.close()
    return (time.monotonic() - started) * 1000 if ok else None


def _split(base_url: str) -> tuple[str, int]:
    url = urlsplit(base_url)
    if not url.hostname:
        raise ValueError(f"not an http://host:port URL: {base_url!r}")
    return url.hostname, url.port or 80


async def abuse_http_async(base_url: str, *, max_upload_mb: float = 25.0, rounds: int = 1, concurrency: int = 4,
                     probe_every_s: float = 0.1, timeout_s: float = 15.0) -> dict[str, Any]:
    """Every case of `http_cases` `rounds` times against rtcore's HTTP API at `base_url`, `concurrency`
    at a time, while `GET /health` is probed every `probe_every_s`, then once more after.
    `max_upload_mb` must be the service's http_max_upload_mb (the oversized bodies exceed it by 1 MiB).

    Returns {"requests", "by_outcome": {outcome: n}, "expected", "unexpected": ["case: outcome
    (expected ...)", ...], "health_ok", "health_failed", "health_ms_p50", "health_ms_max",
    "health_after": bool}."""
    host, port = _split(base_url)
    cases = http_cases(host, max_upload_mb) * rounds
    outcomes: Counter[str] = Counter()
    unexpected: list[str] = []
    health_ms: list[float] = []
    health_failed = 0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal health_failed
        while not done.is_set():
            ms = await _health(host, port, timeout_s)
            if ms is None:
                health_failed += 1
            else:
                health_ms.append(ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), probe_every_s)

    limit = asyncio.Semaphore(concurrency)

    async def run(case: str, head: bytes, body: Body, options: dict[str, bool], accepted: frozenset[str]) -> None:
        async with limit:
            outcome = await exchange(host, port, head, body, timeout_s=timeout_s, **options)
        outcomes[outcome] += 1
        if outcome not in accepted:
            unexpected.append(f"{case}: {outcome} (expected {' or '.join(sorted(accepted))})")

    prober = asyncio.create_task(probe())
    try:
        await asyncio.gather(*(run(*case) for case in cases))
    finally:
        done.set()
        await prober
    after = await _health(host, port, timeout_s)
    return {"requests": len(cases), "by_outcome": dict(outcomes), "expected": len(cases) - len(unexpected),
            "unexpected": unexpected, "health_ok": len(health_ms), "health_failed": health_failed,
            "health_ms_p50": round(_percentile(health_ms, 0.5), 1),
            "health_ms_max": round(max(health_ms, default=0.0), 1),
            "health_after": after is not None}


# --- slow clients ----------------------------------------------------------------------------------
async def slow_loris_async(host: str, port: int, connections: int = 200, duration_s: float = 30.0, *,
                           byte_interval_s: float = 0.5, body_share: float = 0.5, probe_every_s: float = 0.25,
                           timeout_s: float = 5.0) -> dict[str, Any]:
    """Opens `connections` connections to the HTTP API: the first `1 - body_share` of them send a
    request's headers a byte every `byte_interval_s` and never finish them, the rest send whole
    headers (a 100 000-byte body announced) then the body a byte at a time. Meanwhile a normal
    `GET /health` is timed every `probe_every_s`. Stops when the server has cut every connection, or
    after `duration_s` (those left are closed by us and counted `still_open`).

    Returns {"connections", "opened", "refused" (connect failed), "cut", "still_open", "answered"
    ({status: n} of what cut connections got before closing, e.g. 408), "cut_s_min", "cut_s_p50",
    "cut_s_max" (from each connection's opening), "probe_ok", "probe_failed", "probe_ms_p50",
    "probe_ms_max"}."""
    started = time.monotonic()
    deadline = started + duration_s
    cut_after: list[float] = []
    answered: Counter[str] = Counter()
    refused = still_open = 0
    all_done = asyncio.Event()

    async def one(index: int) -> None:
        nonlocal refused, still_open
        slow_body = index >= connections * (1 - body_share)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        except (OSError, TimeoutError):
            refused += 1
            return
        opened = time.monotonic()
        head = f"POST /whisper HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        if slow_body:
            writer.write(f"{head}Content-Length: 100000\r\n\r\n".encode())
            trickle = b"A"
        else:
            writer.write(f"{head}X-Slow: ".encode())
            trickle = b"a"
        received = asyncio.create_task(reader.read())

        async def drip() -> None:
            while True:
                await writer.drain()
                await asyncio.sleep(byte_interval_s)
                writer.write(trickle)

        dripping = asyncio.create_task(drip())
        try:
            await asyncio.wait([received, dripping], timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
            if received.done() or dripping.done():  # end of stream, a reset, or a write that failed
                cut_after.append(time.monotonic() - opened)
                data = received.result() if received.done() and not received.exception() else b""
                if data.startswith(b"HTTP/"):
                    answered[data.split(b" ", 2)[1].decode("latin-1", "replace")] += 1
            else:
                still_open += 1
        finally:
            received.cancel()
            dripping.cancel()
            await asyncio.gather(received, dripping, return_exceptions=True)
            writer.close()

    probe_ms: list[float] = []
    probe_failed = 0

    async def probe() -> None:
        nonlocal probe_failed
        while not all_done.is_set():
            ms = await _health(host, port, timeout_s)
            if ms is None:
                probe_failed += 1
            else:
                probe_ms.append(ms)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_done.wait(), probe_every_s)

    prober = asyncio.create_task(probe())
    try:
        await asyncio.gather(*(one(i) for i in range(connections)))
    finally:
        all_done.set()
        await prober
    return {"connections": connections, "opened": connections - refused, "refused": refused, "cut": len(cut_after),
            "still_open": still_open, "answered": dict(answered),
            "cut_s_min": round(min(cut_after, default=0.0), 3), "cut_s_p50": round(_percentile(cut_after, 0.5), 3),
            "cut_s_max": round(max(cut_after, default=0.0), 3), "probe_ok": len(probe_ms),
            "probe_failed": probe_failed, "probe_ms_p50": round(_percentile(probe_ms, 0.5), 1),
            "probe_ms_max": round(max(probe_ms, default=0.0), 1)}


# --- ARI events --------------------------------------------------------------------------------------
ABUSE_MARK = "rtcore_abuse"  # a field our well-formed injected events carry, so a test can tell them apart
# Kinds whose frames are not well-formed ARI events (the ARI client must drop them), and the others
# (well-formed but meaningless, unknown or out of order: the controller must shrug them off). An
# `oversized` frame (over the client's WebSocket message limit) is neither: it breaks the connection.
MALFORMED_KINDS = ("not_json", "json_not_object", "no_type", "bad_type", "wrong_field_types", "other_application",
                   "lone_surrogate", "nested_too_deep", "enormous_not_json")
WELL_FORMED_KINDS = ("unknown_type", "unknown_objects", "out_of_order", "duplicate_stasis_start", "enormous")


def ari_frames(app: str, live_call_ids: Iterable[str] = (), *, seed: int = 1, enormous_bytes: int = MIB,
               include_oversized: bool = False, oversized_bytes: int = (4 << 20) + 1) -> list[tuple[str, str]]:
    """(kind, text frame) of every malformed and out-of-order event `inject_ari_events` sends."""
    rng = random.Random(seed)
    live = list(live_call_ids)
    frames: list[tuple[str, str]] = []
    stamp = "2026-12-01T10:00:00.000+0000"

    def event(kind: str, fields: dict[str, Any], mark: bool = True) -> None:
        body = {"type": fields.pop("type"), "timestamp": stamp, **fields, "asterisk_id": "00:00:00:00:00:00",
                "application": fields.pop("application", app)}
        if mark:
            body[ABUSE_MARK] = True
        frames.append((kind, json.dumps(body)))

    def unknown_id() -> str:
        return f"abuse-{rng.randrange(1 << 40):x}.{rng.randrange(1000)}"

    def channel(channel_id: str, **extra: Any) -> dict[str, Any]:
        return {"id": channel_id, "name": f"PJSIP/abuse-{channel_id[-6:]}", "state": "Up",
                "caller": {"name": "", "number": "0600000000"}, "language": "en", **extra}

    for text in ("not json", "{", "", "\0\1\2", "[1, 2", '{"type": "StasisStart"', "NaN garbage", "\ufeff{}"):
        frames.append(("not_json", text))
    for text in ("[]", "42", '"StasisStart"', "null", "true", '[{"type": "StasisStart", "channel": {"id": "x"}}]'):
        frames.append(("json_not_object", text))
    frames.append(("no_type", json.dumps({"timestamp": stamp, "channel": channel(unknown_id())})))
    frames.append(("no_type", json.dumps({"event": "StasisStart", "channel": channel(live[0] if live else "x")})))
    for bad in (42, None, "", ["StasisStart"], {"name": "StasisStart"}, True):
        frames.append(("bad_type", json.dumps({"type": bad, "channel": channel(unknown_id())})))
    targets = live or [unknown_id()]
    for target in targets:
        for fields in (
            {"type": "StasisStart", "channel": target},  # a string where an object belongs
            {"type": "StasisStart", "channel": 5},
            {"type": "StasisStart", "channel": [target]},
            {"type": "StasisStart", "channel": {"id": 5}},
            {"type": "StasisStart", "channel": {"id": ""}},
            {"type": "StasisStart", "channel": {}},
            {"type": "StasisStart", "channel": channel(unknown_id()), "args": "100"},
            {"type": "StasisStart", "channel": channel(unknown_id()), "args": 7},
            {"type": "StasisStart", "channel": channel(unknown_id()), "args": [1, 2]},
            {"type": "StasisStart", "channel": channel(unknown_id(), name=5)},
            {"type": "StasisStart", "channel": channel(unknown_id(), caller="0600")},
            {"type": "StasisEnd", "channel": target},
            {"type": "StasisEnd", "channel": {"id": [target]}},
            {"type": "StasisEnd"},
            {"type": "ChannelDtmfReceived", "channel": {"id": target}, "digit": "12345", "duration_ms": 100},
            {"type": "ChannelDtmfReceived", "channel": {"id": target}, "digit": 5, "duration_ms": 100},
            {"type": "ChannelDtmfReceived", "channel": {"id": target}, "digit": "", "duration_ms": 100},
            {"type": "ChannelDtmfReceived", "channel": {"id": target}, "duration_ms": 100},
            {"type": "ChannelDtmfReceived", "channel": target, "digit": "1"},
            {"type": "PlaybackFinished", "playback": target},
            {"type": "PlaybackFinished", "playback": {"id": 12, "state": "done"}},
            {"type": "PlaybackFinished", "playback": {"id": target, "state": 3}},
            {"type": "PlaybackFinished"},
            {"type": "ChannelHangupRequest", "channel": target, "cause": 16},
            {"type": "ChannelEnteredBridge", "bridge": "nope", "channel": channel(target)},
        ):
            event("wrong_field_types", fields, mark=False)
    event("other_application", {"type": "StasisStart", "channel": channel(unknown_id()), "args": ["100"],
                                "application": app + "-someone-else"}, mark=False)
    event("other_application", {"type": "StasisStart", "channel": channel(unknown_id()), "args": ["100"],
                                "application": 42}, mark=False)
    # JSON escapes of lone surrogates: valid JSON, but no UTF-8 text (a caller number with one
    # would poison every write of its lead).
    event("lone_surrogate", {"type": "StasisStart", "args": ["100"],
                             "channel": channel(unknown_id(), caller={"name": "\ud800", "number": "\udfff06"})},
          mark=False)
    event("lone_surrogate", {"type": "ChannelVarset", "variable": "X", "value": "\ud800",
                             "channel": channel(rng.choice(targets))}, mark=False)
    frames.append(("nested_too_deep", '{"type": "ChannelVarset", "value": ' + "[" * 100_000 + "]" * 100_000 + "}"))
    frames.append(("enormous_not_json", "{" + "x" * enormous_bytes))
    for name in ("NoSuchEvent", "stasisstart", "StasisStartX", "Rtcore" + "X" * 200):
        event("unknown_type", {"type": name, "channel": channel(rng.choice(targets))})
    for _ in range(3):
        gone, playback, bridge = unknown_id(), unknown_id(), unknown_id()
        for fields in (
            {"type": "StasisEnd", "channel": channel(gone)},
            {"type": "ChannelDtmfReceived", "channel": channel(gone), "digit": rng.choice("0123456789#*"),
             "duration_ms": 100},
            {"type": "PlaybackStarted", "playback": {"id": playback, "media_uri": "sound:x", "state": "playing",
                                                     "target_uri": f"channel:{gone}"}},
            {"type": "PlaybackFinished", "playback": {"id": playback, "media_uri": "sound:x", "state": "done",
                                                      "target_uri": f"channel:{gone}"}},
            {"type": "PlaybackFinished", "playback": {"id": unknown_id(), "media_uri": "sound:x", "state": "failed",
                                                      "target_uri": f"channel:{rng.choice(targets)}"}},
            {"type": "ChannelHangupRequest", "channel": channel(gone), "cause": 16, "soft": True},
            {"type": "ChannelDestroyed", "channel": channel(gone), "cause": 16, "cause_txt": "Normal Clearing"},
            {"type": "BridgeDestroyed", "bridge": {"id": bridge, "technology": "simple_bridge", "channels": []}},
            {"type": "ChannelLeftBridge", "bridge": {"id": bridge, "channels": []}, "channel": channel(gone)},
            {"type": "RecordingFinished", "recording": {"name": "abuse", "state": "done", "format": "wav"}},
            {"type": "ChannelVarset", "variable": "X", "value": "\U0001f600 é", "channel": channel(gone)},
        ):
            event("unknown_objects", fields)
    for _ in range(2):  # a channel whose life arrives backwards, ending with a StasisStart (it does not exist)
        ghost = unknown_id()
        for fields in (
            {"type": "ChannelDestroyed", "channel": channel(ghost), "cause": 16},
            {"type": "StasisEnd", "channel": channel(ghost)},
            {"type": "ChannelHangupRequest", "channel": channel(ghost), "cause": 16},
            {"type": "PlaybackFinished", "playback": {"id": unknown_id(), "state": "done", "media_uri": "sound:x",
                                                      "target_uri": f"channel:{ghost}"}},
            {"type": "ChannelLeftBridge", "bridge": {"id": unknown_id(), "channels": []}, "channel": channel(ghost)},
            {"type": "StasisStart", "channel": channel(ghost), "args": ["100"]},
        ):
            event("out_of_order", fields)
    for call_id in live:
        event("duplicate_stasis_start", {"type": "StasisStart", "channel": channel(call_id), "args": ["100"]})
        event("duplicate_stasis_start", {"type": "StasisStart", "channel": channel(call_id), "args": ["h"]})
    event("enormous", {"type": "ChannelVarset", "variable": "BIG", "value": "x" * enormous_bytes,
                       "channel": channel(rng.choice(targets))})
    if include_oversized:  # breaks the WebSocket (its message limit): the client reconnects and resynchronises
        frames.append(("oversized", '{"type": "ChannelVarset", "value": "' + "x" * oversized_bytes + '"}'))
    return frames


async def inject_ari_events_async(sim_base_url: str, app: str, live_call_ids: Iterable[str] = (), *,
                                  user: str = "rtcore", password: str = "rtcore", rounds: int = 1, batch: int = 64,
                                  seed: int = 1, include_oversized: bool = False,
                                  frames: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Pushes `ari_frames(app, live_call_ids)` (or `frames`) `rounds` times through the ARI simulator's
    `POST /_sim/events` hook (`sim_base_url`: its http://host:port, with or without /ari), `batch`
    frames a request, to the WebSocket(s) holding `app`. `user`/`password`: the simulator's ARI
    credentials (the embedded PBX's are ari_user / ari_password, rtcore / rtcore by default).

    Returns {"frames", "by_kind": {kind: n}, "malformed" (frames of MALFORMED_KINDS: the ARI client
    must drop each), "well_formed" (the others: they carry ABUSE_MARK), "posts", "sockets" (the
    fewest WebSockets a post reached: 0 means nobody heard them)}."""
    base = sim_base_url.rstrip("/").removesuffix("/ari")
    chosen = frames if frames is not None else ari_frames(app, live_call_ids, seed=seed,
                                                          include_oversized=include_oversized)
    chosen = chosen * rounds
    by_kind = Counter(kind for kind, _ in chosen)
    sockets: int | None = None
    posts = 0
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as session:
        for start in range(0, len(chosen), batch):
            texts = [text for _, text in chosen[start:start + batch]]
            async with session.post(f"{base}/_sim/events", json={"app": app, "frames": texts}) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"POST /_sim/events: {response.status} {body}")
            posts += 1
            sockets = int(body["sockets"]) if sockets is None else min(sockets, int(body["sockets"]))
    malformed = sum(n for kind, n in by_kind.items() if kind in MALFORMED_KINDS)
    return {"frames": len(chosen), "by_kind": dict(by_kind), "malformed": malformed,
            "well_formed": sum(n for kind, n in by_kind.items() if kind in WELL_FORMED_KINDS),
            "oversized": by_kind.get("oversized", 0), "posts": posts, "sockets": sockets or 0}


# --- blocking twins ----------------------------------------------------------------------------------
P = ParamSpec("P")
R = TypeVar("R")


def _blocking(coroutine: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    @functools.wraps(coroutine)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(coroutine(*args, **kwargs))

    run.__doc__ = f"Blocking {coroutine.__name__} (its own event loop). " + (coroutine.__doc__ or "")
    return run


fuzz_rtp = _blocking(fuzz_rtp_async)
abuse_http = _blocking(abuse_http_async)
slow_loris = _blocking(slow_loris_async)
inject_ari_events = _blocking(inject_ari_events_async)
