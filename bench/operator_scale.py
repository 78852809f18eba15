"""Operator at fleet scale on the local control plane: create->Placed, spec change->reconciled, API load, CPU, RSS.

Bring a cluster up with many simulated nodes first, then point this at it (it creates one namespace and removes it):

    INFLEET_CLUSTER_PORT_OFFSET=700 .venv/bin/infleet-cluster up --nodes cpu-spot=600 --nodes cpu-on-demand=200 \\
        --nodes l4-spot=150 --nodes h100-on-demand=50
    .venv/bin/python bench/operator_scale.py --kubeconfig .cache/cluster/kubeconfig --deployments 200 1000

It applies the CRDs and examples/pools.yaml, starts `infleet run` (defaults: autoscaling on, leader election off
with --standalone), creates N InferenceDeployments as fast as the API server takes them (small CPU/GPU models with
a declared load, so each places 1-4 replicas), and measures, per N:

* create -> Placed: from each object's creationTimestamp to its Placed=True transition (second resolution);
* spec change -> reconciled: 50 deployments get a new maxReplicas; time until status.observedGeneration matches;
* API server requests by verb made while the operator ran (apiserver_request_total delta, all clients: the
  benchmark's own creates and polls are listed separately), operator CPU seconds and peak RSS;
* Pending pods caused by the operator at the end (Unschedulable worker pods: overcommit).

Results and the exact commands are in docs/benchmarks.md. Machines here are small and shared: compare runs side by
side, not with numbers from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
INFLEET = Path(sys.executable).parent / "infleet"
GROUP = "/apis/infleet.io/v1alpha1"


def kube(kubeconfig: Path) -> Any:
    sys.path[:0] = [str(ROOT / "operator")]
    from infleet.controller.kube import Kube

    return Kube.connect(kubeconfig)


def kubectl(kubeconfig: Path, *args: str) -> str:
    from infleet_devcluster.cluster import LocalCluster

    binary = LocalCluster().binary("kubectl")
    res = subprocess.run(
        [str(binary), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, check=True
    )
    return res.stdout


def deployment(name: str, i: int) -> dict[str, Any]:
    cpu = i % 3 != 0
    model = (
        {
            "name": f"m-{i % 7}",
            "source": "s3://models/small",
            "parametersBillions": 0.5,
            "families": ["cpu"],
            "modelClass": "llm-0.5b",
        }
        if cpu
        else {
            "name": f"g-{i % 5}",
            "source": "s3://models/llama",
            "parametersBillions": 8,
            "families": ["nvidia-gpu"],
            "modelClass": "llm-8b",
        }
    )
    return {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "slo": {"p99LatencyMs": 3000, "throughput": {"requestsPerSecond": 0.6 + (i % 4) * 0.5}},
            "scaling": {"minReplicas": 1, "maxReplicas": 4},
        },
    }


def apiserver_requests(client: Any) -> dict[str, float]:
    text = client.api.call_api(*client.api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"]))
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text.read().decode()):
        for s in family.samples:
            if s.name == "apiserver_request_total":
                out[s.labels["verb"]] = out.get(s.labels["verb"], 0.0) + s.value
    return out


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, RSS MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    return cpu, rss_kib / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def placed_times(client: Any, namespace: str) -> dict[str, float]:
    out = {}
    for d in client.list(f"{GROUP}/namespaces/{namespace}/inferencedeployments"):
        for c in (d.get("status") or {}).get("conditions") or []:
            if c["type"] == "Placed" and c["status"] == "True":
                created = datetime.fromisoformat(d["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
                at = datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00"))
                out[d["metadata"]["name"]] = (at - created).total_seconds()
    return out


def start_operator(kubeconfig: Path, namespace: str, operator_args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    """`infleet run` for one namespace, standalone, its log in a temporary file (returned with the process)."""
    log = tempfile.NamedTemporaryFile(prefix="operator-", suffix=".log", delete=False)  # noqa: SIM115 (the child writes it)
    command = [str(INFLEET), "run", "--kubeconfig", str(kubeconfig), "--standalone", "--namespace", namespace,
               "--metrics-port", "0", "--liveness-port", "0", "--log-format", "text", *operator_args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log.name


def run_one(kubeconfig: Path, n: int, timeout_s: float, operator_args: list[str]) -> dict[str, Any]:
    client = kube(kubeconfig)
    namespace = f"scale-{n}-{int(time.time()) % 100000}"
    client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    op, log_name = start_operator(kubeconfig, namespace, operator_args)
    try:
        time.sleep(3)
        before = apiserver_requests(client)
        cpu0, _ = proc_usage(op.pid)
        started = time.monotonic()
        path = f"{GROUP}/namespaces/{namespace}/inferencedeployments"
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.create(path, deployment(f"d{i:05d}", i)), range(n)))
        created_s = time.monotonic() - started
        peak_rss = 0.0
        placed: dict[str, float] = {}
        while time.monotonic() - started < timeout_s:
            placed = placed_times(client, namespace)
            peak_rss = max(peak_rss, proc_usage(op.pid)[1])
            if len(placed) >= n:
                break
            time.sleep(2)
        # Spec changes: 50 deployments get a new bound; time until the status reflects the new generation.
        edited = [f"d{i:05d}" for i in range(0, n, max(1, n // 50))][:50]
        stamps = {}
        for name in edited:
            obj = client.merge_patch(f"{path}/{name}", {"spec": {"scaling": {"maxReplicas": 5}}})
            stamps[name] = (time.monotonic(), obj["metadata"]["generation"])
        waits: dict[str, float] = {}
        while len(waits) < len(edited) and time.monotonic() - started < timeout_s + 120:
            for d in client.list(path):
                name = d["metadata"]["name"]
                seen = (d.get("status") or {}).get("observedGeneration")
                if name in stamps and name not in waits and seen == stamps[name][1]:
                    waits[name] = time.monotonic() - stamps[name][0]
            peak_rss = max(peak_rss, proc_usage(op.pid)[1])
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        cpu1, rss = proc_usage(op.pid)
        after = apiserver_requests(client)
        pods = client.list(f"/api/v1/namespaces/{namespace}/pods")
        pending = sum(
            1
            for p in pods
            if any(c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])
        )
        latencies = list(placed.values())
        return {
            "deployments": n,
            "nodes": len(client.list("/api/v1/nodes")),
            "create_s": round(created_s, 1),
            "placed": len(placed),
            "placed_p50_s": percentile(latencies, 0.5),
            "placed_p99_s": percentile(latencies, 0.99),
            "spec_change_p50_s": round(percentile(list(waits.values()), 0.5), 2),
            "spec_change_p99_s": round(percentile(list(waits.values()), 0.99), 2),
            "spec_changes_seen": len(waits),
            "requests_per_s": {
                v: round((after.get(v, 0) - before.get(v, 0)) / elapsed, 1)
                for v in sorted(after)
                if after.get(v, 0) - before.get(v, 0) > 0
            },
            "operator_cpu_s": round(cpu1 - cpu0, 1),
            "operator_cpu_share": round((cpu1 - cpu0) / elapsed, 2),
            "operator_rss_peak_mib": round(max(peak_rss, rss)),
            "pending_unschedulable_pods": pending,
            "elapsed_s": round(elapsed, 1),
            "operator_log": log_name,
        }
    finally:
        op.terminate()
        op.wait(30)
        client.delete(f"/api/v1/namespaces/{namespace}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--deployments", type=int, nargs="+", default=[200])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every deployment to be placed")
    p.add_argument("--operator-arg", action="append", default=[], help="extra `infleet run` argument (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args()
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "examples/pools.yaml"))
    results = [run_one(args.kubeconfig, n, args.timeout, args.operator_arg) for n in args.deployments]
    for r in results:
        print(json.dumps(r))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
