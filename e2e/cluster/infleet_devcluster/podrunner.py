"""The pod runner: a kubelet for the pods that must really run on the local cluster's simulated nodes.

kwok plays the kubelet of every simulated node, and a pod there runs nothing. In a namespace labelled
``infleet.dev/run-pods=true`` an admission policy labels each new pod the same way; kwok's stages leave such pods
alone and this runner plays their kubelet instead:

- it gives the pod an address of the cluster's *running* range (``podnet``) and starts the pod's runtime there,
  with the pod's arguments and environment (``podspec``), after the pod's pool's declared cold start times
  ``cold_start_scale`` (0 by default: no waiting): an ``infleet-worker`` process, or for a pod of the
  ``llama-cpp`` engine llama-cpp-python's server (``python -m llama_cpp.server``, this machine's Python, one
  process per pod: it shares nothing with the workers' fork server);
- the pod turns Ready only when the container's readiness probe (its ``httpGet`` path: ``/readyz`` for the
  worker, ``/docs`` for llama.cpp) answers 2xx/3xx, and back to not Ready when it stops answering;
- a worker that exits shows in the pod's status (``lastState.terminated`` with its exit code, ``Ready=False``,
  ``CrashLoopBackOff``) and is restarted after the kubelet's back-off (10 s, doubling, at most 5 min);
- deleting the pod sends SIGTERM, waits up to the pod's grace period, sends SIGKILL if needed, then removes the
  pod object (grace 0), as the kubelet does.

A pod whose container is neither (anything else a user creates in an opted-in namespace) is simulated as kwok
would: Running and Ready at once, with no process.

Workers are forked from one server that has imported torch once (``forkserver``), and at most ``max_workers``
run at a time: a pod beyond the cap waits with reason ``RunnerCapacity`` and a message saying so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from infleet_devcluster.forkserver import ExecLauncher, ForkServerLauncher, Launcher
from infleet_devcluster.kubeapi import KubeAPI, PodWatch
from infleet_devcluster.podnet import AddressPool
from infleet_devcluster.podspec import (
    INHERITED_ENV,
    LLAMACPP_MODULE,
    RUN_PODS_LABEL,
    PodNotRunnable,
    WorkerLaunch,
    decode_secret,
    plan_launch,
)
from infleet_devcluster.podstatus import ContainerView, Exit, pod_status

log = logging.getLogger("infleet_devcluster.runner")

CRASH_BACKOFF_MAX_S = 300.0
CRASH_RESET_AFTER_S = 600.0  # a container that ran this long starts its back-off from scratch (kubelet: 10 min)
DEFAULT_MAX_WORKERS = 16


@dataclass(frozen=True, kw_only=True)
class RunnerConfig:
    run_dir: Path
    network: ipaddress.IPv4Network
    host_ip: str
    max_workers: int = DEFAULT_MAX_WORKERS
    cold_start_scale: float = 0.0
    threads_per_worker: int = 1
    fork_server: bool = True
    probe_period_s: float = 1.0  # the readiness probe runs at most this far apart (pods declare 5 s)
    crash_backoff_s: float = 10.0
    tick_s: float = 0.2

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError(f"--max-workers must be >= 1, got {self.max_workers}")
        if self.cold_start_scale < 0:
            raise ValueError(f"--cold-start-scale must be >= 0, got {self.cold_start_scale}")


def crash_backoff(base_s: float, crashes: int) -> float:
    """The kubelet's restart back-off: base, doubling per consecutive crash, at most five minutes."""
    return float(min(base_s * 2 ** max(0, crashes - 1), CRASH_BACKOFF_MAX_S))


def emulated_cold_start(declared_s: float, scale: float) -> float:
    return max(0.0, declared_s * scale)


def capacity_message(live: int, cap: int) -> str:
    return (f"the local pod runner already runs {live} workers, its cap (--max-workers {cap}); delete pods or "
            "raise the cap with `infleet-cluster up --max-workers N` (see docs/architecture.md for what one "
            "worker costs)")


@dataclass(kw_only=True)
class Tracked:
    """One pod this runner plays, and its one container's process."""

    uid: str
    namespace: str
    name: str
    ip: str
    created: float
    pod: dict[str, Any]
    launch: WorkerLaunch | None = None
    pid: int | None = None
    started_at: float = 0.0
    spawn_at: float = 0.0
    restart_count: int = 0
    crashes: int = 0
    last_exit: Exit | None = None
    ready: bool = False
    next_probe: float = 0.0
    reason: str = "ContainerCreating"
    message: str = ""
    simulated: bool = False  # not a worker pod: Running and Ready with no process, as kwok would
    kill_at: float | None = None  # set once the pod is being deleted
    delete_sent_at: float = 0.0
    sent: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodRunner:
    def __init__(self, api: KubeAPI, config: RunnerConfig) -> None:
        self.api = api
        self.config = config
        self.addresses = AddressPool(config.network)
        self.tracked: dict[str, Tracked] = {}
        self.watch = PodWatch(api, f"{RUN_PODS_LABEL}=true")
        self.pods_dir = config.run_dir / "pods"
        self.state_file = config.run_dir / "pod-runner-workers.json"
        self._pool_cold_start: dict[str, tuple[float, float]] = {}  # pool -> (seconds, fetched at)
        self._stopping = False
        self.launcher: Launcher | None = None
        self.launcher_error = ""
        # llama.cpp pods: one plain process each (no fork server: llama_cpp shares nothing with the workers)
        self.llamacpp = ExecLauncher(command=[sys.executable, "-m", LLAMACPP_MODULE])
        self.probe_http = httpx.Client(timeout=1.0, trust_env=False)  # one client: no TLS set-up per probe

    # ---- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.launcher = ForkServerLauncher(self.config.run_dir) if self.config.fork_server else ExecLauncher()
        except (RuntimeError, OSError) as exc:
            self.launcher_error = str(exc)
            log.error("no worker can start: %s", exc)
        self.watch.start()
        if not self.watch.synced.wait(30):
            log.warning("the pod list has not synced within 30s; continuing")
        self._write_state()  # `infleet-cluster up` waits for this file: the runner is ready

    def run_forever(self) -> None:
        def stop(_sig: int, _frame: object) -> None:
            self._stopping = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.start()
        log.info("pod runner: addresses %s, at most %d workers, cold start x%g, %s", self.config.network,
                 self.config.max_workers, self.config.cold_start_scale,
                 "fork server" if self.config.fork_server else "one process per worker")
        while not self._stopping:
            try:
                self._check_launcher(time.time())
                self.tick(time.time())
            except httpx.HTTPError as exc:
                log.warning("API call failed: %s; retrying", exc)
            except Exception:  # one bad pass must not take every worker down with the runner
                log.exception("pod runner pass failed; continuing")
            time.sleep(self.config.tick_s)
        self.shutdown()

    def _check_launcher(self, now: float) -> None:
        """A dead fork server took its children with it (PR_SET_PDEATHSIG): report them killed, start a new one."""
        launcher = self.launcher
        if not isinstance(launcher, ForkServerLauncher) or launcher.proc.poll() is None:
            return
        log.error("the worker fork server exited (%s); restarting it", launcher.proc.returncode)
        with contextlib.suppress(OSError):
            launcher.close()
        for t in self.tracked.values():
            if t.pid is not None:
                self._on_exit(t, 137, now)
        try:
            self.launcher = ForkServerLauncher(self.config.run_dir)
        except (RuntimeError, OSError) as exc:
            self.launcher, self.launcher_error = None, str(exc)

    def shutdown(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after 10 s); the pods stay as they are for the next start."""
        self.watch.stop()
        if self.launcher is not None:
            self.launcher.close()
        self.llamacpp.close()
        self.tracked.clear()
        self._write_state()

    # ---- one pass ---------------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        pods = {p["metadata"]["uid"]: p for p in self.watch.pods() if p.get("spec", {}).get("nodeName")}
        for uid, pod in pods.items():
            t = self.tracked.get(uid) or self._track(pod, now)
            t.pod = pod
            if pod["metadata"].get("deletionTimestamp") and t.kill_at is None:
                self._begin_termination(t, pod, now)
        for uid in set(self.tracked) - set(pods):
            self._forget(self.tracked[uid])
        launchers: list[Launcher] = [self.llamacpp] if self.launcher is None else [self.launcher, self.llamacpp]
        for launcher in launchers:
            for ex in launcher.exits():
                exited = self.tracked.get(ex.key)
                if exited is not None and exited.pid == ex.pid:
                    self._on_exit(exited, ex.code, now)
        changed = False
        for t in list(self.tracked.values()):
            if t.kill_at is not None:
                self._terminating(t, now)
                continue
            if t.pid is None and now >= t.spawn_at:
                changed |= self._spawn(t, now)
            elif t.pid is not None and now >= t.next_probe:
                self._probe(t, now)
            self._report(t, now)
        if changed:
            self._write_state()

    # ---- steps ------------------------------------------------------------------------------------------------
    def _track(self, pod: dict[str, Any], now: float) -> Tracked:
        meta, status = pod["metadata"], pod.get("status") or {}
        ip = status.get("podIP") or ""
        if ip and ipaddress.ip_address(ip) in self.config.network:
            self.addresses.claim(ip)  # kept across a runner restart
        else:
            ip = self.addresses.allocate()
        restarts = sum(int(c.get("restartCount", 0)) for c in status.get("containerStatuses") or [])
        t = Tracked(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"], ip=ip, created=now, pod=pod,
                    restart_count=restarts)
        delay = emulated_cold_start(self._declared_cold_start(pod, now), self.config.cold_start_scale)
        t.spawn_at = now + delay
        if delay > 0:
            scale = self.config.cold_start_scale
            t.message = f"emulated cold start: {delay:.1f}s (the pool's coldStartSeconds x {scale:g})"
        self.tracked[t.uid] = t
        log.info("pod %s: address %s, worker starts in %.1fs", t.key, ip, delay)
        return t

    def _declared_cold_start(self, pod: Mapping[str, Any], now: float) -> float:
        pool = (pod["metadata"].get("labels") or {}).get("infleet.io/pool", "")
        if not pool or self.config.cold_start_scale == 0:
            return 0.0
        cached = self._pool_cold_start.get(pool)
        if cached is None or now - cached[1] > 30:
            try:
                obj = self.api.get(f"/apis/infleet.io/v1alpha1/acceleratorpools/{pool}")
            except httpx.HTTPError:
                obj = None
            cached = (float(((obj or {}).get("spec") or {}).get("coldStartSeconds", 0) or 0), now)
            self._pool_cold_start[pool] = cached
        return cached[0]

    def _lookup(self, kind: str, ns: str, name: str) -> Mapping[str, str] | None:
        path = "secrets" if kind == "secret" else "configmaps"
        obj = self.api.get(f"/api/v1/namespaces/{ns}/{path}/{name}")
        if obj is None:
            return None
        return decode_secret(obj) if kind == "secret" else {k: str(v) for k, v in (obj.get("data") or {}).items()}

    def _spawn(self, t: Tracked, now: float) -> bool:
        if self.launcher is None:
            t.reason, t.message = "RunnerUnavailable", self.launcher_error
            t.spawn_at = now + 5
            return False
        try:
            launch = plan_launch(t.pod, t.ip, self._lookup, self.config.threads_per_worker)
        except PodNotRunnable as exc:
            if exc.reason == "Unsupported":
                log.info("pod %s is simulated: %s", t.key, exc)
                t.simulated, t.started_at, t.spawn_at = True, now, float("inf")
                return False
            t.reason, t.message = exc.reason, str(exc)
            t.spawn_at = now + 2  # the kubelet retries, e.g. until the Secret exists
            return False
        live = sum(1 for x in self.tracked.values() if x.pid is not None)
        if live >= self.config.max_workers:
            if t.reason != "RunnerCapacity":
                log.warning("pod %s waits: %s", t.key, capacity_message(live, self.config.max_workers))
            t.reason, t.message = "RunnerCapacity", capacity_message(live, self.config.max_workers)
            t.spawn_at = now + 1
            return False
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(launch.env)
        logfile = self.pods_dir / f"{t.namespace}_{t.name}.log"
        launcher = self.llamacpp if launch.program == "llama-cpp" else self.launcher
        t.pid = launcher.spawn(t.uid, launch.argv, env, logfile, self.config.threads_per_worker)
        if t.last_exit is not None:
            t.restart_count += 1
        t.launch, t.started_at, t.ready, t.next_probe = launch, now, False, now
        t.reason, t.message = "", ""
        log.info("pod %s: %s pid %d on %s:%d (log %s)", t.key, launch.program, t.pid, t.ip, launch.port, logfile)
        return True

    def _probe(self, t: Tracked, now: float) -> None:
        assert t.launch is not None
        probe = t.launch.readiness
        try:
            code = self.probe_http.get(f"http://{t.ip}:{probe.port}{probe.path}").status_code
            ready = 200 <= code < 400
        except httpx.HTTPError:
            ready = False
        if ready != t.ready:
            log.info("pod %s: %s", t.key, "ready" if ready else "not ready")
        t.ready = ready
        t.next_probe = now + min(probe.period_s, self.config.probe_period_s)

    def _on_exit(self, t: Tracked, code: int, now: float) -> None:
        log.info("pod %s: worker pid %s exited with %d", t.key, t.pid, code)
        t.pid, t.ready = None, False
        if t.kill_at is not None:
            return
        if now - t.started_at > CRASH_RESET_AFTER_S:
            t.crashes = 0
        t.crashes += 1
        t.last_exit = Exit(code=code, started_at=t.started_at, finished_at=now)
        backoff = crash_backoff(self.config.crash_backoff_s, t.crashes)
        t.spawn_at = now + backoff
        t.reason = "CrashLoopBackOff"
        t.message = f"back-off {backoff:.0f}s restarting failed container={t.launch.container if t.launch else ''}"
        self._write_state()

    def _begin_termination(self, t: Tracked, pod: Mapping[str, Any], now: float) -> None:
        grace = pod["metadata"].get("deletionGracePeriodSeconds")
        grace_s = float(grace) if grace is not None else (t.launch.grace_s if t.launch else 30.0)
        t.kill_at = now + grace_s
        if t.pid is not None:
            log.info("pod %s deleted: SIGTERM to pid %d, grace %.0fs", t.key, t.pid, grace_s)
            _signal(t.pid, signal.SIGTERM)

    def _terminating(self, t: Tracked, now: float) -> None:
        if t.pid is not None:
            if t.kill_at is not None and now >= t.kill_at:
                log.info("pod %s: grace period over, SIGKILL to pid %d", t.key, t.pid)
                _signal(t.pid, signal.SIGKILL)
                t.kill_at = now + 3600  # once; the exit event clears pid
            return
        if now - t.delete_sent_at > 2:
            t.delete_sent_at = now
            self.api.delete_pod_now(t.namespace, t.name, t.uid)
            self._write_state()

    def _forget(self, t: Tracked) -> None:
        """The pod object is gone (deleted with grace 0 by someone, or by us): no process may outlive it."""
        if t.pid is not None:
            log.info("pod %s vanished: SIGKILL to pid %d", t.key, t.pid)
            _signal(t.pid, signal.SIGKILL)
        self.addresses.release(t.ip)
        del self.tracked[t.uid]
        self._write_state()

    def _report(self, t: Tracked, now: float) -> None:
        if t.simulated:
            view = ContainerView(name=_container_name(t), image=_image(t), state="running", started_at=t.started_at,
                                 ready=True)
        elif t.pid is not None:
            view = ContainerView(name=t.launch.container if t.launch else "worker", image=_image(t), state="running",
                                 started_at=t.started_at, ready=t.ready, restart_count=t.restart_count,
                                 last_exit=t.last_exit)
        else:
            view = ContainerView(name=_container_name(t), image=_image(t), state="waiting", reason=t.reason,
                                 message=t.message, restart_count=t.restart_count, last_exit=t.last_exit)
        previous = t.sent or t.pod.get("status") or {}  # what we sent last, even before the watch echoes it
        status = pod_status(previous=previous, container=view, pod_ip=t.ip, host_ip=self.config.host_ip,
                            start_time=t.created, now=now)
        if status != t.sent:
            self.api.patch_pod_status(t.namespace, t.name, status)
            t.sent = status

    def _write_state(self) -> None:
        """Which process plays which pod (for people and tests): ``run/pod-runner-workers.json``."""
        doc = {t.key: {"uid": t.uid, "ip": t.ip, "port": t.launch.port if t.launch else None, "pid": t.pid,
                       "log": str(self.pods_dir / f"{t.namespace}_{t.name}.log")}
               for t in self.tracked.values()}
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True))
        tmp.replace(self.state_file)


def _container_name(t: Tracked) -> str:
    containers = t.pod.get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("name", "worker"))


def _image(t: Tracked) -> str:
    containers = t.pod.get("spec", {}).get("containers") or [{}]
    return str(containers[0].get("image", ""))


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
