"""`rtcore bench chaos`: faults thrown at a loaded pipeline, and what each one cost.

A sustained simulated load (the embedded PBX keeps `calls` calls in progress) runs while, one
after the other and `interval_s` apart, the benchmark
- kills with SIGKILL each process type: RTP capture, VAD, ASR dispatcher, an ASR worker, dialog,
  HTTP service (the supervisor restarts each);
- stops the Redis server and starts it again `redis_down_s` later;
- throws malformed input at the running system (rtcore.launch.abuse): random RTP datagrams at
  the capture's port, malformed and out-of-order ARI events through the simulator, oversized and
  truncated HTTP bodies, slow-loris HTTP clients;
- and finally drains the run as SIGTERM would (Supervisor.drain).
Meanwhile a client sends the HTTP service a transcription request every second.

It observes everything on the bus (CallStarted/CallEnded, UtteranceReady, Transcript,
ProcessStarted) and reads the leads from Redis at the end. Per fault it reports: the calls
affected (in progress at the fault or started before the next one), those failed (outcome
`error`, or no lead), the utterances exposed (cut before the fault and not transcribed yet then,
or cut before the next fault) against those transcribed, lost (no transcript at all) and
duplicated (more than one transcript published), the leads expected (affected calls that ended)
against those written, and the recovery time (the process ready again; for Redis, the dialog's
spool replayed). `soak_s` instead runs the load without faults for that long and reports each
process's resident memory and open descriptors at the start and the end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import threading
import time
import urllib.error
import urllib.request
import wave
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

KILLED_IN_TURN = ("rtp_capture", "vad", "asr_dispatch", "asr-0", "dialog", "http_api")
ABUSE_PREFIX = "abuse-"  # ids of the channels the malformed ARI events make up
SETTLE_S = 30.0  # after the last fault and the drain: the last transcripts, the last lead writes


@dataclass
class Fault:
    name: str
    kind: str  # kill | redis | abuse | drain
    target: str = ""
    at: float = 0.0  # wall clock
    restarts_before: int = 0
    recovered_at: float = 0.0
    calls_active: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)  # utterances cut, not yet transcribed, at the fault
    details: dict[str, Any] = field(default_factory=dict)


class BusObserver:
    """Everything the benchmark counts, as the bus carries it."""

    def __init__(self, endpoint: str) -> None:
        from rtcore.runtime.bus import Subscriber
        from rtcore.runtime.messages import CallEnded, CallStarted, ProcessStarted, Transcript, UtteranceReady

        self._types = (CallStarted, CallEnded, ProcessStarted, Transcript, UtteranceReady)
        self.subscriber = Subscriber(endpoint, list(self._types))
        self.cut: dict[str, float] = {}  # utterance id -> when the VAD cut it
        self.transcripts: Counter[str] = Counter()
        self.transcribed_at: dict[str, float] = {}
        self.errors: set[str] = set()
        self.call_started: dict[str, float] = {}
        self.call_ended: dict[str, float] = {}
        self.ready: list[tuple[float, str, int]] = []  # (when, process, restarts)
        self.eos_to_transcript: list[tuple[float, float]] = []  # (when, ms)

    def poll(self) -> None:
        from rtcore.runtime.messages import (
            HTTP_CALL_ID,
            CallEnded,
            CallStarted,
            ProcessStarted,
            Transcript,
            UtteranceReady,
        )

        now = time.time()
        for message in self.subscriber.drain():
            if getattr(message, "call_id", "").startswith(ABUSE_PREFIX):
                continue  # the abuse's ghost callers, not the load's
            if isinstance(message, UtteranceReady):
                self.cut.setdefault(message.utterance_id, message.eos_at or now)
            elif isinstance(message, Transcript):
                if message.call_id == HTTP_CALL_ID:
                    continue
                self.transcripts[message.utterance_id] += 1
                self.transcribed_at.setdefault(message.utterance_id, now)
                if message.error:
                    self.errors.add(message.utterance_id)
                elif message.eos_at:
                    self.eos_to_transcript.append((now, ((message.published_at or now) - message.eos_at) * 1000))
            elif isinstance(message, CallStarted):
                self.call_started.setdefault(message.call_id, message.started_at or now)
            elif isinstance(message, CallEnded):
                self.call_ended.setdefault(message.call_id, message.ended_at or now)
            elif isinstance(message, ProcessStarted):
                self.ready.append((now, message.process, message.restarts))

    def active_calls(self) -> set[str]:
        return set(self.call_started) - set(self.call_ended)

    def untranscribed(self) -> set[str]:
        return {u for u in self.cut if u not in self.transcripts}

    def close(self) -> None:
        self.subscriber.close()


class HttpTraffic:
    """One transcription request a second to the HTTP service, counting what came back."""

    def __init__(self, url: str, wav: bytes) -> None:
        self.url = url
        self.wav = wav
        self.results: list[tuple[float, int | str]] = []  # (when, status or error)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="http-traffic", daemon=True)

    def start(self) -> HttpTraffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        boundary = "rtcorechaosprobe"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"probe.wav\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode() + self.wav + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        while not self._stop.wait(1.0):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=30.0) as answer:
                    self.results.append((time.time(), answer.status))
            except urllib.error.HTTPError as exc:
                self.results.append((time.time(), exc.code))
            except OSError as exc:  # refused, reset, timed out: the service is down
                self.results.append((time.time(), type(exc).__name__))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35.0)


def probe_wav(audio_dir: Path | None) -> bytes:
    """A second and a half of real speech (or of a tone, without ../shared) as a WAV file."""
    from rtcore.runtime.audio import float_to_pcm16, load_audio

    samples = None
    if audio_dir is not None and audio_dir.is_dir():
        files = sorted(audio_dir.glob("*.wav"))
        if files:
            samples = float_to_pcm16(load_audio(files[0])[16000 * 2:16000 * 2 + 24000])
    if samples is None:
        t = np.arange(24000) / 16000
        samples = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())
    return out.getvalue()


def process_usage(supervisor: Any) -> dict[str, dict[str, float]]:
    """Memory (MiB) and open descriptors of the supervisor, Redis and every child. RSS counts the
    pages of the shared-memory rings a process has touched (they fill as calls use more slots);
    USS, its own memory only, is what a leak would grow."""
    pids = {"supervisor": os.getpid()}
    if supervisor.redis is not None and supervisor.redis.pid:
        pids["redis-server"] = supervisor.redis.pid
    pids.update({name: child.pid for name, child in supervisor.children.items() if child.pid})
    usage: dict[str, dict[str, float]] = {}
    for name, pid in pids.items():
        try:
            proc = psutil.Process(pid)
            memory = proc.memory_full_info()
            usage[name] = {"pid": pid, "rss_mib": round(memory.rss / 2**20, 1), "uss_mib": round(memory.uss / 2**20, 1),
                           "fds": proc.num_fds()}
        except psutil.Error:
            continue
    return usage


class ChaosRun:
    def __init__(self, settings: Settings, progress: Callable[[str], None]) -> None:
        self.settings = settings
        self.progress = progress
        self.supervisor: Any = None
        self.observer: BusObserver | None = None
        self.started = time.time()

    # --- keeping the run going while we wait -----------------------------------------------------
    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> bool:
        """Supervise and observe for `seconds`, or until `until()`; whether `until` came true."""
        assert self.observer is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervisor.poll(0.1)
            self.observer.poll()
            if until():
                return True
        return False

    def wait_for(self, future: Future[Any]) -> Any:
        while not future.done():
            self.wait(0.2)
        return future.result()

    def elapsed(self, at: float) -> float:
        return round(at - self.started, 1)

    # --- faults ----------------------------------------------------------------------------------
    def kill(self, fault: Fault) -> None:
        assert self.observer is not None
        child = self.supervisor.children[fault.target]
        fault.restarts_before = child.restarts
        os.kill(child.pid, signal.SIGKILL)
        back = self.wait(60.0, lambda: any(p == fault.target and r > fault.restarts_before and t >= fault.at
                                           for t, p, r in self.observer.ready))  # type: ignore[union-attr]
        if back:
            fault.recovered_at = next(t for t, p, r in self.observer.ready
                                      if p == fault.target and r > fault.restarts_before and t >= fault.at)

    def redis_outage(self, fault: Fault, down_s: float) -> None:
        redis = self.supervisor.redis
        if redis is None:
            fault.details["skipped"] = "external Redis (redis_url set): not stopped"
            return
        redis.stop()
        self.wait(down_s)
        dialog = self.supervisor.children["dialog"]
        fault.details["spooled_at_restart"] = dialog.metrics.get("redis_backlog", 0.0)
        redis.start()
        restarted = time.time()
        fault.details["down_s"] = round(restarted - fault.at, 2)
        # Recovered: the dialog wrote everything it had spooled meanwhile (counted from the restart).
        if self.wait(60.0, lambda: dialog.metrics.get("redis_connected") == 1.0
                     and dialog.metrics.get("redis_backlog", 1.0) == 0.0 and time.time() > restarted + 1.5):
            fault.recovered_at = time.time()
            fault.details["spool_replayed_s"] = round(fault.recovered_at - restarted, 2)

    def abuse(self, fault: Fault, rtp_datagrams: int) -> None:
        from rtcore.launch import abuse

        s = self.settings
        assert self.observer is not None
        restarts = {name: c.restarts for name, c in self.supervisor.children.items()}
        http_url = f"http://{s.http_host}:{s.http_port}"
        with ThreadPoolExecutor(max_workers=4) as pool:
            jobs = {
                "rtp": pool.submit(abuse.fuzz_rtp, s.rtp_ip, s.rtp_port, rtp_datagrams, 7),
                "ari": pool.submit(abuse.inject_ari_events, f"http://127.0.0.1:{s.sim_ari_port}", s.ari_app,
                                   sorted(self.observer.active_calls()), user=s.ari_user,
                                   password=s.ari_password.get_secret_value()),
                "http": pool.submit(abuse.abuse_http, http_url, max_upload_mb=s.http_max_upload_mb),
                # Longer than the body timeout, so that every slow client is seen cut.
                "slow_loris": pool.submit(abuse.slow_loris, s.http_host, s.http_port, 100,
                                          s.http_body_timeout_s + 10.0),
            }
            for name, job in jobs.items():
                try:
                    fault.details[name] = self.wait_for(job)
                except Exception as exc:  # an abuse tool failing is a finding, not the end of the run
                    log.exception("abuse %s failed", name)
                    fault.details[name] = {"error": repr(exc)}
        fault.details["restarts"] = {name: c.restarts - restarts[name]
                                     for name, c in self.supervisor.children.items() if c.restarts > restarts[name]}
        fault.recovered_at = time.time()

    def drain(self, fault: Fault) -> None:
        fault.details.update(self.supervisor.drain(self.settings.drain_timeout_s))
        fault.recovered_at = time.time()


FAULTS = (*KILLED_IN_TURN, "redis", "abuse")


def run_chaos(settings: Settings, out: Path, calls: int = 16, interval_s: float = 40.0, redis_down_s: float = 8.0,
              rtp_datagrams: int = 100_000, soak_s: float = 0.0, audio_dir: Path | None = None,
              faults_wanted: tuple[str, ...] = FAULTS, drain: bool = True, warmup_s: float = 20.0,
              progress: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole benchmark; writes chaos.json and chaos.md (soak: soak.json, soak.md) in `out`
    and returns the report.
    `faults_wanted`: which of FAULTS to throw, in that order (process names: kill -9)."""
    from rtcore.dialog.leads import read_leads
    from rtcore.launch.launcher import simulated_load_settings
    from rtcore.launch.pipeline import pipeline
    from rtcore.runtime.models import whisper_model_dir
    from rtcore.runtime.redis_client import sync_client
    from rtcore.runtime.supervisor import Supervisor
    from rtcore.sim.callers.prepare import prepare_simulation

    if settings.ari_url:
        raise ValueError("bench chaos runs on the embedded PBX: leave ari_url empty")
    unknown = set(faults_wanted) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose among {', '.join(FAULTS)}")
    catalogue = {**{name: Fault(f"kill -9 {name}", "kill", name) for name in KILLED_IN_TURN},
                 "redis": Fault("Redis stopped and restarted", "redis"), "abuse": Fault("malformed input", "abuse")}
    faults = [] if soak_s else [catalogue[name] for name in FAULTS if name in faults_wanted]
    plan_s = soak_s or (len(faults) + 1) * interval_s + 30.0
    settings = simulated_load_settings(settings, calls, None, plan_s + 600.0)  # placing until the drain
    out.mkdir(parents=True, exist_ok=True)
    whisper_model_dir(settings)
    progress(f"embedded PBX: {prepare_simulation(settings)}")
    run = ChaosRun(settings, progress)
    supervisor = run.supervisor = Supervisor(settings, pipeline(settings))
    supervisor.start()
    traffic: HttpTraffic | None = None
    usage_start: dict[str, dict[str, float]] = {}
    try:
        run.observer = observer = BusObserver(supervisor.settings.endpoint("bus_sub"))
        # With the private Redis URL, and the HTTP API's port as bound (http_port 0: any free one).
        port = int(supervisor.children["http_api"].metrics.get("listening_port", supervisor.settings.http_port))
        run.settings = settings = supervisor.settings.model_copy(update={"http_port": port})
        traffic = HttpTraffic(f"http://{settings.http_host}:{settings.http_port}/transcribe",
                              probe_wav(audio_dir)).start()
        run.started = time.time()
        run.wait(60.0, lambda: len(observer.active_calls()) >= calls)
        run.wait(warmup_s)  # every call past its greeting, the ASR busy
        usage_start = process_usage(supervisor)
        progress(f"[{run.elapsed(time.time()):6.0f} s] {len(observer.active_calls())} calls in progress")
        if soak_s:
            run.wait(soak_s)
        for fault in faults:
            fault.at = time.time()
            fault.calls_active = observer.active_calls()
            fault.in_flight = observer.untranscribed()
            progress(f"[{run.elapsed(fault.at):6.0f} s] {fault.name} ({len(fault.calls_active)} calls in progress)")
            if fault.kind == "kill":
                run.kill(fault)
            elif fault.kind == "redis":
                run.redis_outage(fault, redis_down_s)
            else:
                run.abuse(fault, rtp_datagrams)
            run.wait(max(0.0, fault.at + interval_s - time.time()))
        usage_end = process_usage(supervisor)
        if drain:
            ending = Fault("SIGTERM drain", "drain", at=time.time(), calls_active=observer.active_calls(),
                           in_flight=observer.untranscribed())
            progress(f"[{run.elapsed(ending.at):6.0f} s] {ending.name} ({len(ending.calls_active)} calls in progress)")
            run.drain(ending)
            faults.append(ending)
        run.wait(SETTLE_S, lambda: not observer.untranscribed())
        traffic.stop()
        client = sync_client(settings, timeout_s=5.0)
        try:
            # This run's (data_dir keeps earlier runs' leads), not the abuse's ghost callers.
            leads = {lead.call_id: lead for lead in read_leads(client)
                     if lead.started_at >= run.started - 60 and not lead.call_id.startswith(ABUSE_PREFIX)}
        finally:
            client.close()
        restarts = {name: child.restarts for name, child in supervisor.children.items()}
    finally:
        if traffic is not None:
            traffic.stop()
        if run.observer is not None:
            run.observer.close()
        supervisor.stop()
    report = build_chaos_report(run, faults, leads, traffic.results if traffic else [], restarts,
                                usage_start, usage_end, soak_s, calls, interval_s)
    name = "soak" if soak_s else "chaos"
    report["files"] = [str(out / f"{name}.json"), str(out / f"{name}.md")]
    (out / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    (out / f"{name}.md").write_text(format_chaos(report))
    return report


def build_chaos_report(run: ChaosRun, faults: list[Fault], leads: dict[str, Any],
                       http_results: list[tuple[float, int | str]], restarts: dict[str, int],
                       usage_start: dict[str, dict[str, float]], usage_end: dict[str, dict[str, float]],
                       soak_s: float, calls: int, interval_s: float) -> dict[str, Any]:
    observer = run.observer
    assert observer is not None
    rows = []
    ends = [f.at for f in faults[1:]] + [time.time()]
    for fault, until in zip(faults, ends, strict=True):
        affected = fault.calls_active | {c for c, t in observer.call_started.items() if fault.at <= t < until}
        ended = {c for c in affected if c in observer.call_ended}
        written = {c for c in ended if c in leads and leads[c].ended_at}
        failed = {c for c in ended if c not in leads or leads[c].outcome == "error"}
        exposed = fault.in_flight | {u for u, t in observer.cut.items() if fault.at <= t < until}
        transcribed = {u for u in exposed if u in observer.transcripts and u not in observer.errors}
        row = {
            "fault": fault.name, "at_s": run.elapsed(fault.at), "calls_affected": len(affected),
            "calls_failed": len(failed), "failed_outcomes": dict(Counter(
                leads[c].end_reason if c in leads else "no lead" for c in failed)),
            "utterances_cut": len(exposed), "transcribed": len(transcribed),
            "errors": len({u for u in exposed if u in observer.errors}),
            "lost": len({u for u in exposed if u not in observer.transcripts}),
            "duplicated": sum(1 for u in exposed if observer.transcripts[u] > 1),
            "leads_expected": len(ended), "leads_written": len(written),
            # A process killed: until it is ready again. Redis: until the spool is replayed once it
            # is back. Malformed input: until the flood ends. The drain: until the run is empty.
            "recovery_s": round(fault.recovered_at - fault.at - fault.details.get("down_s", 0.0), 2)
            if fault.recovered_at else None,
            "details": fault.details,
        }
        if fault.target == "http_api":
            after = [(t, r) for t, r in http_results if t >= fault.at]
            row["http_failed"] = sum(1 for t, r in after if r != 200 and t < (fault.recovered_at or until) + 2)
            first_ok = next((t for t, r in after if r == 200), None)
            row["http_first_ok_s"] = round(first_ok - fault.at, 2) if first_ok else None
        rows.append(row)
    statuses = Counter(str(r) for _, r in http_results)
    all_cut = set(observer.cut)
    latencies = [ms for _, ms in observer.eos_to_transcript]
    return {
        "calls": calls, "interval_s": interval_s, "soak_s": soak_s, "wall_s": run.elapsed(time.time()),
        "faults": rows,
        "totals": {"calls": len(observer.call_started), "leads": len(leads),
                   "utterances_cut": len(all_cut),
                   "lost": len({u for u in all_cut if u not in observer.transcripts}),
                   "duplicated": sum(1 for n in observer.transcripts.values() if n > 1),
                   "errors": len(observer.errors),
                   "outcomes": dict(Counter(lead.outcome for lead in leads.values())),
                   "rejected": dict(Counter(lead.end_reason.split(" ")[0] if lead.end_reason.startswith("ASR")
                                            else lead.end_reason for lead in leads.values()
                                            if lead.outcome == "rejected")),
                   "eos_to_transcript_ms": _percentiles(latencies)},
        "restarts": restarts, "http_requests": dict(statuses),
        "usage": {"start": usage_start, "end": usage_end},
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "max": 0.0}
    arr = np.asarray(values)
    return {"p50": round(float(np.percentile(arr, 50)), 1), "p95": round(float(np.percentile(arr, 95)), 1),
            "max": round(float(arr.max()), 1)}


def format_chaos(report: dict[str, Any]) -> str:
    how = f", soak {report['soak_s']:.0f} s" if report["soak_s"] else f", a fault every {report['interval_s']:g} s"
    lines = [f"# rtcore bench chaos: {report['calls']} simulated calls{how}", ""]
    if report["faults"]:
        lines += ["| fault | at s | calls affected | calls failed | utterances cut | transcribed | lost | duplicated "
                  "| leads written / expected | recovery s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["faults"]:
            recovery = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.2f}"
            lines.append(f"| {r['fault']} | {r['at_s']:.0f} | {r['calls_affected']} | {r['calls_failed']} | "
                         f"{r['utterances_cut']} | {r['transcribed']} | {r['lost']} | {r['duplicated']} | "
                         f"{r['leads_written']} / {r['leads_expected']} | {recovery} |")
        lines.append("")
    t = report["totals"]
    lines += [f"Whole run: {t['calls']} calls, {t['leads']} leads, {t['utterances_cut']} utterances cut, "
              f"{t['lost']} lost, {t['duplicated']} duplicated, {t['errors']} error transcripts; outcomes "
              + ", ".join(f"{k} {v}" for k, v in sorted(t["outcomes"].items()))
              + "; eos->transcript p50 {p50} / p95 {p95} / max {max} ms.".format(**t["eos_to_transcript_ms"]),
              "Callers not taken (outcome rejected), by reason: "
              + (", ".join(f"{k} {v}" for k, v in sorted(t["rejected"].items())) or "none") + ".",
              "Restarts: " + ", ".join(f"{k} {v}" for k, v in report["restarts"].items() if v) + ".",
              "HTTP requests during the run: "
              + ", ".join(f"{k}: {v}" for k, v in sorted(report["http_requests"].items())) + "."]
    for r in report["faults"]:
        if r["details"]:
            lines.append(f"- {r['fault']}: {json.dumps(r['details'], ensure_ascii=False)}")
        if "http_failed" in r:
            lines.append(f"- {r['fault']}: {r['http_failed']} HTTP requests failed, first answered "
                         f"{r['http_first_ok_s']} s after the kill")
    start, end = report["usage"]["start"], report["usage"]["end"]
    if start and end:
        lines += ["", "| process | RSS MiB at start | at end | USS MiB at start | at end | USS growth "
                  "| open fds at start | at end |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in start.items():
            e = end.get(name)
            if e is None:
                continue
            same = "" if e["pid"] == s["pid"] else " (restarted)"
            lines.append(f"| {name}{same} | {s['rss_mib']} | {e['rss_mib']} | {s['uss_mib']} | {e['uss_mib']} | "
                         f"{e['uss_mib'] - s['uss_mib']:+.1f} | {s['fds']:.0f} | {e['fds']:.0f} |")
    return "\n".join(lines) + "\n"
