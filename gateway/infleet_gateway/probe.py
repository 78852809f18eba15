"""Worker probes: every `interval_s`, GET each replica's /metrics for its queue, running batch, KV usage and
lifecycle state (docs/metrics.md, Worker section). The reading feeds the router while fresh, and the lifecycle
state keeps warm and draining workers out of routing even before the API shows the change. In static mode a
replica is routable only once a probe succeeded (so a worker started later is picked up without a restart)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from infleet.policy.routing import WorkerReading
from infleet_gateway.replicas import EndpointTable, Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ParsedWorkerPage:
    waiting: float | None
    running: float | None
    kv_usage: float | None
    state: str | None  # the lifecycle state whose gauge is 1, if the page has one


def parse_worker_page(text: str) -> ParsedWorkerPage:
    """The four series the router needs, read line by line (cheaper than a full exposition parse; the probe
    runs for every replica every interval). Unknown or malformed lines are skipped."""
    values: dict[str, float] = {}
    state: str | None = None
    for line in text.splitlines():
        if not line.startswith("infleet_worker_"):
            continue
        name, _, rest = line.partition("{")
        if not rest:
            name, _, value_text = line.partition(" ")
            labels = ""
        else:
            labels, _, value_text = rest.partition("} ")
        try:
            value = float(value_text.split()[0])
        except (ValueError, IndexError):
            continue
        if name == "infleet_worker_lifecycle_state":
            if value == 1.0 and 'state="' in labels:
                state = labels.split('state="', 1)[1].split('"', 1)[0]
        elif name in ("infleet_worker_num_requests_waiting", "infleet_worker_num_requests_running",
                      "infleet_worker_kv_cache_usage_perc"):
            values[name] = values.get(name, 0.0) + value
    return ParsedWorkerPage(waiting=values.get("infleet_worker_num_requests_waiting"),
                            running=values.get("infleet_worker_num_requests_running"),
                            kv_usage=values.get("infleet_worker_kv_cache_usage_perc"), state=state)


def apply_probe(replica: Replica, page: ParsedWorkerPage | None, now_s: float) -> bool:
    """Record one probe result; True when it changes whether the replica may be routable."""
    before = (replica.probe_ok, replica.worker_state)
    if page is None:
        replica.probe_ok, replica.worker = False, None
    else:
        replica.probe_ok = True
        replica.worker_state = page.state
        replica.cooldown_until_s = min(replica.cooldown_until_s, now_s)  # it answers again: no longer cooling
        if page.waiting is not None and page.running is not None:
            replica.worker = WorkerReading(at_s=now_s, waiting=page.waiting, running=page.running,
                                           kv_usage=page.kv_usage)
    return before != (replica.probe_ok, replica.worker_state)


class Prober:
    def __init__(self, table: EndpointTable, session: aiohttp.ClientSession, interval_s: float,
                 timeout_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.table, self.session, self.interval_s, self.clock = table, session, interval_s, clock
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def probe(self, url: str) -> ParsedWorkerPage | None:
        try:
            async with self.session.get(url + "/metrics", timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                return parse_worker_page(await resp.text())
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
            return None

    async def probe_all(self) -> None:
        pairs = self.table.all_replicas()
        pages = await asyncio.gather(*(self.probe(r.spec.url) for _, r in pairs))
        now = self.clock()
        for (dep, replica), page in zip(pairs, pages, strict=True):
            if dep.replicas.get(replica.replica_id) is not replica:
                continue  # removed or replaced while we probed
            if apply_probe(replica, page, now):
                log.info("replica %s (%s/%s): probe %s, worker state %s", replica.replica_id, *dep.key,
                         "ok" if replica.probe_ok else "failed", replica.worker_state)
            self.table.notify(dep.key)

    async def run(self) -> None:
        while True:
            started = self.clock()
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop probing for good
                log.exception("probing the replicas failed")
            await asyncio.sleep(max(0.0, self.interval_s - (self.clock() - started)))
