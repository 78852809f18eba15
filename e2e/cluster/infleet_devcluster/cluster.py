"""Bring the local control plane up and down: etcd, kube-apiserver, controller-manager, scheduler, kwok.

Everything listens on loopback; state (certificates, etcd data, logs, pid files, kubeconfig) lives in one
directory. ``up`` is idempotent: on a running cluster it only reconciles the simulated nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from infleet_devcluster import nodepools, pki, processes
from infleet_devcluster.config import PACKAGE_DIR, Versions, cache_dir, load_versions
from infleet_devcluster.podnet import PodNetwork
from infleet_devcluster.podrunner import DEFAULT_MAX_WORKERS
from infleet_devcluster.tools import binary_path, ensure_tools

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
POD_RUNNER = "pod-runner"
COMPONENTS = (*CONTROL_PLANE, POD_RUNNER)  # stopped in reverse: the runner (and its workers) first
SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
KWOK_STAGES = PACKAGE_DIR.parent / "kwok-stages.yaml"
RUN_PODS_POLICY = PACKAGE_DIR.parent / "run-pods-policy.yaml"
RUNNER_CHECK_NAMESPACE = "infleet-pod-runner"  # labelled run-pods: `up` checks the admission policy there
NODE_IP = "127.0.0.2"
BASE_APISERVER_PORT = 16443


class ClusterError(RuntimeError):
    """The cluster failed to come up; the message says which component and where its log is."""


def default_state_dir() -> Path:
    """``<repo>/.cache/cluster`` inside a checkout (git-ignored), else ``~/.cache/infleet/cluster``."""
    env = os.environ.get("INFLEET_CLUSTER_DIR")
    if env:
        return Path(env).expanduser().resolve()
    repo = PACKAGE_DIR.parents[2]
    if (repo / "pyproject.toml").exists() and (repo / "e2e").is_dir():
        return repo / ".cache" / "cluster"
    return cache_dir() / "cluster"


@dataclass(frozen=True)
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int

    @classmethod
    def from_env(cls) -> Ports:
        """Fixed defaults, shifted by INFLEET_CLUSTER_PORT_OFFSET so two clusters can coexist."""
        return cls.for_offset(int(os.environ.get("INFLEET_CLUSTER_PORT_OFFSET", "0")))

    @classmethod
    def for_offset(cls, off: int) -> Ports:
        return cls(12379 + off, 12380 + off, BASE_APISERVER_PORT + off, 20257 + off, 20259 + off, 20247 + off)

    def all(self) -> list[int]:
        return [self.etcd_client, self.etcd_peer, self.apiserver, self.controller_manager, self.scheduler, self.kwok]

    @property
    def offset(self) -> int:
        return self.apiserver - BASE_APISERVER_PORT


@dataclass(frozen=True, kw_only=True)
class RunnerSettings:
    """How `up` starts the pod runner (a change restarts it)."""

    max_workers: int = DEFAULT_MAX_WORKERS
    cold_start_scale: float = 0.0
    fork_server: bool = True

    def __post_init__(self) -> None:  # checked before anything starts
        if self.max_workers < 1:
            raise ValueError(f"--max-workers must be >= 1, got {self.max_workers}")
        if self.cold_start_scale < 0:
            raise ValueError(f"--cold-start-scale must be >= 0, got {self.cold_start_scale}")

    def args(self) -> list[str]:
        out = ["--max-workers", str(self.max_workers), "--cold-start-scale", f"{self.cold_start_scale:g}"]
        return out if self.fork_server else [*out, "--no-fork-server"]


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd-data"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def component_kubeconfig(self, name: str) -> Path:
        return self.root / "kubeconfigs" / f"{name}.kubeconfig"

    @property
    def ports_file(self) -> Path:
        return self.root / "ports.json"

    @property
    def runner_args_file(self) -> Path:
        return self.run / "pod-runner.args.json"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _kubeconfig(server: str, ca: Path, cert: Path, key: Path, user: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "infleet-local", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
        "contexts": [{"name": "infleet-local", "context": {"cluster": "infleet-local", "user": user}}],
        "current-context": "infleet-local",
    }
    return yaml.safe_dump(doc, sort_keys=False)


def _wait(what: str, check: Callable[[], bool], timeout: float, log: Path | None,
          alive: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            tail = processes.log_tail(log) if log else ""
            raise ClusterError(f"{what}: the process exited during start-up; log {log}:\n{tail}")
        time.sleep(0.25)
    tail = processes.log_tail(log) if log else ""
    raise ClusterError(f"{what} was not ready within {timeout:.0f}s; log {log}:\n{tail}")


class LocalCluster:
    """One local control plane rooted at a state directory."""

    def __init__(self, state_dir: Path | None = None, versions: Versions | None = None,
                 pools_file: Path = nodepools.DEFAULT_POOLS_FILE, port_offset: int | None = None) -> None:
        """``port_offset`` None: INFLEET_CLUSTER_PORT_OFFSET (default 0). A running cluster keeps its saved ports."""
        self.layout = Layout(state_dir or default_state_dir())
        self.versions = versions or load_versions()
        self.pools_file = pools_file
        self.port_offset = port_offset
        self.ports = self._saved_ports() or self._wanted_ports()

    def _wanted_ports(self) -> Ports:
        return Ports.from_env() if self.port_offset is None else Ports.for_offset(self.port_offset)

    # -- paths and clients -------------------------------------------------------------------------
    def _saved_ports(self) -> Ports | None:
        try:
            return Ports(**json.loads(self.layout.ports_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def binary(self, name: str) -> Path:
        version = {
            "etcd": self.versions.etcd, "kwok": self.versions.kwok, "helm": self.versions.helm,
            "kind": self.versions.kind,
        }.get(name, self.versions.kubernetes)
        return binary_path(name, version)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary("kubectl")), "--kubeconfig", str(self.layout.kubeconfig), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def _http(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.layout.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.layout.pki / "admin.crt"), str(self.layout.pki / "admin.key"))
        return httpx.Client(verify=ctx, timeout=5)

    def apiserver_ready(self) -> bool:
        if not (self.layout.pki / "admin.crt").exists():
            return False
        try:
            with self._http() as c:
                return c.get(f"{self.server}/readyz").status_code == 200
        except (httpx.HTTPError, OSError):
            return False

    @property
    def network(self) -> PodNetwork:
        return PodNetwork.for_offset(self.ports.offset)

    def is_running(self) -> bool:
        """The control plane is up (the pod runner is checked, and restarted if needed, by `up`)."""
        return all(processes.running(self.layout.run, n) is not None for n in CONTROL_PLANE) and self.apiserver_ready()

    # -- lifecycle -----------------------------------------------------------------------------------
    def up(self, scale: Mapping[str, int] | None = None, progress: Callable[[str], None] = _say,
           runner: RunnerSettings | None = None) -> None:
        """Start whatever is not running, then make the simulated nodes match the pools file."""
        t0 = time.monotonic()
        pools = nodepools.load_pools(self.pools_file, scale)  # validate input before starting anything
        ensure_tools(self.versions, only=("etcd", "kwok", "kubernetes"), progress=progress)
        if self.is_running():
            progress(f"cluster already running at {self.server}; reconciling nodes")
        else:
            self.down(quiet=True)  # a half-started cluster from a crash: clean its processes first
            self.ports = self._wanted_ports()
            for port in self.ports.all():
                processes.check_port_free(port)
            self.layout.root.mkdir(parents=True, exist_ok=True)
            self.layout.ports_file.write_text(json.dumps(self.ports.__dict__))
            self._pki()
            self._start_etcd(progress)
            self._start_apiserver(progress)
            self._start_controllers(progress)
        self.apply_nodes(pools, progress)
        self._wait_default_service_account()
        self._start_pod_runner(runner or RunnerSettings(), progress)
        progress(f"cluster ready in {time.monotonic() - t0:.0f}s; kubeconfig: {self.layout.kubeconfig}")

    def down(self, quiet: bool = False) -> list[str]:
        """Stop exactly the processes this tool started (safe to call any number of times)."""
        stopped = [n for n in reversed(COMPONENTS) if processes.stop(self.layout.run, n)]
        if not quiet:
            _say(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        return stopped

    def delete(self) -> None:
        """Stop and remove all state (certificates, etcd data, kubeconfig)."""
        self.down(quiet=True)
        shutil.rmtree(self.layout.root, ignore_errors=True)

    # -- steps ---------------------------------------------------------------------------------------
    def _pki(self) -> None:
        d = self.layout.pki
        ca = pki.ensure_ca(d)
        pki.ensure_service_account_keys(d)
        pki.issue(ca, d, "apiserver", "kube-apiserver", client=False,
                  server_names=("127.0.0.1", "localhost", SERVICE_IP, "kubernetes", "kubernetes.default",
                                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"))
        pki.issue(ca, d, "admin", "kubernetes-admin", org="system:masters")
        pki.issue(ca, d, "controller-manager", "system:kube-controller-manager")
        pki.issue(ca, d, "scheduler", "system:kube-scheduler")
        pki.issue(ca, d, "kwok", "kwok-controller", org="system:masters")
        pki.issue(ca, d, "pod-runner", "infleet-pod-runner", org="system:masters")
        ca_crt = d / "ca.crt"
        self.layout.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        self.layout.kubeconfig.write_text(_kubeconfig(self.server, ca_crt, d / "admin.crt", d / "admin.key",
                                                      "kubernetes-admin"))
        self.layout.kubeconfig.chmod(0o600)
        for name in ("controller-manager", "scheduler", "kwok"):
            path = self.layout.component_kubeconfig(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_kubeconfig(self.server, ca_crt, d / f"{name}.crt", d / f"{name}.key", name))

    def _start(self, name: str, argv: Sequence[str]) -> processes.Started:
        return processes.start(name, argv, self.layout.run)

    def _alive(self, name: str) -> Callable[[], bool]:
        return lambda: processes.running(self.layout.run, name) is not None

    def _start_etcd(self, progress: Callable[[str], None]) -> None:
        p = self.ports
        progress(f"starting etcd {self.versions.etcd} on 127.0.0.1:{p.etcd_client}")
        started = self._start("etcd", [
            str(self.binary("etcd")), "--name=infleet", f"--data-dir={self.layout.etcd_data}",
            f"--listen-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--advertise-client-urls=http://127.0.0.1:{p.etcd_client}",
            f"--listen-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{p.etcd_peer}",
            f"--initial-cluster=infleet=http://127.0.0.1:{p.etcd_peer}",
            "--unsafe-no-fsync",  # test cluster: durability is not the point, speed on slow disks is
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ])

        def healthy() -> bool:
            try:
                r = httpx.get(f"http://127.0.0.1:{p.etcd_client}/health", timeout=2)
                return r.status_code == 200 and r.json().get("health") == "true"
            except (httpx.HTTPError, ValueError):
                return False

        _wait("etcd", healthy, 60, started.log, self._alive("etcd"))

    def _start_apiserver(self, progress: Callable[[str], None]) -> None:
        d, p = self.layout.pki, self.ports
        progress(f"starting kube-apiserver {self.versions.kubernetes} on {self.server}")
        started = self._start("kube-apiserver", [
            str(self.binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{p.etcd_client}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p.apiserver}",
            f"--tls-cert-file={d / 'apiserver.crt'}", f"--tls-private-key-file={d / 'apiserver.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",  # one user: APF only costs CPU on a 2-core box
            "--profiling=false",
            "--v=1",
        ])
        _wait("kube-apiserver /readyz", self.apiserver_ready, 120, started.log, self._alive("kube-apiserver"))

    def _start_controllers(self, progress: Callable[[str], None]) -> None:
        d, p = self.layout.pki, self.ports
        progress("starting kube-controller-manager, kube-scheduler and kwok")
        cm = self._start("kube-controller-manager", [
            str(self.binary("kube-controller-manager")),
            f"--kubeconfig={self.layout.component_kubeconfig('controller-manager')}",
            f"--authentication-kubeconfig={self.layout.component_kubeconfig('controller-manager')}",
            f"--authorization-kubeconfig={self.layout.component_kubeconfig('controller-manager')}",
            "--bind-address=127.0.0.1", f"--secure-port={p.controller_manager}",
            f"--cert-dir={self.layout.run / 'cm-certs'}",
            f"--service-account-private-key-file={d / 'sa.key'}", f"--root-ca-file={d / 'ca.crt'}",
            f"--cluster-signing-cert-file={d / 'ca.crt'}", f"--cluster-signing-key-file={d / 'ca.key'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            # Nodes are simulated: no cloud, no IPAM; keep the node lifecycle controller so NotReady is real.
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
            "--v=1",
        ])
        sched = self._start("kube-scheduler", [
            str(self.binary("kube-scheduler")),
            f"--kubeconfig={self.layout.component_kubeconfig('scheduler')}",
            f"--authentication-kubeconfig={self.layout.component_kubeconfig('scheduler')}",
            f"--authorization-kubeconfig={self.layout.component_kubeconfig('scheduler')}",
            "--bind-address=127.0.0.1", f"--secure-port={p.scheduler}",
            f"--cert-dir={self.layout.run / 'sched-certs'}",
            "--leader-elect=false", "--v=1",
        ])
        kwok = self._start("kwok", [
            str(self.binary("kwok")),
            f"--kubeconfig={self.layout.component_kubeconfig('kwok')}",
            f"--manage-nodes-with-annotation-selector={nodepools.KWOK_ANNOTATION}=fake",
            # Simulated pod and node addresses live in the loopback range: anything that dials them (the
            # operator scraping worker metrics, a test) stays on this machine and is refused at once,
            # instead of sending traffic to a private network that is not ours.
            f"--cidr={self.network.simulated}", f"--node-ip={NODE_IP}",
            f"--server-address=127.0.0.1:{p.kwok}",
            f"--config={KWOK_STAGES}",
            "--node-lease-duration-seconds=40",  # leases keep nodes Ready without status heartbeats
        ])
        for started in (cm, sched, kwok):
            time.sleep(0.5)
            if processes.running(self.layout.run, started.name) is None:
                raise ClusterError(f"{started.name} exited at start; log {started.log}:\n"
                                   f"{processes.log_tail(started.log)}")

    def _start_pod_runner(self, settings: RunnerSettings, progress: Callable[[str], None]) -> None:
        """The admission policy that opts namespaces in, then the runner process (restarted if its settings changed)."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(RUN_PODS_POLICY))
        self.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": RUNNER_CHECK_NAMESPACE, "labels": {"infleet.dev/run-pods": "true"}}}))
        want = json.dumps(settings.args())
        running = processes.running(self.layout.run, POD_RUNNER) is not None
        try:
            have = self.layout.runner_args_file.read_text()
        except OSError:
            have = ""
        if running and have != want:
            progress("pod runner settings changed: restarting it")
            processes.stop(self.layout.run, POD_RUNNER, timeout=20)
            running = False
        if not running:
            progress(f"starting the pod runner (real workers for pods in namespaces labelled infleet.dev/run-pods=true,"
                     f" addresses {self.network.running}); log {self.layout.run / 'pod-runner.log'}")
            script = Path(sys.executable).parent / "infleet-cluster"
            argv = [str(script)] if script.exists() else [sys.executable, "-m", "infleet_devcluster.cli"]
            (self.layout.run / "pod-runner-workers.json").unlink(missing_ok=True)  # the runner writes it when ready
            self._start(POD_RUNNER, [*argv, "run-pods", "--state-dir", str(self.layout.root), *settings.args()])
            self.layout.runner_args_file.write_text(want)
        _wait("the run-pods admission policy", self._run_pods_policy_active, 60,
              self.layout.run / "kube-apiserver.log")
        _wait("the pod runner", (self.layout.run / "pod-runner-workers.json").exists, 120,
              self.layout.run / f"{POD_RUNNER}.log", self._alive(POD_RUNNER))

    def _run_pods_policy_active(self) -> bool:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "policy-check"},
               "spec": {"containers": [{"name": "c", "image": "example.invalid/none:1"}]}}
        res = self.kubectl("create", "--dry-run=server", "-n", RUNNER_CHECK_NAMESPACE, "-o", "json", "-f", "-",
                           input=json.dumps(pod), check=False)
        if res.returncode != 0:
            return False
        labels = json.loads(res.stdout)["metadata"].get("labels") or {}
        return bool(labels.get("infleet.dev/run-pods") == "true")

    def apply_nodes(self, pools: list[nodepools.NodePool], progress: Callable[[str], None] = _say,
                    timeout: float = 300) -> None:
        """Create missing simulated nodes, delete surplus ones of known pools, wait until all are Ready."""
        want = nodepools.node_manifests(pools)
        want_names = {m["metadata"]["name"] for m in want}
        have = self._node_names()
        pool_names = {p.name for p in pools}
        surplus = sorted(n for n, pool in have.items() if pool in pool_names and n not in want_names)
        missing = [m for m in want if m["metadata"]["name"] not in have]
        if surplus:
            progress(f"deleting {len(surplus)} surplus nodes")
            for i in range(0, len(surplus), 200):
                self.kubectl("delete", "node", "--wait=false", *surplus[i:i + 200])
        if missing:
            progress(f"creating {len(missing)} simulated nodes in {len(pools)} pools")
            for i in range(0, len(missing), 500):  # chunks keep each request well under the size limit
                doc = {"apiVersion": "v1", "kind": "List", "items": missing[i:i + 500]}
                self.kubectl("create", "-f", "-", input=json.dumps(doc), timeout=600)
        _wait(f"{len(want)} nodes Ready", lambda: self._ready_count(want_names) == len(want_names), timeout,
              self.layout.run / "kwok.log")

    def _node_names(self) -> dict[str, str]:
        out = self.kubectl("get", "nodes", "-o", "json").stdout
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return {i["metadata"]["name"]: i["metadata"].get("labels", {}).get(nodepools.POOL_LABEL, "") for i in items}

    def _ready_count(self, names: set[str]) -> int:
        items: list[dict[str, Any]] = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        ready = 0
        for node in items:
            if node["metadata"]["name"] not in names:
                continue
            conds = node.get("status", {}).get("conditions", [])
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
                ready += 1
        return ready

    def _wait_default_service_account(self) -> None:
        """Pods can't be created in a namespace before its `default` ServiceAccount exists."""
        _wait("default ServiceAccount",
              lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
              60, self.layout.run / "kube-controller-manager.log")

    def status(self) -> dict[str, Any]:
        procs = {n: processes.running(self.layout.run, n) for n in COMPONENTS}
        return {
            "server": self.server, "kubeconfig": str(self.layout.kubeconfig), "processes": procs,
            "apiserver_ready": self.apiserver_ready(), "simulated_pod_cidr": str(self.network.simulated),
            "running_pod_cidr": str(self.network.running),
        }
