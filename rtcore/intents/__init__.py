"""Intents and slots of the callers' answers: an embedded classifier and the seed's HTTP API client.

`IntentSource` is what the dialog calls; `EmbeddedIntentSource` (no network, no model) and
`HttpIntentClient` (the seed's main + FAQ APIs) both implement it, and `intent_source(settings)`
picks one from the settings. A library called in-process by the dialog and by the HTTP service's
seed-compatible intent endpoints; it imports nothing of rtcore.
"""

from __future__ import annotations

from typing import Any

from rtcore.intents.base import DIALOG_STATES, INTENTS, IntentResult, IntentSource
from rtcore.intents.classifier import EmbeddedIntentSource, IntentClassifier, default_classifier


def intent_source(settings: Any) -> IntentSource:
    """The HTTP APIs when `intent_main_url` is set, else the embedded classifier."""
    if settings.intent_main_url:
        from rtcore.intents.http_client import HttpIntentClient, HttpIntentOptions

        return HttpIntentClient(HttpIntentOptions.from_settings(settings))
    return EmbeddedIntentSource()


__all__ = ["DIALOG_STATES", "INTENTS", "EmbeddedIntentSource", "IntentClassifier", "IntentResult", "IntentSource",
           "default_classifier", "intent_source"]
