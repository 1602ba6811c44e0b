"""REST operations on bridges, playbacks and recordings (the channel ones are in rest.py).

Same rules as rest.py: Asterisk's order of checks and its words (resource_bridges.c,
resource_playbacks.c, resource_recordings.c, and ../shared/ari/traces/error-responses.*).
"""

from __future__ import annotations

from rtcore.sim.ari.pbx import SimulatedPbx
from rtcore.sim.ari.rest import (
    NO_CONTENT,
    Reply,
    channel_list,
    check_record_durations,
    find_bridge,
    handles,
    ok,
    play_reply,
    record_reply,
)
from rtcore.sim.ari.state import DEFAULT_LANGUAGE, LiveRecording, RecordingState
from rtcore.sim.ari.swagger import Arguments, AriError


def parse_bridge_type(requested: str | None) -> tuple[str, str] | None:
    """stasis_app_bridge_create(): (bridge_type, video_mode), or None when Asterisk refuses the type."""
    mixing = holding = False
    video_mode = "talker"
    for word in (requested or "mixing").split(","):
        word = word.strip()
        if word == "mixing":
            mixing = True
        elif word == "holding":
            holding = True
        elif word == "video_sfu":
            video_mode = "sfu"
        elif word == "video_single":
            video_mode = "single"
        # dtmf_events, proxy_media and sdp_label change no capability; other words are ignored.
    if mixing == holding:  # no capability at all, or holding and mixing together
        return None
    return ("mixing" if mixing else "holding"), video_mode


def create_bridge_reply(pbx: SimulatedPbx, bridge_id: str | None, args: Arguments) -> Reply:
    parsed = parse_bridge_type(args.text("type"))
    if parsed is None:
        shown_id = bridge_id if bridge_id else "(null)"  # glibc prints a NULL %s as "(null)"
        raise AriError(500, "Internal Error", f"Unable to create bridge. Possible duplicate bridge id '{shown_id}'")
    bridge_type, video_mode = parsed
    bridge = pbx.create_bridge(bridge_type, bridge_id, args.text("name") or "", video_mode)
    return ok(bridge.to_json())


@handles("bridges.list")
def list_bridges(pbx: SimulatedPbx, args: Arguments) -> Reply:
    return ok([bridge.to_json() for bridge in pbx.bridges.values()])


@handles("bridges.create")
def create_bridge(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge_id = args.text("bridgeId")
    if bridge_id and bridge_id in pbx.bridges:
        raise AriError(409, "Conflict", f"Bridge with id '{bridge_id}' already exists")
    return create_bridge_reply(pbx, bridge_id, args)


@handles("bridges.createWithId")
def create_bridge_with_id(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge_id = args.text("bridgeId") or ""
    existing = pbx.bridges.get(bridge_id)
    if existing is None:
        return create_bridge_reply(pbx, bridge_id, args)
    name = args.text("name")
    if name and name != existing.name:
        raise AriError(500, "Internal Error", "Changing bridge name is not implemented")
    if args.text("type"):
        raise AriError(500, "Internal Error", "Supplying a bridge type when updating a bridge is not allowed.")
    return ok(existing.to_json())


@handles("bridges.get")
def get_bridge(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge = pbx.bridges.get(args.text("bridgeId") or "")
    if bridge is None:
        raise AriError(404, "Not Found", "Bridge not found")
    return ok(bridge.to_json())


@handles("bridges.destroy")
def destroy_bridge(pbx: SimulatedPbx, args: Arguments) -> Reply:
    pbx.destroy_bridge(find_bridge(pbx, args.text("bridgeId")))
    return NO_CONTENT


@handles("bridges.addChannel")
def add_channels(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge = find_bridge(pbx, args.text("bridgeId"))
    channels = channel_list(pbx, args.texts("channel"))
    for channel in channels:
        queue = pbx.media.queue(channel)
        if isinstance(queue.current, LiveRecording):
            raise AriError(409, "Conflict", f"Channel {channel.id} currently recording")
        pbx.add_to_bridge(bridge, channel)
    return NO_CONTENT


@handles("bridges.removeChannel")
def remove_channels(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge = find_bridge(pbx, args.text("bridgeId"))
    channels = channel_list(pbx, args.texts("channel"))
    if any(channel.bridge_id != bridge.id for channel in channels):
        raise AriError(422, "Unprocessable Entity", "Channel not in this bridge")
    for channel in channels:
        pbx.remove_from_bridge(bridge, channel)
    return NO_CONTENT


@handles("bridges.play", "bridges.playWithId")
def play_on_bridge(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge = find_bridge(pbx, args.text("bridgeId"))
    return play_reply(pbx, bridge, args, DEFAULT_LANGUAGE)


@handles("bridges.record")
def record_bridge(pbx: SimulatedPbx, args: Arguments) -> Reply:
    bridge = find_bridge(pbx, args.text("bridgeId"))
    check_record_durations(args)
    return record_reply(pbx, bridge, args)


# --- playbacks -----------------------------------------------------------------------------------
@handles("playbacks.get")
def get_playback(pbx: SimulatedPbx, args: Arguments) -> Reply:
    playback = pbx.media.playbacks.get(args.text("playbackId") or "")
    if playback is None:
        raise AriError(404, "Not Found", "Playback not found")
    return ok(playback.to_json())


@handles("playbacks.stop")
def stop_playback(pbx: SimulatedPbx, args: Arguments) -> Reply:
    pbx.media.stop_playback(args.text("playbackId") or "")
    return NO_CONTENT


# --- recordings ----------------------------------------------------------------------------------
@handles("recordings.listStored")
def list_stored(pbx: SimulatedPbx, args: Arguments) -> Reply:
    return ok([stored.to_json() for stored in pbx.media.stored_recordings.values()])


@handles("recordings.getStored")
def get_stored(pbx: SimulatedPbx, args: Arguments) -> Reply:
    stored = pbx.media.stored_recordings.get(args.text("recordingName") or "")
    if stored is None:
        raise AriError(404, "Not Found", "Recording not found")
    return ok(stored.to_json())


@handles("recordings.deleteStored")
def delete_stored(pbx: SimulatedPbx, args: Arguments) -> Reply:
    if pbx.media.stored_recordings.pop(args.text("recordingName") or "", None) is None:
        raise AriError(404, "Not Found", "Recording not found")
    return NO_CONTENT


@handles("recordings.getLive")
def get_live(pbx: SimulatedPbx, args: Arguments) -> Reply:
    recording = pbx.media.live_recordings.get(args.text("recordingName") or "")
    if recording is None:
        raise AriError(404, "Not Found", "Recording not found")
    return ok(recording.to_json())


@handles("recordings.stop")
def stop_recording(pbx: SimulatedPbx, args: Arguments) -> Reply:
    pbx.media.stop_recording(args.text("recordingName") or "", RecordingState.DONE)
    return NO_CONTENT


@handles("recordings.cancel")
def cancel_recording(pbx: SimulatedPbx, args: Arguments) -> Reply:
    pbx.media.stop_recording(args.text("recordingName") or "", RecordingState.CANCELED)
    return NO_CONTENT
