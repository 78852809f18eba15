"""Memory of the local pod runner's workers: N tiny-model workers forked from the fork server (torch imported
once) side by side with N workers started as their own processes (each importing torch), no cluster needed.

Each worker serves the built-in tiny model on CPU on its own loopback address and answers one completion
before it is measured. Reported per process from /proc/<pid>/smaps_rollup: RSS (what `ps` shows; counts shared
pages in full in every process), PSS (shared pages divided among the processes sharing them: the sum over all
processes is what the machine really spends) and USS (pages only this process holds: what one more worker
costs). Run: .venv/bin/python bench/pod_runner_memory.py --workers 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from infleet_devcluster.forkserver import ExecLauncher, ForkServerLauncher, Launcher


def rollup(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts[0] in ("Rss:", "Pss:", "Private_Clean:", "Private_Dirty:"):
            out[parts[0][:-1]] = int(parts[1]) // 1024
    return {"rss_mb": out["Rss"], "pss_mb": out["Pss"], "uss_mb": out["Private_Clean"] + out["Private_Dirty"]}


def measure(mode: str, n: int, run_dir: Path) -> dict[str, object]:
    env = {k: os.environ[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in os.environ}
    t0 = time.monotonic()
    launcher: Launcher = ForkServerLauncher(run_dir) if mode == "fork" else ExecLauncher()
    server_s = time.monotonic() - t0
    hosts = [f"127.96.252.{i + 1}" for i in range(n)]
    pids = [launcher.spawn(str(i), ["serve", "--model", "tiny", "--device", "cpu", "--host", h, "--port", "8000"],
                           env, run_dir / f"{mode}-{i}.log", 1) for i, h in enumerate(hosts)]
    for h in hosts:
        while True:
            try:
                if httpx.get(f"http://{h}:8000/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    ready_s = time.monotonic() - t0 - server_s
    for h in hosts:
        httpx.post(f"http://{h}:8000/v1/completions", json={"model": "tiny", "prompt": "hello", "max_tokens": 16},
                   timeout=60).raise_for_status()
    workers = [rollup(p) for p in pids]
    server = rollup(launcher.proc.pid) if isinstance(launcher, ForkServerLauncher) else None
    total_pss = sum(w["pss_mb"] for w in workers) + (server["pss_mb"] if server else 0)
    launcher.close()
    return {
        "mode": mode, "workers": n, "server_start_s": round(server_s, 2), "all_ready_s": round(ready_s, 2),
        "worker_rss_mb": statistics.median(w["rss_mb"] for w in workers),
        "worker_pss_mb": statistics.median(w["pss_mb"] for w in workers),
        "worker_uss_mb": statistics.median(w["uss_mb"] for w in workers),
        "server": server, "total_pss_mb": total_pss, "pss_per_worker_mb": round(total_pss / n, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=["fork", "exec"], choices=["fork", "exec"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            rows.append(measure(mode, args.workers, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'mode':<5} {'workers':>7} {'ready s':>7} {'RSS/w':>6} {'PSS/w':>6} {'USS/w':>6} {'server PSS':>10} "
          f"{'total PSS':>9}", file=sys.stderr)
    for r in rows:
        server = r["server"]
        print(f"{r['mode']:<5} {r['workers']:>7} {r['all_ready_s']:>7} {r['worker_rss_mb']:>6} {r['worker_pss_mb']:>6} "
              f"{r['worker_uss_mb']:>6} {server['pss_mb'] if isinstance(server, dict) else '-':>10} "
              f"{r['total_pss_mb']:>9}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
