"""Every Prometheus metric rtcore exports, defined once, and how they are gathered across processes.

Each process updates these objects where the work happens (the dialog counts calls, the VAD times
its ticks...). The supervisor starts every child with `PROMETHEUS_MULTIPROC_DIR` set to the run's
metrics directory, so prometheus-client's multiprocess mode keeps each process's values in a
memory-mapped file there; the supervisor's `/metrics` (rtcore.runtime.metrics) reads them all
with the library's MultiProcessCollector: counters and histograms are summed over processes,
including processes that have died (a counter never goes back when a child restarts), and gauges
are summed over the live ones (`mark_process_dead` drops a dead child's gauges).

Outside a run (a library test, a benchmark in one process) the same objects are ordinary
in-process metrics in prometheus-client's default registry.

Conventions: the `rtcore_` prefix, base units (seconds, bytes), `_total` counters, histogram
buckets chosen around our latencies, and labels from small fixed sets only (never a call id,
phone number or text): what Grafana panels and alert rules can use.

`HistogramSnapshot` reads a histogram back from the registry and estimates quantiles the way
Prometheus's `histogram_quantile()` does, so `rtcore bench load` and `rtcore launch --json` report
the figures a Grafana panel shows for the same run.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# --- buckets (seconds unless said) -----------------------------------------------------------
# End of speech -> transcript / reply: the latency target is 1.5 s p95; fine steps around it so
# quantiles interpolated from buckets stay within ~50 ms of the exact figure there.
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5,
                   1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0)
# One ASR batch: a few tens of ms (one short utterance, base) to seconds (a full batch, large).
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# Waits at a worker are mostly a few ms to a few tens of ms on a loaded CPU box: fine steps there
# (a coarse 10-25 ms bucket put the interpolated p50 above the largest wait).
QUEUE_WAIT_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.0125, 0.015, 0.0175, 0.02, 0.025, 0.03, 0.04,
                      0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# The VAD's budget is its 32 ms tick.
VAD_TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.032, 0.05, 0.1)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5)
CALL_DURATION_BUCKETS = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 1200.0, 3600.0)
HTTP_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0)

# --- calls and channels (dialog) ---------------------------------------------------------------
CALLS_ACTIVE = Gauge("rtcore_calls_active", "Calls in progress (answered, holding a call slot)",
                     multiprocess_mode="livesum")
CALLS_STARTED = Counter("rtcore_calls_started_total", "Calls answered")
CALLS_ENDED = Counter("rtcore_calls_ended_total", "Calls ended, by outcome (qualified, not_eligible, refused, "
                      "abandoned, error, rejected)", ["outcome"])
CALLS_REFUSED = Counter("rtcore_calls_refused_total", "New callers refused before they were answered, by reason "
                        "(draining, slots, asr_wait)", ["reason"])
CHANNELS_ACTIVE = Gauge("rtcore_channels_active", "ARI channels rtcore holds, by type (caller, snoop, media)",
                        ["type"], multiprocess_mode="livesum")
CALL_DURATION = Histogram("rtcore_call_duration_seconds", "Call duration, answer to hang-up",
                          buckets=CALL_DURATION_BUCKETS)
EOS_TO_TRANSCRIPT = Histogram("rtcore_eos_to_transcript_seconds", "End of the caller's speech (VAD cut) to its "
                              "transcript on the bus", buckets=LATENCY_BUCKETS)
EOS_TO_REPLY = Histogram("rtcore_eos_to_reply_seconds", "End of the caller's speech to the bot's reply (the "
                         "playback request)", buckets=LATENCY_BUCKETS)
INTENTS = Counter("rtcore_intents_total", "Caller turns understood, by intent and source (speech, dtmf)",
                  ["intent", "source"])
INTENT_API_REQUESTS = Counter("rtcore_intent_api_requests_total", "Requests to the HTTP intent API, by result "
                              "(ok or the seed's error codes)", ["result"])
ARI_CONNECTED = Gauge("rtcore_ari_connected", "1 while the ARI events WebSocket is connected",
                      multiprocess_mode="livemax")
ARI_RECONNECTS = Counter("rtcore_ari_reconnects_total", "Reconnections of the ARI events WebSocket")
REDIS_CONNECTED = Gauge("rtcore_redis_connected", "1 while the dialog's Redis connection works",
                        multiprocess_mode="livemin")
REDIS_SPOOL_DEPTH = Gauge("rtcore_redis_spool_depth", "Call-state and lead writes waiting for Redis (spooled "
                          "to disk while it is down)", multiprocess_mode="livesum")

# --- ASR (dispatcher, workers) ------------------------------------------------------------------
# `window`: an encoder window bucket of the batch policy (rtcore.asr.batcher.window_label: "6",
# "8", ... "30"), a dozen values at most.
ASR_QUEUE_WAIT = Histogram("rtcore_asr_queue_wait_seconds", "Time an utterance waited at its ASR worker before "
                           "its batch ran", buckets=QUEUE_WAIT_BUCKETS)
ASR_INFERENCE = Histogram("rtcore_asr_inference_seconds", "One ASR batch: features and Whisper decoding",
                          buckets=INFERENCE_BUCKETS)
ASR_BATCH_SIZE = Histogram("rtcore_asr_batch_size", "Utterances per ASR batch", buckets=BATCH_SIZE_BUCKETS)
ASR_BATCHES = Counter("rtcore_asr_batches_total", "ASR batches run, by encoder window (seconds)", ["window"])
ASR_QUEUE_DEPTH = Gauge("rtcore_asr_queue_depth", "Utterances queued at the ASR dispatcher, by encoder window "
                        "bucket (seconds)", ["window"], multiprocess_mode="livesum")
ASR_IN_FLIGHT = Gauge("rtcore_asr_in_flight", "Utterances handed to ASR workers and not yet transcribed",
                      multiprocess_mode="livesum")
ASR_CAPACITY = Gauge("rtcore_asr_capacity", "Utterances the ASR workers can hold at once",
                     multiprocess_mode="livesum")
ASR_EXPECTED_WAIT = Gauge("rtcore_asr_expected_wait_seconds", "Recent p90 wait of an utterance before its batch "
                          "ran (what admission control compares to the target)", multiprocess_mode="livemax")
ASR_UTTERANCES = Counter("rtcore_asr_utterances_total", "Utterances the ASR answered (one transcript each, calls' "
                         "and the HTTP API's), by result: text, no_speech (Whisper heard nothing), hallucination "
                         "(other flagged output), error (unreadable audio, queue full)", ["result"])
ASR_REFUSED = Counter("rtcore_asr_refused_total", "Utterances refused because the ASR queue was at its limit")

# --- VAD ------------------------------------------------------------------------------------
VAD_TICK = Histogram("rtcore_vad_tick_seconds", "One VAD tick: Silero over every call's new audio",
                     buckets=VAD_TICK_BUCKETS)
VAD_STREAMS = Gauge("rtcore_vad_streams", "Calls the VAD is listening to", multiprocess_mode="livesum")
VAD_UTTERANCES = Counter("rtcore_vad_utterances_total", "Utterances cut by the VAD")
VAD_OVERRUNS = Counter("rtcore_vad_tick_overruns_total", "VAD ticks that took longer than their period (32 ms)")

# --- RTP capture --------------------------------------------------------------------------------
# The capture adds what its own counters gained once a second (not one inc per packet).
RTP_RECEIVED = Counter("rtcore_rtp_packets_received_total", "Valid RTP packets received for known calls (late, "
                       "duplicate and stray ones included)")
RTP_LOST = Counter("rtcore_rtp_packets_lost_total", "RTP packets never received (sequence gaps, filled with "
                   "silence)")
RTP_LATE = Counter("rtcore_rtp_packets_late_total", "RTP packets that arrived after their slot was played out")
RTP_DISCARDED = Counter("rtcore_rtp_packets_discarded_total", "Valid RTP packets of known calls dropped, by reason "
                        "(duplicate; stray: a sequence number too far off to place)", ["reason"])
RTP_INVALID = Counter("rtcore_rtp_packets_invalid_total", "Datagrams refused, by reason (malformed: not RTP, or "
                      "not slin16; payload_type: another payload type; unknown_source: from no announced call)",
                      ["reason"])
RTP_JITTER = Histogram("rtcore_rtp_jitter_seconds", "Interarrival jitter (RFC 3550) of each call receiving RTP, "
                       "sampled every second", buckets=JITTER_BUCKETS)

# --- HTTP service ---------------------------------------------------------------------------
HTTP_REQUESTS = Counter("rtcore_http_requests_total", "HTTP requests answered, by endpoint and status",
                        ["endpoint", "status"])
HTTP_DURATION = Histogram("rtcore_http_request_duration_seconds", "HTTP request duration, by endpoint",
                          ["endpoint"], buckets=HTTP_DURATION_BUCKETS)


# --- gathering ------------------------------------------------------------------------------
def prepare_directory(path: Path) -> Path:
    """An empty metrics directory for a new run (files of an earlier run would be summed in)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    return path


def process_died(pid: int, path: Path) -> None:
    """A child is gone: its live gauges no longer count (its counters and histograms still do)."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


def multiprocess_registry(path: Path) -> CollectorRegistry:
    """A registry that reads every process's metrics files in `path`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    return registry


def in_multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram's cumulative buckets (upper bound -> count, +Inf last), sum and count."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    @classmethod
    def read(cls, metrics: Iterable[Metric], name: str, labels: dict[str, str] | None = None) -> HistogramSnapshot:
        """The histogram `name` (without _bucket) among collected metrics, its samples matching
        `labels` summed (no labels: all series of the family)."""
        buckets: dict[float, float] = {}
        total = count = 0.0
        for family in metrics:
            if family.name != name:
                continue
            for sample in family.samples:
                if labels and any(sample.labels.get(k) != v for k, v in labels.items()):
                    continue
                if sample.name == name + "_bucket":
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
                elif sample.name == name + "_sum":
                    total += sample.value
                elif sample.name == name + "_count":
                    count += sample.value
        return cls(tuple(sorted(buckets.items())), total, count)

    def minus(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed between `earlier` and this snapshot (Prometheus's increase())."""
        before = dict(earlier.buckets)
        return HistogramSnapshot(tuple((b, n - before.get(b, 0.0)) for b, n in self.buckets),
                                 self.total - earlier.total, self.count - earlier.count)

    def quantile(self, q: float) -> float:
        """Prometheus's histogram_quantile(): linear interpolation inside the bucket holding the
        q-th observation; NaN with no observation; the highest finite bound if it falls in +Inf."""
        return bucket_quantile(q, self.buckets)

    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """histogram_quantile() over cumulative (upper bound, count) pairs sorted by bound, +Inf last."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    if q <= 0:
        return 0.0 if buckets[0][0] >= 0 else -math.inf
    if q >= 1:
        return buckets[-2][0] if len(buckets) > 1 else math.nan
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # Prometheus answers the highest finite bound
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound
