"""Operator memory under churn: create, edit and delete InferenceDeployments continuously; is RSS flat?

Point it at a local cluster with simulated nodes (see bench/operator_scale.py for bringing one up):

    .venv/bin/python bench/operator_churn.py --kubeconfig .cache/scale-cluster/kubeconfig --minutes 30

It starts `infleet run` for a fresh namespace, fills it with `--population` deployments, then every `--period`
seconds deletes the `--batch` oldest, creates as many new ones and edits as many others, so the operator keeps
seeing new uids (index entries, loop states, metric series) while the population stays the same. RSS is sampled
every 10 s. The first `--warmup` fraction of the run is the warm-up (caches, allocator arenas); over the rest the
script fits a line through RSS against time and reports its slope: a leak shows as a positive slope that a longer
run makes larger, flat memory as a slope near zero. At the end it deletes the population and counts worker
Deployments whose owner is gone (orphans) at once and after the garbage collector had up to 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from pathlib import Path
from typing import Any

from operator_scale import GROUP, ROOT, deployment, kube, kubectl, proc_usage, start_operator


def slope_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return float("nan")
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    cov = sum((t - mean_t) * (m - mean_m) for t, m in samples)
    return cov / var * 60 if var else float("nan")


def orphans(client: Any, namespace: str) -> int:
    """Worker Deployments whose owning InferenceDeployment no longer exists."""
    alive = {d["metadata"]["uid"] for d in client.list(f"{GROUP}/namespaces/{namespace}/inferencedeployments")}
    count = 0
    for d in client.list(f"/apis/apps/v1/namespaces/{namespace}/deployments"):
        refs = d["metadata"].get("ownerReferences") or []
        if refs and not any(r.get("uid") in alive for r in refs):
            count += 1
    return count


def run(args: argparse.Namespace) -> dict[str, Any]:
    client = kube(args.kubeconfig)
    namespace = f"churn-{int(time.time()) % 100000}"
    client.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    path = f"{GROUP}/namespaces/{namespace}/inferencedeployments"
    op, log_name = start_operator(args.kubeconfig, namespace, args.operator_arg)
    try:
        time.sleep(3)
        live: deque[str] = deque()
        serial = 0

        def create() -> None:
            nonlocal serial
            name = f"c{serial:06d}"
            client.create(path, deployment(name, serial))
            live.append(name)
            serial += 1

        for _ in range(args.population):
            create()
        started = time.monotonic()
        samples: list[tuple[float, float]] = []
        next_sample = started
        edits = deleted = 0
        while (now := time.monotonic()) - started < args.minutes * 60:
            for _ in range(args.batch):
                client.delete(f"{path}/{live.popleft()}")
                deleted += 1
                create()
            for name in list(live)[:: max(1, len(live) // args.batch)][: args.batch]:
                bound = 3 + (edits % 3)
                client.merge_patch(f"{path}/{name}", {"spec": {"scaling": {"maxReplicas": bound}}})
                edits += 1
            if now >= next_sample:
                samples.append((now - started, proc_usage(op.pid)[1]))
                next_sample += 10
            time.sleep(max(0.0, args.period - (time.monotonic() - now)))
        if op.poll() is not None:
            raise SystemExit(f"the operator exited ({op.returncode}); log: {log_name}")
        settled = [s for s in samples if s[0] >= args.warmup * args.minutes * 60]
        rss = [m for _, m in settled]
        for name in live:
            client.delete(f"{path}/{name}")
        deadline = time.monotonic() + 120
        while client.list(path) and time.monotonic() < deadline:
            time.sleep(2)
        # The garbage collector removes what the deleted owners held, after a while on a loaded API server: count
        # the orphans at once, then wait (up to 3 minutes) for none to be left.
        orphans_at_once, gone = orphans(client, namespace), time.monotonic()
        while orphans(client, namespace) and time.monotonic() - gone < 180:
            time.sleep(5)
        orphans_left, orphans_gone_s = orphans(client, namespace), time.monotonic() - gone
        return {
            "minutes": args.minutes,
            "population": args.population,
            "created": serial,
            "deleted": deleted + len(live),
            "edited": edits,
            "rss_after_warmup_mib": round(rss[0]) if rss else None,
            "rss_end_mib": round(rss[-1]) if rss else None,
            "rss_max_mib": round(max(rss)) if rss else None,
            "rss_slope_mib_per_min": round(slope_per_min(settled), 2),
            "rss_timeline_mib": [[round(t), round(m)] for t, m in samples],
            "orphaned_worker_deployments_at_once": orphans_at_once,
            "orphaned_worker_deployments_left": orphans_left,
            "orphans_gone_after_s": round(orphans_gone_s, 1),
            "operator_log": log_name,
        }
    finally:
        op.terminate()
        op.wait(30)
        client.delete(f"/api/v1/namespaces/{namespace}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--population", type=int, default=200, help="deployments alive at any time")
    p.add_argument("--batch", type=int, default=5, help="deletes, creates and edits per period")
    p.add_argument("--period", type=float, default=5.0, help="seconds between batches")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the slope")
    p.add_argument("--operator-arg", action="append", default=[], help="extra `infleet run` argument (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args()
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(args.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "examples/pools.yaml"))
    result = run(args)
    print(json.dumps({k: v for k, v in result.items() if k != "rss_timeline_mib"}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
