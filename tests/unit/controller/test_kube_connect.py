"""The operator's API client keeps as many connections as it will use at once, whatever the host's CPU count."""

from __future__ import annotations

from pathlib import Path

from infleet.controller.kube import Kube

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def test_connections_size_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    kube = Kube.connect(path, connections=23)
    assert kube.api.configuration.host == "https://127.0.0.1:6443"
    assert kube.api.rest_client.pool_manager.connection_pool_kw["maxsize"] == 23
    assert Kube.connect(path).api.configuration.connection_pool_maxsize >= 1  # the client's own default
