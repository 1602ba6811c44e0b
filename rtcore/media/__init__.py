"""RTP capture: Asterisk's externalMedia packets (slin16) validated, reordered by a jitter buffer and
written into each call's ring slot. Reads CallStarted/CallEnded from the bus; imports only runtime.
"""
