"""What every process shares: settings, shared-memory audio rings, the bus messages and their
ZeroMQ channels, the supervisor and its children's side, the private Redis, model lookup, logging,
the Prometheus endpoint. Imports nothing of rtcore's stages; every stage imports it.
"""
