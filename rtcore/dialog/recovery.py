"""What a (re)connection to Asterisk finds out, and what the controller does about it.

Asterisk does not replay events. While the dialog process was away (a WebSocket cut, or a crash
and restart by the supervisor) calls went on without us: callers arrived, answered, hung up. So on
every connection of the events WebSocket, before handling any later event, the controller compares
what Asterisk has (GET /channels, GET /bridges: our callers, found by the dialplan's
`Stasis(<app>)`, and our helpers, found by the ids we give them) with what it knows: its calls in
memory after a reconnect, the calls Redis records as in progress after a restart.

- a call we know whose caller is still there: after a restart it is taken back where it was
  (dialog state, slots, counters, the same ring slot and RTP source re-announced with CallStarted
  so capture and VAD follow it, the question it was at asked again); one that cannot be (its media
  set-up was incomplete, its state unreadable) is ended politely (outcome error);
- a call we know whose caller left meanwhile: closed (lead, slot, CallEnded), and its externalMedia
  channel and bridge deleted (Asterisk keeps both);
- a caller we do not know: a call whose StasisStart we missed, started now; if it already has
  helpers of ours (its record was lost), it is ended politely;
- helper channels and bridges of ours that belong to no call, and, after a restart, call slots in
  the rings that no call holds: deleted, freed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from rtcore.dialog.ari.client import AriError
from rtcore.dialog.call import Call
from rtcore.dialog.engine import DialogEngine, DialogState
from rtcore.dialog.joining import TurnJoiner
from rtcore.dialog.leads import CallRecord, Lead, Turn
from rtcore.dialog.setup import BRIDGE, HELPER_CHANNEL_TYPES, MEDIA, SNOOP_IN, call_of_helper
from rtcore.runtime.ring import NoFreeSlotError, SlotLease, SlotOwner

if TYPE_CHECKING:
    from rtcore.dialog.calls import CallController

log = logging.getLogger(__name__)

REDIS_READ_TIMEOUT_S = 10.0  # how long a restarted dialog waits for Redis to read its calls back
CALLER_LEFT_MEANWHILE = "caller hung up while the dialog was down"


@dataclass
class Inventory:
    """Asterisk's side: our application's callers, and our helper channels and bridges, by call."""

    callers: dict[str, dict[str, Any]] = field(default_factory=dict)
    helpers: dict[str, list[str]] = field(default_factory=dict)  # call id -> helper channel/bridge ids


def take_inventory(app: str, channels: list[dict[str, Any]], bridges: list[dict[str, Any]]) -> Inventory:
    inventory = Inventory()
    for channel in channels:
        channel_id = str(channel.get("id", ""))
        owner = call_of_helper(channel_id)
        if owner is not None and str(channel.get("name", "")).startswith(HELPER_CHANNEL_TYPES):
            inventory.helpers.setdefault(owner, []).append(channel_id)
            continue
        dialplan = channel.get("dialplan") or {}
        app_data = str(dialplan.get("app_data", "")).split(",")
        in_our_app = dialplan.get("app_name") == "Stasis" and app_data[0] == app
        # The dialplan's h extension re-enters Stasis after a hang-up: that caller is gone.
        if in_our_app and dialplan.get("exten") != "h" and app_data[1:2] != ["h"]:
            inventory.callers[channel_id] = channel
    for bridge in bridges:
        bridge_id = str(bridge.get("id", ""))
        owner = call_of_helper(bridge_id)
        if owner is not None and bridge_id.endswith(BRIDGE):
            inventory.helpers.setdefault(owner, []).append(bridge_id)
    return inventory


async def synchronise(ctrl: CallController, first: bool) -> None:
    """Run on every connection of the events WebSocket (`first`: the first of this process)."""
    try:
        inventory = take_inventory(ctrl.ari.app, await ctrl.ari.channels(), await ctrl.ari.bridges())
    except AriError as exc:
        log.error("cannot list Asterisk's channels and bridges after connecting: %s", exc)
        return
    new_callers: list[dict[str, Any]] = []
    if first:
        records = await read_records(ctrl)
        known = records or {}
        for call_id in sorted(set(known) | set(inventory.callers)):
            record, channel = known.get(call_id), inventory.callers.get(call_id)
            if record is not None and channel is not None:
                await take_back(ctrl, record, channel, inventory)
            elif record is not None:
                await close_gone(ctrl, record, inventory)
            elif channel is not None and (inventory.helpers.get(call_id) or records is None):
                await end_unknown(ctrl, channel, inventory, readable=records is not None)
            elif channel is not None:
                new_callers.append(channel)
        free_unheld_slots(ctrl)
    else:
        for call in list(ctrl.calls.values()):
            if call.call_id not in inventory.callers:
                await ctrl.end_call(call, reason="caller hung up while disconnected")
        new_callers = [channel for call_id, channel in inventory.callers.items()
                       if call_id not in ctrl.calls and call_id not in ctrl.recently_ended]
    await delete_orphans(ctrl, inventory, {channel["id"] for channel in new_callers})
    for channel in new_callers:
        log.info("call %s arrived while we were not listening: starting it", channel["id"])
        ctrl.counters["calls_found"] += 1
        ctrl.spawn(ctrl.start_call(channel))


async def read_records(ctrl: CallController) -> dict[str, CallRecord] | None:
    """The calls Redis holds as in progress (None: Redis could not be read in time)."""
    deadline = time.monotonic() + REDIS_READ_TIMEOUT_S
    while True:
        try:
            # A spool left by our predecessor (Redis was down) holds its latest writes: first.
            await ctrl.store.flush(max(0.0, deadline - time.monotonic()))
            return {record.call_id: record for record in await ctrl.store.load_active_calls()}
        except (RedisError, OSError) as exc:
            if time.monotonic() >= deadline:
                log.error("cannot read the calls in progress from Redis (%s): the calls found in "
                          "Asterisk are ended without their records", exc)
                return None
            await asyncio.sleep(0.5)


def _restore(ctrl: CallController, call_id: str, record: CallRecord | None,
             channel: dict[str, Any] | None) -> tuple[Call, bool]:
    """A Call rebuilt from its record (as much of it as can be read) and Asterisk's channel, and
    whether its dialog state could be read back."""
    state = record.state if record else {}
    caller = str(state.get("caller") or ((channel or {}).get("caller") or {}).get("number", ""))
    call = Call(call_id, caller, joiner=TurnJoiner(ctrl.turn_join_s))
    started_at = float(state.get("started_at") or time.time())
    call.lead = record.lead if record and record.lead else Lead(call_id=call_id, caller=caller, started_at=started_at)
    try:
        call.engine = DialogEngine(ctrl.script, DialogState.from_dict(dict(state["state"])))
        if call.engine.state.state not in ctrl.script.states:  # the script changed meanwhile
            raise KeyError(call.engine.state.state)
        restored = True
    except (KeyError, TypeError, ValueError):
        call.engine = DialogEngine(ctrl.script)
        restored = False
    lease = SlotLease(int(state.get("slot", -1)), int(state.get("generation", -1)))
    if lease.slot >= 0 and ctrl.rings.holds(lease):
        call.lease = lease
    call.rtp_source = str(state.get("rtp_source") or "")
    for helper in state.get("helpers") or []:
        ctrl.own(call, str(helper))
    ctrl.calls[call_id] = call
    return call, restored


async def take_back(ctrl: CallController, record: CallRecord, channel: dict[str, Any], inventory: Inventory) -> None:
    call_id = record.call_id
    present = set(inventory.helpers.get(call_id, []))
    state = record.state
    complete = (bool(state.get("setup_done")) and bool(state.get("rtp_source"))
                and {call_id + SNOOP_IN, call_id + MEDIA, call_id + BRIDGE} <= present)
    call, restored = _restore(ctrl, call_id, record, channel)
    for helper in present:
        ctrl.own(call, helper)
    assert call.engine is not None
    if not (complete and restored):
        log.warning("call %s: its media set-up was incomplete when the dialog stopped: ending it", call_id)
        await ctrl.fail(call, "could not be taken back after a dialog restart")
        return
    if call.lease is None:
        # The rings were made anew (the whole run restarted): the call gets a fresh slot.
        try:
            call.lease = ctrl.rings.allocate(SlotOwner.CALL)
        except NoFreeSlotError:
            await ctrl.fail(call, "no free call slot after a dialog restart")
            return
    for playback_id in state.get("playbacks") or []:
        await ctrl.quietly(ctrl.ari.stop_playback(str(playback_id)))  # what our predecessor left playing
    call.setup_done = True
    ctrl.announce(call)  # the same slot and RTP source: capture and VAD carry on (or pick it up)
    ctrl.counters["calls_resumed"] += 1
    log.info("call %s taken back after a dialog restart, at %s", call_id, call.engine.state.state)
    turn = Turn(at=time.time(), prompt=list(call.engine.state.last_prompts), source="resume")
    await ctrl.say(call, call.engine.resume(), turn)


async def close_gone(ctrl: CallController, record: CallRecord, inventory: Inventory) -> None:
    call, _ = _restore(ctrl, record.call_id, record, None)
    for helper in inventory.helpers.get(record.call_id, []):
        ctrl.own(call, helper)
    await ctrl.end_call(call, reason=CALLER_LEFT_MEANWHILE)


async def end_unknown(ctrl: CallController, channel: dict[str, Any], inventory: Inventory, readable: bool) -> None:
    """A caller of ours with helpers but no record (or none readable): end it politely."""
    call, _ = _restore(ctrl, str(channel["id"]), None, channel)
    # Without its record (Redis unreadable), its lead is not ours to overwrite with a blank one.
    call.persist = readable
    for helper in inventory.helpers.get(call.call_id, []):
        ctrl.own(call, helper)
    log.warning("call %s: no record of it after a dialog restart: ending it", call.call_id)
    await ctrl.fail(call, "no record of the call after a dialog restart")


async def delete_orphans(ctrl: CallController, inventory: Inventory, starting: set[str]) -> None:
    """Helper channels and bridges of ours whose call is over (or never was)."""
    for call_id, helpers in inventory.helpers.items():
        if call_id in ctrl.calls or call_id in starting:
            continue
        for helper in helpers:
            log.info("deleting %s, left behind by call %s", helper, call_id)
            ctrl.counters["orphans_deleted"] += 1
            if helper.endswith(BRIDGE):
                await ctrl.quietly(ctrl.ari.delete_bridge(helper))
            else:
                await ctrl.quietly(ctrl.ari.hangup(helper))


def free_unheld_slots(ctrl: CallController) -> None:
    """Call slots our predecessor allocated that no call holds now (it died between allocating a
    slot and recording it): free, so they are not lost until the next restart."""
    held = {call.lease for call in ctrl.calls.values() if call.lease is not None}
    for lease in ctrl.rings.in_use(SlotOwner.CALL):
        if lease not in held:
            log.info("freeing call slot %d, held by no call", lease.slot)
            ctrl.counters["slots_freed"] += 1
            ctrl.rings.free(lease)
