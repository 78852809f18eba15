"""Paged KV memory bookkeeping: a pool of fixed-size blocks with reference counts, and prefix caching by sharing
blocks between sequences.

Each sequence holds a block table (its blocks, in order) and a reference on each of them; a finished sequence
releases them. With prefix caching on, a full block can also be *cached*: indexed by (parent block, its tokens),
so a later request with the same whole prefix takes a reference to the same block instead of computing it again
(no copy). The parent chain pins every earlier token and there are no hashes, so no collision can hand a request
someone else's keys. A shared block is never written: a prefix hit covers whole blocks and leaves at least the
prompt's last token to prefill, so a sequence only ever writes to blocks past its hit.

A cached block nobody references stays in memory until the pool needs it: eviction takes the least recently
released cached block that has no cached children (a leaf), so a chain never loses a middle block while its tail
stays findable. A sequence that references a cached block references its cached ancestors too (lookups take
whole chains from the root, and a sequence caches its own blocks under the block before them in its own table),
so every unreferenced cached block is reachable by evicting leaves: `available` is exactly what `allocate` can
hand out.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence

ROOT = -1  # the parent of a prompt's first block

Key = tuple[int, tuple[int, ...]]


class BlockPool:
    def __init__(self, *, num_blocks: int, block_size: int, prefix_caching: bool) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV pool needs at least one block of at least one token")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out the lowest block first
        self._refs = [0] * num_blocks
        self._children = [0] * num_blocks  # cached blocks whose parent this is
        self._index: dict[Key, int] = {}
        self._key: dict[int, Key] = {}  # cached block -> its index key
        self._idle = 0  # cached blocks with no reference (reclaimable)
        # Idle cached leaves, least recently released first: (tick, block), stale entries skipped on pop.
        self._evictable: list[tuple[int, int]] = []
        self._released_at = [0] * num_blocks
        self._ticks = itertools.count(1)
        self.hit_tokens = 0
        self.query_tokens = 0
        self.evictions = 0
        # Bumped whenever the prefix index changes: a `match` stays valid while it is unchanged, so a request that
        # waits for blocks is not looked up again (every chunk of its prompt hashed) on every engine step.
        self.index_version = 0

    # ---- accounting ----------------------------------------------------------------------------------------
    @property
    def blocks_in_use(self) -> int:
        """Blocks some sequence references (cached blocks nobody references are reclaimable, so not in use)."""
        return self.num_blocks - len(self._free) - self._idle

    @property
    def available(self) -> int:
        return len(self._free) + self._idle

    @property
    def cached_blocks(self) -> int:
        return len(self._key)

    def refs(self, block: int) -> int:
        return self._refs[block]

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # ---- references ----------------------------------------------------------------------------------------
    def allocate(self) -> int | None:
        """A fresh block with one reference, or None when every block is referenced."""
        if self._free:
            block = self._free.pop()
        else:
            victim = self._pop_evictable()
            if victim is None:
                return None
            block = victim
            self._idle -= 1
            self._uncache(block)
            self.evictions += 1
        self._refs[block] = 1
        return block

    def acquire(self, blocks: Sequence[int]) -> None:
        """One more reference on each of `blocks` (cached blocks found by `match`)."""
        for b in blocks:
            if self._refs[b] == 0:
                self._idle -= 1  # its heap entry goes stale: _pop_evictable skips referenced blocks
            self._refs[b] += 1

    def release(self, blocks: Sequence[int]) -> None:
        """Drop a sequence's references, tail first (so a chain's tail is the older leaf)."""
        for b in reversed(blocks):
            self._refs[b] -= 1
            if self._refs[b]:
                continue
            if b in self._key:
                self._idle += 1
                self._released_at[b] = next(self._ticks)
                if not self._children[b]:
                    heapq.heappush(self._evictable, (self._released_at[b], b))
            else:
                self._free.append(b)

    def can_admit(self, hits: Sequence[int], new_blocks: int) -> bool:
        """Whether `hits` can be referenced and `new_blocks` allocated now."""
        reclaimed = sum(1 for b in hits if self._refs[b] == 0)  # idle hits stop being reclaimable
        return self.available - reclaimed >= new_blocks

    # ---- prefix cache --------------------------------------------------------------------------------------
    def _chunks(self, tokens: Sequence[int], limit: int) -> list[tuple[int, ...]]:
        bs = self.block_size
        return [tuple(tokens[i : i + bs]) for i in range(0, limit - bs + 1, bs)]

    def match(self, tokens: Sequence[int]) -> list[int]:
        """Cached blocks holding the longest prefix of `tokens` in whole blocks, leaving at least the last token
        (whose logits start generation) to compute. Takes no reference."""
        if not self.prefix_caching:
            return []
        found, parent = [], ROOT
        for chunk in self._chunks(tokens, len(tokens) - 1):
            block = self._index.get((parent, chunk))
            if block is None:
                break
            found.append(block)
            parent = block
        return found

    def cache(self, table: Sequence[int], tokens: Sequence[int], computed: int) -> int:
        """Index the full blocks of `tokens[:computed]` (held in `table`) for reuse; returns blocks newly cached.

        Stops at a block whose (parent, tokens) another sequence cached first: that sequence's copy serves later
        lookups, and chains stay within one sequence's table (see the module docstring)."""
        if not self.prefix_caching:
            return 0
        parent, added = ROOT, 0
        for block, chunk in zip(table, self._chunks(tokens, computed), strict=False):
            if block not in self._key:
                key = (parent, chunk)
                if key in self._index:
                    break
                self._index[key] = block
                self._key[block] = key
                self.index_version += 1
                if parent != ROOT:
                    self._children[parent] += 1
                added += 1
            parent = block
        return added

    def _uncache(self, block: int) -> None:
        parent, tokens = self._key.pop(block)
        del self._index[(parent, tokens)]
        self.index_version += 1
        if parent == ROOT:
            return
        self._children[parent] -= 1
        if not self._children[parent] and not self._refs[parent]:
            heapq.heappush(self._evictable, (self._released_at[parent], parent))

    def _pop_evictable(self) -> int | None:
        while self._evictable:
            tick, block = heapq.heappop(self._evictable)
            live = (block in self._key and not self._refs[block] and not self._children[block]
                    and self._released_at[block] == tick)
            if live:
                return block
        return None
