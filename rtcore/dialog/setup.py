"""Connecting a caller's audio to our capture, without racing Asterisk.

The topology (the seed's, measured in ../shared/ari/FACTS.md): a snoop of the caller with
`spy=in` (only the caller, never our prompts), a snoop with `spy=both` that is recorded, an
externalMedia channel sending slin16 RTP to our capture, and a mixing bridge holding the `spy=in`
snoop and the externalMedia channel.

Helper channels enter the Stasis application asynchronously: their own StasisStart may come before
or after the REST reply that created them, and a request on a channel not yet in Stasis is refused
(`record` → 409, `addChannel` → 422 "Channel not in Stasis application"; 10 of 110 real calls
failed that way). So every helper is used only once its StasisStart has arrived (whichever order
reply and event come in), and a "not in Stasis" refusal is retried until the set-up timeout rather
than ending the call. The three helpers and the bridge are created concurrently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rtcore.dialog.ari.client import AriError
from rtcore.dialog.call import Call

if TYPE_CHECKING:
    from rtcore.dialog.calls import CallController

log = logging.getLogger(__name__)

T = TypeVar("T")

# Suffixes of the ids we give our helper channels and bridge, so their events are never taken
# for a new caller (Asterisk echoes our ids and appArgs back), and a restarted process can find
# them (rtcore.dialog.recovery).
SNOOP_IN, SNOOP_REC, MEDIA, BRIDGE = "-in", "-rec", "-media", "-bridge"
HELPER_SUFFIXES = (SNOOP_IN, SNOOP_REC, MEDIA, BRIDGE)
OWN_ARGS_PREFIX = "rtcore:"
HELPER_CHANNEL_TYPES = ("Snoop/", "UnicastRTP/", "WebSocket/", "AudioSocket/")
RECORDING_FORMAT = "wav"  # Asterisk writes it at the call's rate (8 kHz for a G.711 caller)


class SetupError(RuntimeError):
    """A call's media could not be connected (a helper never entered Stasis in time)."""


@dataclass(frozen=True)
class MediaPath:
    rtp_source: str  # "host:port" Asterisk sends the call's RTP from
    recording: str  # "<name>.<format>" in Asterisk's recording spool; "" if recording failed


def helper_ids(call_id: str) -> list[str]:
    return [call_id + suffix for suffix in HELPER_SUFFIXES]


def call_of_helper(helper_id: str) -> str | None:
    """The caller's channel id a helper id of ours belongs to, or None if it is not one of ours."""
    for suffix in HELPER_SUFFIXES:
        if helper_id.endswith(suffix) and len(helper_id) > len(suffix):
            return helper_id[: -len(suffix)]
    return None


class StasisWaiter:
    """The StasisStart of each helper channel we create, awaitable before or after it arrives."""

    def __init__(self) -> None:
        self._entered: dict[str, asyncio.Future[None]] = {}

    def expect(self, channel_id: str) -> None:
        if channel_id not in self._entered:
            self._entered[channel_id] = asyncio.get_running_loop().create_future()

    def entered(self, channel_id: str) -> None:
        future = self._entered.get(channel_id)
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, channel_id: str, timeout_s: float, gone: asyncio.Event) -> None:
        """Until `channel_id` is in Stasis; SetupError after `timeout_s`; returns at once if `gone`."""
        future = self._entered[channel_id]
        if future.done():
            return
        ended: asyncio.Future[Any] = asyncio.ensure_future(gone.wait())
        waits: set[asyncio.Future[Any]] = {future, ended}
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not done:
            raise SetupError(f"{channel_id} did not enter the Stasis application within {timeout_s:g} s")

    def forget(self, channel_ids: Iterable[str]) -> None:
        for channel_id in channel_ids:
            future = self._entered.pop(channel_id, None)
            if future is not None and not future.done():
                future.cancel()


async def until_in_stasis(ctrl: CallController, request: Callable[[], Awaitable[T]], deadline: float) -> T:
    """`request()`, retried while Asterisk answers "not in Stasis" (a helper's entry can lag even
    its StasisStart event), until the monotonic `deadline`."""
    delay = 0.02
    while True:
        try:
            return await request()
        except AriError as exc:
            if not exc.not_in_stasis or time.monotonic() + delay > deadline:
                raise
            ctrl.counters["setup_retries"] += 1
            log.info("%s %s: %s; retrying in %.0f ms", exc.method, exc.path, exc.message, delay * 1000)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def connect_media(ctrl: CallController, call: Call) -> MediaPath:
    """Create and connect the call's helpers; raises AriError or SetupError on failure (whatever
    was created is in `call.helpers`, for the caller to delete)."""
    call_id = call.call_id
    snoop_in, snoop_rec, media, bridge = helper_ids(call_id)
    for helper in (snoop_in, snoop_rec, media, bridge):
        ctrl.own(call, helper)
    for helper in (snoop_in, snoop_rec, media):
        ctrl.stasis.expect(helper)  # before the request: its StasisStart may beat the reply
    deadline = time.monotonic() + ctrl.setup_timeout_s

    async def stasis(channel_id: str) -> None:
        await ctrl.stasis.wait(channel_id, max(0.0, deadline - time.monotonic()), call.gone)

    async def listening_snoop() -> None:
        await ctrl.ari.snoop(call_id, spy="in", app_args=f"{OWN_ARGS_PREFIX}in:{call_id}", snoop_id=snoop_in)
        await stasis(snoop_in)

    async def external_media() -> str:
        reply = await ctrl.ari.external_media(ctrl.rtp_target, data=f"{OWN_ARGS_PREFIX}media:{call_id}",
                                              channel_id=media)
        variables: dict[str, Any] = (reply or {}).get("channelvars") or {}
        await stasis(media)
        return f"{variables.get('UNICASTRTP_LOCAL_ADDRESS', '')}:{variables.get('UNICASTRTP_LOCAL_PORT', '')}"

    async def mixing_bridge() -> None:
        await ctrl.ari.create_bridge(bridge, name=f"rtcore-{call_id}")

    async def recording() -> str:
        # Not needed for the conversation: a failure is logged and counted, the call goes on.
        name = f"rtcore-{call_id}"
        try:
            await ctrl.ari.snoop(call_id, spy="both", app_args=f"{OWN_ARGS_PREFIX}both:{call_id}",
                                 snoop_id=snoop_rec)
            await stasis(snoop_rec)
            await until_in_stasis(ctrl, lambda: ctrl.ari.record("channels", snoop_rec, name=name,
                                                                fmt=RECORDING_FORMAT), deadline)
        except (AriError, SetupError) as exc:
            if call.gone.is_set() or (isinstance(exc, AriError) and exc.gone and exc.about_channel(call_id)):
                raise
            ctrl.counters["recordings_failed"] += 1
            log.error("call %s: not recorded: %s", call_id, exc)
            return ""
        return f"{name}.{RECORDING_FORMAT}"

    results = await asyncio.gather(listening_snoop(), external_media(), mixing_bridge(), recording(),
                                   return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    rtp_source, recorded = str(results[1]), str(results[3])
    if not call.gone.is_set():
        await until_in_stasis(ctrl, lambda: ctrl.ari.add_channels(bridge, [snoop_in, media]), deadline)
    return MediaPath(rtp_source=rtp_source, recording=recorded)
