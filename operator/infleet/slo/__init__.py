"""Prometheus rules derived from the SLOs users declare: generic SLI recording rules (shipped by the chart)
and per-deployment multi-window multi-burn-rate alerts (maintained by the operator).

Everything here is a pure function of plain values, so the operator, the chart generator and the tests
produce byte-identical rules without a cluster.
"""

from infleet.slo.buckets import LATENCY_BUCKETS_S, BucketChoice, bucket_for_target
from infleet.slo.burnrate import (
    BURN_WINDOWS,
    BurnWindow,
    alert_name,
    burn_rate_alerts,
    error_ratio_record,
    rule_file,
)
from infleet.slo.deployment import PROMETHEUS_RULES_PLURAL, prometheus_rule_for
from infleet.slo.operator_alerts import operator_alerts
from infleet.slo.recording import recording_rules

__all__ = [
    "BURN_WINDOWS",
    "LATENCY_BUCKETS_S",
    "PROMETHEUS_RULES_PLURAL",
    "BucketChoice",
    "BurnWindow",
    "alert_name",
    "bucket_for_target",
    "burn_rate_alerts",
    "error_ratio_record",
    "operator_alerts",
    "prometheus_rule_for",
    "recording_rules",
    "rule_file",
]
