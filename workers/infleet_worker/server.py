"""The HTTP face of the worker (aiohttp): OpenAI-compatible completions, health, metrics and the lifecycle the
operator drives (starting -> warm <-> serving -> draining).

The engine thread does the work; each request gets an asyncio queue that the engine's sink feeds through
`call_soon_threadsafe`. Chat templating and tokenization run on a small thread pool, never on the event loop,
after the cheap limits (body size, prompt length in characters) have been checked. A client that disconnects,
streaming or not, aborts its request and frees its KV blocks (aiohttp cancels the handler; see `running_site`).

Every error body has OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`. The admin routes
(`/admin/*`) require `Authorization: Bearer <token>` when the worker has an admin token
(`INFLEET_WORKER_ADMIN_TOKEN`), and otherwise answer loopback peers only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from infleet_worker.chat_template import ChatFormatter, ChatTemplateError, TranscriptTemplate
from infleet_worker.engine import Engine, InvalidRequestError, RequestOutput, RequestRejectedError, SamplingParams
from infleet_worker.metrics import WorkerMetrics
from infleet_worker.protocol import (
    ChatRequest,
    CompletionRequest,
    ValidationError,
    describe_validation_error,
    refused_parameter,
)
from infleet_worker.sampling import TokenLogprob
from infleet_worker.tokenizer import Tokenizer

log = logging.getLogger(__name__)

STATES = ("starting", "warm", "serving", "draining")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the legacy completions API's default; chat defaults to the context left
MAX_PROMPT_CHARS_PER_TOKEN = 32  # a prompt longer than this many characters per allowed token is refused untokenized
MAX_BODY_BYTES = 4 * 1024 * 1024


class HTTPError(Exception):
    """An error answered in OpenAI's shape; `code` is a short machine-readable string (or None), `param` the
    request field at fault."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", *, code: str | None = None,
                 param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.retry_after_s = code, param, retry_after_s

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        return web.json_response(self.body(), status=self.status, headers=headers)


def _unavailable(message: str, retry_after_s: int) -> HTTPError:
    return HTTPError(503, message, "server_error", code="service_unavailable", retry_after_s=retry_after_s)


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        addr = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # an IPv4 client of a dual-stack socket
    return addr.is_loopback


@dataclass
class ServedModel:
    name: str
    engine: Engine
    tokenizer: Tokenizer
    chat_template: ChatFormatter = field(default_factory=TranscriptTemplate)


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    prompt_ids: list[int]
    params: SamplingParams


class WorkerServer:
    """Holds the lifecycle state and serves the routes; `model` is attached once loading has finished."""

    def __init__(self, model_name: str, metrics: WorkerMetrics, *, initial_state: str = "serving",
                 drain_grace_s: float = 30.0, retry_after_s: int = 1, admin_token: str | None = None) -> None:
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
        self.admin_token = admin_token or None
        # Tokenization and chat templating: CPU work that must not stall the event loop (/healthz, streams).
        self._prep_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="infleet-tokenize")

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
        app = web.Application(middlewares=[self._errors, self._admin_guard], client_max_size=MAX_BODY_BYTES)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/admin/state", self.get_state)
        app.router.add_post("/admin/state", self.post_state)
        app.on_cleanup.append(self._close_pool)
        return app

    async def _close_pool(self, _app: web.Application) -> None:
        self._prep_pool.shutdown(wait=False, cancel_futures=True)

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        try:
            return await handler(request)
        except HTTPError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            # aiohttp's own 404/405/413: JSON in OpenAI's shape like every other error.
            code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status)
            message = f"{exc.reason} ({request.method} {request.path})"
            if exc.status == 413:
                message = f"request body is larger than {MAX_BODY_BYTES} bytes"
            err = HTTPError(exc.status, message, "invalid_request_error", code=code)
            resp = err.response()
            if exc.status == 405 and "Allow" in exc.headers:
                resp.headers["Allow"] = exc.headers["Allow"]
            return resp
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return HTTPError(500, "internal error; see the worker log", "server_error",
                             code="internal_error").response()

    @web.middleware
    async def _admin_guard(self, request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        """Lifecycle changes (drain = the process exits) need the operator's token, or a loopback peer when the
        worker has none. The peer address is the socket's, never a forwarded header."""
        if request.path.startswith("/admin/"):
            if self.admin_token is not None:
                given = request.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {self.admin_token}".encode()):
                    raise HTTPError(401, "the admin API needs 'Authorization: Bearer <INFLEET_WORKER_ADMIN_TOKEN>'",
                                    "authentication_error", code="invalid_admin_token")
            elif not _is_loopback(request.remote):
                raise HTTPError(403, "the admin API answers loopback clients only when the worker has no admin "
                                "token (set INFLEET_WORKER_ADMIN_TOKEN)", "permission_error", code="forbidden")
        return await handler(request)

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
            raise HTTPError(400, "body must be {\"state\": \"warm\" | \"serving\" | \"draining\"}", param="state")
        if self.state == "draining":
            raise HTTPError(409, "worker is draining; its state can no longer change", code="conflict")
        if self.state == "starting":
            raise HTTPError(409, "model is still loading; retry once /readyz is 200", code="conflict",
                            retry_after_s=self.retry_after_s)
        if target == "draining":
            self.begin_drain()
        elif target != self.state:
            self.set_state(target)
        return web.json_response({"state": self.state})

    # ---- completions ------------------------------------------------------------------------------------------
    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = self._parse(CompletionRequest, await _json_body(request))
        assert isinstance(req, CompletionRequest)
        served = self._admit_check()
        text = req.prompt_text()
        self._check_prompt_chars(served, len(text), "prompt")

        def prepare() -> _Prepared:
            ids = served.tokenizer.encode(text, add_special_tokens=True)
            return _Prepared(prompt_ids=ids, params=self._params(served, req, ids, req.max_tokens,
                                                                 COMPLETIONS_DEFAULT_MAX_TOKENS, req.top_logprobs()))

        return await self._generate(request, served, req, await self._prepare(prepare), chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = self._parse(ChatRequest, await _json_body(request))
        assert isinstance(req, ChatRequest)
        served = self._admit_check()
        messages = [m.for_template() for m in req.messages]
        self._check_prompt_chars(served, sum(len(m["content"]) for m in messages), "messages")

        def prepare() -> _Prepared:
            rendered = served.chat_template.render(messages)
            ids = served.tokenizer.encode(rendered.text, add_special_tokens=rendered.add_special_tokens)
            return _Prepared(prompt_ids=ids, params=self._params(served, req, ids, req.requested_max_tokens(), None,
                                                                 req.top_logprobs_count()))

        return await self._generate(request, served, req, await self._prepare(prepare), chat=True)

    def _parse(self, cls: type[CompletionRequest] | type[ChatRequest],
               body: dict[str, Any]) -> CompletionRequest | ChatRequest:
        refused = refused_parameter(body)
        if refused is not None:
            raise HTTPError(400, f"parameter '{refused}' is not supported by this worker", param=refused,
                            code="unsupported_parameter")
        try:
            req = cls.model_validate(body)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise HTTPError(400, message, param=param) from exc
        if req.model is not None and req.model != self.model_name:
            raise HTTPError(404, f"The model `{req.model}` does not exist; this worker serves `{self.model_name}`",
                            param="model", code="model_not_found")
        return req

    def _check_prompt_chars(self, served: ServedModel, chars: int, param: str) -> None:
        """Refuse a prompt that cannot fit before spending CPU on tokenizing it (a multi-megabyte prompt would
        hold a tokenizer thread for seconds only to be refused)."""
        limit = served.engine.cfg.max_seq_len * MAX_PROMPT_CHARS_PER_TOKEN
        if chars > limit:
            raise HTTPError(400, f"prompt of {chars} characters cannot fit this worker's limit of "
                            f"{served.engine.cfg.max_seq_len} tokens per request", param=param,
                            code="context_length_exceeded")

    async def _prepare(self, prepare: Callable[[], _Prepared]) -> _Prepared:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._prep_pool, prepare)
        except ChatTemplateError as exc:
            raise HTTPError(400, str(exc), param="messages") from exc

    def _params(self, served: ServedModel, req: CompletionRequest | ChatRequest, ids: list[int],
                max_tokens: int | None, default_max: int | None, top_logprobs: int | None) -> SamplingParams:
        limit = served.engine.cfg.max_seq_len
        if len(ids) >= limit:
            raise HTTPError(400, f"prompt is {len(ids)} tokens; this worker's limit is {limit} tokens per request "
                            "(prompt + output)", param="messages" if isinstance(req, ChatRequest) else "prompt",
                            code="context_length_exceeded")
        if max_tokens is None:
            # Like the reference API: chat generates until EOS or the context is full.
            max_tokens = default_max if default_max is not None else limit - len(ids)
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature, top_p=req.top_p,
                              stop=req.stop_tuple(), ignore_eos=req.ignore_eos, seed=req.seed,
                              presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                              logit_bias=req.bias_tuple(), logprobs=top_logprobs)

    def _admit_check(self) -> ServedModel:
        if self.model is None or self.state == "starting":
            self.metrics.on_rejected()
            raise _unavailable("model is still loading", self.retry_after_s)
        if self.state == "warm":
            self.metrics.on_rejected()
            raise _unavailable("worker is warm (standby) and takes no traffic until promoted to serving",
                               self.retry_after_s)
        if self.state == "draining":
            self.metrics.on_rejected()
            raise _unavailable("worker is draining and admits no new requests", self.retry_after_s)
        return self.model

    async def _generate(self, request: web.Request, served: ServedModel, req: CompletionRequest | ChatRequest,
                        prepared: _Prepared, *, chat: bool) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            def sink(out: RequestOutput) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, out)

            served.engine.submit(prepared.prompt_ids, prepared.params, sink, rid)
        except InvalidRequestError as exc:
            raise HTTPError(400, str(exc)) from exc
        except RequestRejectedError as exc:
            if exc.reason == "queue_full":
                raise HTTPError(429, str(exc), "rate_limit_error", code="queue_full",
                                retry_after_s=exc.retry_after_s) from exc
            raise _unavailable(str(exc), exc.retry_after_s) from exc
        self._in_flight += 1
        finished = False
        try:
            events = _drain_queue(queue)
            if req.stream:
                resp = await self._stream(request, served, events, rid, chat)
            else:
                text: list[str] = []
                logprobs: list[TokenLogprob] = []
                last = None
                async for out in events:
                    text.append(out.text_delta)
                    logprobs.extend(out.logprobs)
                    last = out
                assert last is not None
                failure = _failure(last)
                if failure is not None:
                    finished = True
                    raise failure
                want_logprobs = prepared.params.logprobs is not None
                resp = web.json_response(self._full_body(rid, chat, "".join(text), last, served.tokenizer,
                                                         logprobs if want_logprobs else None))
            finished = True
            return resp
        finally:
            self._in_flight -= 1
            if not finished:
                served.engine.abort(rid)  # client went away or the write failed: free its KV blocks

    def _full_body(self, rid: str, chat: bool, text: str, last: RequestOutput, tok: Tokenizer,
                   logprobs: list[TokenLogprob] | None) -> dict[str, Any]:
        usage = {"prompt_tokens": last.prompt_tokens, "completion_tokens": last.completion_tokens,
                 "total_tokens": last.prompt_tokens + last.completion_tokens}
        reason = last.finish_reason
        if chat:
            lp = None if logprobs is None else {"content": _chat_logprobs(logprobs, tok), "refusal": None}
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                                      "logprobs": lp, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason,
                      "logprobs": None if logprobs is None else _completion_logprobs(logprobs, tok, 0)}
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": self.model_name, "choices": [choice], "usage": usage}

    async def _stream(self, request: web.Request, served: ServedModel, events: AsyncIterator[RequestOutput],
                      rid: str, chat: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        tok = served.tokenizer
        offset = 0

        async def send(choice: dict[str, Any], usage: dict[str, int] | None = None) -> None:
            chunk: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": self.model_name,
                                     "choices": [choice]}
            if usage is not None:
                chunk["usage"] = usage
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())

        if chat:
            await send({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None})
        async for out in events:
            failure = _failure(out)
            if failure is not None:
                # OpenAI's way to fail a stream that has started: an event carrying `error` (the SDK raises it).
                await resp.write(f"data: {json.dumps(failure.body())}\n\n".encode())
                break
            reason = out.finish_reason if out.finished else None
            usage = None
            if out.finished:
                usage = {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens,
                         "total_tokens": out.prompt_tokens + out.completion_tokens}
            if not out.text_delta and not out.finished and not out.logprobs:
                continue
            if chat:
                delta = {"content": out.text_delta} if out.text_delta else {}
                lp = {"content": _chat_logprobs(list(out.logprobs), tok), "refusal": None} if out.logprobs else None
                await send({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": reason}, usage)
            else:
                lp = _completion_logprobs(list(out.logprobs), tok, offset) if out.logprobs else None
                await send({"index": 0, "text": out.text_delta, "logprobs": lp, "finish_reason": reason}, usage)
            offset += len(out.text_delta)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _failure(out: RequestOutput) -> HTTPError | None:
    """`abort` (drain grace period over) and `error` (an engine step failed) are not OpenAI finish reasons: they
    are answered as errors, so a client never mistakes a cut-off answer for a complete one."""
    if out.finish_reason == "abort":
        return HTTPError(503, "request aborted: the worker is shutting down and its drain grace period ran out; "
                         "retry on another replica", "server_error", code="request_aborted")
    if out.finish_reason == "error":
        return HTTPError(500, "the engine failed while running this request; see the worker log", "server_error",
                         code="engine_error")
    return None


def _token_entry(tid: int, logprob: float, tok: Tokenizer) -> dict[str, Any]:
    text = tok.decode([tid])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _chat_logprobs(items: list[TokenLogprob], tok: Tokenizer) -> list[dict[str, Any]]:
    return [{**_token_entry(x.token_id, x.logprob, tok),
             "top_logprobs": [_token_entry(t, lp, tok) for t, lp in x.top]} for x in items]


def _completion_logprobs(items: list[TokenLogprob], tok: Tokenizer, offset: int) -> dict[str, Any]:
    tokens = [tok.decode([x.token_id]) for x in items]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [x.logprob for x in items],
            "top_logprobs": [{tok.decode([t]): lp for t, lp in x.top} for x in items], "text_offset": offsets}


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
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    try:
        # JSON may escape a lone UTF-16 surrogate (\ud800), which is no Unicode text and no tokenizer takes.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HTTPError(400, "request body holds a lone UTF-16 surrogate escape (e.g. \\ud800), which is not valid "
                        "Unicode text", code="invalid_unicode") from exc
    return body


@contextlib.asynccontextmanager
async def running_site(app: web.Application, host: str, port: int) -> AsyncIterator[web.AppRunner]:
    # handler_cancellation: a client that disconnects cancels its handler, whose `finally` aborts the request
    # in the engine (aiohttp keeps handlers running after a disconnect by default).
    runner = web.AppRunner(app, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield runner
    finally:
        await runner.cleanup()
