"""Operator at fleet scale on the local control plane: create->Placed, spec change->reconciled, API load, CPU, RSS.

Bring a cluster up with many simulated nodes first, then point this at it (it creates one namespace and removes it):

    INFLEET_CLUSTER_PORT_OFFSET=700 .venv/bin/infleet-cluster up --nodes cpu-spot=600 --nodes cpu-on-demand=200 \\
        --nodes l4-spot=150 --nodes h100-on-demand=50
    .venv/bin/python bench/operator_scale.py --kubeconfig .cache/cluster/kubeconfig --deployments 200 1000

It applies the CRDs and examples/pools.yaml, starts `infleet run` (defaults: autoscaling on, leader election off
with --standalone), creates N InferenceDeployments as fast as the API server takes them (or one every
--create-interval seconds, for the latency of a lone creation) (small CPU/GPU models with
a declared load, so each places 1-4 replicas), and measures, per N:

* create -> Placed: from each create call's return to the first watch event showing Placed=True;
* spec change -> reconciled: 50 deployments get a new maxReplicas at once; time from each patch's return to the
  first watch event whose status.observedGeneration matches (a burst: the last waits for the 49 before it);
* the operator's own queue wait per lane (urgent: new or edited specs) and reconcile time, from its /metrics
  (bucket upper bounds: "p99 <= x s");
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
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from infleet_devcluster.ports import free_port

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


def start_operator(
    kubeconfig: Path, namespace: str, operator_args: list[str], metrics_port: int = 0
) -> tuple[subprocess.Popen[bytes], str]:
    """`infleet run` for one namespace, standalone, its log in a temporary file (returned with the process)."""
    log = tempfile.NamedTemporaryFile(prefix="operator-", suffix=".log", delete=False)  # noqa: SIM115 (the child writes it)
    command = [str(INFLEET), "run", "--kubeconfig", str(kubeconfig), "--standalone", "--namespace", namespace,
               "--metrics-port", str(metrics_port), "--bind-address", "127.0.0.1", "--liveness-port", "0",
               "--log-format", "text", *operator_args]
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log.name



def histogram_quantiles(text: str, name: str, label: str) -> dict[str, dict[str, float]]:
    """p50/p99 per label value from a Prometheus histogram: the upper bound of the bucket holding the quantile
    (so "<= that many seconds"), and the mean from sum/count."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.labels.get(label, "")
            if sample.name == f"{name}_bucket":
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name == f"{name}_sum":
                sums[key] = sample.value
            elif sample.name == f"{name}_count":
                counts[key] = sample.value
    out = {}
    for key, rows in buckets.items():
        rows.sort()
        total = rows[-1][1]
        if not total:
            continue

        def bound(q: float, rows: list[tuple[float, float]] = rows, total: float = total) -> float:
            return next(le for le, cumulative in rows if cumulative >= q * total)

        out[key] = {"count": total, "mean_s": round(sums[key] / counts[key], 3), "p50_le_s": bound(0.5),
                    "p99_le_s": bound(0.99)}
    return out


class StatusWatch:
    """Watches a namespace's InferenceDeployments and stamps (monotonic) when each first showed Placed=True and
    each observedGeneration: sub-second latencies, without LISTing hundreds of statuses in a loop."""

    def __init__(self, client: Any, namespace: str) -> None:
        self.client, self.path = client, f"{GROUP}/namespaces/{namespace}/inferencedeployments"
        self.placed: dict[str, float] = {}
        self.observed: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self.client.watch(self.path, query={}, timeout_s=30):
                    self._stamp(event.get("object") or {})
                    if self.stop.is_set():
                        return
            except Exception:  # a broken watch: start again (the first events replay current state)
                time.sleep(0.5)

    def _stamp(self, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        name, status = obj.get("metadata", {}).get("name", ""), obj.get("status") or {}
        if any(c.get("type") == "Placed" and c.get("status") == "True" for c in status.get("conditions") or []):
            self.placed.setdefault(name, now)
        if status.get("observedGeneration") is not None:
            self.observed.setdefault((name, int(status["observedGeneration"])), now)


def run_one(
    kubeconfig: Path, n: int, timeout_s: float, operator_args: list[str], interval_s: float = 0.0
) -> dict[str, Any]:
    client = kube(kubeconfig)
    namespace = f"scale-{n}-{int(time.time()) % 100000}"
    client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    metrics_port = free_port()
    op, log_name = start_operator(kubeconfig, namespace, operator_args, metrics_port)
    watch = StatusWatch(client, namespace)
    try:
        time.sleep(3)
        before = apiserver_requests(client)
        cpu0, _ = proc_usage(op.pid)
        started = time.monotonic()
        path = f"{GROUP}/namespaces/{namespace}/inferencedeployments"
        created_at: dict[str, float] = {}

        def create(i: int) -> None:
            client.create(path, deployment(f"d{i:05d}", i))
            created_at[f"d{i:05d}"] = time.monotonic()

        if interval_s > 0:  # one at a time: the latency of a lone new deployment, the API server otherwise idle
            for i in range(n):
                create(i)
                time.sleep(interval_s)
        else:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(n)))
        created_s = time.monotonic() - started
        peak_rss = 0.0
        while time.monotonic() - started < timeout_s and len(watch.placed) < n:
            peak_rss = max(peak_rss, proc_usage(op.pid)[1])
            time.sleep(1)
        placed = {name: watch.placed[name] - t for name, t in created_at.items() if name in watch.placed}
        # Spec changes: 50 deployments get a new bound; time until the status reflects the new generation.
        edited = [f"d{i:05d}" for i in range(0, n, max(1, n // 50))][:50]
        stamps = {}
        for name in edited:
            obj = client.merge_patch(f"{path}/{name}", {"spec": {"scaling": {"maxReplicas": 5}}})
            stamps[name] = (time.monotonic(), int(obj["metadata"]["generation"]))
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not all(k in watch.observed for k in
                                                      ((name, gen) for name, (_, gen) in stamps.items())):
            peak_rss = max(peak_rss, proc_usage(op.pid)[1])
            time.sleep(0.5)
        waits = {name: watch.observed[(name, gen)] - t for name, (t, gen) in stamps.items()
                 if (name, gen) in watch.observed}
        elapsed = time.monotonic() - started
        cpu1, rss = proc_usage(op.pid)
        after = apiserver_requests(client)
        operator_metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        pods = client.list(f"/api/v1/namespaces/{namespace}/pods")
        unschedulable = [
            p
            for p in pods
            if any(c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])
        ]
        pending = len(unschedulable)
        latencies = list(placed.values())
        return {
            "deployments": n,
            "nodes": len(client.list("/api/v1/nodes")),
            "create_s": round(created_s, 1),
            "create_interval_s": interval_s,
            "placed": len(placed),
            "placed_p50_s": round(percentile(latencies, 0.5), 2),
            "placed_p99_s": round(percentile(latencies, 0.99), 2),
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
            "pending_examples": [pending_example(p) for p in unschedulable[:5]],
            "elapsed_s": round(elapsed, 1),
            "queue_wait_by_lane": histogram_quantiles(operator_metrics, "infleet_reconcile_queue_wait_seconds", "lane"),
            "reconcile_time": histogram_quantiles(operator_metrics, "infleet_reconcile_duration_seconds", "kind"),
            "operator_log": log_name,
        }
    finally:
        watch.stop.set()
        op.terminate()
        op.wait(30)
        client.delete(f"/api/v1/namespaces/{namespace}")


def pending_example(pod: dict[str, Any]) -> dict[str, Any]:
    """Why the scheduler refused an infleet pod, and what it asked for: enough to tell overcommit from a node that
    was not Ready yet or a pod of a Deployment being replaced."""
    meta, status = pod["metadata"], pod.get("status") or {}
    cond = next(c for c in status.get("conditions") or [] if c.get("reason") == "Unschedulable")
    container = (pod["spec"].get("containers") or [{}])[0]
    return {
        "pod": meta["name"],
        "pool": (meta.get("labels") or {}).get("infleet.io/pool"),
        "role": (meta.get("labels") or {}).get("infleet.io/role"),
        "created": meta.get("creationTimestamp"),
        "deleting": meta.get("deletionTimestamp") is not None,
        "since": cond.get("lastTransitionTime"),
        "message": cond.get("message"),
        "requests": (container.get("resources") or {}).get("requests"),
    }


def scrape(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return str(resp.read().decode())
    except OSError:  # an older operator without these metrics, or none on that port
        return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--deployments", type=int, nargs="+", default=[200])
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every deployment to be placed")
    p.add_argument("--operator-arg", action="append", default=[], help="extra `infleet run` argument (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument(
        "--create-interval",
        type=float,
        default=0.0,
        help="seconds between creations, one at a time (default 0: a burst from 8 threads)",
    )
    args = p.parse_args()
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "examples/pools.yaml"))
    results = [
        run_one(args.kubeconfig, n, args.timeout, args.operator_arg, args.create_interval) for n in args.deployments
    ]
    for r in results:
        print(json.dumps(r))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
