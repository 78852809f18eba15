"""A real Prometheus scrapes a vLLM `/metrics` page (written from vLLM's documented names, see
tests/unit/runtimes/vllm_metrics_sample.txt: no GPU here) through the chart's generated metric relabelings, and the
chart's recording rules, written against `infleet_worker_*`, produce the deployment's series from it unchanged."""

from __future__ import annotations

import glob
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infleet.runtimes.normalise import metric_relabelings
from infleet_devcluster.ports import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = (ROOT / "tests/unit/runtimes/vllm_metrics_sample.txt").read_bytes()
RECORDING_RULES = ROOT / "charts/infleet/files/recording-rules.yaml"
_SNAKE = {"sourceLabels": "source_labels", "targetLabel": "target_label"}


def prometheus_binary() -> str | None:
    found = shutil.which("prometheus")
    if found:
        return found
    pinned = sorted(glob.glob(os.path.expanduser("~/.cache/infleet/bin/prometheus-v*")))
    return pinned[-1] if pinned else None


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(SAMPLE)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("prometheus not installed (the devcluster tools put one in ~/.cache/infleet/bin); CI installs it")
    tmp = tmp_path_factory.mktemp("prom")
    page = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    relabel = [{_SNAKE.get(k, k): v for k, v in rule.items()} for rule in metric_relabelings()]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RECORDING_RULES)],
        "scrape_configs": [{
            "job_name": "vllm",
            "static_configs": [{"targets": [f"127.0.0.1:{page.server_address[1]}"],
                                "labels": {"namespace": "demo", "deployment": "chat", "pool": "h100",
                                           "role": "serving"}}],
            "metric_relabel_configs": relabel,
        }],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        page.shutdown()


def query(base: str, promql: str, timeout: float = 60) -> list[dict[str, Any]]:
    """The query's vector once it is non-empty (scrapes and rule evaluations take a few seconds to land)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            url = f"{base}/api/v1/query?query={urllib.parse.quote(promql)}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
            if result:
                return result
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no data for {promql!r} within {timeout}s")
        time.sleep(0.5)


def value(base: str, promql: str) -> float:
    return float(query(base, promql)[0]["value"][1])


def test_vllm_series_arrive_under_the_workers_names_and_labels(prometheus: str) -> None:
    assert value(prometheus, "infleet_worker_num_requests_waiting") == 5.0
    assert value(prometheus, "infleet_worker_kv_cache_usage_perc") == 0.42
    got = query(prometheus, 'infleet_worker_requests_total{status="length"}')
    assert got[0]["metric"]["model"] == "llama-3-8b" and float(got[0]["value"][1]) == 1.0
    assert value(prometheus, 'count(infleet_worker_request_latency_seconds_bucket{model="llama-3-8b"})') == 4.0
    assert value(prometheus, "infleet_worker_time_to_first_token_seconds_count") == 2.0
    # Nothing of what the adapter maps is left under vLLM's own names.
    assert value(prometheus, 'count({__name__=~"vllm:.*"}) or vector(0)') == 0.0


def test_the_charts_recording_rules_work_unchanged(prometheus: str) -> None:
    assert value(prometheus, 'deployment:infleet_worker_num_requests_waiting:sum{deployment="chat"}') == 5.0
    assert value(prometheus, 'deployment:infleet_worker_num_requests_running:sum{deployment="chat"}') == 3.0
    # A constant page: the rates are zero, but the series exist (rules evaluated over the renamed names).
    query(prometheus, 'deployment:infleet_worker_requests:rate5m{deployment="chat"}')
    query(prometheus, 'deployment_le:infleet_worker_request_latency_seconds_bucket:rate5m{deployment="chat"}')
