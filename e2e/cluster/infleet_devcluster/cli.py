"""`infleet-cluster`: build the pinned tools and run the local control plane with simulated accelerator pools."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from infleet_devcluster.cluster import NODE_IP, ClusterError, LocalCluster, RunnerSettings
from infleet_devcluster.config import load_versions
from infleet_devcluster.nodepools import PoolFileError
from infleet_devcluster.podrunner import DEFAULT_MAX_WORKERS
from infleet_devcluster.processes import PortInUseError
from infleet_devcluster.tools import BuildError, ensure_tools, tools_for

FLEET_COLUMNS = (
    "-L", "karpenter.sh/nodepool,karpenter.sh/capacity-type,node.kubernetes.io/instance-type,"
    "nvidia.com/gpu.product,cloud.google.com/gke-tpu-accelerator,aws.amazon.com/neuron.product",
)


def _scale(values: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        pool, sep, count = v.partition("=")
        if not sep or not count.isdigit():
            raise argparse.ArgumentTypeError(f"--nodes expects POOL=COUNT (e.g. h100-on-demand=500), got {v!r}")
        out[pool] = int(count)
    return out


def _runner_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-workers", type=int, default=int(os.environ.get("INFLEET_RUNNER_MAX_WORKERS",
                                                                         DEFAULT_MAX_WORKERS)),
                   help=f"most real worker processes at once (default {DEFAULT_MAX_WORKERS}; "
                        "env INFLEET_RUNNER_MAX_WORKERS)")
    p.add_argument("--cold-start-scale", type=float,
                   default=float(os.environ.get("INFLEET_RUNNER_COLD_START_SCALE", "0")),
                   help="emulate each pool's coldStartSeconds times this factor before a real pod's worker starts "
                        "(default 0: none; env INFLEET_RUNNER_COLD_START_SCALE)")
    p.add_argument("--no-fork-server", action="store_true",
                   help="start each worker as its own process (each imports torch: ~5x the memory)")


def _run_pods(cluster: LocalCluster, args: argparse.Namespace) -> int:
    from infleet_devcluster.kubeapi import KubeAPI
    from infleet_devcluster.podrunner import PodRunner, RunnerConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a readiness probe per pod per second is not news
    pki = cluster.layout.pki
    api = KubeAPI(cluster.server, pki / "ca.crt", pki / "pod-runner.crt", pki / "pod-runner.key")
    config = RunnerConfig(run_dir=cluster.layout.run, network=cluster.network.running, host_ip=NODE_IP,
                          max_workers=args.max_workers, cold_start_scale=args.cold_start_scale,
                          fork_server=not args.no_fork_server)
    PodRunner(api, config).run_forever()
    return 0


def _first_lines(text: str, n: int) -> str:
    """A long node table cut after ``n`` lines (`infleet-cluster fleet` prints it whole)."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= n:
        return text
    return "".join(lines[:n]) + f"... {len(lines) - n} more nodes (`infleet-cluster fleet` lists them all)\n"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kubectl"]:  # every argument after `kubectl` is kubectl's, flags included (-n, -o, ...)
        try:
            cluster = LocalCluster()
            os.execv(str(cluster.binary("kubectl")),
                     ["kubectl", "--kubeconfig", str(cluster.layout.kubeconfig), *argv[1:]])
        except (OSError, ValueError) as exc:
            print(f"infleet-cluster: error: {exc}", file=sys.stderr)
            return 1
        return 0  # execv does not return
    parser = argparse.ArgumentParser(prog="infleet-cluster", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) the pinned binaries")
    b.add_argument("tools", nargs="*", help=f"subset of: {', '.join(t.name for t in tools_for(load_versions()))}")
    up = sub.add_parser("up", help="start the control plane and create the simulated node pools")
    up.add_argument("--nodes", action="append", default=[], metavar="POOL=COUNT",
                    help="override a pool's node count (repeatable; thousands work for scale tests)")
    _runner_flags(up)
    rp = sub.add_parser("run-pods", help="run the pod runner in the foreground (`up` starts it in the background)")
    rp.add_argument("--state-dir", type=Path, default=None, help="the cluster's state directory")
    _runner_flags(rp)
    sub.add_parser("down", help="stop the processes `up` started (safe to repeat)")
    sub.add_parser("delete", help="stop and delete all state (certificates, etcd data)")
    sub.add_parser("status", help="show processes and readiness as JSON")
    sub.add_parser("fleet", help="list the simulated nodes with their accelerator labels")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    sub.add_parser("kubectl", help="run the pinned kubectl against the local cluster (all arguments pass through)")
    args = parser.parse_args(argv)

    try:
        cluster = LocalCluster(getattr(args, "state_dir", None))
        if args.cmd == "build":
            paths = ensure_tools(cluster.versions, only=tuple(args.tools))
            for name, path in sorted(paths.items()):
                print(f"{name}: {path}")
        elif args.cmd == "up":
            cluster.up(scale=_scale(args.nodes), runner=RunnerSettings(
                max_workers=args.max_workers, cold_start_scale=args.cold_start_scale,
                fork_server=not args.no_fork_server))
            print(f"export KUBECONFIG={cluster.layout.kubeconfig}")
            print(_first_lines(cluster.kubectl("get", "nodes", *FLEET_COLUMNS).stdout, 41), end="")
        elif args.cmd == "down":
            cluster.down()
        elif args.cmd == "delete":
            cluster.delete()
        elif args.cmd == "status":
            print(json.dumps(cluster.status(), indent=2))
            return 0 if cluster.is_running() else 1
        elif args.cmd == "fleet":
            print(cluster.kubectl("get", "nodes", *FLEET_COLUMNS).stdout, end="")
        elif args.cmd == "kubeconfig":
            print(cluster.layout.kubeconfig)
        elif args.cmd == "run-pods":
            return _run_pods(cluster, args)
    except (BuildError, ClusterError, PortInUseError, PoolFileError, argparse.ArgumentTypeError, ValueError) as exc:
        print(f"infleet-cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
