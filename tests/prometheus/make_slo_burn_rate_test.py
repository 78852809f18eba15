"""Writes slo-burn-rate.test.yaml (promtool unit tests of the burn-rate alerts).

Run: python tests/prometheus/make_slo_burn_rate_test.py > tests/prometheus/slo-burn-rate.test.yaml
The scenarios, and which windows must fire in each, are stated here by hand (see the comments: each one's
ratios are worked out there); only the annotation wording is taken from the generator. tests/unit/slo checks
the YAML is current.
"""
# ruff: noqa: E501
from infleet.slo import burn_rate_alerts
from infleet.slo.render import to_yaml

W = {"1h": ("5m", 14.4, "critical"), "6h": ("30m", 6.0, "critical"), "1d": ("2h", 3.0, "warning"), "3d": ("6h", 1.0, "warning")}

def ann(dep, target, slo, long, value_str, ttft=None):
    rule = burn_rate_alerts("demo", dep, target if slo == "p99" else 0.5, ttft_target_s=ttft)
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            if r.get("alert") and r["labels"]["slo"] == slo and r["labels"]["long_window"] == long:
                a = dict(r["annotations"])
                a["description"] = a["description"].replace("{{ $value | humanizePercentage }}", value_str)
                return a
    raise LookupError(f"no {slo} alert for the {long} window")

def alert(dep, target, slo, long, value_str, ttft=None):
    short, _, sev = W[long]
    return {"exp_labels": {"namespace": "demo", "deployment": dep, "slo": slo, "severity": sev,
                           "long_window": long, "short_window": short},
            "exp_annotations": ann(dep, target, slo, long, value_str, ttft)}

def series(dep, le, good, total, metric="infleet_worker_request_latency_seconds", pod="w-0"):
    lab = f'namespace="demo", deployment="{dep}", pod="{pod}", model="tiny"'
    return [{"series": f'{metric}_bucket{{{lab}, le="{le}"}}', "values": good},
            {"series": f'{metric}_count{{{lab}}}', "values": total}]

P99 = "InfleetLatencySLOBudgetBurn"
tests = []
def case(name, input_series, eval_time, alerts, exprs=(), alertname=P99):
    t = {"name": name, "interval": "1m", "input_series": input_series,
         "alert_rule_test": [{"eval_time": eval_time, "alertname": alertname, "exp_alerts": alerts}]}
    if exprs:
        t["promql_expr_test"] = [{"expr": e, "eval_time": eval_time, "exp_samples": [{"labels": labels, "value": v}]} for e, labels, v in exprs]
    tests.append(t)

def rec(w):
    return f'infleet:slo_latency_error_ratio:rate{w}{{deployment="chat", slo="p99"}}'


CHAT_P99 = '{deployment="chat", namespace="demo", slo="p99"}'

# A: 3 days at 0.5% slow (half the budget): nothing fires.
case("healthy: 0.5% slow for 3d, no alert", series("chat", "0.5", "0+199x4320", "0+200x4320"), "3d", [])
# A2: no traffic at all: 0/0 is NaN, nothing fires.
case("no traffic: nothing fires", series("chat", "0.5", "0x4320", "0x4320"), "3d", [])
# B: steady 2% slow for 3d: only 3d/6h (threshold 1%) fires; 1d/2h needs 3%.
case("slow burn 2% for 3d: only the 3d/6h ticket", series("chat", "0.5", "0+98x4320", "0+100x4320"), "3d",
     [alert("chat", 0.5, "p99", "3d", "2%")])
# C: 0% for 2d, then 5% slow for 1d: 1d/2h (3%) and 3d/6h (3d ratio 1.67%) fire; 6h/30m needs 6%.
case("5% slow for the last 1d: 1d/2h and 3d/6h tickets, no page",
     series("chat", "0.5", "0+60x2880 172857+57x1439", "0+60x4320"), "3d",
     [alert("chat", 0.5, "p99", "1d", "5%"), alert("chat", 0.5, "p99", "3d", "1.667%")])
# H: 0% until the last 6h, then 10% slow: only 6h/30m fires (1h needs 14.4%, 1d ratio 2.5% < 3%, 3d 0.83% < 1%).
case("10% slow for the last 6h: only the 6h/30m page",
     series("chat", "0.5", "0+60x3960 237654+54x359", "0+60x4320"), "3d",
     [alert("chat", 0.5, "p99", "6h", "10%")])
# G: 0% until the last 1h, then 15% slow (just over 14.4%): only 1h/5m fires (6h ratio 2.5% < 6%).
case("15% slow for the last 1h: only the 1h/5m page",
     series("chat", "0.5", "0+60x4260 255651+51x59", "0+60x4320"), "3d",
     [alert("chat", 0.5, "p99", "1h", "15%")])
# G2: 14% slow for the last 1h, just under 14.4%: nothing fires.
case("14% slow for the last 1h: just under the page threshold",
     series("chat", "0.5", "0+50x4260 213043+43x59", "0+50x4320"), "3d", [])
# F: the same burn, but it stopped 10m ago: the 1h ratio is still 16.7% (> 14.4%), the 5m ratio is 0: the short
# window resets the page.
case("burn stopped 10m ago: the short window keeps the 1h/5m page quiet",
     series("chat", "0.5", "0+60x4250 255048+48x59 257940+60x9", "0+60x4320"), "3d", [],
     exprs=[(rec("1h") + " > bool 0.144", CHAT_P99, 1), (rec("5m"), "{__name__=\"infleet:slo_latency_error_ratio:rate5m\", deployment=\"chat\", namespace=\"demo\", slo=\"p99\"}", 0)])
# Two pods: the SLI is over the deployment, not per pod. One pod is 40% slow, the other healthy: 20% overall.
case("two pods aggregate to one deployment SLI",
     series("chat", "0.5", "0+18x120", "0+30x120", pod="w-0") + series("chat", "0.5", "0+30x120", "0+30x120", pod="w-1"),
     "2h", [alert("chat", 0.5, "p99", w, "20%") for w in ("1h", "6h", "1d", "3d")])
# TTFT SLO (target 0.25s) burns while the latency SLO is healthy.
ttft = "infleet_worker_time_to_first_token_seconds"
case("TTFT burn fires the TTFT alert",
     series("chat", "0.25", "0+48x120", "0+60x120", metric=ttft) + series("chat", "0.5", "0+60x120", "0+60x120"),
     "2h", [alert("chat", 0.5, "ttft", w, "20%", ttft=0.25) for w in ("1h", "6h", "1d", "3d")],
     alertname="InfleetTTFTSLOBudgetBurn")
case("TTFT burn does not fire the latency alert",
     series("chat", "0.25", "0+48x120", "0+60x120", metric=ttft) + series("chat", "0.5", "0+60x120", "0+60x120"),
     "2h", [])
# edge: target 0.6s is measured at the 0.75s bucket. 30% of requests take 0.5-0.75s: within the SLO.
case("target between buckets: 0.6s is measured at 0.75s, requests at 0.7s are good",
     series("edge", "0.5", "0+42x120", "0+60x120") + series("edge", "0.75", "0+60x120", "0+60x120")[:1],
     "2h", [])
case("target between buckets: slow beyond 0.75s burns",
     series("edge", "0.5", "0+42x120", "0+60x120") + series("edge", "0.75", "0+48x120", "0+60x120")[:1],
     "2h", [alert("edge", 0.6, "p99", w, "20%") for w in ("1h", "6h", "1d", "3d")])
# gofmt: target 1s; a Go client writes le="1", Python le="1.0": both are matched.
for le in ("1", "1.0"):
    case(f'le="{le}" spelling is matched', series("gofmt", le, "0+48x120", "0+60x120"), "2h",
         [alert("gofmt", 1.0, "p99", w, "20%") for w in ("1h", "6h", "1d", "3d")])

doc = {"rule_files": ["rules/slo-demo-chat.yaml", "rules/slo-demo-edge.yaml", "rules/slo-demo-gofmt.yaml"],
       "evaluation_interval": "10m", "tests": tests}
print("# Multi-window multi-burn-rate alerts (infleet.slo.burn_rate_alerts): each alert fires and stays quiet\n"
      "# on synthetic series. Run: promtool test rules tests/prometheus/*.test.yaml\n"
      "# Written by make_slo_burn_rate_test.py (the scenarios are explained there); do not edit by hand.\n"
      "# Rule files under rules/ are generated (tests/unit/slo checks they are current).\n" + to_yaml(doc))
