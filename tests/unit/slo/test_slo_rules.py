"""infleet.slo: bucket choice, rule shape, and that the generated files promtool tests run on are current."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.slo import (
    BURN_WINDOWS,
    LATENCY_BUCKETS_S,
    bucket_for_target,
    burn_rate_alerts,
    error_ratio_record,
    operator_alerts,
    recording_rules,
    rule_file,
)
from infleet.slo.render import main as render_main

REPO = Path(__file__).resolve().parents[3]
PROM_TESTS = REPO / "tests" / "prometheus"


def test_bucket_layout_matches_metrics_contract() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    m = re.search(r"one bucket layout \(seconds\): `([^`]+)`", text.replace("\n", " "))
    assert m, "docs/metrics.md no longer states the latency bucket layout"
    assert tuple(float(x) for x in m.group(1).split()) == LATENCY_BUCKETS_S


@pytest.mark.parametrize("target", LATENCY_BUCKETS_S)
def test_every_boundary_is_exact(target: float) -> None:
    choice = bucket_for_target(target)
    assert choice.exact and choice.le_s == target
    assert "is a bucket boundary" in choice.note


@pytest.mark.parametrize(("target", "le"), [(0.6, 0.75), (0.001, 0.005), (0.2500001, 0.5), (59.0, 60.0)])
def test_between_boundaries_rounds_up_and_says_so(target: float, le: float) -> None:
    choice = bucket_for_target(target)
    assert not choice.exact and choice.le_s == le
    assert "next boundary up" in choice.note and repr(le) in choice.note


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, 60.5])
def test_unmeasurable_targets_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="latency target"):
        bucket_for_target(bad)


def test_le_regex_matches_both_client_spellings() -> None:
    assert bucket_for_target(1).le_regex == "1|1\\\\.0"
    assert bucket_for_target(0.5).le_regex == "0\\\\.5"
    # As PromQL reads the string, the regex must match "1" and "1.0" but not "10" or "1.5".
    promql_regex = bucket_for_target(1).le_regex.replace("\\\\", "\\")
    for le, want in [("1", True), ("1.0", True), ("10", False), ("1.5", False)]:
        assert bool(re.fullmatch(promql_regex, le)) is want


def _alerts(rule: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]


def test_burn_rate_alerts_shape() -> None:
    rule = burn_rate_alerts("prod", "chat", 0.5, ttft_target_s=0.25)
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["namespace"] == "prod" and rule["metadata"]["name"] == "infleet-slo-chat"
    alerts = _alerts(rule)
    assert len(alerts) == 2 * len(BURN_WINDOWS)
    for a in alerts:
        labels, ann = a["labels"], a["annotations"]
        assert labels["severity"] in {"critical", "warning"}
        assert {"summary", "description", "runbook_url"} <= set(ann)
        assert ann["runbook_url"].startswith("docs/runbooks.md#")
    windows = {(a["labels"]["long_window"], a["labels"]["short_window"], a["labels"]["severity"])
               for a in alerts}
    assert windows == {("1h", "5m", "critical"), ("6h", "30m", "critical"), ("1d", "2h", "warning"),
                       ("3d", "6h", "warning")}


def test_thresholds_are_factor_times_budget() -> None:
    for objective in (0.99, 0.995):
        alerts = _alerts(burn_rate_alerts("ns", "d", 1.0, objective=objective))
        for w, a in zip(BURN_WINDOWS, alerts, strict=True):
            thresholds = {float(t) for t in re.findall(r"> ([0-9.e-]+)", str(a["expr"]))}
            assert len(thresholds) == 1
            assert thresholds.pop() == pytest.approx(w.factor * (1 - objective), rel=1e-5)
            assert error_ratio_record(w.long) in str(a["expr"]) and error_ratio_record(w.short) in str(a["expr"])


def test_records_come_before_alerts_in_each_group() -> None:
    for group in burn_rate_alerts("ns", "d", 0.5)["spec"]["groups"]:
        kinds = ["record" if "record" in r else "alert" for r in group["rules"]]
        assert kinds == sorted(kinds, key=lambda k: k != "record"), "an alert would read last round's ratios"


def test_objective_and_budget_window_are_recorded_for_dashboards() -> None:
    rules = burn_rate_alerts("ns", "d", 0.5, objective=0.995)["spec"]["groups"][0]["rules"]
    objective = next(r for r in rules if r.get("record") == "infleet:slo_objective")
    assert objective["expr"] == "vector(0.995)"
    assert objective["labels"] == {"namespace": "ns", "deployment": "d", "slo": "p99"}
    assert any(r.get("record") == error_ratio_record("30d") for r in rules)


def test_label_values_are_quoted_for_promql() -> None:
    rule = burn_rate_alerts("ns", 'we"ird', 0.5)
    assert 'deployment="we\\"ird"' in yaml.safe_dump(rule_file(rule))


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"namespace": "", "deployment": "d", "p99_latency_target_s": 0.5}, "namespace"),
    ({"namespace": "ns", "deployment": "a b", "p99_latency_target_s": 0.5}, "deployment"),
    ({"namespace": "ns", "deployment": "d", "p99_latency_target_s": 0.5, "objective": 1.0}, "objective"),
    ({"namespace": "ns", "deployment": "d", "p99_latency_target_s": 120.0}, "largest histogram bucket"),
    ({"namespace": "ns", "deployment": "d", "p99_latency_target_s": 0.5, "ttft_target_s": -1.0}, "positive"),
])
def test_bad_input_is_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        burn_rate_alerts(**kwargs)


def test_between_bucket_target_is_reported_in_rule() -> None:
    rule = burn_rate_alerts("ns", "d", 0.6)
    assert "next boundary up, 0.75s" in rule["metadata"]["annotations"]["infleet.io/slo-p99-bucket"]
    assert 'le=~"0\\\\.75"' in rule["spec"]["groups"][0]["rules"][0]["expr"]


def test_every_runbook_link_has_a_section() -> None:
    text = (REPO / "docs" / "runbooks.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^## (.+)$", text, re.M)}
    ops = [r for g in operator_alerts()["groups"] for r in g["rules"] if "alert" in r]
    assert ops
    for a in _alerts(burn_rate_alerts("ns", "d", 0.5, ttft_target_s=0.25)) + ops:
        path, _, anchor = a["annotations"]["runbook_url"].partition("#")
        assert path == "docs/runbooks.md" and anchor in anchors, anchor


def test_recording_rules_only_use_contract_metrics() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    contract = set(re.findall(r"`(infleet_[a-z_]+)`", text))
    used = set(re.findall(r"\b(infleet_[a-z_]+?)(?:_bucket|_count|_sum)?\b[\[{(\s)]",
                          yaml.safe_dump(recording_rules(), width=10_000)))
    used = {u for u in used if not u.startswith("infleet_cost")}  # part of a recorded name, not a metric
    assert used, "the regex found no metric at all"
    assert used <= contract, f"not in docs/metrics.md: {sorted(used - contract)}"


# The rule files under tests/prometheus/rules/ are what promtool tests run on: they must be today's output.
GENERATED = {
    "recording.yaml": ["recording"],
    "operator-alerts.yaml": ["operator-alerts"],
    "slo-demo-chat.yaml": ["alerts", "-n", "demo", "-d", "chat", "--p99", "0.5", "--ttft", "0.25", "--plain"],
    "slo-demo-edge.yaml": ["alerts", "-n", "demo", "-d", "edge", "--p99", "0.6", "--plain"],
    "slo-demo-gofmt.yaml": ["alerts", "-n", "demo", "-d", "gofmt", "--p99", "1", "--plain"],
}


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_generated_rule_files_are_current(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert render_main(GENERATED[name]) == 0
    fresh = capsys.readouterr().out
    assert (PROM_TESTS / "rules" / name).read_text() == fresh, (
        f"regenerate: python -m infleet.slo.render {' '.join(GENERATED[name])} > tests/prometheus/rules/{name}")


def test_burn_rate_test_file_is_current() -> None:
    out = subprocess.run([sys.executable, str(PROM_TESTS / "make_slo_burn_rate_test.py")],
                         capture_output=True, text=True, check=True).stdout
    assert (PROM_TESTS / "slo-burn-rate.test.yaml").read_text() == out


def test_render_cli_rejects_bad_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        render_main(["alerts", "-n", "ns", "-d", "d", "--p99", "0"])
    assert exc.value.code == 2
    assert "latency target" in capsys.readouterr().err
