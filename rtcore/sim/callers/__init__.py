"""Simulated callers for the embedded PBX: a calibrated phrasebook, scenarios, and the PBX media."""
