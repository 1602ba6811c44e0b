"""Voice activity: Silero over every call in one batched inference per 32 ms chunk, and the segmenter
that cuts utterances. Reads the rings, publishes SpeechStarted and UtteranceReady; imports only runtime.
"""
