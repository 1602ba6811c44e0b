"""`rtcore bench load`: the same simulated load at rising concurrency, for rtcore and two baselines.

Each level is a full `rtcore launch` run (embedded PBX, simulated callers, every process) placing
calls for `duration_s`, then letting them finish. Systems, on the same machine, simulator and audio:
- rtcore: the configuration given (or each point of a tuning sweep);
- WhisperLive-style: 30 s window, batch 8, 50 ms collection window, one worker;
- seed-style: 30 s window, beam 5, one utterance at a time, one worker.
  Both baselines are single-model servers, so their one worker gets CTranslate2's default
  threads (every core), which is their fastest setting here. (The seed sent each
  utterance to its Whisper HTTP service; here it goes through rtcore's dispatcher. That hop costs
  about a millisecond against 0.9-1.8 s of inference, so the comparison is of the ASR policy.)
capacity@SLO: the most concurrent calls with no dropped utterance and p95 eos_to_transcript within
the SLO. Latency grows with load, so a system's sweep stops at its first level past the loosest SLO.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtcore.launch.launcher import run_launch
from rtcore.launch.report import percentiles
from rtcore.runtime.config import Settings

log = logging.getLogger(__name__)

SLOS_MS = (1500.0, 4000.0)
BASELINES: dict[str, dict[str, Any]] = {
    "whisperlive-style": {"asr_window_s": 30.0, "asr_window_margin_s": 0.0, "asr_batch_size": 8,
                          "asr_max_wait_ms": 50.0, "asr_workers": 1, "asr_intra_threads": 0, "asr_beam_size": 5},
    "seed-style": {"asr_window_s": 30.0, "asr_window_margin_s": 0.0, "asr_batch_size": 1, "asr_max_wait_ms": 0.0,
                   "asr_workers": 1, "asr_intra_threads": 0, "asr_beam_size": 5},
}
TUNABLE = {"batch_size": "asr_batch_size", "max_wait_ms": "asr_max_wait_ms", "window_s": "asr_window_s",
           "workers": "asr_workers", "threads": "asr_intra_threads", "beam": "asr_beam_size"}
INTEGER_TUNABLES = ("batch_size", "workers", "threads", "beam")


@dataclass
class Row:
    system: str
    calls: int
    report: dict[str, Any]
    wall_s: float

    @property
    def p95(self) -> float:
        return float(self.report["latency_ms"]["eos_to_transcript"]["p95"])

    def meets(self, slo_ms: float) -> bool:
        return (
            self.report["utterances"]["dropped"] == 0 and self.report["utterances"]["total"] > 0 and self.p95 <= slo_ms
        )

    def to_json(self) -> dict[str, Any]:
        total = self.report["utterances"]["total"]
        return {
            "system": self.system,
            "calls": self.calls,
            "wall_s": round(self.wall_s, 1),
            "utterances_per_s": round(total / self.wall_s, 3) if self.wall_s else 0.0,
            **self.report,
        }


def systems_to_run(tuning: dict[str, list[float]], baselines: bool) -> dict[str, dict[str, Any]]:
    """rtcore (one entry per point of the tuning sweep) and the baselines."""
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in TUNABLE if tuning.get(n)]
    for values in itertools.product(*(tuning[n] for n in names)) if names else [()]:
        overrides = {
            TUNABLE[n]: (int(v) if n in INTEGER_TUNABLES else float(v)) for n, v in zip(names, values, strict=True)
        }
        label = "rtcore" + "".join(f" {n}={v:g}" for n, v in zip(names, values, strict=True))
        out[label] = overrides
    if baselines:
        out.update(BASELINES)
    return out


TOPOLOGIES = ("local", "stream", "media+1asr", "media+2asr")


def asr_nodes_of(topology: str) -> int:
    """media+<N>asr: N ASR nodes beside a media node; 0 for a single box."""
    return int(topology.removeprefix("media+").removesuffix("asr")) if topology.startswith("media+") else 0


class ClusterRig:
    """The cluster a topology needs on this machine: a Redis server shared by the nodes (unix
    socket), ASR node processes (`rtcore launch --role asr`), and a sampler of the stream's lag."""

    def __init__(self, settings: Settings, topology: str, root: Path) -> None:
        from rtcore.runtime.redis_server import PrivateRedis

        self.topology = topology
        self.root = root
        self.redis = PrivateRedis(root / "redis", root / "redis-data").start()
        self.url = self.redis.url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.samples: list[tuple[float, int, int]] = []  # (oldest waiting s, waiting, taken)
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None
        n = asr_nodes_of(topology)
        # The same ASR workers in all: a single box's asr_workers, shared out over the ASR nodes.
        self.workers_per_node = max(1, settings.asr_workers // n) if n else 0
        for i in range(n):
            name = f"bench-asr-{i}"
            log_file = (root / f"{name}.log").open("wb")
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "rtcore.cli", "launch", "--role", "asr", "--redis-url", self.url,
                 "--node-id", name, "--instance", name, "--run-dir", str(root / name), "--metrics-port", "0",
                 "--asr-workers", str(self.workers_per_node), "--asr-batch-size", str(settings.asr_batch_size),
                 "--asr-intra-threads", str(settings.asr_intra_threads), "--model-cache-dir",
                 str(settings.model_cache_path)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True))
        if n:
            self._wait_for_asr(n * self.workers_per_node)

    def _client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=5.0)

    def _wait_for_asr(self, workers: int, timeout_s: float = 300.0) -> None:
        from rtcore.runtime.cluster import ClusterKeys, live_nodes

        client, deadline = self._client(), time.monotonic() + timeout_s
        try:
            while sum(n.asr_workers for n in live_nodes(client, ClusterKeys("rtcore"))) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise RuntimeError(f"the ASR nodes did not come up: see {self.root}/bench-asr-*.log")
                time.sleep(0.2)
        finally:
            client.close()

    def node_settings(self, settings: Settings) -> dict[str, Any]:
        if self.topology == "stream":
            return {"asr_transport": "stream", "redis_url": self.url}
        return {"role": "media", "redis_url": self.url}

    def sample(self) -> None:
        from rtcore.runtime.cluster import ClusterKeys, stream_state

        def run() -> None:
            client = self._client()
            try:
                while not self._stop.wait(0.5):
                    state = stream_state(client, ClusterKeys("rtcore"))
                    self.samples.append((state.oldest_waiting_s, state.waiting, state.taken))
            finally:
                client.close()

        self.samples = []
        self._stop.clear()
        self._sampler = threading.Thread(target=run, daemon=True)
        self._sampler.start()

    def lag(self) -> dict[str, Any]:
        """The stream's lag over the run: how long the oldest utterance no worker had taken yet
        had waited, sampled every 0.5 s, and the most waiting / being transcribed at once."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        ages = [s[0] * 1000 for s in self.samples]
        return {"oldest_waiting_ms": percentiles(ages), "waiting_max": max((s[1] for s in self.samples), default=0),
                "taken_max": max((s[2] for s in self.samples), default=0), "samples": len(self.samples)}

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.redis.stop()


def run_bench(
    settings: Settings,
    levels: list[int],
    duration_s: float,
    out_dir: Path,
    tuning: dict[str, list[float]] | None = None,
    baselines: bool = True,
    say: Callable[[str], None] = print,
    topologies: tuple[str, ...] = ("local",),
) -> dict[str, Any]:
    """`topologies`: the single box as it runs (local: its ZeroMQ dispatcher), and the stream
    path on this one machine (stream: a single box through a Redis stream; media+<N>asr: a media
    node and N ASR nodes sharing the same ASR workers). Same cores throughout: the overhead, not
    a speed-up."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    systems = [(f"{system}" + (f" [{topology}]" if topologies != ("local",) else ""), overrides, topology)
               for topology in topologies for system, overrides in systems_to_run(
                   tuning or {}, baselines and topology == "local").items()]
    for system, overrides, topology in systems:
        rig = ClusterRig(settings, topology, Path(tempfile.mkdtemp(prefix="rtcore-bench-"))) \
            if topology != "local" else None
        try:
            for calls in sorted(levels):
                say(f"--- {system}: {calls} concurrent calls, {duration_s:.0f} s of calls placed")
                t0 = time.monotonic()
                run_settings = settings.model_copy(update={**overrides, **(rig.node_settings(settings) if rig else {})})
                if rig is not None:
                    rig.sample()
                report = run_launch(run_settings, calls=calls, total_calls=0, duration_s=duration_s)
                if rig is not None:
                    report["stream"] = rig.lag()
                row = Row(system, calls, report, time.monotonic() - t0)
                rows.append(row)
                lag = report.get("stream", {}).get("oldest_waiting_ms", {})
                say(
                    f"    eos->transcript p50 {report['latency_ms']['eos_to_transcript']['p50']:.0f} p95 "
                    f"{row.p95:.0f} ms, utterances {report['utterances']['total']}"
                    f" (dropped {report['utterances']['dropped']}), mean batch {report['asr']['mean_batch_size']},"
                    f" hand-over p50 {report['asr']['transport_ms']['p50']:.1f} ms"
                    + (f", stream lag p95 {lag['p95']:.0f} ms" if lag else "")
                )
                if not row.meets(max(SLOS_MS)):
                    break  # past the loosest SLO: more calls only make it worse
        finally:
            if rig is not None:
                rig.close()
    result = summarise(rows, levels, duration_s)
    (out_dir / "load.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "load.md").write_text(markdown(result))
    plot(result, out_dir / "load.png")
    return result


def capacity(rows: list[Row], system: str, slo_ms: float) -> int:
    best = 0
    for row in sorted((r for r in rows if r.system == system), key=lambda r: r.calls):
        if not row.meets(slo_ms):
            break
        best = row.calls
    return best


def summarise(rows: list[Row], levels: list[int], duration_s: float) -> dict[str, Any]:
    systems = list(dict.fromkeys(r.system for r in rows))
    cap = {s: {f"{slo / 1000:g}s": capacity(rows, s, slo) for slo in SLOS_MS} for s in systems}
    tuned = [s for s in systems if s.startswith("rtcore")]
    best = max(tuned, key=lambda s: (cap[s]["1.5s"], cap[s]["4s"]), default="")
    return {
        "levels": sorted(levels),
        "duration_s": duration_s,
        "slo_ms": list(SLOS_MS),
        "capacity": cap,
        "best_rtcore_setting": best,
        "rows": [r.to_json() for r in rows],
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| system | calls | utterances | dropped | eos→transcript p50 / p95 / max (ms) | eos→reply p95 (ms) "
        "| mean batch | hand-over p50 / p95 (ms) | stream lag p95 / max (ms) | utt/s | CPU % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t = r["latency_ms"]["eos_to_transcript"]
        hand = r["asr"].get("transport_ms", {"p50": 0.0, "p95": 0.0})
        s = r.get("stream", {}).get("oldest_waiting_ms")
        lag = f"{s['p95']:.0f} / {s['max']:.0f}" if s else "-"
        lines.append(
            f"| {r['system']} | {r['calls']} | {r['utterances']['total']} | {r['utterances']['dropped']} | "
            f"{t['p50']:.0f} / {t['p95']:.0f} / {t['max']:.0f} | {r['latency_ms']['eos_to_reply']['p95']:.0f} | "
            f"{r['asr']['mean_batch_size']} | {hand['p50']:.1f} / {hand['p95']:.1f} | {lag} | "
            f"{r['utterances_per_s']} | {r['cpu_percent']} |"
        )
    lines += ["", "| system | capacity@1.5 s | capacity@4 s |", "|---|---|---|"]
    for system, cap in result["capacity"].items():
        lines.append(f"| {system} | {cap['1.5s']} | {cap['4s']} |")
    if result["best_rtcore_setting"]:
        lines += ["", f"Best rtcore setting on this machine: {result['best_rtcore_setting']}"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, thr) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system in result["capacity"]:
        rows = [r for r in result["rows"] if r["system"] == system]
        calls = [r["calls"] for r in rows]
        p50 = [r["latency_ms"]["eos_to_transcript"]["p50"] for r in rows]
        p95 = [r["latency_ms"]["eos_to_transcript"]["p95"] for r in rows]
        (line,) = lat.plot(calls, p95, marker="o", label=f"{system} p95")
        lat.plot(calls, p50, marker=".", linestyle="--", color=line.get_color(), label=f"{system} p50")
        thr.plot(calls, [r["utterances_per_s"] for r in rows], marker="o", color=line.get_color(), label=system)
    for slo in result["slo_ms"]:
        lat.axhline(slo, color="grey", linewidth=0.8, linestyle=":")
    lat.set(
        xscale="log",
        yscale="log",
        xlabel="concurrent calls",
        ylabel="eos → transcript (ms)",
        title="Latency (SLO lines at 1.5 s and 4 s)",
    )
    thr.set(xscale="log", xlabel="concurrent calls", ylabel="utterances transcribed / s", title="Throughput")
    lat.legend(fontsize=7)
    thr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
