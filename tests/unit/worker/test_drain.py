"""SIGTERM to a real `infleet-worker serve` process with streams in flight: every one of them completes, new
requests are refused while draining, and the process exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from infleet_devcluster.ports import free_port
from tests.unit.worker.processes import wait_ready

pytest.importorskip("torch")


def post(url: str, body: dict[str, Any], timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_sigterm_drains_without_losing_requests() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "infleet_worker.cli", "serve", "--model", "tiny", "--device", "cpu", "--host",
         "127.0.0.1", "--port", str(port), "--drain-grace-seconds", "30", "--num-slots", "8", "--max-seq-len", "1024"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_ready(proc, base, 60)

        n, max_tokens = 6, 900
        results: list[tuple[int, dict[str, Any]] | None] = [None] * n
        started = threading.Barrier(n + 1)

        def stream(i: int) -> None:
            body = {"prompt": f"request {i}", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
            req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                chunks = []
                first = True
                for line in r:
                    if first:  # the first token has arrived: this request is in flight
                        started.wait()
                        first = False
                    if line.startswith(b"data: {"):
                        chunks.append(json.loads(line[len(b"data: "):]))
                results[i] = (r.status, chunks[-1])

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        started.wait(timeout=30)
        proc.send_signal(signal.SIGTERM)
        while True:  # wait until the worker has entered draining (readiness drops), streams still running
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5):
                    time.sleep(0.01)
            except urllib.error.HTTPError as e:
                code = e.code
                break
        assert code == 503
        status, body = post(base + "/v1/completions", {"prompt": "too late", "max_tokens": 2})
        assert status == 503, body
        assert b"draining" in body
        for t in threads:
            t.join(60)
        for r in results:
            assert r is not None, "a request in flight at SIGTERM got no complete answer"
            status, last = r
            assert status == 200
            assert last["choices"][0]["finish_reason"] == "length"
            assert last["usage"]["completion_tokens"] == max_tokens
        assert proc.wait(timeout=30) == 0
        log = proc.stdout.read().decode() if proc.stdout else ""
        assert "drained; exiting" in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
