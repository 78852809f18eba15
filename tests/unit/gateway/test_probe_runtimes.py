"""The gateway's probe reads each replica as the runtime it runs, with the adapters' metric names (the operator's
scraper reads the same `infleet.runtimes` mapping).

Sample pages: `pages/infleet_worker_metrics.txt` is a real scrape of `infleet-worker serve --model tiny` with two
requests running; `tests/unit/runtimes/vllm_metrics_sample.txt` is written from vLLM v0.11's documented names (no GPU
here, so not a live scrape); `pages/llamacpp_docs.html` is llama-cpp-python 0.3.36's answer to the adapter's health
path, `/docs` (its server has no /metrics: GET /metrics is a 404)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from infleet.runtimes import RUNTIMES, runtime
from infleet_gateway import kube
from infleet_gateway.probe import ANSWERED, Prober, adapter_for, parse_worker_page, probe_path
from infleet_gateway.replicas import EndpointTable, Replica, ReplicaSpec
from infleet_gateway.static import ConfigError, StaticEndpoints, fill, parse_endpoint_flag

PAGES = Path(__file__).parent / "pages"
WORKER_PAGE = (PAGES / "infleet_worker_metrics.txt").read_text()
VLLM_PAGE = (Path(__file__).parents[1] / "runtimes" / "vllm_metrics_sample.txt").read_text()
LLAMACPP_DOCS = (PAGES / "llamacpp_docs.html").read_text()


def test_worker_page_gives_queue_running_kv_and_state() -> None:
    page = parse_worker_page(WORKER_PAGE, "infleet-worker")
    assert (page.waiting, page.running, page.kv_usage, page.state) == (0.0, 2.0, 0.18798828125, "serving")


def test_vllm_page_is_read_with_vllms_names_summed_over_labels() -> None:
    page = parse_worker_page(VLLM_PAGE, "vllm")
    assert (page.waiting, page.running, page.kv_usage, page.state) == (5.0, 3.0, 0.42, None)
    two_engines = "\n".join(line.replace('engine="0"', 'engine="1"') for line in VLLM_PAGE.splitlines())
    assert parse_worker_page(VLLM_PAGE + two_engines, "vllm").running == 6.0  # data-parallel engines add up
    # The same page means nothing to the worker's names: absent series are None, not 0.
    assert parse_worker_page(VLLM_PAGE, "infleet-worker") == ANSWERED


def test_vllm_before_v0_10_names_its_kv_gauge_gpu_cache_usage() -> None:
    old = VLLM_PAGE.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert parse_worker_page(old, "vllm").kv_usage == 0.42
    both = VLLM_PAGE + 'vllm:gpu_cache_usage_perc{engine="0",model_name="llama-3-8b"} 0.9\n'
    assert parse_worker_page(both, "vllm").kv_usage == 0.42  # the current name wins


def test_neuron_and_tpu_stacks_are_vllm_pages() -> None:
    for engine in ("neuron-vllm", "vllm-tpu"):
        assert parse_worker_page(VLLM_PAGE, engine).running == 3.0
    assert {e for e, r in RUNTIMES.items() if r.metrics is None} == {"llama-cpp"}


def test_a_runtime_without_metrics_is_probed_on_its_health_path_for_readiness_only() -> None:
    adapter = runtime("llama-cpp")
    assert adapter.metrics is None
    assert probe_path(adapter) == "/docs"
    assert probe_path(runtime("infleet-worker")) == probe_path(runtime("vllm")) == "/metrics"
    page = parse_worker_page(LLAMACPP_DOCS, "llama-cpp")
    assert page == ANSWERED  # no readings: the router goes by the gateway's own in-flight counts
    replica = Replica(spec=ReplicaSpec(replica_id="r", url="http://h:1", pool="cpu", ready=True, engine="llama-cpp"))
    from infleet_gateway.probe import apply_probe

    assert apply_probe(replica, page, 1.0)
    assert replica.worker is None
    assert replica.routing_state(1.0, probe_gates_ready=True) == "serving"


def test_worker_and_vllm_lines_that_do_not_parse_are_skipped() -> None:
    text = "infleet_worker_num_requests_running{model=\"a\"} not-a-number\ninfleet_worker_num_requests_waiting\n"
    assert parse_worker_page(text) == ANSWERED
    assert parse_worker_page("vllm:num_requests_running{x=\"1\"}\n", "vllm").running is None


def test_unknown_engine_is_probed_as_the_default_and_said_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="infleet_gateway.probe"):
        for _ in range(3):
            assert adapter_for("no-such-engine-x").engine == "infleet-worker"
    assert sum("no-such-engine-x" in r.getMessage() for r in caplog.records) == 1


def test_kube_discovery_carries_the_pods_runtime_annotation() -> None:
    from infleet.controller import manifests

    assert kube.ANNOTATION_RUNTIME == manifests.ANNOTATION_RUNTIME
    base: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "ns", "uid": "u",
                     "labels": {kube.LABEL_DEPLOYMENT: "chat", kube.LABEL_POOL: "cpu", kube.LABEL_ROLE: "serving"}},
        "status": {"podIP": "10.0.0.9", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    parsed = kube.replica_of(base)
    assert parsed is not None and parsed[1].engine == "infleet-worker"
    base["metadata"]["annotations"] = {kube.ANNOTATION_RUNTIME: "llama-cpp"}
    parsed = kube.replica_of(base)
    assert parsed is not None and parsed[1].engine == "llama-cpp"


def test_a_rendered_pod_says_its_engine_to_the_gateway() -> None:
    """End to end through the operator's renderer: the pod template's annotation is what replica_of reads."""
    from infleet.controller.manifests import ContainerOverrides, Owner, PoolRuntime, Workload, render_deployment

    owner = Owner("infleet.io/v1alpha1", "InferenceDeployment", "chat", "ns", "uid-1")
    pool = PoolRuntime(name="cpu", device="cpu", node_selector={}, resource_name="cpu", devices_per_replica=1,
                       units_per_device=2, default_requests={})
    for engine in ("llama-cpp", "infleet-worker"):
        w = Workload(owner, pool, "serving", 1, "tiny", ContainerOverrides(engine=engine), "file:///m/t.gguf")
        template = render_deployment(w)["spec"]["template"]
        pod = {"metadata": {**template["metadata"], "name": "p", "namespace": "ns"},
               "spec": template["spec"], "status": {"podIP": "10.0.0.9"}}
        parsed = kube.replica_of(pod)
        assert parsed is not None and parsed[1].engine == engine


def test_static_replicas_name_their_engine() -> None:
    model, replica = parse_endpoint_flag("tiny=http://h:1,pool=cpu,engine=llama-cpp")
    assert (model, replica.engine) == ("tiny", "llama-cpp")
    with pytest.raises(ConfigError, match="unknown engine"):
        parse_endpoint_flag("tiny=http://h:1,engine=tensorrt")
    table = EndpointTable()
    fill(table, StaticEndpoints.model_validate({"deployments": [{"model": "tiny", "replicas": [
        {"url": "http://h:1", "pool": "cpu", "engine": "llama-cpp"}, {"url": "http://h:2", "pool": "gpu"}]}]}))
    dep = table.by_model("tiny")
    assert dep is not None
    assert {r.spec.url: r.spec.engine for r in dep.replicas.values()} == {
        "http://h:1": "llama-cpp", "http://h:2": "infleet-worker"}


def test_changing_a_replicas_engine_forgets_its_readings() -> None:
    table = EndpointTable()
    spec = ReplicaSpec(replica_id="r", url="http://h:1", pool="cpu", ready=True)
    table.upsert_replica(("ns", "d"), spec)
    replica = table.deployments[("ns", "d")].replicas["r"]
    replica.probe_ok, replica.worker_state = True, "serving"
    table.upsert_replica(("ns", "d"), ReplicaSpec(replica_id="r", url="http://h:1", pool="cpu", ready=True,
                                                  engine="llama-cpp"))
    assert (replica.probe_ok, replica.worker_state) == (None, None)


def test_prober_gets_each_runtimes_page() -> None:
    """Three upstreams as their runtimes answer: the worker's and vLLM's /metrics, llama.cpp's /docs (and a 404
    for /metrics, as llama-cpp-python gives)."""

    async def main() -> None:
        pages = {("worker", "/metrics"): WORKER_PAGE, ("vllm", "/metrics"): VLLM_PAGE,
                 ("llama", "/docs"): LLAMACPP_DOCS}
        hits: list[tuple[str, str]] = []
        runners: list[web.AppRunner] = []
        urls: dict[str, str] = {}
        for name in ("worker", "vllm", "llama"):
            async def handle(request: web.Request, name: str = name) -> web.Response:
                hits.append((name, request.path))
                text = pages.get((name, request.path))
                return web.Response(text=text) if text is not None else web.json_response(
                    {"detail": "Not Found"}, status=404)

            app = web.Application()
            app.router.add_get("/{tail:.*}", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = runner.addresses[0][1]
            urls[name] = f"http://127.0.0.1:{port}"
        table = EndpointTable()
        for name, engine in (("worker", "infleet-worker"), ("vllm", "vllm"), ("llama", "llama-cpp")):
            table.upsert_replica(("ns", "d"), ReplicaSpec(replica_id=name, url=urls[name], pool=name, ready=True,
                                                          engine=engine))
        async with aiohttp.ClientSession() as session:
            prober = Prober(table, session, interval_s=1.0, clock=lambda: 5.0)
            await prober.probe_all()
            # llama.cpp's replica at a vLLM's address would have no page: the probe fails rather than guess.
            assert await prober.probe(urls["llama"], "vllm") is None
        for runner in runners:
            await runner.cleanup()
        reps = table.deployments[("ns", "d")].replicas
        assert sorted(hits[:3]) == [("llama", "/docs"), ("vllm", "/metrics"), ("worker", "/metrics")]
        assert reps["worker"].worker is not None and reps["worker"].worker.running == 2.0
        assert reps["worker"].worker_state == "serving"
        assert reps["vllm"].worker is not None and reps["vllm"].worker.waiting == 5.0
        assert reps["llama"].probe_ok and reps["llama"].worker is None

    asyncio.run(main())
