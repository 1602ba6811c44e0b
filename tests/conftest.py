from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rtcore.media.capture import CaptureOptions, RtpCapture, bind_rtp_socket
from rtcore.runtime.config import Settings
from rtcore.runtime.ring import AudioRings

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
AUDIO_FR = SHARED / "audio" / "fr"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory path: ipc:// and unix socket paths are limited to ~107 characters."""
    path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_settings(short_dir: Path) -> Callable[..., Settings]:
    """Settings isolated per test: own instance name, run and data dirs, no metrics port."""
    instance = "t" + uuid.uuid4().hex[:8]

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "instance": instance,
            "run_dir": str(short_dir / "run"),
            "data_dir": str(short_dir / "data"),
            "metrics_port": 0,
            "max_calls": 4,
            "ring_seconds": 2.0,
            "heartbeat_interval_s": 0.1,
        }
        values.update(overrides)
        return Settings(**values)

    return make


def require_shared_audio(name: str) -> Path:
    path = AUDIO_FR / name
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared not present)")
    return path


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody listens on now (TCP by default; socket.SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


StartCapture = Callable[..., Awaitable[tuple[RtpCapture, tuple[str, int]]]]


@pytest.fixture
async def start_capture(rings: AudioRings) -> AsyncIterator[StartCapture]:
    """Starts RTP captures into the requesting module's `rings` on real UDP sockets of loopback:
    `await start_capture(clock=None, **CaptureOptions)` -> (capture, its address)."""
    transports: list[asyncio.BaseTransport] = []

    async def start(clock: Callable[[], float] | None = None, **options: object) -> tuple[RtpCapture, tuple[str, int]]:
        loop = asyncio.get_running_loop()
        sock = bind_rtp_socket("127.0.0.1", 0, 4 << 20)
        address = sock.getsockname()
        capture_options = CaptureOptions(**options)  # type: ignore[arg-type]
        transport, capture = await loop.create_datagram_endpoint(
            lambda: RtpCapture(rings, capture_options, **({"clock": clock} if clock else {})), sock=sock)
        transports.append(transport)
        return capture, address

    yield start
    for transport in transports:
        transport.close()
