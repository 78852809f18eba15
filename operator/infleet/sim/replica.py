"""One simulated replica's inference engine, iteration by iteration (continuous batching, chunked prefill).

Each engine step prefills up to ``step_tokens - batch`` prompt tokens (at least 32; whole prompts in arrival
order, or the next chunk of a long one, as ``infleet_worker.engine`` does) and decodes one token for every running
sequence; its duration is :meth:`~infleet.policy.service.ServiceModel.step_s` over the step's actual contexts. A
prompt's first token comes at the end of the step that finishes its prefill; a sequence then decodes one token per
step until its output is complete, so prefill chunks slow every running decode (TPOT can be missed) and a backlog
of prompts delays first tokens (TTFT can be missed).

To stay fast it steps coarsely but exactly: a run of decode-only steps with the same batch is one *segment*
(closed-form duration: each step's context grows by the batch size, so compute and memory time are linear in
the step number), cut short when a new request arrives at the replica (the step in progress completes first).
A step with prefill is a segment of its own.

KV cache: a request reserves its prompt plus its output on admission (a scheduler that never preempts), so a
replica holds at most ``kv_tokens`` tokens of actual requests, and at most ``max_batch`` requests.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from infleet.policy.service import ServiceModel
from infleet.sim.fleet import SimPool

MIN_PREFILL_CHUNK = 32  # the worker's min_prefill_chunk: prefill progresses even when decode fills the budget


def _line_sum(a0: float, a1: float, lo: int, hi: int) -> float:
    """Sum of ``a0 + a1 * j`` for ``j`` in ``[lo, hi)``."""
    n = hi - lo
    return n * a0 + a1 * (lo + hi - 1) * n / 2 if n > 0 else 0.0


def decode_span(c0: float, c1: float, m0: float, m1: float, n: int) -> float:
    """Total of ``max(c0 + c1 j, m0 + m1 j)`` over steps ``j = 0..n-1`` (compute vs memory, both linear)."""
    if n <= 0:
        return 0.0
    last = n - 1
    start_c, end_c = c0 >= m0, c0 + c1 * last >= m0 + m1 * last
    if start_c == end_c:
        return _line_sum(c0, c1, 0, n) if start_c else _line_sum(m0, m1, 0, n)
    cross = min(n, max(1, math.ceil((m0 - c0) / (c1 - m1))))
    first, second = ((c0, c1), (m0, m1)) if start_c else ((m0, m1), (c0, c1))
    return _line_sum(*first, 0, cross) + _line_sum(*second, cross, n)


class Replica:
    """Engine state of one replica; times are absolute simulation seconds."""

    __slots__ = (
        "busy_s",
        "created",
        "ctx_base",
        "ends",
        "held",
        "id",
        "kv",
        "pool",
        "prefilled",
        "ready_at",
        "reclaim_at",
        "role",
        "seg_chunk",
        "seg_end",
        "seg_start",
        "seg_steps",
        "state",
        "steps",
        "svc",
        "version",
        "waiting",
        "waiting_tokens",
    )

    def __init__(self, rid: int, pool: SimPool, svc: ServiceModel, role: str, now: float, ready_at: float) -> None:
        self.id = rid
        self.pool = pool
        self.svc = svc
        self.role = role  # serving | warm
        self.state = "starting" if ready_at > now else "ready"  # starting | ready | draining | reclaiming | gone
        self.created = now
        self.ready_at = ready_at
        self.reclaim_at = math.inf
        self.held = 0  # requests admitted and not finished (waiting for prefill or decoding)
        self.kv = 0.0  # KV tokens reserved by them
        self.waiting: deque[int] = deque()  # admitted, waiting for (the rest of) their prefill, in order
        self.waiting_tokens = 0.0  # prompt tokens still to prefill
        self.prefilled = 0.0  # tokens of waiting[0] already prefilled
        self.steps = 0  # decode steps run so far
        self.ends: list[tuple[int, int, int]] = []  # heap of (decode step it finishes at, request, join step)
        self.ctx_base = 0.0  # sum over decoding sequences of prompt + 1 - join step (context = this + batch * steps)
        self.seg_start = self.seg_end = 0.0
        self.seg_steps = 0  # decode steps of the running segment; 0 when idle
        self.seg_chunk = 0.0  # prefill tokens of the running segment (a single step)
        self.version = 0  # bumps when the running segment changes, so stale step events are ignored
        self.busy_s = 0.0

    @property
    def batch(self) -> int:
        return len(self.ends)

    @property
    def idle(self) -> bool:
        return self.seg_steps == 0

    def fits(self, tokens: float) -> bool:
        return self.held < self.svc.max_batch and self.kv + tokens <= self.svc.kv_tokens

    def context(self) -> float:
        return self.ctx_base + self.batch * self.steps

    def plan(self, now: float, prompts: list[int]) -> float | None:
        """Start the next segment at ``now``; return when it ends (None: nothing to do, the replica idles)."""
        svc = self.svc
        batch = self.batch
        ctx = self.context()
        if self.waiting:
            budget = max(svc.step_tokens - batch, MIN_PREFILL_CHUNK)
            tokens = pairs = attended = 0.0
            done = self.prefilled
            for idx in self.waiting:
                c = min(budget - tokens, prompts[idx] - done)
                pairs += c * done + c * c / 2
                attended += done + c
                tokens += c
                if tokens >= budget:
                    break
                done = 0.0
            self.seg_chunk = tokens
            self.seg_steps = 1
            dt = svc.step_s(batch, ctx, tokens, pairs, attended)
        elif batch:
            self.seg_chunk = 0.0
            self.seg_steps = self.ends[0][0] - self.steps
            dt = self._span(self.seg_steps)
        else:
            self.seg_steps = 0
            return None
        self.seg_start, self.seg_end = now, now + dt
        self.version += 1
        return self.seg_end

    def _span(self, n: int) -> float:
        svc = self.svc
        b = self.batch
        ctx = self.context()
        c0 = b / svc.prefill_tokens_per_s + svc.attention_pair_s * ctx
        m0 = svc.tpot_base_s + svc.kv_read_s * ctx
        return decode_span(c0, svc.attention_pair_s * b, m0, svc.kv_read_s * b, n) + n * svc.step_overhead_s

    def cut(self, now: float) -> float | None:
        """A request arrived during a decode-only segment: end it after the step in progress (new end, or None)."""
        if self.seg_chunk > 0 or self.seg_steps <= 1:
            return None
        lo, hi = 1, self.seg_steps
        elapsed = now - self.seg_start
        while lo < hi:  # fewest steps whose span reaches now
            mid = (lo + hi) // 2
            if self._span(mid) >= elapsed:
                hi = mid
            else:
                lo = mid + 1
        if lo >= self.seg_steps:
            return None
        self.seg_steps = lo
        self.seg_end = self.seg_start + self._span(lo)
        self.version += 1
        return self.seg_end

    def finish_segment(self, prompts: list[int], gens: list[int]) -> tuple[list[int], list[int]]:
        """Apply the segment that just ended: (requests whose first token came, requests that finished)."""
        self.busy_s += self.seg_end - self.seg_start
        self.steps += self.seg_steps if self.seg_chunk == 0 else 1
        finished: list[int] = []
        while self.ends and self.ends[0][0] <= self.steps:
            _, idx, join = heapq.heappop(self.ends)
            self.ctx_base -= prompts[idx] + 1 - join
            finished.append(idx)
        first: list[int] = []
        left = self.seg_chunk
        while left > 0 and self.waiting:
            idx = self.waiting[0]
            need = prompts[idx] - self.prefilled
            if left < need:
                self.prefilled += left
                self.waiting_tokens -= left
                break
            left -= need
            self.waiting_tokens -= need
            self.waiting.popleft()
            self.prefilled = 0.0
            first.append(idx)
            if gens[idx] <= 1:
                finished.append(idx)
            else:
                heapq.heappush(self.ends, (self.steps + gens[idx] - 1, idx, self.steps))
                self.ctx_base += prompts[idx] + 1 - self.steps
        self.seg_steps = 0
        self.seg_chunk = 0.0
        return first, finished

    def abandon(self, now: float) -> list[int]:
        """The replica is gone mid-work: every request it holds, and the busy time of the step in progress."""
        if not self.idle:
            self.busy_s += max(0.0, min(now, self.seg_end) - self.seg_start)
        held = list(self.waiting) + [idx for _, idx, _ in self.ends]
        self.waiting.clear()
        self.ends.clear()
        self.seg_steps = 0
        self.held = 0
        self.version += 1
        return held
