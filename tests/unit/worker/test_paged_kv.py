"""Paged KV cache: outputs are token for token those of the unpaged slot cache it replaced; blocks are allocated as
sequences grow, freed when they end, and when the pool runs out new requests wait (and, if a running sequence
cannot grow, the youngest is preempted and recomputed) instead of crashing or overwriting another sequence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("torch")

import torch

from infleet_worker.engine import Engine, EngineConfig, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer

from .conftest import run_to_completion, text_of, tokens_of

# The slot cache this replaced kept each sequence contiguous. A pool whose blocks are `max_seq_len` long gives every
# sequence one whole block: the same layout, so its outputs are the reference for every other paging. (On the
# development machine both also equal the tokens the slot cache itself produced, commit 0ed9bf9; a recorded list
# would tie the test to one CPU's rounding, so the reference is computed here.)
CONTIGUOUS = {"block_size": 256}


def golden_batch() -> tuple[list[list[int]], list[SamplingParams]]:
    prompts = [[(13 * i + 5 * j + 1) % 256 for j in range(3 + 17 * i)] for i in range(7)]
    params = [SamplingParams(max_tokens=20 + 7 * i, ignore_eos=True) for i in range(7)]
    params[3] = SamplingParams(max_tokens=30, temperature=0.8, seed=11, ignore_eos=True)
    return prompts, params


def golden_engine(make_engine: Callable[..., Engine], **overrides: int) -> Engine:
    return make_engine(**{"num_slots": 4, "max_seq_len": 256, "max_num_batched_tokens": 40, "min_prefill_chunk": 8,
                          **overrides})


@pytest.mark.parametrize("overrides", [
    {},  # default pool: what the slot cache reserved
    {"block_size": 8, "prefix_cache_blocks": 64},  # small blocks, prefix caching on
    {"block_size": 8, "kv_blocks": 56},  # 448 tokens: at times a request waits for blocks, not for a slot
])
def test_outputs_equal_the_contiguous_layout(make_engine: Callable[..., Engine], overrides: dict[str, int]) -> None:
    prompts, params = golden_batch()
    reference = [tokens_of(e) for e in run_to_completion(golden_engine(make_engine, **CONTIGUOUS), prompts, params)]
    assert all(len(r) == p.max_tokens for r, p in zip(reference, params, strict=True))
    engine = golden_engine(make_engine, **overrides)
    assert [tokens_of(e) for e in run_to_completion(engine, prompts, params)] == reference
    assert engine.preemptions == 0
    assert engine.kv_usage == 0.0 and engine.pool.blocks_in_use == 0


def test_requests_wait_for_blocks_then_complete(make_engine: Callable[..., Engine]) -> None:
    # 8 blocks of 8 tokens; each request (10 prompt + 6 output tokens) needs 2 blocks: 4 run, 2 wait.
    engine = make_engine(num_slots=6, max_seq_len=64, block_size=8, kv_blocks=8)
    roomy = make_engine(num_slots=6, max_seq_len=64, block_size=8)
    prompts = [[(7 * i + j) % 256 for j in range(10)] for i in range(6)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    for p in prompts:
        engine.submit(p, params, lambda o: None)
    engine.step()
    assert (engine.num_running, engine.num_waiting) == (4, 2)
    assert engine.pool.blocks_in_use == 8 and engine.pool.available == 0 and engine.kv_usage == 1.0
    while not engine.is_idle():
        engine.step()
    assert engine.preemptions == 0 and engine.kv_usage == 0.0 and engine.pool.available == 8
    got = [tokens_of(e) for e in run_to_completion(engine, prompts, params)]
    assert got == [tokens_of(e) for e in run_to_completion(roomy, prompts, params)]


def test_a_growing_sequence_gets_new_blocks_and_frees_them_at_the_end(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=2, max_seq_len=64, block_size=4)
    engine.submit([1, 2, 3], SamplingParams(max_tokens=12, ignore_eos=True), lambda o: None)
    tables: list[list[int]] = []
    while not engine.is_idle():
        engine.step()
        if engine.num_running:
            seq = engine._running[0]
            # Exactly the blocks its tokens fill (the last decode wrote position cached - 1): memory tracks tokens.
            assert len(seq.blocks) == -(-seq.cached // 4)
            tables.append(list(seq.blocks))
            assert engine.pool.blocks_in_use == len(seq.blocks)
    # 3 prompt + 11 fed-back outputs = 14 positions: the table grew 1 -> 4 blocks, each a prefix of the next.
    assert len(tables[0]) == 1 and len(tables[-1]) == 4
    assert all(t == tables[-1][: len(t)] for t in tables) and len(set(tables[-1])) == 4
    assert engine.kv_usage == 0.0 and engine.pool.available == engine.pool.num_blocks


def test_when_a_running_sequence_cannot_grow_the_youngest_is_recomputed(make_engine: Callable[..., Engine]) -> None:
    from prometheus_client import generate_latest

    from infleet_worker.metrics import WorkerMetrics

    # 8 blocks of 8 = one max-length request; four that each grow to 45 tokens must take turns.
    engine = make_engine(num_slots=4, max_seq_len=64, block_size=8, kv_blocks=8)
    metrics = WorkerMetrics("tiny")
    metrics.bind_engine(engine)
    engine.observer = metrics
    roomy = make_engine(num_slots=4, max_seq_len=64, block_size=8)
    prompts = [[(3 * i + j) % 256 for j in range(5)] for i in range(4)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    got = run_to_completion(engine, prompts, params)
    want = run_to_completion(roomy, prompts, params)
    assert engine.preemptions > 0
    assert all(e[-1].finish_reason == "length" and len(tokens_of(e)) == 40 for e in got)
    assert all(text_of(e) == ByteTokenizer().decode(tokens_of(e)) for e in got)
    # The oldest request is never preempted, so its keys and values are exactly the roomy engine's.
    assert tokens_of(got[0]) == tokens_of(want[0])
    assert engine.kv_usage == 0.0 and engine.pool.available == 8
    text = generate_latest(metrics.registry).decode()
    assert f'infleet_worker_preemptions_total{{model="tiny"}} {float(engine.preemptions)}' in text


def test_prefix_blocks_are_shared_by_running_requests(make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(num_slots=3, max_seq_len=128, block_size=8, prefix_cache_blocks=8)
    system = [(5 * j + 2) % 256 for j in range(40)]  # 5 whole blocks
    first = [*system, 1, 2]
    run_to_completion(engine, [first], SamplingParams(max_tokens=2, ignore_eos=True))
    for i in range(3):
        engine.submit([*system, 10 + i, 11, 12], SamplingParams(max_tokens=20, ignore_eos=True), lambda o: None)
    engine.step()
    assert engine.num_running == 3
    tables = [s.blocks for s in engine._running]
    shared = tables[0][:5]
    assert all(t[:5] == shared for t in tables)  # the same physical blocks, not copies
    assert [engine.pool.refs(b) for b in shared] == [3] * 5
    assert len({b for t in tables for b in t[5:]}) == sum(len(t) - 5 for t in tables)  # private tails
    while not engine.is_idle():
        engine.step()
    assert [engine.pool.refs(b) for b in shared] == [0] * 5 and engine.kv_usage == 0.0


def test_pool_sizing_and_limits(tiny_model: LlamaModel) -> None:
    assert EngineConfig(num_slots=8, max_seq_len=512).num_kv_blocks == 8 * 512 // 16  # the slot cache's budget
    assert EngineConfig(num_slots=8, max_seq_len=500, prefix_cache_blocks=100).num_kv_blocks == 8 * 32 + 100
    assert EngineConfig(num_slots=8, max_seq_len=512, kv_blocks=1000, prefix_cache_blocks=100).num_kv_blocks == 1000
    runner = ModelRunner(tiny_model, 2, 64, num_blocks=3, block_size=16)
    with pytest.raises(ValueError, match="cannot hold one request"):
        Engine(runner, ByteTokenizer(), EngineConfig(num_slots=2, max_seq_len=64))
    with pytest.raises(ValueError, match="block size"):
        Engine(ModelRunner(tiny_model, 2, 64), ByteTokenizer(), EngineConfig(num_slots=2, max_seq_len=64,
                                                                            block_size=8))


class _EagerGraph:
    """Stands in for a CUDA graph on CPU: replay re-runs the captured function on the static buffers, so the
    graph path's static inputs (padding rows, fixed-width tables, buckets) are exercised without a GPU."""

    def __init__(self, fn: Callable[[], torch.Tensor]) -> None:
        self.fn = fn
        self.out = fn()

    def replay(self) -> None:
        self.out.copy_(self.fn())


def test_graph_path_static_tables_give_the_same_outputs(tiny_model: LlamaModel, make_engine: Callable[..., Engine],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    prompts, params = golden_batch()
    reference = [tokens_of(e) for e in run_to_completion(golden_engine(make_engine, **CONTIGUOUS), prompts, params)]
    cfg = EngineConfig(num_slots=4, max_seq_len=256, max_num_batched_tokens=40, min_prefill_chunk=8, block_size=8,
                       kv_blocks=40)
    runner = ModelRunner(tiny_model, 4, 256, num_blocks=40, block_size=8)
    runner.use_cuda_graphs = True
    captured: list[tuple[int, int]] = []

    def capture(bb: int, cb: int) -> tuple[object, torch.Tensor]:
        runner._static[:, :bb].zero_()
        runner._table[:bb].fill_(runner.cache.scratch_block)
        graph = _EagerGraph(lambda: runner._decode_static(bb, cb))
        runner._graphs[(bb, cb)] = graph, graph.out  # type: ignore[assignment]
        captured.append((bb, cb))
        return graph, graph.out

    monkeypatch.setattr(runner, "_capture", capture)
    engine = Engine(runner, ByteTokenizer(), cfg)
    assert [tokens_of(e) for e in run_to_completion(engine, prompts, params)] == reference
    assert {bb for bb, _ in captured} >= {4, 2, 1}  # padded batches (rows left by finished requests) were replayed
    assert not runner.cache.k[:, 40:].isnan().any()


def test_a_preempted_sequence_recomputes_from_its_own_cached_blocks(make_engine: Callable[..., Engine]) -> None:
    from infleet_worker.metrics import WorkerMetrics

    prompts = [[(3 * i + j) % 256 for j in range(5)] for i in range(4)]
    params = SamplingParams(max_tokens=40, ignore_eos=True)
    prefilled: dict[int, float | None] = {}
    for caching in (0, 1):
        engine = make_engine(num_slots=4, max_seq_len=64, block_size=8, kv_blocks=8, prefix_cache_blocks=caching)
        metrics = WorkerMetrics("tiny")
        engine.observer = metrics
        events = run_to_completion(engine, prompts, params)
        assert engine.preemptions > 0 and all(len(tokens_of(e)) == 40 for e in events)
        assert engine.kv_usage == 0.0
        prefilled[caching] = metrics.registry.get_sample_value("infleet_worker_prompt_tokens_total", {"model": "tiny"})
    # Without caching a preempted sequence prefills its prompt and output again; with it, only the tail past its
    # last full block (the blocks it had computed stayed cached when it was preempted).
    assert prefilled[1] is not None and prefilled[0] is not None and prefilled[1] < prefilled[0]


def test_a_request_waiting_for_blocks_is_looked_up_once_while_the_prefix_index_is_unchanged(
    make_engine: Callable[..., Engine],
) -> None:
    # 4 blocks of 8 tokens; the first request holds 3 (20 prompt + 4 output tokens), so the second (20 tokens, 3
    # blocks) waits. Matching hashes every chunk of a prompt: while nothing is cached or evicted it is done once.
    engine = make_engine(num_slots=2, max_seq_len=32, block_size=8, kv_blocks=4, prefix_cache_blocks=1)
    lookups: list[int] = []
    match = engine.pool.match
    engine.pool.match = lambda tokens: lookups.append(len(tokens)) or match(tokens)  # type: ignore[method-assign]
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    engine.submit([(3 * j + 1) % 256 for j in range(20)], params, lambda o: None)
    engine.submit([(5 * j + 2) % 256 for j in range(20)], params, lambda o: None)
    engine.step()
    assert (engine.num_running, engine.num_waiting) == (1, 1)
    version = engine.pool.index_version
    waited = 0
    while engine.num_waiting and waited < 50:
        engine.step()
        waited += 1
        if engine.pool.index_version == version:
            assert lookups.count(20) <= 2  # the first request's own lookup, then the waiting one's, once
    assert engine.num_waiting == 0 and waited > 1
    while not engine.is_idle():
        engine.step()
    assert engine.pool.available == 4
