"""What ops deploy beside rtcore (deploy/prometheus, deploy/grafana): valid for promtool, alerts that
fire on failing series and not on healthy ones, and no expression naming a metric rtcore does not
export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from rtcore.runtime import telemetry
from rtcore.runtime.config import Settings
from rtcore.runtime.metrics import SupervisorCollector
from rtcore.runtime.supervisor import Child, ProcessSpec
from tests.conftest import REPO

PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULES_TEST = PROMETHEUS_DIR / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "rtcore-dashboard.json"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is absent (Debian package prometheus; "
                                    "scripts/setup.sh installs it)")


def promtool(*args: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120)


# --- the metric names rtcore exports ---------------------------------------------------------------
def sample_names(name: str, kind: str) -> set[str]:
    """The series names a family of this type has in the exposition (multiprocess mode: no _created)."""
    if kind == "counter":
        return {name + "_total"}
    if kind == "histogram":
        return {name + "_bucket", name + "_sum", name + "_count"}
    assert kind == "gauge", (name, kind)
    return {name}


def telemetry_families() -> dict[str, str]:
    """name -> type of every metric object defined in rtcore.runtime.telemetry."""
    families = {}
    for value in vars(telemetry).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                families[family.name] = family.type
    return families


def supervisor_families() -> dict[str, str]:
    """name -> type of what the supervisor's collector adds, read from it on a tiny fake supervisor."""
    child = Child(ProcessSpec("vad", "procs.vad"), proc=object(), ready=True,  # type: ignore[arg-type]
                  usage=psutil.Process())
    fake = types.SimpleNamespace(children={"vad": child}, rings=None, settings=Settings())
    return {family.name: family.type for family in SupervisorCollector(fake).collect()}  # type: ignore[arg-type]


def exported_names() -> set[str]:
    families = {**telemetry_families(), **supervisor_families()}
    return {series for name, kind in families.items() for series in sample_names(name, kind)}


def test_the_exported_names_are_read_from_the_code() -> None:
    names = exported_names()
    # One of each kind, from each source: the lists below are really gathered.
    assert {"rtcore_calls_active", "rtcore_calls_started_total", "rtcore_eos_to_reply_seconds_bucket",
            "rtcore_process_up", "rtcore_process_restarts_total", "rtcore_process_cpu_seconds_total",
            "rtcore_call_slots", "rtcore_build_info"} <= names
    assert "rtcore_calls_started" not in names and "rtcore_eos_to_reply_seconds" not in names


QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
METRIC = re.compile(r"(?<![A-Za-z0-9_:])rtcore_[A-Za-z0-9_]+")


def rtcore_names(expr: str) -> set[str]:
    """The rtcore_* metric names an expression uses (label values and strings stripped)."""
    return set(METRIC.findall(QUOTED.sub('""', expr)))


def test_names_in_expressions_are_found_and_strings_ignored() -> None:
    expr = ('sum by (le) (rate(rtcore_a_bucket{job="rtcore_not_a_metric"}[5m])) / rtcore_b_total '
            'and on() rtcore:recorded')
    assert rtcore_names(expr) == {"rtcore_a_bucket", "rtcore_b_total"}


# --- Prometheus -------------------------------------------------------------------------------------
def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_config_and_the_rule_files_it_names() -> None:
    # From another directory: rule_files resolve against the config file's directory.
    result = promtool("check", "config", str(CONFIG), cwd=Path("/"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_config_scrapes_the_default_metrics_port_and_loads_the_alerts() -> None:
    config = yaml.safe_load(CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "rtcore"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"localhost:{Settings().metrics_port}"]


REQUIRED_ALERTS = {"RtcoreScrapeDown", "RtcoreProcessDown", "RtcoreProcessRestarting", "RtcoreHeartbeatLate",
                   "RtcoreTranscriptLatencyHigh", "RtcoreReplyLatencyHigh", "RtcoreAriDisconnected",
                   "RtcoreRedisDisconnected", "RtcoreRedisSpoolGrowing", "RtcoreAsrQueueGrowing",
                   "RtcoreAsrExpectedWaitHigh", "RtcoreCallSlotsNearlyExhausted", "RtcoreCallsFailing",
                   "RtcoreIntentApiErrors", "RtcoreRtpPacketLossHigh"}


def test_every_alert_waits_has_a_severity_and_says_what_is_wrong() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert REQUIRED_ALERTS <= set(names)
    for rule in rules:
        assert rule.get("for"), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_every_metric_the_alerts_use_is_exported() -> None:
    known = exported_names()
    used = {name for rule in alert_rules() for name in rtcore_names(rule["expr"])}
    assert len(used) >= 15
    assert used - known == set(), f"unknown metrics in {RULES.name}"


@needs_promtool
def test_the_alerts_fire_on_failing_series_and_not_on_healthy_ones() -> None:
    result = promtool("test", "rules", RULES_TEST.name, cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    # Each of these alerts has a test where it fires and one where it does not.
    for alert in ("RtcoreProcessDown", "RtcoreTranscriptLatencyHigh", "RtcoreRedisSpoolGrowing"):
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case["exp_alerts"] for case in mine) and any(not case["exp_alerts"] for case in mine), alert


# --- Grafana ----------------------------------------------------------------------------------------
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # collapsed rows hold their panels


def dashboard_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every query of the dashboard: panel targets and variables."""
    board = dashboard()
    found = [(f"panel {p['id']} {t.get('refId')}", t["expr"]) for p in all_panels(board["panels"])
             for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", v["definition"]) for v in board["templating"]["list"] if v["type"] == "query"]
    return found


def test_the_dashboard_is_valid_with_unique_ids_and_a_query_in_every_panel() -> None:
    board = dashboard()
    assert 36 <= board["schemaVersion"] <= 41 and board["title"] and board["uid"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(all_panels(board["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    core = {"row", "timeseries", "stat", "bargauge", "heatmap", "state-timeline", "gauge", "table", "text"}
    rows = [p for p in panels if p["type"] == "row"]
    assert {r["title"] for r in rows} >= {"Latency", "Capacity", "Calls and outcomes", "Intents", "Errors and health"}
    for panel in panels:
        assert panel["type"] in core, f"panel {panel['id']}: {panel['type']} is not a core panel"
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["id"]
        targets = panel.get("targets", [])
        assert targets and all(t.get("expr") and t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in targets), \
            f"panel {panel['id']} ({panel['title']}) has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["id"]


def test_every_metric_the_dashboard_uses_is_exported_and_every_family_has_a_panel() -> None:
    known = exported_names()
    unknown = {where: sorted(rtcore_names(expr) - known) for where, expr in dashboard_expressions()
               if rtcore_names(expr) - known}
    assert unknown == {}
    used = {name for _, expr in dashboard_expressions() for name in rtcore_names(expr)}
    families = {**telemetry_families(), **supervisor_families()}
    unshown = {name for name, kind in families.items() if not sample_names(name, kind) & used}
    assert unshown == set(), "families no dashboard panel shows"


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, Grafana's variables replaced by what they stand for, as a recording rule:
    `promtool check rules` parses its PromQL."""
    grafana = {"$instance": ".*", "$__rate_interval": "1m", "$__range": "3h", "$__interval": "15s"}
    rules = []
    for i, (where, expr) in enumerate(dashboard_expressions()):
        if where.startswith("variable"):
            continue  # label_values() is Grafana's, not PromQL
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, (where, expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
