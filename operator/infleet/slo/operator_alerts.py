"""Generic alerts on the operator's own metrics (docs/metrics.md), shipped by the chart next to the SLI rules.

Deliberately few: the per-deployment SLO alerts page for what users feel; these say why the fleet cannot fix
it by itself (the operator failing to reconcile, or a pool out of capacity for long).
"""

from __future__ import annotations

from typing import Any

from infleet.slo.burnrate import DEFAULT_RUNBOOK_URL


def operator_alerts(runbook_url: str = DEFAULT_RUNBOOK_URL) -> dict[str, Any]:
    """A Prometheus rule file (``groups:``) with the operator-health alerts."""
    return {"groups": [{"name": "infleet-operator-alerts", "rules": [
        {
            "alert": "InfleetReconcileErrors",
            "expr": ('sum by (kind) (rate(infleet_reconcile_total{result=~"error|permanent_error"}[15m]))\n'
                     "/\nsum by (kind) (rate(infleet_reconcile_total[15m])) > 0.1"),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "infleet fails more than 10% of its {{ $labels.kind }} reconciles",
                "description": ("{{ $value | humanizePercentage }} of {{ $labels.kind }} reconciles over the last 15m "
                                "ended in error: placement, scaling and status updates for those objects are "
                                "stalled. The operator's logs and the objects' events say why."),
                "runbook_url": f"{runbook_url}#infleetreconcileerrors",
            },
        },
        {
            "alert": "InfleetPoolSaturated",
            "expr": "max by (pool) (infleet_pool_saturated) == 1",
            "for": "30m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "AcceleratorPool {{ $labels.pool }} has been out of capacity for 30 minutes",
                "description": ("Replicas that belong on {{ $labels.pool }} do not fit, so infleet has fallen back "
                                "to other pools (often dearer or slower) for at least 30 minutes."),
                "runbook_url": f"{runbook_url}#infleetpoolsaturated",
            },
        },
    ]}]}
