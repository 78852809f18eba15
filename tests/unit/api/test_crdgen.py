"""The committed CRDs equal the generated ones, are structural, describe every field, and carry every rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.api import crdgen
from infleet.api._base import Immutable, KubeModel
from infleet.api.cli import register
from infleet.api.v1alpha1 import AcceleratorPool, InferenceDeployment

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "crds"


def _walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def _committed(name: str) -> dict[str, Any]:
    return yaml.safe_load((CRD_DIR / name).read_text())  # type: ignore[no-any-return]


@pytest.fixture(params=sorted(crdgen.rendered_files()))
def crd_file(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_committed_crds_equal_generated(crd_file: str) -> None:
    expected = crdgen.rendered_files()[crd_file]
    actual = (CRD_DIR / crd_file).read_text()
    assert actual == expected, f"crds/{crd_file} is stale: run `infleet crds --write crds`"


def test_stale_detects_an_edited_file(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    assert crdgen.stale(tmp_path) == []
    victim = tmp_path / crdgen.crd_filename("acceleratorpools")
    victim.write_text(victim.read_text().replace("accpool", "pool"))
    assert crdgen.stale(tmp_path) == [victim.name]
    (tmp_path / crdgen.crd_filename("inferencedeployments")).unlink()
    assert sorted(crdgen.stale(tmp_path)) == sorted([victim.name, crdgen.crd_filename("inferencedeployments")])


def test_every_property_has_a_description(crd_file: str) -> None:
    schema = _committed(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    # metadata is the apiserver's own ObjectMeta: a CRD may not describe it.
    missing = [
        path
        for path, node in _walk(schema)
        if path not in ("", ".metadata") and not path.endswith(("[]", "{}")) and not node.get("description")
    ]
    assert missing == []
    assert schema["description"]


def test_schema_is_structural(crd_file: str) -> None:
    schema = _committed(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(schema)
    for forbidden in ("$ref", "anyOf", "oneOf", "allOf", "nullable: true"):
        assert forbidden not in text
    for path, node in _walk(schema):
        # Every node has a type unless it is an int-or-string quantity.
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            # Only pass-through maps (a core/v1 EnvVarSource) keep unknown fields.
            assert path.endswith(".valueFrom"), path


def test_strings_and_lists_are_bounded_for_the_cel_cost_estimator(crd_file: str) -> None:
    schema = _committed(crd_file)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unbounded = []
    for path, node in _walk(schema["properties"]["spec"], ".spec"):
        if node.get("type") == "array" and "maxItems" not in node:
            unbounded.append(path)
        if node.get("type") == "string" and "maxLength" not in node and "enum" not in node:
            unbounded.append(path)
    assert unbounded == []


def _rules_in_schema(schema: dict[str, Any]) -> list[tuple[str, str]]:
    return [(r["rule"], r["message"]) for _, node in _walk(schema) for r in node.get("x-kubernetes-validations", [])]


def _model_classes(root: type[KubeModel]) -> set[type[KubeModel]]:
    seen: set[type[KubeModel]] = set()
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for field in cls.model_fields.values():
            stack: list[Any] = [field.annotation]
            while stack:
                tp = stack.pop()
                if isinstance(tp, type) and issubclass(tp, KubeModel):
                    todo.append(tp)
                stack.extend(getattr(tp, "__args__", ()))
    return seen


@pytest.mark.parametrize(
    ("root", "plural"), [(InferenceDeployment, "inferencedeployments"), (AcceleratorPool, "acceleratorpools")]
)
def test_every_model_rule_and_immutable_field_is_in_the_crd(root: type[KubeModel], plural: str) -> None:
    crd = _committed(crdgen.crd_filename(plural))
    in_crd = _rules_in_schema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    expected = [(r.cel, r.message) for cls in _model_classes(root) for r in cls.cel_rules]
    expected += [
        (m.cel, m.message)
        for cls in _model_classes(root)
        for f in cls.model_fields.values()
        for m in f.metadata
        if isinstance(m, Immutable)
    ]
    assert expected, "the models declare rules"
    assert sorted(in_crd) == sorted(expected)


def test_inference_deployment_crd_shape() -> None:
    crd = _committed("infleet.io_inferencedeployments.yaml")
    spec = crd["spec"]
    assert spec["group"] == "infleet.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == ["infd"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.scaling.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == [
        "Model",
        "Ready",
        "Replicas",
        "Pools",
        "Cost/h",
        "SLO",
        "Status",
        "Wh/Mtok",
        "$/Mtok",
        "Efficiency",
        "Age",
    ]
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    # Units live in the field names.
    assert "maxHourlyCostUSD" in props["cost"]["properties"]
    assert "p99LatencyMs" in props["slo"]["properties"]
    assert "memoryGiB" in props["model"]["properties"]
    assert set(props["model"]["properties"]["runtimes"]["properties"]) == {
        "nvidia-gpu",
        "aws-neuron",
        "google-tpu",
        "cpu",
    }
    # Optional sections default to their fully defaulted form, which the CEL rules that read them accept.
    assert props["scaling"]["default"]["minReplicas"] == 1
    assert props["cost"]["default"] == {}
    assert props["scaling"]["properties"]["minReplicas"]["default"] == 1
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "default" not in yaml.safe_dump(status), "status is written by the operator, never defaulted"
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_accelerator_pool_crd_shape() -> None:
    crd = _committed("infleet.io_acceleratorpools.yaml")
    spec = crd["spec"]
    assert spec["scope"] == "Cluster"
    assert spec["names"]["shortNames"] == ["accpool"]
    version = spec["versions"][0]
    assert version["subresources"] == {"status": {}}
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["accelerator"]["properties"]["family"]["enum"] == ["nvidia-gpu", "aws-neuron", "google-tpu", "cpu"]
    assert props["capacityType"]["enum"] == ["on-demand", "spot"]
    assert "pricePerDeviceHourUSD" in props
    assert "coldStartSeconds" in props


def test_generator_refuses_a_field_without_description() -> None:
    class Undocumented(KubeModel):
        count: int

    with pytest.raises(crdgen.SchemaError, match=r"Undocumented\.count needs a description"):
        crdgen.object_schema(Undocumented)


def test_cli_prints_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def run(*argv: str) -> int:
        args = parser.parse_args(["crds", *argv])
        return int(args.func(args))

    assert run() == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in printed] == [
        "inferencedeployments.infleet.io",
        "acceleratorpools.infleet.io",
    ]
    assert run("--check", str(tmp_path)) == 1
    assert run("--write", str(tmp_path)) == 0
    assert run("--check", str(tmp_path)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.rendered_files())
