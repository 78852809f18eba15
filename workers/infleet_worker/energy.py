"""Energy the worker's device used, from the hardware's own counters: RAPL powercap zones on Linux CPUs
(`/sys/class/powercap/intel-rapl:*`, which AMD's driver exposes too) and NVML's total-energy counter on NVIDIA
GPUs (the `nvidia-ml-py` package, imported only when present).

Where neither can be read (no powercap tree, a counter only root may read, no NVML, a GPU older than Volta), the
meter says so: `measurable` is False, the reason is logged once, and no joule figure is exported. Nothing is
estimated here; estimates from pool power figures are the operator's, and are labelled as such there.

What is measured is the device's, not the process's: a RAPL package counter includes every process on that
socket, NVML's every process on that GPU. In a pod that owns its accelerator (the usual GPU case) that is the
worker's; on a shared CPU node it is an upper bound.

Counters wrap (RAPL at `max_energy_range_uj`, ~262 kJ, i.e. minutes at a few hundred watts): each source keeps a
running total from the differences of successive reads, adding the range back on a wrap, and `EnergyMeter` reads
them on a background thread often enough that at most one wrap happens between reads.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
POLL_INTERVAL_S = 10.0  # well under the fastest RAPL wrap (~262 kJ at 1 kW = 4.4 minutes)


class EnergySource(Protocol):
    device: str  # the `device` label: "cpu-package-0", "cpu-dram-0", "cuda-0"

    def read_joules(self) -> float:
        """Joules since this source was created (monotonic; wraps of the hardware counter folded in)."""
        ...


class RaplZone:
    """One powercap zone: a package (or its DRAM domain), energy in microjoules, wrapping at its max range."""

    def __init__(self, path: Path, device: str) -> None:
        self.path = path
        self.device = device
        self.max_range_uj = int((path / "max_energy_range_uj").read_text())
        self._last = self._raw()
        self._total_uj = 0
        self._lock = threading.Lock()

    def _raw(self) -> int:
        return int((self.path / "energy_uj").read_text())

    def read_joules(self) -> float:
        with self._lock:
            raw = self._raw()
            delta = raw - self._last
            if delta < 0:  # the counter wrapped past max_energy_range_uj back to 0
                delta += self.max_range_uj + 1
            self._total_uj += delta
            self._last = raw
            return self._total_uj / 1e6


def _zone_label(path: Path) -> str | None:
    """Packages and their DRAM domains are counted (DRAM is outside the package's figure); core/uncore are parts
    of the package, and psys (the whole platform) would double-count, so both are left out."""
    try:
        name = (path / "name").read_text().strip()
    except OSError:
        return None
    parts = path.name.split(":")
    if len(parts) == 2 and name.startswith("package-"):
        return f"cpu-{name}"
    if len(parts) == 3 and name == "dram":
        return f"cpu-dram-{parts[1]}"
    return None


def discover_rapl(root: Path = POWERCAP_ROOT) -> tuple[list[RaplZone], str | None]:
    """The readable RAPL zones, or none and the reason."""
    if not root.is_dir():
        return [], (f"no RAPL powercap tree at {root} (not Linux on an Intel/AMD CPU, or a VM or container "
                    "without it)")
    paths = sorted(p for p in root.glob("intel-rapl:*") if p.is_dir())
    labelled = [(p, label) for p in paths if (label := _zone_label(p)) is not None]
    if not labelled:
        return [], f"no RAPL package zones under {root}"
    zones: list[RaplZone] = []
    for path, label in labelled:
        try:
            zones.append(RaplZone(path, label))
        except (OSError, ValueError) as exc:
            return [], (f"RAPL counter {path / 'energy_uj'} is not readable ({exc}); since Linux 5.10 it is "
                        "root-only: run the worker with read access to it (e.g. a udev rule or an init "
                        "container that makes it world-readable)")
    return zones, None


class NvmlGpu:
    """NVML's total energy counter of one GPU (millijoules since the driver loaded; Volta and newer)."""

    def __init__(self, nvml: Any, handle: Any, device: str) -> None:
        self.nvml, self.handle, self.device = nvml, handle, device
        self._start_mj = int(nvml.nvmlDeviceGetTotalEnergyConsumption(handle))

    def read_joules(self) -> float:
        return (int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)) - self._start_mj) / 1e3


def discover_nvml(cuda_indices: Sequence[int], uuids: Sequence[str | None] = ()) -> tuple[list[NvmlGpu], str | None]:
    """NVML sources for the CUDA devices the worker uses (matched by UUID when torch knows it: NVML numbers every
    GPU on the node, CUDA only the visible ones)."""
    try:
        pynvml: Any = importlib.import_module("pynvml")  # nvidia-ml-py; untyped
    except ImportError:
        return [], "the nvidia-ml-py package (NVML) is not installed, so GPU energy cannot be read"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], f"NVML did not initialise ({exc})"
    gpus: list[NvmlGpu] = []
    for pos, index in enumerate(cuda_indices):
        uuid = uuids[pos] if pos < len(uuids) else None
        try:
            if uuid:
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append(NvmlGpu(pynvml, handle, f"cuda-{index}"))
        except pynvml.NVMLError as exc:
            return [], f"NVML has no energy counter for cuda:{index} ({exc}; it needs a Volta or newer GPU)"
    return gpus, None


@dataclass(frozen=True, kw_only=True)
class EnergyReading:
    joules_by_device: dict[str, float]


class EnergyMeter:
    """The sources of one worker, read on a background thread (wraps) and at scrape time."""

    def __init__(self, sources: Sequence[EnergySource], reason: str | None) -> None:
        self.sources = list(sources)
        self.reason = reason if not self.sources else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def measurable(self) -> bool:
        return bool(self.sources)

    def read(self) -> EnergyReading:
        return EnergyReading(joules_by_device={s.device: s.read_joules() for s in self.sources})

    def start(self, interval_s: float = POLL_INTERVAL_S) -> None:
        if not self.sources or self._thread is not None:
            return

        def poll() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.read()
                except (OSError, ValueError) as exc:
                    log.warning("energy counter read failed: %s", exc)

        self._thread = threading.Thread(target=poll, name="infleet-energy", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def meter_for_device(family: str, cuda_indices: Sequence[int] = (), uuids: Sequence[str | None] = (),
                     *, powercap_root: Path = POWERCAP_ROOT,
                     nvml: Callable[[Sequence[int], Sequence[str | None]], tuple[list[NvmlGpu], str | None]]
                     = discover_nvml) -> EnergyMeter:
    """RAPL for a CPU worker, NVML for a CUDA one; other families (neuron, xla) have no adapter here yet. The reason
    for an unmeasurable device is logged once, here."""
    sources: list[EnergySource]
    if family == "cpu":
        zones, reason = discover_rapl(powercap_root)
        sources = list(zones)
    elif family == "cuda":
        gpus, reason = nvml(cuda_indices, uuids)
        sources = list(gpus)
    else:
        sources, reason = [], f"no energy counter adapter for device family {family!r}"
    meter = EnergyMeter(sources, reason)
    if meter.measurable:
        log.info("energy: measuring %s", ", ".join(s.device for s in meter.sources))
    else:
        log.warning("energy: not measurable on this %s worker: %s", family, meter.reason)
    return meter
