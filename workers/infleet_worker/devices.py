"""Choosing the accelerator: `cuda`, `cpu`, `neuron` (AWS Inferentia/Trainium via torch-neuronx) or `xla`
(TPU via torch_xla), by flag or detected. A backend whose library is absent fails here, at start-up, with a
message naming the package, instead of deep inside the first request.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

import torch

DEVICE_CHOICES = ("auto", "cuda", "cpu", "neuron", "xla")


class DeviceUnavailableError(RuntimeError):
    """The requested device family cannot be used on this machine."""


@dataclass(frozen=True)
class DeviceSpec:
    family: str  # cuda | cpu | neuron | xla
    device: torch.device
    dtype: torch.dtype

    @property
    def supports_cuda_graphs(self) -> bool:
        return self.family == "cuda"


def _xla_device(family: str, package: str) -> torch.device:
    try:
        if family == "neuron":
            importlib.import_module("torch_neuronx")
        xm = importlib.import_module("torch_xla.core.xla_model")
    except ImportError as exc:
        raise DeviceUnavailableError(
            f"device {family!r} needs the {package!r} package, which is not installed in this image "
            f"({exc}); use the {family} image or pass --device cpu"
        ) from exc
    dev = xm.xla_device()
    assert isinstance(dev, torch.device)
    return dev


def _detect() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if importlib.util.find_spec("torch_neuronx") is not None:
        return "neuron"
    if importlib.util.find_spec("torch_xla") is not None:
        return "xla"
    return "cpu"


def resolve_device(name: str = "auto", dtype: str = "auto") -> DeviceSpec:
    if name not in DEVICE_CHOICES:
        raise DeviceUnavailableError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    family = _detect() if name == "auto" else name
    if family == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError("device 'cuda' requested but torch sees no CUDA device "
                                         f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        device = torch.device("cuda", torch.cuda.current_device())
    elif family == "cpu":
        device = torch.device("cpu")
    elif family == "neuron":
        device = _xla_device("neuron", "torch-neuronx")
    else:
        device = _xla_device("xla", "torch_xla")
    return DeviceSpec(family, device, _dtype(family, dtype))


def _dtype(family: str, name: str) -> torch.dtype:
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name == "auto":
        # bf16 halves the bytes read per token on accelerators; CPU keeps float32 (bf16 matmuls are slow there).
        return torch.float32 if family == "cpu" else torch.bfloat16
    try:
        return table[name]
    except KeyError:
        raise DeviceUnavailableError(f"unknown dtype {name!r}; choose auto, {', '.join(table)}") from None


def cuda_identity(spec: DeviceSpec) -> tuple[list[int], list[str | None]]:
    """The CUDA device index the worker runs on and its UUID (NVML numbers every GPU on the node, CUDA only the
    visible ones, so the UUID is what matches the two); empty for other families."""
    if spec.family != "cuda" or spec.device.index is None:
        return [], []
    uuid = getattr(torch.cuda.get_device_properties(spec.device.index), "uuid", None)
    return [spec.device.index], [str(uuid) if uuid is not None else None]
