"""Start worker processes cheaply: a fork server that imports torch and the worker once, then forks one child per pod.

Importing torch costs a process hundreds of MB and seconds of CPU; a forked child shares the parent's pages
copy-on-write, so N workers cost one import plus what each touches (its model, KV cache and heap). The server is
a separate, single-threaded process (``python -m infleet_devcluster.forkserver``), so no thread of the pod runner
is ever forked. It speaks JSON lines over a Unix socket with exactly one client, the runner:

- ``{"spawn": KEY, "argv": [...], "env": {...}, "log": PATH, "threads": N}`` -> ``{"spawned": KEY, "pid": PID}``
  (or ``{"failed": KEY, "error": MSG}``);
- unprompted, when a child exits: ``{"exited": KEY, "pid": PID, "code": C}`` (C = 128 + signal when killed).

Children die with the server (``PR_SET_PDEATHSIG``), and the server with its client: when the connection closes
it sends SIGTERM to every child, then SIGKILL to any left after the grace period.

:class:`ExecLauncher` is the plain alternative (one ``infleet-worker`` process per pod, each importing torch), used
when the fork server is turned off and as the baseline the memory measurement compares against.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
SHUTDOWN_GRACE_S = 10.0


@dataclass(frozen=True, kw_only=True)
class Exited:
    key: str
    pid: int
    code: int


class Launcher(Protocol):
    """Starts worker processes and reports their exits (signals are sent by pid, by the runner itself)."""

    def spawn(self, key: str, argv: Sequence[str], env: Mapping[str, str], log: Path, threads: int) -> int: ...

    def exits(self) -> list[Exited]: ...

    def close(self) -> None: ...


def exit_code(status: int) -> int:
    """A ``waitpid`` status as the kubelet reports it: the exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _set_process_name(name: bytes) -> None:
    """What `ps -o comm`, `top` and /proc/<pid>/comm show (the command line stays the fork server's)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, name[:15])


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: children may outlive a killed parent
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


# ---- the server -------------------------------------------------------------------------------------------------
def _preload() -> None:
    """Import what every worker imports, so children start with it mapped (and never pay for it again)."""
    import aiohttp.web  # noqa: F401
    import prometheus_client  # noqa: F401
    import torch._dynamo  # noqa: F401  # imported lazily when a model is built (sympy, triton: ~100 MB)

    import infleet_worker.cli
    import infleet_worker.loader
    import infleet_worker.metrics
    import infleet_worker.server  # noqa: F401

    gc.collect()
    gc.freeze()  # the imported objects move to a generation gc never walks: children do not dirty their pages


def _run_child(req: Mapping[str, Any], close_fds: Sequence[int]) -> None:
    """In the forked child: become the worker. Never returns."""
    code = 1
    try:
        os.setsid()
        _die_with_parent()
        _set_process_name(b"infleet-worker")
        for fd in close_fds:
            os.close(fd)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.environ.clear()
        os.environ.update(req["env"])
        import torch

        torch.set_num_threads(int(req.get("threads", 1)))
        from infleet_worker import cli

        cli.PROCESS_START = time.monotonic()  # the import phase was paid once, by the server
        sys.argv = ["infleet-worker", *req["argv"]]
        code = cli.main(list(req["argv"]))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # report, then exit: a child must never return into the server's loop
        print(f"infleet-worker (forked): {exc!r}", file=sys.stderr, flush=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(sock_path: Path) -> int:
    _die_with_parent()
    _preload()
    sock_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    print("ready", flush=True)  # the client waits for this line before connecting
    conn, _ = listener.accept()
    children: dict[int, str] = {}
    buf = b""

    def send(msg: Mapping[str, Any]) -> None:
        conn.sendall(json.dumps(msg).encode() + b"\n")

    try:
        while True:
            readable, _, _ = select.select([conn], [], [], 0.1)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                key = children.pop(pid, "")
                send({"exited": key, "pid": pid, "code": exit_code(status)})
            if not readable:
                continue
            data = conn.recv(65536)
            if not data:
                return 0
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                req = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as exc:
                    send({"failed": req["spawn"], "error": str(exc)})
                    continue
                if pid == 0:
                    _run_child(req, [conn.fileno(), listener.fileno()])
                children[pid] = req["spawn"]
                send({"spawned": req["spawn"], "pid": pid})
    finally:
        _stop_children(list(children))


def _stop_children(pids: Sequence[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    alive.discard(pid)
        time.sleep(0.05)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)


# ---- the client -------------------------------------------------------------------------------------------------
class ForkServerLauncher:
    """The runner's end: starts the server process and talks to it."""

    def __init__(self, run_dir: Path, start_timeout_s: float = 120.0) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.sock_path = run_dir / "forkserver.sock"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.log = (run_dir / "forkserver.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "infleet_devcluster.forkserver", "--socket", str(self.sock_path)],
            stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL, env=env,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], start_timeout_s)
        if not ready or self.proc.stdout.readline().strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"the worker fork server did not start (log: {run_dir / 'forkserver.log'}); is the "
                               "worker installed (pip install -e '.[worker]')?")
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.connect(str(self.sock_path))
        self._buf = b""
        self._exits: list[Exited] = []

    def _messages(self, timeout: float) -> list[dict[str, Any]]:
        ready, _, _ = select.select([self.conn], [], [], timeout)
        if ready:
            data = self.conn.recv(65536)
            if not data:
                raise RuntimeError("the worker fork server exited; see its log")
            self._buf += data
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            out.append(json.loads(line))
        return out

    def _collect(self, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rest = []
        for m in msgs:
            if "exited" in m:
                self._exits.append(Exited(key=m["exited"], pid=int(m["pid"]), code=int(m["code"])))
            else:
                rest.append(m)
        return rest

    def spawn(self, key: str, argv: Sequence[str], env: Mapping[str, str], log: Path, threads: int) -> int:
        req = {"spawn": key, "argv": list(argv), "env": dict(env), "log": str(log), "threads": threads}
        self.conn.sendall(json.dumps(req).encode() + b"\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for m in self._collect(self._messages(0.5)):
                if m.get("spawned") == key:
                    return int(m["pid"])
                if m.get("failed") == key:
                    raise RuntimeError(f"fork failed: {m.get('error')}")
        raise RuntimeError("the worker fork server did not answer within 30s")

    def exits(self) -> list[Exited]:
        self._collect(self._messages(0))
        out, self._exits = self._exits, []
        return out

    def close(self) -> None:
        """Closing the connection makes the server stop its children (SIGTERM, then SIGKILL) and exit."""
        self.conn.close()
        try:
            self.proc.wait(timeout=SHUTDOWN_GRACE_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class ExecLauncher:
    """One ``infleet-worker`` process per pod (each imports torch itself); with ``command``, that program instead
    (the pod runner's llama.cpp pods: ``python -m llama_cpp.server``)."""

    def __init__(self, worker: Path | None = None, command: Sequence[str] | None = None) -> None:
        self.command = list(command) if command else [str(worker or Path(sys.executable).parent / "infleet-worker")]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, key: str, argv: Sequence[str], env: Mapping[str, str], log: Path, threads: int) -> int:
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                [*self.command, *argv], stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**env, "OMP_NUM_THREADS": str(threads)}, start_new_session=True,
            )
        self.procs[key] = proc
        return proc.pid

    def exits(self) -> list[Exited]:
        out = []
        for key, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is not None:
                del self.procs[key]
                out.append(Exited(key=key, pid=proc.pid, code=128 - rc if rc < 0 else rc))
        return out

    def close(self) -> None:
        _stop_popen(list(self.procs.values()))
        self.procs.clear()


def _stop_popen(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="infleet_devcluster.forkserver", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args(argv)
    return serve(args.socket)


if __name__ == "__main__":
    raise SystemExit(main())
