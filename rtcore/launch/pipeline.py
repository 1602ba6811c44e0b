"""Which processes `rtcore launch` and `rtcore serve` start, in start order (stopped in reverse).

Each is `python -m procs.<name>` (procs/: one thin module per process); named here by module path
only, so the library never imports the process wiring.
"""

from __future__ import annotations

from rtcore.runtime.config import Settings
from rtcore.runtime.supervisor import ProcessSpec


def asr_service(settings: Settings) -> list[ProcessSpec]:
    """The ASR dispatcher and its workers: what `rtcore serve` runs (with the HTTP API). In a
    cluster: the gateway to the Redis stream (a node that takes calls) and stream workers (a node
    that runs Whisper)."""
    if settings.clustered:
        gateway = [ProcessSpec("asr_gateway", "procs.asr_gateway")] if settings.runs_calls else []
        stream_workers = [ProcessSpec(f"asr-{i}", "procs.asr_stream_worker") for i in range(settings.asr_workers)]
        return [*gateway, *(stream_workers if settings.runs_asr else [])]
    workers = [ProcessSpec(f"asr-{i}", "procs.asr_worker") for i in range(settings.asr_workers)]
    return [ProcessSpec("asr_dispatch", "procs.asr_dispatch"), *workers]


def http_service(settings: Settings) -> list[ProcessSpec]:
    """What `rtcore serve` runs: the ASR service and the HTTP API in front of it."""
    return [*asr_service(settings), ProcessSpec("http_api", "procs.http_api")]


def pipeline(settings: Settings) -> list[ProcessSpec]:
    """The children of `rtcore launch`, in start order (stopped in reverse): consumers first, so
    that nothing is produced before its reader is up."""
    if not settings.runs_calls:  # an ASR node
        return asr_service(settings)
    pbx = [] if settings.ari_url else [ProcessSpec("pbx_sim", "procs.pbx_sim")]  # the embedded PBX
    return [
        *asr_service(settings),
        ProcessSpec("http_api", "procs.http_api"),
        ProcessSpec("vad", "procs.vad"),
        ProcessSpec("rtp_capture", "procs.rtp_capture"),
        *pbx,
        ProcessSpec("dialog", "procs.dialog"),
    ]
