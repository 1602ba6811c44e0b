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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtcore.launch.launcher import run_launch
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


def run_bench(
    settings: Settings,
    levels: list[int],
    duration_s: float,
    out_dir: Path,
    tuning: dict[str, list[float]] | None = None,
    baselines: bool = True,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for system, overrides in systems_to_run(tuning or {}, baselines).items():
        for calls in sorted(levels):
            say(f"--- {system}: {calls} concurrent calls, {duration_s:.0f} s of calls placed")
            t0 = time.monotonic()
            report = run_launch(
                settings.model_copy(update=overrides), calls=calls, total_calls=0, duration_s=duration_s
            )
            row = Row(system, calls, report, time.monotonic() - t0)
            rows.append(row)
            say(
                f"    p95 eos->transcript {row.p95:.0f} ms, utterances {report['utterances']['total']}"
                f" (dropped {report['utterances']['dropped']}), mean batch {report['asr']['mean_batch_size']}"
            )
            if not row.meets(max(SLOS_MS)):
                break  # past the loosest SLO: more calls only make it worse
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
        "| mean batch | utt/s | CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        t = r["latency_ms"]["eos_to_transcript"]
        lines.append(
            f"| {r['system']} | {r['calls']} | {r['utterances']['total']} | {r['utterances']['dropped']} | "
            f"{t['p50']:.0f} / {t['p95']:.0f} / {t['max']:.0f} | {r['latency_ms']['eos_to_reply']['p95']:.0f} | "
            f"{r['asr']['mean_batch_size']} | {r['utterances_per_s']} | {r['cpu_percent']} |"
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
