"""The worker fork server with real processes (no cluster): forked workers serve, and their exits are reported
with the code the kubelet would show."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from infleet_devcluster.forkserver import Exited, ForkServerLauncher

pytestmark = pytest.mark.slow

HOST = "127.96.251.1"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready in {timeout}s")


def _wait_exit(launcher: ForkServerLauncher, key: str, timeout: float = 30) -> Exited:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ex in launcher.exits():
            if ex.key == key:
                return ex
        time.sleep(0.05)
    raise AssertionError(f"no exit reported for {key}")


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServerLauncher]:
    fs = ForkServerLauncher(tmp_path_factory.mktemp("forkserver"))
    yield fs
    fs.close()


def _spawn(launcher: ForkServerLauncher, key: str, tmp_path: Path) -> tuple[int, str]:
    port = _free_port(HOST)
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    pid = launcher.spawn(key, ["serve", "--model", "tiny", "--device", "cpu", "--host", HOST, "--port", str(port)],
                         env, tmp_path / f"{key}.log", 1)
    base = f"http://{HOST}:{port}"
    _wait_ready(f"{base}/readyz")
    return pid, base


def test_forked_worker_serves_and_drains_on_sigterm(launcher: ForkServerLauncher, tmp_path: Path) -> None:
    pid, base = _spawn(launcher, "a", tmp_path)
    r = httpx.post(f"{base}/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 4}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "infleet-worker"  # how ps/top name it
    os.kill(pid, signal.SIGTERM)
    ex = _wait_exit(launcher, "a")
    assert (ex.pid, ex.code) == (pid, 0)
    assert "drained; exiting" in (tmp_path / "a.log").read_text()


def test_killed_worker_reports_128_plus_signal(launcher: ForkServerLauncher, tmp_path: Path) -> None:
    pid, _ = _spawn(launcher, "b", tmp_path)
    os.kill(pid, signal.SIGKILL)
    assert _wait_exit(launcher, "b").code == 137
