"""Shared plumbing for the API models: Kubernetes-style field names and CEL rules mirrored in Python.

Every validation rule the apiserver enforces through ``x-kubernetes-validations`` is declared once, as a
:class:`Rule` on the model class: the CEL expression goes into the generated CRD, and the Python predicate next
to it makes ``pydantic`` reject the same manifests with the same message offline (``infleet.api.load_manifests``,
unit tests, the simulator). Tests run the same table of invalid manifests against both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator

# Words that keep a fixed spelling in JSON names, so units read as units: `maxHourlyCostUSD`, `memoryGiB`.
_FIXED_WORDS = {"usd": "USD", "gib": "GiB", "slo": "SLO", "id": "ID", "kwh": "KWh"}


def to_kube_name(snake: str) -> str:
    """``max_hourly_cost_usd`` -> ``maxHourlyCostUSD`` (lowerCamelCase, unit words kept as written)."""
    first, *rest = snake.split("_")
    return first + "".join(_FIXED_WORDS.get(word, word[:1].upper() + word[1:]) for word in rest)


@dataclass(frozen=True)
class Rule:
    """One validation rule, in CEL for the apiserver and in Python for everything offline.

    ``check`` receives the validated model instance and returns True when the object is valid.
    """

    cel: str
    message: str
    check: Callable[[Any], bool]


@dataclass(frozen=True)
class Immutable:
    """Marks a field that may not change on update (CEL transition rule ``self == oldSelf``)."""

    message: str

    @property
    def cel(self) -> str:
        return "self == oldSelf"


@dataclass(frozen=True)
class ListType:
    """``x-kubernetes-list-type`` for a list field: ``set`` (unique scalars) or ``map`` keyed by ``map_keys``."""

    kind: str
    map_keys: tuple[str, ...] = ()


LIST_SET = ListType("set")


class KubeModel(BaseModel):
    """Base of every API model: camelCase JSON, snake_case Python, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_kube_name,
        populate_by_name=True,
        extra="forbid",
        validate_default=False,
    )

    # CEL rules on this object (``self`` is this object); mirrored by `_check_rules` below.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> KubeModel:
        failed = [rule.message for rule in type(self).cel_rules if not rule.check(self)]
        if failed:
            raise ValueError("; ".join(failed))
        return self

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes JSON (camelCase, unset optional fields left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
