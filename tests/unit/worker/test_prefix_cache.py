"""Prefix caching: outputs are exactly those of an engine without it, repeated system prompts and the earlier
turns of a chat skip their prefill, and eviction keeps chains whole within a fixed number of blocks."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("torch")

import torch

from infleet_worker.engine import Engine, SamplingParams
from infleet_worker.prefix_cache import ROOT, PrefixCache
from infleet_worker.runner import KVCache

from .conftest import run_to_completion, tokens_of

SYSTEM = [(7 * i + 3) % 256 for i in range(53)]  # a shared "system prompt" of 53 tokens
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def users(n: int) -> list[list[int]]:
    return [[256, *SYSTEM, *[(11 * i + j) % 256 for j in range(5 + i)]] for i in range(n)]


def test_shared_system_prompt_outputs_equal_and_prefill_is_skipped(make_engine: Callable[..., Engine]) -> None:
    prompts = users(6)
    plain = make_engine(num_slots=2)
    cached = make_engine(num_slots=2, prefix_cache_blocks=64, prefix_block_size=8)
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
    cached = make_engine(num_slots=1, prefix_cache_blocks=64, prefix_block_size=8)
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
    plain = make_engine(num_slots=3)
    cached = make_engine(num_slots=3, prefix_cache_blocks=5, prefix_block_size=8)
    want = [tokens_of(e) for e in run_to_completion(plain, prompts, GREEDY)]
    assert [tokens_of(e) for e in run_to_completion(cached, prompts, GREEDY)] == want
    assert cached.prefix is not None and cached.prefix.blocks_in_use <= 5


def test_store_load_round_trip_and_leaf_eviction(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=2, max_seq_len=64)
    cache: KVCache = engine.runner.cache
    torch.manual_seed(0)
    cache.k.normal_()
    cache.v.normal_()
    prefix = PrefixCache(cache, num_blocks=3, block_size=4)
    tokens = list(range(100, 113))  # 13 tokens: 3 whole blocks
    assert prefix.store(tokens, slot=0, cached=13) == 3
    # A lookup leaves the last token to prefill: 12 tokens exactly would give 2 blocks, 13 gives 3.
    assert prefix.load(tokens[:12], slot=1) == 8
    assert prefix.load(tokens, slot=1) == 12
    assert torch.equal(cache.k[:, 1, :, :12], cache.k[:, 0, :, :12])
    assert torch.equal(cache.v[:, 1, :, :12], cache.v[:, 0, :, :12])
    assert prefix.load([1, *tokens[1:]], slot=1) == 0  # a different first token shares nothing
    # Full: a new chain can only take the leaf (the third block); the chain's head and middle stay.
    assert prefix.store([5, 6, 7, 8], slot=0, cached=4) == 1
    parents = {b.parent for b in prefix._blocks.values()}
    assert all(p == ROOT or p in prefix._blocks for p in parents)
    assert prefix.load(tokens, slot=1) == 8
    assert prefix.load([5, 6, 7, 8, 9], slot=1) == 4


def test_prefix_metrics_count_lookups_and_hits(make_engine: Callable[..., Engine]) -> None:
    from prometheus_client import generate_latest

    from infleet_worker.metrics import WorkerMetrics

    engine = make_engine(num_slots=1, prefix_cache_blocks=16, prefix_block_size=8)
    metrics = WorkerMetrics("tiny")
    metrics.bind_engine(engine)
    engine.observer = metrics
    a, b = users(2)
    run_to_completion(engine, [a], GREEDY)
    run_to_completion(engine, [b], GREEDY)
    text = generate_latest(metrics.registry).decode()
    assert f'infleet_worker_prefix_cache_query_tokens_total{{model="tiny"}} {float(len(a) + len(b))}' in text
    assert 'infleet_worker_prefix_cache_hit_tokens_total{model="tiny"} 48.0' in text
    assert 'infleet_worker_prefix_cache_capacity_blocks{model="tiny"} 16.0' in text
    # Prompt tokens processed exclude the 48 found in the cache.
    assert f'infleet_worker_prompt_tokens_total{{model="tiny"}} {float(len(a) + len(b) - 48)}' in text
