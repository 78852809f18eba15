"""Build the pinned control-plane binaries from the Go module proxy, once, and cache them by version.

Each tool is built in its own throw-away wrapper module so that minimal version selection never mixes
one tool's dependencies into another's (helm and kwok pin different client-go versions). For
k8s.io/kubernetes the wrapper replaces every staging module (``k8s.io/api => ./staging/...`` in the
upstream go.mod) with its published ``v0.x.y`` twin, which is what the upstream release tags.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infleet_devcluster.config import Versions, cache_dir


class BuildError(RuntimeError):
    """A tool could not be built; the message says which and why, with the log path."""


@dataclass(frozen=True)
class Tool:
    """One Go module to build, and the binaries (main packages) to take from it."""

    name: str
    module: str
    version: str
    binaries: dict[str, str]  # binary name -> main package path
    ldflags: tuple[str, ...] = ()
    replaces: Callable[[Path], dict[str, str]] | None = field(default=None, compare=False)
    optional: bool = False  # built only when named (`infleet-cluster build NAME`), never by a plain `build`


def _k8s_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(flags)


def tools_for(v: Versions) -> list[Tool]:
    """The full pinned tool set, in build order (smallest first, so failures surface early)."""
    staging = v.kubernetes.replace("v1.", "v0.", 1)

    def k8s_replaces(upstream_gomod: Path) -> dict[str, str]:
        text = upstream_gomod.read_text()
        mods = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", text, flags=re.M)
        if not mods:
            raise BuildError(f"no staging replaces found in {upstream_gomod}")
        return {m: f"{m} {staging}" for m in mods}

    return [
        Tool("etcd", "go.etcd.io/etcd/server/v3", v.etcd, {"etcd": "go.etcd.io/etcd/server/v3"}),
        Tool("kwok", "sigs.k8s.io/kwok", v.kwok, {"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
             (f"-X sigs.k8s.io/kwok/pkg/consts.Version={v.kwok}",)),
        Tool("helm", "helm.sh/helm/v4", v.helm, {"helm": "helm.sh/helm/v4/cmd/helm"},
             (f"-X helm.sh/helm/v4/internal/version.version={v.helm}",)),
        Tool("kind", "sigs.k8s.io/kind", v.kind, {"kind": "sigs.k8s.io/kind"}),
        Tool(
            "kubernetes",
            "k8s.io/kubernetes",
            v.kubernetes,
            {
                "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
                "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
                "kubectl": "k8s.io/kubernetes/cmd/kubectl",
            },
            _k8s_ldflags(v.kubernetes),
            k8s_replaces,
        ),
        Tool("prometheus", "github.com/prometheus/prometheus", v.prometheus,
             {"prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
              "promtool": "github.com/prometheus/prometheus/cmd/promtool"},
             (f"-X github.com/prometheus/common/version.Version={v.prometheus}",), optional=True),
    ]


def bin_dir() -> Path:
    return cache_dir() / "bin"


def binary_path(name: str, version: str) -> Path:
    """Where a built binary lives; the version is in the name so a bump never reuses a stale one."""
    return bin_dir() / f"{name}-{version}"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # never download a toolchain: only registries are reachable
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "")
    env["GOFLAGS"] = (env["GOFLAGS"] + " -mod=mod -buildvcs=false").strip()
    return env


def check_go(min_version: str) -> str:
    """Return `go version` output, or raise a clear error when Go is missing or too old."""
    go = shutil.which("go")
    if go is None:
        raise BuildError(
            "Go is not installed (needed only to build the pinned Kubernetes tools). "
            f"Install Go >= {min_version} (https://go.dev/doc/install or your package manager), "
            "or point KUBECONFIG at an existing cluster to skip the local control plane."
        )
    out = subprocess.run([go, "version"], capture_output=True, text=True, env=_go_env(), check=False)
    m = re.search(r"go(\d+)\.(\d+)", out.stdout)
    if out.returncode != 0 or m is None:
        raise BuildError(f"`go version` failed: {out.stderr.strip() or out.stdout.strip()}")
    have = (int(m.group(1)), int(m.group(2)))
    want = tuple(int(x) for x in min_version.split(".")[:2])
    if have < want:
        raise BuildError(f"Go {have[0]}.{have[1]} is too old: the pinned Kubernetes needs Go >= {min_version}")
    return out.stdout.strip()


def _run(cmd: Sequence[str], cwd: Path, log: Path, env: dict[str, str], what: str,
         progress: Callable[[str], None]) -> None:
    started = time.monotonic()
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        last = 0.0
        for count, line in enumerate(proc.stdout, start=1):
            fh.write(line)
            now = time.monotonic()
            if now - last > 5:  # a cold build prints thousands of lines; a heartbeat is enough
                progress(f"  {what}: {count} steps, {now - started:.0f}s ({line.strip()[:70]})")
                last = now
        rc = proc.wait()
    if rc != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise BuildError(f"{what} failed (exit {rc}); full log: {log}\n{tail}")


def _go_binary_name(pkg: str) -> str:
    """The file name `go build -o DIR` gives a main package: its last element, skipping a /vN suffix."""
    parts = pkg.rstrip("/").split("/")
    if len(parts) > 1 and re.fullmatch(r"v\d+", parts[-1]):
        return parts[-2]
    return parts[-1]


def build_tool(tool: Tool, progress: Callable[[str], None]) -> list[Path]:
    """Build one tool's binaries unless all are cached; return their paths."""
    targets = [binary_path(b, tool.version) for b in tool.binaries]
    if all(t.exists() for t in targets):
        return targets
    work = cache_dir() / "build" / f"{tool.name}-{tool.version}"
    work.mkdir(parents=True, exist_ok=True)
    log = cache_dir() / "build" / f"{tool.name}-{tool.version}.log"
    env = _go_env()
    t0 = time.monotonic()
    progress(f"building {tool.name} {tool.version} (cold builds take minutes; log: {log})")
    gomod = work / "go.mod"
    gomod.write_text(f"module infleet.local/build/{tool.name}\n\ngo 1.26\n\nrequire {tool.module} {tool.version}\n")
    if tool.replaces is not None:
        _run(["go", "mod", "download", "-json", f"{tool.module}@{tool.version}"], work, log, env,
             f"{tool.name}: download", progress)
        modcache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True, env=env,
                                  check=True).stdout.strip()
        upstream = Path(modcache) / "cache" / "download" / tool.module / "@v" / f"{tool.version}.mod"
        reps = tool.replaces(upstream)
        gomod.write_text(gomod.read_text() + "\nreplace (\n" + "".join(
            f"\t{k} => {v}\n" for k, v in sorted(reps.items())) + ")\n")
    imports = "".join(f'\t_ "{p}"\n' for p in tool.binaries.values())
    (work / "tools.go").write_text(
        textwrap.dedent("""\
        //go:build tools

        // Package tools pins the main packages this wrapper module builds.
        package tools

        import (
        """) + imports + ")\n")
    _run(["go", "mod", "tidy"], work, log, env, f"{tool.name}: resolve modules", progress)
    out = work / "out"
    out.mkdir(exist_ok=True)
    ldflags = " ".join(("-s", "-w", *tool.ldflags))
    _run(["go", "build", "-v", "-trimpath", f"-ldflags={ldflags}", "-o", str(out), *tool.binaries.values()],
         work, log, env, f"{tool.name}: compile", progress)
    bin_dir().mkdir(parents=True, exist_ok=True)
    for name, pkg in tool.binaries.items():
        built = out / _go_binary_name(pkg)
        if not built.exists():
            raise BuildError(f"{tool.name}: expected binary {built} after the build; see {log}")
        tmp = binary_path(name, tool.version).with_suffix(".tmp")
        shutil.copy2(built, tmp)
        tmp.replace(binary_path(name, tool.version))  # atomic: a half-copied binary is never "cached"
    shutil.rmtree(out, ignore_errors=True)
    progress(f"built {tool.name} {tool.version} in {time.monotonic() - t0:.0f}s")
    return targets


def ensure_tools(
    v: Versions, only: Sequence[str] = (), progress: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """Build what is missing and return binary name -> path for every pinned binary."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    paths: dict[str, Path] = {}
    pending = [t for t in tools_for(v) if t.name in only or (not only and not t.optional)]
    if any(not binary_path(b, t.version).exists() for t in pending for b in t.binaries):
        check_go(v.go_min)
    for tool in pending:
        build_tool(tool, say)
        paths.update({b: binary_path(b, tool.version) for b in tool.binaries})
    return paths
