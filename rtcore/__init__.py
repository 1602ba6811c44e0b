"""rtcore: a real-time French voice-bot pipeline for Asterisk.

One package per stage of a call, over a shared runtime; imports point one way (tests/test_layers.py):

    runtime   config, shared-memory rings, messages, bus, supervision, private Redis, models, logs
    intents   text -> intent and slots (a library: the dialog's and the HTTP service's)
    media     RTP capture: packets -> rings               (uses runtime)
    vad       Silero VAD over every call at once          (uses runtime)
    asr       batched Whisper workers, dispatcher, HTTP   (uses runtime, intents)
    dialog    ARI call control, script, leads, prompts    (uses runtime, intents)
    sim       simulated Asterisk and callers              (uses the stages)
    launch    a whole run: process list, launcher, report, load bench (uses everything)
    cli       the `rtcore` command (on top)

Stages talk to each other only through runtime.messages on the bus and audio in the rings.
"""

__version__ = "0.1.0"
