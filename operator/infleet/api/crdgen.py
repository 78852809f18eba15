"""Generate the CustomResourceDefinitions in ``crds/`` from the pydantic models in `infleet.api.v1alpha1`.

The models are the single source of truth; this walks their fields (rather than post-processing pydantic's
JSON Schema, which is full of ``$ref`` and ``anyOf`` nullable unions) and emits a *structural* schema: every
node has a type, every property a description, ``x-kubernetes-preserve-unknown-fields`` only on pass-through
maps, optional fields are simply not required. Bounds, enums, defaults and CEL rules come from the same field
declarations pydantic validates with, so the apiserver and the Python models accept the same objects.
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from infleet.api._base import Immutable, KubeModel, ListType
from infleet.api.v1alpha1 import (
    ACCELERATOR_POOL_KIND,
    ACCELERATOR_POOL_PLURAL,
    ACCELERATOR_POOL_SHORT_NAMES,
    ACCELERATOR_POOL_SINGULAR,
    CATEGORIES,
    GROUP,
    INFERENCE_DEPLOYMENT_KIND,
    INFERENCE_DEPLOYMENT_PLURAL,
    INFERENCE_DEPLOYMENT_SHORT_NAMES,
    INFERENCE_DEPLOYMENT_SINGULAR,
    VERSION,
    AcceleratorPool,
    InferenceDeployment,
)

HEADER = "# Generated from infleet.api.v1alpha1 by `infleet crds --write crds`. Do not edit by hand.\n"

Schema = dict[str, Any]


class SchemaError(TypeError):
    """A model field the generator cannot express as a structural schema (a bug in the models)."""


def crd_filename(plural: str) -> str:
    return f"{GROUP}_{plural}.yaml"


def _apply_metadata(schema: Schema, metadata: Sequence[Any]) -> None:
    kind = schema.get("type")
    for item in metadata:
        if isinstance(item, FieldInfo):
            _apply_metadata(schema, item.metadata)
        elif isinstance(item, at.Gt):
            schema["minimum"] = item.gt
            schema["exclusiveMinimum"] = True
        elif isinstance(item, at.Ge):
            schema["minimum"] = item.ge
        elif isinstance(item, at.Lt):
            schema["maximum"] = item.lt
            schema["exclusiveMaximum"] = True
        elif isinstance(item, at.Le):
            schema["maximum"] = item.le
        elif isinstance(item, at.MinLen | at.MaxLen):
            bound = "min" if isinstance(item, at.MinLen) else "max"
            value = item.min_length if isinstance(item, at.MinLen) else item.max_length
            suffix = {"string": "Length", "array": "Items", "object": "Properties"}.get(str(kind))
            if suffix is None:
                raise SchemaError(f"length bound on a {kind} schema")
            schema[f"{bound}{suffix}"] = value
        elif isinstance(item, Immutable):
            schema.setdefault("x-kubernetes-validations", []).append({"rule": item.cel, "message": item.message})
        elif isinstance(item, ListType):
            schema["x-kubernetes-list-type"] = item.kind
            if item.map_keys:
                schema["x-kubernetes-list-map-keys"] = list(item.map_keys)
        # Anything else (AfterValidator, ...) is Python-only behaviour with a schema-level equivalent elsewhere.


def _type_schema(tp: Any, metadata: Sequence[Any], *, in_status: bool) -> Schema:
    origin = get_origin(tp)
    if origin is Annotated:
        inner, *extra = get_args(tp)
        return _type_schema(inner, [*extra, *metadata], in_status=in_status)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _type_schema(args[0], metadata, in_status=in_status)
        if set(args) == {int, str}:
            return {"x-kubernetes-int-or-string": True}
        raise SchemaError(f"union {tp!r} has no structural schema")
    schema: Schema
    if origin is Literal:
        values = list(get_args(tp))
        if not all(isinstance(v, str) for v in values):
            raise SchemaError(f"non-string Literal {tp!r}")
        schema = {"type": "string", "enum": values}
    elif tp is str:
        schema = {"type": "string"}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int:
        schema = {"type": "integer", "format": "int64"}
    elif tp is float:
        schema = {"type": "number"}
    elif tp is datetime:
        schema = {"type": "string", "format": "date-time"}
    elif origin is list:
        (item,) = get_args(tp)
        schema = {"type": "array", "items": _type_schema(item, [], in_status=in_status)}
    elif origin is dict:
        key, value = get_args(tp)
        if key is not str:
            raise SchemaError(f"map keys must be strings: {tp!r}")
        if value is Any:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        else:
            schema = {"type": "object", "additionalProperties": _type_schema(value, [], in_status=in_status)}
    elif isinstance(tp, type) and issubclass(tp, BaseModel):
        schema = object_schema(tp, in_status=in_status)
    else:
        raise SchemaError(f"no schema for {tp!r}")
    _apply_metadata(schema, metadata)
    return schema


def _default(field: FieldInfo) -> Any:
    """The schema default for a field, or None when the apiserver should not default it."""
    if field.default_factory is not None:
        factory = field.default_factory
        # An optional section that is all defaults defaults to its fully defaulted form, so CEL rules can read
        # its fields without has(). (The apiserver checks a default against the rules as written: a bare {}
        # would fail them, because nested defaults are not applied to the default itself.)
        if isinstance(factory, type) and issubclass(factory, KubeModel):
            return factory().to_dict()
        return None
    default = field.get_default()
    if isinstance(default, str | int | float | bool) and default is not None:
        return default
    return None


def object_schema(cls: type[BaseModel], *, in_status: bool = False) -> Schema:
    """The structural schema of one model class (recursively)."""
    properties: dict[str, Schema] = {}
    required: list[str] = []
    for name, field in cls.model_fields.items():
        key = field.alias or name
        if not field.description:
            raise SchemaError(f"{cls.__name__}.{name} needs a description (kubectl explain shows it)")
        if key == "metadata":
            # The apiserver owns ObjectMeta's schema and rejects anything here but name/generateName rules.
            properties[key] = {"type": "object"}
            continue
        child_status = in_status or key == "status"
        schema = {"description": field.description}
        schema.update(_type_schema(field.annotation, field.metadata, in_status=child_status))
        if field.is_required():
            required.append(key)
        elif not child_status:
            default = _default(field)
            if default is not None:
                schema["default"] = default
        properties[key] = schema
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    rules = getattr(cls, "cel_rules", ())
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r.cel, "message": r.message} for r in rules]
    return out


def _root_schema(cls: type[BaseModel]) -> Schema:
    schema = object_schema(cls)
    schema["description"] = " ".join((cls.__doc__ or "").split())
    props = schema["properties"]
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    }
    props["kind"] = {"type": "string", "description": "Kind is a string value representing the REST resource."}
    return schema


def _printer(name: str, type_: str, path: str, description: str, priority: int = 0) -> Schema:
    column: Schema = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


def _age() -> Schema:
    return _printer("Age", "date", ".metadata.creationTimestamp", "Time since creation.")


def inference_deployment_crd() -> Schema:
    return _crd(
        kind=INFERENCE_DEPLOYMENT_KIND,
        plural=INFERENCE_DEPLOYMENT_PLURAL,
        singular=INFERENCE_DEPLOYMENT_SINGULAR,
        short_names=INFERENCE_DEPLOYMENT_SHORT_NAMES,
        scope="Namespaced",
        model=InferenceDeployment,
        subresources={
            "status": {},
            "scale": {
                "specReplicasPath": ".spec.scaling.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
        columns=[
            _printer("Model", "string", ".spec.model.name", "Served model."),
            _printer("Ready", "integer", ".status.readyReplicas", "Ready serving replicas."),
            _printer("Replicas", "integer", ".status.replicas", "Serving replicas."),
            _printer("Pools", "string", ".status.poolsSummary", "Serving replicas per pool."),
            _printer("Cost/h", "number", ".status.costPerHourUSD", "Current cost per hour, USD."),
            _printer("SLO", "string", '.status.conditions[?(@.type=="SLOMet")].status', "Whether the SLO is met."),
            _printer("Status", "string", '.status.conditions[?(@.type=="Ready")].reason', "Why (not) ready.", 1),
            _printer("Wh/Mtok", "number", ".status.efficiency.whPerMillionTokens", "Energy per million tokens.", 1),
            _printer("$/Mtok", "number", ".status.efficiency.costPerMillionTokensUSD", "Cost per million tokens.", 1),
            _printer("Efficiency", "string", ".status.efficiency.source", "measured or estimated.", 1),
            _age(),
        ],
    )


def accelerator_pool_crd() -> Schema:
    return _crd(
        kind=ACCELERATOR_POOL_KIND,
        plural=ACCELERATOR_POOL_PLURAL,
        singular=ACCELERATOR_POOL_SINGULAR,
        short_names=ACCELERATOR_POOL_SHORT_NAMES,
        scope="Cluster",
        model=AcceleratorPool,
        subresources={"status": {}},
        columns=[
            _printer("Family", "string", ".spec.accelerator.family", "Accelerator family."),
            _printer("Product", "string", ".spec.accelerator.product", "Accelerator product."),
            _printer("Capacity", "string", ".spec.capacityType", "on-demand or spot."),
            _printer("$/dev-h", "number", ".spec.pricePerDeviceHourUSD", "Price per device-hour, USD."),
            _printer("Nodes", "integer", ".status.nodes", "Ready nodes."),
            _printer("Allocated", "integer", ".status.allocatedDevices", "Devices in use by infleet."),
            _printer("Allocatable", "integer", ".status.allocatableDevices", "Devices available."),
            _age(),
        ],
    )


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: Sequence[str],
    scope: str,
    model: type[BaseModel],
    subresources: Schema,
    columns: list[Schema],
) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "infleet", "app.kubernetes.io/part-of": "infleet"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": list(CATEGORIES),
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": _root_schema(model)},
                }
            ],
        },
    }


def all_crds() -> list[Schema]:
    return [inference_deployment_crd(), accelerator_pool_crd()]


def render(crd: Schema) -> str:
    """The CRD as the YAML committed in ``crds/`` (stable key order, header comment)."""
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120, allow_unicode=True)


def rendered_files() -> dict[str, str]:
    """File name -> content for every CRD."""
    return {crd_filename(crd["spec"]["names"]["plural"]): render(crd) for crd in all_crds()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(directory: Path) -> list[str]:
    """Names of CRD files in `directory` that are missing or differ from the generated output."""
    out = []
    for name, text in rendered_files().items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            out.append(name)
    return out
