"""The scenarios: each a small function from a :class:`Run` (its own opted-in namespace, a live operator) to an
:class:`Outcome`. Add one by writing a function and listing it in ``SCENARIOS``."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from closedloop import faults
from closedloop.drive import Driven, Fault, drive
from closedloop.harness import Run, wait_for
from closedloop.load import AZURE_ATTRIBUTION, Arrival, Shaping, TraceRow, read_trace, step_burst, window
from closedloop.recovery import recovery_s, scale_up_s
from closedloop.report import Outcome
from closedloop.requests import RequestLog
from closedloop.service import measure_service
from closedloop.timeline import recording

CPU_PRICE_PER_DEVICE_HOUR = 0.357  # c7i.8xlarge $1.428/h over 4 slices of 8 vCPUs (examples/pools.yaml)
SPOT_PRICE_PER_DEVICE_HOUR = 0.12  # about a third of on-demand, as spot usually is
P99_SLO_S, TTFT_SLO_S = 1.0, 0.5  # the trace scenarios' SLO: tight enough that one replica's room matters
STEADY = Shaping(start_s=600, duration_s=60, speedup=4, rps=3)
BURST = Shaping(start_s=1200, duration_s=70, speedup=4, rps=2)
BURST_FACTOR, BURST_FROM_S, BURST_TO_S = 3.0, 15.0, 45.0
FAULT_LOAD = Shaping(start_s=1800, duration_s=40, speedup=4, rps=3)
LENGTH = {"scale": 1.0}  # `--length-scale` stretches every trace scenario (benchmarks; CI runs 1.0)


def stretched(shaping: Shaping) -> Shaping:
    return dataclasses.replace(shaping, duration_s=shaping.duration_s * LENGTH["scale"])


@functools.cache
def conv_trace() -> tuple[TraceRow, ...]:
    from infleet.sim.cli import TRACES  # where `infleet simulate` finds the shared traces

    return tuple(read_trace(TRACES / "azure-llm-2023-conv.csv"))


def cpu_pool(name: str, cold_start_s: int = 90, *, spot: bool = False) -> dict[str, Any]:
    """A CPU pool on the simulated cpu-on-demand (or cpu-spot) nodes, profiled for the tiny model class."""
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": "cpu-spot" if spot else "cpu-on-demand"},
            "accelerator": {"family": "cpu", "product": "c7i", "resourceName": "cpu", "devicesPerNode": 4,
                            "cpusPerDevice": 8, "memoryGiBPerDevice": 15},
            "capacityType": "spot" if spot else "on-demand",
            "pricePerDeviceHourUSD": SPOT_PRICE_PER_DEVICE_HOUR if spot else CPU_PRICE_PER_DEVICE_HOUR,
            "coldStartSeconds": cold_start_s,
            "performanceProfiles": [{"modelClass": "llm-0.5b", "tokensPerSecond": 60, "requestsPerSecond": 2,
                                     "latencyBoundMs": 800}],
        },
    }


def tiny_deployment(name: str, pool: str | Sequence[str], *, min_replicas: int = 1, max_replicas: int = 2,
                    p99_ms: int = 3000, ttft_ms: int = 800) -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "InferenceDeployment", "metadata": {"name": name},
        "spec": {
            "model": {"name": "tiny-chat", "source": "builtin://tiny", "parametersBillions": 0.5, "families": ["cpu"],
                      "modelClass": "llm-0.5b"},
            "slo": {"p99LatencyMs": p99_ms, "ttftP99Ms": ttft_ms},
            "placement": {"families": ["cpu"], "pools": [pool] if isinstance(pool, str) else list(pool)},
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


def trace_deployment(name: str, pools: str | Sequence[str], *, min_replicas: int, max_replicas: int,
                     warm: int = 0) -> dict[str, Any]:
    """The tiny model under the trace scenarios' SLO, scaling down within seconds (the runs are short)."""
    d = tiny_deployment(name, pools, min_replicas=min_replicas, max_replicas=max_replicas,
                        p99_ms=int(P99_SLO_S * 1000), ttft_ms=int(TTFT_SLO_S * 1000))
    d["spec"]["scaling"].update({"scaleDownStabilizationSeconds": 15, "scaleToZeroAfterSeconds": 10})
    d["spec"]["placement"]["fallbackAfterSeconds"] = 5
    if warm:
        d["spec"]["warmPool"] = {"mode": "Fixed", "size": warm}
    return d


def wait_ready(run: Run, name: str, serving: int, warm: int = 0, timeout: float = 180) -> None:
    wait_for(f"{serving} Ready serving and {warm} warm pods of {name}",
             lambda: len(run.ready_pods(name)) >= serving and len(run.ready_pods(name, "warm")) >= warm, timeout)


def trace_outcome(run: Run, name: str, driven: Driven, pools: dict[str, float], trace: str,
                  extra: dict[str, Any] | None = None) -> Outcome:
    return Outcome(deployment=name, trace=trace, p99_latency_slo_s=P99_SLO_S, ttft_slo_s=TTFT_SLO_S,
                   price_per_replica_hour=pools, requests=driven.log, timeline=driven.timeline,
                   wall_s=driven.wall_s, t0=driven.t0,
                   extra={"trace_attribution": AZURE_ATTRIBUTION, "faults": driven.faults, **(extra or {})})


def save_replay(run: Run, driven: Driven, arrivals: Sequence[Arrival], manifests: Sequence[dict[str, Any]]) -> None:
    """What the sim-to-real comparison replays: the requests as the worker counted their tokens, and the pool and
    deployment manifests (``replay.json``)."""
    served = {a.key: a for a in driven.log.served()}
    rows = []
    for i, arr in enumerate(arrivals):
        a = served.get(driven.keys.get(i, ""))
        rows.append({"at_s": arr.at_s, "prompt_tokens": a.prompt_tokens if a else None,
                     "completion_tokens": a.completion_tokens if a else arr.max_tokens})
    doc = {"requests": rows, "manifests": list(manifests), "slo": {"p99_s": P99_SLO_S, "ttft_s": TTFT_SLO_S},
           "serving_over_time": driven.timeline.serving_at(driven.t0)}
    (run.out_dir / "replay.json").write_text(json.dumps(doc), encoding="utf-8")


def steady(run: Run) -> Outcome:
    """A minute of the conversational trace (4x compressed, thinned to 3 rps) through the gateway; first, the
    tiny worker's service model is measured on one replica (``service.json``, for the sim-to-real replay)."""
    pool, name = f"{run.namespace}-cpu", "steady"
    manifests = [cpu_pool(pool), trace_deployment(name, pool, min_replicas=1, max_replicas=3)]
    run.apply_cluster_scoped(manifests[0])
    run.apply(manifests[1])
    wait_ready(run, name, 1)
    service = measure_service(run.ready_pod_ips(name)[0], "tiny-chat")
    (run.out_dir / "service.json").write_text(json.dumps({pool: service}, indent=1), encoding="utf-8")
    arrivals = window(conv_trace(), stretched(STEADY))
    driven = drive(run, name, arrivals)
    save_replay(run, driven, arrivals, manifests)
    return trace_outcome(run, name, driven, {pool: CPU_PRICE_PER_DEVICE_HOUR}, "azure-llm-2023-conv steady",
                         {"shaping": vars(stretched(STEADY)), "measured_service": service})


def _burst(run: Run, warm: int) -> Outcome:
    """The trace at 2 rps, stepping to 3x between 15 s and 45 s; the pool declares a 600 s cold start (emulated
    times the cold-start scale) so a warm pod's promotion and a cold start differ."""
    name = "burst"
    pool = f"{run.namespace}-cpu"
    manifests = [cpu_pool(pool, cold_start_s=600),
                 trace_deployment(name, pool, min_replicas=1, max_replicas=4, warm=warm)]
    run.apply_cluster_scoped(manifests[0])
    run.apply(manifests[1])
    wait_ready(run, name, 1, warm)
    k = LENGTH["scale"]
    arrivals = step_burst(conv_trace(), stretched(BURST), BURST_FACTOR, BURST_FROM_S * k, BURST_TO_S * k)
    driven = drive(run, name, arrivals)
    save_replay(run, driven, arrivals, manifests)
    recovery = recovery_s(driven.latency_points(), BURST_FROM_S * k, BURST.duration_s * k, P99_SLO_S)
    grew = scale_up_s(driven.timeline.serving_at(driven.t0), BURST_FROM_S * k)
    burst = {"factor": BURST_FACTOR, "from_s": BURST_FROM_S * k, "to_s": BURST_TO_S * k}
    return trace_outcome(run, name, driven, {pool: CPU_PRICE_PER_DEVICE_HOUR}, "azure-llm-2023-conv 3x step burst",
                         {"shaping": vars(stretched(BURST)), "burst": burst, "warm_pool_size": warm,
                          "p99_recovery_s": recovery, "scale_up_after_burst_s": grew})


def burst_warm(run: Run) -> Outcome:
    return _burst(run, warm=1)


def burst_cold(run: Run) -> Outcome:
    return _burst(run, warm=0)


def scale_from_zero(run: Run) -> Outcome:
    """minReplicas 0: with no traffic the deployment scales to zero; 12 requests arrive, are held at the gateway
    while no replica is ready, and are served after the emulated cold start (300 s declared); then it scales
    back to zero."""
    pool, name = f"{run.namespace}-cpu", "zero"
    run.apply_cluster_scoped(cpu_pool(pool, cold_start_s=300))
    run.apply(trace_deployment(name, pool, min_replicas=0, max_replicas=2))
    wait_for("no pod of the idle deployment", lambda: not run.pods(name) or None, timeout=120)
    arrivals = [Arrival(at_s=i * 0.5, prompt_words=12, max_tokens=16) for i in range(12)]
    idle: dict[str, float] = {}

    def back_to_zero() -> None:
        t = time.monotonic()
        wait_for("scale back to zero", lambda: not run.ready_pods(name) or None, timeout=120, every=1)
        idle["zero_after_s"] = time.monotonic() - t

    driven = drive(run, name, arrivals, timeout_s=180, settle=back_to_zero)
    served = driven.log.served()
    first = min((a.sent_at - driven.t0 + (a.latency_s or 0) for a in served), default=None)
    return trace_outcome(run, name, driven, {pool: CPU_PRICE_PER_DEVICE_HOUR}, "12 requests at 2 rps from zero",
                         {"emulated_cold_start_declared_s": 300, "first_answer_after_s": first,
                          "back_to_zero_after_load_s": round(idle["zero_after_s"], 1)})


def spot_reclaim(run: Run) -> Outcome:
    """Two replicas on the cheaper spot pool under 3 rps; 12 s in, every cpu-spot node is reclaimed (deleted with
    its pods): the gateway retries what had not started streaming, the operator falls back to on-demand."""
    spot, od, name = f"{run.namespace}-spot", f"{run.namespace}-od", "spot"
    run.apply_cluster_scoped(cpu_pool(spot, spot=True))
    run.apply_cluster_scoped(cpu_pool(od))
    run.apply(trace_deployment(name, [spot, od], min_replicas=2, max_replicas=3))
    wait_ready(run, name, 2)
    try:
        driven = drive(run, name, window(conv_trace(), stretched(FAULT_LOAD)), faults=[
            Fault(at_s=12, name="spot_reclaim", action=lambda: faults.reclaim_nodes(run, name, "cpu-spot"))])
    finally:
        faults.restore_nodes(run, "cpu-spot")
    return trace_outcome(run, name, driven, {spot: SPOT_PRICE_PER_DEVICE_HOUR, od: CPU_PRICE_PER_DEVICE_HOUR},
                         "azure-llm-2023-conv 3 rps, spot reclaim")


def operator_kill(run: Run) -> Outcome:
    """The operator gets SIGKILL 10 s into 3 rps and is restarted 5 s later: the fleet keeps serving."""
    pool, name = f"{run.namespace}-cpu", "opkill"
    run.apply_cluster_scoped(cpu_pool(pool))
    run.apply(trace_deployment(name, pool, min_replicas=2, max_replicas=3))
    wait_ready(run, name, 2)
    driven = drive(run, name, window(conv_trace(), stretched(FAULT_LOAD)), faults=[
        Fault(at_s=10, name="operator_kill9", action=lambda: faults.kill_operator(run, down_s=5))])
    return trace_outcome(run, name, driven, {pool: CPU_PRICE_PER_DEVICE_HOUR}, "azure-llm-2023-conv 3 rps, operator -9")


def worker_kill(run: Run) -> Outcome:
    """One of two serving workers gets SIGKILL 10 s into 3 rps; its container restarts."""
    pool, name = f"{run.namespace}-cpu", "wkill"
    run.apply_cluster_scoped(cpu_pool(pool))
    run.apply(trace_deployment(name, pool, min_replicas=2, max_replicas=2))
    wait_ready(run, name, 2)
    driven = drive(run, name, window(conv_trace(), stretched(FAULT_LOAD)), faults=[
        Fault(at_s=10, name="worker_kill9", action=lambda: faults.kill_worker(run, name))])
    return trace_outcome(run, name, driven, {pool: CPU_PRICE_PER_DEVICE_HOUR}, "azure-llm-2023-conv 3 rps, worker -9")


L4_PRICE_PER_DEVICE_HOUR = 1.1504  # g6.12xlarge $4.6016/h over 4 L4s (examples/pools.yaml)
SERVED_LINE = re.compile(r'"POST /v1/(chat/)?completions HTTP/1\.1" 200')  # uvicorn's and aiohttp's access logs


def l4_pool(name: str, cold_start_s: int = 90) -> dict[str, Any]:
    """An nvidia-gpu pool on the simulated l4-on-demand nodes (the pod runner plays its pods on the CPU), profiled
    for the tiny model class like the CPU pool, so routing has no reason to prefer either."""
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": "l4-on-demand"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
                             "effect": "NoSchedule"}],
            "accelerator": {"family": "nvidia-gpu", "product": "NVIDIA-L4", "resourceName": "nvidia.com/gpu",
                            "devicesPerNode": 4, "memoryGiBPerDevice": 22.5},
            "capacityType": "on-demand", "pricePerDeviceHourUSD": L4_PRICE_PER_DEVICE_HOUR,
            "coldStartSeconds": cold_start_s,
            "performanceProfiles": [{"modelClass": "llm-0.5b", "tokensPerSecond": 60, "requestsPerSecond": 2,
                                     "latencyBoundMs": 800}],
        },
    }


def write_tiny_gguf(out_dir: Path) -> Path:
    """The tiny Llama checkpoint the worker tests build, written as an F32 GGUF (what
    tests/integration/runtimes runs llama.cpp on); imported at run time, as the e2e package does not ship tests."""
    hf = importlib.import_module("tests.unit.worker.hf_checkpoint")
    gguf = importlib.import_module("tests.integration.runtimes.gguf_checkpoint")
    checkpoint = hf.build_checkpoint(out_dir / "tiny-hf")
    return Path(gguf.write_gguf(checkpoint.path, out_dir / "tiny.gguf")).resolve()


def served_lines(log: Path) -> int:
    """Completions a replica answered with 200, from its process's access log (the pod runner keeps one per pod)."""
    return len(SERVED_LINE.findall(log.read_text(errors="replace"))) if log.exists() else 0


def mixed_arrivals() -> list[Arrival]:
    """10 s at 1 rps, 30 s at 6 rps (three replicas' worth), then 70 s at 1 rps of longer answers (two scale-downs
    fit in it: see ``mixed_runtimes``). Requests come in groups sent at once: one at a time, the router's
    tie-break (replica id) would send nearly all of them to one replica; overlapping requests go to the least
    loaded, so every replica takes its share."""
    low = [Arrival(at_s=float(t), prompt_words=12, max_tokens=32) for t in range(10)]
    high = [Arrival(at_s=10 + k * 0.5, prompt_words=12, max_tokens=32) for k in range(60) for _ in range(3)]
    tail = [Arrival(at_s=40 + k * 2.0, prompt_words=12, max_tokens=64) for k in range(35) for _ in range(2)]
    return low + high + tail


def pool_changes(timeline: Any, t0: float, pool: str) -> list[tuple[float, int]]:
    """(seconds since ``t0``, ready serving pods) each time the pool's count changed."""
    out: list[tuple[float, int]] = []
    for t, counts in timeline.samples:
        n = counts.get((pool, "serving"), 0)
        if not out or out[-1][1] != n:
            out.append((round(t - t0, 1), n))
    return out


def check_scaled_and_drained(changes: dict[str, list[tuple[float, int]]], last_arrival_s: float) -> None:
    """Each runtime's pool grew under the load and shrank again while requests still arrived (a drain with traffic
    around it: the clients' zero lost and zero cut streams are checked by the harness)."""
    for engine, series in changes.items():
        peak = max(n for _, n in series)
        start, end = series[0][1], series[-1][1]
        if peak <= start:
            raise AssertionError(f"{engine}'s pool never scaled up: {series}")
        if end >= peak:
            raise AssertionError(f"{engine}'s pool never scaled down: {series}")
        first_down = next(t for (t, n), (_, before) in zip(series[1:], series, strict=False) if n < before)
        if first_down > last_arrival_s:
            raise AssertionError(f"{engine}'s pool drained only after the load ended ({first_down} s): {series}")


def routed_by_pool(metrics_page: str, deployment: str) -> dict[str, float]:
    """``infleet_gateway_routed_total`` per pool for one deployment (summed over replicas and reasons)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_page):
        for sample in family.samples:
            if sample.name == "infleet_gateway_routed_total" and sample.labels.get("deployment") == deployment:
                pool = sample.labels.get("pool", "")
                out[pool] = out.get(pool, 0.0) + sample.value
    return out


def mixed_runtimes(run: Run) -> Outcome:
    """One deployment on two families with two serving stacks, autoscaled on live signals and drained under load:
    its CPU pool runs llama.cpp (llama-cpp-python's server on a GGUF written here; at most 2 replicas, maxDevices
    2), its nvidia-gpu pool infleet-worker (played on the CPU by the pod runner). It starts at one llama.cpp
    replica (the cheaper pool); 6 rps (three replicas' worth at 2 rps each) must grow llama.cpp to 2 and add an
    infleet-worker replica; back at 1 rps, both pools must shrink while requests still arrive (llama.cpp drains
    on SIGTERM, infleet-worker on SIGTERM or `/admin/state`). The gateway probes each replica as its runtime
    (llama.cpp: readiness only, routed on the gateway's in-flight count; the operator scales that pool on the
    gateway's per-pool signals). Fails unless both runtimes served requests (counted in each process's own access
    log), their sum is what the clients got, and the harness finds none lost, duplicated or cut mid-stream."""
    cpu, gpu, name = f"{run.namespace}-cpu", f"{run.namespace}-l4", "mixed"
    gguf = write_tiny_gguf(run.out_dir)
    # A 5 s declared cold start: one replica is a third of the fleet, more than a scale-down step, so each goes
    # only after the demand fitted without it for three cold starts (15 s; policy/scaling.py), and both scale-downs
    # land inside the load's 70 s tail.
    cpu_manifest = cpu_pool(cpu, cold_start_s=5)
    cpu_manifest["spec"]["maxDevices"] = 2
    run.apply_cluster_scoped(cpu_manifest)
    run.apply_cluster_scoped(l4_pool(gpu, cold_start_s=5))
    d = trace_deployment(name, [cpu, gpu], min_replicas=1, max_replicas=3)
    d["spec"]["model"].update({"source": f"file://{gguf}", "families": ["cpu", "nvidia-gpu"]})
    d["spec"]["model"]["runtimes"] = {"cpu": {"engine": "llama-cpp"}}
    d["spec"]["placement"]["families"] = ["cpu", "nvidia-gpu"]
    run.apply(d)
    wait_for(f"one Ready llama.cpp pod of {name} on {cpu}",
             lambda: [p for p in run.ready_pods(name) if p["metadata"]["labels"].get("infleet.io/pool") == cpu],
             timeout=180)
    engines: dict[str, str] = {}
    logs: dict[str, list[Path]] = {}

    def note_pods() -> None:
        """Every serving pod's engine (pool -> runtime annotation) and access log, as pods come and go."""
        for p in run.ready_pods(name):
            pool = p["metadata"]["labels"].get("infleet.io/pool", "")
            engines[pool] = (p["metadata"].get("annotations") or {}).get("infleet.io/runtime", "infleet-worker")
            log = run.cluster.layout.run / "pods" / f"{run.namespace}_{p['metadata']['name']}.log"
            if log not in logs.setdefault(pool, []):
                logs[pool].append(log)

    arrivals = mixed_arrivals()
    watching = threading.Event()

    def watch_pods() -> None:
        while not watching.wait(1.0):
            note_pods()

    watcher = threading.Thread(target=watch_pods, name="mixed-pods", daemon=True)
    note_pods()
    watcher.start()

    def back_to_one() -> None:  # what it reached is checked on the timeline below
        with contextlib.suppress(TimeoutError):
            wait_for(f"{name} back to one replica", lambda: len(run.ready_pods(name)) == 1 or None, timeout=60)

    try:
        driven = drive(run, name, arrivals, timeout_s=60, settle=back_to_one)
    finally:
        watching.set()
        watcher.join(timeout=5)
    if engines != {cpu: "llama-cpp", gpu: "infleet-worker"}:
        raise AssertionError(f"the pools' pods run {engines}, not llama-cpp on {cpu} and infleet-worker on {gpu}")
    by_runtime = {engines[pool]: sum(served_lines(log) for log in paths) for pool, paths in logs.items()}
    served = len(driven.log.served())
    if min(by_runtime.values()) == 0:
        raise AssertionError(f"a runtime served nothing: {by_runtime} of {served} served requests")
    if sum(by_runtime.values()) != served:
        raise AssertionError(f"the replicas' access logs count {by_runtime}, the clients got {served} answers")
    changes = {engines[pool]: pool_changes(driven.timeline, driven.t0, pool) for pool in (cpu, gpu)}
    check_scaled_and_drained(changes, arrivals[-1].at_s)
    routed = routed_by_pool(httpx.get(run.gateway.metrics_url, timeout=10).text, name)
    # Every answer was routed there first (a retry before the first byte routes once more, so >= not ==).
    if any(routed.get(p, 0.0) < max(1, by_runtime[engines[p]]) for p in (cpu, gpu)):
        raise AssertionError(f"the gateway's metrics count {routed} routed per pool, the replicas served {by_runtime}")
    return trace_outcome(run, name, driven, {cpu: CPU_PRICE_PER_DEVICE_HOUR, gpu: L4_PRICE_PER_DEVICE_HOUR},
                         "1 -> 6 -> 1 rps in groups, llama.cpp on cpu + infleet-worker on nvidia-gpu, autoscaled",
                         {"served_by_runtime": by_runtime, "engine_by_pool": engines,
                          "serving_changes_by_runtime": changes, "gateway_routed_by_pool": routed})


SCENARIOS: dict[str, Callable[[Run], Outcome]] = {
    "steady": steady, "burst-warm": burst_warm, "burst-cold": burst_cold, "scale-from-zero": scale_from_zero,
    "spot-reclaim": spot_reclaim, "operator-kill": operator_kill, "worker-kill": worker_kill,
    "mixed-runtimes": mixed_runtimes,
}
EXTRA_SCENARIOS: dict[str, Callable[[Run], Outcome]] = {"smoke": smoke, "warm-promotion": warm_promotion}
FAULT_SCENARIOS = {"spot-reclaim", "operator-kill", "worker-kill", "scale-from-zero"}
