"""Multi-window, multi-burn-rate alerts (Google SRE workbook, "Alerting on SLOs") for a deployment's
latency SLOs, as a PrometheusRule the operator keeps next to each InferenceDeployment.

The SLI is "fraction of requests slower than the target" = 1 - bucket(le=target)/count, aggregated over the
deployment's pods. Each alert fires only when both its long window (is the budget really burning?) and its
short window (is it still burning now?) exceed the burn factor times the error budget, which gives fast
detection of big burns, slow detection of small ones, and quick reset once a burn stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infleet.slo.buckets import BucketChoice, bucket_for_target

RULE_API_VERSION = "monitoring.coreos.com/v1"
DEFAULT_RUNBOOK_URL = "docs/runbooks.md"


@dataclass(frozen=True)
class BurnWindow:
    long: str
    short: str
    factor: float
    severity: str  # "critical" pages a human now; "warning" opens a ticket


# SRE workbook table 5-8: 2% of a 30-day budget in 1h, 5% in 6h (page); 10% in 1d, 10% in 3d (ticket).
BURN_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("1h", "5m", 14.4, "critical"),
    BurnWindow("6h", "30m", 6.0, "critical"),
    BurnWindow("1d", "2h", 3.0, "warning"),
    BurnWindow("3d", "6h", 1.0, "warning"),
)


@dataclass(frozen=True)
class _Sli:
    slo: str  # label value, as in infleet_deployment_slo_latency_target_seconds{slo=...}
    histogram: str
    title: str
    alert: str
    anchor: str  # section in docs/runbooks.md


_SLIS: dict[str, _Sli] = {
    "p99": _Sli("p99", "infleet_worker_request_latency_seconds", "request latency",
                "InfleetLatencySLOBudgetBurn", "infleetlatencyslobudgetburn"),
    "ttft": _Sli("ttft", "infleet_worker_time_to_first_token_seconds", "time to first token",
                 "InfleetTTFTSLOBudgetBurn", "infleetttftslobudgetburn"),
}


OBJECTIVE_RECORD = "infleet:slo_objective"
BUDGET_WINDOW = "30d"  # the error budget's period, for dashboards (budget remaining)


def error_ratio_record(window: str) -> str:
    """Name of the recorded SLI error ratio over ``window`` (labels: namespace, deployment, slo)."""
    return f"infleet:slo_latency_error_ratio:rate{window}"


def alert_name(slo: str) -> str:
    return _SLIS[slo].alert


def _windows() -> list[str]:
    seen: list[str] = []
    for w in BURN_WINDOWS:
        for win in (w.long, w.short):
            if win not in seen:
                seen.append(win)
    return seen


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float) -> str:
    return f"{value:.6g}"


def _check_name(what: str, value: str) -> None:
    if not value or len(value) > 253 or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a non-empty Kubernetes name, got {value!r}")


def _sli_rules(namespace: str, deployment: str, sli: _Sli, bucket: BucketChoice,
               objective: float) -> list[dict[str, Any]]:
    sel = f"namespace={_quote(namespace)}, deployment={_quote(deployment)}"
    rules: list[dict[str, Any]] = []
    for window in _windows():
        good = (f'sum by (namespace, deployment) (rate({sli.histogram}_bucket{{{sel}, le=~"{bucket.le_regex}"}}'
                f"[{window}]))")
        total = f"sum by (namespace, deployment) (rate({sli.histogram}_count{{{sel}}}[{window}]))"
        rules.append({
            "record": error_ratio_record(window),
            "expr": f"1 - ({good} / {total})",
            "labels": {"slo": sli.slo},
        })
    # For dashboards: the 30-day ratio as the mean of the 5m ratios (cheap; a rate over 30d of raw buckets is
    # not), and the objective itself, so budget remaining and burn rate need no hard-coded 0.99.
    rules.append({
        "record": error_ratio_record(BUDGET_WINDOW),
        "expr": f"avg_over_time({error_ratio_record('5m')}{{{sel}, slo={_quote(sli.slo)}}}[{BUDGET_WINDOW}])",
    })
    rules.append({
        "record": OBJECTIVE_RECORD,
        "expr": f"vector({_num(objective)})",
        "labels": {"namespace": namespace, "deployment": deployment, "slo": sli.slo},
    })
    return rules


def _alert_rules(namespace: str, deployment: str, sli: _Sli, bucket: BucketChoice, *, objective: float,
                 runbook_url: str) -> list[dict[str, Any]]:
    budget = 1.0 - objective
    sel = f"namespace={_quote(namespace)}, deployment={_quote(deployment)}, slo={_quote(sli.slo)}"
    pct = _num(objective * 100)
    alerts: list[dict[str, Any]] = []
    for w in BURN_WINDOWS:
        threshold = _num(w.factor * budget)
        expr = (f"{error_ratio_record(w.long)}{{{sel}}} > {threshold}\n"
                f"and\n"
                f"{error_ratio_record(w.short)}{{{sel}}} > {threshold}")
        alerts.append({
            "alert": sli.alert,
            "expr": expr,
            "labels": {
                "severity": w.severity,
                "slo": sli.slo,
                "long_window": w.long,
                "short_window": w.short,
            },
            "annotations": {
                "summary": (f"{namespace}/{deployment} is burning its {sli.title} error budget "
                            f"{_num(w.factor)}x too fast"),
                "description": (
                    f"Over the last {w.long} (and still over the last {w.short}) more than "
                    f"{_num(w.factor * budget * 100)}% of requests to {namespace}/{deployment} took longer than "
                    f"{bucket.le_label}s ({sli.title}); the SLO allows {_num(budget * 100)}% "
                    f"({pct}% under target). At this rate the 30-day error budget lasts "
                    f"{30 / w.factor:.3g} days. Current {w.long} error ratio: "
                    "{{ $value | humanizePercentage }} (" + bucket.note + ")."
                ),
                "runbook_url": f"{runbook_url}#{sli.anchor}",
            },
        })
    return alerts


def burn_rate_alerts(
    namespace: str,
    deployment: str,
    p99_latency_target_s: float,
    *,
    ttft_target_s: float | None = None,
    objective: float = 0.99,
    runbook_url: str = DEFAULT_RUNBOOK_URL,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A PrometheusRule (as a plain dict) with SLI recording rules and burn-rate alerts for one deployment.

    ``p99_latency_target_s`` gives the SLO "``objective`` of requests finish within the target"; an optional
    ``ttft_target_s`` adds the same for time to first token. ``labels`` go on the object's metadata (for the
    Prometheus Operator's ruleSelector). Targets between buckets are measured at the next bucket up; the
    alert descriptions say so.
    """
    _check_name("namespace", namespace)
    _check_name("deployment", deployment)
    if not 0.0 < objective < 1.0:
        raise ValueError(f"objective must be between 0 and 1 (exclusive), got {objective!r}")
    targets: list[tuple[_Sli, BucketChoice]] = [(_SLIS["p99"], bucket_for_target(p99_latency_target_s))]
    if ttft_target_s is not None:
        targets.append((_SLIS["ttft"], bucket_for_target(ttft_target_s)))

    groups: list[dict[str, Any]] = []
    for sli, bucket in targets:
        # One group per SLI, records first: rules in a group run in order, so each alert reads the ratios
        # recorded in the same evaluation rather than one interval old.
        groups.append({
            "name": f"infleet-slo-{namespace}-{deployment}-{sli.slo}",
            "rules": _sli_rules(namespace, deployment, sli, bucket, objective)
            + _alert_rules(namespace, deployment, sli, bucket, objective=objective, runbook_url=runbook_url),
        })
    meta_labels = {"app.kubernetes.io/managed-by": "infleet", "infleet.io/deployment": deployment}
    meta_labels.update(labels or {})
    return {
        "apiVersion": RULE_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": {
            "name": f"infleet-slo-{deployment}",
            "namespace": namespace,
            "labels": meta_labels,
            "annotations": {f"infleet.io/slo-{sli.slo}-bucket": bucket.note for sli, bucket in targets},
        },
        "spec": {"groups": groups},
    }


def rule_file(prometheus_rule: dict[str, Any]) -> dict[str, Any]:
    """The plain Prometheus rule file (``groups:``) inside a PrometheusRule, for promtool and plain Prometheus."""
    return {"groups": prometheus_rule["spec"]["groups"]}
