"""Unit tests of the local-cluster tooling's failure paths and pure pieces (no cluster, no Go build)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from infleet_devcluster import processes
from infleet_devcluster.config import Versions, load_versions
from infleet_devcluster.nodepools import PoolFileError, load_pools, node_manifest, parse_pools
from infleet_devcluster.tools import BuildError, Tool, _go_binary_name, build_tool, check_go, tools_for


def test_versions_file_pins_every_tool() -> None:
    v = load_versions()
    assert all(x.startswith("v") for x in (v.kubernetes, v.etcd, v.kwok, v.helm, v.kind, v.prometheus))
    names = {t.name for t in tools_for(v)}
    assert names == {"etcd", "kwok", "helm", "kind", "kubernetes", "prometheus"}
    assert {t.name for t in tools_for(v) if t.optional} == {"prometheus"}  # `make test` never builds it


def test_versions_file_missing_key_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "versions.env"
    f.write_text("KUBERNETES_VERSION=v1.36.3\n")
    with pytest.raises(ValueError, match="missing ETCD_VERSION"):
        load_versions(f)


def _fake_go(tmp_path: Path, version_line: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    go = bindir / "go"
    go.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    go.chmod(go.stat().st_mode | stat.S_IEXEC)
    return bindir


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BuildError, match=r"Go is not installed.*Go >= 1\.26"):
        check_go("1.26")


def test_old_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(_fake_go(tmp_path, "go version go1.21.4 linux/amd64")))
    with pytest.raises(BuildError, match=r"Go 1\.21 is too old.*>= 1\.26"):
        check_go("1.26")


def test_new_enough_go_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(_fake_go(tmp_path, "go version go1.27.0 linux/amd64")))
    assert "go1.27.0" in check_go("1.26")


def test_failed_build_names_the_tool_and_its_log(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A build that fails (here: go itself fails) raises with the tool, the exit code and the log path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    go = bindir / "go"
    go.write_text("#!/bin/sh\necho 'go: module example.invalid/nope: 404 Not Found' >&2\nexit 1\n")
    go.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("INFLEET_CACHE", str(tmp_path / "cache"))
    tool = Tool("nope", "example.invalid/nope", "v0.0.1", {"nope": "example.invalid/nope"})
    with pytest.raises(BuildError, match=r"(?s)nope: resolve modules failed \(exit 1\).*nope-v0\.0\.1\.log.*404"):
        build_tool(tool, progress=lambda _msg: None)
    assert not (tmp_path / "cache" / "bin" / "nope-v0.0.1").exists()  # nothing half-built is cached


def test_cached_binaries_are_not_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INFLEET_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no go at all: a rebuild attempt would fail
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nope-v1.0.0").write_text("")
    tool = Tool("nope", "example.invalid/nope", "v1.0.0", {"nope": "example.invalid/nope"})
    assert build_tool(tool, progress=lambda _msg: None) == [tmp_path / "bin" / "nope-v1.0.0"]


def test_go_binary_names_skip_major_version_suffix() -> None:
    assert _go_binary_name("go.etcd.io/etcd/server/v3") == "server"
    assert _go_binary_name("k8s.io/kubernetes/cmd/kube-apiserver") == "kube-apiserver"


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(processes.PortInUseError, match=rf"127\.0\.0\.1:{port} is already in use"):
            processes.check_port_free(port)


def test_stop_kills_only_what_it_started_and_is_idempotent(tmp_path: Path) -> None:
    started = processes.start("sleeper", ["/bin/sleep", "60"], tmp_path)
    assert processes.running(tmp_path, "sleeper") == started.pid
    assert processes.stop(tmp_path, "sleeper") is True
    assert processes.running(tmp_path, "sleeper") is None
    assert processes.stop(tmp_path, "sleeper") is False  # second call: nothing to do, no error


def test_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another program must not be killed."""
    other = subprocess.Popen(["/bin/sleep", "60"])
    try:
        (tmp_path / "etcd.pid").write_text(f'{{"pid": {other.pid}, "exe": "/opt/not-sleep"}}')
        assert processes.running(tmp_path, "etcd") is None
        assert processes.stop(tmp_path, "etcd") is False
        time.sleep(0.1)
        assert other.poll() is None  # still alive
    finally:
        other.kill()
        other.wait()


def test_pool_file_errors_name_the_pool_and_field() -> None:
    with pytest.raises(PoolFileError, match="pool 'x': missing required field 'count'"):
        parse_pools("pools:\n- name: x\n  instanceType: a\n  capacityType: spot\n  allocatable: {}\n")
    with pytest.raises(PoolFileError, match="capacityType must be one of"):
        parse_pools("pools:\n- {name: x, count: 1, instanceType: a, capacityType: reserved, allocatable: {}}\n")
    doc = "- {name: x, count: 1, instanceType: a, capacityType: spot, allocatable: {cpu: 1, memory: 1, pods: 1}}\n"
    with pytest.raises(PoolFileError, match="duplicate pool name"):
        parse_pools("pools:\n" + doc + doc)


def test_scale_overrides_counts_and_rejects_unknown_pools() -> None:
    pools = {p.name: p for p in load_pools(scale={"h100-on-demand": 1000})}
    assert pools["h100-on-demand"].count == 1000
    with pytest.raises(PoolFileError, match="unknown pool"):
        load_pools(scale={"a100-nowhere": 3})


def test_node_manifest_looks_like_a_real_accelerator_node() -> None:
    pool = {p.name: p for p in load_pools()}["tpu-v5e-on-demand"]
    node = node_manifest(pool, 7)
    assert node["metadata"]["name"] == "tpu-v5e-on-demand-0007"
    labels = node["metadata"]["labels"]
    assert labels["karpenter.sh/nodepool"] == "tpu-v5e-on-demand"
    assert labels["cloud.google.com/gke-tpu-accelerator"] == "tpu-v5-lite-podslice"
    assert node["status"]["allocatable"]["google.com/tpu"] == "4"
    assert node["spec"]["taints"] == [{"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}]
    assert node["metadata"]["annotations"] == {"kwok.x-k8s.io/node": "fake"}


def test_versions_dataclass_is_frozen() -> None:
    v = Versions("v1", "v2", "v3", "v4", "v5", "1.26")
    with pytest.raises(AttributeError):
        v.kubernetes = "x"  # type: ignore[misc]
