"""The launch report (rtcore.launch.report): what it counts from the leads, and its drain part."""

from __future__ import annotations

from typing import Any

from rtcore.dialog.leads import Lead
from rtcore.launch.report import LoadCollector, RunHistograms, build_report, format_report


def lead(call_id: str, outcome: str, end_reason: str = "bot hung up") -> Lead:
    return Lead(call_id=call_id, caller="0600000000", started_at=1000.0, ended_at=1060.0, outcome=outcome,
                end_reason=end_reason)


def report(drain: dict[str, int] | None) -> dict[str, Any]:
    collector = LoadCollector(subscriber=None, started_wall=1000.0)  # type: ignore[arg-type]  # nothing to read
    leads = [lead("a", "qualified"), lead("b", "error"), lead("c", "rejected", "draining"),
             lead("d", "abandoned", "drain timeout")]
    return build_report(collector, leads, RunHistograms.empty(), 12.5, drain=drain)


def test_refused_calls_are_outcomes_neither_completed_nor_failed() -> None:
    plain = report(None)
    assert (plain["calls_completed"], plain["calls_failed"]) == (2, 1)
    assert plain["outcomes"] == {"abandoned": 1, "error": 1, "qualified": 1, "rejected": 1}
    assert "drain" not in plain and "drain" not in format_report(plain)


def test_a_drained_run_reports_its_drain() -> None:
    drained = report({"calls_in_progress": 3, "finished": 2, "ended": 1, "refused": 4})
    assert drained["drain"] == {"calls_in_progress": 3, "finished": 2, "ended": 1, "refused": 4}
    assert format_report(drained).splitlines()[-1] == (
        "drain: 3 calls in progress, 2 finished, 1 ended at the timeout, 4 new callers refused")
