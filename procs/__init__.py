"""The processes of a run, one thin module each, wired to the bus by the supervisor.

    Asterisk --RTP slin16--> rtp_capture --rings--> vad --UtteranceReady--> asr (xN)
       ^                                              |                        |
       |  ARI REST + events                  SpeechStarted               Transcript
       +------------------- dialog (ARI control, intents, Redis) <--------------+

Each module runs `rtcore.process.run_process(main)`: library code in `rtcore/` does the work.
"""

from __future__ import annotations

from rtcore.config import Settings
from rtcore.supervisor import ProcessSpec


def pipeline(settings: Settings) -> list[ProcessSpec]:
    """The children of `rtcore launch`, in start order (stopped in reverse)."""
    # Capture before VAD: the VAD reads what the capture writes. ASR and dialog follow as they land.
    return [
        ProcessSpec("rtp_capture", "procs.rtp_capture"),
        ProcessSpec("vad", "procs.vad"),
    ]
