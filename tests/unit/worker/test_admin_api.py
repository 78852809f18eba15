"""The admin API: a bearer token when the worker has one, loopback peers only when it has none; an
unauthenticated client cannot change a worker's state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("aiohttp")

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from infleet_worker.engine import Engine
from infleet_worker.metrics import WorkerMetrics
from infleet_worker.server import ServedModel, WorkerServer, _is_loopback

from .test_server import run

TOKEN = "s3cret-token-value"


async def start(engine: Engine, *, token: str | None, peer: str | None = None) -> tuple[TestClient[Any, Any],
                                                                                        WorkerServer]:
    server = WorkerServer("tiny", WorkerMetrics("tiny"), initial_state="warm", admin_token=token)
    engine.start()
    server.attach(ServedModel("tiny", engine, engine.tokenizer))
    app = server.app()
    if peer is not None:
        # Seam: the test can only connect from loopback, so the peer address the guard sees is rewritten.
        @web.middleware
        async def from_peer(request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            return await handler(request.clone(remote=peer))

        app.middlewares.insert(0, from_peer)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, server


def test_token_is_required_when_configured(make_engine: Callable[..., Engine]) -> None:
    async def go() -> None:
        engine = make_engine()
        client, server = await start(engine, token=TOKEN)
        try:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                            {"Authorization": f"Basic {TOKEN}"}):
                r = await client.post("/admin/state", json={"state": "draining"}, headers=headers)
                assert r.status == 401
                err = (await r.json())["error"]
                assert err["code"] == "invalid_admin_token" and "INFLEET_WORKER_ADMIN_TOKEN" in err["message"]
                assert (await client.get("/admin/state", headers=headers)).status == 401
            assert server.state == "warm"  # nothing changed
            # Loopback is no exemption once a token is set.
            good = {"Authorization": f"Bearer {TOKEN}"}
            r = await client.post("/admin/state", json={"state": "serving"}, headers=good)
            assert r.status == 200 and server.state == "serving"
            # Inference and probes need no token.
            assert (await client.get("/readyz")).status == 200
            assert (await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2})).status == 200
        finally:
            await client.close()
            engine.shutdown()

    run(go())


@pytest.mark.parametrize(("peer", "allowed"), [("10.0.3.7", False), ("192.168.1.2", False), ("127.0.0.1", True),
                                               ("::1", True)])
def test_without_a_token_only_loopback_peers(make_engine: Callable[..., Engine], peer: str, allowed: bool) -> None:
    async def go() -> None:
        engine = make_engine()
        client, server = await start(engine, token=None, peer=peer)
        try:
            r = await client.post("/admin/state", json={"state": "serving"},
                                  headers={"X-Forwarded-For": "127.0.0.1"})  # a header proves nothing
            assert r.status == (200 if allowed else 403)
            assert server.state == ("serving" if allowed else "warm")
            if not allowed:
                assert (await r.json())["error"]["code"] == "forbidden"
                assert (await client.get("/readyz")).status == 200  # everything else is unaffected
        finally:
            await client.close()
            engine.shutdown()

    run(go())


def test_loopback_check() -> None:
    assert _is_loopback("127.0.0.1") and _is_loopback("127.9.9.9") and _is_loopback("::1")
    assert _is_loopback("::ffff:127.0.0.1")
    assert not _is_loopback("10.0.0.1") and not _is_loopback("::ffff:10.0.0.1")
    assert not _is_loopback(None) and not _is_loopback("") and not _is_loopback("not-an-ip")
