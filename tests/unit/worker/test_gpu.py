"""CUDA paths (run where a GPU is present): CUDA-graph batched decoding equals eager one-at-a-time decoding."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_graph_batched_decode_equals_eager_single() -> None:
    from infleet_worker.checkpoint import random_model
    from infleet_worker.config import builtin_config
    from infleet_worker.engine import Engine, EngineConfig, SamplingParams
    from infleet_worker.runner import ModelRunner
    from infleet_worker.tokenizer import ByteTokenizer

    from .conftest import run_to_completion, tokens_of

    model = random_model(builtin_config("tiny"), torch.device("cuda"), torch.float32, seed=3)
    prompts = [[(7 * i + j) % 256 for j in range(5 + 9 * i)] for i in range(6)]
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    eager = Engine(ModelRunner(model, 1, 256), ByteTokenizer(), EngineConfig(num_slots=1, max_seq_len=256))
    single = [tokens_of(run_to_completion(eager, [p], params)[0]) for p in prompts]
    runner = ModelRunner(model, 8, 256, use_cuda_graphs=True)
    assert runner.capture_all() == len(runner.batch_buckets) * len(runner.ctx_buckets)
    graphed = Engine(runner, ByteTokenizer(), EngineConfig(num_slots=8, max_seq_len=256))
    assert [tokens_of(e) for e in run_to_completion(graphed, prompts, params)] == single


def test_graph_decode_through_small_scattered_blocks_equals_eager() -> None:
    """Paging under graphs: blocks of 4 in a pool too small for every request at once (requests wait, and blocks
    are reused by later ones), so captured graphs read tables that change under them at every step."""
    from infleet_worker.checkpoint import random_model
    from infleet_worker.config import builtin_config
    from infleet_worker.engine import Engine, EngineConfig, SamplingParams
    from infleet_worker.runner import ModelRunner
    from infleet_worker.tokenizer import ByteTokenizer

    from .conftest import run_to_completion, tokens_of

    model = random_model(builtin_config("tiny"), torch.device("cuda"), torch.float32, seed=3)
    prompts = [[(7 * i + j) % 256 for j in range(5 + 9 * i)] for i in range(10)]
    params = SamplingParams(max_tokens=30, ignore_eos=True)
    eager = Engine(ModelRunner(model, 1, 256, block_size=4), ByteTokenizer(),
                   EngineConfig(num_slots=1, max_seq_len=256, block_size=4))
    single = [tokens_of(run_to_completion(eager, [p], params)[0]) for p in prompts]
    runner = ModelRunner(model, 8, 256, num_blocks=160, block_size=4, use_cuda_graphs=True)
    runner.capture_all()
    graphed = Engine(runner, ByteTokenizer(), EngineConfig(num_slots=8, max_seq_len=256, block_size=4,
                                                           kv_blocks=160))
    assert [tokens_of(e) for e in run_to_completion(graphed, prompts, params)] == single
    assert graphed.kv_usage == 0.0 and graphed.preemptions == 0  # (same block demand as on CPU: 0 preemptions)
