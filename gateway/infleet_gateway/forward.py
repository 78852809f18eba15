"""One attempt at one replica: send the client's body upstream and relay the answer.

Nothing reaches the client until the replica has sent its first body byte, so any failure before that point (a
refused or reset connection, a 5xx, a 503 from a warm or draining worker, a 429 from a full one) is reported as
`Retryable` and the caller tries another replica: the request is idempotent by construction because the client
has seen nothing. Once bytes have been relayed, a replica that dies ends the stream with an error event and
`[DONE]`, never a hang. A client that goes away closes the upstream connection, which aborts the worker's request.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from infleet_gateway.errors import error_event

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_TOKEN_MARKERS = (b'"content"', b'"text"')  # a chunk that carries generated text (the role-only chunk does not)
_DONE = b"data: [DONE]"  # SDK clients stop reading here, before the stream's end: it is the finish they see


@dataclass(frozen=True, kw_only=True)
class Retryable:
    """The attempt failed before the client saw a byte."""

    reason: str
    status: int | None = None  # the upstream's status, when it answered
    body: bytes = b""
    content_type: str = "application/json"
    retry_after: str | None = None
    cool_down: bool = False  # the replica looks unhealthy: keep new requests away until a probe says otherwise


@dataclass(frozen=True, kw_only=True)
class Relayed:
    response: web.StreamResponse
    first_token_s: float | None  # monotonic time of the first generated text (streams only)
    failed_mid_stream: bool = False


class ClientGoneError(Exception):
    """Writing to the client failed: it disconnected."""


async def forward(request: web.Request, session: aiohttp.ClientSession, url: str, body: bytes, *, stream: bool,
                  timeout: aiohttp.ClientTimeout, on_relayed: Callable[[Relayed], None],
                  clock: Callable[[], float] = time.monotonic) -> Relayed | Retryable:
    """One attempt; `on_relayed` runs once the answer is complete but before a stream's `[DONE]` event and end are
    sent, so metrics are recorded before the client can see the request finish."""
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream" if stream else "application/json"}
    resp: web.StreamResponse | None = None
    first_token: float | None = None
    held = b""  # the tail that is, or may begin, the `[DONE]` event: sent only after `on_relayed`
    try:
        async with session.post(url, data=body, headers=headers, timeout=timeout) as up:
            content_type = up.headers.get("Content-Type", "application/json")
            if up.status in RETRYABLE_STATUSES:
                return Retryable(reason=f"upstream answered {up.status}", status=up.status, body=await up.read(),
                                 content_type=content_type, retry_after=up.headers.get("Retry-After"),
                                 cool_down=up.status != 429)
            if not content_type.startswith("text/event-stream"):
                data = await up.read()
                done = Relayed(response=web.Response(body=data, status=up.status,
                                                     headers={"Content-Type": content_type}), first_token_s=None)
                on_relayed(done)
                return done
            async for chunk in up.content.iter_any():
                if resp is None:
                    resp = web.StreamResponse(status=up.status, headers={
                        "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
                    await _to_client(resp.prepare(request))
                if first_token is None and any(m in chunk for m in _TOKEN_MARKERS):
                    first_token = clock()
                held += chunk
                at = held.find(_DONE)
                sendable = held[:at] if at >= 0 else held[:len(held) - _done_prefix_len(held)]
                held = held[len(sendable):]
                if sendable:
                    await _to_client(resp.write(sendable))
            if resp is None:
                return Retryable(reason="upstream closed the stream before sending anything", cool_down=True)
            done = Relayed(response=resp, first_token_s=first_token)
            on_relayed(done)
            if held:
                await _to_client(resp.write(held))
            await _to_client(resp.write_eof())
            return done
    except (TimeoutError, aiohttp.ClientError) as exc:
        if resp is None:
            return Retryable(reason=f"{type(exc).__name__}: {exc}", cool_down=True)
        if held.startswith(_DONE):  # the answer was whole; only the connection's close failed
            done = Relayed(response=resp, first_token_s=first_token)
            on_relayed(done)
            await _to_client(resp.write(held))
            await _to_client(resp.write_eof())
            return done
        await _to_client(resp.write(held + error_event(f"the replica failed mid-stream ({type(exc).__name__}); the "
                                                "response is incomplete", "upstream_disconnected")))
        done = Relayed(response=resp, first_token_s=first_token, failed_mid_stream=True)
        on_relayed(done)
        await _to_client(resp.write(b"data: [DONE]\n\n"))
        await _to_client(resp.write_eof())
        return done


def _done_prefix_len(buf: bytes) -> int:
    """Length of the longest tail of `buf` that could begin `[DONE]`'s event (0 after a complete event)."""
    for n in range(min(len(buf), len(_DONE) - 1), 0, -1):
        if _DONE.startswith(buf[-n:]):
            return n
    return 0


async def _to_client(write: Awaitable[object]) -> None:
    """Await a write to the client, turning its failure into ClientGoneError (distinct from upstream errors)."""
    try:
        await write
    except (ConnectionResetError, aiohttp.ClientConnectionResetError, RuntimeError) as exc:
        raise ClientGoneError(str(exc)) from exc
