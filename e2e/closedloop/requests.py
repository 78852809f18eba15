"""Real OpenAI requests (the `openai` SDK, streaming, so time to first token is measured) and what became of each.

Every request carries a unique key (the OpenAI ``user`` field). A key with no successful answer is *lost*; a key
answered successfully more than once (a retry of a request that had in fact been served) is *duplicated*.
"""

from __future__ import annotations

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
    completion_tokens: int = 0
    ok: bool = False
    error: str = ""


@dataclass
class RequestLog:
    attempts: list[Attempt] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def new_key(self) -> str:
        key = uuid.uuid4().hex
        self.keys.append(key)
        return key

    def complete(self, ip: str, model: str, prompt: str, max_tokens: int, key: str | None = None,
                 timeout_s: float = 60) -> Attempt:
        """One streamed completion at ``ip:8000``; never raises (the attempt records the error)."""
        key = key or self.new_key()
        client = openai.OpenAI(base_url=f"http://{ip}:8000/v1", api_key="e2e", max_retries=0, timeout=timeout_s)
        a = Attempt(key=key, target=ip, sent_at=time.time())
        t0 = time.monotonic()
        try:
            stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, stream=True,
                                               user=key)
            for chunk in stream:
                if a.ttft_s is None and chunk.choices:  # the first streamed chunk (its text may be a partial
                    a.ttft_s = time.monotonic() - t0  # UTF-8 sequence, or empty when the first token ends it)
                if chunk.usage is not None:
                    a.completion_tokens = chunk.usage.completion_tokens
            a.latency_s = time.monotonic() - t0
            a.ok = True
        except openai.OpenAIError as exc:
            a.error = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        self.attempts.append(a)
        return a

    def lost(self) -> int:
        answered = {a.key for a in self.attempts if a.ok}
        return sum(1 for k in self.keys if k not in answered)

    def duplicated(self) -> int:
        counts = Counter(a.key for a in self.attempts if a.ok)
        return sum(1 for n in counts.values() if n > 1)

    def served(self) -> Sequence[Attempt]:
        return [a for a in self.attempts if a.ok]
