"""Continuous batching: a scheduler that admits, prefills, decodes and retires requests one step at a time.

Each `step()` first spends a token budget on prefill (whole prompts, or the next chunk of a long one), then runs
one decode token for every sequence in the running batch. Requests therefore join and leave the batch at every
step, and a long prompt cannot stall the streams already decoding.

KV memory is paged (`kv_blocks.BlockPool`): admission allocates blocks for a request's prompt (less the blocks a
prefix-cache hit shares), each decode step gives a sequence a new block when it crosses a block boundary, and a
finished request releases its blocks. A request waits in a bounded queue while the running batch is at
`num_slots` or its prompt's blocks are not available; when that queue is full `submit` refuses it
(`RequestRejected`), so overload turns into back-pressure instead of an out-of-memory crash. When a running
sequence needs a block and none is left, the youngest sequence is preempted: its blocks are released and it goes
back to the head of the queue, to be recomputed (prompt + output so far, as one prefill) once blocks are free.

The engine runs in its own thread (`start`); `submit` and `abort` are thread-safe and results come back
through a per-request sink callback, called on the engine thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from infleet_worker.kv_blocks import BlockPool
from infleet_worker.runner import ModelRunner, blocks_for
from infleet_worker.sampling import RowOptions, TokenLogprob, sample_row, seeded_generator
from infleet_worker.tokenizer import Tokenizer

log = logging.getLogger(__name__)


class InvalidRequestError(ValueError):
    """The request can never be served as asked (empty prompt, too long, bad sampling parameters)."""


class RequestRejectedError(RuntimeError):
    """The request is valid but the engine will not take it now (queue full, or draining)."""

    def __init__(self, message: str, reason: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None  # reproducible sampling: the request gets its own generator
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # None: none; n >= 0: the chosen token's logprob and the n most likely

    def validate(self, vocab_size: int | None = None) -> None:
        if self.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequestError(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop sequences must be non-empty strings")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise InvalidRequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidRequestError(f"top_logprobs must be in [0, 20], got {self.logprobs}")
        for tid, bias in self.logit_bias:
            if vocab_size is not None and not 0 <= tid < vocab_size:
                raise InvalidRequestError(f"logit_bias: token id {tid} is outside the vocabulary (0..{vocab_size - 1})")
            if not -100.0 <= bias <= 100.0:
                raise InvalidRequestError(f"logit_bias: bias {bias} for token {tid} is outside [-100, 100]")

    @property
    def plain(self) -> bool:
        """True when the batched sampler covers this request (no seed, penalties, bias or logprobs)."""
        return (self.seed is None and not self.presence_penalty and not self.frequency_penalty
                and not self.logit_bias and self.logprobs is None)

    def row_options(self) -> RowOptions:
        return RowOptions(temperature=self.temperature, top_p=self.top_p, presence_penalty=self.presence_penalty,
                          frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias,
                          top_logprobs=self.logprobs)


@dataclass(frozen=True)
class RequestOutput:
    """One event for a request: new text and tokens, and on the last event the finish reason."""

    request_id: str
    text_delta: str
    token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None  # stop | length | abort | error
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in `token_ids`, when the request asked for them


@dataclass(frozen=True)
class FinishedRequest:
    """Timings of a finished request, for the metrics observer."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    ttft_s: float | None
    tpot_s: float | None


class EngineObserver(Protocol):
    def on_first_token(self, ttft_s: float) -> None: ...

    def on_finished(self, req: FinishedRequest) -> None: ...

    def on_rejected(self) -> None: ...

    def on_step(self, batch_size: int, prefill_tokens: int, decode_tokens: int) -> None: ...

    def on_tokens_generated(self, n: int) -> None: ...

    def on_prefilled(self, n: int) -> None: ...

    def on_prefix_lookup(self, prompt_tokens: int, hit_tokens: int) -> None: ...

    def on_preempted(self) -> None: ...


Sink = Callable[[RequestOutput], None]


@dataclass(kw_only=True)
class EngineConfig:
    num_slots: int = 8  # the largest running batch (sequences decoding at once)
    max_seq_len: int = 512  # prompt + generated tokens per request
    max_waiting: int = 256  # queued requests beyond which submit refuses
    max_num_batched_tokens: int = 512  # per-step token budget (decode tokens + prefill tokens)
    min_prefill_chunk: int = 32  # prefill progress per step even when decode uses the whole budget
    retry_after_s: int = 1
    block_size: int = 16  # tokens per KV block
    kv_blocks: int = 0  # KV pool size in blocks; 0 = num_slots x max_seq_len worth + prefix_cache_blocks
    prefix_cache_blocks: int = 0  # > 0 turns prefix caching on (and adds this many blocks to the default pool)

    @property
    def num_kv_blocks(self) -> int:
        if self.kv_blocks > 0:
            return self.kv_blocks
        return self.num_slots * blocks_for(self.max_seq_len, self.block_size) + max(self.prefix_cache_blocks, 0)


@dataclass(eq=False)
class _Seq:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    sink: Sink
    arrival: float
    blocks: list[int] = field(default_factory=list)  # block table: the KV blocks holding positions 0, bs, 2bs, ...
    cached: int = 0  # tokens whose keys/values are in the cache
    admitted: int = -1  # admission order (the youngest is preempted first)
    output_ids: list[int] = field(default_factory=list)
    first_token_at: float | None = None
    emitted: int = 0  # characters of text already sent
    text: str = ""  # committed output text
    prefix_offset: int = 0  # incremental detokenization window (see Engine._detokenize)
    read_offset: int = 0
    done: bool = False
    generator: torch.Generator | None = None  # a seeded request's own

    @property
    def context(self) -> list[int]:
        """Tokens to prefill: the prompt, plus the output so far for a preempted sequence being recomputed."""
        return [*self.prompt_ids, *self.output_ids] if self.output_ids else self.prompt_ids


class Engine:
    def __init__(self, runner: ModelRunner, tokenizer: Tokenizer, config: EngineConfig,
                 observer: EngineObserver | None = None) -> None:
        cache = runner.cache
        if config.num_slots > runner.num_slots or config.max_seq_len > runner.max_seq_len:
            raise ValueError("engine config exceeds the runner's batch or sequence limits")
        if config.block_size != cache.block_size:
            raise ValueError(f"engine block size {config.block_size} != the KV cache's {cache.block_size}")
        if cache.num_blocks * cache.block_size < config.max_seq_len:
            # Otherwise a request within max_seq_len could wait forever for blocks that do not exist.
            raise ValueError(f"a KV pool of {cache.num_blocks} blocks of {cache.block_size} tokens cannot hold one "
                             f"request of max_seq_len {config.max_seq_len}")
        self.runner, self.tokenizer, self.cfg, self.observer = runner, tokenizer, config, observer
        self.pool = BlockPool(num_blocks=cache.num_blocks, block_size=cache.block_size,
                              prefix_caching=config.prefix_cache_blocks > 0)
        self._waiting: deque[_Seq] = deque()
        self._running: list[_Seq] = []  # the decode batch, in batch-row order
        self._prefilling: _Seq | None = None  # at most one prompt is mid-way through chunked prefill
        self._admissions = itertools.count()
        self._head_match: tuple[_Seq, int, int, list[int]] | None = None  # see _head_hits
        self.preemptions = 0
        self._aborts: set[str] = set()
        self._cv = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self.steps = 0
        # Wall time spent in each part of `step` (benchmarks read it to tell device time from host overhead).
        self.timers = {"prefill": 0.0, "decode": 0.0, "sample": 0.0, "append": 0.0}

    # ---- thread-safe API -------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams, sink: Sink, request_id: str | None = None) -> str:
        params.validate(self.runner.model.cfg.vocab_size)
        if not prompt_ids:
            raise InvalidRequestError("prompt is empty")
        total = len(prompt_ids) + params.max_tokens
        if total > self.cfg.max_seq_len:
            raise InvalidRequestError(
                f"prompt ({len(prompt_ids)} tokens) plus max_tokens ({params.max_tokens}) is {total}, over this "
                f"worker's limit of {self.cfg.max_seq_len} tokens per request"
            )
        rid = request_id or f"req-{next(self._ids)}"
        with self._cv:
            if not self._accepting:
                self._reject()
                raise RequestRejectedError("worker is draining and admits no new requests", "draining",
                                           self.cfg.retry_after_s)
            if len(self._waiting) >= self.cfg.max_waiting:
                self._reject()
                raise RequestRejectedError(f"request queue is full ({self.cfg.max_waiting} waiting)", "queue_full",
                                           self.cfg.retry_after_s)
            gen = seeded_generator(params.seed) if params.seed is not None else None
            self._waiting.append(_Seq(rid, list(prompt_ids), params, sink, time.monotonic(), generator=gen))
            self._cv.notify()
        return rid

    def abort(self, request_id: str) -> None:
        with self._cv:
            self._aborts.add(request_id)
            self._cv.notify()

    def stop_admitting(self) -> None:
        with self._cv:
            self._accepting = False

    @property
    def num_waiting(self) -> int:
        return len(self._waiting) + (1 if self._prefilling is not None else 0)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def prefix(self) -> BlockPool | None:
        """The pool when prefix caching is on (its hit/query counters and cached blocks), else None."""
        return self.pool if self.pool.prefix_caching else None

    @property
    def kv_tokens_held(self) -> int:
        """Tokens whose keys and values requests hold now, a shared prefix once per request (read from another
        thread: a snapshot)."""
        held = sum(s.cached for s in list(self._running))
        prefilling = self._prefilling
        return held + (prefilling.cached if prefilling is not None else 0)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.pool.num_blocks * self.pool.block_size

    @property
    def kv_usage(self) -> float:
        """Fraction of the KV pool's blocks that requests reference (cached blocks nobody references are
        reclaimable, so they count as free)."""
        return self.pool.blocks_in_use / self.pool.num_blocks

    def is_idle(self) -> bool:
        with self._cv:
            return not self._waiting and not self._running and self._prefilling is None

    def is_alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def wait_idle(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.is_idle():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def abort_all(self) -> None:
        with self._cv:
            self._aborts.update(s.id for s in self._waiting)
            self._aborts.update(s.id for s in self._running)
            if self._prefilling is not None:
                self._aborts.add(self._prefilling.id)
            self._cv.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="infleet-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- engine thread ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._waiting or self._running or self._prefilling or self._aborts):
                    self._cv.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception:
                # A failing step must not take the process (and every other request) down: fail what was in
                # flight, free the cache, keep serving.
                log.exception("engine step failed; failing in-flight requests")
                for seq in [*self._running, *([self._prefilling] if self._prefilling else [])]:
                    self._finish(seq, "error")

    def _reject(self) -> None:
        if self.observer is not None:
            self.observer.on_rejected()

    def _apply_aborts(self) -> None:
        with self._cv:
            if not self._aborts:
                return
            ids, self._aborts = self._aborts, set()
            queued = [s for s in self._waiting if s.id in ids]
            for s in queued:
                self._waiting.remove(s)
        for s in [*queued, *[s for s in self._running if s.id in ids]]:
            self._finish(s, "abort")
        if self._prefilling is not None and self._prefilling.id in ids:
            self._finish(self._prefilling, "abort")

    def _admit(self) -> _Seq | None:
        """The queue's head, with blocks for its whole context (shared prefix blocks first), if they are free.

        Only the engine thread removes from the queue, so its head cannot change between the peek and the pop."""
        with self._cv:
            if not self._waiting or len(self._running) >= self.cfg.num_slots:
                return None
            seq = self._waiting[0]
        context = seq.context
        hits = self._head_hits(seq, len(context))
        fresh = self.pool.blocks_for(len(context)) - len(hits)
        if not self.pool.can_admit(hits, fresh):
            return None  # blocks run out: wait for running requests to release theirs
        self._head_match = None
        with self._cv:
            self._waiting.popleft()
        self.pool.acquire(hits)
        seq.blocks = [*hits, *(self._allocate() for _ in range(fresh))]
        seq.cached = len(hits) * self.pool.block_size  # these tokens skip prefill
        seq.admitted = next(self._admissions)
        if not seq.output_ids and self.pool.prefix_caching:  # a fresh request (not a recomputation)
            self.pool.query_tokens += len(seq.prompt_ids)
            self.pool.hit_tokens += seq.cached
            if self.observer is not None:
                self.observer.on_prefix_lookup(len(seq.prompt_ids), seq.cached)
        return seq

    def _head_hits(self, seq: _Seq, context_len: int) -> list[int]:
        """The queue head's cached prefix blocks, looked up again only when the head, its context or the prefix
        index changed: while the pool is short of blocks the same head is retried every step."""
        version = self.pool.index_version
        if self._head_match is not None:
            was, was_len, was_version, hits = self._head_match
            if was is seq and was_len == context_len and was_version == version:
                return hits
        hits = self.pool.match(seq.context)
        self._head_match = (seq, context_len, version, hits)
        return hits

    def _allocate(self) -> int:
        block = self.pool.allocate()
        if block is None:  # can_admit said otherwise: a bookkeeping bug, never a reason to corrupt a sequence
            raise RuntimeError("KV pool out of blocks after admission checked them")
        return block

    def _grow(self) -> None:
        """Give each running sequence the block its next token goes to; when none is left, preempt the youngest
        sequence holding blocks (possibly the one growing) until one is."""
        for seq in list(self._running):
            while seq.admitted >= 0 and len(seq.blocks) * self.pool.block_size <= seq.cached:
                block = self.pool.allocate()
                if block is not None:
                    seq.blocks.append(block)
                else:
                    self._preempt(self._youngest())

    def _youngest(self) -> _Seq:
        if self._prefilling is not None:
            return self._prefilling
        return max(self._running, key=lambda s: s.admitted)

    def _preempt(self, seq: _Seq) -> None:
        """Release `seq`'s blocks and queue it first, to be recomputed from its prompt and output so far."""
        self.pool.cache(seq.blocks, seq.context, seq.cached)  # what it computed stays findable for the recompute
        self._leave_batch(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.cached, seq.admitted = [], 0, -1
        with self._cv:
            self._waiting.appendleft(seq)
        self.preemptions += 1
        log.debug("KV pool full: preempted %s (%d tokens so far) for recomputation", seq.id, len(seq.output_ids))
        if self.observer is not None:
            self.observer.on_preempted()

    def step(self) -> None:
        """One scheduling step: prefill within the token budget, then one decode token per running sequence."""
        t0 = time.perf_counter()
        self._apply_aborts()
        budget = max(self.cfg.max_num_batched_tokens - len(self._running), self.cfg.min_prefill_chunk)
        prefill_tokens, touched = 0, set()
        while budget > 0:
            seq = self._prefilling or self._admit()
            if seq is None:
                break
            self._prefilling = seq  # owned by the engine from here: a failing step still finishes it
            touched.add(seq.id)
            context = seq.context
            n = min(budget, len(context) - seq.cached)
            logits = self.runner.prefill(context[seq.cached : seq.cached + n], seq.cached, seq.blocks)
            seq.cached += n
            budget -= n
            prefill_tokens += n
            if self.observer is not None:  # counted before this request's first token can reach its client
                self.observer.on_prefilled(n)
            if seq.cached < len(context):
                break
            self._prefilling = None
            self.pool.cache(seq.blocks, context, seq.cached)
            ((token, logprob),) = self._sample(logits[None], [seq])
            self._join_running(seq)
            self._count_generated(1)
            self._append(seq, token, logprob)
        self._grow()
        t1 = time.perf_counter()
        self.timers["prefill"] += t1 - t0
        batch = list(self._running)
        if batch:
            logits = self.runner.decode([s.output_ids[-1] for s in batch], [s.cached for s in batch],
                                        [s.blocks for s in batch])
            t2 = time.perf_counter()
            sampled = self._sample(logits, batch)
            t3 = time.perf_counter()
            for s in batch:  # the cache grew for every row before any finish compacts the batch
                s.cached += 1
            self._count_generated(len(batch))
            for s, (t, lp) in zip(batch, sampled, strict=True):
                self._append(s, t, lp)
            self.timers["decode"] += t2 - t1
            self.timers["sample"] += t3 - t2
            self.timers["append"] += time.perf_counter() - t3
            touched.update(s.id for s in batch)
        self.steps += 1
        if self.observer is not None and touched:
            self.observer.on_step(len(touched), prefill_tokens, len(batch))

    def _count_generated(self, n: int) -> None:
        """Counted as tokens are sampled, before any of them reaches its client (a client that has its answer
        then sees it in the metrics), not when requests end: long streams show in rate() while they run."""
        if self.observer is not None:
            self.observer.on_tokens_generated(n)

    def _sample(self, logits: torch.Tensor, seqs: list[_Seq]) -> list[tuple[int, TokenLogprob | None]]:
        """Batched sampling for plain rows; rows with a seed, penalties, bias or logprobs one at a time."""
        if all(s.params.plain for s in seqs):
            tokens = self.runner.sample(logits, [s.params.temperature for s in seqs], [s.params.top_p for s in seqs])
            return [(t, None) for t in tokens]
        out: list[tuple[int, TokenLogprob | None]] = []
        for i, s in enumerate(seqs):
            if s.params.plain:
                out.append((self.runner.sample(logits[i : i + 1], [s.params.temperature], [s.params.top_p])[0], None))
            else:
                out.append(sample_row(logits[i], s.params.row_options(), s.output_ids, s.generator,
                                      self.runner.generator))
        return out

    def _join_running(self, seq: _Seq) -> None:
        self._running.append(seq)

    def _leave_batch(self, seq: _Seq) -> None:
        """Take `seq` out of the batch (the last row moves into its place, as batch order is row order) or out
        of prefill."""
        if seq in self._running:
            idx = self._running.index(seq)
            last = self._running.pop()
            if last is not seq:
                self._running[idx] = last
        if self._prefilling is seq:
            self._prefilling = None

    def _append(self, seq: _Seq, token: int, logprob: TokenLogprob | None = None) -> None:
        now = time.monotonic()
        if seq.first_token_at is None:
            seq.first_token_at = now
            if self.observer is not None:
                self.observer.on_first_token(now - seq.arrival)
        p = seq.params
        reason: str | None = None
        is_eos = not p.ignore_eos and token in self.tokenizer.eos_ids
        seq.output_ids.append(token)
        if not is_eos:
            self._detokenize(seq)
        text = seq.text
        if is_eos:
            reason = "stop"
        hit = _find_stop(text, p.stop, max(0, seq.emitted - max((len(s) for s in p.stop), default=0)))
        if hit is not None:
            text, reason = text[:hit], "stop"
        if reason is None and (len(seq.output_ids) >= p.max_tokens or seq.cached + 1 >= self.cfg.max_seq_len):
            reason = "length"
            # Flush bytes held back as an incomplete character: the stream ends here.
            tail = self.tokenizer.decode(seq.output_ids[seq.prefix_offset :])
            text += tail[len(self.tokenizer.decode(seq.output_ids[seq.prefix_offset : seq.read_offset])) :]
            hit = _find_stop(text, p.stop, max(0, seq.emitted - max((len(s) for s in p.stop), default=0)))
            if hit is not None:
                text, reason = text[:hit], "stop"
        if reason is None:
            safe = len(text) - _held_back(text, p.stop)
            delta = text[seq.emitted : safe] if safe > seq.emitted else ""
        else:
            delta = text[seq.emitted :]
        seq.emitted += len(delta)
        out = RequestOutput(seq.id, delta, (token,), reason is not None, reason, len(seq.prompt_ids),
                            len(seq.output_ids), (logprob,) if logprob is not None else ())
        if reason is not None:
            self._retire(seq, reason, now)  # before the last event: a client that has its answer sees the metrics
        seq.sink(out)

    def _detokenize(self, seq: _Seq) -> None:
        """Incremental decoding: decode only a short window of recent tokens, and commit text once it no longer
        ends in an incomplete character (multi-token characters, merges that change leading spaces)."""
        ids = seq.output_ids
        prefix = self.tokenizer.decode(ids[seq.prefix_offset : seq.read_offset])
        window = self.tokenizer.decode(ids[seq.prefix_offset :])
        if not window.endswith("\ufffd"):
            # Commit even when the new tokens decode to nothing (special or out-of-vocabulary ids), so the
            # window stays a few tokens long instead of growing with the output.
            seq.text += window[len(prefix) :]
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(ids)

    def _finish(self, seq: _Seq, reason: str) -> None:
        """End a request early (abort, error) with a final event."""
        if seq.done:
            return
        self._retire(seq, reason, time.monotonic())
        seq.sink(RequestOutput(seq.id, "", (), True, reason, len(seq.prompt_ids), len(seq.output_ids)))

    def _retire(self, seq: _Seq, reason: str, now: float) -> None:
        seq.done = True
        if reason in ("stop", "length"):
            # The conversation so far, for its next turn: every token whose keys/values are in its blocks.
            self.pool.cache(seq.blocks, [*seq.prompt_ids, *seq.output_ids], seq.cached)
        self._leave_batch(seq)
        self.pool.release(seq.blocks)
        seq.blocks, seq.admitted = [], -1
        if self.observer is not None:
            n = len(seq.output_ids)
            tpot = None
            if n > 1 and seq.first_token_at is not None:
                tpot = (now - seq.first_token_at) / (n - 1)
            ttft = None if seq.first_token_at is None else seq.first_token_at - seq.arrival
            self.observer.on_finished(FinishedRequest(reason, len(seq.prompt_ids), n, now - seq.arrival, ttft, tpot))


def _find_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, start)) >= 0]
    return min(hits) if hits else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Characters at the end of `text` not yet safe to stream: an incomplete UTF-8 character, or a suffix that
    could be the start of a stop sequence."""
    hold = 0
    while hold < len(text) and text[len(text) - 1 - hold] == "\ufffd":
        hold += 1
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                hold = max(hold, k)
                break
    return hold
