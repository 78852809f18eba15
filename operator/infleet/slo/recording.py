"""Generic SLI recording rules over the worker and operator metrics (docs/metrics.md), shipped by the chart.

They aggregate per-pod series to one series per deployment so dashboards and ad-hoc queries stay cheap and
agree with each other. Names follow Prometheus' ``level:metric:operations`` convention.
"""

from __future__ import annotations

from typing import Any

BY_DEPLOYMENT = "namespace, deployment"


def _rate(metric: str, by: str, window: str = "5m") -> str:
    return f"sum by ({by}) (rate({metric}[{window}]))"


def recording_rules(window: str = "5m") -> dict[str, Any]:
    """A Prometheus rule file (``groups:``) with the per-deployment SLIs over ``window``."""
    w = window
    lat = "infleet_worker_request_latency_seconds"
    ttft = "infleet_worker_time_to_first_token_seconds"
    tpot = "infleet_worker_time_per_output_token_seconds"
    rules: list[dict[str, Any]] = []
    for hist in (lat, ttft, tpot):
        bucket_rec = f"deployment_le:{hist}_bucket:rate{w}"
        rules.append({"record": bucket_rec, "expr": _rate(f"{hist}_bucket", f"{BY_DEPLOYMENT}, le", w)})
        rules.append({"record": f"deployment:{hist}:p99_{w}",
                      "expr": f"histogram_quantile(0.99, {bucket_rec})"})
        rules.append({"record": f"deployment:{hist}:p50_{w}",
                      "expr": f"histogram_quantile(0.5, {bucket_rec})"})
    rules += [
        {"record": f"deployment:infleet_worker_requests:rate{w}",
         "expr": _rate("infleet_worker_requests_total", BY_DEPLOYMENT, w)},
        {"record": f"deployment_status:infleet_worker_requests:rate{w}",
         "expr": _rate("infleet_worker_requests_total", f"{BY_DEPLOYMENT}, status", w)},
        {"record": f"deployment:infleet_worker_requests_failed:ratio_rate{w}",
         "expr": (_rate('infleet_worker_requests_total{status=~"error|rejected"}', BY_DEPLOYMENT, w)
                  + "\n/\n" + _rate("infleet_worker_requests_total", BY_DEPLOYMENT, w))},
        {"record": f"deployment:infleet_worker_generation_tokens:rate{w}",
         "expr": _rate("infleet_worker_generation_tokens_total", BY_DEPLOYMENT, w)},
        {"record": f"deployment:infleet_worker_prompt_tokens:rate{w}",
         "expr": _rate("infleet_worker_prompt_tokens_total", BY_DEPLOYMENT, w)},
        {"record": "deployment:infleet_worker_num_requests_waiting:sum",
         "expr": f"sum by ({BY_DEPLOYMENT}) (infleet_worker_num_requests_waiting)"},
        {"record": "deployment:infleet_worker_num_requests_running:sum",
         "expr": f"sum by ({BY_DEPLOYMENT}) (infleet_worker_num_requests_running)"},
        # Cost per million generated tokens: the operator's hourly cost over the tokens the workers produced
        # in an hour at the current rate. Absent (not infinite) while a deployment generates nothing.
        {"record": f"deployment:infleet_cost_per_million_tokens_usd:rate{w}",
         "expr": (f"sum by ({BY_DEPLOYMENT}) (infleet_deployment_cost_per_hour_usd)\n"
                  f"/ on ({BY_DEPLOYMENT})\n"
                  f"(deployment:infleet_worker_generation_tokens:rate{w} * 3600 / 1e6 > 0)")},
    ]
    operator_rules: list[dict[str, Any]] = [
        {"record": f"kind_result:infleet_reconcile:rate{w}",
         "expr": _rate("infleet_reconcile_total", "kind, result", w)},
        {"record": f"kind:infleet_reconcile_duration_seconds:p99_{w}",
         "expr": f"histogram_quantile(0.99, {_rate('infleet_reconcile_duration_seconds_bucket', 'kind, le', w)})"},
    ]
    return {
        "groups": [
            {"name": "infleet-worker-sli", "rules": rules},
            {"name": "infleet-operator", "rules": operator_rules},
        ]
    }
