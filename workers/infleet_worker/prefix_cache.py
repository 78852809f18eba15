"""Prefix caching: keys and values of token blocks seen before, so a repeated system prompt or the earlier turns
of a chat are copied into a new request's KV slot instead of being prefilled again.

The store holds `num_blocks` blocks of `block_size` tokens each, `[layers, blocks, kv_heads, block_size,
head_dim]`, allocated once. A block is identified exactly by (its parent block, its tokens): the parent chain
pins every earlier token, so a block is only ever reused after the same whole prefix (no hashes, so no
collision can hand a request someone else's keys). Each block counts its cached children; eviction takes the
least recently used block that has none (a leaf), so a chain never loses a middle block while its tail stays.

What is stored: full blocks of a prompt once its prefill is done, and at a request's end (stop or length) the
full blocks of prompt + output whose keys and values were computed, so the next turn of that chat finds its
history. A lookup always leaves at least the prompt's last token to prefill (its logits start generation).

This sits beside the slot cache (`runner.KVCache`), which still reserves `max_seq_len` per slot: the slot cache
is not paged (see docs/worker.md).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from infleet_worker.runner import KVCache

ROOT = -1  # the parent of a prompt's first block


@dataclass
class _Block:
    parent: int
    tokens: tuple[int, ...]
    children: int = 0


class PrefixCache:
    def __init__(self, cache: KVCache, num_blocks: int, block_size: int = 16) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("prefix cache needs at least one block of at least one token")
        layers, _slots, kv_heads, _len, head_dim = cache.k.shape
        shape = (layers, num_blocks, kv_heads, block_size, head_dim)
        self.k = torch.zeros(shape, device=cache.k.device, dtype=cache.k.dtype)
        self.v = torch.zeros(shape, device=cache.v.device, dtype=cache.v.dtype)
        self.cache, self.num_blocks, self.block_size = cache, num_blocks, block_size
        self._index: dict[tuple[int, tuple[int, ...]], int] = {}
        self._blocks: dict[int, _Block] = {}
        self._lru: OrderedDict[int, None] = OrderedDict()  # blocks in use, least recently used first
        self._free = list(range(num_blocks - 1, -1, -1))
        self.hit_tokens = 0
        self.query_tokens = 0

    @property
    def blocks_in_use(self) -> int:
        return len(self._blocks)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def _chunks(self, tokens: Sequence[int], limit: int) -> list[tuple[int, ...]]:
        bs = self.block_size
        return [tuple(tokens[i : i + bs]) for i in range(0, limit - bs + 1, bs)]

    def _lookup(self, tokens: Sequence[int], limit: int) -> list[int]:
        found, parent = [], ROOT
        for chunk in self._chunks(tokens, limit):
            block = self._index.get((parent, chunk))
            if block is None:
                break
            found.append(block)
            parent = block
        return found

    @torch.inference_mode()
    def load(self, prompt: Sequence[int], slot: int) -> int:
        """Copy the longest cached prefix of `prompt` (whole blocks, at most len - 1 tokens) into `slot`;
        returns how many tokens that covers."""
        blocks = self._lookup(prompt, len(prompt) - 1)
        self.query_tokens += len(prompt)
        if not blocks:
            return 0
        for b in blocks:
            self._lru.move_to_end(b)
        n = len(blocks) * self.block_size
        idx = torch.tensor(blocks, device=self.k.device)
        layers, _, kv_heads, _, d = self.k.shape
        for src, dst in ((self.k, self.cache.k), (self.v, self.cache.v)):
            chunk = src.index_select(1, idx).permute(0, 2, 1, 3, 4).reshape(layers, kv_heads, n, d)
            dst[:, slot, :, :n] = chunk
        self.hit_tokens += n
        return n

    @torch.inference_mode()
    def store(self, tokens: Sequence[int], slot: int, cached: int) -> int:
        """Keep the full blocks of `tokens[:cached]` (keys/values in `slot`); returns blocks newly stored."""
        parent, added = ROOT, 0
        for i, chunk in enumerate(self._chunks(tokens, cached)):
            block = self._index.get((parent, chunk))
            if block is None:
                block = self._allocate(protect=parent)
                if block is None:
                    break  # every block is an ancestor of something newer: keep what is there
                start = i * self.block_size
                self.k[:, block] = self.cache.k[:, slot, :, start : start + self.block_size]
                self.v[:, block] = self.cache.v[:, slot, :, start : start + self.block_size]
                self._blocks[block] = _Block(parent, chunk)
                self._index[(parent, chunk)] = block
                if parent != ROOT:
                    self._blocks[parent].children += 1
                added += 1
            self._lru[block] = None
            self._lru.move_to_end(block)
            parent = block
        return added

    def _allocate(self, protect: int) -> int | None:
        if self._free:
            return self._free.pop()
        victim = next((b for b in self._lru if self._blocks[b].children == 0 and b != protect), None)
        if victim is None:
            return None
        entry = self._blocks.pop(victim)
        del self._index[(entry.parent, entry.tokens)]
        del self._lru[victim]
        if entry.parent != ROOT:
            self._blocks[entry.parent].children -= 1
        return victim
