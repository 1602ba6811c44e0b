"""The ARI simulator's `POST /channels/{channelId}/continue`, over real HTTP and WebSocket, as
Asterisk 22's ast_ari_channels_continue_in_dialplan() answers it (api-docs channels.json: 404 channel
not found, 409 not in a Stasis application, 412 invalid state): the channel leaves the application
(StasisEnd, the last event the application gets about it) and the dialplan goes on, which in the
simulated one (`Stasis(app,${EXTEN})` then `Hangup()`) hangs it up."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from rtcore.sim.ari import AriSimulator

USER, PASSWORD, APP = "asterisk", "s3cret", "voicebot"


@pytest.fixture
async def sim() -> AsyncIterator[AriSimulator]:
    # Helper channels enter Stasis only when a test is long over: a snoop stays outside the application.
    async with AriSimulator(APP, USER, PASSWORD, stasis_delay_s=(3600.0, 3600.0)) as simulator:
        yield simulator


@pytest.fixture
async def http(sim: AriSimulator) -> AsyncIterator[aiohttp.ClientSession]:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    async with aiohttp.ClientSession(headers={"Authorization": f"Basic {token}"}) as session:
        websocket = await session.ws_connect(sim.events_url())
        await sim.wait_for_subscriber()
        yield session
        await websocket.close()


async def post(http: aiohttp.ClientSession, sim: AriSimulator, path: str, **params: str) -> tuple[int, Any]:
    async with http.post(sim.url + path, params=params) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def test_continue_hands_the_caller_back_to_the_dialplan_which_hangs_up(
        sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    caller = await sim.place_call("0612345678", exten="100")
    channel = sim.channel(caller)
    assert channel is not None and (channel.dialplan.priority, channel.state) == (2, "Ring")
    since = len(sim.events)
    assert await post(http, sim, f"/channels/{caller}/continue") == (204, None)
    assert channel.continued and (channel.dialplan.context, channel.dialplan.exten) == ("from-sip", "100")
    assert channel.dialplan.priority == 3  # the priority after Stasis(): the dialplan's Hangup()
    await sim.wait_until(lambda: sim.channel(caller) is None)
    # The application hears it leave, and nothing after: it is no longer subscribed to the channel.
    assert [(e["type"], e["channel"]["id"]) for e in sim.events[since:]] == [("StasisEnd", caller)]
    assert channel.state == "Ring"  # never answered
    assert await post(http, sim, f"/channels/{caller}/continue") == (404, {"message": "Channel not found"})


async def test_continue_on_a_channel_not_in_the_application_is_409(sim: AriSimulator,
                                                                   http: aiohttp.ClientSession) -> None:
    caller = await sim.place_call()
    status, _ = await post(http, sim, f"/channels/{caller}/snoop", spy="in", app=APP, snoopId="snoop-1")
    assert status == 200 and sim.channel("snoop-1") is not None
    not_in_stasis = (409, {"message": "Channel not in Stasis application"})
    assert await post(http, sim, "/channels/snoop-1/continue") == not_in_stasis
    assert await post(http, sim, "/channels/no-such-channel/continue") == (404, {"message": "Channel not found"})


async def test_continue_to_a_place_and_by_label(sim: AriSimulator, http: aiohttp.ClientSession) -> None:
    caller = await sim.place_call()
    assert await post(http, sim, f"/channels/{caller}/continue", label="overflow") == (
        404, {"message": "Requested label can not be found"})
    assert await post(http, sim, f"/channels/{caller}/continue", label="0") == (
        400, {"message": "Requested priority is illegal"})
    channel = sim.channel(caller)
    assert channel is not None and channel.in_stasis  # refused requests changed nothing
    assert await post(http, sim, f"/channels/{caller}/continue", context="overflow", extension="queue") == (204, None)
    assert (channel.dialplan.context, channel.dialplan.exten, channel.dialplan.priority) == ("overflow", "queue", 1)
    await sim.wait_until(lambda: sim.channel(caller) is None)
