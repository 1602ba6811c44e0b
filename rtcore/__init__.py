"""rtcore: a real-time French voice-bot pipeline for Asterisk."""

__version__ = "0.1.0"
