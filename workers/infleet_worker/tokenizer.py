"""Tokenizers: a checkpoint's own `tokenizer.json` through the `tokenizers` package, or bytes for built-in models.

A checkpoint that ships `tokenizer.json` is always served with it: when the `tokenizers` package is missing the
worker refuses to start (serving a real vocabulary through the byte fallback silently turns every prompt into
garbage). A checkpoint with only a SentencePiece `tokenizer.model` is refused with the conversion to run. The byte
fallback maps UTF-8 bytes to ids 0..255 with BOS=256 and EOS=257; it serves the built-in random models and
checkpoints that ship no tokenizer files at all (logged as a warning).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TokenizerError(ValueError):
    """The checkpoint's tokenizer cannot be used (missing package, unsupported format)."""


class Tokenizer(Protocol):
    bos_id: int | None
    eos_ids: tuple[int, ...]
    description: str  # what is in use, for the start-up log

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        """`add_special_tokens`: what the tokenizer itself adds around a raw prompt (BOS for Llama)."""
        ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens; ids above 257 (possible with random weights) decode to nothing."""

    description = "bytes (UTF-8 bytes are ids 0..255, BOS 256, EOS 257)"

    def __init__(self) -> None:
        self.bos_id: int | None = 256
        self.eos_ids: tuple[int, ...] = (257,)

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [256, *ids] if add_special_tokens else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` read through the `tokenizers` package (what transformers' fast tokenizers wrap)."""

    def __init__(self, path: Path, bos_id: int | None, eos_ids: tuple[int, ...], *, add_bos: bool | None = None
                 ) -> None:
        try:
            from tokenizers import Tokenizer as _Tok
        except ImportError as exc:
            raise TokenizerError(
                f"{path.parent} ships tokenizer.json but the 'tokenizers' package is not installed; install the "
                "worker's dependencies (pip install 'infleet[worker]')") from exc
        self._tok = _Tok.from_file(str(path))
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self._add_bos = add_bos
        self.description = f"tokenizers ({path}, vocabulary {self._tok.get_vocab_size(with_added_tokens=True)})"

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        ids = list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)
        # tokenizer_config.json's add_bos_token is what transformers honours when tokenizer.json's post-processor
        # does not add BOS itself (older Llama conversions).
        if add_special_tokens and self._add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids.insert(0, self.bos_id)
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))

    def token_id(self, token: str) -> int | None:
        tid = self._tok.token_to_id(token)
        return None if tid is None else int(tid)


def special_token_text(value: Any) -> str | None:
    """tokenizer_config.json writes a special token as a string or as {"content": ...} (AddedToken)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except ValueError as exc:
        raise TokenizerError(f"{path} is not valid JSON: {exc}") from exc
    return raw if isinstance(raw, dict) else {}


def _eos_ids(config_eos: tuple[int, ...], checkpoint: Path, eos_token: str | None, tok: HFTokenizer) -> tuple[int, ...]:
    """EOS ids from config.json, generation_config.json (what generate() stops on) and the tokenizer's eos_token."""
    ids = list(config_eos)
    gen = read_json(checkpoint / "generation_config.json").get("eos_token_id")
    for tid in [gen] if isinstance(gen, int) else (gen if isinstance(gen, list) else []):
        if isinstance(tid, int) and tid not in ids:
            ids.append(tid)
    if eos_token is not None and (tid := tok.token_id(eos_token)) is not None and tid not in ids:
        ids.append(tid)
    return tuple(ids)


def load_tokenizer(checkpoint: Path | None, bos_id: int | None, eos_ids: tuple[int, ...]) -> Tokenizer:
    if checkpoint is None:
        return ByteTokenizer()
    if (checkpoint / "tokenizer.json").is_file():
        cfg = read_json(checkpoint / "tokenizer_config.json")
        tok = HFTokenizer(checkpoint / "tokenizer.json", bos_id, eos_ids,
                          add_bos=cfg.get("add_bos_token") if isinstance(cfg.get("add_bos_token"), bool) else None)
        if tok.bos_id is None and (bos := special_token_text(cfg.get("bos_token"))) is not None:
            tok.bos_id = tok.token_id(bos)
        tok.eos_ids = _eos_ids(eos_ids, checkpoint, special_token_text(cfg.get("eos_token")), tok)
        if not tok.eos_ids:
            log.warning("no EOS token found in config.json, generation_config.json or tokenizer_config.json: "
                        "generation stops only at max_tokens or a stop sequence")
        return tok
    if (checkpoint / "tokenizer.model").is_file():
        raise TokenizerError(
            f"{checkpoint} has only a SentencePiece tokenizer.model; the worker reads tokenizer.json. Convert it "
            "once with transformers: AutoTokenizer.from_pretrained(path).save_pretrained(path)")
    log.warning("%s has no tokenizer.json: serving with the byte tokenizer, which is right only for checkpoints "
                "trained on it", checkpoint)
    return ByteTokenizer()
