"""Parsing gateway /metrics pages into per-deployment load, summed over gateway replicas; the HTTP source against
real loopback servers. The pages come from the gateway's own GatewayMetrics, so a renamed series fails here."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import generate_latest

from infleet.controller.gateway_signals import (
    GatewayLoad,
    HttpGatewaySource,
    parse_gateway_metrics,
    sum_pages,
)
from infleet.controller.scrape import quantile_from_buckets
from infleet_gateway.metrics import GatewayMetrics


def gateway_page(queued: int, in_flight: int, received: int, ttfts: list[float], durations: list[float]) -> str:
    m = GatewayMetrics()
    m.declare("team", "chat")
    m.declare("team", "idle")
    m.queue_depth.labels("team", "chat").set(queued)
    m.in_flight.labels("team", "chat").set(in_flight)
    m.received.labels("team", "chat").inc(received)
    m.rejected.labels("team", "chat", "queue_full").inc(2)
    for t in ttfts:
        m.ttft.labels("team", "chat").observe(t)
    for d in durations:
        m.duration.labels("team", "chat").observe(d)
    m.replica_in_flight.labels("team", "chat", "h100", "team/pod-a").set(in_flight)
    return generate_latest(m.registry).decode()


def test_one_page() -> None:
    loads = parse_gateway_metrics(gateway_page(5, 3, 40, [0.02, 0.2, 0.9], [1.0, 2.5]))
    assert set(loads) == {("team", "chat"), ("team", "idle")}
    chat = loads[("team", "chat")]
    assert (chat.queue_depth, chat.in_flight, chat.received_total, chat.rejected_total) == (5, 3, 40, 2)
    assert chat.ttft_buckets[0.025] == 1
    assert chat.ttft_buckets[1.0] == 3
    assert chat.ttft_buckets[float("inf")] == 3
    assert chat.duration_buckets[2.0] == 1
    assert chat.duration_buckets[3.0] == 2
    assert loads[("team", "idle")] == GatewayLoad(ttft_buckets=loads[("team", "idle")].ttft_buckets,
                                                  duration_buckets=loads[("team", "idle")].duration_buckets)


def test_pages_of_several_gateway_replicas_add_up() -> None:
    a = parse_gateway_metrics(gateway_page(5, 3, 40, [0.02] * 10, [1.0] * 10))
    b = parse_gateway_metrics(gateway_page(1, 1, 10, [2.5] * 10, [4.0] * 10))
    chat = sum_pages([a, b])[("team", "chat")]
    assert (chat.queue_depth, chat.in_flight, chat.received_total, chat.rejected_total) == (6, 4, 50, 4)
    assert chat.ttft_buckets[float("inf")] == 20
    p99 = quantile_from_buckets(chat.ttft_buckets, 0.99)
    assert p99 is not None
    assert 2.0 < p99 <= 3.0  # the slow gateway's half dominates the tail


def test_series_without_deployment_labels_are_ignored_and_garbage_is_an_error() -> None:
    assert parse_gateway_metrics("process_cpu_seconds_total 3\n") == {}
    with pytest.raises(ValueError, match="not a Prometheus text page"):
        parse_gateway_metrics("infleet_gateway_queue_depth{namespace=\"a\" 1 2 3\n")


@pytest.fixture
def servers() -> Iterator[list[str]]:
    pages = [gateway_page(2, 1, 10, [0.1], [0.5]), gateway_page(3, 0, 5, [0.1], [0.5])]
    started = []
    for page in [*pages, None]:
        class Handler(BaseHTTPRequestHandler):
            body = page

            def do_GET(self) -> None:
                if self.body is None:
                    self.send_response(500)
                    self.end_headers()
                    return
                data = self.body.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        started.append(srv)
    yield [f"http://127.0.0.1:{s.server_address[1]}/metrics" for s in started]
    for s in started:
        s.shutdown()
        s.server_close()


def test_http_source_sums_the_gateways_that_answer(servers: list[str]) -> None:
    closed = "http://127.0.0.1:1/metrics"  # nothing listens there
    loads = HttpGatewaySource([*servers, closed], timeout_s=2).fetch()
    assert loads is not None
    chat = loads[("team", "chat")]
    assert (chat.queue_depth, chat.in_flight, chat.received_total) == (5, 1, 15)
    assert HttpGatewaySource([closed]).fetch() is None
    assert HttpGatewaySource([]).fetch() is None
