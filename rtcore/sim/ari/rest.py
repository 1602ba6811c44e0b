"""REST operations of the simulated ARI, checked in the order and with the words of Asterisk's resource_*.c.

Each handler takes the parsed `Arguments` and answers a `Reply` or raises `AriError`. The checks run in
Asterisk's order because the order is observable: play without media on an unknown channel is 404
(channel first), snoop with a bad spy and no app is "Invalid direction specified for spy" (spy first).
Statuses and messages are those of ../shared/ari/traces/error-responses.* where measured, else
Asterisk 22's source. Operations without a handler here answer 501 from the server.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from rtcore.sim.ari.pbx import SimulatedPbx
from rtcore.sim.ari.state import (
    ASTERISK_VERSION,
    Bridge,
    Channel,
    ExternalMedia,
    ari_timestamp,
)
from rtcore.sim.ari.swagger import Arguments, AriError

log = logging.getLogger(__name__)

SNOOP_DIRECTIONS = ("none", "both", "out", "in")
TERMINATE_ON = ("none", "any", "*", "#")
IF_EXISTS = ("fail", "overwrite", "append")
HANGUP_REASONS = {
    "normal": 16, "busy": 17, "congestion": 34, "no_answer": 19, "timeout": 18, "rejected": 21,
    "unallocated": 1, "normal_unspecified": 31, "number_incomplete": 28, "codec_mismatch": 58,
    "interworking": 127, "failure": 38, "answered_elsewhere": 26,
}
# Codecs Asterisk's format cache knows (externalMedia's format) and file formats it can record to.
MEDIA_FORMATS = frozenset({
    "slin", "slin12", "slin16", "slin24", "slin32", "slin44", "slin48", "slin96", "slin192", "ulaw", "alaw",
    "g722", "g726", "g726aal2", "g729", "g723", "gsm", "ilbc", "lpc10", "adpcm", "speex", "speex16", "speex32",
    "opus", "siren7", "siren14", "g719", "testlaw", "codec2",
})
RECORDING_FORMATS = frozenset({
    "wav", "wav16", "WAV", "wav49", "gsm", "g722", "g729", "g723", "g726-16", "g726-24", "g726-32", "g726-40",
    "ulaw", "ul", "pcm", "mu", "alaw", "al", "alw", "sln", "raw", "sln12", "sln16", "sln24", "sln32", "sln44",
    "sln48", "sln96", "sln192", "au", "vox", "ogg", "iLBC", "siren7", "siren14", "h263", "h264",
})
INTERNAL_ERROR = "An internal error prevented this request from being handled"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any = None
    reason: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[SimulatedPbx, Arguments], Reply]
HANDLERS: dict[str, Handler] = {}


def handles(*operation_keys: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for key in operation_keys:
            HANDLERS[key] = handler
        return handler

    return register


def ok(body: Any) -> Reply:
    return Reply(200, body)


NO_CONTENT = Reply(204)


# --- lookups, as find_control() / channel_state_invalid() / find_bridge() do -----------------------
def find_control(pbx: SimulatedPbx, channel_id: str | None) -> Channel:
    channel = pbx.channels.get(channel_id or "")
    if channel is None:
        raise AriError(404, "Not Found", "Channel not found")
    if not channel.in_stasis:  # e.g. a snoop used before its own StasisStart (FACTS.md)
        raise AriError(409, "Conflict", "Channel not in Stasis application")
    return channel


def require_state_valid(channel: Channel) -> None:
    if channel.state in ("Down", "Rsrved", "Ringing"):
        raise AriError(412, "Precondition Failed", "Channel in invalid state")


def find_bridge(pbx: SimulatedPbx, bridge_id: str | None) -> Bridge:
    bridge = pbx.bridges.get(bridge_id or "")
    if bridge is None:
        raise AriError(404, "Not found", "Bridge not found")
    return bridge


def channel_list(pbx: SimulatedPbx, channel_ids: list[str]) -> list[Channel]:
    """control_list_create(): every channel must exist (400) and be in Stasis (422)."""
    if not channel_ids:
        raise AriError(400, "Bad Request", "Missing parameter channel")
    channels = []
    for channel_id in channel_ids:
        channel = pbx.channels.get(channel_id)
        if channel is None:
            raise AriError(400, "Bad Request", "Channel not found")
        if not channel.in_stasis:
            raise AriError(422, "Unprocessable Entity", "Channel not in Stasis application")
        channels.append(channel)
    return channels


# --- asterisk, applications ----------------------------------------------------------------------
@handles("asterisk.getInfo")
def get_info(pbx: SimulatedPbx, args: Arguments) -> Reply:
    info = {
        "build": {"os": "Linux", "kernel": "6.1.0", "machine": "x86_64", "options": "OPTIONAL_API",
                  "date": pbx.started_at, "user": "root"},
        "system": {"version": ASTERISK_VERSION, "entity_id": pbx.hub.asterisk_id},
        "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}},
        "status": {"startup_time": pbx.started_at, "last_reload_time": pbx.started_at},
    }
    only = args.texts("only")
    for section in only:
        if section not in info:
            raise AriError(400, "Bad Request", f"Unrecognized info section '{section}'")
    return ok({name: value for name, value in info.items() if not only or name in only})


@handles("asterisk.ping")
def ping(pbx: SimulatedPbx, args: Arguments) -> Reply:
    return ok({"asterisk_id": pbx.hub.asterisk_id, "ping": "pong", "timestamp": ari_timestamp()})


def application_json(pbx: SimulatedPbx, app: str) -> dict[str, Any]:
    return {
        "name": app,
        "channel_ids": [c.id for c in pbx.channels.values() if c.app == app],
        "bridge_ids": [b.id for b in pbx.bridges.values() if app in b.apps],
        "endpoint_ids": [],
        "device_names": [],
        "events_allowed": [],
        "events_disallowed": [],
    }


@handles("applications.list")
def list_applications(pbx: SimulatedPbx, args: Arguments) -> Reply:
    apps = dict.fromkeys(app for s in pbx.hub.subscribers for app in s.apps)
    return ok([application_json(pbx, app) for app in apps])


@handles("applications.get")
def get_application(pbx: SimulatedPbx, args: Arguments) -> Reply:
    app = args.text("applicationName") or ""
    # An application whose WebSocket went away lives on, inactive, while it has channels or bridges.
    in_use = any(c.app == app for c in pbx.channels.values()) or any(app in b.apps for b in pbx.bridges.values())
    if not pbx.hub.is_registered(app) and not in_use:
        raise AriError(404, "Not Found", "Application not found")
    return ok(application_json(pbx, app))


# --- channels ------------------------------------------------------------------------------------
@handles("channels.list")
def list_channels(pbx: SimulatedPbx, args: Arguments) -> Reply:
    return ok([channel.to_json() for channel in pbx.channels.values()])


@handles("channels.get")
def get_channel(pbx: SimulatedPbx, args: Arguments) -> Reply:
    channel = pbx.channels.get(args.text("channelId") or "")
    if channel is None:
        raise AriError(404, "Not Found", "Channel not found")
    return ok(channel.to_json())


@handles("channels.hangup")
def hangup(pbx: SimulatedPbx, args: Arguments) -> Reply:
    channel = pbx.channels.get(args.text("channelId") or "")
    if channel is None:
        raise AriError(404, "Not Found", "Channel not found")
    reason, reason_code = args.text("reason"), args.text("reason_code")
    if reason and reason_code:
        raise AriError(400, "Bad Request", "The reason and reason_code can't both be specified")
    cause = HANGUP_REASONS["normal"]
    if reason_code:
        if not reason_code.strip().lstrip("-").isdigit():
            raise AriError(400, "Invalid Reason Code", "Invalid reason for hangup reason code provided")
        cause = int(reason_code)
    elif reason:
        if reason not in HANGUP_REASONS:
            raise AriError(400, "Invalid Reason", "Invalid reason for hangup provided")
        cause = HANGUP_REASONS[reason]
    pbx.hangup(channel, by_app=True, cause=cause)
    return NO_CONTENT


@handles("channels.answer")
def answer(pbx: SimulatedPbx, args: Arguments) -> Reply:
    channel = find_control(pbx, args.text("channelId"))
    require_state_valid(channel)
    pbx.answer(channel)
    return NO_CONTENT


@handles("channels.continueInDialplan")
def continue_in_dialplan(pbx: SimulatedPbx, args: Arguments) -> Reply:
    """ast_ari_channels_continue_in_dialplan(): the channel leaves Stasis and runs the dialplan on."""
    channel = find_control(pbx, args.text("channelId"))
    require_state_valid(channel)
    priority = args.integer("priority")
    label = args.text("label")
    if label:  # it supersedes priority; the simulated dialplan has no labels, only numbers
        if not label.strip().lstrip("-").isdigit():
            raise AriError(404, "Not Found", "Requested label can not be found")
        priority = int(label)
        if priority == 0:
            raise AriError(400, "Bad Request", "Requested priority is illegal")
    pbx.continue_in_dialplan(channel, args.text("context"), args.text("extension"), priority or None)
    return NO_CONTENT


def play_reply(pbx: SimulatedPbx, target: Channel | Bridge, args: Arguments, default_language: str) -> Reply:
    if args.integer("skipms") < 0:
        raise AriError(400, "Bad Request", "skipms cannot be negative")
    if args.integer("offsetms") < 0:
        raise AriError(400, "Bad Request", "offsetms cannot be negative")
    media = args.texts("media")
    if not media:
        raise AriError(500, "Internal Server Error", "Failed to queue media for playback")
    playback_id = args.text("playbackId") or pbx.ids.random_id()
    playback = pbx.media.play(target, media, args.text("lang") or default_language, playback_id)
    # The snapshot is taken now: "playing" when the queue was idle and it started at once, else "queued".
    return Reply(201, playback.to_json(), headers={"Location": f"/playbacks/{playback.id}"})


@handles("channels.play", "channels.playWithId")
def play_on_channel(pbx: SimulatedPbx, args: Arguments) -> Reply:
    channel = find_control(pbx, args.text("channelId"))
    require_state_valid(channel)
    return play_reply(pbx, channel, args, channel.language)


def record_reply(pbx: SimulatedPbx, target: Channel | Bridge, args: Arguments) -> Reply:
    terminate_on = args.text("terminateOn") or "none"
    if terminate_on not in TERMINATE_ON:
        raise AriError(400, "Bad Request", "terminateOn invalid")
    if_exists = args.text("ifExists") or "fail"
    if if_exists not in IF_EXISTS:
        raise AriError(400, "Bad Request", "ifExists invalid")
    file_format = args.text("format") or ""
    if file_format not in RECORDING_FORMATS:
        raise AriError(422, "Unprocessable Entity", "specified format is unknown on this system")
    name = args.text("name") or ""
    _, snapshot = pbx.media.record(target, name, file_format, if_exists, args.integer("maxDurationSeconds"))
    return Reply(201, snapshot, headers={"Location": f"/recordings/live/{name}"})


def check_record_durations(args: Arguments) -> None:
    if args.integer("maxDurationSeconds") < 0:
        raise AriError(400, "Bad Request", "max_duration_seconds cannot be negative")
    if args.integer("maxSilenceSeconds") < 0:
        raise AriError(400, "Bad Request", "max_silence_seconds cannot be negative")


@handles("channels.record")
def record_channel(pbx: SimulatedPbx, args: Arguments) -> Reply:
    check_record_durations(args)
    channel = find_control(pbx, args.text("channelId"))
    return record_reply(pbx, channel, args)


def snoop_direction(value: str | None, what: str) -> str:
    direction = value or "none"
    if direction not in SNOOP_DIRECTIONS:
        raise AriError(400, "Bad Request", f"Invalid direction specified for {what}")
    return direction


@handles("channels.snoopChannel", "channels.snoopChannelWithId")
def snoop(pbx: SimulatedPbx, args: Arguments) -> Reply:
    spy = snoop_direction(args.text("spy"), "spy")
    whisper = snoop_direction(args.text("whisper"), "whisper")
    if spy == "none" and whisper == "none":
        raise AriError(400, "Bad Request", "Direction must be specified for at least spy or whisper")
    app = args.text("app")
    if not app:
        raise AriError(400, "Bad Request", "Application name is required")
    target = pbx.channels.get(args.text("channelId") or "")
    if target is None:
        raise AriError(404, "Channel Not Found", "Provided channel was not found")
    return ok(pbx.create_snoop(target, spy, whisper, app, args.text("appArgs"), args.text("snoopId")))


@handles("channels.externalMedia")
def external_media(pbx: SimulatedPbx, args: Arguments) -> Reply:
    variables = body_variables(args)
    app = args.text("app")
    if not app:
        raise AriError(400, "Bad Request", "app cannot be empty")
    encapsulation = (args.text("encapsulation") or "rtp").lower()
    transport = (args.text("transport") or "udp").lower()
    connection_type = (args.text("connection_type") or "client").lower()
    external_host = args.text("external_host") or ""
    websocket_server = transport == "websocket" and connection_type == "server"
    if not external_host and not websocket_server:
        raise AriError(400, "Bad Request", "external_host is required for all but websocket server connections")
    media_format = args.text("format")
    if not media_format:
        raise AriError(400, "Bad Request", "format cannot be empty")
    supported = (encapsulation, transport) in (("rtp", "udp"), ("none", "websocket"))
    if not supported:
        if (encapsulation, transport) == ("audiosocket", "tcp"):
            log.warning("externalMedia over AudioSocket is not simulated")
        raise AriError(501, "Not Implemented", "The encapsulation and/or transport is not supported")
    host, _, port = external_host.rpartition(":")
    bad_host = transport == "udp" and not (host and port.isdigit())
    # A websocket client connection names a websocket_client.conf entry; the simulator has none.
    if media_format not in MEDIA_FORMATS or bad_host or (transport == "websocket" and not websocket_server):
        raise AriError(500, "Internal Server Error", INTERNAL_ERROR)
    media = ExternalMedia(external_host, media_format, encapsulation, transport, connection_type,
                          args.text("direction") or "both")
    return ok(pbx.create_external_media(app, media, args.text("data"), args.text("channelId"), variables))


def body_variables(args: Arguments) -> dict[str, str]:
    variables = args.body.get("variables") if isinstance(args.body, Mapping) else None
    if variables is None:
        return {}
    if not isinstance(variables, Mapping) or not all(isinstance(v, str) for v in variables.values()):
        raise AriError(400, "Bad Request", "Only string values in the 'variables' object allowed")
    return {str(name): value for name, value in variables.items()}


@handles("channels.getChannelVar")
def get_channel_var(pbx: SimulatedPbx, args: Arguments) -> Reply:
    name = args.text("variable")
    if not name:
        raise AriError(400, "Bad Request", "Variable name is required")
    channel = pbx.channels.get(args.text("channelId") or "")
    if channel is None:
        raise AriError(404, "Channel Not Found", "Provided channel was not found")
    if name not in channel.variables:
        raise AriError(404, "Variable Not Found", "Provided variable was not found")
    return ok({"value": channel.variables[name]})


@handles("channels.setChannelVar")
def set_channel_var(pbx: SimulatedPbx, args: Arguments) -> Reply:
    name = args.text("variable")
    if not name:
        raise AriError(400, "Bad Request", "Variable name is required")
    channel = find_control(pbx, args.text("channelId"))
    pbx.set_variable(channel, name, args.text("value") or "")
    return NO_CONTENT
