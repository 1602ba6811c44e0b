from __future__ import annotations

from pathlib import Path

from rtcore.launch.loadbench import BASELINES, Row, capacity, markdown, plot, summarise, systems_to_run


def report(p95: float, dropped: int = 0, total: int = 40) -> dict:  # type: ignore[type-arg]
    return {"calls_completed": 4, "calls_failed": 0, "outcomes": {"qualified": 4},
            "utterances": {"total": total, "dropped": dropped},
            "latency_ms": {"eos_to_transcript": {"p50": p95 / 2, "p95": p95, "max": p95 * 1.2},
                           "eos_to_reply": {"p50": p95 / 2, "p95": p95, "max": p95 * 1.2}},
            "asr": {"mean_batch_size": 2.0}, "cpu_percent": 120.0}


def test_capacity_is_the_last_level_meeting_the_slo_with_nothing_dropped() -> None:
    rows = [Row("rtcore", 1, report(400), 60), Row("rtcore", 2, report(900), 60), Row("rtcore", 4, report(1400), 60),
            Row("rtcore", 8, report(1600), 60), Row("rtcore", 16, report(3000, dropped=1), 60),
            Row("seed-style", 1, report(1700), 60), Row("seed-style", 2, report(3900), 60),
            Row("seed-style", 4, report(9000), 60)]
    assert capacity(rows, "rtcore", 1500) == 4
    assert capacity(rows, "rtcore", 4000) == 8  # 16 dropped an utterance
    assert capacity(rows, "seed-style", 1500) == 0 and capacity(rows, "seed-style", 4000) == 2
    result = summarise(rows, [1, 2, 4, 8, 16], 60.0)
    assert result["capacity"]["rtcore"] == {"1.5s": 4, "4s": 8}
    assert result["best_rtcore_setting"] == "rtcore"
    table = markdown(result)
    assert "| rtcore | 4 | 8 |" in table and "| seed-style | 0 | 2 |" in table


def test_sweep_points_and_baselines() -> None:
    systems = systems_to_run({"batch_size": [4, 8], "max_wait_ms": [20]}, baselines=True)
    assert list(systems) == ["rtcore batch_size=4 max_wait_ms=20", "rtcore batch_size=8 max_wait_ms=20",
                             *BASELINES]
    assert systems["rtcore batch_size=4 max_wait_ms=20"] == {"asr_batch_size": 4, "asr_max_wait_ms": 20.0}
    assert BASELINES["seed-style"]["asr_batch_size"] == 1 and BASELINES["whisperlive-style"]["asr_window_s"] == 30.0


def test_plot_is_written(tmp_path: Path) -> None:
    rows = [Row("rtcore", c, report(300 * c), 60) for c in (1, 2, 4)]
    plot(summarise(rows, [1, 2, 4], 60.0), tmp_path / "load.png")
    assert (tmp_path / "load.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
