"""The processes of a run, one thin module each, wired to the bus by the supervisor.

    Asterisk --RTP slin16--> rtp_capture --rings--> vad --UtteranceReady--> asr_dispatch --> asr-N
    (or pbx_sim)                                       |                            |
       ^  ARI REST + events                      SpeechStarted                 Transcript
       +------------------- dialog (ARI control, intents, Redis) <--------------------+
    http_api (seed Whisper HTTP service) --UtteranceReady--> asr_dispatch

Each module runs `rtcore.runtime.process.run_process(main)`: library code in `rtcore/` does the
work. Which of them a command starts, and in what order, is `rtcore.launch.pipeline`.
"""
