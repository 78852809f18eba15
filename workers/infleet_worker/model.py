"""A Llama-family decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) written for serving.

Two forward paths share the weights: `prefill` runs one sequence's prompt chunk and writes its keys and values
into the sequence's KV-cache blocks; `decode` runs one new token for each of B sequences at once. Both address the
paged cache through block tables (`cache_rows`). The decode path is shaped for CUDA-graph capture: no host
synchronisation, no data-dependent shapes (the attended length is a bucket chosen by the caller, the tables have a
fixed width, positions past a sequence's length are masked). Q/K/V and gate/up projections are
fused into single matrices so a batch-1 step is a handful of large GEMVs, which is what the memory roofline wants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from infleet_worker.config import ModelConfig


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with Llama 3 / linear context scaling when configured."""
    d = cfg.dim_per_head
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv.float()
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).float()
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        # Long wavelengths (low frequencies) are stretched by `factor`, short ones kept, the band between blended.
        scaled = torch.where(wavelen > old_ctx / low, inv / factor, inv)
        blend = (old_ctx / wavelen - low) / (high - low)
        mixed = (1 - blend) * scaled / factor + blend * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return torch.where(medium, mixed, scaled).float()
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            # One fused kernel (float32 accumulation) instead of six: decode steps are launch-bound otherwise.
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        # Normalise in float32 and cast back before the scale, as the reference Llama does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.dim_per_head
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.qkv_proj = nn.Linear(cfg.hidden_size, (self.n_heads + 2 * self.n_kv) * d, bias=False)
        self.o_proj = nn.Linear(self.n_heads * d, cfg.hidden_size, bias=False)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        out: torch.Tensor = self.down_proj(F.silu(gate) * up)
        return out

    def split_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qkv = self.qkv_proj(self.input_layernorm(x))
        d = self.head_dim
        q, k, v = qkv.split([self.n_heads * d, self.n_kv * d, self.n_kv * d], dim=-1)
        return q, k, v


class LlamaModel(nn.Module):
    inv_freq: torch.Tensor

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.layers if isinstance(layer, DecoderLayer)]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        h = self.norm(h)
        head = self.lm_head
        if head is None:
            return F.linear(h, self.embed_tokens.weight)
        if isinstance(head, nn.Linear):
            return F.linear(h, head.weight)
        out: torch.Tensor = head(h)  # a quantised head (infleet_worker.quant)
        return out

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def prefill(self, tokens: torch.Tensor, start: int, blocks: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor) -> torch.Tensor:
        """Run prompt tokens `tokens` [n] at positions start..start+n-1 of the sequence whose block table is
        `blocks` [>= ceil((start+n)/block_size)]; return the last position's logits.

        Caches are [layers, blocks, kv_heads, block_size, head_dim]; keys and values of this chunk are written into
        the sequence's blocks and the chunk attends to everything the sequence already holds (chunked prefill),
        gathered through the table into a contiguous [kv_heads, start+n, head_dim] view.
        """
        n = tokens.shape[0]
        d = k_cache.shape[4]
        positions = torch.arange(start, start + n, device=tokens.device)
        cos, sin = self.rope(positions, k_cache.dtype)
        x = self.embed_tokens(tokens)[None]  # [1, n, h]
        end = start + n
        mask = None
        if start:
            key_pos = torch.arange(end, device=tokens.device)
            mask = key_pos[None, :] <= positions[:, None]
        rows = cache_rows(blocks[None], torch.arange(end, device=tokens.device)[None], k_cache)[0]  # [kv, end]
        new_rows = rows[:, start:]
        for i, layer in enumerate(self.decoder_layers()):
            q, k, v = layer.split_qkv(x)
            q = q.view(1, n, layer.n_heads, layer.head_dim).transpose(1, 2)
            k = k.view(1, n, layer.n_kv, layer.head_dim).transpose(1, 2)
            v = v.view(1, n, layer.n_kv, layer.head_dim).transpose(1, 2)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
            k_flat, v_flat = k_cache[i].view(-1, d), v_cache[i].view(-1, d)
            k_flat.index_put_((new_rows,), k[0])
            v_flat.index_put_((new_rows,), v[0])
            if start:
                keys = k_flat[rows].unsqueeze(0)  # [1, kv, end, d]
                values = v_flat[rows].unsqueeze(0)
            else:  # nothing cached before this chunk: its own keys are the whole context
                keys, values = k, v
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None,
                                                  enable_gqa=True)
            x = x + layer.o_proj(attn.transpose(1, 2).reshape(1, n, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.logits(x[0, -1])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, ctx_len: int, k_cache: torch.Tensor,
               v_cache: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
        """One token for each of B sequences (`tokens`, `positions` are [B], `tables` [B, >= ceil(ctx_len /
        block_size)] their block tables); attends to the first `ctx_len` positions of each, masking those past the
        sequence's own position. Returns logits [B, vocab].

        K/V are read through the tables with one gather per layer into [B * kv_heads, ctx_len, head_dim]; all
        indices are device tensors of static shape, so the step can be captured in a CUDA graph.

        At batch 1 a step is launch-bound unless kernels are few, so every per-layer operation is fused where
        plain torch allows: RoPE over Q, K (and an identity rotation over V) is one roll plus one addcmul, the
        attention scale and mask ride in baddbmm, and residual adds ride in addmm.
        """
        b = tokens.shape[0]
        n_kv, d = k_cache.shape[2], k_cache.shape[4]
        n_heads = self.cfg.num_attention_heads
        dev = tokens.device
        cos, sin = self.rope(positions, k_cache.dtype)  # [b, d], each half the same
        half = d // 2
        sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)  # rotate_half(x) * sin == roll(x) * signed sin
        ones, zeros = torch.ones(b, n_kv, d, device=dev, dtype=cos.dtype), torch.zeros(b, n_kv, d, device=dev,
                                                                                       dtype=cos.dtype)
        cos_all = torch.cat((cos[:, None, :].expand(b, n_heads + n_kv, d), ones), dim=1)
        sin_all = torch.cat((sin[:, None, :].expand(b, n_heads + n_kv, d), zeros), dim=1)
        # Cache rows (a layer viewed as [blocks*kv*block_size, d]) of each sequence's new token and of its whole
        # context: index_put_/index_select with device-side indices need no host sync.
        rows = cache_rows(tables, positions[:, None], k_cache)[:, :, 0]  # [b, kv]
        ctx_rows = cache_rows(tables, torch.arange(ctx_len, device=dev)[None].expand(b, ctx_len), k_cache)
        ctx_rows = ctx_rows.reshape(-1)  # [b * kv * L]
        visible = torch.arange(ctx_len, device=dev)[None, :] <= positions[:, None]  # [b, L]
        bias = torch.zeros(b, 1, ctx_len, device=dev, dtype=k_cache.dtype)
        bias = bias.masked_fill(~visible[:, None, :], float("-inf"))
        bias = bias.repeat_interleave(n_kv, dim=0)  # [b*kv, 1, L], broadcast over the query heads of a group
        scale = 1.0 / math.sqrt(d)
        x = self.embed_tokens(tokens)  # [b, h]
        for i, layer in enumerate(self.decoder_layers()):
            qkv = layer.qkv_proj(layer.input_layernorm(x)).view(b, -1, d)
            qkv = torch.addcmul(qkv * cos_all, torch.roll(qkv, half, dims=-1), sin_all)
            q, k, v = qkv[:, :n_heads], qkv[:, n_heads : n_heads + n_kv], qkv[:, n_heads + n_kv :]
            k_flat, v_flat = k_cache[i].view(-1, d), v_cache[i].view(-1, d)
            k_flat.index_put_((rows,), k)
            v_flat.index_put_((rows,), v)
            keys = k_flat.index_select(0, ctx_rows).view(b * n_kv, ctx_len, d)
            values = v_flat.index_select(0, ctx_rows).view(b * n_kv, ctx_len, d)
            # Grouped-query attention without repeating K/V: the query heads sharing a KV head form one matrix.
            qg = q.reshape(b * n_kv, n_heads // n_kv, d)
            probs = torch.softmax(torch.baddbmm(bias, qg, keys.transpose(1, 2), alpha=scale), dim=-1)
            attn = torch.bmm(probs, values).view(b, n_heads * d)
            x = add_linear(x, attn, layer.o_proj)
            gate, up = layer.gate_up_proj(layer.post_attention_layernorm(x)).chunk(2, dim=-1)
            x = add_linear(x, F.silu(gate) * up, layer.down_proj)
        return self.logits(x)


def cache_rows(tables: torch.Tensor, positions: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """Row of (sequence s, kv head j, position p) in a cache layer viewed as [blocks * kv_heads * block_size, d]:
    ((tables[s, p // block_size] * kv_heads + j) * block_size + p % block_size). `tables` [B, W], `positions`
    [B, P]; returns [B, kv_heads, P]."""
    n_kv, bs = cache.shape[2], cache.shape[3]
    blocks = tables.gather(1, torch.div(positions, bs, rounding_mode="floor"))  # [B, P]
    heads = torch.arange(n_kv, device=tables.device)
    return (blocks[:, None, :] * n_kv + heads[None, :, None]) * bs + (positions % bs)[:, None, :]


def add_linear(x: torch.Tensor, inp: torch.Tensor, linear: nn.Module) -> torch.Tensor:
    """x + linear(inp): one addmm for a plain layer (the residual add rides in the GEMM); a quantised layer
    (infleet_worker.quant) computes its own product."""
    if isinstance(linear, nn.Linear):
        return torch.addmm(x, inp, linear.weight.t())
    out: torch.Tensor = x + linear(inp)
    return out


@torch.no_grad()
def init_random_weights(model: LlamaModel, seed: int, std: float = 0.02) -> None:
    """Seeded random weights (normal matrices, unit norms): the same seed gives the same model on any device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("layernorm.weight") or name == "norm.weight":
            p.fill_(1.0)
            continue
        if p.device.type == "cpu":
            p.normal_(0.0, std, generator=gen)
        else:
            # Draw on the device with a seed derived from the CPU generator: generating 8B numbers on a host
            # core would take minutes.
            dev_gen = torch.Generator(device=p.device).manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            p.normal_(0.0, std, generator=dev_gen)
