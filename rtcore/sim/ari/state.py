"""What the simulated Asterisk holds: channels, bridges, playbacks, recordings, and their ARI JSON.

Shapes and field order are copied from a real Asterisk 22.10.1 (../shared/ari/traces): a Channel has
id, name, state, protocol_id, caller, connected, accountcode, dialplan, creationtime, language (and
`channelvars` only in the externalMedia reply); ids follow Asterisk's patterns — channel uniqueids are
"<creation epoch>.<global counter>" ("1795599359.0"), names "PJSIP/<endpoint>-0000000N",
"Snoop/<target id>-0000000N" (one counter per technology, hex), "UnicastRTP/<external host>-0x7f...".
"""

from __future__ import annotations

import enum
import itertools
import secrets
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ASTERISK_VERSION = "22.10.1"
DEFAULT_ASTERISK_ID = "02:fc:00:00:00:01"
DEFAULT_LANGUAGE = "en"
# Where an ARI-originated channel (externalMedia) sits outside Stasis: the dial's pseudo-application.
OUTGOING_DIALPLAN = ("default", "s", 1, "AppDial2", "(Outgoing Line)")
# ChannelDestroyed's cause_txt for a hang-up cause (ast_cause2str()).
HANGUP_CAUSE_TEXT = {
    1: "Unallocated (unassigned) number",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    21: "Call Rejected",
    26: "Answered elsewhere",
    28: "Invalid number format (incomplete number)",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    58: "Bearer capability not available",
    127: "Interworking, unspecified",
}
# What chan_pjsip sets on a caller as its RTP session ends (values from the traces; clients ignore them).
RTP_QOS_VARIABLES = (
    ("RTPAUDIOQOS", (
        "ssrc=124312146;themssrc=235223118;lp=0;rxjitter=0.000000;rxcount=10;txjitter=0.000375;"
        "txcount=50;rlp=0;rtt=0.000000;rxmes=0.000000;txmes=88.087887")),
    ("RTPAUDIOQOSJITTER", (
        "minrxjitter=000.000000;maxrxjitter=000.000750;avgrxjitter=000.000298;stdevrxjitter=000.000158;"
        "mintxjitter=000.000000;maxtxjitter=000.000000;avgtxjitter=000.000000;stdevtxjitter=000.000000;")),
    ("RTPAUDIOQOSLOSS", (
        "  minrxlost=000.000000;  maxrxlost=000.000000;  avgrxlost=000.000000;  stdevrxlost=000.000000;  "
        "mintxlost=000.000000;  maxtxlost=000.000000;  avgtxlost=000.000000;  stdevtxlost=000.000000;")),
    ("RTPAUDIOQOSRTT", (
        "     minrtt=000.000000;     maxrtt=000.000000;     avgrtt=000.000000;     stdevrtt=000.000000;")),
    ("RTPAUDIOQOSMES", (
        "   minrxmes=088.087887;   maxrxmes=088.087887;   avgrxmes=088.087887;   stdevrxmes=000.000000;   "
        "mintxmes=000.000000;   maxtxmes=000.000000;   avgtxmes=000.000000;   stdevtxmes=000.000000;")),
)


def ari_timestamp(epoch: float | None = None) -> str:
    """Asterisk's event/creation time format: 2026-11-25T09:18:24.243+0000."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


class ChannelKind(enum.Enum):
    CALLER = "caller"  # a SIP caller that entered Stasis from the dialplan
    SNOOP = "snoop"
    EXTERNAL_MEDIA = "external_media"


@dataclass(slots=True)
class CallerId:
    name: str = ""
    number: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "number": self.number}


@dataclass(slots=True)
class Dialplan:
    context: str
    exten: str
    priority: int
    app_name: str = ""
    app_data: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "context": self.context,
            "exten": self.exten,
            "priority": self.priority,
            "app_name": self.app_name,
            "app_data": self.app_data,
        }


@dataclass(eq=False, slots=True)
class ExternalMedia:
    """The media side of an externalMedia channel; `local_socket` holds UNICASTRTP_LOCAL_PORT for its lifetime."""

    external_host: str
    format: str
    encapsulation: str
    transport: str
    connection_type: str
    direction: str
    local_address: str = "127.0.0.1"
    local_port: int = 0
    local_socket: socket.socket | None = None
    connection_id: str = ""  # MEDIA_WEBSOCKET_CONNECTION_ID for transport=websocket

    def close(self) -> None:
        if self.local_socket is not None:
            self.local_socket.close()
            self.local_socket = None


@dataclass(eq=False, slots=True)
class Channel:
    id: str
    name: str
    kind: ChannelKind
    state: str
    dialplan: Dialplan
    creationtime: str
    protocol_id: str = ""
    caller: CallerId = field(default_factory=CallerId)
    connected: CallerId = field(default_factory=CallerId)
    accountcode: str = ""
    language: str = DEFAULT_LANGUAGE
    # The codec it talks natively: what a played file is translated to (callers: 8 kHz G.711 µ-law).
    native_format: str = "ulaw"
    # The application its events go to. An externalMedia channel has it from creation (the originate
    # subscribes it, so its Dial events reach the app); others from StasisStart until StasisEnd.
    app: str | None = None
    # Between its StasisStart and its StasisEnd: only then do requests that need Stasis control work on it
    # (find_control: 409, a bridge's channel list: 422 "Channel not in Stasis application").
    in_stasis: bool = False
    stasis_args: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    reply_channelvars: dict[str, str] | None = None  # only the externalMedia reply carries channelvars
    bridge_id: str | None = None
    snoop_target_id: str | None = None
    spy: str = "none"
    whisper: str = "none"
    media: ExternalMedia | None = None
    hanging_up: bool = False
    continued: bool = False  # the application handed it back to the dialplan (POST /continue)

    def to_json(self, *, with_channelvars: bool = False) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": self.protocol_id,
            "caller": self.caller.to_json(),
            "connected": self.connected.to_json(),
            "accountcode": self.accountcode,
            "dialplan": self.dialplan.to_json(),
            "creationtime": self.creationtime,
            "language": self.language,
        }
        if with_channelvars and self.reply_channelvars is not None:
            snapshot["channelvars"] = dict(self.reply_channelvars)
        return snapshot

    def enter_stasis_dialplan(self, app: str, args: list[str]) -> None:
        self.dialplan.app_name = "Stasis"
        self.dialplan.app_data = ",".join([app, *args])


@dataclass(eq=False, slots=True)
class Bridge:
    id: str
    name: str
    bridge_type: str  # "mixing" or "holding"
    technology: str
    creationtime: str
    video_mode: str = "talker"
    channel_ids: list[str] = field(default_factory=list)
    # Applications that get this bridge's events: those whose channels have been in it (as in Asterisk).
    apps: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "technology": self.technology,
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": list(self.channel_ids),
            "creationtime": self.creationtime,
            "video_mode": self.video_mode,
        }


class PlaybackState(enum.Enum):
    QUEUED = "queued"
    PLAYING = "playing"
    CONTINUING = "continuing"
    DONE = "done"  # also what Asterisk reports for a stopped or cancelled playback
    FAILED = "failed"


@dataclass(eq=False, slots=True)
class Playback:
    id: str
    media_uris: list[str]
    target_uri: str  # "channel:<id>" or "bridge:<id>"
    language: str
    state: PlaybackState = PlaybackState.QUEUED
    media_index: int = 0
    # How long the current media item plays when the simulator found a real file for it (sounds_dir);
    # None: the media hooks' playback_duration decides.
    media_seconds: float | None = None
    cancelled: bool = False  # stopped while still queued: reported as done, finishes when its turn comes

    @property
    def media_uri(self) -> str:
        return self.media_uris[self.media_index]

    def to_json(self, state: PlaybackState | None = None) -> dict[str, Any]:
        shown = state or (PlaybackState.DONE if self.cancelled else self.state)
        snapshot: dict[str, Any] = {"id": self.id, "media_uri": self.media_uri}
        if self.media_index + 1 < len(self.media_uris):
            snapshot["next_media_uri"] = self.media_uris[self.media_index + 1]
        snapshot.update(target_uri=self.target_uri, language=self.language, state=shown.value)
        return snapshot


class RecordingState(enum.Enum):
    QUEUED = "queued"
    RECORDING = "recording"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"


@dataclass(eq=False, slots=True)
class LiveRecording:
    name: str
    format: str
    target_uri: str
    max_duration_seconds: int = 0
    state: RecordingState = RecordingState.QUEUED
    started_at: float | None = None
    duration: int | None = None

    def to_json(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = {
            "name": self.name,
            "format": self.format,
            "state": self.state.value,
            "target_uri": self.target_uri,
        }
        if self.duration is not None:
            snapshot["duration"] = self.duration
        return snapshot


@dataclass(frozen=True, slots=True)
class StoredRecording:
    name: str
    format: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "format": self.format}


class IdAllocator:
    """Asterisk-like identifiers: one uniqueid counter for every channel, one name counter per technology."""

    def __init__(self) -> None:
        self._unique = itertools.count()
        self._pjsip = itertools.count()
        self._snoop = itertools.count()

    def channel_id(self) -> str:
        return f"{int(time.time())}.{next(self._unique)}"

    def pjsip_name(self, endpoint: str) -> str:
        return f"PJSIP/{endpoint}-{next(self._pjsip):08x}"

    def snoop_name(self, target_id: str) -> str:
        return f"Snoop/{target_id}-{next(self._snoop):08x}"

    @staticmethod
    def unicast_rtp_name(external_host: str) -> str:
        # The suffix is the channel's private pointer in Asterisk; any 64-bit heap-looking value will do.
        return f"UnicastRTP/{external_host}-0x7f{secrets.token_hex(5)}"

    @staticmethod
    def websocket_name() -> str:
        return f"WebSocket/INCOMING/0x55{secrets.token_hex(5)}"

    @staticmethod
    def sip_call_id() -> str:
        return f"1-{secrets.randbelow(90000) + 10000}@127.0.0.1"

    @staticmethod
    def random_id() -> str:
        return str(uuid.uuid4())
