"""`make demo`: the whole product on the local cluster, end to end.

Brings the control plane up, installs the CRDs and the example AcceleratorPool fleet, starts the operator
(a real `infleet run` process, logging to .cache/demo/operator.log), applies the example InferenceDeployments,
waits until the operator has placed them, and prints what a user would look at.

The pods on simulated nodes run no containers, so the demo also starts one *real* worker process (the tiny
model on CPU, standing in for a `small-cpu-model` replica) and, when `prometheus` is installed, a Prometheus
that scrapes the worker and the operator with infleet's recording rules and the SLO burn-rate alerts
generated from the deployment's declared SLO, after a short, bounded burst of requests.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from infleet_devcluster import processes
from infleet_devcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / ".cache" / "demo"
EXAMPLES = REPO / "examples"
OPERATOR_METRICS_PORT = 18080
OPERATOR_HEALTH_PORT = 18081
WORKER_PORT = 18000
PROMETHEUS_PORT = 19090
DEMO_NAMESPACE = "default"


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def deployment_manifests() -> list[Path]:
    """Every example except the pool fleet, in a stable order."""
    return sorted(p for p in EXAMPLES.glob("*.yaml") if p.name != "pools.yaml")


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


def models_claim(cluster: LocalCluster) -> None:
    """The examples load from `pvc://models/...`: a static, read-only volume and its claim in the demo namespace."""
    pv: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "infleet-demo-models"},
        "spec": {"capacity": {"storage": "100Gi"}, "accessModes": ["ReadOnlyMany"], "storageClassName": "",
                 "hostPath": {"path": "/models"}, "claimRef": {"namespace": DEMO_NAMESPACE, "name": "models"}},
    }
    pvc: dict[str, Any] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "models", "namespace": DEMO_NAMESPACE},
        "spec": {"accessModes": ["ReadOnlyMany"], "storageClassName": "", "volumeName": "infleet-demo-models",
                 "resources": {"requests": {"storage": "100Gi"}}},
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([pv, pvc]))


def _get(url: str, data: bytes | None = None, timeout: float = 5) -> bytes:
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _get(url)
            return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False


def start_worker() -> bool:
    """One real worker (tiny model, CPU) standing in for a replica of `small-cpu-model`."""
    if processes.running(DEMO_DIR, "worker") is None:
        processes.start("worker", [
            str(Path(sys.executable).parent / "infleet-worker"), "serve", "--model", "tiny", "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(WORKER_PORT), "--state", "serving",
        ], DEMO_DIR)
    return _wait_http(f"http://127.0.0.1:{WORKER_PORT}/readyz", timeout=120)


def burst(requests: int = 40) -> int:
    """A short, bounded burst of completions at the local worker (loopback only), so metrics have data."""
    body = json.dumps({"model": "tiny", "prompt": "Summarise the fleet status", "max_tokens": 16}).encode()
    ok = 0
    for _ in range(requests):
        try:
            _get(f"http://127.0.0.1:{WORKER_PORT}/v1/completions", data=body, timeout=30)
            ok += 1
        except (urllib.error.URLError, OSError):
            pass
    return ok


def start_prometheus() -> bool:
    """Prometheus scraping the worker and the operator, with the rules infleet generates from the SLOs."""
    binary = shutil.which("prometheus")
    if binary is None:
        say("prometheus not installed (apt-get install prometheus): skipping the metrics stack")
        return False
    from infleet.slo import burn_rate_alerts, operator_alerts, recording_rules, rule_file
    from infleet.slo.render import to_yaml

    prom_dir = DEMO_DIR / "prometheus"
    prom_dir.mkdir(parents=True, exist_ok=True)
    spec = yaml.safe_load((EXAMPLES / "small-cpu-model.yaml").read_text())["spec"]["slo"]
    rules = {
        "slo.yaml": rule_file(burn_rate_alerts(DEMO_NAMESPACE, "small-cpu-model", spec["p99LatencyMs"] / 1000,
                                               ttft_target_s=spec.get("ttftP99Ms", 0) / 1000 or None)),
        "recording.yaml": recording_rules(),
        "operator-alerts.yaml": operator_alerts(),
    }
    for name, doc in rules.items():
        (prom_dir / name).write_text(to_yaml(doc))
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(prom_dir / n) for n in rules],
        "scrape_configs": [
            # The labels the chart's PodMonitor copies from the pod's infleet.io/* labels.
            {"job_name": "infleet-workers", "static_configs": [{
                "targets": [f"127.0.0.1:{WORKER_PORT}"],
                "labels": {"namespace": DEMO_NAMESPACE, "pod": "small-cpu-model-local-0",
                           "deployment": "small-cpu-model", "pool": "cpu-on-demand", "role": "serving"}}]},
            {"job_name": "infleet-operator", "honor_labels": True,
             "static_configs": [{"targets": [f"127.0.0.1:{OPERATOR_METRICS_PORT}"]}]},
        ],
    }
    (prom_dir / "prometheus.yml").write_text(yaml.safe_dump(config))
    if processes.running(DEMO_DIR, "prometheus") is None:
        processes.start("prometheus", [
            binary, f"--config.file={prom_dir / 'prometheus.yml'}", f"--storage.tsdb.path={prom_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--log.level=warn",
        ], DEMO_DIR)
    return _wait_http(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready", timeout=60)


def up(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    say("local control plane with simulated accelerator pools")
    cluster.up()
    say("CRDs")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    say("example AcceleratorPool fleet (examples/pools.yaml) and the `models` volume the examples load from")
    cluster.kubectl("apply", "-f", str(EXAMPLES / "pools.yaml"))
    models_claim(cluster)

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    if processes.running(DEMO_DIR, "operator") is None:
        say(f"operator (infleet run), log: {DEMO_DIR / 'operator.log'}")
        processes.start("operator", [
            str(Path(sys.executable).parent / "infleet"), "run",
            "--kubeconfig", str(cluster.layout.kubeconfig), "--all-namespaces",
            "--metrics-port", str(OPERATOR_METRICS_PORT),
            "--liveness", f"http://127.0.0.1:{OPERATOR_HEALTH_PORT}/healthz",
        ], DEMO_DIR)
    else:
        say("operator already running")

    manifests = deployment_manifests()
    say(f"example deployments: {', '.join(p.name for p in manifests)}")
    names: list[tuple[str, str]] = []
    for path in manifests:
        out = cluster.kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(path), "-o", "json").stdout
        doc = json.loads(out)
        names.extend((DEMO_NAMESPACE, item["metadata"]["name"]) for item in doc.get("items", [doc]))

    placed = wait_placed(cluster, names, timeout=args.timeout)
    say(f"a real worker process (tiny model, CPU) on 127.0.0.1:{WORKER_PORT}, log: {DEMO_DIR / 'worker.log'}")
    worker_ok = start_worker()
    prom_ok = start_prometheus() if worker_ok else False
    if worker_ok:
        say(f"a bounded burst of requests at the worker: {burst()} answered")
    if processes.running(DEMO_DIR, "operator") is None:
        print(processes.log_tail(DEMO_DIR / "operator.log"), file=sys.stderr)
        say("the operator exited; its log is above")
        return 1
    print()
    print(cluster.kubectl("get", "acceleratorpools").stdout)
    print(cluster.kubectl("get", "inferencedeployments", "-A").stdout)
    print(cluster.kubectl("get", "pods", "-A", "-l", "app.kubernetes.io/managed-by=infleet", "-o", "wide").stdout)
    missing = [f"{ns}/{n}" for ns, n in names if f"{ns}/{n}" not in placed]
    for key, cond in sorted(placed.items()):
        print(f"  {key}: Placed={cond}")
    print(f"""
The demo is running. Try:
  export KUBECONFIG={cluster.layout.kubeconfig}
  kubectl get infd -A -w                      # placements, replicas and cost per hour
  kubectl describe infd chat-llm              # conditions, events, the last decision and its reason
  kubectl explain infd.spec.slo               # the API documents itself
  curl -s localhost:{OPERATOR_METRICS_PORT}/metrics | grep ^infleet_   # the operator's own metrics
  .venv/bin/infleet simulate --trace ../shared/traces/azure-llm-2023-conv.csv --compare   # what-if on real traffic
  curl -s localhost:{WORKER_PORT}/v1/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "tiny", "prompt": "Hello", "max_tokens": 16}}'             # the OpenAI-compatible worker""")
    if prom_ok:
        print(f"""  Prometheus: http://127.0.0.1:{PROMETHEUS_PORT}  (rules: Status > Rules; try
    deployment:infleet_worker_request_latency_seconds:p99_5m  or  infleet_deployment_replicas)
  Grafana dashboards to import: charts/infleet/dashboards/*.json (datasource: that Prometheus)""")
    print("Stop everything with: make demo-down\n")
    if not worker_ok:
        say(f"the local worker did not become ready (see {DEMO_DIR / 'worker.log'})")
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
