"""The gateway's load signals for the autoscaler: parse infleet-gateway `/metrics` pages (docs/metrics.md, Gateway
section) into one `GatewayLoad` per (namespace, deployment), summed over every gateway replica.

The gateway sees what the workers cannot: requests queued in front of zero ready replicas (scale from zero), the
arrival rate at arrival (not at completion), and the latency clients actually get, queueing included. Counters
and histogram buckets are totals since each gateway started; turn two samples into rates the way
`infleet.controller.scrape.observe` does (a negative delta after a gateway restart means "unknown").

`GatewaySource.fetch` is the one-method seam (like `scrape.MetricsSource`): `HttpGatewaySource` GETs a list of
URLs; a test passes a fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

DeploymentKey = tuple[str, str]  # (namespace, InferenceDeployment name)

RECEIVED = "infleet_gateway_requests_received_total"
QUEUE_DEPTH = "infleet_gateway_queue_depth"
IN_FLIGHT = "infleet_gateway_in_flight"
REJECTED = "infleet_gateway_rejected_total"
TTFT_BUCKET = "infleet_gateway_ttft_seconds_bucket"
DURATION_BUCKET = "infleet_gateway_request_duration_seconds_bucket"


@dataclass(frozen=True, kw_only=True)
class GatewayLoad:
    """One deployment as the gateways see it at one instant (summed over gateway replicas)."""

    received_total: float = 0.0  # requests accepted, counted at arrival (counter)
    queue_depth: float = 0.0  # waiting in the gateways' queues now
    in_flight: float = 0.0  # sent upstream and not finished now
    rejected_total: float = 0.0  # answered with an error by a gateway itself (429s, upstream exhausted)
    ttft_buckets: Mapping[float, float] = field(default_factory=dict)  # le (s) -> cumulative count
    duration_buckets: Mapping[float, float] = field(default_factory=dict)


def parse_gateway_metrics(text: str) -> dict[DeploymentKey, GatewayLoad]:
    """One gateway page -> per-deployment load. Series without namespace/deployment labels are ignored; a page
    that is not Prometheus text raises ValueError."""
    acc: dict[DeploymentKey, dict[str, float]] = {}
    ttft: dict[DeploymentKey, dict[float, float]] = {}
    duration: dict[DeploymentKey, dict[float, float]] = {}
    try:
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    except (ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"not a Prometheus text page: {exc}") from exc
    for sample in samples:
        ns, dep = sample.labels.get("namespace"), sample.labels.get("deployment")
        if not ns or not dep:
            continue
        key = (ns, dep)
        if sample.name in (RECEIVED, QUEUE_DEPTH, IN_FLIGHT, REJECTED):
            values = acc.setdefault(key, {})
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
        elif sample.name in (TTFT_BUCKET, DURATION_BUCKET):
            target = ttft if sample.name == TTFT_BUCKET else duration
            buckets = target.setdefault(key, {})
            le = float(sample.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + sample.value
    keys = set(acc) | set(ttft) | set(duration)
    return {key: GatewayLoad(received_total=acc.get(key, {}).get(RECEIVED, 0.0),
                             queue_depth=acc.get(key, {}).get(QUEUE_DEPTH, 0.0),
                             in_flight=acc.get(key, {}).get(IN_FLIGHT, 0.0),
                             rejected_total=acc.get(key, {}).get(REJECTED, 0.0),
                             ttft_buckets=ttft.get(key, {}), duration_buckets=duration.get(key, {}))
            for key in keys}


def _add(a: Mapping[float, float], b: Mapping[float, float]) -> dict[float, float]:
    out = dict(a)
    for le, n in b.items():
        out[le] = out.get(le, 0.0) + n
    return out


def sum_pages(pages: Iterable[Mapping[DeploymentKey, GatewayLoad]]) -> dict[DeploymentKey, GatewayLoad]:
    """Several gateway replicas' views of the same deployments, added up."""
    total: dict[DeploymentKey, GatewayLoad] = {}
    for page in pages:
        for key, load in page.items():
            seen = total.get(key)
            if seen is None:
                total[key] = load
                continue
            total[key] = GatewayLoad(
                received_total=seen.received_total + load.received_total,
                queue_depth=seen.queue_depth + load.queue_depth,
                in_flight=seen.in_flight + load.in_flight,
                rejected_total=seen.rejected_total + load.rejected_total,
                ttft_buckets=_add(seen.ttft_buckets, load.ttft_buckets),
                duration_buckets=_add(seen.duration_buckets, load.duration_buckets),
            )
    return total


class GatewaySource(Protocol):
    def fetch(self) -> dict[DeploymentKey, GatewayLoad] | None: ...


class HttpGatewaySource:
    """GET each gateway's /metrics (e.g. http://<gateway pod IP>:8080/metrics) with a short timeout and sum the
    pages that answered; None when none did (no gateway installed: the autoscaler keeps to worker metrics)."""

    def __init__(self, urls: Sequence[str], timeout_s: float = 1.0) -> None:
        self.urls = list(urls)
        self.client = httpx.Client(timeout=timeout_s, trust_env=False)

    def fetch_one(self, url: str) -> dict[DeploymentKey, GatewayLoad] | None:
        try:
            resp = self.client.get(url)
        except httpx.HTTPError:
            return None
        if resp.status_code != 200:
            return None
        try:
            return parse_gateway_metrics(resp.text)
        except ValueError:
            return None

    def fetch(self) -> dict[DeploymentKey, GatewayLoad] | None:
        if not self.urls:
            return None
        with ThreadPoolExecutor(max_workers=min(8, len(self.urls))) as pool:
            pages = [p for p in pool.map(self.fetch_one, self.urls) if p is not None]
        return sum_pages(pages) if pages else None
