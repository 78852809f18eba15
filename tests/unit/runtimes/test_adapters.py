"""Each runtime adapter: the container it renders, the names it reads, how its warm replicas are promoted."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import httpx
import pytest

from infleet.api.v1alpha1 import ENGINES_FOR_FAMILY, Engine
from infleet.controller.manifests import (
    ANNOTATION_RUNTIME,
    ContainerOverrides,
    Owner,
    PoolRuntime,
    Workload,
    pod_engine,
    render_deployment,
)
from infleet.controller.promotion import HttpWorkerState, promotable
from infleet.controller.scrape import HttpMetricsSource, parse_worker_metrics, quantile_from_buckets
from infleet.runtimes import RUNTIMES, runtime
from infleet.runtimes.vllm import METRICS as VLLM_METRICS

OWNER = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "team-a", "uid-1")
SAMPLE = Path(__file__).with_name("vllm_metrics_sample.txt").read_text()
GPU = PoolRuntime(name="h100", device="cuda", node_selector={"pool": "h100"}, resource_name="nvidia.com/gpu",
                  devices_per_replica=4)
INF2 = PoolRuntime(name="inf2", device="neuron", node_selector={"pool": "inf2"},
                   resource_name="aws.amazon.com/neuron", devices_per_replica=6)
V5E = PoolRuntime(name="v5e", device="xla", node_selector={"pool": "v5e"}, resource_name="google.com/tpu",
                  devices_per_replica=8)
CPU = PoolRuntime(name="cpu", device="cpu", node_selector={"pool": "cpu"}, resource_name="cpu",
                  devices_per_replica=2, units_per_device=4, default_requests={"memory": "2Gi"})


def container(pool: PoolRuntime, engine: str, role: str = "serving", **kw: Any) -> dict[str, Any]:
    w = Workload(OWNER, pool, role, 1, "llama-3-8b", ContainerOverrides(engine=engine, **kw),  # type: ignore[arg-type]
                 "pvc://models/llama-3-8b")
    d = render_deployment(w)
    assert d["spec"]["template"]["metadata"]["annotations"][ANNOTATION_RUNTIME] == engine
    c: dict[str, Any] = d["spec"]["template"]["spec"]["containers"][0]
    return c


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_api_engine_has_an_adapter_for_exactly_its_families() -> None:
    assert set(RUNTIMES) == set(typing.get_args(Engine))
    for engine, adapter in RUNTIMES.items():
        assert {f for f, engines in ENGINES_FOR_FAMILY.items() if engine in engines} == set(adapter.families)


def test_unknown_engine_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown runtime engine 'tensorrt'"):
        runtime("tensorrt")


def test_vllm_renders_tensor_parallel_from_the_pools_gpus_and_user_args_last() -> None:
    c = container(GPU, "vllm", args=("--max-model-len", "8192"))
    assert c["image"] == "vllm/vllm-openai:v0.11.0"
    assert c["command"] == ["vllm"]
    args = c["args"]
    assert args[:2] == ["serve", "/models/models/llama-3-8b"]
    assert flag(args, "--served-model-name") == "llama-3-8b"
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--gpu-memory-utilization") == "0.90"
    assert flag(args, "--port") == "8000"
    assert "--enable-sleep-mode" in args
    assert args[-2:] == ["--max-model-len", "8192"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert c["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert c["volumeMounts"][0]["mountPath"] == "/models/models"
    # No admin token and no lifecycle hook on a serving vLLM pod; the dev-mode endpoints stay off.
    assert c["env"] == [] and "lifecycle" not in c


def test_vllm_warm_replica_sleeps_once_healthy_with_the_dev_endpoints_on() -> None:
    c = container(GPU, "vllm", role="warm", env={"A": "1"})
    assert c["env"] == [{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}, {"name": "A", "value": "1"}]
    script = c["lifecycle"]["postStart"]["exec"]["command"][2]
    assert "/health" in script and "/sleep?level=1" in script
    compile(script, "postStart", "exec")  # the hook is valid Python


def test_neuron_tensor_parallel_counts_neuroncores() -> None:
    c = container(INF2, "neuron-vllm")
    assert flag(c["args"], "--tensor-parallel-size") == "12"  # 6 Inferentia2 devices x 2 NeuronCores
    assert flag(c["args"], "--device") == "neuron"
    assert c["resources"]["limits"] == {"aws.amazon.com/neuron": "6"}
    cores = PoolRuntime(name="inf2c", device="neuron", node_selector={}, resource_name="aws.amazon.com/neuroncore",
                        devices_per_replica=4)
    assert flag(container(cores, "neuron-vllm")["args"], "--tensor-parallel-size") == "4"


def test_tpu_tensor_parallel_is_the_chips_per_replica() -> None:
    c = container(V5E, "vllm-tpu")
    assert c["image"].startswith("vllm/vllm-tpu:")
    assert flag(c["args"], "--tensor-parallel-size") == "8"
    assert c["resources"]["limits"] == {"google.com/tpu": "8"}


def test_llamacpp_threads_follow_the_replicas_vcpus_and_probes_take_no_model_lock() -> None:
    c = container(CPU, "llama-cpp", image="example/llama:1")
    assert c["image"] == "example/llama:1"
    assert c["command"] == ["python3", "-m", "llama_cpp.server"]
    assert flag(c["args"], "--n_threads") == "8"  # 2 slices x 4 vCPUs
    assert flag(c["args"], "--model_alias") == "llama-3-8b"
    # A request queued on the model lock (GET /v1/models too) would end the stream in flight early.
    assert flag(c["args"], "--interrupt_requests") == "False"
    # The server binds only once the model is loaded; /docs answers without waiting behind generation.
    assert c["readinessProbe"]["httpGet"]["path"] == c["livenessProbe"]["httpGet"]["path"] == "/docs"
    assert c["resources"]["requests"] == {"memory": "2Gi", "cpu": "8"}


def test_vllm_page_maps_to_infleets_signals() -> None:
    m = parse_worker_metrics(SAMPLE, VLLM_METRICS)
    assert (m.waiting, m.running, m.requests_total) == (5.0, 3.0, 2.0)
    assert (m.prompt_tokens, m.generation_tokens) == (300.0, 80.0)
    assert m.latency_buckets[float("inf")] == 2.0 and m.ttft_buckets[0.1] == 1.0
    assert quantile_from_buckets(m.latency_buckets, 0.5) == pytest.approx(1.0)
    assert m.energy_joules is None
    # Read with the worker's names, a vLLM page holds nothing: the names are what select the signals.
    assert parse_worker_metrics(SAMPLE).requests_total == 0.0


def pod(engine: str | None, ip: str = "10.0.0.1") -> dict[str, Any]:
    annotations = {ANNOTATION_RUNTIME: engine} if engine else {}
    return {"metadata": {"name": "p", "namespace": "ns", "annotations": annotations}, "status": {"podIP": ip}}


def test_scraper_reads_each_pod_with_its_runtimes_names() -> None:
    pages = {"/metrics": SAMPLE}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, text=pages[request.url.path])

    source = HttpMetricsSource()
    source.client = httpx.Client(transport=httpx.MockTransport(handler))
    got = source.fetch(pod("vllm"))
    assert got is not None and got.waiting == 5.0
    assert source.fetch(pod(None)) is None  # a worker pod answering with a vLLM page: not its runtime's page
    assert source.fetch(pod("llama-cpp")) is None  # no metrics endpoint: never scraped
    assert seen == ["/metrics", "/metrics"]


def test_promotion_goes_through_the_adapter() -> None:
    seen: list[tuple[str, str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.content))
        return httpx.Response(200)

    client = HttpWorkerState(admin_token=lambda ns: "tok")
    client.client = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.promote(pod("vllm"))
    assert client.promote(pod(None))
    assert not client.promote(pod("llama-cpp"))
    assert seen == [("POST", "/wake_up", b""), ("POST", "/admin/state", b'{"state":"serving"}')]
    assert [promotable(pod(e)) for e in (None, "vllm", "llama-cpp", "neuron-vllm", "vllm-tpu")] == [
        True, True, False, False, False]
    assert pod_engine(pod(None)) == "infleet-worker"


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_a_quantised_dtype_reaches_the_worker_and_sizing_stays_true(dtype: str) -> None:
    """Placement sizes memory by spec.model.dtype; infleet-worker must then hold int8/int4 weights, not bf16."""
    from infleet.api.v1alpha1 import InferenceDeployment
    from infleet.controller.observe import workload
    from tests.unit.controller.builders import make_infd, make_pool

    infd = make_infd()
    body = infd.model_dump(by_alias=True, exclude_none=True)
    body["spec"]["model"]["dtype"] = dtype
    quantised = InferenceDeployment.model_validate(body)
    pool = make_pool("cpu-spot")
    for spec, expect in ((infd, None), (quantised, dtype)):
        args = render_deployment(workload(OWNER, spec, pool, 1, "serving", 1))["spec"]["template"]["spec"][
            "containers"][0]["args"]
        assert (flag(args, "--quantize") if "--quantize" in args else None) == expect
    for engine in ("vllm", "llama-cpp"):  # their precision comes from the checkpoint, never from this flag
        w = Workload(OWNER, GPU if engine == "vllm" else CPU, "serving", 1, "m", ContainerOverrides(engine=engine),
                     "pvc://models/m", dtype)
        assert "--quantize" not in render_deployment(w)["spec"]["template"]["spec"]["containers"][0]["args"]
