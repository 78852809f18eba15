"""Tokenizers: a checkpoint's own `tokenizer.json` when the `tokenizers` package is present, else bytes.

The byte fallback maps UTF-8 bytes to ids 0..255 with BOS=256 and EOS=257, so any model whose vocabulary has at
least 258 entries (all built-in ones) can serve text without a tokenizer file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class Tokenizer(Protocol):
    bos_id: int | None
    eos_ids: tuple[int, ...]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens; ids above 257 (possible with random weights) decode to nothing."""

    def __init__(self) -> None:
        self.bos_id: int | None = 256
        self.eos_ids: tuple[int, ...] = (257,)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A `tokenizer.json` read through the optional `tokenizers` package."""

    def __init__(self, path: Path, bos_id: int | None, eos_ids: tuple[int, ...]) -> None:
        from tokenizers import Tokenizer as _Tok  # type: ignore[import-not-found,unused-ignore]

        self._tok = _Tok.from_file(str(path))
        self.bos_id = bos_id
        self.eos_ids = eos_ids

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


def load_tokenizer(checkpoint: Path | None, bos_id: int | None, eos_ids: tuple[int, ...]) -> Tokenizer:
    if checkpoint is not None and (checkpoint / "tokenizer.json").is_file():
        try:
            return HFTokenizer(checkpoint / "tokenizer.json", bos_id, eos_ids)
        except ImportError:
            pass  # fall back to bytes; the CLI logs which tokenizer is in use
    return ByteTokenizer()
