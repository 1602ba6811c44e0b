"""A simulated Asterisk 22 ARI (REST + events WebSocket) for testing the ARI client and call controller,
and the embedded PBX of `rtcore launch`. See server.py for the driving API."""

from rtcore.sim.ari.media import MediaHooks
from rtcore.sim.ari.pbx import StasisAppNotRegistered
from rtcore.sim.ari.server import AriSimulator, RequestRecord

__all__ = ["AriSimulator", "MediaHooks", "RequestRecord", "StasisAppNotRegistered"]
