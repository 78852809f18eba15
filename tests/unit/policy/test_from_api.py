"""The manifest adapter: profiles give capacity, looser-than-SLO profiles give none, restrictions are honoured."""

from __future__ import annotations

from pathlib import Path

from infleet.api import AcceleratorPool, InferenceDeployment, load_manifests
from infleet.policy import place
from infleet.policy.from_api import placement_request

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def load() -> tuple[list[AcceleratorPool], dict[str, InferenceDeployment]]:
    files = [f for f in sorted(EXAMPLES.glob("*.yaml")) if "apiVersion: infleet.io/" in f.read_text()]
    ms = [m for f in files for m in load_manifests(f)]
    pools = [m for m in ms if isinstance(m, AcceleratorPool)]
    deps = {m.metadata.name or "": m for m in ms if isinstance(m, InferenceDeployment)}
    return pools, deps


def test_capacity_from_profiles_and_slo_bound() -> None:
    pools, deps = load()
    req = placement_request(deps["chat-llm"], pools)
    caps = {o.pool: o.replica_capacity_rps for o in req.offers}
    # chat-llm's SLO is p99 1500 ms: H100 (profiled at 1500 ms) qualifies, L4 (2500 ms) cannot promise it
    assert caps["h100-spot"] > 0
    assert caps["l4-spot"] == 0
    assert "cpu-spot" not in caps  # the model has no CPU build
    plan = place(req)
    assert plan.status == "ok"
    assert not {p for p in plan.replicas if caps[p] == 0}


def test_pool_restrictions_are_honoured_unless_asked_not_to() -> None:
    pools, deps = load()
    dep = deps["small-cpu-model"]
    assert {o.pool for o in placement_request(dep, pools).offers} == {"cpu-spot", "cpu-on-demand"}
    wider = {o.pool for o in placement_request(dep, pools, honour_pool_restrictions=False).offers}
    assert "l4-spot" in wider
