"""Writes the Grafana dashboards in ../dashboards/: `python charts/infleet/hack/dashboards.py`.

Dashboards are kept as JSON files (what the chart ships and what people import by hand); this script is the
readable source. tests/unit/chart checks the files are current and every query uses only docs/metrics.md
names; tests/integration/chart runs every query against a real Prometheus scraping a real worker and operator.
Queries use raw metrics (not the chart's recording rules) so the dashboards work without them; the SLO budget
panels use the per-deployment SLO records the operator's PrometheusRule adds (infleet.slo).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent.parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'namespace="$namespace", deployment="$deployment"'
RI = "$__rate_interval"
# The operator's unit metrics (labels namespace, deployment, pool, family, source="measured|estimated").
ENERGY_PER_MTOK = "infleet_deployment_energy_wh_per_million_tokens"
COST_PER_MTOK = "infleet_deployment_cost_usd_per_million_tokens"
UNIT_METRICS = ((ENERGY_PER_MTOK, "Energy", "watth"), (COST_PER_MTOK, "Cost", "currencyUSD"))


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict[str, Any]:
    t: dict[str, Any] = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if instant:
        t["instant"] = True
        t["range"] = False
    return t


class Layout:
    """Places panels left to right on Grafana's 24-column grid, wrapping rows."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0
        self.next_id = 1
        self.panels: list[dict[str, Any]] = []

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel["id"] = self.next_id
        panel["gridPos"] = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.next_id += 1
        self.x += w
        self.row_h = max(self.row_h, h)
        self.panels.append(panel)

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({"type": "row", "title": title, "id": self.next_id, "collapsed": False,
                            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": []})
        self.next_id += 1
        self.y += 1


def stat(title: str, desc: str, expr: str, unit: str, decimals: int | None = None) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit, "color": {"mode": "thresholds"},
                                "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {"type": "stat", "title": title, "description": desc, "datasource": DS,
            "targets": [target(expr, instant=True)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                        "percentChangeColorMode": "standard", "showPercentChange": False, "wideLayout": True,
                        "orientation": "auto"}}


def series(title: str, desc: str, targets: list[dict[str, Any]], unit: str, stack: bool = False,
           bars: bool = False, overrides: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1, "fillOpacity": 10,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
    return {"type": "timeseries", "title": title, "description": desc, "datasource": DS, "targets": targets,
            "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": overrides or []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def dashed(name: str) -> dict[str, Any]:
    """Draw the named series (an SLO target) as a dashed red line."""
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                           {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}]}


def variables(*, per_deployment: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "datasource", "type": "datasource", "query": "prometheus",
                                  "label": "Data source", "hide": 0, "refresh": 1}]
    if per_deployment:
        for name, query in (("namespace", "label_values(infleet_deployment_replicas, namespace)"),
                            ("deployment", 'label_values(infleet_deployment_replicas{namespace="$namespace"}, '
                                           "deployment)")):
            out.append({"name": name, "label": name.capitalize(), "type": "query", "datasource": DS,
                        "query": {"query": query, "refId": f"{name}-var"},
                        "refresh": 2, "sort": 1, "hide": 0, "includeAll": False, "multi": False,
                        "options": [], "regex": ""})
    return out


def dashboard(uid: str, title: str, desc: str, layout: Layout, *, per_deployment: bool) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["infleet"], "timezone": "browser",
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"}, "timepicker": {}, "fiscalYearStartMonth": 0, "liveNow": False,
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "infleet dashboards", "type": "dashboards", "tags": ["infleet"], "asDropdown": True,
                   "icon": "external link", "includeVars": False, "keepTime": True, "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": variables(per_deployment=per_deployment)},
        "panels": layout.panels,
    }


def fleet() -> dict[str, Any]:
    lay = Layout()
    lay.add(stat("InferenceDeployments", "Deployments the operator manages.",
                 "count(count by (namespace, deployment) (infleet_deployment_replicas))", "none"), 4, 4)
    lay.add(stat("Ready replicas", "Serving replicas that are ready, all deployments.",
                 'sum(infleet_deployment_replicas{state="ready"})', "none"), 4, 4)
    lay.add(stat("Warm replicas", "Model-loaded standby replicas (warm pools).",
                 'sum(infleet_deployment_replicas{state="warm"})', "none"), 4, 4)
    lay.add(stat("Fleet cost", "Hourly cost of every replica, serving and warm.",
                 "sum(infleet_fleet_cost_per_hour_usd)", "currencyUSD", 2), 4, 4)
    lay.add(stat("Cost per million tokens", "Fleet hourly cost over the tokens generated per hour at the current "
                 "rate.",
                 "sum(infleet_fleet_cost_per_hour_usd) / (sum(rate(infleet_worker_generation_tokens_total"
                 f"[{RI}])) * 3600 / 1e6)", "currencyUSD", 2), 4, 4)
    lay.add(stat("Saturated pools", "Pools out of capacity, with fallback active.",
                 "sum(infleet_pool_saturated)", "none"), 4, 4)
    lay.row("Replicas")
    lay.add(series("Ready replicas by pool", "Where the fleet runs: each AcceleratorPool (an accelerator family, "
                   "product and capacity type).",
                   [target('sum by (pool) (infleet_deployment_replicas{state="ready"})', "{{pool}}")],
                   "none", stack=True), 12, 8)
    lay.add(series("Replicas by state", "Desired vs ready serving replicas, and the warm pool.",
                   [target("sum by (state) (infleet_deployment_replicas)", "{{state}}")], "none"), 12, 8)
    lay.add(series("Warm replicas by pool", "Warm-pool size per pool.",
                   [target('sum by (pool) (infleet_deployment_replicas{state="warm"})', "{{pool}}")],
                   "none", stack=True), 12, 8)
    lay.add(series("Worker pods by role and pool", "Scraped worker pods: serving take traffic, warm stand by.",
                   [target("count by (pool, role) (infleet_worker_num_requests_running)", "{{pool}} {{role}}")],
                   "none", stack=True), 12, 8)
    lay.add(series("Replicas by accelerator family", "Ready serving replicas per accelerator family (NVIDIA GPU, "
                   "Neuron, TPU, CPU): each pool's replicas joined with what the pool is (infleet_pool_info).",
                   [target('sum by (family) (infleet_deployment_replicas{state="ready"} * on (pool) '
                           'group_left(family) infleet_pool_info)', "{{family}}")],
                   "none", stack=True), 24, 8)
    lay.row("Cost")
    lay.add(series("Cost per hour by deployment", "The operator's hourly cost of each deployment's replicas.",
                   [target("sum by (namespace, deployment) (infleet_deployment_cost_per_hour_usd)",
                           "{{namespace}}/{{deployment}}")], "currencyUSD", stack=True), 12, 8)
    lay.add(series("Cost per million tokens by deployment",
                   "Hourly cost over the tokens generated per hour; no value while a deployment generates nothing.",
                   [target("sum by (namespace, deployment) (infleet_deployment_cost_per_hour_usd)\n/ on (namespace, "
                           "deployment)\n(sum by (namespace, deployment) (rate(infleet_worker_generation_tokens_total"
                           f"[{RI}])) * 3600 / 1e6 > 0)", "{{namespace}}/{{deployment}}")], "currencyUSD"), 12, 8)
    lay.row("Energy and cost per million tokens")
    for metric, what, unit in UNIT_METRICS:
        lay.add(series(f"{what} per million tokens by deployment and pool",
                       f"The operator's {what.lower()} per million generated tokens of each deployment on each "
                       "pool: measured where the workers report energy, otherwise estimated from the pool's power "
                       "and utilisation (the legend says which).",
                       [target(f"sum by (namespace, deployment, pool, source) ({metric})",
                               "{{namespace}}/{{deployment}} on {{pool}} ({{source}})")], unit), 12, 8)
    for metric, what, unit in UNIT_METRICS:
        lay.add(series(f"{what} per million tokens by accelerator family",
                       f"Mean {what.lower()} per million tokens over the deployments and pools of each accelerator "
                       "family (NVIDIA GPU, Neuron, TPU, CPU), unweighted by their tokens; measured and estimated "
                       "apart.",
                       [target(f"avg by (family, source) ({metric})", "{{family}} ({{source}})")], unit), 12, 8)
    lay.row("Traffic")
    lay.add(series("Requests per second by deployment", "Finished requests, all statuses.",
                   [target("sum by (namespace, deployment) (rate(infleet_worker_requests_total"
                           f"[{RI}]))", "{{namespace}}/{{deployment}}")], "reqps"), 8, 8)
    lay.add(series("Generated tokens per second", "Output tokens per second by deployment.",
                   [target("sum by (namespace, deployment) (rate(infleet_worker_generation_tokens_total"
                           f"[{RI}]))", "{{namespace}}/{{deployment}}")], "none"), 8, 8)
    lay.add(series("p99 latency by deployment", "Arrival to last token, 99th percentile.",
                   [target("histogram_quantile(0.99, sum by (namespace, deployment, le) "
                           f"(rate(infleet_worker_request_latency_seconds_bucket[{RI}])))",
                           "{{namespace}}/{{deployment}}")], "s"), 8, 8)
    return dashboard("infleet-fleet", "infleet / Fleet overview",
                     "Deployments, replicas by pool, warm pools, and what the fleet costs.", lay,
                     per_deployment=False)


def deployment() -> dict[str, Any]:
    lay = Layout()
    target_p99 = f'max(infleet_deployment_slo_latency_target_seconds{{{SEL}, slo="p99"}})'
    lay.add(stat("p99 latency", "Arrival to last token, 99th percentile, over the deployment's serving pods.",
                 f"histogram_quantile(0.99, sum by (le) (rate(infleet_worker_request_latency_seconds_bucket{{{SEL}}}"
                 f"[{RI}])))", "s", 3), 4, 4)
    lay.add(stat("p99 target", "The declared slo.p99LatencyMs.", target_p99, "s", 3), 4, 4)
    lay.add(stat("Error budget remaining (30d)",
                 "Share of the 30-day latency error budget left: 1 - (slow-request ratio / (1 - objective)). "
                 "Needs the operator's per-deployment PrometheusRule.",
                 f'1 - (infleet:slo_latency_error_ratio:rate30d{{{SEL}, slo="p99"}} / on (namespace, deployment, '
                 f'slo) (1 - infleet:slo_objective{{{SEL}, slo="p99"}}))', "percentunit", 1), 4, 4)
    lay.add(stat("Burn rate (1h)", "How many times faster than sustainable the budget burns; 14.4 pages.",
                 f'infleet:slo_latency_error_ratio:rate1h{{{SEL}, slo="p99"}} / on (namespace, deployment, slo) '
                 f'(1 - infleet:slo_objective{{{SEL}, slo="p99"}})', "none", 2), 4, 4)
    lay.add(stat("Queue depth", "Requests admitted and waiting, all pods.",
                 f"sum(infleet_worker_num_requests_waiting{{{SEL}}})", "none"), 4, 4)
    lay.add(stat("Cost per hour", "The operator's hourly cost of this deployment's replicas.",
                 f"sum(infleet_deployment_cost_per_hour_usd{{{SEL}}})", "currencyUSD", 2), 4, 4)
    lay.row("Latency vs SLO")
    lay.add(series("Request latency vs p99 target", "Percentiles of arrival-to-last-token; the dashed line is the "
                   "declared target.",
                   [target(f"histogram_quantile(0.99, sum by (le) (rate(infleet_worker_request_latency_seconds_bucket"
                           f"{{{SEL}}}[{RI}])))", "p99"),
                    target(f"histogram_quantile(0.5, sum by (le) (rate(infleet_worker_request_latency_seconds_bucket"
                           f"{{{SEL}}}[{RI}])))", "p50", "B"),
                    target(target_p99, "p99 target", "C")], "s", overrides=[dashed("p99 target")]), 12, 8)
    lay.add(series("Time to first token vs target", "p99 time to first token; the dashed line is slo.ttftP99Ms.",
                   [target("histogram_quantile(0.99, sum by (le) (rate("
                           f"infleet_worker_time_to_first_token_seconds_bucket{{{SEL}}}[{RI}])))", "p99 TTFT"),
                    target(f'max(infleet_deployment_slo_latency_target_seconds{{{SEL}, slo="ttft"}})',
                           "TTFT target", "B")], "s", overrides=[dashed("TTFT target")]), 12, 8)
    lay.add(series("Error budget burn rate", "Slow-request ratio over each window divided by the budget (1 - "
                   "objective). Pages at 14.4 (1h and 5m) and 6 (6h and 30m); tickets at 3 (1d) and 1 (3d).",
                   [target(f'infleet:slo_latency_error_ratio:rate{w}{{{SEL}, slo="p99"}} / on (namespace, '
                           f'deployment, slo) (1 - infleet:slo_objective{{{SEL}, slo="p99"}})', w, ref)
                    for w, ref in (("5m", "A"), ("1h", "B"), ("6h", "C"), ("3d", "D"))], "none"), 12, 8)
    lay.add(series("Error budget remaining (30d)", "Share of the 30-day latency budget left.",
                   [target(f'1 - (infleet:slo_latency_error_ratio:rate30d{{{SEL}, slo="p99"}} / on (namespace, '
                           f'deployment, slo) (1 - infleet:slo_objective{{{SEL}, slo="p99"}}))', "budget left")],
                   "percentunit"), 12, 8)
    lay.row("Load and scaling")
    lay.add(series("Queue depth and running batch", "Waiting (the autoscaler's signal) and running requests.",
                   [target(f"sum(infleet_worker_num_requests_waiting{{{SEL}}})", "waiting"),
                    target(f"sum(infleet_worker_num_requests_running{{{SEL}}})", "running", "B")], "none"), 12, 8)
    lay.add(series("Replicas by pool", "Desired, ready and warm replicas in each pool.",
                   [target(f"sum by (pool, state) (infleet_deployment_replicas{{{SEL}}})", "{{pool}} {{state}}")],
                   "none"), 12, 8)
    lay.add(series("Scale events", "Scaling decisions applied, by pool and direction.",
                   [target(f"sum by (pool, direction) (increase(infleet_scale_events_total{{{SEL}}}[{RI}]))",
                           "{{pool}} {{direction}}")], "none", bars=True), 12, 8)
    lay.add(series("Requests by status", "Finished requests per second: stop, length, abort, error, rejected.",
                   [target(f"sum by (status) (rate(infleet_worker_requests_total{{{SEL}}}[{RI}]))", "{{status}}")],
                   "reqps", stack=True), 12, 8)
    lay.add(series("Tokens per second", "Prompt and generated tokens per second.",
                   [target(f"sum(rate(infleet_worker_prompt_tokens_total{{{SEL}}}[{RI}]))", "prompt"),
                    target(f"sum(rate(infleet_worker_generation_tokens_total{{{SEL}}}[{RI}]))", "generated", "B")],
                   "none"), 12, 8)
    lay.add(series("KV-cache usage by pod", "Share of KV-cache blocks in use.",
                   [target(f"max by (pod) (infleet_worker_kv_cache_usage_perc{{{SEL}}})", "{{pod}}")],
                   "percentunit"), 12, 8)
    lay.row("Energy and cost per million tokens")
    for metric, what, unit in UNIT_METRICS:
        lay.add(series(f"{what} per million tokens by pool",
                       f"This deployment's {what.lower()} per million generated tokens on each pool, measured "
                       "where its workers report energy, otherwise estimated (the legend says which).",
                       [target(f"sum by (pool, family, source) ({metric}{{{SEL}}})",
                               "{{pool}} ({{family}}, {{source}})")], unit), 12, 8)
    return dashboard("infleet-deployment-slo", "infleet / Deployment SLO",
                     "One InferenceDeployment against its SLO: latency and TTFT vs target, error budget and burn "
                     "rate, queue depth, scaling.", lay, per_deployment=True)


def operator() -> dict[str, Any]:
    lay = Layout()
    lay.add(stat("Reconciles per second", "All kinds and results.",
                 f"sum(rate(infleet_reconcile_total[{RI}]))", "ops", 2), 6, 4)
    lay.add(stat("Reconcile error ratio", "Share of reconciles that did not succeed (retry, error, "
                 "permanent_error).",
                 f'(sum(rate(infleet_reconcile_total{{result!="success"}}[{RI}])) or vector(0)) / '
                 f"sum(rate(infleet_reconcile_total[{RI}]))", "percentunit", 1), 6, 4)
    lay.add(stat("p99 reconcile latency", "Slowest reconciles, all kinds.",
                 "histogram_quantile(0.99, sum by (le) (rate(infleet_reconcile_duration_seconds_bucket"
                 f"[{RI}])))", "s", 3), 6, 4)
    lay.add(stat("Saturated pools", "Pools out of capacity, with fallback active.",
                 "sum(infleet_pool_saturated)", "none"), 6, 4)
    lay.add(series("Reconciles by kind and result", "Rate of reconciles; anything but success is worth a look.",
                   [target(f"sum by (kind, result) (rate(infleet_reconcile_total[{RI}]))", "{{kind}} {{result}}")],
                   "ops", stack=True), 12, 8)
    lay.add(series("Reconcile errors", "Retries and errors per second, by kind (0 while all succeed).",
                   [target(f'sum by (kind) (rate(infleet_reconcile_total{{result!="success"}}[{RI}])) '
                           f"or sum by (kind) (rate(infleet_reconcile_total[{RI}])) * 0", "{{kind}}")],
                   "ops"), 12, 8)
    lay.add(series("Reconcile latency", "p50 and p99 time per reconcile, by kind.",
                   [target("histogram_quantile(0.99, sum by (kind, le) (rate(infleet_reconcile_duration_seconds_bucket"
                           f"[{RI}])))", "p99 {{kind}}"),
                    target("histogram_quantile(0.5, sum by (kind, le) (rate(infleet_reconcile_duration_seconds_bucket"
                           f"[{RI}])))", "p50 {{kind}}", "B")], "s"), 12, 8)
    lay.add(series("Reconcile queue wait", "p99 time a ready key waited for a worker, by lane (urgent: new or "
                   "edited specs, served first). Growing waits with idle CPU point at the API server.",
                   [target("histogram_quantile(0.99, sum by (lane, le) "
                           f"(rate(infleet_reconcile_queue_wait_seconds_bucket[{RI}])))", "p99 {{lane}}")], "s"), 12, 8)
    lay.add(series("Pool saturation", "1 while a pool is out of capacity and fallback is active.",
                   [target("max by (pool) (infleet_pool_saturated)", "{{pool}}")], "none"), 12, 8)
    lay.add(series("Scale events", "Scaling decisions applied across the fleet.",
                   [target(f"sum by (direction) (increase(infleet_scale_events_total[{RI}]))", "{{direction}}")],
                   "none", bars=True), 12, 8)
    return dashboard("infleet-operator", "infleet / Operator",
                     "The operator's own health: reconcile rate, errors and latency.", lay, per_deployment=False)


DASHBOARDS = {"fleet-overview": fleet, "deployment-slo": deployment, "operator": operator}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2) + "\n"


if __name__ == "__main__":
    for name in DASHBOARDS:
        (OUT / f"{name}.json").write_text(render(name))
        sys.stdout.write(f"wrote {OUT / f'{name}.json'}\n")
