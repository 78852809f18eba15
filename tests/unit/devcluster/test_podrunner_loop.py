"""The pod runner's loop with thin fakes for the API, the watch and the process launcher: the cap, the emulated
cold start, crash back-off and graceful deletion, step by step in simulated time (no cluster, no processes)."""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from infleet_devcluster import podrunner
from infleet_devcluster.forkserver import Exited
from infleet_devcluster.podrunner import PodRunner, RunnerConfig


class FakeAPI:
    def __init__(self, cold_start_s: float = 0) -> None:
        self.statuses: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.cold_start_s = cold_start_s

    def get(self, path: str) -> dict[str, Any] | None:
        if "/acceleratorpools/" in path:
            return {"spec": {"coldStartSeconds": self.cold_start_s}}
        return None

    def patch_pod_status(self, ns: str, name: str, status: Mapping[str, Any]) -> None:
        self.statuses[name] = dict(status)

    def delete_pod_now(self, ns: str, name: str, uid: str) -> None:
        self.deleted.append(name)


class FakeWatch:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def pods(self) -> list[dict[str, Any]]:
        return self.items


class FakeLauncher:
    def __init__(self) -> None:
        self.spawned: dict[str, int] = {}
        self.pending: list[Exited] = []
        self.next_pid = 1000

    def spawn(self, key: str, argv: Sequence[str], env: Mapping[str, str], log: Path, threads: int) -> int:
        self.next_pid += 1
        self.spawned[key] = self.next_pid
        return self.next_pid

    def exits(self) -> list[Exited]:
        out, self.pending = self.pending, []
        return out

    def close(self) -> None:
        pass


def pod(name: str, deleting: bool = False, grace: int = 30) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                            "labels": {"infleet.io/pool": "cpu", "infleet.dev/run-pods": "true"}}
    if deleting:
        meta |= {"deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": grace}
    return {"metadata": meta, "spec": {"nodeName": "cpu-0000", "containers": [{
        "name": "worker", "image": "img", "command": ["infleet-worker"],
        "args": ["serve", "--model", "tiny", "--port", "8000"],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 8000}, "periodSeconds": 5}}]}}


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PodRunner, FakeAPI, FakeWatch, FakeLauncher]:
    signals: list[tuple[int, int]] = []
    monkeypatch.setattr(podrunner.os, "kill", lambda pid, sig: signals.append((pid, sig)))
    api = FakeAPI(cold_start_s=100)
    config = RunnerConfig(run_dir=tmp_path, network=ipaddress.IPv4Network("127.96.253.0/24"), host_ip="127.0.0.2",
                          max_workers=2, cold_start_scale=0.05, probe_period_s=3600)
    r = PodRunner(api, config)  # type: ignore[arg-type]  # the fake has the methods the runner calls
    watch, launcher = FakeWatch(), FakeLauncher()
    r.watch, r.launcher = watch, launcher  # type: ignore[assignment]
    r.pods_dir.mkdir()
    r.signals = signals  # type: ignore[attr-defined]
    return r, api, watch, launcher


def waiting(api: FakeAPI, name: str) -> dict[str, Any]:
    state: dict[str, Any] = api.statuses[name]["containerStatuses"][0]["state"]
    return state.get("waiting", {})


def test_cold_start_then_cap(runner: tuple[PodRunner, FakeAPI, FakeWatch, FakeLauncher]) -> None:
    r, api, watch, launcher = runner
    watch.items = [pod("a"), pod("b"), pod("c")]
    r.tick(1000.0)
    assert launcher.spawned == {}  # 100 s declared x 0.05 = 5 s of emulated cold start
    assert "emulated cold start: 5.0s" in waiting(api, "a")["message"]
    r.tick(1005.0)
    assert set(launcher.spawned) == {"uid-a", "uid-b"}  # the cap is 2
    assert waiting(api, "c")["reason"] == "RunnerCapacity" and "--max-workers 2" in waiting(api, "c")["message"]
    ips = {api.statuses[n]["podIP"] for n in "abc"}
    assert len(ips) == 3 and all(ipaddress.ip_address(i) in r.config.network for i in ips)


def test_crash_is_reported_then_restarted_after_backoff(
        runner: tuple[PodRunner, FakeAPI, FakeWatch, FakeLauncher]) -> None:
    r, api, watch, launcher = runner
    watch.items = [pod("a")]
    r.tick(1000.0)
    r.tick(1005.0)
    pid = launcher.spawned["uid-a"]
    launcher.pending.append(Exited(key="uid-a", pid=pid, code=137))
    r.tick(1010.0)
    cs = api.statuses["a"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 137 and cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    r.tick(1019.0)
    assert launcher.spawned["uid-a"] == pid  # still backing off (10 s)
    r.tick(1020.5)
    assert launcher.spawned["uid-a"] != pid
    assert api.statuses["a"]["containerStatuses"][0]["restartCount"] == 1


def test_delete_sends_sigterm_then_sigkill_after_grace_then_removes_the_pod(
        runner: tuple[PodRunner, FakeAPI, FakeWatch, FakeLauncher]) -> None:
    r, api, watch, launcher = runner
    watch.items = [pod("a")]
    r.tick(1000.0)
    r.tick(1005.0)
    pid = launcher.spawned["uid-a"]
    watch.items = [pod("a", deleting=True, grace=7)]
    r.tick(1006.0)
    assert r.signals == [(pid, signal.SIGTERM)]  # type: ignore[attr-defined]
    r.tick(1012.0)
    assert r.signals == [(pid, signal.SIGTERM)]  # type: ignore[attr-defined]  # still within the grace period
    r.tick(1013.5)
    assert r.signals[-1] == (pid, signal.SIGKILL)  # type: ignore[attr-defined]
    assert api.deleted == []  # the process has not exited yet
    launcher.pending.append(Exited(key="uid-a", pid=pid, code=137))
    r.tick(1014.0)
    assert api.deleted == ["a"]
    watch.items = []
    r.tick(1015.0)
    assert r.tracked == {}
