"""The gateway end to end over loopback HTTP against scripted upstreams: routing by model, the OpenAI error
bodies, bounded queue and 429s, holding requests through a scale from zero, retries before the first byte, a clean
end after a mid-stream failure, client disconnects cancelling upstream, and the metrics the operator reads."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from infleet_gateway.admission import AdmissionConfig
from infleet_gateway.replicas import ReplicaSpec
from infleet_gateway.server import ProxyConfig
from tests.unit.gateway.harness import FakeReplica, running_gateway, table_with


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), timeout=60))


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
    async with session.post(url, json=body) as r:
        text = await r.text()
        try:
            payload: Any = json.loads(text)
        except ValueError:
            payload = text
        return r.status, payload, dict(r.headers)


async def started(*replicas: FakeReplica) -> list[FakeReplica]:
    for r in replicas:
        await r.start()
    return list(replicas)


def test_routes_by_model_and_lists_models() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("a"))
        async with running_gateway(table_with(reps)) as (base, _gw), aiohttp.ClientSession() as s:
            async with s.get(base + "/v1/models") as r:
                assert [m["id"] for m in (await r.json())["data"]] == ["m"]
            status, body, _ = await post(s, base + "/v1/completions", {"model": "m", "prompt": "hi"})
            assert status == 200
            assert body["choices"][0]["text"] == "from a"
        await reps[0].stop()

    run(main)


def test_unknown_model_is_a_404_with_an_openai_error_body() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("a"))
        async with running_gateway(table_with(reps)) as (base, gw), aiohttp.ClientSession() as s:
            status, body, _ = await post(s, base + "/v1/chat/completions", {"model": "nope", "messages": []})
            assert status == 404
            assert body["error"]["code"] == "model_not_found"
            assert body["error"]["param"] == "model"
            assert set(body["error"]) == {"message", "type", "param", "code"}
            status, body, _ = await post(s, base + "/v1/completions", {"prompt": "no model"})
            assert status == 400
            assert body["error"]["code"] == "missing_model"
            async with s.post(base + "/v1/completions", data=b"{not json") as r:
                assert r.status == 400
            assert reps[0].served == []
            assert gw.metrics.received.labels("ns", "dep")._value.get() == 0
        await reps[0].stop()

    run(main)


def test_a_full_queue_answers_429_with_retry_after() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("a", behaviour="hang"))
        admission = AdmissionConfig(probe_gates_ready=False, default_max_in_flight=1, max_queue=1,
                                    default_queue_timeout_s=30)
        async with running_gateway(table_with(reps), admission=admission) as (base, gw), \
                aiohttp.ClientSession() as s:
            first = asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": "1"}))
            second = asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": "2"}))
            while gw.admission.queue_depth(("ns", "dep")) < 1:
                await asyncio.sleep(0.01)
            status, body, headers = await post(s, base + "/v1/completions", {"model": "m", "prompt": "3"})
            assert status == 429
            assert body["error"]["code"] == "queue_full"
            assert int(headers["Retry-After"]) >= 1
            assert gw.metrics.rejected.labels("ns", "dep", "queue_full")._value.get() == 1
            assert gw.metrics.received.labels("ns", "dep")._value.get() == 3
            first.cancel()
            second.cancel()
        await reps[0].stop()

    run(main)


def test_a_request_that_waits_past_the_slo_derived_timeout_gets_429() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("a", behaviour="hang"))
        admission = AdmissionConfig(probe_gates_ready=False, default_max_in_flight=1, min_queue_timeout_s=0.2,
                                    queue_timeout_slo_multiple=1.0)
        table = table_with(reps, ttft_ms=300)  # wait at most max(0.2, 1.0 * 0.3) s
        async with running_gateway(table, admission=admission) as (base, gw), aiohttp.ClientSession() as s:
            hung = asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": "1"}))
            while gw.metrics.in_flight.labels("ns", "dep")._value.get() < 1:
                await asyncio.sleep(0.01)
            status, body, headers = await post(s, base + "/v1/completions", {"model": "m", "prompt": "2"})
            assert status == 429
            assert body["error"]["code"] == "queue_timeout"
            assert headers["Retry-After"] == "1"
            assert gw.metrics.rejected.labels("ns", "dep", "queue_timeout")._value.get() == 1
            hung.cancel()
        await reps[0].stop()

    run(main)


def test_scale_from_zero_holds_requests_until_a_replica_is_ready_and_serves_each_once() -> None:
    async def main() -> None:
        late = FakeReplica("late")
        table = table_with([])
        async with running_gateway(table, admission=AdmissionConfig(probe_gates_ready=False,
                                                                    default_queue_timeout_s=0.1)) as (base, gw), \
                aiohttp.ClientSession() as s:
            burst = [asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": str(i)}))
                     for i in range(20)]
            while gw.admission.queue_depth(("ns", "dep")) < 20:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # longer than the warm queue timeout: a cold deployment holds instead
            assert gw.metrics.queue_depth.labels("ns", "dep")._value.get() == 20
            await late.start()
            table.upsert_replica(("ns", "dep"), ReplicaSpec(replica_id="late", url=late.url, pool="p", ready=True))
            results = await asyncio.gather(*burst)
            assert [r[0] for r in results] == [200] * 20
            assert sorted(b["prompt"] for b in late.served) == sorted(str(i) for i in range(20))
            assert gw.metrics.queue_depth.labels("ns", "dep")._value.get() == 0
            assert gw.metrics.in_flight.labels("ns", "dep")._value.get() == 0
        await late.stop()

    run(main)


def test_requests_held_through_a_cold_start_get_their_queue_wait_from_when_a_replica_serves() -> None:
    """Held longer than the SLO-derived queue wait, they must not all time out the moment one small replica appears:
    the wait starts when the deployment serves again (found by the closed-loop scale-from-zero scenario)."""

    async def main() -> None:
        late = FakeReplica("late", chunk_delay_s=0.2)  # ~0.6 s per request, 2 at a time: ~1.8 s for 6
        table = table_with([])
        config = AdmissionConfig(probe_gates_ready=False, default_queue_timeout_s=3.0, default_max_in_flight=2)
        async with running_gateway(table, admission=config) as (base, gw), aiohttp.ClientSession() as s:
            burst = [asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": str(i),
                                                                       "stream": True}))
                     for i in range(6)]  # fmt: skip
            while gw.admission.queue_depth(("ns", "dep")) < 6:
                await asyncio.sleep(0.01)
            await asyncio.sleep(3.5)  # held longer than the queue wait
            await late.start()
            table.upsert_replica(("ns", "dep"), ReplicaSpec(replica_id="late", url=late.url, pool="p", ready=True))
            results = await asyncio.gather(*burst)
            assert [r[0] for r in results] == [200] * 6
        await late.stop()

    run(main)


def test_a_failure_before_the_first_byte_is_retried_on_another_replica() -> None:
    async def main() -> None:
        for behaviour in ("503", "reset"):
            bad, good = await started(FakeReplica("bad", behaviour=behaviour), FakeReplica("good"))
            # Capacities make the bad replica the first choice.
            table = table_with([bad, good], capacities={"bad": 10.0, "good": 1.0})
            async with running_gateway(table) as (base, gw), aiohttp.ClientSession() as s:
                for stream in (False, True):
                    async with s.post(base + "/v1/completions",
                                      json={"model": "m", "prompt": "x", "stream": stream}) as r:
                        assert r.status == 200
                        assert "good" in await r.text()
                failures = gw.metrics.upstream_failures.labels("ns", "dep", "pool-bad", "before_first_byte")
                assert failures._value.get() >= 1
                # The failed replica cools down: the next request goes straight to the good one.
                assert table.deployments[("ns", "dep")].replicas["bad"].cooldown_until_s > 0
            await bad.stop()
            await good.stop()

    run(main)


def test_retries_are_bounded_and_the_last_answer_is_returned() -> None:
    async def main() -> None:
        reps = await started(*(FakeReplica(f"r{i}", behaviour="503") for i in range(4)))
        async with running_gateway(table_with(reps), proxy=ProxyConfig(max_attempts=2, cool_down_s=0.0)) as (
                base, gw), aiohttp.ClientSession() as s:
            status, body, _ = await post(s, base + "/v1/completions", {"model": "m", "prompt": "x"})
            assert status == 503
            assert body["error"]["message"] == "draining"
            failures = sum(gw.metrics.upstream_failures.labels("ns", "dep", f"pool-r{i}", "before_first_byte")
                           ._value.get() for i in range(4))
            assert failures == 2
            assert gw.metrics.rejected.labels("ns", "dep", "upstream_error")._value.get() == 1
        for r in reps:
            await r.stop()

    run(main)


def test_a_replica_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("dies", behaviour="die_mid_stream", chunks=5))
        async with running_gateway(table_with(reps)) as (base, gw), aiohttp.ClientSession() as s:
            async with s.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
                assert r.status == 200
                text = await asyncio.wait_for(r.text(), timeout=10)
            events = [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]
            assert json.loads(events[0])["choices"][0]["text"] == "dies-0"
            assert json.loads(events[-2])["error"]["code"] == "upstream_disconnected"
            assert events[-1] == "[DONE]"
            assert gw.metrics.upstream_failures.labels("ns", "dep", "pool-dies", "mid_stream")._value.get() == 1
        await reps[0].stop()

    run(main)


def test_a_client_that_disconnects_cancels_the_upstream_request() -> None:
    async def main() -> None:
        for stream in (True, False):
            slow = FakeReplica("slow", behaviour="ok" if stream else "hang", chunks=1000, chunk_delay_s=0.01)
            await slow.start()
            async with running_gateway(table_with([slow])) as (base, gw):
                async with aiohttp.ClientSession() as s:
                    body = {"model": "m", "prompt": "x", "stream": stream}
                    if stream:  # the client reads the first event, then goes away
                        resp = await s.post(base + "/v1/completions", json=body)
                        await resp.content.readline()
                        resp.close()
                    else:  # the client gives up while the replica is still working
                        waiting = asyncio.create_task(s.post(base + "/v1/completions", json=body))
                        await asyncio.sleep(0.3)
                        waiting.cancel()
                for _ in range(200):
                    if slow.cancelled:
                        break
                    await asyncio.sleep(0.01)
                assert slow.cancelled == 1
                for _ in range(200):
                    if gw.metrics.in_flight.labels("ns", "dep")._value.get() == 0:
                        break
                    await asyncio.sleep(0.01)
                assert gw.metrics.in_flight.labels("ns", "dep")._value.get() == 0
            await slow.stop()

    run(main)


def test_streams_record_ttft_and_duration_per_deployment() -> None:
    async def main() -> None:
        reps = await started(FakeReplica("a", chunk_delay_s=0.05, chunks=4))
        async with running_gateway(table_with(reps)) as (base, gw), aiohttp.ClientSession() as s:
            async with s.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
                await r.read()
            async with s.get(base + "/metrics") as r:
                page = await r.text()
        ttft_sum = gw.metrics.ttft.labels("ns", "dep")._sum.get()
        duration_sum = gw.metrics.duration.labels("ns", "dep")._sum.get()
        assert 0.04 < ttft_sum < duration_sum
        assert duration_sum >= 0.2
        for name in ("infleet_gateway_queue_depth", "infleet_gateway_in_flight",
                     "infleet_gateway_requests_received_total", "infleet_gateway_ttft_seconds_bucket",
                     "infleet_gateway_request_duration_seconds_bucket", "infleet_gateway_rejected_total",
                     "infleet_gateway_replica_in_flight", "infleet_gateway_routed_total",
                     "infleet_gateway_overhead_seconds_bucket", "infleet_gateway_replicas"):
            assert f'{name}{{' in page, name
        assert 'infleet_gateway_replicas{deployment="dep",namespace="ns",state="serving"} 1.0' in page
        await reps[0].stop()

    run(main)


def test_a_stream_is_counted_before_its_client_sees_done() -> None:
    """SDK clients stop at `[DONE]` without waiting for the connection's end: the metrics must already hold it."""
    async def main() -> None:
        reps = await started(FakeReplica("a", chunks=3, linger_after_done_s=0.5))
        async with running_gateway(table_with(reps)) as (base, gw), aiohttp.ClientSession() as s:
            async with s.post(base + "/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
                lines = []
                while (line := (await r.content.readline()).decode().strip()) != "data: [DONE]":
                    assert line or not r.content.at_eof(), lines
                    lines.append(line)
                assert gw.metrics.ttft.labels("ns", "dep")._sum.get() > 0
                assert gw.metrics.duration.labels("ns", "dep")._sum.get() > 0
            assert [ln for ln in lines if ln.startswith("data: ")] == [
                "data: " + json.dumps({"choices": [{"index": 0, "text": f"a-{i}", "finish_reason": None}]})
                for i in range(3)]
        await reps[0].stop()

    run(main)


def test_warm_and_draining_workers_take_no_traffic() -> None:
    async def main() -> None:
        from infleet_gateway.probe import apply_probe, parse_worker_page

        warm, serving = await started(FakeReplica("warm", state="warm"), FakeReplica("serving"))
        table = table_with([warm, serving], capacities={"warm": 100.0, "serving": 1.0})
        async with running_gateway(table) as (base, _gw), aiohttp.ClientSession() as s:
            for r in (warm, serving):
                async with s.get(r.url + "/metrics") as page:
                    apply_probe(table.deployments[("ns", "dep")].replicas[r.name],
                                parse_worker_page(await page.text()), 0.0)
            for _ in range(5):
                status, body, _ = await post(s, base + "/v1/completions", {"model": "m", "prompt": "x"})
                assert status == 200
                assert body["choices"][0]["text"] == "from serving"
        assert warm.served == []
        await warm.stop()
        await serving.stop()

    run(main)


def test_shutting_down_answers_queued_and_new_requests_with_503_at_once() -> None:
    async def main() -> None:
        async with running_gateway(table_with([])) as (base, gw), aiohttp.ClientSession() as s:
            held = [asyncio.create_task(post(s, base + "/v1/completions", {"model": "m", "prompt": str(i)}))
                    for i in range(3)]
            while gw.admission.queue_depth(("ns", "dep")) < 3:
                await asyncio.sleep(0.01)
            gw.admission.close()
            for status, body, headers in await asyncio.gather(*held):
                assert status == 503
                assert body["error"]["code"] == "shutting_down"
                assert headers["Retry-After"] == "1"
            status, body, _ = await post(s, base + "/v1/completions", {"model": "m", "prompt": "late"})
            assert (status, body["error"]["code"]) == (503, "shutting_down")
            async with s.get(base + "/readyz") as r:
                assert r.status == 503
            assert gw.metrics.rejected.labels("ns", "dep", "shutting_down")._value.get() == 4
            assert gw.metrics.queue_depth.labels("ns", "dep")._value.get() == 0

    run(main)


def test_only_a_tail_that_could_begin_done_is_held_back() -> None:
    from infleet_gateway.forward import _done_prefix_len
    assert _done_prefix_len(b'data: {"x": 1}\n\n') == 0  # a complete event goes out at once
    assert _done_prefix_len(b'data: {"x": 1}\n\ndata: [DO') == len(b"data: [DO")
    assert _done_prefix_len(b"\n\nd") == 1
