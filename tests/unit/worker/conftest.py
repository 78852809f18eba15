"""Fixtures for the worker tests: the built-in tiny model on CPU in float32 (milliseconds per step)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("torch")

import torch

from infleet_worker.checkpoint import random_model
from infleet_worker.config import builtin_config
from infleet_worker.engine import Engine, EngineConfig, RequestOutput, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer


@pytest.fixture(scope="session")
def tiny_model() -> LlamaModel:
    return random_model(builtin_config("tiny"), torch.device("cpu"), torch.float32, seed=0)


@pytest.fixture
def make_engine(tiny_model: LlamaModel) -> Callable[..., Engine]:
    def make(**overrides: int) -> Engine:
        cfg = EngineConfig(**{"num_slots": 4, "max_seq_len": 256, **overrides})
        runner = ModelRunner(tiny_model, cfg.num_slots, cfg.max_seq_len, num_blocks=cfg.num_kv_blocks,
                             block_size=cfg.block_size)
        return Engine(runner, ByteTokenizer(), cfg)

    return make


def run_to_completion(engine: Engine, prompts: list[list[int]],
                      params: SamplingParams | list[SamplingParams]) -> list[list[RequestOutput]]:
    """Submit all prompts, step the engine synchronously until idle, return each request's events in order."""
    events: dict[str, list[RequestOutput]] = {}
    plist = params if isinstance(params, list) else [params] * len(prompts)
    ids = [engine.submit(p, sp, lambda o: events.setdefault(o.request_id, []).append(o))
           for p, sp in zip(prompts, plist, strict=True)]
    for _ in range(100_000):
        if engine.is_idle():
            break
        engine.step()
    return [events[i] for i in ids]


def tokens_of(events: list[RequestOutput]) -> list[int]:
    return [t for e in events for t in e.token_ids]


def text_of(events: list[RequestOutput]) -> str:
    return "".join(e.text_delta for e in events)
