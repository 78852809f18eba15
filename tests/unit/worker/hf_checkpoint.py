"""A tiny Hugging Face-layout Llama checkpoint built offline: a byte-level BPE `tokenizer.json` trained here on a
few sentences, a Llama 3-style chat template in `tokenizer_config.json`, `generation_config.json` with two EOS ids,
and seeded random weights in `model.safetensors` (transformers is not installed here, so the files are written
the way `save_pretrained` writes them), plus an independent greedy reference: the template rendered with Jinja's
sandbox directly, the text tokenized with `tokenizers` directly, and a textbook full-sequence forward per token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from infleet_worker.checkpoint import empty_model, save_checkpoint
from infleet_worker.config import ModelConfig
from infleet_worker.model import LlamaModel, init_random_weights

from .test_model import reference_logits

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Meta's Llama 3 Instruct template, as published in its tokenizer_config.json.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "You are a helpful assistant. Answer briefly and politely.",
    "What is the capital of France? Paris is the capital of France.",
    "Kubernetes schedules pods onto nodes; an operator reconciles custom resources.",
    "Hello! How can I help you today? Thanks, have a nice day.",
] * 4


@dataclass(frozen=True, kw_only=True)
class TinyCheckpoint:
    path: Path
    tokenizer: Tokenizer
    model: LlamaModel
    bos_id: int
    eos_ids: tuple[int, ...]


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", bos)])
    return tok


def build_checkpoint(path: Path, *, seed: int = 3, **config_overrides: Any) -> TinyCheckpoint:
    tok = build_tokenizer()
    bos, eot, end = (tok.token_to_id(t) for t in ("<|begin_of_text|>", "<|eot_id|>", "<|end_of_text|>"))
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rope_theta=500000.0,
                      bos_token_id=bos, eos_token_id=end)
    model = empty_model(cfg, torch.device("cpu"), torch.float32)
    # Larger weights than the default 0.02: peaked logits, so greedy choices are far from ties.
    init_random_weights(model, seed, std=0.3)
    save_checkpoint(model, path)
    raw = json.loads((path / "config.json").read_text())
    raw.update({"hidden_act": "silu", "torch_dtype": "float32", **config_overrides})
    (path / "config.json").write_text(json.dumps(raw, indent=2))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE,
        "model_max_length": 512, "tokenizer_class": "PreTrainedTokenizerFast"}))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": [end, eot]}))
    return TinyCheckpoint(path=path, tokenizer=tok, model=model, bos_id=bos, eos_ids=(end, eot))


def reference_prompt_ids(ckpt: TinyCheckpoint, messages: list[dict[str, str]]) -> list[int]:
    """What transformers' apply_chat_template(tokenize=True, add_generation_prompt=True) produces."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(LLAMA3_TEMPLATE).render(messages=messages, add_generation_prompt=True,
                                                   bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    return list(ckpt.tokenizer.encode(text, add_special_tokens=False).ids)


@torch.no_grad()
def reference_greedy(ckpt: TinyCheckpoint, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """generate(do_sample=False): argmax of a full forward over prompt + output so far, until an EOS id."""
    ids, out = list(prompt_ids), []
    for _ in range(max_new_tokens):
        token = int(reference_logits(ckpt.model, ids)[-1].argmax())
        out.append(token)
        ids.append(token)
        if token in ckpt.eos_ids:
            break
    return out
