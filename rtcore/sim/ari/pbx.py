"""The simulated PBX: calls entering Stasis, snoop and externalMedia channels, bridges, hang-ups.

Every operation emits its events in the order a real Asterisk 22.10.1 sent them (../shared/ari/traces),
before the REST reply is written — except the Stasis entry of the helper channels the application
creates (snoop, externalMedia). On a real Asterisk that entry runs on the new channel's own thread and
often lands after the reply (FACTS.md, "Seen with real SIP calls": 10 of 110 calls used a helper before
its StasisStart and got 409/422 "Channel not in Stasis application"). So by default it comes after a
random delay (`stasis_delay_s`, drawn uniformly, seeded); `None` puts it before the reply, as the traces
mostly show. A helper hung up, or whose snoop target went away, before that moment never enters Stasis.
The events:
- a caller: StasisStart (state Ring, args like ["100"]); answer → ChannelStateChange Up;
- the far end hanging up: ChannelVarset RTPAUDIOQOS* ×5, ChannelHangupRequest (no cause), StasisEnd —
  no ChannelDestroyed (the channel went back to the dialplan); DELETE by the app: ChannelHangupRequest
  (cause 32 = explicit soft hangup, soft true) first;
- continue (the app hands a channel back to the dialplan): StasisEnd, the app's last event about it;
  the dialplan then runs on without it: the sample one's `Hangup()` after `Stasis()`;
- the snoops of a channel that went away leave their bridge (ChannelVarset BRIDGEPEER="",
  ChannelLeftBridge), end their recording and get StasisEnd ~14 ms later, on their own;
- externalMedia: reply state Down, then Dial "", ChannelStateChange Up, Dial ANSWER, ChannelVarset
  STASISSTATUS="", StasisStart(args=[data]); it and its bridge STAY after the caller left; DELETE →
  ChannelHangupRequest, [BRIDGEPEER="", ChannelLeftBridge], StasisEnd, STASISSTATUS=SUCCESS,
  ChannelDestroyed (cause 16 "Normal Clearing");
- bridges: no BridgeCreated; ChannelEnteredBridge per channel, then BRIDGEPEER for every member once two
  or more are in; DELETE → ChannelLeftBridge for those still in, then BridgeDestroyed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from rtcore.sim.ari.events import EventHub
from rtcore.sim.ari.media import MediaEngine, MediaHooks
from rtcore.sim.ari.sounds import SoundLibrary
from rtcore.sim.ari.state import (
    HANGUP_CAUSE_TEXT,
    OUTGOING_DIALPLAN,
    RTP_QOS_VARIABLES,
    Bridge,
    CallerId,
    Channel,
    ChannelKind,
    Dialplan,
    ExternalMedia,
    IdAllocator,
    ari_timestamp,
)
from rtcore.sim.ari.swagger import AriError

log = logging.getLogger(__name__)

SNOOP_TEARDOWN_DELAY_S = 0.014  # measured: a snoop's StasisEnd came ~14 ms after its target's
EXPLICIT_SOFT_HANGUP = 32  # AST_SOFTHANGUP_EXPLICIT, what ChannelHangupRequest reports for DELETE
NORMAL_CLEARING = 16


class StasisAppNotRegistered(RuntimeError):
    """Stasis(APP) with no events WebSocket holding APP: Asterisk fails the call's Stasis() too."""


class SimulatedPbx:
    def __init__(self, hub: EventHub, hooks: MediaHooks, sounds: SoundLibrary,
                 stasis_delay_s: tuple[float, float] | None = (0.0, 0.05), seed: int | None = None) -> None:
        if stasis_delay_s is not None and not 0.0 <= stasis_delay_s[0] <= stasis_delay_s[1]:
            raise ValueError(f"stasis_delay_s must be (low, high) with 0 <= low <= high, not {stasis_delay_s!r}")
        self.hub = hub
        self.hooks = hooks
        self.ids = IdAllocator()
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.started_at = ari_timestamp()
        self.stasis_delay_s = stasis_delay_s
        self._rng = random.Random(seed)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self.media = MediaEngine(hub, hooks, sounds, self.spawn)

    # --- plumbing ------------------------------------------------------------------------------
    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._timers.add(handle)

    async def close(self) -> None:
        for handle in self._timers:
            handle.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self.channels.values():
            if channel.media is not None:
                channel.media.close()

    def _emit_channel(self, channel: Channel, event_type: str, fields: dict[str, Any] | None = None,
                      leading: dict[str, Any] | None = None, extra_apps: tuple[str, ...] = ()) -> None:
        self.hub.emit([channel.app, *extra_apps], event_type, {**(fields or {}), "channel": channel.to_json()},
                      leading=leading)

    def set_variable(self, channel: Channel, name: str, value: str) -> None:
        channel.variables[name] = value
        self._emit_channel(channel, "ChannelVarset", leading={"variable": name, "value": value})

    def _enter_stasis(self, channel: Channel, app: str, args: list[str]) -> None:
        channel.app = app
        channel.in_stasis = True
        channel.stasis_args = list(args)
        channel.enter_stasis_dialplan(app, args)
        self._emit_channel(channel, "StasisStart", {"args": list(args)})

    def _helper_enters_stasis(self, channel: Channel, enter: Callable[[], None]) -> None:
        """Runs a helper channel's Stasis entry now (stasis_delay_s None) or after a random delay, and
        then only if the channel (and a snoop's target) is still there."""
        def enter_if_alive() -> None:
            alive = not channel.hanging_up and self.channels.get(channel.id) is channel
            target = channel.snoop_target_id
            if alive and (target is None or target in self.channels):
                enter()
            else:
                log.debug("helper channel gone before entering Stasis", extra={"channel": channel.id})

        if self.stasis_delay_s is None:
            enter()
        else:
            self._later(self._rng.uniform(*self.stasis_delay_s), enter_if_alive)

    # --- callers -------------------------------------------------------------------------------
    def place_call(self, app: str, caller_number: str, caller_name: str, exten: str, args: list[str],
                   endpoint: str, context: str, language: str = "en", native_format: str = "ulaw") -> Channel:
        if not self.hub.is_registered(app):
            raise StasisAppNotRegistered(f"Stasis app '{app}' not registered: no events WebSocket holds it")
        channel = Channel(
            id=self.ids.channel_id(),
            name=self.ids.pjsip_name(endpoint),
            kind=ChannelKind.CALLER,
            state="Ring",
            dialplan=Dialplan(context, exten, 2),
            creationtime=ari_timestamp(),
            protocol_id=self.ids.sip_call_id(),
            caller=CallerId(caller_name, caller_number),
            language=language,
            native_format=native_format,
        )
        self.channels[channel.id] = channel
        self._enter_stasis(channel, app, args)
        return channel

    def answer(self, channel: Channel) -> None:
        if channel.state != "Up":
            channel.state = "Up"
            self._emit_channel(channel, "ChannelStateChange")

    def send_dtmf(self, channel: Channel, digit: str, duration_ms: int) -> None:
        self._emit_channel(channel, "ChannelDtmfReceived", {"digit": digit, "duration_ms": duration_ms})

    def continue_in_dialplan(self, channel: Channel, context: str | None, exten: str | None,
                             priority: int | None) -> None:
        """POST /channels/{id}/continue: the channel leaves Stasis and runs the dialplan on, where
        Asterisk's ast_ari_channels_continue_in_dialplan() sends it (by default the priority after
        Stasis()). The simulated dialplan is the sample extensions.conf, `Stasis(app,${EXTEN})` then
        `Hangup()`, with nothing anywhere else, so wherever it goes on the channel is hung up
        (normal clearing) on its own thread a moment later; the application, no longer subscribed to
        it, hears none of that."""
        here = channel.dialplan
        if context:
            channel.dialplan = Dialplan(context, exten or "s", priority or 1)
        else:
            channel.dialplan = Dialplan(here.context, exten or here.exten,
                                        priority or (1 if exten else here.priority + 1))
        channel.continued = True
        self._leave_stasis(channel)
        channel.dialplan.app_name, channel.dialplan.app_data = "Hangup", ""

        def hang_up() -> None:
            if self.channels.get(channel.id) is channel:
                self.hangup(channel, by_app=False)

        self._later(0.0, hang_up)

    # --- hang-ups ------------------------------------------------------------------------------
    def hangup(self, channel: Channel, *, by_app: bool, cause: int = NORMAL_CLEARING) -> None:
        """DELETE /channels/{id} (by_app) or the far end hanging up."""
        if channel.hanging_up:
            return
        channel.hanging_up = True
        qos = channel.kind is ChannelKind.CALLER
        if qos and not by_app:
            self._report_rtp_qos(channel)
        leading = {"cause": EXPLICIT_SOFT_HANGUP, "soft": True} if by_app else None
        self._emit_channel(channel, "ChannelHangupRequest", leading=leading)
        if qos and by_app:
            self._report_rtp_qos(channel)
        was_in_stasis = channel.in_stasis
        self._leave_stasis(channel)
        if channel.kind is ChannelKind.EXTERNAL_MEDIA:
            # An ARI-originated channel stays subscribed after StasisEnd, so its destruction is reported.
            if was_in_stasis:
                self.set_variable(channel, "STASISSTATUS", "SUCCESS")
            channel.dialplan = Dialplan(*OUTGOING_DIALPLAN)
            self._emit_channel(channel, "ChannelDestroyed",
                               {"cause": cause, "cause_txt": HANGUP_CAUSE_TEXT.get(cause, "Unknown")})
        self._forget(channel)

    def _report_rtp_qos(self, channel: Channel) -> None:
        for name, value in RTP_QOS_VARIABLES:
            self.set_variable(channel, name, value)

    def _leave_stasis(self, channel: Channel) -> None:
        self.media.abort(channel)
        if channel.bridge_id is not None:
            self._leave_bridge(channel, self.bridges[channel.bridge_id])
        if channel.in_stasis:
            self._emit_channel(channel, "StasisEnd")
            channel.in_stasis = False
        if channel.kind is not ChannelKind.EXTERNAL_MEDIA:
            channel.app = None

    def _forget(self, channel: Channel) -> None:
        self.channels.pop(channel.id, None)
        self.hub.notifier.changed()  # a channel gone without an event the application gets (continued)
        if channel.media is not None:
            self.spawn(self._release_media(channel))
        snoops = [c for c in self.channels.values() if c.snoop_target_id == channel.id]
        if snoops:
            self._later(SNOOP_TEARDOWN_DELAY_S, lambda: self._end_snoops(snoops))

    def _end_snoops(self, snoops: list[Channel]) -> None:
        for snoop in snoops:
            if snoop.hanging_up or snoop.id not in self.channels:
                continue
            snoop.hanging_up = True
            self._leave_stasis(snoop)
            self._forget(snoop)

    async def _release_media(self, channel: Channel) -> None:
        try:
            await self.hooks.external_media_destroyed(channel)
        finally:
            if channel.media is not None:
                channel.media.close()

    # --- helper channels -----------------------------------------------------------------------
    def create_snoop(self, target: Channel, spy: str, whisper: str, app: str, app_args: str | None,
                     snoop_id: str | None) -> dict[str, Any]:
        if snoop_id and snoop_id in self.channels:
            raise AriError(500, "Internal error", "Snoop channel could not be created")
        snoop = Channel(
            id=snoop_id or self.ids.channel_id(),
            name=self.ids.snoop_name(target.id),
            kind=ChannelKind.SNOOP,
            state="Up",
            dialplan=Dialplan("default", "s", 1),
            creationtime=ari_timestamp(),
            snoop_target_id=target.id,
            spy=spy,
            whisper=whisper,
            native_format="slin",
        )
        self.channels[snoop.id] = snoop
        reply = snoop.to_json()  # the reply is the snapshot from before Stasis (app_name "")
        self._helper_enters_stasis(snoop, lambda: self._enter_stasis(snoop, app, [app_args] if app_args else []))
        return reply

    def create_external_media(self, app: str, media: ExternalMedia, data: str | None, channel_id: str | None,
                              variables: dict[str, str]) -> dict[str, Any]:
        if channel_id and channel_id in self.channels:
            raise AriError(409, "Conflict", "Channel with given unique ID already exists")
        if media.transport == "websocket":
            name = self.ids.websocket_name()
            media.connection_id = self.ids.random_id()
            dialstring = f"{media.connection_id}/c({media.format})"
            channelvars = {"MEDIA_WEBSOCKET_CONNECTION_ID": media.connection_id,
                           "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE": str(optimal_frame_size(media.format))}
        else:
            media.local_socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            media.local_socket.bind((media.local_address, 0))
            media.local_port = media.local_socket.getsockname()[1]
            name = self.ids.unicast_rtp_name(media.external_host)
            dialstring = f"{media.external_host}/c({media.format})"
            channelvars = {"UNICASTRTP_LOCAL_PORT": str(media.local_port),
                           "UNICASTRTP_LOCAL_ADDRESS": media.local_address}
        channel = Channel(
            id=channel_id or self.ids.channel_id(),
            name=name,
            kind=ChannelKind.EXTERNAL_MEDIA,
            state="Down",
            dialplan=Dialplan(*OUTGOING_DIALPLAN),
            creationtime=ari_timestamp(),
            app=app,  # subscribed by the originate from the start, so the Dial events reach the app
            variables={**variables, **channelvars},
            reply_channelvars=channelvars,
            media=media,
            native_format=media.format,
        )
        self.channels[channel.id] = channel
        reply = channel.to_json(with_channelvars=True)
        self._helper_enters_stasis(channel, lambda: self._answer_external_media(channel, app, dialstring, data))
        return reply

    def _answer_external_media(self, channel: Channel, app: str, dialstring: str, data: str | None) -> None:
        """The originated channel answers and runs Stasis(app, data): Dial, Up, Dial ANSWER, StasisStart."""
        dial = {"dialstatus": "", "forward": "", "dialstring": dialstring, "peer": channel.to_json()}
        self.hub.emit([app], "Dial", dial)
        channel.state = "Up"
        self._emit_channel(channel, "ChannelStateChange")
        self.hub.emit([app], "Dial", {**dial, "dialstatus": "ANSWER", "peer": channel.to_json()})
        channel.enter_stasis_dialplan(app, [data] if data else [])
        self.set_variable(channel, "STASISSTATUS", "")
        self._enter_stasis(channel, app, [data] if data else [])
        self.spawn(self.hooks.external_media_created(channel))

    # --- bridges -------------------------------------------------------------------------------
    def create_bridge(self, bridge_type: str, bridge_id: str | None, name: str, video_mode: str) -> Bridge:
        bridge = Bridge(
            id=bridge_id or self.ids.random_id(),
            name=name,
            bridge_type=bridge_type,
            technology="holding_bridge" if bridge_type == "holding" else "simple_bridge",
            creationtime=ari_timestamp(),
            video_mode=video_mode,
        )
        self.bridges[bridge.id] = bridge
        return bridge

    def destroy_bridge(self, bridge: Bridge) -> None:
        self.media.abort(bridge)
        for channel_id in list(bridge.channel_ids):
            self._leave_bridge(self.channels[channel_id], bridge)
        del self.bridges[bridge.id]
        self.hub.emit(sorted(bridge.apps), "BridgeDestroyed", {"bridge": bridge.to_json()})

    def add_to_bridge(self, bridge: Bridge, channel: Channel) -> None:
        if channel.bridge_id == bridge.id:
            return
        if channel.bridge_id is not None:
            self._leave_bridge(channel, self.bridges[channel.bridge_id])
        bridge.channel_ids.append(channel.id)
        channel.bridge_id = bridge.id
        if channel.app:
            bridge.apps.add(channel.app)
        self._retechnology(bridge)
        self._emit_channel(channel, "ChannelEnteredBridge", {"bridge": bridge.to_json()},
                           extra_apps=tuple(sorted(bridge.apps)))
        self._update_bridge_peers(bridge)
        self.spawn(self.hooks.channel_entered_bridge(channel, bridge))

    def remove_from_bridge(self, bridge: Bridge, channel: Channel) -> None:
        if channel.bridge_id == bridge.id:
            self._leave_bridge(channel, bridge)

    def _leave_bridge(self, channel: Channel, bridge: Bridge) -> None:
        if channel.variables.get("BRIDGEPEER"):
            self.set_variable(channel, "BRIDGEPEER", "")
        bridge.channel_ids.remove(channel.id)
        channel.bridge_id = None
        self._retechnology(bridge)
        self._emit_channel(channel, "ChannelLeftBridge", {"bridge": bridge.to_json()},
                           extra_apps=tuple(sorted(bridge.apps)))
        self._update_bridge_peers(bridge)
        self.spawn(self.hooks.channel_left_bridge(channel, bridge))

    def _update_bridge_peers(self, bridge: Bridge) -> None:
        # Asterisk refreshes BRIDGEPEER while two or more are in; the last one keeps its stale value.
        if len(bridge.channel_ids) < 2:
            return
        members = [self.channels[channel_id] for channel_id in bridge.channel_ids]
        for member in members:
            peers = ",".join(other.name for other in members if other is not member)
            if member.variables.get("BRIDGEPEER") != peers:
                self.set_variable(member, "BRIDGEPEER", peers)

    @staticmethod
    def _retechnology(bridge: Bridge) -> None:
        # A smart mixing bridge is simple_bridge for up to two channels and softmix beyond.
        if bridge.bridge_type == "mixing":
            bridge.technology = "softmix" if len(bridge.channel_ids) > 2 else "simple_bridge"


def optimal_frame_size(media_format: str) -> int:
    """Bytes in 20 ms of `media_format` (chan_websocket's MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE: slin16 → 640)."""
    rates = {"slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000, "slin32": 32000,
             "slin44": 44100, "slin48": 48000, "slin96": 96000, "slin192": 192000}
    if media_format in rates:
        return rates[media_format] * 2 // 50
    return 160  # 8 kHz, one byte per sample (ulaw, alaw)
