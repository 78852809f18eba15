"""Discovery without a cluster: the static file and flags, the worker-page probe parser, and the informer cache
that turns pod and InferenceDeployment events into routable replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infleet.controller import manifests
from infleet_gateway import kube
from infleet_gateway.cli import build_parser, configure
from infleet_gateway.kube import DiscoveryCache, deployment_of, replica_of
from infleet_gateway.probe import apply_probe, parse_worker_page
from infleet_gateway.replicas import EndpointTable, Replica, ReplicaSpec
from infleet_gateway.server import prefix_key
from infleet_gateway.static import ConfigError, fill, load_file, merge, parse_endpoint_flag


def test_label_names_match_the_operators() -> None:
    assert (kube.MANAGED_BY, kube.MANAGER, kube.LABEL_DEPLOYMENT, kube.LABEL_POOL, kube.LABEL_ROLE,
            kube.WORKER_PORT) == (manifests.MANAGED_BY, manifests.MANAGER, manifests.LABEL_DEPLOYMENT,
                                  manifests.LABEL_POOL, manifests.LABEL_ROLE, manifests.WORKER_PORT)


def test_static_file_and_flags(tmp_path: Path) -> None:
    f = tmp_path / "endpoints.yaml"
    f.write_text("""
deployments:
  - model: tiny
    name: chat
    namespace: team
    ttftP99Ms: 300
    p99LatencyMs: 2000
    replicas:
      - {url: "http://127.0.0.1:9001", pool: h100, capacityRps: 8}
""")
    table = EndpointTable()
    fill(table, merge(load_file(f), ["tiny=http://127.0.0.1:9002,pool=cpu,capacity=1", "other=http://h:1"]))
    chat = table.by_model("tiny")
    assert chat is not None
    assert chat.key == ("team", "chat")
    assert chat.spec.ttft_slo_s == 0.3
    assert {r.spec.pool: r.spec.capacity_rps for r in chat.replicas.values()} == {"h100": 8.0, "cpu": 1.0}
    # Little's law: 8 req/s within 2 s holds 16 requests.
    assert chat.max_in_flight(chat.replicas["http://127.0.0.1:9001"], 4) == 16
    assert table.models() == ["other", "tiny"]


@pytest.mark.parametrize(("text", "needle"), [
    ("deployments: [{model: x, replicas: [{url: 'ftp://h'}]}]", "url"),
    ("deployments: [{model: x, replicas: [{url: 'http://h:1', capacityRps: -1}]}]", "capacityRps"),
    ("deployments: [{model: x, colour: red}]", "colour"),
    ("deployments: [", "not valid YAML"),
])
def test_a_bad_static_file_is_a_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "e.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_file(f)


@pytest.mark.parametrize("flag", ["tiny", "tiny=", "tiny=http://h:1,weight=3", "tiny=http://h:1,capacity=abc"])
def test_a_bad_endpoint_flag_is_a_clear_error(flag: str) -> None:
    with pytest.raises(ConfigError, match="--endpoint"):
        parse_endpoint_flag(flag)


def test_one_discovery_mode_must_be_chosen() -> None:
    with pytest.raises(ConfigError, match="choose one discovery"):
        configure(build_parser().parse_args([]))
    with pytest.raises(ConfigError, match="choose one discovery"):
        configure(build_parser().parse_args(["--kube", "--endpoint", "m=http://h:1"]))
    gateway, kube_mode = configure(build_parser().parse_args(["--endpoint", "m=http://h:1"]))
    assert not kube_mode
    assert gateway.synced


def test_cli_exits_2_with_a_message_on_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from infleet_gateway.cli import main

    assert main(["--endpoint", "m=http://h:1", "--load-bound", "0.5"]) == 2
    assert "load_bound" in capsys.readouterr().err


WORKER_PAGE = """# HELP infleet_worker_num_requests_waiting x
infleet_worker_num_requests_waiting{model="tiny"} 3.0
infleet_worker_num_requests_running{model="tiny"} 2.0
infleet_worker_kv_cache_usage_perc{model="tiny"} 0.5
infleet_worker_lifecycle_state{model="tiny",state="starting"} 0.0
infleet_worker_lifecycle_state{model="tiny",state="serving"} 1.0
infleet_worker_lifecycle_state{model="tiny",state="draining"} 0.0
infleet_worker_requests_total{model="tiny",status="stop"} 7.0
garbage line
"""


def test_probe_reads_queue_running_kv_and_state() -> None:
    page = parse_worker_page(WORKER_PAGE)
    assert (page.waiting, page.running, page.kv_usage, page.state) == (3.0, 2.0, 0.5, "serving")
    replica = Replica(spec=ReplicaSpec(replica_id="r", url="http://h:1", pool="p", ready=True))
    replica.cooldown_until_s = 100.0
    assert apply_probe(replica, page, 10.0)
    assert replica.worker is not None
    assert replica.worker.at_s == 10.0
    assert replica.cooldown_until_s == 10.0  # a good probe ends a cool-down
    assert replica.routing_state(10.0, probe_gates_ready=True) == "serving"
    assert apply_probe(replica, None, 11.0)
    assert replica.routing_state(11.0, probe_gates_ready=True) == "unready"
    assert replica.routing_state(11.0, probe_gates_ready=False) == "serving"  # kube mode: pod readiness decides


def test_probe_of_a_page_without_infleet_series() -> None:
    page = parse_worker_page("some_other_metric 1\n")
    assert (page.waiting, page.state) == (None, None)


def pod(name: str, *, ip: str | None = "10.0.0.1", ready: bool = True, role: str = "serving", pool: str = "h100",
        deleting: bool = False, deployment: str = "chat") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns", "uid": "uid-" + name,
                            "labels": {kube.MANAGED_BY: "infleet", kube.LABEL_DEPLOYMENT: deployment,
                                       kube.LABEL_POOL: pool, kube.LABEL_ROLE: role}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status,
            "spec": {"containers": [{"name": "worker", "ports": [{"name": "http", "containerPort": 8000}]}]}}


def infd(name: str = "chat", model: str = "llama", pools: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"model": {"name": model}, "slo": {"p99LatencyMs": 2000, "ttftP99Ms": 300}},
            "status": {"pools": pools or []}}


def test_pod_and_deployment_parsing() -> None:
    parsed = replica_of(pod("a", ip="fd00::1"))
    assert parsed is not None
    key, spec = parsed
    assert key == ("ns", "chat")
    assert spec.url == "http://[fd00::1]:8000"
    assert replica_of(pod("b", ip=None)) is None
    assert replica_of(pod("c", role="warm")) is None
    dparsed = deployment_of(infd(pools=[{"pool": "h100", "replicaCapacityRps": 12.5}, {"pool": "cpu"}]))
    assert dparsed is not None
    assert dparsed[1].pool_capacity_rps == (("h100", 12.5),)
    assert dparsed[1].ttft_slo_s == 0.3


def test_informer_cache_tracks_pods_and_deployments_in_any_order() -> None:
    table = EndpointTable()
    cache = DiscoveryCache(table)
    cache.replace("pods", [pod("a", ip="10.0.0.1"), pod("b", ip="10.0.0.2", pool="cpu", ready=False)])
    assert table.by_model("llama") is None  # pods first: no model to route by yet
    cache.replace("inferencedeployments", [infd(pools=[{"pool": "h100", "replicaCapacityRps": 10}])])
    dep = table.by_model("llama")
    assert dep is not None
    assert sorted(dep.replicas) == ["ns/a", "ns/b"]
    assert [r.routing_state(0.0, probe_gates_ready=False) for r in dep.replicas.values()] == ["serving", "unready"]
    assert dep.capacity(dep.replicas["ns/a"]) == 10.0
    assert dep.capacity(dep.replicas["ns/b"]) is None
    cache.event("pods", "MODIFIED", pod("a", ip="10.0.0.1", deleting=True))
    assert dep.replicas["ns/a"].routing_state(0.0, probe_gates_ready=False) == "draining"
    cache.event("pods", "DELETED", pod("a"))
    assert sorted(dep.replicas) == ["ns/b"]
    cache.event("pods", "MODIFIED", pod("b", ip="10.0.0.2", role="warm"))  # relabelled away from serving
    assert dep.replicas == {}
    cache.event("inferencedeployments", "DELETED", infd())
    assert table.deployments == {}


def test_prefix_key_of_completions_and_chat() -> None:
    assert prefix_key({"prompt": "abcdef"}, 3) == "abc"
    assert prefix_key({"prompt": ["xyz", "q"]}, 2) == "xy"
    assert prefix_key({"messages": [{"role": "system", "content": "be brief"}]}, 100) == "system:be brief\n"
    assert prefix_key({"prompt": "abc"}, 0) is None
