"""A simulated Asterisk 22 ARI (REST + events WebSocket) for testing the ARI client and call controller,
and the embedded PBX of `rtcore launch`. See server.py for the driving API."""

from rtcore.ari_sim.media import MediaHooks
from rtcore.ari_sim.pbx import StasisAppNotRegistered
from rtcore.ari_sim.server import AriSimulator, RequestRecord

__all__ = ["AriSimulator", "MediaHooks", "RequestRecord", "StasisAppNotRegistered"]
