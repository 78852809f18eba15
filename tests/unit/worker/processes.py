"""A worker started as its own process by a test: wait until it answers /readyz, or fail with its output."""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            pass
        assert time.monotonic() < deadline, "worker never became ready"
        time.sleep(0.1)
