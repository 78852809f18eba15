"""Prefix caching: outputs are exactly those of an engine without it, repeated system prompts and the earlier
turns of a chat skip their prefill by sharing KV blocks (references, not copies), and eviction takes idle leaves
only, least recently released first."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("torch")

from infleet_worker.engine import Engine, SamplingParams
from infleet_worker.kv_blocks import BlockPool

from .conftest import run_to_completion, tokens_of

SYSTEM = [(7 * i + 3) % 256 for i in range(53)]  # a shared "system prompt" of 53 tokens
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def users(n: int) -> list[list[int]]:
    return [[256, *SYSTEM, *[(11 * i + j) % 256 for j in range(5 + i)]] for i in range(n)]


def test_shared_system_prompt_outputs_equal_and_prefill_is_skipped(make_engine: Callable[..., Engine]) -> None:
    prompts = users(6)
    plain = make_engine(num_slots=2)
    cached = make_engine(num_slots=2, prefix_cache_blocks=64, block_size=8)
    want = [tokens_of(e) for e in run_to_completion(plain, prompts, GREEDY)]
    # One at a time, so every later request finds the first one's blocks.
    got = [tokens_of(run_to_completion(cached, [p], GREEDY)[0]) for p in prompts]
    assert got == want
    assert cached.prefix is not None
    # BOS + 53 shared tokens = 54: six whole blocks of 8 (48 tokens) reused by each of the five later requests.
    assert cached.prefix.hit_tokens >= 5 * 48
    assert cached.prefix.query_tokens == sum(len(p) for p in prompts)


def test_multi_turn_chat_reuses_its_history(make_engine: Callable[..., Engine]) -> None:
    turn1 = users(1)[0]
    plain = make_engine(num_slots=1)
    cached = make_engine(num_slots=1, prefix_cache_blocks=64, block_size=8)
    out1 = tokens_of(run_to_completion(cached, [turn1], GREEDY)[0])
    assert out1 == tokens_of(run_to_completion(plain, [turn1], GREEDY)[0])
    assert cached.prefix is not None
    hits_before = cached.prefix.hit_tokens
    turn2 = [*turn1, *out1, *b"\nnext question"]
    got = tokens_of(run_to_completion(cached, [turn2], GREEDY)[0])
    assert got == tokens_of(run_to_completion(plain, [turn2], GREEDY)[0])
    # Prompt + all outputs but the last (whose K/V was never computed) were stored: 59 + 11 = 70 -> 8 blocks,
    # more than the prompt alone (59 -> 7 blocks) would give.
    assert len(turn1) == 59
    assert cached.prefix.hit_tokens - hits_before == 64


def test_tiny_cache_evicts_and_stays_exact(make_engine: Callable[..., Engine]) -> None:
    prompts = users(8) + users(3)
    plain = make_engine(num_slots=3, max_seq_len=128)
    # 24 blocks of 8: three running requests (6 shared + ~3 own blocks each) leave room for few idle cached blocks.
    cached = make_engine(num_slots=3, max_seq_len=128, prefix_cache_blocks=1, block_size=8, kv_blocks=24)
    want = [tokens_of(e) for e in run_to_completion(plain, prompts, GREEDY)]
    assert [tokens_of(e) for e in run_to_completion(cached, prompts, GREEDY)] == want
    assert cached.prefix is not None and cached.prefix.evictions > 0 and cached.prefix.hit_tokens > 0
    assert cached.pool.blocks_in_use == 0


def take(pool: BlockPool) -> int:
    block = pool.allocate()
    assert block is not None
    return block


def test_shared_blocks_are_referenced_not_copied_and_idle_leaves_are_evicted_lru() -> None:
    pool = BlockPool(num_blocks=6, block_size=4, prefix_caching=True)
    tokens = list(range(100, 113))  # 13 tokens: 3 whole blocks + 1
    a = [take(pool) for _ in range(4)]
    assert a == [0, 1, 2, 3] and pool.blocks_in_use == 4
    assert pool.cache(a, tokens, computed=13) == 3  # only full blocks are indexed
    # A lookup leaves the last token to compute: 12 tokens exactly give 2 blocks, 13 give 3.
    assert pool.match(tokens[:12]) == [0, 1]
    assert pool.match(tokens) == [0, 1, 2]
    assert pool.match([1, *tokens[1:]]) == []  # a different first token shares nothing
    # A second sequence shares the first's blocks: same block ids, one more reference, no new memory.
    hits = pool.match(tokens)
    assert pool.can_admit(hits, 1)
    pool.acquire(hits)
    b = [*hits, take(pool)]
    assert [pool.refs(x) for x in b] == [2, 2, 2, 1] and pool.blocks_in_use == 5
    pool.release(a)
    assert [pool.refs(x) for x in a] == [1, 1, 1, 0] and pool.blocks_in_use == 4  # block 3 (uncached) is free
    pool.release(b)
    # Everything released: cached blocks stay (idle, reclaimable), usage is back to 0.
    assert pool.blocks_in_use == 0 and pool.available == 6 and pool.cached_blocks == 3
    # Another chain takes the free blocks first, then evicts idle leaves, least recently released first.
    assert sorted(take(pool) for _ in range(3)) == [3, 4, 5] and pool.cached_blocks == 3
    d = pool.allocate()
    assert d == 2 and pool.match(tokens) == [0, 1]  # the chain's tail went, its head and middle stay
    assert pool.allocate() == 1 and pool.allocate() == 0 and pool.cached_blocks == 0
    assert pool.allocate() is None and pool.available == 0  # all referenced: nothing to hand out


def test_a_referenced_prefix_is_never_evicted() -> None:
    pool = BlockPool(num_blocks=3, block_size=2, prefix_caching=True)
    pool.cache([take(pool), take(pool)], [1, 2, 3, 4], computed=4)
    assert pool.allocate() == 2
    assert pool.allocate() is None  # blocks 0 and 1 are cached but referenced: not reclaimable
    assert pool.blocks_in_use == 3


def test_prefix_metrics_count_lookups_and_hits(make_engine: Callable[..., Engine]) -> None:
    from prometheus_client import generate_latest

    from infleet_worker.metrics import WorkerMetrics

    engine = make_engine(num_slots=1, prefix_cache_blocks=16, block_size=8)
    metrics = WorkerMetrics("tiny")
    metrics.bind_engine(engine)
    engine.observer = metrics
    a, b = users(2)
    run_to_completion(engine, [a], GREEDY)
    run_to_completion(engine, [b], GREEDY)
    text = generate_latest(metrics.registry).decode()
    assert f'infleet_worker_prefix_cache_query_tokens_total{{model="tiny"}} {float(len(a) + len(b))}' in text
    assert 'infleet_worker_prefix_cache_hit_tokens_total{model="tiny"} 48.0' in text
    # Cached blocks live in the KV pool itself: 1 slot x 256 tokens / 8 + the 16 extra blocks asked for.
    assert 'infleet_worker_prefix_cache_capacity_blocks{model="tiny"} 48.0' in text
    assert 'infleet_worker_kv_cache_capacity_blocks{model="tiny"} 48.0' in text
    assert 'infleet_worker_kv_cache_blocks{model="tiny"} 0.0' in text
    # Prompt tokens processed exclude the 48 found in the cache.
    assert f'infleet_worker_prompt_tokens_total{{model="tiny"}} {float(len(a) + len(b) - 48)}' in text
