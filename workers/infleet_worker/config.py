"""Model shapes: the Llama-family hyper-parameters, read from a Hugging Face `config.json` or built in.

The built-in configurations let tests and benchmarks run without downloading anything: their weights are
seeded random numbers, so outputs are gibberish but every kernel, shape and byte count is the real one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only Llama-style transformer (names follow Hugging Face's LlamaConfig)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    tie_word_embeddings: bool = False
    head_dim: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads when head_dim is not given")

    @property
    def dim_per_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def num_parameters(self) -> int:
        """Parameter count (embedding and LM head counted separately unless tied)."""
        h, d, n_layers = self.hidden_size, self.dim_per_head, self.num_hidden_layers
        attn = h * d * (self.num_attention_heads * 2 + self.num_key_value_heads * 2)
        mlp = 3 * h * self.intermediate_size
        per_layer = attn + mlp + 2 * h
        embed = self.vocab_size * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return n_layers * per_layer + embed + head + h

    def decode_weight_bytes(self, bytes_per_param: int) -> int:
        """Weight bytes one decode step must read: every matrix except the embedding table (one row of it is read)."""
        embed = self.vocab_size * self.hidden_size
        read = self.num_parameters() - embed
        if self.tie_word_embeddings:
            read += embed  # the tied table is read in full as the LM head
        return read * bytes_per_param

    def kv_bytes_per_token(self, bytes_per_elem: int) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.dim_per_head * bytes_per_elem

    def to_hf_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra" and v is not None}
        out.update(self.extra)
        out["architectures"] = ["LlamaForCausalLM"]
        out["model_type"] = "llama"
        return out

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in raw]
        if missing:
            raise ValueError(f"config.json lacks required fields: {', '.join(missing)}")
        raw = dict(raw)
        rope = raw.pop("rope_parameters", None)
        if isinstance(rope, dict):  # transformers >= 5 nests rope_theta and the scaling in one dict
            raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
            if rope.get("rope_type", "default") != "default":
                raw.setdefault("rope_scaling", rope)
        args = {k: raw[k] for k in known if k in raw}
        args.setdefault("num_key_value_heads", raw["num_attention_heads"])
        extra = {k: v for k, v in raw.items() if k not in known and k not in ("architectures", "model_type")}
        return cls(**args, extra=extra)

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        return cls.from_hf_dict(json.loads(path.read_text()))


SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_ACTIVATIONS = ("silu",)


class UnsupportedModelError(ValueError):
    """The checkpoint is of an architecture (or a variant) the engine does not implement: refuse, never guess."""


def check_supported(raw: dict[str, Any]) -> None:
    """Refuse checkpoints whose maths differ from this engine's Llama (a Gemma or Qwen checkpoint would load and
    compute wrong logits otherwise)."""
    archs = raw.get("architectures")
    if archs is not None:
        if not isinstance(archs, list) or not archs or any(a not in SUPPORTED_ARCHITECTURES for a in archs):
            raise UnsupportedModelError(
                f"config.json declares architectures {archs!r}; this worker implements only "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    elif raw.get("model_type") != "llama":
        raise UnsupportedModelError(
            f"config.json has no `architectures` and model_type {raw.get('model_type')!r}; this worker implements "
            f"only {', '.join(SUPPORTED_ARCHITECTURES)} (model_type 'llama')")
    act = raw.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise UnsupportedModelError(f"hidden_act {act!r} is not implemented (supported: "
                                    f"{', '.join(SUPPORTED_ACTIVATIONS)})")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        raise UnsupportedModelError("checkpoints with attention or MLP biases are not supported")
    if raw.get("quantization_config"):
        method = raw["quantization_config"].get("quant_method", "?") if isinstance(raw["quantization_config"],
                                                                                  dict) else "?"
        raise UnsupportedModelError(f"pre-quantised checkpoints ({method}) are not supported; serve the "
                                    "unquantised weights")


BYTE_VOCAB = 256 + 2  # the fallback byte tokenizer: 256 bytes, then BOS and EOS

BUILTIN_MODELS: dict[str, ModelConfig] = {
    # Tests and CPU benchmarks: a few milliseconds per step on one core.
    "tiny": ModelConfig(
        vocab_size=320, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=256, eos_token_id=257,
    ),
    # Shaped like Llama 3.2 1B (tied embeddings).
    "llama-1b": ModelConfig(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=True,
        bos_token_id=256, eos_token_id=257,
    ),
    # Shaped like Llama 3.1 8B.
    "llama-8b": ModelConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=256,
        eos_token_id=257,
    ),
}


def builtin_config(name: str, **overrides: Any) -> ModelConfig:
    try:
        cfg = BUILTIN_MODELS[name]
    except KeyError:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {sorted(BUILTIN_MODELS)} "
                         "or pass a checkpoint directory") from None
    return replace(cfg, **overrides) if overrides else cfg
