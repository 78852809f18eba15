"""The model on its device: a slot-based KV cache, the prefill/decode calls, CUDA-graph replay and sampling.

KV memory is bounded up front: `num_slots` sequences of up to `max_seq_len` tokens each. The running batch
always occupies slots 0..B-1 (the scheduler compacts it when a sequence leaves), so a decode step reads a
contiguous prefix of the cache with no gather, and one captured graph per (batch bucket, context bucket)
covers every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from infleet_worker.model import LlamaModel


class KVCache:
    """Keys and values as [layers, slots, kv_heads, max_seq_len + 1, head_dim].

    The extra last position is scratch: padded rows of a captured decode batch write there, so padding never
    touches a real sequence's cache.
    """

    def __init__(self, model: LlamaModel, num_slots: int, max_seq_len: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        cfg = model.cfg
        shape = (cfg.num_hidden_layers, num_slots, cfg.num_key_value_heads, max_seq_len + 1, cfg.dim_per_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.num_slots = num_slots
        self.max_seq_len = max_seq_len
        self.scratch_pos = max_seq_len

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction of the running batch)."""
        if length:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]


def _buckets(limit: int, start: int) -> list[int]:
    out, b = [], start
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


class ModelRunner:
    """Runs prefill and decode on one device; on CUDA, replays captured graphs for decode."""

    def __init__(self, model: LlamaModel, num_slots: int, max_seq_len: int, *, use_cuda_graphs: bool = False,
                 seed: int = 0) -> None:
        param = next(model.parameters())
        self.model = model
        self.device, self.dtype = param.device, param.dtype
        self.cache = KVCache(model, num_slots, max_seq_len, self.device, self.dtype)
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self.batch_buckets = _buckets(num_slots, 1)
        self.ctx_buckets = _buckets(max_seq_len + 1, min(128, max_seq_len + 1))
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._static = torch.full((2, num_slots), self.cache.scratch_pos, dtype=torch.long, device=self.device)
        self._host = torch.empty((2, num_slots), dtype=torch.long)
        if self.use_cuda_graphs:
            self._host = self._host.pin_memory()
        gen_device = self.device if self.device.type in ("cpu", "cuda") else torch.device("cpu")
        self._gen = torch.Generator(device=gen_device).manual_seed(seed)

    @property
    def generator(self) -> torch.Generator:
        return self._gen

    @torch.inference_mode()
    def prefill(self, tokens: Sequence[int], start: int, slot: int) -> torch.Tensor:
        t = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
        return self.model.prefill(t, start, slot, self.cache.k, self.cache.v)

    @torch.inference_mode()
    def decode(self, tokens: Sequence[int], positions: Sequence[int]) -> torch.Tensor:
        bsz = len(tokens)
        need = max(positions) + 1
        if not self.use_cuda_graphs:
            t = torch.tensor(list(tokens), dtype=torch.long, device=self.device)
            p = torch.tensor(list(positions), dtype=torch.long, device=self.device)
            return self.model.decode(t, p, need, self.cache.k, self.cache.v)
        bb = next(b for b in self.batch_buckets if b >= bsz)
        cb = next(c for c in self.ctx_buckets if c >= need)
        graph, out = self._graphs.get((bb, cb)) or self._capture(bb, cb)  # before the inputs are written
        pad = bb - bsz
        self._host[:, :bb] = torch.tensor([[*tokens, *([0] * pad)], [*positions, *([self.cache.scratch_pos] * pad)]],
                                          dtype=torch.long)
        # The previous step's results were read on the host, so the pinned buffer is free to overwrite.
        self._static[:, :bb].copy_(self._host[:, :bb], non_blocking=True)
        graph.replay()
        return out[:bsz]

    def _decode_static(self, bb: int, cb: int) -> torch.Tensor:
        return self.model.decode(self._static[0, :bb], self._static[1, :bb], cb, self.cache.k, self.cache.v)

    @torch.inference_mode()
    def _capture(self, bb: int, cb: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Static inputs point every row at the scratch position, so warm-up runs never touch live cache rows.
        self._static[1, :bb].fill_(self.cache.scratch_pos)
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
