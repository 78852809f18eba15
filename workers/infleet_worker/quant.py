"""Weight-only quantisation (int8, int4) of the linear layers (Q/K/V, O, gate/up, down and an untied LM head).

Each output row gets one scale (symmetric, `max |w| / 127`), so a weight is `int8 * scale[row]`; activations
stay in the model's dtype. The matmul is torch's `_weight_int8pack_mm` (int8 weights read directly, no full
dequantised copy) where the device has it, else the weight is dequantised per call (correct, not fast).
Embeddings and norms stay as they are (a tied LM head is the embedding table, so it stays too).

What it buys and costs is measured, not assumed: `bench/worker_cpu_quant.py` reports weight memory, decode step
time and the logit/greedy-token deviation against the unquantised model (docs/benchmarks.md); on this project's
2-core CPU the int8 and int4 kernels are slower than fp32 GEMV, so both are memory savings there, not speed-ups.

int4 (`Int4Linear`) is group-wise and asymmetric: each run of `group_size` input weights of a row gets a scale and
a zero point, see that class. A layer whose input width the group size does not divide stays unquantised (logged
and listed in `QuantReport.skipped`); a group size that divides none of them is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import nn

from infleet_worker.model import LlamaModel

log = logging.getLogger(__name__)

QUANT_CHOICES = ("none", "int8", "int4")
INT4_GROUP_SIZES = (32, 64, 128, 256)  # what torch's int4 kernels accept (CPU and CUDA alike)
DEFAULT_INT4_GROUP_SIZE = 128
_LAYER_NAMES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


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


def quantize_int4_groups(weight: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`weight` [N, K] -> (values 0..15 as int32 [N, K], scales-and-zeros float32 [K / group_size, N, 2]).

    The layout torch's int4 kernels read: a weight is `(q - 8) * scale + zero` with `zero = min + 8 * scale`, so
    a group's minimum and maximum are represented exactly (up to float rounding); the scale/zero tensor is
    grouped along K first, then output row, then (scale, zero).
    """
    n, k = weight.shape
    w = weight.detach().float().reshape(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1, keepdim=True), w.amax(dim=-1, keepdim=True)
    scale = ((hi - lo) / 15.0).clamp_min(1e-12)
    q = torch.round((w - lo) / scale).clamp_(0, 15).to(torch.int32).reshape(n, k)
    zero = lo + 8.0 * scale
    sz = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
    return q, sz


class Int4Linear(nn.Module):
    """A bias-free linear layer holding 4-bit weights (two per byte) with a scale and zero point per group.

    Where torch has a packed int4 matmul for the weight's device and dtype (`_weight_int4pack_mm_for_cpu` on CPU;
    `_weight_int4pack_mm` on CUDA, bf16 only) `qweight` is in that kernel's own packed layout; the kernel is tried
    once at construction on a one-row input, so a missing or refusing kernel is found at load time, not while
    serving. Otherwise `qweight` holds plain nibbles (even column in the high half) and the weight is dequantised
    per call: correct, not fast. The CUDA path has not been run (no GPU in the task that wrote it).
    """

    qweight: torch.Tensor
    scales_and_zeros: torch.Tensor
    kernel: str | None  # "cpu" / "cuda": qweight is in that packed kernel's layout; None: plain nibbles

    def __init__(self, weight: torch.Tensor, group_size: int = DEFAULT_INT4_GROUP_SIZE) -> None:
        super().__init__()
        n, k = weight.shape
        if group_size not in INT4_GROUP_SIZES or k % group_size:
            raise ValueError(f"int4 group size {group_size} does not fit input width {k}")
        self.out_features, self.in_features, self.group_size = n, k, group_size
        q, sz = quantize_int4_groups(weight, group_size)
        self.register_buffer("scales_and_zeros", sz.to(device=weight.device, dtype=weight.dtype))
        self.kernel = self._try_kernel(q.to(weight.device), weight.dtype)
        if self.kernel is None:
            plain = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8)
            self.register_buffer("qweight", plain.to(weight.device).contiguous())

    def _try_kernel(self, q: torch.Tensor, dtype: torch.dtype) -> str | None:
        """Pack `q` for this device's int4 kernel and check the kernel runs; None where it does not."""
        try:
            if q.device.type == "cpu":
                packed = torch._convert_weight_to_int4pack_for_cpu(q.contiguous(), 8)
                kernel = "cpu"
            elif q.device.type == "cuda" and dtype == torch.bfloat16:
                tiles = next(t for t in (8, 4, 2) if self.in_features % (t * 16) == 0)
                nibbles = (q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
                packed = torch._convert_weight_to_int4pack(nibbles, tiles)
                kernel = "cuda"
            else:
                return None
            self.register_buffer("qweight", packed)
            self.kernel = kernel
            self._packed_mm(torch.zeros(1, self.in_features, device=q.device, dtype=dtype))
            return kernel
        except (RuntimeError, NotImplementedError, StopIteration) as exc:
            log.info("int4 packed matmul unavailable for %dx%d on %s/%s (%s); dequantising per call",
                     self.out_features, self.in_features, q.device, dtype, exc)
            if "qweight" in self._buffers:
                del self._buffers["qweight"]
            return None

    def _packed_mm(self, flat: torch.Tensor) -> torch.Tensor:
        sz = self.scales_and_zeros.to(flat.dtype)
        if self.kernel == "cpu":
            return torch._weight_int4pack_mm_for_cpu(flat, self.qweight, self.group_size, sz)
        return torch._weight_int4pack_mm(flat, self.qweight, self.group_size, sz)

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight [N, K] the layer computes with (the reference the packed kernel is tested against)."""
        if self.kernel is not None:  # the kernel's layout is opaque: read the weight back through it
            eye = torch.eye(self.in_features, device=self.qweight.device, dtype=self.scales_and_zeros.dtype)
            return self._packed_mm(eye).t().to(dtype)
        q = torch.stack([self.qweight >> 4, self.qweight & 15], dim=-1).reshape(self.out_features, -1)
        sz = self.scales_and_zeros.float()
        scale = sz[..., 0].t().repeat_interleave(self.group_size, dim=1)
        zero = sz[..., 1].t().repeat_interleave(self.group_size, dim=1)
        return ((q.float() - 8.0) * scale + zero).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel is None:
            return F.linear(x, self.dequantized(x.dtype))
        out = self._packed_mm(x.reshape(-1, self.in_features).contiguous())
        return out.reshape(*x.shape[:-1], self.out_features)


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
    skipped: tuple[str, ...] = ()  # layers left unquantised (int4: the group size does not divide their width)


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


@torch.no_grad()
def quantize_int4(model: LlamaModel, group_size: int = DEFAULT_INT4_GROUP_SIZE) -> QuantReport:
    """Replace the linear layers by `Int4Linear`; a layer the group size does not fit stays as it is.

    Refused (ValueError) when the group size is not one torch's kernels take, or divides no layer's input width:
    then nothing would be quantised and `--quantize int4` would silently be a no-op.
    """
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"int4 group size {group_size} is not supported; choose one of {list(INT4_GROUP_SIZES)}")
    targets: list[tuple[nn.Module, str, str]] = [
        (layer, name, f"layers.{i}.{name}") for i, layer in enumerate(model.decoder_layers()) for name in _LAYER_NAMES
    ]
    if model.lm_head is not None:
        targets.append((model, "lm_head", "lm_head"))
    widths = sorted({getattr(mod, name).weight.shape[1] for mod, name, _ in targets})
    if all(w % group_size for w in widths):
        fits = [g for g in INT4_GROUP_SIZES if any(w % g == 0 for w in widths)]
        raise ValueError(f"int4 group size {group_size} divides none of the linear layers' input widths {widths}; "
                         f"group sizes that fit some: {fits or 'none'}")
    before = linear_weight_bytes(model)
    skipped = []
    for mod, name, label in targets:
        weight = getattr(mod, name).weight
        if weight.shape[1] % group_size:
            skipped.append(label)
            continue
        setattr(mod, name, Int4Linear(weight, group_size))
    after = linear_weight_bytes(model)
    if skipped:
        log.warning("int4: group size %d does not divide the input width of %d layer(s), left unquantised: %s",
                    group_size, len(skipped), ", ".join(skipped))
    log.info("int4 weight-only quantisation (group %d): linear weights %.1f MiB -> %.1f MiB", group_size,
             before / 2**20, after / 2**20)
    return QuantReport(method="int4", bytes_before=before, bytes_after=after, skipped=tuple(skipped))
