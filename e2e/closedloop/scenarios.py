"""The scenarios: each a small function from a :class:`Run` (its own opted-in namespace, a live operator) to an
:class:`Outcome`. Add one by writing a function and listing it in ``SCENARIOS``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from closedloop.harness import Run, wait_for
from closedloop.report import Outcome
from closedloop.requests import RequestLog
from closedloop.timeline import recording

CPU_PRICE_PER_DEVICE_HOUR = 0.357  # c7i.8xlarge $1.428/h over 4 slices of 8 vCPUs (examples/pools.yaml)


def cpu_pool(name: str, cold_start_s: int = 90) -> dict[str, Any]:
    """A CPU pool on the simulated cpu-on-demand nodes, profiled for the tiny model class."""
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": "cpu-on-demand"},
            "accelerator": {"family": "cpu", "product": "c7i", "resourceName": "cpu", "devicesPerNode": 4,
                            "cpusPerDevice": 8, "memoryGiBPerDevice": 15},
            "capacityType": "on-demand", "pricePerDeviceHourUSD": CPU_PRICE_PER_DEVICE_HOUR,
            "coldStartSeconds": cold_start_s,
            "performanceProfiles": [{"modelClass": "llm-0.5b", "tokensPerSecond": 60, "requestsPerSecond": 2,
                                     "latencyBoundMs": 3000}],
        },
    }


def tiny_deployment(name: str, pool: str, *, min_replicas: int = 1, max_replicas: int = 2,
                    p99_ms: int = 3000, ttft_ms: int = 800) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "InferenceDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny-chat", "source": "builtin://tiny", "parametersBillions": 0.5, "families": ["cpu"],
                      "modelClass": "llm-0.5b"},
            "slo": {"p99LatencyMs": p99_ms, "ttftP99Ms": ttft_ms},
            "placement": {"families": ["cpu"], "pools": [pool]},
            "scaling": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
            "warmPool": {"mode": "Off"},
        },
    }


def smoke(run: Run) -> Outcome:
    """One deployment on one CPU pool: its pod becomes Ready behind a real worker, 20 sequential requests."""
    pool, name = f"{run.namespace}-cpu", "smoke"
    run.apply_cluster_scoped(cpu_pool(pool))
    run.apply(tiny_deployment(name, pool))
    log = RequestLog()
    t0 = time.monotonic()
    with recording(run, name) as timeline:
        ips = wait_for("a Ready serving worker pod", lambda: run.ready_pod_ips(name), timeout=180)
        for i in range(20):
            log.complete(ips[i % len(ips)], "tiny-chat", f"Request {i}: tell me about the fleet", max_tokens=16)
    return Outcome(deployment=name, trace="smoke-20-sequential", p99_latency_slo_s=3.0, ttft_slo_s=0.8,
                   price_per_replica_hour={pool: CPU_PRICE_PER_DEVICE_HOUR}, requests=log, timeline=timeline,
                   wall_s=time.monotonic() - t0)


def warm_promotion(run: Run) -> Outcome:
    """Load beyond one replica's capacity is served by the warm worker: the operator sees the real arrival rate,
    scales up and promotes the warm pod over its real admin API instead of waiting out the cold start.

    The pool profiles one replica at 2 rps and declares a 300 s cold start (emulated as 300 x the cold-start
    scale); the scenario sends 6 rps to the serving pods until the warm pod serves (at most 90 s), then checks
    that its worker itself reports `serving`.
    """
    pool, name = f"{run.namespace}-cpu", "promo"
    run.apply_cluster_scoped(cpu_pool(pool, cold_start_s=300))
    manifest = tiny_deployment(name, pool, min_replicas=1, max_replicas=3)
    manifest["spec"]["warmPool"] = {"mode": "Fixed", "size": 1}
    run.apply(manifest)
    log = RequestLog()
    t0 = time.monotonic()
    with recording(run, name) as timeline:
        warm = wait_for("one Ready serving and one Ready warm worker",
                        lambda: run.ready_pod_ips(name, "warm") if run.ready_pod_ips(name) else None, timeout=240)
        warm_ip = warm[0]
        t_load = time.monotonic()
        promotion_s: float | None = None
        i = 0
        while time.monotonic() - t_load < 90:
            ips = run.ready_pod_ips(name)
            if warm_ip in ips and promotion_s is None:
                promotion_s = time.monotonic() - t_load
            if promotion_s is not None and time.monotonic() - t_load > promotion_s + 5:
                break  # five more seconds of load on the grown fleet, then stop
            for _ in range(6):  # ~6 rps: three times what one replica is profiled for
                t_req = time.monotonic()
                log.complete(ips[i % len(ips)], "tiny-chat", f"Load {i}", max_tokens=16)
                i += 1
                time.sleep(max(0.0, 1 / 6 - (time.monotonic() - t_req)))
        if promotion_s is None:
            raise AssertionError("the warm worker was not promoted within 90 s of load")
        state = httpx.get(f"http://{warm_ip}:8000/admin/state", timeout=5).json()["state"]
    if state != "serving":
        raise AssertionError(f"the promoted pod's worker reports state {state!r}, not 'serving'")
    return Outcome(deployment=name, trace="warm-promotion-6rps", p99_latency_slo_s=3.0, ttft_slo_s=0.8,
                   price_per_replica_hour={pool: CPU_PRICE_PER_DEVICE_HOUR}, requests=log, timeline=timeline,
                   wall_s=time.monotonic() - t0,
                   extra={"promotion_s": promotion_s, "promoted_worker_state": state})


SCENARIOS: dict[str, Callable[[Run], Outcome]] = {"smoke": smoke, "warm-promotion": warm_promotion}
