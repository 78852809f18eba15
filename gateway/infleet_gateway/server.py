"""The gateway's HTTP face (aiohttp): the OpenAI routes, health, metrics; one request's path through admission,
routing, bounded retries and relaying."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infleet.policy.routing import RoutingConfig
from infleet_gateway.admission import (
    Admission,
    AdmissionConfig,
    QueueFullError,
    QueueTimeoutError,
    ShuttingDownError,
)
from infleet_gateway.errors import error_response
from infleet_gateway.forward import ClientGoneError, Relayed, Retryable, forward
from infleet_gateway.metrics import GatewayMetrics
from infleet_gateway.replicas import EndpointTable

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ProxyConfig:
    max_attempts: int = 3  # replicas tried per request before giving up (before the first byte only)
    connect_timeout_s: float = 2.0
    idle_timeout_s: float = 120.0  # the longest silence from a replica mid-answer
    cool_down_s: float = 5.0  # a replica that failed is skipped this long, or until a probe succeeds
    prefix_chars: int = 0  # > 0: route with prefix affinity on this many leading characters of the prompt

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.connect_timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")


def prefix_key(body: dict[str, Any], chars: int) -> str | None:
    """The leading `chars` characters of the prompt (completions) or of the conversation (chat)."""
    if chars <= 0:
        return None
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt[:chars]
    messages = body.get("messages")
    if isinstance(messages, list):
        text = "".join(f"{m.get('role')}:{m.get('content')}\n" for m in messages if isinstance(m, dict))
        return text[:chars]
    return None


class Gateway:
    def __init__(self, table: EndpointTable, *, admission: AdmissionConfig | None = None,
                 routing: RoutingConfig | None = None, proxy: ProxyConfig | None = None,
                 metrics: GatewayMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.metrics = metrics or GatewayMetrics()
        self.admission = Admission(table, self.metrics, admission or AdmissionConfig(), routing or RoutingConfig(),
                                   clock)
        self.proxy = proxy or ProxyConfig()
        self.clock = clock
        self.session: aiohttp.ClientSession | None = None
        self.synced = False  # discovery has delivered its first full view
        self.timeout = aiohttp.ClientTimeout(total=None, connect=self.proxy.connect_timeout_s,
                                             sock_read=self.proxy.idle_timeout_s)
        self._declared: set[tuple[str, str]] = set()
        self._replica_series: dict[tuple[str, str], set[tuple[str, str]]] = {}
        table.listeners.append(self._track_series)
        for key in list(table.deployments):
            self._track_series(key)

    def _track_series(self, key: tuple[str, str]) -> None:
        """Zeros for a new deployment; drop the per-replica series of replicas that are gone (pods churn)."""
        dep = self.table.deployments.get(key)
        if dep is not None and dep.spec.model and key not in self._declared:
            self.metrics.declare(*key)
            self._declared.add(key)
        now = {(r.spec.pool, r.replica_id) for r in dep.replicas.values()} if dep is not None else set()
        for pool, rid in self._replica_series.get(key, set()) - now:
            self.metrics.forget_replica(*key, pool, rid)
        if dep is None:
            self._replica_series.pop(key, None)
            self._declared.discard(key)
        else:
            self._replica_series[key] = now

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        app.cleanup_ctx.append(self._client_session)
        return app

    async def _client_session(self, _app: web.Application) -> Any:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        self.session = aiohttp.ClientSession(connector=connector, trust_env=False)
        yield
        await self.session.close()

    # ---- plain routes -----------------------------------------------------------------------------------------
    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": m, "object": "model", "owned_by": "infleet", "created": 0} for m in self.table.models()]})

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        ready = self.synced and not self.admission.closing
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def prometheus(self, _request: web.Request) -> web.Response:
        now = self.clock()
        gates = self.admission.config.probe_gates_ready
        for dep in self.table.deployments.values():
            if not dep.spec.model:
                continue
            counts = {"serving": 0, "warm": 0, "draining": 0, "unready": 0}
            for r in dep.replicas.values():
                counts[r.routing_state(now, probe_gates_ready=gates)] += 1
            for state, n in counts.items():
                self.metrics.replicas.labels(*dep.key, state).set(n)
        return web.Response(body=generate_latest(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    # ---- completions --------------------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/completions")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, "/v1/chat/completions")

    async def _generate(self, request: web.Request, path: str) -> web.StreamResponse:
        arrived = self.clock()
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return error_response(400, f"request body is not valid JSON: {exc}", "invalid_request_error",
                                  "invalid_json")
        if not isinstance(body, dict):
            return error_response(400, "request body must be a JSON object", "invalid_request_error", "invalid_body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return error_response(400, "`model` is required and must be a string", "invalid_request_error",
                                  "missing_model", param="model")
        dep = self.table.by_model(model)
        if dep is None:
            return error_response(404, f"The model `{model}` does not exist or is not served by this gateway",
                                  "invalid_request_error", "model_not_found", param="model")
        ns, name = dep.key
        self.metrics.child(self.metrics.received, ns, name).inc()
        stream = bool(body.get("stream"))
        key = prefix_key(body, self.proxy.prefix_chars)
        tried: set[str] = set()
        last: Retryable | None = None
        for attempt in range(self.proxy.max_attempts):
            try:
                slot = await self.admission.acquire(dep, prefix_key=key, exclude=frozenset(tried))
            except QueueFullError as exc:
                return self._reject(dep.key, "queue_full", f"too many requests queued for `{model}` ({exc})",
                                    self.admission.retry_after_s(dep))
            except QueueTimeoutError as exc:
                why = "no replica of it is ready yet" if exc.cold else "no replica had room"
                return self._reject(dep.key, "queue_timeout", f"`{model}`: {why} within {exc.waited_s:.1f}s",
                                    self.admission.retry_after_s(dep))
            except ShuttingDownError:
                self.metrics.rejected.labels(ns, name, "shutting_down").inc()
                return error_response(503, "this gateway replica is shutting down; retry", "unavailable",
                                      "shutting_down", retry_after_s=1)
            if attempt == 0:
                m = self.metrics
                m.child(m.queue_wait, ns, name).observe(slot.queued_s)
                m.child(m.overhead, ns, name).observe(max(0.0, self.clock() - arrived - slot.queued_s))
            replica = slot.replica

            def observe(done: Relayed, pool: str = replica.spec.pool) -> None:
                self._observe((ns, name), arrived, done, pool)

            try:
                result = await forward(request, self._session(), replica.spec.url + path, raw, stream=stream,
                                       timeout=self.timeout, on_relayed=observe, clock=self.clock)
            except ClientGoneError:
                log.debug("client went away during a request to %s", replica.replica_id)
                return web.Response(status=499)  # never written: the connection is gone
            finally:
                self.admission.release(slot)
            if isinstance(result, Relayed):
                return result.response
            last = result
            tried.add(replica.replica_id)
            self.metrics.upstream_failures.labels(ns, name, replica.spec.pool, "before_first_byte").inc()
            log.info("%s: attempt %d on %s failed before the first byte (%s)", model, attempt + 1,
                     replica.replica_id, result.reason)
            if result.cool_down:
                replica.cooldown_until_s = self.clock() + self.proxy.cool_down_s
                self.table.notify(dep.key)
        return self._give_up(dep.key, model, last)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            raise RuntimeError("the gateway's client session is not running (use Gateway.app())")
        return self.session

    def _observe(self, key: tuple[str, str], arrived: float, result: Relayed, pool: str) -> None:
        now = self.clock()
        self.metrics.child(self.metrics.duration, *key).observe(now - arrived)
        if result.first_token_s is not None:
            self.metrics.child(self.metrics.ttft, *key).observe(result.first_token_s - arrived)
        if result.failed_mid_stream:
            self.metrics.upstream_failures.labels(*key, pool, "mid_stream").inc()

    def _reject(self, key: tuple[str, str], reason: str, message: str, retry_after_s: int) -> web.Response:
        self.metrics.rejected.labels(*key, reason).inc()
        return error_response(429, message, "rate_limit_exceeded" if reason == "queue_full" else "timeout",
                              reason, retry_after_s=retry_after_s)

    def _give_up(self, key: tuple[str, str], model: str, last: Retryable | None) -> web.Response:
        self.metrics.rejected.labels(*key, "upstream_error").inc()
        if last is not None and last.status is not None and last.body:
            headers = {"Content-Type": last.content_type}
            if last.retry_after is not None:
                headers["Retry-After"] = last.retry_after
            return web.Response(body=last.body, status=last.status, headers=headers)
        reason = last.reason if last is not None else "no attempt made"
        return error_response(502, f"`{model}`: every replica tried failed before answering ({reason})",
                              "upstream_error", "upstream_unavailable")
