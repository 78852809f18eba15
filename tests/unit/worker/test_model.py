"""The model's cached prefill/decode paths against a plain full-sequence forward, and checkpoint round trips."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("torch")

import torch

from infleet_worker.checkpoint import load_checkpoint, random_model, save_checkpoint
from infleet_worker.config import ModelConfig, builtin_config
from infleet_worker.model import DecoderLayer, LlamaModel, rope_inv_freq, rotate_half
from infleet_worker.runner import ModelRunner


@pytest.fixture(autouse=True)
def _no_grad() -> Iterator[None]:
    with torch.no_grad():
        yield


def reference_logits(m: LlamaModel, ids: list[int]) -> torch.Tensor:
    """Textbook causal forward over the whole sequence: no cache, K/V heads repeated, explicit mask."""
    d = m.cfg.dim_per_head
    n = len(ids)
    x = m.embed_tokens(torch.tensor(ids))[None]
    cos, sin = m.rope(torch.arange(n), x.dtype)
    causal = torch.triu(torch.full((n, n), float("-inf")), diagonal=1)
    for layer in m.layers:
        assert isinstance(layer, DecoderLayer)
        q, k, v = (t.view(1, n, -1, d).transpose(1, 2) for t in layer.split_qkv(x))
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + causal, dim=-1) @ v
        x = x + layer.o_proj(attn.transpose(1, 2).reshape(1, n, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return m.logits(x[0])


def test_prefill_chunks_and_batched_decode_match_full_forward(tiny_model: LlamaModel) -> None:
    ids_a = [(5 * i + 3) % 256 for i in range(30)]
    ids_b = [(11 * i + 1) % 256 for i in range(9)]
    ref_a, ref_b = reference_logits(tiny_model, ids_a), reference_logits(tiny_model, ids_b)
    # Small blocks scattered over the pool, interleaved between the two sequences, so attention must really read
    # through the block tables.
    runner = ModelRunner(tiny_model, num_slots=3, max_seq_len=64, num_blocks=20, block_size=4)
    table_a, table_b = [17, 3, 11, 0, 8, 14, 5], [2, 16]
    # Sequence a: a prompt prefilled in three chunks; sequence b: in one piece.
    runner.prefill(ids_a[:10], 0, table_a)
    runner.prefill(ids_a[10:17], 10, table_a)
    last = runner.prefill(ids_a[17:25], 17, table_a)
    torch.testing.assert_close(last, ref_a[24], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(runner.prefill(ids_b[:5], 0, table_b), ref_b[4], rtol=1e-4, atol=1e-4)
    # One decode step for both at different positions, then another (b's second block is new at position 8).
    out = runner.decode([ids_a[25], ids_b[5]], [25, 5], [table_a, table_b])
    torch.testing.assert_close(out[0], ref_a[25], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], ref_b[5], rtol=1e-4, atol=1e-4)
    out = runner.decode([ids_a[26], ids_b[6]], [26, 6], [table_a, table_b])
    torch.testing.assert_close(out[0], ref_a[26], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[1], ref_b[6], rtol=1e-4, atol=1e-4)
    # Blocks no table names (and the scratch block) were never written.
    untouched = sorted(set(range(20)) - set(table_a) - set(table_b))
    assert not runner.cache.k[:, untouched].any() and not runner.cache.v[:, untouched].any()
    with pytest.raises(ValueError, match="cannot hold"):
        runner.prefill(ids_b[5:9], 5, table_b[:1])


def test_checkpoint_round_trip_gives_identical_logits(tiny_model: LlamaModel, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt")
    raw = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert raw["model_type"] == "llama" and raw["num_key_value_heads"] == 2
    reloaded = load_checkpoint(tmp_path / "ckpt", torch.device("cpu"), torch.float32)
    ids = list(range(40, 60))
    torch.testing.assert_close(reference_logits(reloaded, ids), reference_logits(tiny_model, ids), rtol=0, atol=0)
    other = random_model(builtin_config("tiny"), torch.device("cpu"), torch.float32, seed=1)
    assert not torch.equal(reference_logits(other, ids), reference_logits(tiny_model, ids))


def test_checkpoint_errors_name_the_problem(tiny_model: LlamaModel, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        load_checkpoint(tmp_path, torch.device("cpu"), torch.float32)
    save_checkpoint(tiny_model, tmp_path / "c")
    tensors = load_file(str(tmp_path / "c" / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_checkpoint(tmp_path / "c", torch.device("cpu"), torch.float32)
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint(tmp_path / "c", torch.device("cpu"), torch.float32)


def test_config_reads_transformers_v5_rope_parameters() -> None:
    base = builtin_config("tiny").to_hf_dict()
    base.pop("rope_theta")
    base["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                               "original_max_position_embeddings": 64}
    cfg = ModelConfig.from_hf_dict(base)
    assert cfg.rope_theta == 500000.0
    assert cfg.rope_scaling is not None and cfg.rope_scaling["rope_type"] == "llama3"
    plain = rope_inv_freq(ModelConfig.from_hf_dict({**base, "rope_parameters": {"rope_theta": 500000.0}}))
    scaled = rope_inv_freq(cfg)
    # High frequencies (short wavelengths) are untouched, the lowest are divided by the factor.
    assert scaled[0] == plain[0]
    torch.testing.assert_close(scaled[-1], plain[-1] / 8.0)


def test_config_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                    num_attention_heads=3, num_key_value_heads=2)
    with pytest.raises(ValueError, match="unknown built-in model"):
        builtin_config("gpt-17")
    with pytest.raises(ValueError, match=r"lacks required fields: hidden_size"):
        ModelConfig.from_hf_dict({"vocab_size": 1, "intermediate_size": 1, "num_hidden_layers": 1,
                                  "num_attention_heads": 1})


def test_builtin_8b_shape_matches_llama_3_8b() -> None:
    cfg = builtin_config("llama-8b")
    assert round(cfg.num_parameters() / 1e9, 2) == 8.03
    assert cfg.kv_bytes_per_token(2) == 2 * 32 * 8 * 128 * 2
