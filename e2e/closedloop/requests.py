"""Real OpenAI requests (the `openai` SDK, streaming, so time to first token is measured) and what became of each.

Every request carries a unique key (the OpenAI ``user`` field). Of the keys with no successful answer, one whose
last attempt failed after its first token is *cut mid-stream*, one the gateway refused with 429 (explicit
back-pressure: queue full or waited too long) is *rejected*, and every other one is *lost*. A key answered
successfully more than once (a retry of a request that had in fact been served) is *duplicated*.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import openai


@dataclass(kw_only=True)
class Attempt:
    key: str
    target: str
    sent_at: float
    ttft_s: float | None = None
    latency_s: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ok: bool = False
    status: int | None = None  # HTTP status of a failed attempt, when it had one
    error: str = ""


@dataclass
class RequestLog:
    attempts: list[Attempt] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    _clients: dict[str, openai.OpenAI] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def new_key(self) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self.keys.append(key)
        return key

    def _client(self, base_url: str, timeout_s: float) -> openai.OpenAI:
        with self._lock:
            if base_url not in self._clients:  # one connection pool per target, shared by the load threads
                self._clients[base_url] = openai.OpenAI(base_url=base_url, api_key="e2e", max_retries=0,
                                                        timeout=timeout_s)
            return self._clients[base_url]

    def complete(self, ip: str, model: str, prompt: str, max_tokens: int, key: str | None = None,
                 timeout_s: float = 60) -> Attempt:
        """One streamed completion straight to a worker at ``ip:8000``."""
        return self.complete_at(f"http://{ip}:8000/v1", model, prompt, max_tokens, key, timeout_s)

    def complete_at(self, base_url: str, model: str, prompt: str, max_tokens: int, key: str | None = None,
                    timeout_s: float = 60) -> Attempt:
        """One streamed completion at an OpenAI base URL (a worker's or the gateway's ``/v1``); never raises (the
        attempt records the error). The SDK's own retries are off: what the gateway retries is what counts."""
        key = key or self.new_key()
        client = self._client(base_url, timeout_s)
        a = Attempt(key=key, target=base_url, sent_at=time.time())
        t0 = time.monotonic()
        try:
            stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                               user=key, stream_options={"include_usage": True})
            for chunk in stream:
                if a.ttft_s is None and chunk.choices:  # the first streamed chunk (its text may be a partial
                    a.ttft_s = time.monotonic() - t0  # UTF-8 sequence, or empty when the first token ends it)
                if chunk.usage is not None:
                    a.completion_tokens = chunk.usage.completion_tokens
                    a.prompt_tokens = chunk.usage.prompt_tokens
            a.latency_s = time.monotonic() - t0
            a.ok = True
        except openai.OpenAIError as exc:
            a.error = f"{type(exc).__name__}: {exc}"
            a.status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        with self._lock:
            self.attempts.append(a)
        return a

    def _unanswered(self) -> dict[str, Attempt]:
        """Each key without a successful attempt -> its last attempt (keys never attempted are absent)."""
        answered = {a.key for a in self.attempts if a.ok}
        return {a.key: a for a in self.attempts if a.key not in answered}

    def lost(self) -> int:
        last = self._unanswered()
        answered = {a.key for a in self.attempts if a.ok}
        never_tried = sum(1 for k in self.keys if k not in answered and k not in last)
        return never_tried + sum(1 for a in last.values() if a.ttft_s is None and a.status != 429)

    def rejected(self) -> int:
        return sum(1 for a in self._unanswered().values() if a.ttft_s is None and a.status == 429)

    def cut_mid_stream(self) -> int:
        return sum(1 for a in self._unanswered().values() if a.ttft_s is not None)

    def duplicated(self) -> int:
        counts = Counter(a.key for a in self.attempts if a.ok)
        return sum(1 for n in counts.values() if n > 1)

    def served(self) -> Sequence[Attempt]:
        return [a for a in self.attempts if a.ok]

    def errors(self, limit: int = 5) -> list[str]:
        """A few distinct failure messages, for the report."""
        return sorted({a.error[:200] for a in self.attempts if not a.ok})[:limit]

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
