"""Every dashboard panel's query, run against a real Prometheus scraping a real worker (serving the built-in
tiny model on CPU, under load) and the real operator (reconciling an InferenceDeployment on the local control
plane), returns data. Prometheus also loads the chart's recording rules and the deployment's SLO rules from
infleet.slo, and every recorded series must appear too.

Prometheus scrapes the worker as the chart's PodMonitor would: with namespace, pod, deployment, pool and role
target labels (the pod itself runs on a kwok node, so the worker process runs here).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.slo import burn_rate_alerts, operator_alerts, recording_rules, rule_file
from infleet.slo.render import to_yaml
from infleet_devcluster.ports import free_port
from tests.integration.chart.chart_cluster import (
    CHART,
    apply_crds,
    cleanup,
    deployment_manifest,
    operator_process,
    pool_manifest,
    unique,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

PROMETHEUS = shutil.which("prometheus")
RATE_INTERVAL = "15s"  # what Grafana's $__rate_interval becomes with a 1s scrape interval and a short range


def http_json(url: str, data: bytes | None = None, timeout: float = 10) -> Any:
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (apt-get install prometheus); CI installs it")
    tmp = tmp_path_factory.mktemp("dash")
    ns, pool = unique("chart-dash"), unique("dash-cpu")
    apply_crds(cluster)
    cluster.kubectl("create", "namespace", ns)
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(pool_manifest(pool)))
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(deployment_manifest(ns, "chat", pool)))
    op_port, op_health, worker_port, prom_port = free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with operator_process(cluster.kubeconfig, tmp / "operator.log", f"--namespace={ns}", "--standalone",
                              "--interval=2", f"--metrics-port={op_port}",
                              "--bind-address=127.0.0.1", f"--liveness-port={op_health}"):
            worker_log = (tmp / "worker.log").open("wb")
            procs.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "infleet-worker"), "serve", "--model", "tiny", "--device", "cpu",
                 "--host", "127.0.0.1", "--port", str(worker_port), "--state", "serving"],
                stdout=worker_log, stderr=subprocess.STDOUT))
            rules = tmp / "slo.yaml"
            rules.write_text(to_yaml(rule_file(burn_rate_alerts(ns, "chat", 3.0, ttft_target_s=0.8))))
            (tmp / "recording.yaml").write_text(to_yaml(recording_rules()))
            (tmp / "operator-alerts.yaml").write_text(to_yaml(operator_alerts()))
            config = {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                "rule_files": [str(rules), str(tmp / "recording.yaml"), str(tmp / "operator-alerts.yaml")],
                "scrape_configs": [
                    {"job_name": "infleet-workers", "static_configs": [{
                        "targets": [f"127.0.0.1:{worker_port}"],
                        "labels": {"namespace": ns, "pod": f"chat-{pool}-0", "deployment": "chat", "pool": pool,
                                   "role": "serving"}}]},
                    # As the chart's ServiceMonitor: the operator's own namespace/deployment labels win.
                    {"job_name": "infleet-operator", "honor_labels": True,
                     "static_configs": [{"targets": [f"127.0.0.1:{op_port}"]}]},
                ],
            }
            (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
            prom_log = (tmp / "prometheus.log").open("wb")
            procs.append(subprocess.Popen(
                [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                stdout=prom_log, stderr=subprocess.STDOUT))
            wait_for("the worker to be ready", lambda: ready(f"http://127.0.0.1:{worker_port}/readyz"), timeout=120)
            wait_for("prometheus to be ready", lambda: ready(f"http://127.0.0.1:{prom_port}/-/ready"), timeout=60)
            stop = threading.Event()
            sent: list[int] = []
            load = [threading.Thread(target=drive_load, args=(worker_port, stop, sent), daemon=True) for _ in range(3)]
            for t in load:
                t.start()
            try:
                yield {"ns": ns, "pool": pool, "prom": f"http://127.0.0.1:{prom_port}", "sent": sent, "tmp": tmp}
            finally:
                stop.set()
                for t in load:
                    t.join(timeout=30)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        cleanup(cluster, (ns, "inferencedeployments.infleet.io", "chat"), (None, "acceleratorpools.infleet.io", pool))
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def drive_load(port: int, stop: threading.Event, sent: list[int], max_requests: int = 400) -> None:
    """Bounded load: short completions until stopped or max_requests are sent (loopback only)."""
    body = json.dumps({"model": "tiny", "prompt": "The quick brown fox", "max_tokens": 16}).encode()
    for _ in range(max_requests):
        if stop.is_set():
            return
        try:
            http_json(f"http://127.0.0.1:{port}/v1/completions", body, timeout=30)
            sent.append(1)
        except OSError:
            time.sleep(0.2)


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        doc = http_json(url)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"prometheus rejected {expr!r}: {exc.read().decode()}") from exc
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every target of every panel."""
    out = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        d = json.loads(path.read_text())
        for p in d["panels"]:
            for t in p.get("targets", []):
                out.append((path.stem, p["title"], t["expr"]))
    return out


def variable_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted((CHART / "dashboards").glob("*.json")):
        for v in json.loads(path.read_text())["templating"]["list"]:
            if v["type"] == "query":
                out.append((v["name"], v["query"]["query"]))
    return out


def resolve_variable(prom: str, q: str, values: dict[str, str]) -> list[str]:
    """Run a Grafana `label_values(selector, label)` variable query through the labels API."""
    m = re.fullmatch(r"label_values\((.*), (\w+)\)", q)
    assert m, q
    selector = substitute(m.group(1), values)
    url = f"{prom}/api/v1/label/{m.group(2)}/values?" + urllib.parse.urlencode({"match[]": selector})
    found: list[str] = http_json(url)["data"]
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for k, v in values.items():
        expr = expr.replace(f"${k}", v)
    assert "$" not in expr, f"unresolved variable in {expr!r}"
    return expr


def test_every_panel_query_returns_data(stack: dict[str, Any]) -> None:
    prom = stack["prom"]
    values = {"namespace": stack["ns"], "deployment": "chat"}

    def variables_resolve() -> bool:
        return all(values[name] in resolve_variable(prom, q, values) for name, q in variable_queries())

    try:
        wait_for("the dashboards' variables to list the test deployment", variables_resolve, timeout=120)
    except AssertionError as exc:
        pytest.fail(f"{exc}{_logs(stack)}")
    queries = panel_queries()
    assert len(queries) > 30

    def missing() -> list[str]:
        return [f"{dash} / {title}: {expr}" for dash, title, expr in queries
                if not query(prom, substitute(expr, values))]

    last: list[str] = []

    def all_have_data() -> bool:
        nonlocal last
        last = missing()
        return not last

    try:
        wait_for("every panel query to return data", all_have_data, timeout=150, interval=3)
    except AssertionError:
        pytest.fail("panels without data after 150s:\n" + "\n".join(last) + _logs(stack))
    assert sum(stack["sent"]) > 0


def test_latency_panels_show_real_numbers(stack: dict[str, Any]) -> None:
    """The load produced finite latency percentiles and a cost per million tokens (not NaN, not absent)."""
    prom, ns = stack["prom"], stack["ns"]
    p99 = query(prom, "histogram_quantile(0.99, sum by (le) (rate(infleet_worker_request_latency_seconds_bucket"
                      f'{{namespace="{ns}", deployment="chat"}}[{RATE_INTERVAL}])))')
    assert p99 and 0 < float(p99[0]["value"][1]) < 60
    target = query(prom, f'infleet_deployment_slo_latency_target_seconds{{namespace="{ns}", slo="p99"}}')
    assert target and float(target[0]["value"][1]) == 3.0
    cost = query(prom, f'deployment:infleet_cost_per_million_tokens_usd:rate5m{{namespace="{ns}"}}')
    assert cost and float(cost[0]["value"][1]) > 0


def test_every_recording_rule_produces_series(stack: dict[str, Any]) -> None:
    prom = stack["prom"]
    records = {r["record"] for g in recording_rules()["groups"] for r in g["rules"]}
    records |= {r["record"] for g in burn_rate_alerts(stack["ns"], "chat", 3.0, ttft_target_s=0.8)["spec"]["groups"]
                for r in g["rules"] if "record" in r}

    def empty() -> list[str]:
        return sorted(r for r in records if not query(prom, r))

    last: list[str] = []

    def none_empty() -> bool:
        nonlocal last
        last = empty()
        return not last

    try:
        wait_for("every recorded series", none_empty, timeout=90, interval=3)
    except AssertionError:
        pytest.fail(f"recording rules without series: {last}" + _logs(stack))
    rules = http_json(f"{prom}/api/v1/rules")["data"]["groups"]
    unhealthy = [r["name"] for g in rules for r in g["rules"] if r.get("health") != "ok"]
    assert not unhealthy, unhealthy


def test_healthy_deployment_does_not_page(stack: dict[str, Any]) -> None:
    """The tiny model answers far under its 3s target: no burn-rate alert is firing or pending."""
    alerts = query(stack["prom"], f'ALERTS{{namespace="{stack["ns"]}"}}')
    assert not alerts, alerts


def _logs(stack: dict[str, Any]) -> str:
    tmp: Path = stack["tmp"]
    parts = []
    for name in ("operator.log", "worker.log", "prometheus.log"):
        path = tmp / name
        if path.exists():
            parts.append(f"\n--- {name} (tail) ---\n" + path.read_text(errors="replace")[-1500:])
    return "".join(parts)
