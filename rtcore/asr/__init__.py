"""Speech recognition: batched Whisper (CTranslate2) workers, the dispatcher that gives them utterances,
and the seed-compatible HTTP service. Reads audio from the rings by sample range, publishes
Transcripts; imports runtime (and intents, for the HTTP service's intent endpoints).
"""
