"""The Grafana dashboards: current with their generator, well formed, valid against Grafana's published schema,
and querying only the names in docs/metrics.md (or the SLO records infleet.slo writes)."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import pytest
from jsonschema import Draft7Validator  # type: ignore[import-untyped]

from tests.unit.chart import grafana_schema
from tests.unit.chart.chart_helpers import CHART, REPO

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))
PROMQL_FUNCS = {"sum", "rate", "increase", "histogram_quantile", "max", "count", "vector", "avg_over_time", "avg", "by",
                "on", "or", "and", "bool", "label_values", "without", "ignoring", "group_left"}


def load(path: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in d["panels"] if p["type"] != "row"]


def queries(d: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(d) for t in p["targets"]]


def test_three_dashboards_shipped() -> None:
    assert {p.stem for p in DASHBOARDS} == {"fleet-overview", "deployment-slo", "operator"}


def test_dashboard_files_are_current() -> None:
    spec = importlib.util.spec_from_file_location("infleet_chart_dashboards", CHART / "hack" / "dashboards.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for path in DASHBOARDS:
        assert path.read_text() == gen.render(path.stem), "regenerate: python charts/infleet/hack/dashboards.py"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_structure(path: Any) -> None:
    d = load(path)
    assert d["uid"].startswith("infleet-") and d["title"].startswith("infleet / ")
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps another panel"
                cells.add((x, y))
    for p in panels(d):
        assert p["title"] and p.get("description"), "every panel says what it shows"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
    names = [v["name"] for v in d["templating"]["list"]]
    assert names[0] == "datasource"
    used = {m for q in queries(d) for m in re.findall(r"\$(\w+)", q)} - {"__rate_interval"}
    assert used <= set(names), f"undefined variables {used - set(names)}"


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # drop selectors
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # drop ranges
    expr = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # drop label lists
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {t for t in tokens if t not in PROMQL_FUNCS and not re.fullmatch(r"e\d*", t)}


def test_queries_use_only_contract_names() -> None:
    text = (REPO / "docs" / "metrics.md").read_text()
    contract = set(re.findall(r"`(infleet_[a-z_]+)`", text))
    allowed = contract | {"infleet:slo_objective"} | {f"infleet:slo_latency_error_ratio:rate{w}" for w in
                                                     ("5m", "30m", "1h", "2h", "6h", "1d", "3d", "30d")}
    seen: set[str] = set()
    for path in DASHBOARDS:
        for q in queries(load(path)):
            for name in _metric_names(q):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in allowed or base in allowed, f"{path.name}: {name!r} is not in docs/metrics.md"
                seen.add(name)
    assert len(seen) > 10, "the name extraction found too little to be trusted"


def test_metric_name_extraction_works() -> None:
    q = ('histogram_quantile(0.99, sum by (le) (rate(infleet_worker_request_latency_seconds_bucket'
         '{namespace="$namespace"}[$__rate_interval]))) / on (namespace) vector(1e6)')
    assert _metric_names(q) == {"infleet_worker_request_latency_seconds_bucket"}


ENERGY = "infleet_deployment_energy_wh_per_million_tokens"
COST_PER_MTOK = "infleet_deployment_cost_usd_per_million_tokens"


@pytest.mark.parametrize(
    ("stem", "groupings"),
    [
        ("fleet-overview", [("pool", "source"), ("family", "source")]),
        ("deployment-slo", [("pool", "family", "source")]),
    ],
)
def test_energy_and_unit_cost_are_plotted_per_pool_and_family(stem: str, groupings: list[tuple[str, ...]]) -> None:
    d = load(CHART / "dashboards" / f"{stem}.json")
    for metric, unit in ((ENERGY, "watth"), (COST_PER_MTOK, "currencyUSD")):
        plotted = [p for p in panels(d) if any(metric in t["expr"] for t in p["targets"])]
        assert plotted, f"{stem}: no panel plots {metric}"
        assert all(p["fieldConfig"]["defaults"]["unit"] == unit for p in plotted)
        for labels in groupings:
            assert any(
                all(re.search(rf"by \([^)]*\b{label}\b", t["expr"]) for label in labels)
                and all(f"{{{{{label}}}}}" in t["legendFormat"] for label in labels)
                for p in plotted
                for t in p["targets"]
            ), f"{stem}: {metric} is not grouped and labelled by {labels}"
        if stem == "deployment-slo":
            assert all('deployment="$deployment"' in t["expr"] for p in plotted for t in p["targets"])


def test_recording_rule_names_match_slo_module() -> None:
    from infleet.slo import BURN_WINDOWS, error_ratio_record
    from infleet.slo.burnrate import BUDGET_WINDOW, OBJECTIVE_RECORD

    text = "".join(p.read_text() for p in DASHBOARDS)
    assert OBJECTIVE_RECORD in text and error_ratio_record(BUDGET_WINDOW) in text
    assert error_ratio_record(BURN_WINDOWS[0].long) in text


@pytest.fixture(scope="module")
def grafana() -> dict[str, dict[str, Any]]:
    try:
        return grafana_schema.schemas()
    except grafana_schema.UnavailableError as exc:
        pytest.skip(f"Grafana's published schema is not available here: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_valid_against_grafana_schema(grafana: dict[str, dict[str, Any]], path: Any) -> None:
    d = load(path)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in Draft7Validator(grafana["dashboard"]).iter_errors(d)]
    for p in panels(d):
        assert p["type"] in grafana_schema.PANEL_TYPES, f"no schema check for panel type {p['type']}"
        for part, value in (("options", p["options"]), ("fieldConfig", p["fieldConfig"]["defaults"].get("custom"))):
            if value is not None:
                errors += [f"{p['title']} {part} {list(e.absolute_path)}: {e.message}"
                           for e in Draft7Validator(grafana[f"{p['type']}.{part}"]).iter_errors(value)]
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_grafana_schema_check_is_real(grafana: dict[str, dict[str, Any]]) -> None:
    """An unknown key or a wrong type is caught, so a pass means something."""
    d = load(DASHBOARDS[0])
    d["panels"][0]["gridPos"]["w"] = "wide"
    d["bogus"] = 1
    messages = [e.message for e in Draft7Validator(grafana["dashboard"]).iter_errors(d)]
    assert any("bogus" in m for m in messages) and any("'wide'" in m for m in messages)

