"""From a model name (built-in shape or checkpoint directory) and a device to a ready engine, with timings of
each start-up phase (the operator's warm-pool sizing depends on how long a cold start takes)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from infleet_worker.chat_template import ChatFormatter, TranscriptTemplate, load_chat_template
from infleet_worker.checkpoint import load_checkpoint, random_model
from infleet_worker.config import builtin_config
from infleet_worker.devices import DeviceSpec
from infleet_worker.engine import Engine, EngineConfig, EngineObserver, SamplingParams
from infleet_worker.model import LlamaModel
from infleet_worker.quant import DEFAULT_INT4_GROUP_SIZE, QUANT_CHOICES, quantize_int4, quantize_int8
from infleet_worker.runner import ModelRunner
from infleet_worker.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    name: str
    model: LlamaModel
    tokenizer: Tokenizer
    chat_template: ChatFormatter = field(default_factory=TranscriptTemplate)
    timings: dict[str, float] = field(default_factory=dict)


def load_model(model: str, spec: DeviceSpec, seed: int = 0, quantize: str = "none",
               group_size: int = DEFAULT_INT4_GROUP_SIZE) -> LoadedModel:
    """`model` is a directory holding `config.json` + safetensors, or the name of a built-in configuration;
    `group_size` is int4's (ignored otherwise)."""
    if quantize not in QUANT_CHOICES:  # before the (possibly long) load
        raise ValueError(f"unknown quantisation {quantize!r}; choose one of {', '.join(QUANT_CHOICES)}")
    t0 = time.monotonic()
    path = Path(model)
    if path.is_dir():
        m = load_checkpoint(path, spec.device, spec.dtype)
        tok = load_tokenizer(path, m.cfg.bos_token_id, m.cfg.eos_token_ids)
        chat = load_chat_template(path)
        name = path.name
    else:
        m = random_model(builtin_config(model), spec.device, spec.dtype, seed)
        tok, chat = ByteTokenizer(), TranscriptTemplate()
        name = model
    if quantize == "int8":
        quantize_int8(m)
    elif quantize == "int4":
        quantize_int4(m, group_size)
    if spec.family == "cuda":
        torch.cuda.synchronize()
    log.info("tokenizer: %s; BOS %s, EOS %s", tok.description, tok.bos_id, list(tok.eos_ids))
    log.info("chat template: %s", chat.description)
    return LoadedModel(name, m, tok, chat, {"load": time.monotonic() - t0})


def build_engine(loaded: LoadedModel, spec: DeviceSpec, config: EngineConfig, *, cuda_graphs: bool = True,
                 observer: EngineObserver | None = None) -> Engine:
    """Allocate the KV cache, capture decode graphs and run one request through, so the first real request
    pays no compilation or allocation cost."""
    t0 = time.monotonic()
    if config.max_seq_len > loaded.model.cfg.max_position_embeddings:
        raise ValueError(f"max_seq_len {config.max_seq_len} exceeds the model's max_position_embeddings "
                         f"{loaded.model.cfg.max_position_embeddings}")
    runner = ModelRunner(loaded.model, config.num_slots, config.max_seq_len, num_blocks=config.num_kv_blocks,
                         block_size=config.block_size, use_cuda_graphs=cuda_graphs and spec.supports_cuda_graphs)
    runner.capture_all()
    engine = Engine(runner, loaded.tokenizer, config, observer=None)
    engine.submit([1, 2, 3], SamplingParams(max_tokens=2, ignore_eos=True), lambda _out: None)
    while not engine.is_idle():
        engine.step()
    engine.observer = observer  # warm-up traffic stays out of the metrics
    loaded.timings["warmup"] = time.monotonic() - t0
    return engine
