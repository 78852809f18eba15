"""The HTTP face of the worker (aiohttp): OpenAI-compatible completions, health, metrics and the lifecycle the
operator drives (starting -> warm <-> serving -> draining).

The engine thread does the work; each request gets an asyncio queue that the engine's sink feeds through
`call_soon_threadsafe`. A client that disconnects aborts its request, freeing its KV slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infleet_worker.engine import Engine, InvalidRequestError, RequestOutput, RequestRejectedError, SamplingParams
from infleet_worker.metrics import WorkerMetrics
from infleet_worker.protocol import (
    ChatRequest,
    CompletionRequest,
    ValidationError,
    chat_prompt,
    describe_validation_error,
)
from infleet_worker.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATES = ("starting", "warm", "serving", "draining")
DEFAULT_MAX_TOKENS = 16


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.retry_after_s = status, message, kind, retry_after_s

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        body = {"error": {"message": self.message, "type": self.kind, "code": self.status}}
        return web.json_response(body, status=self.status, headers=headers)


@dataclass
class ServedModel:
    name: str
    engine: Engine
    tokenizer: Tokenizer


class WorkerServer:
    """Holds the lifecycle state and serves the routes; `model` is attached once loading has finished."""

    def __init__(self, model_name: str, metrics: WorkerMetrics, *, initial_state: str = "serving",
                 drain_grace_s: float = 30.0, retry_after_s: int = 1) -> None:
        if initial_state not in ("warm", "serving"):
            raise ValueError(f"initial state must be warm or serving, got {initial_state!r}")
        self.model_name = model_name
        self.metrics = metrics
        self.initial_state = initial_state
        self.drain_grace_s = drain_grace_s
        self.retry_after_s = retry_after_s
        self.state = "starting"
        self.model: ServedModel | None = None
        self.stopped = asyncio.Event()
        self._in_flight = 0
        self._drain_task: asyncio.Task[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def set_state(self, state: str) -> None:
        log.info("lifecycle: %s -> %s", self.state, state)
        self.state = state
        self.metrics.set_state(state)

    def attach(self, model: ServedModel) -> None:
        self.model = model
        self.metrics.bind_engine(model.engine)
        if self.state == "starting":
            self.set_state(self.initial_state)

    def begin_drain(self) -> asyncio.Task[None]:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        return self._drain_task

    async def _drain(self) -> None:
        """Stop admitting, let in-flight requests finish within the grace period, abort the rest, then stop."""
        self.set_state("draining")
        deadline = time.monotonic() + self.drain_grace_s
        if self.model is not None:
            engine = self.model.engine
            engine.stop_admitting()
            while not engine.is_idle() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if not engine.is_idle():
                log.warning("drain grace period (%.0fs) over: aborting remaining requests", self.drain_grace_s)
                engine.abort_all()
        # Let handlers write out the final bytes of their responses.
        while self._in_flight and time.monotonic() < deadline + 5.0:
            await asyncio.sleep(0.02)
        if self.model is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.model.engine.shutdown)
        self.stopped.set()

    # ---- app --------------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors], client_max_size=4 * 1024 * 1024)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/admin/state", self.get_state)
        app.router.add_post("/admin/state", self.post_state)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except HTTPError as exc:
            return exc.response()
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return HTTPError(500, "internal error; see the worker log", "internal_error").response()

    async def healthz(self, _request: web.Request) -> web.Response:
        alive = self.model is None or self.model.engine.is_alive() or self.state == "draining"
        return web.json_response({"status": "ok" if alive else "engine thread died", "state": self.state},
                                 status=200 if alive else 500)

    async def readyz(self, _request: web.Request) -> web.Response:
        ready = self.model is not None and self.state in ("warm", "serving")
        return web.json_response({"ready": ready, "state": self.state}, status=200 if ready else 503)

    async def prometheus(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, _request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model_name, "object": "model", "owned_by": "infleet", "created": 0}]})

    async def get_state(self, _request: web.Request) -> web.Response:
        return web.json_response({"state": self.state})

    async def post_state(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        target = body.get("state")
        if target not in ("warm", "serving", "draining"):
            raise HTTPError(400, "body must be {\"state\": \"warm\" | \"serving\" | \"draining\"}",
                            "invalid_request_error")
        if self.state == "draining":
            raise HTTPError(409, "worker is draining; its state can no longer change", "conflict")
        if self.state == "starting":
            raise HTTPError(409, "model is still loading; retry once /readyz is 200", "conflict",
                            self.retry_after_s)
        if target == "draining":
            self.begin_drain()
        elif target != self.state:
            self.set_state(target)
        return web.json_response({"state": self.state})

    # ---- completions ------------------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = _parse(CompletionRequest, await _json_body(request))
        assert isinstance(req, CompletionRequest)
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        return await self._generate(request, req, prompt, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = _parse(ChatRequest, await _json_body(request))
        assert isinstance(req, ChatRequest)
        return await self._generate(request, req, chat_prompt(req.messages), chat=True)

    def _admit_check(self) -> ServedModel:
        if self.model is None or self.state == "starting":
            self.metrics.on_rejected()
            raise HTTPError(503, "model is still loading", "unavailable", self.retry_after_s)
        if self.state == "warm":
            self.metrics.on_rejected()
            raise HTTPError(503, "worker is warm (standby) and takes no traffic until promoted to serving",
                            "unavailable", self.retry_after_s)
        if self.state == "draining":
            self.metrics.on_rejected()
            raise HTTPError(503, "worker is draining and admits no new requests", "unavailable",
                            self.retry_after_s)
        return self.model

    async def _generate(self, request: web.Request, req: CompletionRequest | ChatRequest, prompt: str,
                        *, chat: bool) -> web.StreamResponse:
        served = self._admit_check()
        tok = served.tokenizer
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(prompt)
        params = SamplingParams(max_tokens=req.max_tokens or DEFAULT_MAX_TOKENS, temperature=req.temperature,
                                top_p=req.top_p, stop=req.stop_tuple(), ignore_eos=req.ignore_eos)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            def sink(out: RequestOutput) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, out)

            served.engine.submit(ids, params, sink, rid)
        except InvalidRequestError as exc:
            raise HTTPError(400, str(exc), "invalid_request_error") from exc
        except RequestRejectedError as exc:
            status = 429 if exc.reason == "queue_full" else 503
            raise HTTPError(status, str(exc), "overloaded" if status == 429 else "unavailable",
                            exc.retry_after_s) from exc
        self._in_flight += 1
        finished = False
        try:
            events = _drain_queue(queue)
            if req.stream:
                resp = await self._stream(request, events, rid, chat)
            else:
                text, last = [], None
                async for out in events:
                    text.append(out.text_delta)
                    last = out
                assert last is not None
                resp = web.json_response(self._full_body(rid, chat, "".join(text), last))
            finished = True
            return resp
        finally:
            self._in_flight -= 1
            if not finished:
                served.engine.abort(rid)  # client went away or the write failed: free the slot

    def _full_body(self, rid: str, chat: bool, text: str, last: RequestOutput) -> dict[str, Any]:
        usage = {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                 "total_tokens": last.prompt_tokens + last.completion_tokens}
        reason = last.finish_reason
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice], "usage": usage}

    async def _stream(self, request: web.Request, events: AsyncIterator[RequestOutput], rid: str,
                      chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        async def send(choice: dict[str, Any], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": self.model_name,
                                     "choices": [choice]}
            if usage is not None:
                chunk["usage"] = usage
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        if chat:
            await send({"index": 0, "delta": {"role": "assistant"}, "finish_reason": None})
        async for out in events:
            reason = out.finish_reason if out.finished else None
            usage = None
            if out.finished:
                usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                         "total_tokens": out.prompt_tokens + out.completion_tokens}
            if not out.text_delta and not out.finished:
                continue
            if chat:
                delta = {"content": out.text_delta} if out.text_delta else {}
                await send({"index": 0, "delta": delta, "finish_reason": reason}, usage)
            else:
                await send({"index": 0, "text": out.text_delta, "logprobs": None, "finish_reason": reason}, usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


async def _drain_queue(queue: asyncio.Queue[RequestOutput]) -> AsyncIterator[RequestOutput]:
    while True:
        out = await queue.get()
        yield out
        if out.finished:
            return


async def _json_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", "invalid_request_error")
    return body


def _parse(cls: type[CompletionRequest] | type[ChatRequest], body: dict[str, Any]) -> CompletionRequest | ChatRequest:
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        raise HTTPError(400, describe_validation_error(exc), "invalid_request_error") from exc


@contextlib.asynccontextmanager
async def running_site(app: web.Application, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()
