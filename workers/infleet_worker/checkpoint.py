"""Building a model on a device: seeded random weights for built-in shapes, or a Hugging Face-style checkpoint
directory (`config.json` plus `*.safetensors`, sharded or not).

The serving model fuses Q/K/V and gate/up projections; this module is the one place that maps between the
fused layout and Hugging Face's separate tensors, in both directions, so a checkpoint saved here reloads
elsewhere and vice versa.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from infleet_worker.config import ModelConfig, check_supported
from infleet_worker.model import LlamaModel, init_random_weights, rope_inv_freq

HF_PREFIX = "model."


def empty_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> LlamaModel:
    """Allocate the model directly on `device` in `dtype` (no float32 host copy of an 8B model)."""
    with torch.device("meta"):
        model = LlamaModel(cfg)
    model = model.to(dtype).to_empty(device=device)
    model.inv_freq = rope_inv_freq(cfg).to(device)  # a non-persistent float32 buffer: recompute, never cast
    return model.eval().requires_grad_(False)


def random_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0) -> LlamaModel:
    model = empty_model(cfg, device, dtype)
    init_random_weights(model, seed)
    return model


def to_hf_state_dict(model: LlamaModel) -> dict[str, torch.Tensor]:
    cfg = model.cfg
    d = cfg.dim_per_head
    q_dim, kv_dim = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    out: dict[str, torch.Tensor] = {f"{HF_PREFIX}embed_tokens.weight": model.embed_tokens.weight}
    for i, layer in enumerate(model.decoder_layers()):
        p = f"{HF_PREFIX}layers.{i}."
        w = layer.qkv_proj.weight
        q, k, v = w[:q_dim], w[q_dim : q_dim + kv_dim], w[q_dim + kv_dim :]
        gate, up = layer.gate_up_proj.weight.chunk(2, dim=0)
        out |= {
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": layer.o_proj.weight,
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": layer.down_proj.weight,
            p + "input_layernorm.weight": layer.input_layernorm.weight,
            p + "post_attention_layernorm.weight": layer.post_attention_layernorm.weight,
        }
    out[f"{HF_PREFIX}norm.weight"] = model.norm.weight
    if model.lm_head is not None:
        out["lm_head.weight"] = model.lm_head.weight
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


@torch.no_grad()
def load_hf_state_dict(model: LlamaModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy Hugging Face-named tensors into the fused model; every parameter must be covered exactly once."""
    def take(name: str) -> torch.Tensor:
        try:
            return tensors.pop(name)
        except KeyError:
            raise ValueError(f"checkpoint lacks tensor {name!r}") from None

    def put(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
        if tuple(dst.shape) != tuple(src.shape):
            raise ValueError(f"tensor {name!r} has shape {tuple(src.shape)}, the config implies {tuple(dst.shape)}")
        dst.copy_(src.to(device=dst.device, dtype=dst.dtype))

    put(model.embed_tokens.weight, take(f"{HF_PREFIX}embed_tokens.weight"), "embed_tokens")
    for i, layer in enumerate(model.decoder_layers()):
        p = f"{HF_PREFIX}layers.{i}."
        qkv = torch.cat([take(p + f"self_attn.{n}_proj.weight") for n in "qkv"], dim=0)
        put(layer.qkv_proj.weight, qkv, p + "qkv")
        put(layer.o_proj.weight, take(p + "self_attn.o_proj.weight"), p + "o_proj")
        gate_up = torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")], dim=0)
        put(layer.gate_up_proj.weight, gate_up, p + "gate_up")
        put(layer.down_proj.weight, take(p + "mlp.down_proj.weight"), p + "down_proj")
        put(layer.input_layernorm.weight, take(p + "input_layernorm.weight"), p + "input_layernorm")
        put(layer.post_attention_layernorm.weight, take(p + "post_attention_layernorm.weight"),
            p + "post_attention_layernorm")
    put(model.norm.weight, take(f"{HF_PREFIX}norm.weight"), "norm")
    if model.lm_head is not None:
        put(model.lm_head.weight, take("lm_head.weight"), "lm_head")
    else:
        tensors.pop("lm_head.weight", None)
    leftovers = sorted(k for k in tensors if not k.endswith("rotary_emb.inv_freq"))
    if leftovers:
        raise ValueError(f"checkpoint has tensors this model does not use: {', '.join(leftovers[:5])}")


def save_checkpoint(model: LlamaModel, path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(model.cfg.to_hf_dict(), indent=2))
    save_file(to_hf_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})


def load_checkpoint(path: Path, device: torch.device, dtype: torch.dtype) -> LlamaModel:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory: no config.json")
    raw = json.loads((path / "config.json").read_text())
    check_supported(raw)
    cfg = ModelConfig.from_hf_dict(raw)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors weight files")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f), device="cpu"))
    model = empty_model(cfg, device, dtype)
    load_hf_state_dict(model, tensors)
    return model
