"""What a `rtcore launch` run measured: calls, outcomes, utterances, latencies, batching, CPU.

Latency percentiles and batch figures come from the run's Prometheus histograms
(rtcore.runtime.telemetry: rtcore_eos_to_transcript_seconds, rtcore_eos_to_reply_seconds,
rtcore_asr_queue_wait_seconds, rtcore_asr_inference_seconds, rtcore_asr_batch_size), estimated as
Prometheus's histogram_quantile() does: the figures a Grafana panel shows for the same run. Only
`max` is exact (a histogram has none): the collector's.

The collector listens on the bus (CallStarted/CallEnded and TurnTaken from the dialog,
UtteranceReady from the VAD, Transcript from the ASR), so calls are counted as the dialog handled
them, whatever the PBX (a real Asterisk or the embedded one), and latencies are those of the real
pipeline: eos = the end of the caller's speech as cut by the VAD, transcript = the moment the
transcript reaches the bus, reply = the bot's next playback request. Call outcomes come from the
lead records in Redis.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rtcore.dialog.admission import REJECTED
from rtcore.dialog.leads import Lead
from rtcore.runtime import telemetry
from rtcore.runtime.bus import Subscriber
from rtcore.runtime.messages import HTTP_CALL_ID, CallEnded, CallStarted, Transcript, TurnTaken, UtteranceReady
from rtcore.runtime.telemetry import HistogramSnapshot

HISTOGRAMS = {"eos_to_transcript": "rtcore_eos_to_transcript_seconds", "eos_to_reply": "rtcore_eos_to_reply_seconds",
              "worker_queue": "rtcore_asr_queue_wait_seconds", "batch_run": "rtcore_asr_inference_seconds",
              "batch_size": "rtcore_asr_batch_size"}


@dataclass(frozen=True)
class RunHistograms:
    """The run's latency and batch histograms, read from every process's metrics files."""

    series: dict[str, HistogramSnapshot]

    @classmethod
    def read(cls, metrics_dir: Path) -> RunHistograms:
        metrics = list(telemetry.multiprocess_registry(metrics_dir).collect())
        return cls({key: HistogramSnapshot.read(metrics, name) for key, name in HISTOGRAMS.items()})

    @classmethod
    def empty(cls) -> RunHistograms:
        return cls({key: HistogramSnapshot((), 0.0, 0.0) for key in HISTOGRAMS})

    def ms(self, key: str, q: float) -> float:
        """The q-quantile of a seconds histogram, in ms (0.0 with no observation)."""
        value = self.series[key].quantile(q)
        return 0.0 if value != value else round(value * 1000, 1)  # NaN: nothing observed

    def figures_ms(self, key: str, exact: list[float]) -> dict[str, float]:
        if not self.series[key].count and exact:
            # Observed on another node (a media node's ASR runs on the ASR nodes): from the
            # transcripts' own figures instead.
            return {**percentiles(exact), "count": len(exact)}
        return {"p50": self.ms(key, 0.5), "p95": self.ms(key, 0.95),
                "max": round(max(exact), 1) if exact else 0.0, "count": int(self.series[key].count)}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(values, dtype=float)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "max": round(float(arr.max()), 1)}


@dataclass
class LoadCollector:
    subscriber: Subscriber
    started_wall: float = field(default_factory=time.time)
    utterances: set[str] = field(default_factory=set)
    transcribed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    eos_to_transcript: list[float] = field(default_factory=list)
    eos_to_reply: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)  # at the worker, before its batch ran
    inference_ms: list[float] = field(default_factory=list)  # the batch's features + generate
    windows: Counter[float] = field(default_factory=Counter)
    calls_started: set[str] = field(default_factory=set)  # CallStarted is repeated: a set of ids
    calls_ended: set[str] = field(default_factory=set)
    duplicates: int = 0  # a second transcript for one utterance: must stay 0 (one per utterance id)
    # eos -> transcript less the worker's queue and the batch's run: the hand-over both ways
    # (dispatcher over ZeroMQ, or the Redis stream) and the bus
    transport_ms: list[float] = field(default_factory=list)

    def poll(self) -> None:
        now = time.time()
        for message in self.subscriber.drain():
            if isinstance(message, CallStarted):
                self.calls_started.add(message.call_id)
            elif isinstance(message, CallEnded):
                self.calls_ended.add(message.call_id)
            elif isinstance(message, UtteranceReady):
                self.utterances.add(message.utterance_id)
            elif isinstance(message, Transcript) and message.call_id != HTTP_CALL_ID:
                if message.utterance_id in self.transcribed or message.utterance_id in self.failed:
                    self.duplicates += 1
                    continue
                if message.error:
                    self.failed.add(message.utterance_id)
                    continue
                self.transcribed.add(message.utterance_id)
                if message.eos_at:
                    # Stamped by the dispatcher: independent of how often this observer polls.
                    self.eos_to_transcript.append(((message.published_at or now) - message.eos_at) * 1000)
                if message.batch_size:
                    if message.eos_at:
                        self.transport_ms.append(self.eos_to_transcript[-1] - message.queue_ms
                                                 - message.features_ms - message.inference_ms)
                    self.batch_sizes.append(message.batch_size)
                    self.queue_ms.append(message.queue_ms)
                    self.inference_ms.append(message.features_ms + message.inference_ms)
                    self.windows[message.window_s] += 1
            elif isinstance(message, TurnTaken) and message.eos_to_reply_ms > 0:
                self.eos_to_reply.append(message.eos_to_reply_ms)

    @property
    def calls_active(self) -> int:
        return len(self.calls_started - self.calls_ended)

    @property
    def pending(self) -> int:
        return len(self.utterances - self.transcribed - self.failed)


class CpuMeter:
    """CPU time of this process and all its descendants (children come and go: restarts)."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self._seen: dict[int, float] = {}
        self._gone = 0.0
        self._t0 = time.monotonic()
        self._base = self._total()

    def _total(self) -> float:
        total = 0.0
        current: dict[int, float] = {}
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                current[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        for pid, seconds in self._seen.items():
            if pid not in current:
                self._gone += seconds
        self._seen = current
        total = sum(current.values()) + self._gone
        return total

    def percent(self) -> float:
        """Percent of one core since start (200 = both cores of a 2-core machine busy)."""
        elapsed = time.monotonic() - self._t0
        return round(100 * (self._total() - self._base) / elapsed, 1) if elapsed > 0 else 0.0


def build_report(collector: LoadCollector, leads: Iterable[Lead], histograms: RunHistograms,
                 cpu_percent: float, drain: dict[str, int] | None = None) -> dict[str, Any]:
    """`histograms`: the run's (RunHistograms.read of the supervisor's metrics directory). `drain`:
    what Supervisor.drain returned, when the run was drained before it stopped. Calls the dialog
    refused (outcome `rejected`: admission control, a drain) are in `outcomes` only: neither
    completed nor failed."""
    leads = [lead for lead in leads if lead.started_at >= collector.started_wall - 1]
    finished = [lead for lead in leads if lead.ended_at]
    outcomes = Counter(lead.outcome for lead in finished)
    batch_size = histograms.series["batch_size"]
    total = len(collector.utterances)
    report: dict[str, Any] = {
        "calls_completed": sum(1 for lead in finished if lead.outcome not in ("error", REJECTED)),
        "calls_failed": outcomes.get("error", 0),
        "outcomes": dict(sorted(outcomes.items())),
        "utterances": {"total": total, "dropped": total - len(collector.utterances & collector.transcribed),
                       "failed": len(collector.utterances & collector.failed),
                       "duplicate_transcripts": collector.duplicates},
        "latency_ms": {"eos_to_transcript": histograms.figures_ms("eos_to_transcript", collector.eos_to_transcript),
                       "eos_to_reply": histograms.figures_ms("eos_to_reply", collector.eos_to_reply)},
        "asr": {"mean_batch_size": round(batch_size.total / batch_size.count, 2) if batch_size.count
                else round(len(collector.batch_sizes) / batches, 2) if (batches := sum(
                    1 / k for k in collector.batch_sizes)) else 0.0,
                "batches": int(batch_size.count) or round(sum(1 / k for k in collector.batch_sizes)),
                "transport_ms": percentiles(collector.transport_ms),
                # Where eos_to_transcript goes: waiting at a worker, then running its batch.
                "worker_queue_ms": histograms.figures_ms("worker_queue", collector.queue_ms),
                "batch_run_ms": histograms.figures_ms("batch_run", collector.inference_ms),
                "windows_s": {f"{w:g}": n for w, n in sorted(collector.windows.items())}},
        "cpu_percent": cpu_percent,
    }
    if drain is not None:
        report["drain"] = {key: int(drain.get(key, 0)) for key in ("calls_in_progress", "finished", "ended",
                                                                    "refused")}
    return report


def format_report(report: dict[str, Any]) -> str:
    if report.get("role") == "asr":  # an ASR node takes no call
        return (f"ASR node {report['node']}: {report['utterances']} utterances in {report['batches']} batches, "
                f"{report['claimed']} claimed from a silent worker, {report['duplicate_answers']} answered "
                "by another first")
    lat = report["latency_ms"]
    return "\n".join([
        f"calls completed {report['calls_completed']}, failed {report['calls_failed']}; outcomes "
        + (", ".join(f"{k} {v}" for k, v in report["outcomes"].items()) or "none"),
        f"utterances {report['utterances']['total']}, dropped {report['utterances']['dropped']}; "
        f"ASR mean batch {report['asr']['mean_batch_size']}, p95 worker queue "
        f"{report['asr']['worker_queue_ms']['p95']} ms, p95 batch run {report['asr']['batch_run_ms']['p95']} ms",
        "latency ms (p50 / p95 / max): eos->transcript {p50} / {p95} / {max}".format(**lat["eos_to_transcript"])
        + ", eos->reply {p50} / {p95} / {max}".format(**lat["eos_to_reply"]),
        f"CPU {report['cpu_percent']} % of one core",
        *([("left behind: " + ", ".join(f"{k} {v}" for k, v in report["left_behind"].items()))]
          if report.get("left_behind") else []),
        *([("drain: {calls_in_progress} calls in progress, {finished} finished, {ended} ended at the timeout, "
            "{refused} new callers refused").format(**report["drain"])] if "drain" in report else []),
    ])


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
