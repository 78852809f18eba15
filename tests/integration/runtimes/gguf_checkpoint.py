"""A Hugging Face-layout Llama checkpoint (tests/unit/worker/hf_checkpoint.py) written as a GGUF file for llama.cpp,
offline, with the `gguf` package: llama.cpp's tensor names and metadata keys, the byte-level BPE vocabulary and
merges as a `gpt2` tokenizer, F32 or Q8_0 weights.

Q and K projections are permuted from Hugging Face's rotate-half rope layout to llama.cpp's interleaved one (what
llama.cpp's own converter does), so llama.cpp computes the same function as the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import gguf
import numpy as np
from safetensors.numpy import load_file

Quant = Literal["F32", "Q8_0"]
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def rope_to_interleaved(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head reordered from [first halves..., second halves...] to pairs (llama.cpp's rope layout)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, index, rest = hf_name.split(".", 3)  # model.layers.<i>.<rest>
    return f"blk.{index}.{_LAYER_NAMES[rest]}"


def write_gguf(checkpoint: Path, out: Path, quant: Quant = "F32", name: str = "tiny") -> Path:
    cfg = json.loads((checkpoint / "config.json").read_text())
    tok = json.loads((checkpoint / "tokenizer.json").read_text())
    tok_cfg = json.loads((checkpoint / "tokenizer_config.json").read_text())
    heads, kv_heads, hidden = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["hidden_size"]

    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name(name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)

    vocab: dict[str, int] = tok["model"]["vocab"]
    specials = {t["content"]: t["id"] for t in tok["added_tokens"]}
    vocab = {**vocab, **specials}
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert len(tokens) == cfg["vocab_size"], "vocabulary ids must be dense"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # GPT-2's split regex: the ByteLevel pre-tokenizer the checkpoint was trained with
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(specials[tok_cfg["bos_token"]])
    w.add_eos_token_id(specials[tok_cfg["eos_token"]])
    w.add_add_bos_token(True)  # as Llama 3 GGUFs: llama-cpp-python recognises the template and lets add_bos write it
    w.add_chat_template(tok_cfg["chat_template"])

    for hf_name, tensor in sorted(load_file(str(checkpoint / "model.safetensors")).items()):
        data = tensor.astype(np.float32)
        if hf_name.endswith("q_proj.weight"):
            data = rope_to_interleaved(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = rope_to_interleaved(data, kv_heads)
        if quant == "Q8_0" and data.ndim == 2:
            q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            w.add_tensor(gguf_name(hf_name), q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(gguf_name(hf_name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
