"""`make demo`: the whole product on the local cluster, end to end.

Brings the control plane up, installs the CRDs and the example AcceleratorPool fleet, starts the operator
(a real `infleet run` process, logging to .cache/demo/operator.log), applies the example InferenceDeployments,
waits until the operator has placed them, and prints what a user would look at.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from infleet_devcluster import processes
from infleet_devcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / ".cache" / "demo"
EXAMPLES = REPO / "examples"
OPERATOR_METRICS_PORT = 18080


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


def up(args: argparse.Namespace) -> int:
    cluster = LocalCluster()
    say("local control plane with simulated accelerator pools")
    cluster.up()
    say("CRDs")
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    say("example AcceleratorPool fleet (examples/pools.yaml)")
    cluster.kubectl("apply", "-f", str(EXAMPLES / "pools.yaml"))

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    if processes.running(DEMO_DIR, "operator") is None:
        say(f"operator (infleet run), log: {DEMO_DIR / 'operator.log'}")
        processes.start("operator", [
            str(Path(sys.executable).parent / "infleet"), "run",
            "--kubeconfig", str(cluster.layout.kubeconfig), "--all-namespaces",
            "--metrics-port", str(OPERATOR_METRICS_PORT),
        ], DEMO_DIR)
    else:
        say("operator already running")

    manifests = deployment_manifests()
    say(f"example deployments: {', '.join(p.name for p in manifests)}")
    names: list[tuple[str, str]] = []
    for path in manifests:
        out = cluster.kubectl("apply", "-n", "default", "-f", str(path), "-o", "json").stdout
        doc = json.loads(out)
        for item in doc.get("items", [doc]):
            names.append(("default", item["metadata"]["name"]))

    placed = wait_placed(cluster, names, timeout=args.timeout)
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
Stop everything with: make demo-down
""")
    if missing:
        say(f"not placed within {args.timeout:.0f}s: {', '.join(missing)} (see {DEMO_DIR / 'operator.log'})")
        return 1
    return 0


def down(_args: argparse.Namespace) -> int:
    if processes.stop(DEMO_DIR, "operator"):
        say("operator stopped")
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
