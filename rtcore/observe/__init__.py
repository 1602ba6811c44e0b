"""What ops see of a run: the live view of the calls, served by the HTTP service.

    state      ObservedRun: fed with bus messages (CallView from the dialog, RunStatus from the
               supervisor, AsrStatus from the ASR dispatcher, Transcript, TurnTaken); keeps the calls
               in progress, the last finished ones, the latest run and ASR status, and rolling 1-s
               series over the last 5 minutes; `snapshot()` is all of it as JSON-able data.
    feed       BusFeed: a bus Subscriber read in the event loop (edge-triggered ZeroMQ FD) into an
               ObservedRun.
    liveview   add_live_view(app, run): GET / (-> /view), /view (the page), /view/events (Server-Sent
               Events), /view/snapshot (the JSON once) on an aiohttp application.
    health     HealthChecks: /health and /ready, from the same ObservedRun's run and ASR status.
    static/    the page: view.html, view.js, view.css (no build step, nothing fetched from elsewhere:
               it works offline; charts are drawn by hand on <canvas>).

Imports only rtcore.runtime (tests/test_layers.py); procs/http_api.py wires it into the HTTP service.
The page shows what callers said: it is behind whatever access rules the HTTP service applies.
"""

from rtcore.observe.feed import OBSERVED_TYPES, BusFeed
from rtcore.observe.liveview import add_live_view
from rtcore.observe.state import ObservedRun

__all__ = ["OBSERVED_TYPES", "BusFeed", "ObservedRun", "add_live_view"]
