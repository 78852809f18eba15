"""Helpers for the chart's cluster tests: helm against the test cluster, a kubeconfig that authenticates as the
chart's ServiceAccount, and a running operator process."""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "infleet"


def apply_crds(cluster: Any) -> None:
    """Apply crds/ as the other suites do, so a chart module passes on its own and in any order."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/inferencedeployments.infleet.io", "crd/acceleratorpools.infleet.io")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def helm(cluster: Any, *args: str, check: bool = True, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    cmd = [str(cluster.binary("helm")), "--kubeconfig", str(cluster.kubeconfig), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster.env(), check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def kube_json(cluster: Any, *args: str) -> dict[str, Any]:
    out = cluster.kubectl(*args, "-o", "yaml").stdout
    data: dict[str, Any] = yaml.safe_load(out)
    return data


def serviceaccount_kubeconfig(cluster: Any, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig with a short-lived token of the ServiceAccount (TokenRequest API), as a pod would have."""
    token = cluster.kubectl("-n", namespace, "create", "token", sa, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    ctx_name = admin["current-context"]
    ctx = next(c["context"] for c in admin["contexts"] if c["name"] == ctx_name)
    clu = dict(next(c["cluster"] for c in admin["clusters"] if c["name"] == ctx["cluster"]))
    if "certificate-authority" in clu:  # inline it: the file path is relative to the admin kubeconfig
        ca = Path(clu.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else cluster.kubeconfig.parent / ca
        clu["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    cfg = {
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": clu}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@contextlib.contextmanager
def operator_process(kubeconfig: Path, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """`infleet run` as a local process (the chart's pod cannot run a real container on kwok nodes)."""
    cmd = [sys.executable, "-m", "infleet.cli", "run", "--kubeconfig", str(kubeconfig), "--log-format", "text",
           *args]
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    with log.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(what: str, check: Any, timeout: float = 60, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pool_manifest(name: str, nodepool: str = "cpu-on-demand") -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "AcceleratorPool", "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"karpenter.sh/nodepool": nodepool},
            "accelerator": {"family": "cpu", "product": "c7i", "resourceName": "cpu", "devicesPerNode": 4,
                            "cpusPerDevice": 8, "memoryGiBPerDevice": 15},
            "capacityType": "on-demand", "pricePerDeviceHourUSD": 0.357, "coldStartSeconds": 90,
            "power": {"typicalWattsPerDevice": 25},
            "performanceProfiles": [{"modelClass": "llm-0.5b", "tokensPerSecond": 60, "requestsPerSecond": 2,
                                     "latencyBoundMs": 3000}],
        },
    }


def deployment_manifest(namespace: str, name: str, pool: str, source: str = "builtin://tiny") -> dict[str, Any]:
    return {
        "apiVersion": "infleet.io/v1alpha1", "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"name": "tiny", "source": source, "parametersBillions": 0.5, "families": ["cpu"],
                      "modelClass": "llm-0.5b"},
            "slo": {"p99LatencyMs": 3000, "ttftP99Ms": 800, "throughput": {"requestsPerSecond": 1}},
            "placement": {"families": ["cpu"], "pools": [pool]},
            "scaling": {"minReplicas": 1, "maxReplicas": 2},
        },
    }


def pvc_manifest(namespace: str, name: str) -> dict[str, Any]:
    """A claim for model weights; it only has to exist for placement (nothing mounts it on kwok nodes)."""
    return {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": namespace},
        "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }


def cleanup(cluster: Any, *objects: tuple[str | None, str, str]) -> None:
    """Delete this test's own objects ((namespace or None, resource, name)) once its operator has stopped.

    A stopped operator cannot remove finalizers it added, so they are dropped first: the objects are this test's,
    and leaving them would keep the namespace Terminating for every later run."""
    for namespace, resource, name in objects:
        scope = ["-n", namespace] if namespace else []
        cluster.kubectl(*scope, "patch", resource, name, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                        check=False)
        cluster.kubectl(*scope, "delete", resource, name, "--wait=false", "--ignore-not-found", check=False)
