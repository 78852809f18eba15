"""The real aiohttp app over a real socket: OpenAI endpoints (plain and streaming), bad input, overload,
lifecycle switching and the metrics contract."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("aiohttp")

from aiohttp.test_utils import TestClient, TestServer

from infleet_worker.energy import EnergyMeter
from infleet_worker.engine import Engine, SamplingParams
from infleet_worker.metrics import WorkerMetrics
from infleet_worker.server import ServedModel, WorkerServer

from .conftest import run_to_completion, text_of

METRICS_DOC = Path(__file__).resolve().parents[3] / "docs" / "metrics.md"


@asynccontextmanager
async def serving(engine: Engine, *, state: str = "serving", start: bool = True) -> AsyncIterator[
        tuple[TestClient[Any, Any], WorkerServer]]:
    metrics = WorkerMetrics("tiny")
    engine.observer = metrics
    server = WorkerServer("tiny", metrics, initial_state=state, drain_grace_s=5)
    if start:
        engine.start()
    server.attach(ServedModel("tiny", engine, engine.tokenizer))
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    try:
        yield client, server
    finally:
        await client.close()
        engine.shutdown()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def sse_events(body: str) -> list[Any]:
    datas = [line[len("data: "):] for line in body.split("\n") if line.startswith("data: ")]
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


def test_completion_matches_engine_and_reports_usage(make_engine: Callable[..., Engine]) -> None:
    expected = text_of(run_to_completion(make_engine(), [[256, *b"Once upon"]],
                                         SamplingParams(max_tokens=12, ignore_eos=True))[0])

    async def go() -> None:
        async with serving(make_engine()) as (client, _):
            r = await client.post("/v1/completions", json={"model": "tiny", "prompt": "Once upon", "max_tokens": 12,
                                                           "temperature": 0, "ignore_eos": True})
            assert r.status == 200
            body = await r.json()
            assert body["object"] == "text_completion"
            assert body["choices"][0]["text"] == expected
            assert body["choices"][0]["finish_reason"] == "length"
            assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 12, "total_tokens": 22}

    run(go())


def test_streaming_chat_equals_non_streaming(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with serving(make_engine()) as (client, _):
            req = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                   "max_tokens": 15, "temperature": 0, "ignore_eos": True}
            full = await (await client.post("/v1/chat/completions", json=req)).json()
            r = await client.post("/v1/chat/completions", json={**req, "stream": True})
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            chunks = sse_events(await r.text())
            assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
            assert streamed == full["choices"][0]["message"]["content"]
            assert chunks[-1]["choices"][0]["finish_reason"] == "length"
            assert chunks[-1]["usage"]["completion_tokens"] == 15

            r = await client.post("/v1/completions", json={"prompt": "abc", "max_tokens": 5, "stream": True,
                                                           "temperature": 0})
            text_chunks = sse_events(await r.text())
            assert text_chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")

    run(go())


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("/v1/completions", b"{not json", "not valid JSON"),
        ("/v1/completions", b"[1, 2]", "must be a JSON object"),
        ("/v1/completions", b'{"max_tokens": 3}', "prompt: Field required"),
        ("/v1/completions", b'{"prompt": ""}', "prompt is empty"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": "many"}', "max_tokens: Input should be a valid integer"),
        ("/v1/completions", b'{"prompt": "x", "max_tokens": 10000}', "over this worker's limit"),
        ("/v1/completions", b'{"prompt": "x", "temperature": 7}', "temperature"),
        ("/v1/completions", b'{"prompt": "x", "n": 2}', "only n=1"),
        ("/v1/completions", b'{"prompt": "x", "stream": "yes"}', "stream: Input should be a valid boolean"),
        ("/v1/chat/completions", b'{"messages": []}', "messages"),
        ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}', "role"),
        ("/admin/state", b'{"state": "asleep"}', "state"),
    ],
)
def test_bad_requests_get_400_with_a_clear_message(make_engine: Callable[..., Engine], path: str, body: bytes,
                                                   message: str) -> None:
    async def go() -> None:
        async with serving(make_engine()) as (client, _):
            r = await client.post(path, data=body, headers={"Content-Type": "application/json"})
            assert r.status == 400
            err = (await r.json())["error"]
            assert message in err["message"]
            # ... and the worker still serves.
            ok = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert ok.status == 200

    run(go())


def test_overload_gets_429_with_retry_after(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        # Engine thread not started: admitted requests stay queued, so the queue bound is reached for sure.
        async with serving(make_engine(max_waiting=2), start=False) as (client, server):
            pending = [asyncio.ensure_future(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2}))
                       for _ in range(2)]
            while server.model is not None and server.model.engine.num_waiting < 2:
                await asyncio.sleep(0.01)
            r = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
            assert "queue is full" in (await r.json())["error"]["message"]
            metrics = await (await client.get("/metrics")).text()
            assert 'infleet_worker_num_requests_waiting{model="tiny"} 2.0' in metrics
            assert 'infleet_worker_requests_total{model="tiny",status="rejected"} 1.0' in metrics
            assert server.model is not None
            server.model.engine.start()
            assert all(p.status == 200 for p in await asyncio.gather(*pending))

    run(go())


def test_warm_worker_is_ready_but_takes_no_traffic_until_promoted(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with serving(make_engine(), state="warm") as (client, _):
            assert (await client.get("/readyz")).status == 200
            assert (await (await client.get("/admin/state")).json()) == {"state": "warm"}
            r = await client.post("/v1/completions", json={"prompt": "x"})
            assert r.status == 503 and "Retry-After" in r.headers
            assert "warm" in (await r.json())["error"]["message"]
            metrics = await (await client.get("/metrics")).text()
            assert 'infleet_worker_lifecycle_state{model="tiny",state="warm"} 1.0' in metrics
            r = await client.post("/admin/state", json={"state": "serving"})
            assert r.status == 200 and (await r.json()) == {"state": "serving"}
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status == 200
            metrics = await (await client.get("/metrics")).text()
            assert 'infleet_worker_lifecycle_state{model="tiny",state="serving"} 1.0' in metrics
            assert 'infleet_worker_lifecycle_state{model="tiny",state="warm"} 0.0' in metrics

    run(go())


def test_admin_drain_finishes_in_flight_and_refuses_new(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        async with serving(make_engine()) as (client, server):
            inflight = [asyncio.ensure_future(client.post("/v1/completions", json={
                "prompt": f"p{i}", "max_tokens": 60, "ignore_eos": True})) for i in range(4)]
            while server.model is not None and server.model.engine.num_running < 4:
                await asyncio.sleep(0.005)
            assert (await client.post("/admin/state", json={"state": "draining"})).status == 200
            assert (await client.get("/readyz")).status == 503
            refused = await client.post("/v1/completions", json={"prompt": "late"})
            assert refused.status == 503 and "draining" in (await refused.json())["error"]["message"]
            bodies = [await r.json() for r in await asyncio.gather(*inflight)]
            assert [b["usage"]["completion_tokens"] for b in bodies] == [60] * 4
            await asyncio.wait_for(server.stopped.wait(), 5)
            assert (await client.post("/admin/state", json={"state": "serving"})).status == 409

    run(go())


class FixedEnergy:
    device = "test-0"

    def read_joules(self) -> float:
        return 1.5


def contract_metric_names() -> list[str]:
    section = METRICS_DOC.read_text().split("## Worker", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(infleet_worker_[a-z_]+)` \|", section, flags=re.M)


def test_metrics_follow_the_contract_and_count_a_known_load(make_engine: Callable[..., Engine]) -> None:
    names = contract_metric_names()
    assert len(names) >= 13, names

    async def go() -> None:
        async with serving(make_engine()) as (client, server):
            server.metrics.set_startup({"import": 0.5, "load": 1.25, "warmup": 0.25, "total": 2.0})
            # This machine may have no readable energy counter: a fixed source stands in (test_energy.py covers
            # the real sources), so the joule series is exported as where it is measurable.
            server.metrics.bind_energy(EnergyMeter([FixedEnergy()], None))
            reqs = [client.post("/v1/completions", json={"prompt": "a" * n, "max_tokens": 7, "ignore_eos": True})
                    for n in (1, 2, 3, 4, 5)]
            assert all(r.status == 200 for r in await asyncio.gather(*reqs))
            assert (await client.post("/v1/completions", json={"prompt": ""})).status == 400
            text = await (await client.get("/metrics")).text()
        for name in names:
            assert re.search(rf"^{name}(_total|_bucket|_count|_sum)?{{", text, flags=re.M), f"{name} not exported"

        def value(series: str) -> float:
            m = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
            assert m, f"{series} missing"
            return float(m.group(1))

        assert value('infleet_worker_requests_total{model="tiny",status="length"}') == 5
        assert value('infleet_worker_generation_tokens_total{model="tiny"}') == 35
        # prompt = BOS + n bytes for n = 1..5
        assert value('infleet_worker_prompt_tokens_total{model="tiny"}') == 5 + 15
        assert value('infleet_worker_request_latency_seconds_count{model="tiny"}') == 5
        assert value('infleet_worker_time_to_first_token_seconds_count{model="tiny"}') == 5
        assert value('infleet_worker_time_per_output_token_seconds_count{model="tiny"}') == 5
        assert value('infleet_worker_request_latency_seconds_bucket{le="60.0",model="tiny"}') == 5
        assert value('infleet_worker_num_requests_running{model="tiny"}') == 0
        assert value('infleet_worker_kv_cache_usage_perc{model="tiny"}') == 0
        assert value('infleet_worker_model_load_seconds{model="tiny"}') == 1.25
        assert value('infleet_worker_startup_phase_seconds{model="tiny",phase="total"}') == 2.0
        assert value('infleet_worker_batch_size_count{model="tiny"}') >= 7
        assert value('infleet_worker_lifecycle_state{model="tiny",state="serving"}') == 1

    run(go())


def test_health_and_readiness(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        metrics = WorkerMetrics("tiny")
        server = WorkerServer("tiny", metrics)
        client = TestClient(TestServer(server.app()))
        await client.start_server()
        try:  # still loading: alive but not ready, and requests are told why
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 503
            r = await client.post("/v1/completions", json={"prompt": "x"})
            assert r.status == 503 and "loading" in (await r.json())["error"]["message"]
            assert (await client.post("/admin/state", json={"state": "serving"})).status == 409
            engine = make_engine()
            engine.start()
            server.attach(ServedModel("tiny", engine, engine.tokenizer))
            assert (await client.get("/readyz")).status == 200
            assert (await (await client.get("/v1/models")).json())["data"][0]["id"] == "tiny"
            engine.shutdown()
        finally:
            await client.close()

    run(go())


def test_token_and_kv_metrics_move_while_a_request_runs(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        # The engine is stepped by hand, so the request is mid-way for sure when the metrics are read.
        async with serving(make_engine(num_slots=4, max_seq_len=256), start=False) as (client, server):
            assert server.model is not None
            engine = server.model.engine
            pending = asyncio.ensure_future(client.post("/v1/completions", json={
                "prompt": "abcdefgh", "max_tokens": 200, "ignore_eos": True}))
            while engine.num_waiting == 0:
                await asyncio.sleep(0.005)
            for _ in range(10):
                engine.step()  # the first step prefills and decodes (2 tokens), each later one decodes 1
            text = await (await client.get("/metrics")).text()

            def value(series: str) -> float:
                m = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.M)
                assert m, f"{series} missing"
                return float(m.group(1))

            # Counted per token while the request runs, not when it ends.
            assert value('infleet_worker_generation_tokens_total{model="tiny"}') == 11
            # KV: BOS + 8 prompt bytes + 10 decoded tokens' keys/values held (the 11th is not yet fed back).
            assert value('infleet_worker_kv_cache_tokens{model="tiny"}') == 19
            assert value('infleet_worker_kv_cache_capacity_tokens{model="tiny"}') == 4 * 256
            # Usage is blocks held / pool: 19 tokens in 2 blocks of 16, of 4 x 256 / 16 = 64.
            assert value('infleet_worker_kv_cache_blocks{model="tiny"}') == 2
            assert value('infleet_worker_kv_cache_capacity_blocks{model="tiny"}') == 64
            assert value('infleet_worker_kv_cache_usage_perc{model="tiny"}') == pytest.approx(2 / 64)
            engine.start()
            assert (await pending).status == 200
            text = await (await client.get("/metrics")).text()
            assert value('infleet_worker_generation_tokens_total{model="tiny"}') == 200
            assert value('infleet_worker_kv_cache_tokens{model="tiny"}') == 0
            assert value('infleet_worker_kv_cache_blocks{model="tiny"}') == 0

    run(go())
