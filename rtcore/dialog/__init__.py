"""The conversation: a data-driven script (script.yaml) and the engine that follows it."""
