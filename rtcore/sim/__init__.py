"""A simulated Asterisk (ari/: ARI REST + events, media, sounds, as a real Asterisk 22 behaves) and
simulated callers (callers/): the embedded PBX of `rtcore launch` and the tests' Asterisk. Beside the
pipeline, not in it: it may import the stages (callers are calibrated with the real VAD and ASR).
"""
