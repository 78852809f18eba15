"""Real `infleet-worker serve` (tiny built-in model, CPU) and `infleet-gateway` processes on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from infleet_devcluster.ports import free_port


class Process:
    def __init__(self, args: list[str], name: str) -> None:
        self.args, self.name = args, name
        self.log: IO[bytes] = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def wait_http(self, url: str, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None
            assert self.proc.poll() is None, f"{self.name} exited:\n{self.output()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, f"{self.name} not ready at {url}:\n{self.output()[-3000:]}"
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Worker(Process):
    def __init__(self, model: str = "tiny", port: int | None = None, slots: int = 8) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__([sys.executable, "-m", "infleet_worker.cli", "serve", "--model", "tiny", "--device", "cpu",
                          "--served-model-name", model, "--host", "127.0.0.1", "--port", str(self.port),
                          "--num-slots", str(slots), "--max-seq-len", "1024", "--drain-grace-seconds", "5"],
                         f"worker-{self.port}")

    def wait_ready(self) -> None:
        self.wait_http(self.url + "/readyz")


class Gateway(Process):
    def __init__(self, endpoints_yaml: str, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.endpoints = Path(tempfile.mkdtemp(prefix="gw-")) / "endpoints.yaml"
        self.endpoints.write_text(endpoints_yaml)
        super().__init__([sys.executable, "-m", "infleet_gateway.cli", "--host", "127.0.0.1", "--port",
                          str(self.port), "--endpoints", str(self.endpoints), "--probe-interval", "0.2", *extra],
                         f"gateway-{self.port}")

    def wait_ready(self) -> None:
        self.wait_http(self.url + "/readyz", timeout_s=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return str(r.read().decode())

    def sample(self, name: str, **labels: str) -> float:
        """Sum of the series `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{"):
                continue
            head, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total
