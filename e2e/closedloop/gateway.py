"""The real `infleet-gateway --kube` in front of one scenario's namespace, on loopback: the scenarios' clients
send every request through it, and the operator scales on its `/metrics` (``--gateway-url``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from closedloop.waiting import wait_for
from infleet_devcluster.ports import free_port


class GatewayProcess:
    """`infleet-gateway --kube` watching one namespace; ``url`` is its base URL (``/v1`` for the OpenAI SDK)."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(Path(sys.executable).parent / "infleet-gateway"), "--kube", "--kubeconfig", str(kubeconfig),
               "--namespace", namespace, "--host", "127.0.0.1", "--port", str(self.port), "--shutdown-grace", "5"]
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)

    @property
    def metrics_url(self) -> str:
        return f"{self.url}/metrics"

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it serves /healthz (its discovery may still be syncing: requests then wait in its queue)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the gateway exited; log {self.log}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the gateway to listen", up, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
