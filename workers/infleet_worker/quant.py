"""int8 weight-only quantisation of the linear layers (Q/K/V, O, gate/up, down and an untied LM head).

Each output row gets one scale (symmetric, `max |w| / 127`), so a weight is `int8 * scale[row]`; activations
stay in the model's dtype. The matmul is torch's `_weight_int8pack_mm` (int8 weights read directly, no full
dequantised copy) where the device has it, else the weight is dequantised per call (correct, not fast).
Embeddings and norms stay as they are (a tied LM head is the embedding table, so it stays too).

What it buys and costs is measured, not assumed: `bench/worker_cpu_quant.py` reports weight memory, decode step
time and the logit/greedy-token deviation against the unquantised model (docs/benchmarks.md); on this project's
2-core CPU the int8 kernel is slower than fp32 GEMV, so int8 is a memory saving there, not a speed-up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from infleet_worker.model import LlamaModel

log = logging.getLogger(__name__)

QUANT_CHOICES = ("none", "int8")


class Int8Linear(nn.Module):
    """A bias-free linear layer holding int8 weights and one scale per output row."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("qweight", q.contiguous())
        self.register_buffer("scale", scale.to(weight.dtype))
        self.out_features, self.in_features = q.shape
        self._packed_mm: bool | None = None  # whether _weight_int8pack_mm runs here; found on first call

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return self.qweight.to(dtype) * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self._packed_mm is not False:
            try:
                out = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scale.to(flat.dtype))
                self._packed_mm = True
                return out.reshape(*x.shape[:-1], self.out_features)
            except (RuntimeError, NotImplementedError) as exc:
                if self._packed_mm:
                    raise
                log.info("int8 packed matmul unavailable on %s (%s); dequantising per call", x.device, exc)
                self._packed_mm = False
        return F.linear(x, self.dequantized(x.dtype))


def linear_weight_bytes(model: LlamaModel) -> int:
    """Bytes of the weights `quantize_int8` replaces (int8 + scales once quantised)."""
    total = 0
    for layer in model.decoder_layers():
        for mod in (layer.qkv_proj, layer.o_proj, layer.gate_up_proj, layer.down_proj):
            total += sum(t.numel() * t.element_size() for t in [*mod.parameters(), *mod.buffers()])
    if model.lm_head is not None:
        head: nn.Module = model.lm_head
        total += sum(t.numel() * t.element_size() for t in [*head.parameters(), *head.buffers()])
    return total


@dataclass(frozen=True, kw_only=True)
class QuantReport:
    method: str
    bytes_before: int
    bytes_after: int


@torch.no_grad()
def quantize_int8(model: LlamaModel) -> QuantReport:
    before = linear_weight_bytes(model)
    for layer in model.decoder_layers():
        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
            setattr(layer, name, Int8Linear(getattr(layer, name).weight))
    if model.lm_head is not None:
        model.lm_head = Int8Linear(model.lm_head.weight)  # type: ignore[assignment]
    after = linear_weight_bytes(model)
    log.info("int8 weight-only quantisation: linear weights %.1f MiB -> %.1f MiB", before / 2**20, after / 2**20)
    return QuantReport(method="int8", bytes_before=before, bytes_after=after)
