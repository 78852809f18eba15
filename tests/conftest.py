"""Shared fixtures: the real cluster for tests marked ``cluster``.

By default the session brings up a local control plane of its own: state in ``.cache/test-cluster`` (never the
demo's ``.cache/cluster``) and ports shifted by ``INFLEET_CLUSTER_PORT_OFFSET + 50`` (or exactly
``INFLEET_TEST_PORT_OFFSET``), so whatever a user left in their local cluster (`make demo`) cannot change a test's
outcome, and the tests leave nothing in theirs. Each session starts it from a clean slate and deletes it at the
end (processes and state); with ``INFLEET_KEEP_CLUSTER=1`` it is kept, and reused by the next session. To run the
same tests against kind or another cluster, set ``INFLEET_TEST_KUBECONFIG`` to its kubeconfig. A plain
``KUBECONFIG`` is deliberately ignored: a shell pointed at production must never receive test objects by accident.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from infleet_devcluster.cluster import LocalCluster

REPO = Path(__file__).resolve().parents[1]

# In CI property tests draw the same examples every run: a failure there is a regression, not a new random draw
# (locally they stay random and keep looking for counterexamples).
hypothesis_settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")
TEST_STATE_DIR = REPO / ".cache" / "test-cluster"
TEST_OFFSET_SHIFT = 50  # the user's clusters use multiples of 100 by convention; the tests' sits in between


def session_port_offset() -> int:
    explicit = os.environ.get("INFLEET_TEST_PORT_OFFSET")
    if explicit:
        return int(explicit)
    return int(os.environ.get("INFLEET_CLUSTER_PORT_OFFSET", "0")) + TEST_OFFSET_SHIFT


@dataclass
class TestCluster:
    """What cluster tests get: a kubeconfig, the pinned binaries, and a kubectl shortcut."""

    __test__ = False  # not a test class, despite the name

    kubeconfig: Path
    local: LocalCluster

    def binary(self, name: str) -> Path:
        return self.local.binary(name)

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.binary("kubectl")), "--kubeconfig", str(self.kubeconfig), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
        return res


@pytest.fixture(scope="session")
def cluster() -> Iterator[TestCluster]:
    local = LocalCluster(TEST_STATE_DIR, port_offset=session_port_offset())
    external = os.environ.get("INFLEET_TEST_KUBECONFIG")
    if external:
        yield TestCluster(Path(external), local)
        return
    keep = bool(os.environ.get("INFLEET_KEEP_CLUSTER"))
    if not (keep and local.is_running()):
        local.delete()  # a clean slate: nothing from an earlier (perhaps interrupted) session
    local.up()
    try:
        yield TestCluster(local.layout.kubeconfig, local)
    finally:
        if not keep:
            local.delete()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cluster tests run last, so a broken cluster can't hide unit-test results behind its errors."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is not None)
