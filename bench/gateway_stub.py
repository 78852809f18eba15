"""Shared pieces of the gateway benchmarks: a stub OpenAI worker with a fixed service model, process helpers for
the stub, infleet-gateway and nginx (plain reverse proxy), and an open-loop streaming load generator.

The stub speaks the worker's wire format (SSE chunks, `data: [DONE]`) and its /metrics gauges (lifecycle state,
waiting, running), so the gateway probes and routes it like a worker, without a model's CPU noise: it serves at
most `slots` requests at once (the rest wait, like a worker's queue), sends the first token after `prefill_ms`
and then one token every `tpot_ms`.

    python bench/gateway_stub.py --port 9000 --slots 8 --prefill-ms 5 --tpot-ms 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from infleet_devcluster.ports import free_port

REPO = Path(__file__).resolve().parents[1]


# ---- the stub worker --------------------------------------------------------------------------------------------
class Stub:
    def __init__(self, slots: int, prefill_ms: float, tpot_ms: float) -> None:
        self.sem = asyncio.Semaphore(slots)
        self.prefill_s, self.tpot_s = prefill_ms / 1000, tpot_ms / 1000
        self.waiting = self.running = self.finished = 0

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        tokens = int(body.get("max_tokens") or 16)
        self.waiting += 1
        try:
            await self.sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            await asyncio.sleep(self.prefill_s)
            for i in range(tokens):
                if i:
                    await asyncio.sleep(self.tpot_s)
                reason = "length" if i == tokens - 1 else None
                chunk = {"id": "cmpl-stub", "object": "text_completion", "model": body.get("model"),
                         "choices": [{"index": 0, "text": "x", "logprobs": None, "finish_reason": reason}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            self.finished += 1
            return resp
        finally:
            self.running -= 1
            self.sem.release()

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"finished": self.finished})

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(text=(
            'infleet_worker_lifecycle_state{model="m",state="serving"} 1.0\n'
            f'infleet_worker_num_requests_waiting{{model="m"}} {self.waiting}\n'
            f'infleet_worker_num_requests_running{{model="m"}} {self.running}\n'))


def serve_stub(port: int, slots: int, prefill_ms: float, tpot_ms: float) -> None:
    stub = Stub(slots, prefill_ms, tpot_ms)
    app = web.Application()
    app.router.add_post("/v1/completions", stub.completions)
    app.router.add_get("/metrics", stub.metrics)
    app.router.add_get("/stats", stub.stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handler_cancellation=True)


# ---- processes --------------------------------------------------------------------------------------------------

def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


def pinned(cpu: int | None) -> list[str]:
    """taskset prefix for one CPU (none with GATEWAY_BENCH_NO_PIN=1, or without taskset)."""
    if cpu is None or os.environ.get("GATEWAY_BENCH_NO_PIN") == "1" or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", str(cpu)]


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    cleanup_dir: Path | None = None

    def cpu_s(self) -> float:
        """CPU seconds (user + system) used so far by the process and its children (nginx's worker), from /proc
        (0.0 where unavailable)."""
        stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu s)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12]))
                                          / os.sysconf("SC_CLK_TCK"))
            except (OSError, ValueError, IndexError):
                continue
        tree, total, frontier = {self.popen.pid}, 0.0, [self.popen.pid]
        while frontier:
            pid = frontier.pop()
            total += stats.get(pid, (0, 0.0))[1]
            children = [p for p, (parent, _) in stats.items() if parent == pid and p not in tree]
            tree.update(children)
            frontier.extend(children)
        return total

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
        if self.cleanup_dir is not None:
            shutil.rmtree(self.cleanup_dir, ignore_errors=True)


def env() -> dict[str, str]:
    path = os.pathsep.join(str(REPO / p) for p in ("operator", "workers", "gateway"))
    return {**os.environ, "PYTHONPATH": path + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_stub(slots: int, prefill_ms: float, tpot_ms: float, cpu: int | None = None) -> tuple[str, Proc]:
    port = free_port()
    p = subprocess.Popen([*pinned(cpu), sys.executable, __file__, "--port", str(port), "--slots", str(slots),
                          "--prefill-ms", str(prefill_ms), "--tpot-ms", str(tpot_ms)], env=env())
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/metrics")
    return url, Proc(p)


def start_gateway(endpoints: list[str], cpu: int | None = None, *extra: str) -> tuple[str, Proc]:
    port = free_port()
    args = [*pinned(cpu), sys.executable, "-m", "infleet_gateway.cli", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "WARNING", *extra]
    for e in endpoints:
        args += ["--endpoint", e]
    p = subprocess.Popen(args, env=env())
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/readyz")
    return url, Proc(p)


def start_nginx(upstreams: list[str], cpu: int | None = None) -> tuple[str, Proc]:
    """nginx as a plain reverse proxy: one worker process, keep-alive upstream, no buffering (streams flow)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    servers = "\n".join(f"    server {u.removeprefix('http://')};" for u in upstreams)
    (d / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream backend {{
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 300s;
    }}
  }}
}}
""")
    p = subprocess.Popen([*pinned(cpu), nginx, "-p", str(d), "-c", str(d / "nginx.conf")])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError((d / "error.log").read_text() if (d / "error.log").exists() else "nginx") from None
            time.sleep(0.05)
    return url, Proc(p, d)


# ---- load -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Sample:
    ttft_s: float | None  # None: failed
    total_s: float | None


async def one(session: aiohttp.ClientSession, url: str, max_tokens: int) -> Sample:
    t0 = time.perf_counter()
    ttft = None
    try:
        async with session.post(url + "/v1/completions", json={"model": "m", "prompt": "bench", "stream": True,
                                                               "max_tokens": max_tokens}) as r:
            if r.status != 200:
                return Sample(ttft_s=None, total_s=None)
            async for chunk in r.content.iter_any():
                if ttft is None and b'"text"' in chunk:
                    ttft = time.perf_counter() - t0
        return Sample(ttft_s=ttft, total_s=time.perf_counter() - t0)
    except aiohttp.ClientError:
        return Sample(ttft_s=None, total_s=None)


async def open_loop(url: str, rate: float, duration_s: float, max_tokens: int, seed: int,
                    warmup: int = 20) -> tuple[list[Sample], float]:
    """Poisson arrivals at `rate`/s for `duration_s`; returns the samples and the achieved completion rate."""
    rng = random.Random(seed)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, url, max_tokens) for _ in range(warmup)))
        tasks = []
        start = time.perf_counter()
        t = 0.0
        while t < duration_s:
            delay = start + t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, url, max_tokens)))
            t += rng.expovariate(rate)
        samples = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    return list(samples), len([s for s in samples if s.total_s is not None]) / elapsed


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, round(q * (len(s) - 1))))
    return s[k]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--prefill-ms", type=float, default=5.0)
    ap.add_argument("--tpot-ms", type=float, default=10.0)
    a = ap.parse_args()
    serve_stub(a.port, a.slots, a.prefill_ms, a.tpot_ms)
