"""The e2e harness: a local cluster of its own, opted-in namespaces, the operator as a local process, and the
objects a scenario needs. Scenarios use it through :class:`Run` and never start or stop anything themselves.

The cluster lives in ``.cache/e2e-cluster`` on ports ``INFLEET_CLUSTER_PORT_OFFSET + 30`` (or exactly
``INFLEET_E2E_PORT_OFFSET``): neither the demo's nor the tests' cluster, so `make e2e` passes before or after
either. It starts from a clean slate and is deleted at the end, unless ``INFLEET_KEEP_CLUSTER=1`` (or
``--keep-cluster``), which keeps it for the next run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from closedloop.gateway import GatewayProcess
from closedloop.waiting import wait_for
from infleet_devcluster.cluster import LocalCluster, RunnerSettings
from infleet_devcluster.ports import free_port

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = REPO / ".cache" / "e2e-cluster"
E2E_OFFSET_SHIFT = 30
RUN_PODS = {"infleet.dev/run-pods": "true"}
__all__ = ["REPO", "Run", "Settings", "free_port", "local_cluster", "scenario_run", "wait_for"]


def e2e_port_offset() -> int:
    explicit = os.environ.get("INFLEET_E2E_PORT_OFFSET")
    if explicit:
        return int(explicit)
    return int(os.environ.get("INFLEET_CLUSTER_PORT_OFFSET", "0")) + E2E_OFFSET_SHIFT


@dataclass(frozen=True, kw_only=True)
class Settings:
    out_dir: Path
    cold_start_scale: float = 0.02  # a pool's declared 90 s cold start becomes 1.8 s: warm pools still matter
    keep_cluster: bool = False


class Operator:
    """`infleet run` scoped to one namespace, promoting warm workers over their real admin API and scaling on
    the gateway's metrics (``gateway_url``: its ``/metrics``)."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, gateway_url: str | None = None) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log = log
        self.starts = 0
        self.cmd = [str(Path(sys.executable).parent / "infleet"), "run", "--kubeconfig", str(kubeconfig),
               "--namespace", namespace, "--standalone", "--interval", "2", "--promotion-client", "http",
               "--metrics-port", str(self.metrics_port), "--bind-address", "127.0.0.1",
               "--liveness-port", str(self.health_port), "--log-format", "text"]
        if gateway_url:
            self.cmd += ["--gateway-url", gateway_url]
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        self.starts += 1
        with self.log.open("ab" if self.starts > 1 else "wb") as fh:  # one log per run, restarts appended
            return subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    def kill9(self) -> None:
        """SIGKILL, as a node failure or an OOM kill would: no shutdown path runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        if self.proc.poll() is None:
            raise RuntimeError("the operator is still running")
        self.proc = self._start()

    def wait_live(self, timeout: float = 60) -> None:
        def live() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited; log {self.log}")
            try:
                return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the operator to be live", live, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Run:
    """What a scenario gets: its own opted-in namespace, kubectl, the objects' state, and where to write."""

    def __init__(self, cluster: LocalCluster, namespace: str, out_dir: Path, operator: Operator,
                 gateway: GatewayProcess) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.out_dir = out_dir
        self.operator = operator
        self.gateway = gateway
        self.cluster_scoped: list[tuple[str, str]] = []  # (kind, name) to delete when the run ends

    def apply_cluster_scoped(self, obj: dict[str, Any]) -> None:
        """An AcceleratorPool (or other cluster-scoped object) that lives as long as this run."""
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
        self.cluster_scoped.append((str(obj["kind"]).lower(), str(obj["metadata"]["name"])))

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl(*args, input=input).stdout

    def apply(self, *objects: dict[str, Any]) -> None:
        self.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump_all(objects))

    def get(self, *args: str) -> Any:
        res = self.cluster.kubectl("get", *args, "-o", "json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else None

    def pods(self, deployment: str) -> list[dict[str, Any]]:
        got = self.get("pods", "-n", self.namespace, "-l", f"infleet.io/deployment={deployment}") or {"items": []}
        return [p for p in got["items"] if not p["metadata"].get("deletionTimestamp")]

    @property
    def openai_base_url(self) -> str:
        """Where the scenario's clients send their requests: the gateway's OpenAI API."""
        return f"{self.gateway.url}/v1"

    def worker_pid(self, pod_name: str) -> int | None:
        """The worker process the pod runner started for a pod (its ``pod-runner-workers.json``)."""
        state = self.cluster.layout.run / "pod-runner-workers.json"
        doc = json.loads(state.read_text()) if state.exists() else {}
        entry = doc.get(f"{self.namespace}/{pod_name}") or {}
        pid = entry.get("pid")
        return int(pid) if pid else None

    def ready_pods(self, deployment: str, role: str = "serving") -> list[dict[str, Any]]:
        out = []
        for p in self.pods(deployment):
            labels = p["metadata"].get("labels") or {}
            conds = p["status"].get("conditions") or []
            if labels.get("infleet.io/role") == role and any(
                    c["type"] == "Ready" and c["status"] == "True" for c in conds):
                out.append(p)
        return out

    def ready_pod_ips(self, deployment: str, role: str = "serving") -> list[str]:
        return [str(p["status"]["podIP"]) for p in self.ready_pods(deployment, role)]


@contextlib.contextmanager
def local_cluster(settings: Settings) -> Iterator[LocalCluster]:
    cluster = LocalCluster(STATE_DIR, port_offset=e2e_port_offset())
    keep = settings.keep_cluster or bool(os.environ.get("INFLEET_KEEP_CLUSTER"))
    if not (keep and cluster.is_running()):
        cluster.delete()  # a clean slate
    cluster.up(runner=RunnerSettings(cold_start_scale=settings.cold_start_scale))
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    try:
        yield cluster
    finally:
        if not keep:
            cluster.delete()


@contextlib.contextmanager
def scenario_run(cluster: LocalCluster, name: str, out_dir: Path) -> Iterator[Run]:
    """A fresh opted-in namespace, a gateway and an operator watching it; all removed afterwards (pods and
    workers too)."""
    ns = f"e2e-{name}-{uuid.uuid4().hex[:5]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": RUN_PODS}}))
    gateway = GatewayProcess(cluster.layout.kubeconfig, ns, out_dir / "gateway.log")
    operator = Operator(cluster.layout.kubeconfig, ns, out_dir / "operator.log", gateway_url=gateway.metrics_url)
    run = Run(cluster, ns, out_dir, operator, gateway)
    try:
        gateway.wait_ready()
        operator.wait_live()
        yield run
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
        operator.stop()
        gateway.stop()
        for kind, obj_name in run.cluster_scoped:
            cluster.kubectl("delete", kind, obj_name, "--wait=false", check=False)
