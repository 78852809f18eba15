"""Writes values.schema.json: `python charts/infleet/hack/schema.py > charts/infleet/values.schema.json`.

Kept as Python so the schema stays readable; tests/unit/chart checks the JSON file is current. Every object
that is infleet's own rejects unknown keys; Kubernetes-typed values (resources, affinity, ...) are objects
checked by the API server.
"""

import json
import sys
from typing import Any


def obj(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": props, **extra}


STR = {"type": "string"}
BOOL = {"type": "boolean"}
K8S_OBJ = {"type": "object"}  # a Kubernetes type, validated by the API server
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h))+$"}
DNS_NAME = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
LABEL_KEY = {"type": "string",
             "pattern": "^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"}

SCHEMA: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "infleet chart values",
    **obj({
        "replicaCount": {"type": "integer", "minimum": 0},
        "image": obj({
            "repository": {"type": "string", "minLength": 1},
            "tag": STR,
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        }, required=["repository"]),
        "imagePullSecrets": {"type": "array", "items": obj({"name": STR}, required=["name"])},
        "nameOverride": STR,
        "fullnameOverride": STR,
        "watchNamespaces": {"type": "array", "items": DNS_NAME, "uniqueItems": True},
        "peering": obj({"standalone": BOOL, "name": DNS_NAME}),
        "operator": obj({
            "interval": {"type": "number", "exclusiveMinimum": 0},
            "fallbackAfterSeconds": {"type": ["number", "null"], "minimum": 0},
            "logFormat": {"enum": ["json", "text"]},
            "verbose": BOOL,
            "workerImage": obj({"repository": STR, "tag": STR}),
            "extraArgs": {"type": "array", "items": STR},
            "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        }),
        "crds": obj({"install": BOOL, "keep": BOOL}),
        "serviceAccount": obj({"create": BOOL, "name": STR, "annotations": STR_MAP}),
        "rbac": obj({"create": BOOL, "prometheusRules": BOOL}),
        "networkPolicy": obj({
            "enabled": BOOL,
            "namespaces": {"type": "array", "items": DNS_NAME, "uniqueItems": True},
            "metricsScraperLabels": STR_MAP,
            "extraFrom": {"type": "array", "items": K8S_OBJ},
        }),
        "metrics": obj({
            "enabled": BOOL,
            "port": PORT,
            "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "annotations": STR_MAP}),
        }),
        "healthPort": PORT,
        "resources": obj({"requests": K8S_OBJ, "limits": K8S_OBJ}),
        "podSecurityContext": K8S_OBJ,
        "securityContext": K8S_OBJ,
        "podAnnotations": STR_MAP,
        "podLabels": STR_MAP,
        "nodeSelector": STR_MAP,
        "tolerations": {"type": "array", "items": K8S_OBJ},
        "affinity": K8S_OBJ,
        "priorityClassName": STR,
        "podDisruptionBudget": obj({"enabled": BOOL, "minAvailable": {"type": ["integer", "string"]}}),
        "serviceMonitor": obj({"enabled": BOOL, "labels": STR_MAP, "interval": DURATION}),
        "podMonitor": obj({"enabled": BOOL, "labels": STR_MAP, "interval": DURATION,
                           "namespaceSelector": K8S_OBJ}),
        "prometheusRule": obj({"enabled": BOOL, "labels": STR_MAP, "operatorAlerts": BOOL}),
        "dashboards": obj({
            "enabled": BOOL,
            "namespace": STR,
            "label": LABEL_KEY,
            "labelValue": STR,
            "folder": STR,
            "annotations": STR_MAP,
        }),
        "gateway": obj({
            "enabled": BOOL,
            "replicaCount": {"type": "integer", "minimum": 0},
            "image": obj({
                "repository": {"type": "string", "minLength": 1},
                "tag": STR,
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            }, required=["repository"]),
            "port": PORT,
            "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "port": PORT,
                            "annotations": STR_MAP}),
            "maxQueue": {"type": "integer", "minimum": 0},
            "queueTimeoutSloMultiple": {"type": "number", "exclusiveMinimum": 0},
            "coldStartTimeoutSeconds": {"type": "number", "exclusiveMinimum": 0},
            "maxInFlightPerReplica": {"type": "integer", "minimum": 1},
            "maxAttempts": {"type": "integer", "minimum": 1},
            "prefixAffinityChars": {"type": "integer", "minimum": 0},
            "extraArgs": {"type": "array", "items": STR},
            "extraEnv": {"type": "array", "items": {"type": "object", "required": ["name"]}},
            "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
            "serviceAccount": obj({"create": BOOL, "name": STR}),
            "podDisruptionBudget": obj({"enabled": BOOL, "minAvailable": {"type": ["integer", "string"]}}),
            "resources": obj({"requests": K8S_OBJ, "limits": K8S_OBJ}),
            "podAnnotations": STR_MAP,
            "podLabels": STR_MAP,
            "nodeSelector": STR_MAP,
            "tolerations": {"type": "array", "items": K8S_OBJ},
            "affinity": K8S_OBJ,
        }),
        "examplePools": obj({
            "enabled": BOOL,
            "pools": {"type": "array", "items": obj({"name": DNS_NAME, "spec": K8S_OBJ}, required=["name", "spec"])},
        }),
    }),
}

if __name__ == "__main__":
    json.dump(SCHEMA, sys.stdout, indent=2)
    sys.stdout.write("\n")
