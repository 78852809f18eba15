"""prometheus_rule_for: the operator's one call to get a deployment's SLO PrometheusRule from the raw object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.slo import bucket_for_target, prometheus_rule_for

REPO = Path(__file__).resolve().parents[3]


def example() -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((REPO / "examples" / "small-cpu-model.yaml").read_text())
    obj["metadata"].update(namespace="team-a", uid="1234-abcd")
    return obj


def test_rule_from_the_example_deployment() -> None:
    obj = example()
    rule = prometheus_rule_for(obj)
    assert rule["metadata"]["name"] == f"infleet-slo-{obj['metadata']['name']}"
    assert rule["metadata"]["namespace"] == "team-a"
    (owner,) = rule["metadata"]["ownerReferences"]
    assert owner["uid"] == "1234-abcd" and owner["kind"] == "InferenceDeployment" and owner["controller"] is True
    slos = {r["labels"]["slo"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert slos == {"p99", "ttft"}
    p99_s = obj["spec"]["slo"]["p99LatencyMs"] / 1000
    assert f'le=~"{bucket_for_target(p99_s).le_regex}"' in rule["spec"]["groups"][0]["rules"][0]["expr"]


def test_without_ttft_only_latency_alerts() -> None:
    obj = example()
    del obj["spec"]["slo"]["ttftP99Ms"]
    rule = prometheus_rule_for(obj)
    assert {r["labels"]["slo"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r} == {"p99"}


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda o: o["metadata"].pop("uid"), "metadata.uid"),
    (lambda o: o["spec"]["slo"].pop("p99LatencyMs"), "p99LatencyMs"),
    (lambda o: o["spec"]["slo"].update(p99LatencyMs="fast"), "p99LatencyMs"),
    (lambda o: o["spec"]["slo"].update(ttftP99Ms=True), "ttftP99Ms"),
    (lambda o: o["spec"]["slo"].update(p99LatencyMs=120_000), "largest histogram bucket"),
])
def test_bad_objects_are_refused_with_the_field_named(mutate: Any, match: str) -> None:
    obj = copy.deepcopy(example())
    mutate(obj)
    with pytest.raises(ValueError, match=match):
        prometheus_rule_for(obj)
