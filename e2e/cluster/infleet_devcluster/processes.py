"""Start and stop the control-plane processes, tracking exactly the pids this tool started.

Each process gets its own session (so a Ctrl-C in the caller's terminal does not kill the cluster), a log
file, and a pid file holding the pid *and* the executable path: ``down`` only signals a pid whose
``/proc/<pid>/cmdline`` still names that executable (as argv[0], or argv[1] for a script run by its
interpreter), so a recycled pid is never killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class PortInUseError(RuntimeError):
    """A port the cluster needs is already bound by something else."""


@dataclass(frozen=True)
class Started:
    name: str
    pid: int
    log: Path


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the Go servers do: connections of a just-stopped cluster in TIME_WAIT must not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise PortInUseError(
                f"port {host}:{port} is already in use ({exc.strerror}). Another cluster may be running: "
                f"run `infleet-cluster down` (or stop whatever holds the port, e.g. `ss -ltnp | grep {port}`), "
                "or choose other ports with INFLEET_CLUSTER_PORT_OFFSET=<n>."
            ) from exc


def _pidfile(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def start(name: str, argv: Sequence[str], run_dir: Path, env: dict[str, str] | None = None) -> Started:
    """Start ``argv`` detached, logging to ``run_dir/<name>.log``; record its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / f"{name}.log"
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    _pidfile(run_dir, name).write_text(json.dumps({"pid": proc.pid, "exe": str(argv[0])}))
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and proc.poll() is None and str(argv[0]) not in _cmdline(proc.pid)[:2]:
        time.sleep(0.01)  # between fork and exec the child still looks like us; wait for the exec
    return Started(name, proc.pid, log)


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def running(run_dir: Path, name: str) -> int | None:
    """The pid of ``name`` if this tool started it and it is still that process, else None."""
    pf = _pidfile(run_dir, name)
    try:
        data = json.loads(pf.read_text())
        pid, exe = int(data["pid"]), str(data["exe"])
    except (OSError, ValueError, KeyError):
        return None
    if exe not in _cmdline(pid)[:2]:  # [exe, ...] or, for a script, [interpreter, exe, ...]
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":  # zombie: exited, not yet reaped
                return None
    except OSError:
        return None
    return pid


def stop(run_dir: Path, name: str, timeout: float = 15.0) -> bool:
    """SIGTERM then SIGKILL the process if it is ours; remove its pid file. True if something was stopped."""
    pid = running(run_dir, name)
    stopped = False
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and running(run_dir, name) is not None:
                time.sleep(0.1)
            if running(run_dir, name) is not None:
                os.kill(pid, signal.SIGKILL)
            stopped = True
        except ProcessLookupError:
            pass
    _pidfile(run_dir, name).unlink(missing_ok=True)
    return stopped


def log_tail(log: Path, lines: int = 30) -> str:
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"
