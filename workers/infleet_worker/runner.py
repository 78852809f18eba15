"""The model on its device: a paged KV cache, the prefill/decode calls, CUDA-graph replay and sampling.

KV memory is a pool of fixed-size blocks (`PagedKVCache`); each sequence owns a block table, the list of its
blocks in order, and attention reads its keys and values through that table. Which block belongs to whom is the
engine's business (`kv_blocks.BlockPool`); the runner only turns tables into tensors.

CUDA graphs need static shapes, so graph replay reads a fixed-size table tensor `[num_slots, max_blocks]` (every
sequence's table padded with the scratch block to `max_seq_len` worth of blocks): one captured graph per (batch
bucket, context bucket) covers every step, whatever blocks the sequences hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infleet_worker.model import LlamaModel


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class PagedKVCache:
    """Keys and values as [layers, num_blocks + 1, kv_heads, block_size, head_dim].

    The extra last block is scratch: padded rows of a captured decode batch write there, and table entries past a
    sequence's end point there, so padding never reads or touches a real sequence's blocks.
    """

    def __init__(self, model: LlamaModel, *, num_blocks: int, block_size: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        cfg = model.cfg
        shape = (cfg.num_hidden_layers, num_blocks + 1, cfg.num_key_value_heads, block_size, cfg.dim_per_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.scratch_block = num_blocks

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @property
    def bytes_per_token(self) -> int:
        return self.nbytes // ((self.num_blocks + 1) * self.block_size)


def _buckets(limit: int, start: int) -> list[int]:
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


class ModelRunner:
    """Runs prefill and decode on one device; on CUDA, replays captured graphs for decode.

    `num_slots` is the largest decode batch; `num_blocks` the KV pool (default: `num_slots` sequences of
    `max_seq_len` tokens, the memory the unpaged cache used to reserve).
    """

    def __init__(self, model: LlamaModel, num_slots: int, max_seq_len: int, *, num_blocks: int | None = None,
                 block_size: int = 16, use_cuda_graphs: bool = False, seed: int = 0) -> None:
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        self.max_blocks = blocks_for(max_seq_len, block_size)  # block-table width: one max-length sequence
        pool = num_blocks if num_blocks is not None else num_slots * self.max_blocks
        self.cache = PagedKVCache(model, num_blocks=pool, block_size=block_size, device=self.device, dtype=self.dtype)
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self.batch_buckets = _buckets(num_slots, 1)
        self.ctx_buckets = _buckets(max_seq_len, min(128, max_seq_len))
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # Static graph inputs: tokens and positions, and the padded block tables (scratch block by default).
        self._static = torch.zeros((2, num_slots), dtype=torch.long, device=self.device)
        self._table = torch.full((num_slots, self.max_blocks), self.cache.scratch_block, dtype=torch.long,
                                 device=self.device)
        self._host = torch.empty((2, num_slots), dtype=torch.long)
        self._host_table = torch.empty((num_slots, self.max_blocks), dtype=torch.long)
        if self.use_cuda_graphs:
            self._host = self._host.pin_memory()
            self._host_table = self._host_table.pin_memory()
        gen_device = self.device if self.device.type in ("cpu", "cuda") else torch.device("cpu")
        self._gen = torch.Generator(device=gen_device).manual_seed(seed)

    @property
    def generator(self) -> torch.Generator:
        return self._gen

    def dense_table(self, row: int) -> list[int]:
        """Blocks row*max_blocks .. for a caller that manages no pool (benchmarks, tests): row `row` of a pool
        laid out as fixed slots. Needs the default pool size."""
        start = row * self.max_blocks
        if start + self.max_blocks > self.cache.num_blocks:
            raise ValueError(f"row {row} does not fit a pool of {self.cache.num_blocks} blocks")
        return list(range(start, start + self.max_blocks))

    def _padded(self, tables: Sequence[Sequence[int]], rows: int, width: int) -> torch.Tensor:
        """Tables as a [rows, width] CPU tensor; missing entries (and whole padding rows) are the scratch block."""
        scratch = self.cache.scratch_block
        flat: list[int] = []
        for table in tables:
            flat.extend(table[:width])
            flat.extend([scratch] * (width - min(len(table), width)))
        flat.extend([scratch] * (width * (rows - len(tables))))
        return torch.tensor(flat, dtype=torch.long).view(rows, width)

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int], start: int, table: Sequence[int]) -> torch.Tensor:
        """Prompt tokens at positions start.. of the sequence whose blocks are `table` (covering every position
        up to the chunk's end); returns the last position's logits."""
        end = start + len(tokens)
        need = blocks_for(end, self.cache.block_size)
        if len(table) < need:
            raise ValueError(f"block table of {len(table)} blocks cannot hold {end} tokens")
        t = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        blocks = torch.tensor(list(table[:need]), dtype=torch.long, device=self.device)
        return self.model.prefill(t, start, blocks, self.cache.k, self.cache.v)

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int], positions: Sequence[int],
               tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """One token per sequence; `tables[i]` must already hold the block of `positions[i]`."""
        bsz = len(tokens)
        need = max(positions) + 1
        bs = self.cache.block_size
        if not self.use_cuda_graphs:
            t = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
            p = torch.tensor(list(positions), dtype=torch.long, device=self.device)
            table = self._padded(tables, bsz, blocks_for(need, bs)).to(self.device)
            return self.model.decode(t, p, need, self.cache.k, self.cache.v, table)
        bb = next(b for b in self.batch_buckets if b >= bsz)
        cb = next(c for c in self.ctx_buckets if c >= need)
        graph, out = self._graphs.get((bb, cb)) or self._capture(bb, cb)  # before the inputs are written
        pad = bb - bsz
        width = blocks_for(cb, bs)
        # Padding rows: token 0 at position 0 of a table that is all scratch block.
        self._host[:, :bb] = torch.tensor([[*tokens, *([0] * pad)], [*positions, *([0] * pad)]], dtype=torch.long)
        self._host_table[:bb, :width] = self._padded(tables, bb, width)
        # The previous step's results were read on the host, so the pinned buffers are free to overwrite.
        self._static[:, :bb].copy_(self._host[:, :bb], non_blocking=True)
        self._table[:bb].copy_(self._host_table[:bb], non_blocking=True)
        graph.replay()
        return out[:bsz]

    def _decode_static(self, bb: int, cb: int) -> torch.Tensor:
        # The graph reads exactly the columns a context of `cb` positions can need; entries past them are never read.
        table = self._table[:bb, : blocks_for(cb, self.cache.block_size)]
        return self.model.decode(self._static[0, :bb], self._static[1, :bb], cb, self.cache.k, self.cache.v, table)

    @torch.inference_mode()
    def _capture(self, bb: int, cb: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Static inputs point every row at position 0 of the scratch block, so warm-up runs never touch live blocks.
        self._static[:, :bb].zero_()
        self._table[:bb].fill_(self.cache.scratch_block)
        if not self._graphs:
            # Warm up outside capture (cuBLAS workspaces, allocator).
            side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._decode_static(bb, cb)
            torch.cuda.current_stream().wait_stream(side)
        if not self._graphs:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self._decode_static(bb, cb)
        self._graphs[(bb, cb)] = (graph, out)
        return graph, out

    def capture_all(self) -> int:
        """Capture every decode graph up front (largest first, so the shared pool is sized once)."""
        if not self.use_cuda_graphs:
            return 0
        for cb in reversed(self.ctx_buckets):
            for bb in reversed(self.batch_buckets):
                if (bb, cb) not in self._graphs:
                    self._capture(bb, cb)
        torch.cuda.synchronize()
        return len(self._graphs)

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, temperatures: Sequence[float], top_ps: Sequence[float]) -> list[int]:
        """Greedy rows take the argmax; others sample from the temperature-scaled, top-p-truncated distribution."""
        greedy = logits.argmax(dim=-1)
        if all(t <= 0 for t in temperatures):
            return [int(x) for x in greedy.tolist()]
        temps = torch.tensor(list(temperatures), dtype=torch.float32, device=logits.device)
        tops = torch.tensor(list(top_ps), dtype=torch.float32, device=logits.device)
        probs = torch.softmax(logits.float() / temps.clamp_min(1e-5)[:, None], dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= tops[:, None]
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        gen = self._gen if self._gen.device == sorted_p.device else None
        choice = torch.multinomial(sorted_p, 1, generator=gen)
        sampled = order.gather(-1, choice).squeeze(-1)
        out = torch.where(temps <= 0, greedy, sampled)
        return [int(x) for x in out.tolist()]
