"""The gateway in front of REAL worker processes (tiny model on CPU), driven by the official openai SDK:
chat and completions, streamed and not, across replicas on two pools; an unknown model; a burst held while no
replica is ready and served once one starts; a worker killed under load losing no request that had not started
streaming."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("torch")
openai = pytest.importorskip("openai")

from tests.integration.gateway.processes import Gateway, Worker  # noqa: E402

pytestmark = pytest.mark.slow
NO_EOS = {"ignore_eos": True}  # the tiny model has random weights: a fixed length keeps the checks exact


def endpoints(*replicas: tuple[Worker, str], model: str = "tiny") -> str:
    lines = [f"  - {{url: '{w.url}', pool: {pool}}}" for w, pool in replicas]
    return f"deployments:\n- model: {model}\n  name: chat\n  namespace: team\n  replicas:\n" + "\n".join(lines) + "\n"


def client(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def two_pools() -> Iterator[tuple[Gateway, Worker, Worker]]:
    a, b = Worker(), Worker()
    gw = Gateway(endpoints((a, "h100"), (b, "cpu")))
    for p in (a, b, gw):
        p.start()
    try:
        a.wait_ready()
        b.wait_ready()
        gw.wait_ready()
        deadline = time.monotonic() + 10
        while gw.sample("infleet_gateway_replicas", state="serving") < 2:
            assert time.monotonic() < deadline, gw.output()
            time.sleep(0.1)
        yield gw, a, b
    finally:
        for p in (gw, a, b):
            p.stop()


def test_sdk_chat_and_completions_streamed_and_not_across_two_pools(
        two_pools: tuple[Gateway, Worker, Worker]) -> None:
    gw, _, _ = two_pools
    c = client(gw)
    assert [m.id for m in c.models.list().data] == ["tiny"]

    def one(i: int) -> str:
        kind, stream = ("chat", "completion")[i % 2], i % 4 >= 2
        if kind == "chat":
            if stream:
                chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"hi {i}"}],
                                                        max_tokens=24, stream=True, extra_body=NO_EOS))
                assert chunks[-1].choices[0].finish_reason == "length"
                return "".join(ch.choices[0].delta.content or "" for ch in chunks)
            chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"hi {i}"}],
                                             max_tokens=24, extra_body=NO_EOS)
            assert chat.choices[0].finish_reason == "length"
            assert chat.usage is not None
            assert chat.usage.completion_tokens == 24
            return chat.choices[0].message.content or ""
        if stream:
            parts = list(c.completions.create(model="tiny", prompt=f"once {i}", max_tokens=24, stream=True,
                                              extra_body=NO_EOS))
            assert parts[-1].choices[0].finish_reason == "length"
            return "".join(p.choices[0].text for p in parts)
        done = c.completions.create(model="tiny", prompt=f"once {i}", max_tokens=24, extra_body=NO_EOS)
        assert done.choices[0].finish_reason == "length"
        return done.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(32)))
    assert all(texts)
    for pool_name in ("h100", "cpu"):
        assert gw.sample("infleet_gateway_routed_total", pool=pool_name) > 0, gw.metrics()
    assert gw.sample("infleet_gateway_requests_received_total", namespace="team", deployment="chat") >= 32
    assert gw.sample("infleet_gateway_ttft_seconds_count", deployment="chat") == 16  # the streamed half


def test_unknown_model_is_an_sdk_not_found_error(two_pools: tuple[Gateway, Worker, Worker]) -> None:
    gw, _, _ = two_pools
    with pytest.raises(openai.NotFoundError) as info:
        client(gw).chat.completions.create(model="gpt-unknown", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"


def test_a_burst_at_zero_ready_replicas_is_held_and_served_once_a_worker_starts() -> None:
    worker = Worker()  # not started yet: the deployment has zero ready replicas
    gw = Gateway(endpoints((worker, "cpu")))
    gw.start()
    try:
        gw.wait_ready()
        c = client(gw)
        n = 12
        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(c.completions.create, model="tiny", prompt=f"burst {i}", max_tokens=8,
                                   extra_body=NO_EOS, stream=i % 2 == 0) for i in range(n)]
            deadline = time.monotonic() + 30
            while gw.sample("infleet_gateway_queue_depth", deployment="chat") < n:
                assert time.monotonic() < deadline, gw.metrics()
                time.sleep(0.05)
            worker.start()  # the "scale-up": a replica turns ready while the requests wait
            results = [f.result(timeout=120) for f in futures]
        texts = [("".join(ch.choices[0].text for ch in r) if i % 2 == 0 else r.choices[0].text)
                 for i, r in enumerate(results)]
        assert all(texts)
        # Each request reached the worker exactly once: none lost, none answered twice.
        with_status = worker_requests(worker)
        assert with_status == n, with_status
        assert gw.sample("infleet_gateway_queue_depth", deployment="chat") == 0
        assert gw.sample("infleet_gateway_rejected_total", deployment="chat") == 0
    finally:
        gw.stop()
        worker.stop()


def worker_requests(worker: Worker) -> float:
    import urllib.request

    with urllib.request.urlopen(worker.url + "/metrics", timeout=5) as r:
        page = r.read().decode()
    return sum(float(line.rpartition(" ")[2]) for line in page.splitlines()
               if line.startswith("infleet_worker_requests_total{") and 'status="rejected"' not in line)


def test_killing_a_worker_under_load_loses_no_request_that_had_not_started_streaming() -> None:
    victim, survivor = Worker(slots=4), Worker(slots=4)
    gw = Gateway(endpoints((victim, "h100"), (survivor, "cpu")))
    for p in (victim, survivor, gw):
        p.start()
    try:
        victim.wait_ready()
        survivor.wait_ready()
        gw.wait_ready()
        while gw.sample("infleet_gateway_replicas", state="serving") < 2:
            time.sleep(0.1)
        c = client(gw)
        n = 24
        streamed_before_failure: list[int] = []
        lock = threading.Lock()

        def request(i: int) -> str:
            if i % 2:  # non-streaming: the client sees nothing until the end, so any failure is retried
                r = c.completions.create(model="tiny", prompt=f"load {i}", max_tokens=160,
                                         extra_body={"ignore_eos": True})
                return r.choices[0].text
            got = []
            try:
                for chunk in c.completions.create(model="tiny", prompt=f"load {i}", max_tokens=160, stream=True,
                                                  extra_body={"ignore_eos": True}):
                    got.append(chunk.choices[0].text)
            except openai.APIError:
                with lock:
                    if got:  # it had started streaming: an error event is the promised outcome
                        streamed_before_failure.append(i)
                        return "<cut>"
                raise
            return "".join(got)

        with ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(request, i) for i in range(n)]
            deadline = time.monotonic() + 30
            while gw.sample("infleet_gateway_replica_in_flight", pool="h100") < 3:
                assert time.monotonic() < deadline, gw.metrics()
                time.sleep(0.02)
            victim.kill()
            results = [f.result(timeout=180) for f in futures]
        lost = [i for i, text in enumerate(results) if not text]
        assert lost == []
        assert all(results[i] != "<cut>" for i in range(1, n, 2))  # every non-streaming request completed
        assert len(streamed_before_failure) <= 4  # at most the victim's running batch was mid-stream
        assert gw.sample("infleet_gateway_upstream_failures_total", phase="before_first_byte") >= 1
    finally:
        for p in (gw, victim, survivor):
            p.stop()
