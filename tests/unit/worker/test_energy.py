"""Energy telemetry: RAPL zones found and summed from a powercap tree (a fake one written here: the thin seam is
the tree's root), counter wraps folded in, unreadable or absent counters reported as not measurable with a
reason and no joule series, and the real machine's answer either way."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from infleet_worker.energy import EnergyMeter, NvmlGpu, discover_rapl, meter_for_device
from infleet_worker.metrics import WorkerMetrics

MAX_UJ = 262_143_328_850  # a typical package zone's max_energy_range_uj


def zone(root: Path, dirname: str, name: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    path = root / dirname
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


def set_energy(path: Path, energy_uj: int) -> None:
    (path / "energy_uj").write_text(f"{energy_uj}\n")


def test_packages_and_dram_are_counted_and_parts_of_them_are_not(tmp_path: Path) -> None:
    pkg0 = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    zone(tmp_path, "intel-rapl:0:0", "core", 500)  # inside package-0's figure
    dram0 = zone(tmp_path, "intel-rapl:0:1", "dram", 10)
    pkg1 = zone(tmp_path, "intel-rapl:1", "package-1", 7)
    zone(tmp_path, "intel-rapl:2", "psys", 0)  # the whole platform: would double-count
    zones, reason = discover_rapl(tmp_path)
    assert reason is None
    assert sorted(z.device for z in zones) == ["cpu-dram-0", "cpu-package-0", "cpu-package-1"]
    meter = EnergyMeter(zones, None)
    assert meter.read().joules_by_device == {"cpu-package-0": 0.0, "cpu-dram-0": 0.0, "cpu-package-1": 0.0}
    set_energy(pkg0, 3_500_000)
    set_energy(dram0, 250_010)
    set_energy(pkg1, 1_000_007)
    assert meter.read().joules_by_device == {"cpu-package-0": 2.5, "cpu-dram-0": 0.25, "cpu-package-1": 1.0}


def test_counter_wrap_is_folded_into_the_total(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", MAX_UJ - 2_000_000)
    (z,), _ = discover_rapl(tmp_path)
    set_energy(pkg, MAX_UJ - 500_000)
    assert z.read_joules() == pytest.approx(1.5)
    set_energy(pkg, 1_499_999)  # wrapped: 500_000 to the top, 1 for the wrap to 0, then 1_499_999
    assert z.read_joules() == pytest.approx(1.5 + 2.0)
    set_energy(pkg, 1_499_999)  # no change: no energy, no phantom wrap
    assert z.read_joules() == pytest.approx(3.5)


def test_unmeasurable_trees_give_a_reason(tmp_path: Path) -> None:
    zones, reason = discover_rapl(tmp_path / "absent")
    assert not zones and reason is not None and "no RAPL powercap tree" in reason
    zones, reason = discover_rapl(tmp_path)
    assert not zones and reason is not None and "no RAPL package zones" in reason
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (pkg / "energy_uj").unlink()
    (pkg / "energy_uj").mkdir()  # reading fails as an unreadable (root-only) counter would
    zones, reason = discover_rapl(tmp_path)
    assert not zones and reason is not None and "not readable" in reason and "root-only" in reason


def scrape(metrics: WorkerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_metrics_export_joules_only_when_measurable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = WorkerMetrics("m")
    assert 'infleet_worker_energy_measurable{model="m"} 0.0' in scrape(metrics)  # device not known yet
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 100)
    meter = meter_for_device("cpu", powercap_root=tmp_path)
    metrics.bind_energy(meter)
    set_energy(pkg, 4_000_100)
    text = scrape(metrics)
    assert 'infleet_worker_energy_measurable{model="m"} 1.0' in text
    assert 'infleet_worker_energy_joules_total{device="cpu-package-0",model="m"} 4.0' in text
    assert "# TYPE infleet_worker_energy_joules_total counter" in text

    with caplog.at_level(logging.WARNING):
        absent = meter_for_device("cpu", powercap_root=tmp_path / "none")
    assert caplog.text.count("energy: not measurable") == 1
    other = WorkerMetrics("m")
    other.bind_energy(absent)
    text = scrape(other)
    assert 'infleet_worker_energy_measurable{model="m"} 0.0' in text
    assert "infleet_worker_energy_joules" not in text  # no number is invented
    assert "no energy counter adapter" in str(meter_for_device("neuron").reason)


class FakeNvml:
    """Seam for NVML's one call the meter uses (millijoules since driver load)."""

    def __init__(self) -> None:
        self.mj = 5_000_000

    def nvmlDeviceGetTotalEnergyConsumption(self, _handle: object) -> int:  # noqa: N802 - NVML's name
        return self.mj


def test_nvml_source_reports_joules_since_start() -> None:
    nvml = FakeNvml()
    gpu = NvmlGpu(nvml, object(), "cuda-0")
    nvml.mj += 12_500
    assert gpu.read_joules() == 12.5

    def fake_discover(indices: Sequence[int], uuids: Sequence[str | None]) -> tuple[list[NvmlGpu], str | None]:
        assert list(indices) == [0] and list(uuids) == ["GPU-abc"]
        return [gpu], None

    meter = meter_for_device("cuda", [0], ["GPU-abc"], nvml=fake_discover)
    assert meter.measurable and meter.read().joules_by_device == {"cuda-0": 12.5}


def test_this_machine_either_measures_or_says_why() -> None:
    meter = meter_for_device("cpu")
    if meter.measurable:
        first = sum(meter.read().joules_by_device.values())
        sum(i * i for i in range(2_000_000))  # some work
        assert sum(meter.read().joules_by_device.values()) >= first
    else:
        assert meter.reason is not None and "RAPL" in meter.reason
