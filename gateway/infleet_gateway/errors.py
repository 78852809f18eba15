"""OpenAI-style error bodies: `{"error": {"message", "type", "param", "code"}}`, which the openai SDK turns into
its typed exceptions (404 -> NotFoundError, 429 -> RateLimitError)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, kind: str, code: str, *, param: str | None = None,
                   retry_after_s: int | None = None) -> web.Response:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return web.json_response(error_body(message, kind, code, param), status=status, headers=headers)


def error_event(message: str, code: str) -> bytes:
    """A server-sent event carrying an error, for a stream that cannot finish (the SDK raises on it)."""
    return f"data: {json.dumps(error_body(message, 'upstream_error', code))}\n\n".encode()
