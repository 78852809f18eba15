"""Pure translation between a Pod object and the local process that plays its container.

A pod the runner plays must have one container whose command is one the operator renders
(``infleet.controller.manifests`` through the runtime adapters):

- ``infleet-worker``: its arguments are kept, except three that only make sense on a real node: ``--device``
  becomes ``cpu`` (the accelerators are simulated), ``--model`` becomes ``tiny`` unless it names a checkpoint
  directory that exists on this machine (a test writes one and declares ``source: file:///...``; on ``tiny`` an int4
  pod gets ``--quantize-group-size 32``, which its layers fit), and ``--host``
  is the pod's loopback IP;
- ``python3 -m llama_cpp.server`` (the ``llama-cpp`` engine): run with this machine's Python (which has the
  ``llamacpp`` extra), the pod's arguments kept except ``--host`` (the pod's IP) and ``--n_threads`` /
  ``--n_threads_batch`` (the runner's threads per worker, not the pod's vCPUs). ``--model`` is kept: it must name a
  GGUF file that exists on this machine (a test writes one and declares ``source: file:///.../model.gguf``);
  otherwise the server exits and the pod shows it, as a real one would.
 Environment variables are resolved as the kubelet would (literal values,
``secretKeyRef``, ``configMapKeyRef``, ``fieldRef``); a missing Secret or key is the kubelet's
``CreateContainerConfigError``.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

WORKER_COMMAND = "infleet-worker"
LLAMACPP_MODULE = "llama_cpp.server"  # `python3 -m llama_cpp.server`: infleet.runtimes.llamacpp's command
DEFAULT_PORT = 8000
DEFAULT_GRACE_S = 30.0
RUN_PODS_LABEL = "infleet.dev/run-pods"
POOL_LABEL = "infleet.io/pool"
# What a local process needs from the runner's own environment (a container gets these from its image).
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV")

Pod = Mapping[str, Any]
# (kind "secret" | "configmap", namespace, name) -> the object's data (values already decoded), None if absent
DataLookup = Callable[[str, str, str], Mapping[str, str] | None]


class PodNotRunnable(ValueError):  # noqa: N818 - a verdict about the pod, not a crash
    """The pod cannot be played by a local worker; the message says why (shown in the pod's status)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Probe:
    path: str
    port: int
    period_s: float


@dataclass(frozen=True, kw_only=True)
class WorkerLaunch:
    """Everything needed to start, probe and stop the process behind one pod."""

    program: Literal["infleet-worker", "llama-cpp"] = "infleet-worker"  # what ``argv`` is given to
    container: str
    image: str
    argv: tuple[str, ...]  # arguments after the command, host/device/model rewritten
    env: Mapping[str, str] = field(default_factory=dict)
    port: int
    readiness: Probe
    grace_s: float
    pool: str


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def _set_flag(args: Sequence[str], flag: str, value: str) -> list[str]:
    """``args`` with every ``flag VALUE`` / ``flag=VALUE`` replaced by one ``flag value`` at the end."""
    out: list[str] = []
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = i + 1 < len(args)
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return [*out, flag, value]


def local_model(argument: str | None) -> str:
    """The worker's ``--model`` here: an existing local checkpoint directory as is, anything else ``tiny``."""
    if argument and Path(argument).is_absolute() and Path(argument).is_dir():
        return argument
    return "tiny"


def worker_argv(args: Sequence[str], host: str) -> tuple[str, ...]:
    out = list(args) or ["serve"]
    model = local_model(_flag_value(out, "--model"))
    out = _set_flag(out, "--model", model)
    if model == "tiny" and _flag_value(out, "--quantize") == "int4":
        # The stand-in's layers are 64 wide: the default int4 group (128) fits none of them, and the worker refuses.
        out = _set_flag(out, "--quantize-group-size", "32")
    out = _set_flag(out, "--device", "cpu")
    out = _set_flag(out, "--host", host)
    return tuple(out)


def llamacpp_argv(args: Sequence[str], host: str, threads: int) -> tuple[str, ...]:
    """llama_cpp.server's arguments on the local cluster: the pod's, on the pod's IP and the runner's threads."""
    out = _set_flag(args, "--host", host)
    out = _set_flag(out, "--n_threads", str(threads))
    return tuple(_set_flag(out, "--n_threads_batch", str(threads)))


def _is_llamacpp(command: Sequence[str]) -> bool:
    return len(command) >= 3 and Path(command[0]).name.startswith("python") and list(command[1:3]) == [
        "-m", LLAMACPP_MODULE]


def _field_ref(pod: Pod, path: str, pod_ip: str) -> str:
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    values = {
        "metadata.name": meta.get("name", ""), "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""), "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""), "status.podIP": pod_ip,
    }
    if path.startswith("metadata.labels['") or path.startswith("metadata.annotations['"):
        which, _, key = path.partition("['")
        return str((meta.get(which.split(".")[1]) or {}).get(key.rstrip("']"), ""))
    if path not in values:
        raise PodNotRunnable("CreateContainerConfigError", f"unsupported fieldRef {path!r}")
    return str(values[path])


def resolve_env(pod: Pod, container: Mapping[str, Any], lookup: DataLookup, pod_ip: str) -> dict[str, str]:
    """The container's environment as the kubelet computes it (later entries win, ``$(VAR)`` not expanded)."""
    ns = pod.get("metadata", {}).get("namespace", "default")
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = ("secret", source["secretRef"]) if "secretRef" in source else ("configmap", source["configMapRef"])
        data = lookup(kind, ns, ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise PodNotRunnable("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found')
        env.update({source.get("prefix", "") + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = str(var.get("value", ""))
            continue
        frm = var["valueFrom"]
        if "fieldRef" in frm:
            env[name] = _field_ref(pod, frm["fieldRef"]["fieldPath"], pod_ip)
            continue
        if "secretKeyRef" in frm:
            kind, ref = "secret", frm["secretKeyRef"]
        elif "configMapKeyRef" in frm:
            kind, ref = "configmap", frm["configMapKeyRef"]
        else:
            raise PodNotRunnable("CreateContainerConfigError", f"env {name}: unsupported valueFrom {sorted(frm)}")
        data = lookup(kind, ns, ref["name"])
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                continue
            what = f'{kind} "{ref["name"]}" not found' if data is None else \
                f'couldn\'t find key {ref["key"]} in {kind} {ns}/{ref["name"]}'
            raise PodNotRunnable("CreateContainerConfigError", what)
        env[name] = data[ref["key"]]
    return env


def decode_secret(obj: Mapping[str, Any]) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.get("data") or {}).items()}
    data.update(obj.get("stringData") or {})
    return data


def _probe(container: Mapping[str, Any], port: int) -> Probe:
    spec = container.get("readinessProbe") or {}
    http = spec.get("httpGet") or {}
    named = {p.get("name"): int(p["containerPort"]) for p in container.get("ports") or [] if "containerPort" in p}
    raw = http.get("port", port)
    probe_port = named.get(raw, port) if isinstance(raw, str) and not raw.isdigit() else int(raw)
    return Probe(path=str(http.get("path", "/readyz")), port=probe_port, period_s=float(spec.get("periodSeconds", 10)))


def plan_launch(pod: Pod, host: str, lookup: DataLookup, threads: int = 1) -> WorkerLaunch:
    """How to run ``pod`` on ``host``; :class:`PodNotRunnable` says why it cannot be."""
    containers = pod.get("spec", {}).get("containers") or []
    if len(containers) != 1:
        raise PodNotRunnable("Unsupported", f"the pod runner plays one-container pods, this one has {len(containers)}")
    c = containers[0]
    command = list(c.get("command") or [])
    program: Literal["infleet-worker", "llama-cpp"]
    if command and Path(command[0]).name == WORKER_COMMAND:
        program, args = "infleet-worker", [*command[1:], *(c.get("args") or [])]
        argv = worker_argv(args, host)
    elif _is_llamacpp(command):
        program, args = "llama-cpp", [*command[3:], *(c.get("args") or [])]
        argv = llamacpp_argv(args, host, threads)
    else:
        raise PodNotRunnable("Unsupported", f"the pod runner only runs {WORKER_COMMAND} and python3 -m "
                                            f"{LLAMACPP_MODULE}; command is {command!r}")
    port = int(_flag_value(args, "--port") or DEFAULT_PORT)
    grace = pod.get("spec", {}).get("terminationGracePeriodSeconds")
    return WorkerLaunch(
        program=program, container=str(c.get("name", "worker")), image=str(c.get("image", "")),
        argv=argv, env=resolve_env(pod, c, lookup, host), port=port,
        readiness=_probe(c, port), grace_s=DEFAULT_GRACE_S if grace is None else float(grace),
        pool=str((pod.get("metadata", {}).get("labels") or {}).get(POOL_LABEL, "")),
    )
