"""The rules through the real Prometheus tools: `promtool check rules` and `promtool test rules`.

CI installs Debian's `prometheus` package (which ships promtool); without it these tests skip and say so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from infleet.slo import burn_rate_alerts, recording_rules, rule_file
from infleet.slo.render import to_yaml

PROM_TESTS = Path(__file__).resolve().parents[3] / "tests" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install prometheus); CI installs it")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300, check=False)


@needs_promtool
@pytest.mark.parametrize(("p99", "ttft", "objective"), [(0.5, None, 0.99), (0.6, 0.25, 0.999), (60, 0.005, 0.95)])
def test_check_rules_accepts_generated_rules(tmp_path: Path, p99: float, ttft: float | None,
                                             objective: float) -> None:
    f = tmp_path / "rules.yaml"
    f.write_text(to_yaml(rule_file(burn_rate_alerts("team-a", "chat-7b", p99, ttft_target_s=ttft,
                                                    objective=objective))))
    g = tmp_path / "recording.yaml"
    g.write_text(to_yaml(recording_rules()))
    out = _promtool("check", "rules", str(f), str(g))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_promtool
def test_check_rules_catches_a_broken_rule(tmp_path: Path) -> None:
    """The check is real: a rule with broken PromQL is refused."""
    doc = rule_file(burn_rate_alerts("ns", "d", 0.5))
    doc["groups"][0]["rules"][0]["expr"] += " +"
    f = tmp_path / "broken.yaml"
    f.write_text(to_yaml(doc))
    out = _promtool("check", "rules", str(f))
    assert out.returncode != 0


@needs_promtool
@pytest.mark.slow
@pytest.mark.parametrize("test_file", sorted(p.name for p in PROM_TESTS.glob("*.test.yaml")))
def test_promtool_unit_tests(test_file: str) -> None:
    out = _promtool("test", "rules", str(PROM_TESTS / test_file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout
