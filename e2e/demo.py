"""`make demo`: the whole product on the local cluster, end to end.

Brings the control plane up, installs the CRDs, applies `examples/` (the AcceleratorPool fleet, the `models`
claim and the example InferenceDeployments) into the namespace `infleet-demo`, which is labelled
`infleet.dev/run-pods=true` so its worker pods really run (the local pod runner starts an `infleet-worker` with
the built-in tiny model on CPU behind each pod IP), starts the operator (a real `infleet run` process, logging to
.cache/demo/operator.log), waits until the operator has placed the deployments and a worker answers, sends a short
bounded burst of requests, and starts a Prometheus that discovers the worker pods through the Kubernetes API
(labels as the chart's PodMonitor sets them), scrapes them and the operator, and evaluates infleet's recording
rules and the SLO burn-rate alerts generated from the deployments' SLOs. It prints where to look.

Prometheus is the one on PATH (the Debian/Ubuntu `prometheus` package, which CI installs) or else the pinned
build from the Go module proxy (`infleet-cluster build prometheus`, cached like the other tools; without a web
UI, which the module does not ship: use its HTTP API or Grafana).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from infleet_devcluster import processes
from infleet_devcluster.cluster import LocalCluster
from infleet_devcluster.tools import BuildError, binary_path, ensure_tools

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / ".cache" / "demo"
EXAMPLES = REPO / "examples"
DASHBOARDS = REPO / "charts" / "infleet" / "dashboards"
OPERATOR_METRICS_PORT = 18080
OPERATOR_HEALTH_PORT = 18081
PROMETHEUS_PORT = 19090
DEMO_NAMESPACE = "infleet-demo"
RATE_INTERVAL = "30s"


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def deployments_in_examples() -> list[str]:
    """The names of the InferenceDeployments in examples/."""
    names = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "InferenceDeployment":
                names.append(str(doc["metadata"]["name"]))
    return names


def wait_placed(cluster: LocalCluster, names: list[tuple[str, str]], timeout: float) -> dict[str, str]:
    """Wait for each (namespace, name) to report a Placed condition; return name -> 'status: message'."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while time.monotonic() < deadline:
        out = cluster.kubectl("get", "inferencedeployments", "-A", "-o", "json", check=False)
        if out.returncode == 0:
            for item in json.loads(out.stdout)["items"]:
                key = f"{item['metadata']['namespace']}/{item['metadata']['name']}"
                for c in item.get("status", {}).get("conditions", []):
                    if c.get("type") == "Placed":
                        seen[key] = f"{c.get('status')}: {c.get('message', '')}"
        if all(f"{ns}/{n}" in seen for ns, n in names):
            return seen
        time.sleep(1)
    return seen


def _http(url: str, data: bytes | None = None, timeout: float = 5) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _http(url)
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def serving_pod_ips(cluster: LocalCluster, deployment: str) -> list[str]:
    out = cluster.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-l",
                          f"infleet.io/deployment={deployment},infleet.io/role=serving", "-o", "json", check=False)
    if out.returncode != 0:
        return []
    ips = []
    for pod in json.loads(out.stdout)["items"]:
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        if ready and pod["status"].get("podIP"):
            ips.append(str(pod["status"]["podIP"]))
    return ips


def wait_serving(cluster: LocalCluster, deployment: str, timeout: float) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ips = serving_pod_ips(cluster, deployment)
        if ips:
            return ips
        time.sleep(1)
    return []


def burst(ips: list[str], model: str, requests: int = 40) -> int:
    """A short, bounded burst of completions at real worker pods (loopback pod IPs only)."""
    body = json.dumps({"model": model, "prompt": "Summarise the fleet status", "max_tokens": 16}).encode()
    ok = 0
    for i in range(requests):
        try:
            _http(f"http://{ips[i % len(ips)]}:8000/v1/completions", data=body, timeout=30)
            ok += 1
        except (urllib.error.URLError, OSError):
            pass
    return ok


def reads_config(prometheus: str, config: Path) -> bool:
    """Whether this Prometheus build accepts the demo's config. Distribution packages (Debian's) are built without
    Kubernetes service discovery and refuse `kubernetes_sd_configs`; their promtool, beside them, says so."""
    promtool = Path(prometheus).with_name("promtool")
    if not promtool.exists():
        return True
    check = subprocess.run([str(promtool), "check", "config", "--syntax-only", str(config)],
                           capture_output=True, text=True, check=False)
    return check.returncode == 0


def prometheus_binary(cluster: LocalCluster, config: Path) -> str | None:
    """`prometheus` on PATH when it can read ``config``, else the pinned build (built once, then cached)."""
    found = shutil.which("prometheus")
    if found and reads_config(found, config):
        return found
    if found:
        say(f"{found} cannot read the demo's config (no Kubernetes service discovery in that build): using the "
            f"pinned Prometheus {cluster.versions.prometheus}")
    pinned = binary_path("prometheus", cluster.versions.prometheus)
    if not pinned.exists():
        say(f"no prometheus on PATH: building the pinned Prometheus {cluster.versions.prometheus} from the Go module "
            "proxy (once; cached in ~/.cache/infleet/bin)")
        try:
            ensure_tools(cluster.versions, only=("prometheus",))
        except BuildError as exc:
            say(f"could not build Prometheus ({exc}); skipping the metrics stack")
            return None
    return str(pinned)


def _relabel_from_pod_labels() -> list[dict[str, Any]]:
    """The target labels the chart's PodMonitor sets (namespace, pod, deployment, pool, role)."""
    meta = "__meta_kubernetes_pod_label_"
    return [
        {"source_labels": [f"{meta}app_kubernetes_io_managed_by"], "regex": "infleet", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_container_port_number"], "regex": "8000", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_ready"], "regex": "true", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": [f"{meta}infleet_io_deployment"], "target_label": "deployment"},
        {"source_labels": [f"{meta}infleet_io_pool"], "target_label": "pool"},
        {"source_labels": [f"{meta}infleet_io_role"], "target_label": "role"},
    ]


def write_prometheus_config(cluster: LocalCluster, prom_dir: Path) -> Path:
    from infleet.slo import burn_rate_alerts, operator_alerts, recording_rules, rule_file
    from infleet.slo.render import to_yaml

    prom_dir.mkdir(parents=True, exist_ok=True)
    rules: dict[str, Any] = {"recording.yaml": recording_rules(), "operator-alerts.yaml": operator_alerts()}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "InferenceDeployment":
                continue
            slo, name = doc["spec"]["slo"], doc["metadata"]["name"]
            rules[f"slo-{name}.yaml"] = rule_file(burn_rate_alerts(
                DEMO_NAMESPACE, name, slo["p99LatencyMs"] / 1000, ttft_target_s=slo.get("ttftP99Ms", 0) / 1000 or None))
    for name, doc in rules.items():
        (prom_dir / name).write_text(to_yaml(doc))
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(prom_dir / n) for n in rules],
        "scrape_configs": [
            {"job_name": "infleet-workers",
             "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(cluster.layout.kubeconfig),
                                        "namespaces": {"names": [DEMO_NAMESPACE]}}],
             "relabel_configs": _relabel_from_pod_labels()},
            {"job_name": "infleet-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{OPERATOR_METRICS_PORT}"]}]},
        ],
    }
    path = prom_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def start_prometheus(cluster: LocalCluster) -> bool:
    prom_dir = DEMO_DIR / "prometheus"
    config = write_prometheus_config(cluster, prom_dir)
    binary = prometheus_binary(cluster, config)
    if binary is None:
        return False
    if processes.running(DEMO_DIR, "prometheus") is None:
        processes.start("prometheus", [
            binary, f"--config.file={config}", f"--storage.tsdb.path={prom_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--log.level=warn",
        ], DEMO_DIR)
    if _wait_http(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready", timeout=60):
        return True
    print(processes.log_tail(DEMO_DIR / "prometheus.log"), file=sys.stderr)
    say(f"Prometheus ({binary}) did not become ready; its log is above. Skipping the metrics stack")
    return False


def query(expr: str) -> list[Any]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        result: list[Any] = json.loads(_http(url, timeout=10))["data"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return []
    return result


def dashboard_queries(deployment: str) -> list[str]:
    """Every panel query of the chart's dashboards, with the variables set to one demo deployment."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash.get("panels", []):
            for target in panel.get("targets", []):
                expr = str(target.get("expr", ""))
                for var, value in (("$__rate_interval", RATE_INTERVAL), ("$namespace", DEMO_NAMESPACE),
                                   ("$deployment", deployment)):
                    expr = expr.replace(var, value)
                if expr and "$" not in expr:
                    out.append(expr)
    return out


def check_metrics(deployment: str, ips: list[str], model: str, timeout: float = 90) -> tuple[int, int, int]:
    """(workers scraped, dashboard queries answering, of how many), with a trickle of requests meanwhile (rates
    over the last 30 s need traffic in the last 30 s): at most 5 requests every 5 s, until all answer."""
    exprs = dashboard_queries(deployment)
    deadline = time.monotonic() + timeout
    answering, workers = 0, 0
    while time.monotonic() < deadline:
        burst(ips, model, requests=5)
        workers = len(query('up{job="infleet-workers"} == 1'))
        answering = sum(1 for e in exprs if query(e))
        if workers and answering == len(exprs):
            break
        time.sleep(5)
    return workers, answering, len(exprs)


def up(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    say("local control plane with simulated accelerator pools and the pod runner")
    cluster.up()
    say("CRDs")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    say(f"namespace {DEMO_NAMESPACE}, labelled infleet.dev/run-pods=true: its worker pods run real workers")
    cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": DEMO_NAMESPACE, "labels": {"infleet.dev/run-pods": "true"}}}))

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    if processes.running(DEMO_DIR, "operator") is None:
        say(f"operator (infleet run), log: {DEMO_DIR / 'operator.log'}")
        processes.start("operator", [
            str(Path(sys.executable).parent / "infleet"), "run",
            "--kubeconfig", str(cluster.layout.kubeconfig), "--all-namespaces",
            "--metrics-port", str(OPERATOR_METRICS_PORT),
            "--bind-address", "127.0.0.1", "--liveness-port", str(OPERATOR_HEALTH_PORT),
        ], DEMO_DIR)
    else:
        say("operator already running")

    say(f"kubectl apply -n {DEMO_NAMESPACE} -f examples/   (pools, the models claim, the example deployments)")
    cluster.kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(EXAMPLES))
    names = [(DEMO_NAMESPACE, n) for n in deployments_in_examples()]
    placed = wait_placed(cluster, names, timeout=args.timeout)
    say("waiting for a Ready worker pod of small-cpu-model (a real infleet-worker behind the pod IP)")
    ips = wait_serving(cluster, "small-cpu-model", timeout=args.timeout)
    model = "qwen2.5-0.5b-instruct"
    if ips:
        say(f"a bounded burst of requests at {', '.join(ips)}: {burst(ips, model)} answered")
    prom_ok = start_prometheus(cluster) if ips else False
    if prom_ok:
        say("Prometheus is up; checking that the workers are scraped and the dashboards' queries answer")
    metrics = check_metrics("small-cpu-model", ips, model) if prom_ok else (0, 0, 0)
    if processes.running(DEMO_DIR, "operator") is None:
        print(processes.log_tail(DEMO_DIR / "operator.log"), file=sys.stderr)
        say("the operator exited; its log is above")
        return 1
    print()
    print(cluster.kubectl("get", "acceleratorpools").stdout)
    print(cluster.kubectl("get", "inferencedeployments", "-A").stdout)
    print(cluster.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-o", "wide").stdout)
    # Read again: the first Placed condition may predate a watch event (the models claim applied with the
    # deployments), and what the operator says now is what the table above shows.
    placed = {**placed, **wait_placed(cluster, names, timeout=10)}
    missing = [f"{ns}/{n}" for ns, n in names if f"{ns}/{n}" not in placed]
    for key, cond in sorted(placed.items()):
        print(f"  {key}: Placed={cond}")
    ip = ips[0] if ips else "<pod IP>"
    print(f"""
The demo is running. Try:
  export KUBECONFIG={cluster.layout.kubeconfig}
  kubectl get infd -n {DEMO_NAMESPACE} -w            # placements, replicas and cost per hour
  kubectl describe infd -n {DEMO_NAMESPACE} chat-llm # conditions, events, the last decision and its reason
  kubectl get pods -n {DEMO_NAMESPACE} -o wide       # every pod IP answers: a real worker (tiny model, CPU)
  kubectl explain infd.spec.slo                      # the API documents itself
  curl -s {ip}:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "qwen2.5-0.5b-instruct", "prompt": "Hello", "max_tokens": 16}}'   # OpenAI-compatible
  curl -s localhost:{OPERATOR_METRICS_PORT}/metrics | grep ^infleet_   # the operator's own metrics
  .venv/bin/infleet simulate --trace ../shared/traces/azure-llm-2023-conv.csv --compare   # what-if on real traffic
  logs: operator {DEMO_DIR / 'operator.log'}; workers {cluster.layout.run / 'pods'}/*.log""")
    if prom_ok:
        workers, answering, total = metrics
        ui = (" in its UI or" if shutil.which("prometheus") else "") + \
            f" with curl 'http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?query=...'"
        print(f"""  Prometheus: http://127.0.0.1:{PROMETHEUS_PORT}  ({workers} worker pods scraped; {answering} of \
{total} dashboard panel queries answer). Query it{ui}:
    deployment:infleet_worker_request_latency_seconds:p99_5m    infleet_deployment_replicas    ALERTS
  rules: {DEMO_DIR / 'prometheus'}/*.yaml; Grafana dashboards to import: charts/infleet/dashboards/*.json""")
    print("Stop everything with: make demo-down\n")
    if not ips:
        say(f"no worker pod of small-cpu-model became Ready (see {cluster.layout.run / 'pod-runner.log'})")
        return 1
    if missing:
        say(f"not placed within {args.timeout:.0f}s: {', '.join(missing)} (see {DEMO_DIR / 'operator.log'})")
        return 1
    return 0


def down(_args: argparse.Namespace) -> int:
    for name in ("prometheus", "worker", "operator"):
        if processes.stop(DEMO_DIR, name):
            say(f"{name} stopped")
    LocalCluster().down()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--timeout", type=float, default=180)
    u.set_defaults(func=up)
    sub.add_parser("down").set_defaults(func=down)
    args = parser.parse_args()
    try:
        return int(args.func(args))
    except subprocess.CalledProcessError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
