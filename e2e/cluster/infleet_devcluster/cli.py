"""`infleet-cluster`: build the pinned tools and run the local control plane with simulated accelerator pools."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from infleet_devcluster.cluster import ClusterError, LocalCluster
from infleet_devcluster.config import load_versions
from infleet_devcluster.nodepools import PoolFileError
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet-cluster", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or reuse) the pinned binaries")
    b.add_argument("tools", nargs="*", help=f"subset of: {', '.join(t.name for t in tools_for(load_versions()))}")
    up = sub.add_parser("up", help="start the control plane and create the simulated node pools")
    up.add_argument("--nodes", action="append", default=[], metavar="POOL=COUNT",
                    help="override a pool's node count (repeatable; thousands work for scale tests)")
    sub.add_parser("down", help="stop the processes `up` started (safe to repeat)")
    sub.add_parser("delete", help="stop and delete all state (certificates, etcd data)")
    sub.add_parser("status", help="show processes and readiness as JSON")
    sub.add_parser("fleet", help="list the simulated nodes with their accelerator labels")
    sub.add_parser("kubeconfig", help="print the kubeconfig path")
    k = sub.add_parser("kubectl", help="run the pinned kubectl against the local cluster")
    k.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        cluster = LocalCluster()
        if args.cmd == "build":
            paths = ensure_tools(cluster.versions, only=tuple(args.tools))
            for name, path in sorted(paths.items()):
                print(f"{name}: {path}")
        elif args.cmd == "up":
            cluster.up(scale=_scale(args.nodes))
            print(f"export KUBECONFIG={cluster.layout.kubeconfig}")
            print(cluster.kubectl("get", "nodes", *FLEET_COLUMNS).stdout, end="")
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
        elif args.cmd == "kubectl":
            os.execv(str(cluster.binary("kubectl")),
                     ["kubectl", "--kubeconfig", str(cluster.layout.kubeconfig), *args.args])
    except (BuildError, ClusterError, PortInUseError, PoolFileError, argparse.ArgumentTypeError, ValueError) as exc:
        print(f"infleet-cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
