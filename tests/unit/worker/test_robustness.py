"""Robustness of the HTTP layer as the worker process runs it (`running_site`, the production runner): a client
that disconnects frees its slot whether or not it streams, tokenizing never stalls the event loop, and an oversized
prompt is refused before any tokenizing or queueing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest

pytest.importorskip("torch")
pytest.importorskip("aiohttp")

from infleet_devcluster.ports import free_port
from infleet_worker.engine import Engine
from infleet_worker.metrics import WorkerMetrics
from infleet_worker.server import MAX_PROMPT_CHARS_PER_TOKEN, ServedModel, WorkerServer, running_site
from infleet_worker.tokenizer import ByteTokenizer

from .test_server import run


class SlowTokenizer(ByteTokenizer):
    """Seam: a tokenizer that takes `delay_s` per call (as a multi-megabyte prompt would) and counts calls."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.calls = 0

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        self.calls += 1
        time.sleep(self.delay_s)
        return super().encode(text, add_special_tokens=add_special_tokens)


async def raw_request(port: int, path: str, body: dict[str, object]) -> tuple[asyncio.StreamReader,
                                                                              asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    await writer.drain()
    return reader, writer


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_aborts_and_frees_the_slot(make_engine: Callable[..., Engine], stream: bool) -> None:
    async def go() -> None:
        engine = make_engine(max_seq_len=1024)
        metrics = WorkerMetrics("tiny")
        engine.observer = metrics
        server = WorkerServer("tiny", metrics)
        engine.start()
        server.attach(ServedModel("tiny", engine, engine.tokenizer))
        port = free_port()
        try:
            async with running_site(server.app(), "127.0.0.1", port):
                _reader, writer = await raw_request(port, "/v1/completions", {
                    "prompt": "x", "max_tokens": 1000, "ignore_eos": True, "stream": stream})
                deadline = time.monotonic() + 10
                while engine.num_running == 0:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.01)
                writer.close()  # the client goes away mid-generation
                deadline = time.monotonic() + 5
                while not engine.is_idle():
                    assert time.monotonic() < deadline, "the request kept its slot after the client left"
                    await asyncio.sleep(0.01)
                aborted = metrics.requests.labels("tiny", "abort")._value.get()
                assert aborted == 1
                assert engine.kv_tokens_held == 0
        finally:
            engine.shutdown()

    run(go())


def test_tokenizing_runs_off_the_event_loop(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        engine = make_engine()
        tok = SlowTokenizer(delay_s=1.5)
        engine.tokenizer = tok
        server = WorkerServer("tiny", WorkerMetrics("tiny"))
        engine.start()
        server.attach(ServedModel("tiny", engine, tok))
        port = free_port()
        try:
            async with running_site(server.app(), "127.0.0.1", port):
                pending = asyncio.ensure_future(raw_request(port, "/v1/completions", {"prompt": "x", "max_tokens": 2}))
                while tok.calls == 0:
                    await asyncio.sleep(0.005)
                t0 = time.monotonic()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status = await asyncio.wait_for(reader.readline(), 5)
                elapsed = time.monotonic() - t0
                writer.close()
                assert b"200" in status
                # /healthz answered while the tokenizer was still busy (1.5 s): the loop was free.
                assert tok.calls == 1 and elapsed < 1.0, elapsed
                r, w = await pending
                assert b"200" in await asyncio.wait_for(r.readline(), 10)
                w.close()
        finally:
            engine.shutdown()

    run(go())


def test_oversized_prompt_is_refused_before_tokenizing(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        engine = make_engine(max_seq_len=64)
        tok = SlowTokenizer(delay_s=0.0)
        engine.tokenizer = tok
        server = WorkerServer("tiny", WorkerMetrics("tiny"))
        engine.start()
        server.attach(ServedModel("tiny", engine, tok))
        port = free_port()
        try:
            async with running_site(server.app(), "127.0.0.1", port):
                for path, body in (
                    ("/v1/completions", {"prompt": "y" * (64 * MAX_PROMPT_CHARS_PER_TOKEN + 1)}),
                    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "y" * 2100}]}),
                ):
                    reader, writer = await raw_request(port, path, body)
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                      if line.lower().startswith(b"content-length")))
                    err = json.loads(await reader.readexactly(length))["error"]
                    writer.close()
                    assert b" 400 " in head.split(b"\r\n")[0]
                    assert err["code"] == "context_length_exceeded"
                assert tok.calls == 0 and engine.num_waiting == 0
        finally:
            engine.shutdown()

    run(go())
