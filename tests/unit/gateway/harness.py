"""Real HTTP on loopback for the gateway's unit tests: scriptable upstream replicas (aiohttp servers that answer,
fail, stall or die mid-stream on purpose) and a gateway in front of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from infleet.policy.routing import RoutingConfig
from infleet_devcluster.ports import free_port
from infleet_gateway.admission import AdmissionConfig
from infleet_gateway.replicas import DeploymentSpec, EndpointTable, ReplicaSpec
from infleet_gateway.server import Gateway, ProxyConfig


@dataclass
class FakeReplica:
    """An upstream whose behaviour a test sets: `ok`, `503`, `reset` (drop before any byte), `die_mid_stream`,
    `hang` (never answers until cancelled)."""

    name: str
    behaviour: str = "ok"
    chunks: int = 3
    chunk_delay_s: float = 0.0
    linger_after_done_s: float = 0.0  # keep the stream open after `[DONE]`, as a slow connection close would
    state: str = "serving"
    served: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if self.behaviour == "503":
            return web.json_response({"error": {"message": "draining"}}, status=503)
        if self.behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if self.behaviour == "hang":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.served.append(body)
        if not body.get("stream"):
            return web.json_response({"id": "x", "object": "text_completion", "model": body["model"],
                                      "choices": [{"index": 0, "text": f"from {self.name}", "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for i in range(self.chunks):
                if self.behaviour == "die_mid_stream" and i == 1:
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await asyncio.sleep(self.chunk_delay_s)
                chunk = {"choices": [{"index": 0, "text": f"{self.name}-{i}", "finish_reason": None}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await asyncio.sleep(self.linger_after_done_s)
        except (asyncio.CancelledError, ConnectionResetError):
            self.cancelled += 1
            raise
        return resp

    async def metrics(self, _request: web.Request) -> web.Response:
        lines = [f'infleet_worker_lifecycle_state{{model="m",state="{s}"}} {1.0 if s == self.state else 0.0}'
                 for s in ("starting", "warm", "serving", "draining")]
        lines += ['infleet_worker_num_requests_waiting{model="m"} 0.0',
                  'infleet_worker_num_requests_running{model="m"} 0.0']
        return web.Response(text="\n".join(lines) + "\n")

    async def start(self, port: int | None = None) -> None:
        app = web.Application()
        app.router.add_post("/v1/completions", self.handle)
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/metrics", self.metrics)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        port = port or free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def table_with(replicas: list[FakeReplica], *, model: str = "m", ttft_ms: int | None = None,
               capacities: dict[str, float] | None = None) -> EndpointTable:
    table = EndpointTable()
    table.upsert_deployment(DeploymentSpec(namespace="ns", name="dep", model=model,
                                           ttft_slo_s=ttft_ms / 1000 if ttft_ms else None))
    for r in replicas:
        cap = (capacities or {}).get(r.name)
        table.upsert_replica(("ns", "dep"), ReplicaSpec(replica_id=r.name, url=r.url, pool="pool-" + r.name,
                                                         ready=True, capacity_rps=cap))
    return table


@contextlib.asynccontextmanager
async def running_gateway(table: EndpointTable, *, admission: AdmissionConfig | None = None,
                          proxy: ProxyConfig | None = None, routing: RoutingConfig | None = None,
                          ) -> AsyncIterator[tuple[str, Gateway]]:
    gateway = Gateway(table, admission=admission or AdmissionConfig(probe_gates_ready=False), proxy=proxy,
                      routing=routing)
    gateway.synced = True
    runner = web.AppRunner(gateway.app(), handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", gateway
    finally:
        await runner.cleanup()
