from __future__ import annotations

import pytest

from infleet.controller.manifests import (
    ADMIN_SECRET_KEY,
    ADMIN_SECRET_NAME,
    ADMIN_TOKEN_ENV,
    ContainerOverrides,
    ImageConfig,
    Owner,
    PoolRuntime,
    Workload,
    model_location,
    render_deployment,
    render_service,
    service_name,
    workload_name,
)

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "team-a", "uid-1")
L4 = PoolRuntime(
    name="l4-spot",
    device="cuda",
    node_selector={"karpenter.sh/nodepool": "l4-spot"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    resource_name="nvidia.com/gpu",
    devices_per_replica=2,
    default_requests={"memory": "2Gi"},
)


def test_names_are_deterministic_and_role_specific() -> None:
    assert workload_name("chat", "l4-spot", "serving") == "chat-l4-spot"
    assert workload_name("chat", "l4-spot", "warm") == "chat-l4-spot-warm"
    assert service_name("chat") == "chat"


def test_long_names_stay_dns_labels_and_distinct() -> None:
    a = workload_name("x" * 60, "pool-a", "serving")
    b = workload_name("x" * 60, "pool-b", "serving")
    assert len(a) <= 63 and len(b) <= 63
    assert a != b
    assert a == workload_name("x" * 60, "pool-a", "serving")


def test_deployment_lands_only_on_its_pool_with_devices_requested() -> None:
    d = render_deployment(Workload(OWNER, L4, "serving", 3, "llama-3-8b"))
    assert d["metadata"]["name"] == "chat-l4-spot"
    assert d["metadata"]["namespace"] == "team-a"
    assert d["spec"]["replicas"] == 3
    labels = {
        "app.kubernetes.io/managed-by": "infleet",
        "infleet.io/deployment": "chat",
        "infleet.io/pool": "l4-spot",
        "infleet.io/role": "serving",
    }
    assert d["spec"]["selector"]["matchLabels"] == labels
    assert d["spec"]["template"]["metadata"]["labels"] == labels
    pod = d["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"karpenter.sh/nodepool": "l4-spot"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    c = pod["containers"][0]
    assert c["resources"]["requests"] == {"memory": "2Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert c["command"] == ["infleet-worker"]
    assert c["args"] == [
        "serve",
        "--model",
        "llama-3-8b",
        "--served-model-name",
        "llama-3-8b",
        "--device",
        "cuda",
        "--port",
        "8000",
        "--state",
        "serving",
    ]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["image"] == "ghcr.io/infleet/worker-cuda:0.1.0"


def test_owner_reference_makes_deletion_cascade() -> None:
    d = render_deployment(Workload(OWNER, L4, "warm", 1, "m"))
    (ref,) = d["metadata"]["ownerReferences"]
    assert ref == {
        "apiVersion": "infleet.io/v1alpha1",
        "kind": "InferenceDeployment",
        "name": "chat",
        "uid": "uid-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert d["metadata"]["name"] == "chat-l4-spot-warm"
    args = d["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--state") + 1] == "warm"


def test_runtime_override_replaces_image_and_merges_resources() -> None:
    runtime = ContainerOverrides(
        image="registry.example/llm:cuda12", args=("--max-batch", "64"), env={"A": "1"}, requests={"memory": "16Gi"}
    )
    d = render_deployment(Workload(OWNER, L4, "serving", 1, "m", runtime), ImageConfig("my/worker", "dev"))
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "registry.example/llm:cuda12"
    assert c["args"][-2:] == ["--max-batch", "64"]
    assert c["env"][0] == {"name": "A", "value": "1"}
    assert c["resources"]["requests"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}


def test_cpu_pool_requests_vcpus_of_its_slices_and_configured_image() -> None:
    cpu = PoolRuntime("cpu-spot", "cpu", {"karpenter.sh/nodepool": "cpu-spot"}, (), "cpu", 1, units_per_device=8)
    d = render_deployment(Workload(OWNER, cpu, "serving", 1, "m"), ImageConfig("my/worker", "dev"))
    c = d["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["requests"] == {"cpu": "8"}
    assert c["image"] == "my/worker-cpu:dev"
    assert d["spec"]["template"]["spec"]["tolerations"] == []


@pytest.mark.parametrize(
    ("source", "argument", "claim"),
    [
        ("builtin://tiny", "tiny", None),
        ("file:///models/qwen", "/models/qwen", None),
        ("pvc://models/llama-3-8b", "/models/models/llama-3-8b", "models"),
        ("pvc://weights", "/models/weights", "weights"),
        ("s3://bucket/path", "s3://bucket/path", None),
        ("", "the-name", None),
    ],
)
def test_model_source_becomes_the_worker_argument(source: str, argument: str, claim: str | None) -> None:
    loc = model_location(source, "the-name")
    assert (loc.argument, loc.claim) == (argument, claim)


def test_pvc_source_mounts_the_claim_read_only() -> None:
    d = render_deployment(Workload(OWNER, L4, "serving", 1, "llama", source="pvc://models/llama-3-8b"))
    pod = d["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}}]
    c = pod["containers"][0]
    assert c["volumeMounts"] == [{"name": "models", "mountPath": "/models/models", "readOnly": True}]
    assert c["args"][1:5] == ["--model", "/models/models/llama-3-8b", "--served-model-name", "llama"]


def test_pvc_source_without_a_claim_is_an_error() -> None:
    with pytest.raises(ValueError, match="claim"):
        model_location("pvc://", "x")


def test_service_selects_only_serving_pods() -> None:
    s = render_service(OWNER)
    assert s["spec"]["selector"] == {
        "app.kubernetes.io/managed-by": "infleet",
        "infleet.io/deployment": "chat",
        "infleet.io/role": "serving",
    }
    assert s["spec"]["ports"][0]["targetPort"] == "http"
    assert s["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_workers_read_the_admin_token_from_the_namespace_secret() -> None:
    runtime = ContainerOverrides(env={"A": "1", ADMIN_TOKEN_ENV: "user-chosen"})
    d = render_deployment(Workload(OWNER, L4, "warm", 1, "m", runtime))
    env = d["spec"]["template"]["spec"]["containers"][0]["env"]
    # The model's own env cannot replace the operator's token (it would lock the operator out of promotions).
    assert [e["name"] for e in env] == ["A", ADMIN_TOKEN_ENV]
    assert env[-1]["valueFrom"] == {"secretKeyRef": {"name": ADMIN_SECRET_NAME, "key": ADMIN_SECRET_KEY,
                                                     "optional": True}}
    assert (ADMIN_SECRET_NAME, ADMIN_SECRET_KEY) == ("infleet-worker-admin", "token")
