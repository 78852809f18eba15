"""The pod runner's pure parts: address ranges, pod -> worker command and environment, the status it reports."""

from __future__ import annotations

import base64
import ipaddress
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from infleet_devcluster import cli
from infleet_devcluster.podnet import AddressPool, PodNetwork
from infleet_devcluster.podrunner import RunnerConfig, capacity_message, crash_backoff, emulated_cold_start
from infleet_devcluster.podspec import PodNotRunnable, decode_secret, plan_launch, resolve_env, worker_argv
from infleet_devcluster.podstatus import ContainerView, Exit, pod_status


def test_ranges_of_different_offsets_never_overlap() -> None:
    nets = [PodNetwork.for_offset(o) for o in range(0, 1024)]
    ranges = [n.simulated for n in nets] + [n.running for n in nets]
    for net in ranges:
        assert net.subnet_of(ipaddress.IPv4Network("127.0.0.0/8"))
    ordered = sorted(ranges, key=lambda n: int(n.network_address))
    for a, b in itertools.pairwise(ordered):
        assert not a.overlaps(b), (a, b)


def test_offset_zero_and_the_usual_offsets() -> None:
    assert str(PodNetwork.for_offset(0).simulated) == "127.100.0.0/19"
    assert str(PodNetwork.for_offset(0).running) == "127.96.0.0/24"
    assert str(PodNetwork.for_offset(100).running) == "127.96.100.0/24"
    assert PodNetwork.for_offset(100).simulated.num_addresses == 8192
    with pytest.raises(ValueError, match=">= 0"):
        PodNetwork.for_offset(-1)


def test_address_pool_reuses_released_and_reports_exhaustion() -> None:
    pool = AddressPool(ipaddress.IPv4Network("127.96.5.0/30"))
    a, b = pool.allocate(), pool.allocate()
    assert (a, b) == ("127.96.5.1", "127.96.5.2")
    with pytest.raises(RuntimeError, match="no free address"):
        pool.allocate()
    pool.release(a)
    assert pool.allocate() == a


def _pod(args: list[str], env: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "worker", "image": "ghcr.io/infleet/worker-cuda:0.1.0", "command": ["infleet-worker"], "args": args,
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5},
        "env": env or [],
    }
    return {"metadata": {"name": "chat-h100-abc", "namespace": "ns1", "uid": "u1",
                         "labels": {"infleet.io/pool": "h100-spot"}},
            "spec": {"containers": [container], "nodeName": "h100-spot-0000", **spec}}


OPERATOR_ARGS = ["serve", "--model", "/models/models/llama-3-8b", "--served-model-name", "llama-3-8b", "--device",
                 "cuda", "--port", "8000", "--state", "warm"]


def _no_data(_kind: str, _ns: str, _name: str) -> Mapping[str, str] | None:
    return None


def test_operator_pod_becomes_a_tiny_cpu_worker_on_the_pod_ip() -> None:
    launch = plan_launch(_pod(OPERATOR_ARGS), "127.96.0.7", _no_data)
    argv = list(launch.argv)
    assert argv[argv.index("--model") + 1] == "tiny"  # no such checkpoint here
    assert argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--host") + 1] == "127.96.0.7"
    assert argv[argv.index("--served-model-name") + 1] == "llama-3-8b"  # the API still answers as the model
    assert argv[argv.index("--state") + 1] == "warm"
    assert argv.count("--model") == 1 and argv.count("--device") == 1
    assert launch.port == 8000 and launch.readiness.port == 8000 and launch.readiness.path == "/readyz"
    assert launch.pool == "h100-spot" and launch.grace_s == 30.0


def test_an_existing_checkpoint_directory_is_kept(tmp_path: Path) -> None:
    argv = worker_argv(["serve", f"--model={tmp_path}"], "127.96.0.2")
    assert argv[argv.index("--model") + 1] == str(tmp_path)


def test_grace_period_comes_from_the_pod() -> None:
    assert plan_launch(_pod(OPERATOR_ARGS, terminationGracePeriodSeconds=7), "127.96.0.7", _no_data).grace_s == 7.0


def test_env_resolves_values_secrets_configmaps_and_fields() -> None:
    data: dict[tuple[str, str], dict[str, str]] = {
        ("secret", "infleet-worker-admin"): decode_secret({"data": {"token": base64.b64encode(b"s3cret").decode()}}),
        ("configmap", "tuning"): {"threads": "2"},
    }

    def lookup(kind: str, ns: str, name: str) -> Mapping[str, str] | None:
        assert ns == "ns1"
        return data.get((kind, name))

    env = [
        {"name": "OMP_NUM_THREADS", "value": "8"},
        {"name": "INFLEET_WORKER_ADMIN_TOKEN",
         "valueFrom": {"secretKeyRef": {"name": "infleet-worker-admin", "key": "token"}}},
        {"name": "T", "valueFrom": {"configMapKeyRef": {"name": "tuning", "key": "threads"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k", "optional": True}}},
    ]
    pod = _pod(OPERATOR_ARGS, env)
    got = resolve_env(pod, pod["spec"]["containers"][0], lookup, "127.96.0.9")
    assert got == {"OMP_NUM_THREADS": "8", "INFLEET_WORKER_ADMIN_TOKEN": "s3cret", "T": "2",
                   "POD": "chat-h100-abc", "IP": "127.96.0.9"}


def test_missing_secret_is_the_kubelets_config_error() -> None:
    env = [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "infleet-worker-admin", "key": "token"}}}]
    with pytest.raises(PodNotRunnable, match='secret "infleet-worker-admin" not found') as err:
        plan_launch(_pod(OPERATOR_ARGS, env), "127.96.0.7", _no_data)
    assert err.value.reason == "CreateContainerConfigError"


def test_only_the_worker_command_is_runnable() -> None:
    pod = _pod(OPERATOR_ARGS)
    pod["spec"]["containers"][0]["command"] = ["nginx"]
    with pytest.raises(PodNotRunnable, match="only runs infleet-worker"):
        plan_launch(pod, "127.96.0.7", _no_data)


def test_status_keeps_transition_times_while_a_condition_holds() -> None:
    running = ContainerView(name="worker", image="img", state="running", started_at=1000.0, ready=True)
    first = pod_status(previous={}, container=running, pod_ip="127.96.0.7", host_ip="127.0.0.2",
                       start_time=990.0, now=1010.0)
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert ready["status"] == "True" and first["phase"] == "Running" and first["podIP"] == "127.96.0.7"
    later = pod_status(previous=first, container=running, pod_ip="127.96.0.7", host_ip="127.0.0.2",
                       start_time=990.0, now=2000.0)
    assert later == first  # nothing changed: no status write, Ready's transition time is kept


def test_a_dead_worker_shows_in_the_status() -> None:
    crashed = ContainerView(name="worker", image="img", state="waiting", reason="CrashLoopBackOff",
                            message="back-off 10s", restart_count=0,
                            last_exit=Exit(code=137, started_at=1000.0, finished_at=1050.0))
    status = pod_status(previous={}, container=crashed, pod_ip="127.96.0.7", host_ip="127.0.0.2",
                        start_time=990.0, now=1051.0)
    cs = status["containerStatuses"][0]
    assert cs["ready"] is False and cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 137 and cs["lastState"]["terminated"]["reason"] == "Error"
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "False" and "CrashLoopBackOff" in ready["message"]


def test_backoff_cold_start_and_cap() -> None:
    assert [crash_backoff(10, n) for n in (1, 2, 3, 10)] == [10, 20, 40, 300]
    assert emulated_cold_start(300, 0.02) == pytest.approx(6.0)
    assert emulated_cold_start(300, 0) == 0
    assert "--max-workers 4" in capacity_message(4, 4)
    with pytest.raises(ValueError, match="max-workers"):
        RunnerConfig(run_dir=Path("."), network=ipaddress.IPv4Network("127.96.0.0/24"), host_ip="127.0.0.2",
                     max_workers=0)


def test_kubectl_passes_every_argument_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_execv(path: str, argv: list[str]) -> None:
        seen.append([path, *argv])

    monkeypatch.setattr(cli.os, "execv", fake_execv)
    cli.main(["kubectl", "-n", "kube-system", "get", "pods", "-o", "wide"])
    assert seen and seen[0][-6:] == ["-n", "kube-system", "get", "pods", "-o", "wide"]
    assert seen[0][1:3] == ["kubectl", "--kubeconfig"]


def test_bad_runner_flags_are_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["up", "--max-workers", "0"]) == 1
    assert "--max-workers must be >= 1, got 0" in capsys.readouterr().err
    assert cli.main(["up", "--cold-start-scale", "-1"]) == 1
    assert "--cold-start-scale must be >= 0" in capsys.readouterr().err


def test_a_llamacpp_pod_runs_the_server_the_operator_rendered_on_the_pod_ip() -> None:
    """The operator's own rendering of a llama-cpp CPU pod: the runner keeps its arguments (the GGUF path, the
    served name, `--interrupt_requests False`) and moves host and threads to the local machine's."""
    from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload, render_deployment

    owner = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "ns1", "uid-1")
    pool = PoolRuntime(name="cpu", device="cpu", node_selector={}, resource_name="cpu", devices_per_replica=1,
                       units_per_device=8, default_requests={})
    w = Workload(owner, pool, "serving", 1, "tiny-chat", ContainerOverrides(engine="llama-cpp"), "file:///m/t.gguf")
    template = render_deployment(w)["spec"]["template"]
    pod = {"metadata": {**template["metadata"], "name": "chat-cpu-abc", "namespace": "ns1", "uid": "u1"},
           "spec": {**template["spec"], "nodeName": "cpu-on-demand-0000"}}
    launch = plan_launch(pod, "127.96.0.9", _no_data, threads=1)
    argv = list(launch.argv)
    assert launch.program == "llama-cpp"
    assert argv[argv.index("--model") + 1] == "/m/t.gguf"
    assert argv[argv.index("--model_alias") + 1] == "tiny-chat"
    assert argv[argv.index("--host") + 1] == "127.96.0.9"
    assert argv[argv.index("--n_threads") + 1] == argv[argv.index("--n_threads_batch") + 1] == "1"
    assert argv[argv.index("--interrupt_requests") + 1] == "False"
    assert (launch.port, launch.readiness.path) == (8000, "/docs")
    assert plan_launch(_pod(OPERATOR_ARGS), "127.96.0.7", _no_data).program == "infleet-worker"


def test_other_python_commands_stay_simulated() -> None:
    pod = _pod([])
    pod["spec"]["containers"][0]["command"] = ["python3", "-m", "http.server"]
    with pytest.raises(PodNotRunnable, match="only runs"):
        plan_launch(pod, "127.96.0.7", _no_data)


def test_an_int4_pod_runs_the_tiny_stand_in_with_a_group_size_it_fits() -> None:
    argv = worker_argv(["serve", "--model", "/models/llama", "--quantize", "int4"], "127.96.0.2")
    assert argv[argv.index("--model") + 1] == "tiny"
    assert argv[argv.index("--quantize-group-size") + 1] == "32"
    assert "--quantize-group-size" not in worker_argv(["serve", "--quantize", "int8"], "127.96.0.2")
