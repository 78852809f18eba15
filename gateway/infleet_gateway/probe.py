"""Replica probes: every `interval_s`, GET each replica's page for its runtime (infleet.runtimes, the mapping the
operator's scraper reads too): the `/metrics` page of a runtime that has one (infleet-worker's `infleet_worker_*`,
vLLM's `vllm:*`; docs/metrics.md, "Runtimes") for its queue, running batch, KV usage and lifecycle state, or the
health path of one that has none (llama.cpp), which only says the replica answers. The reading feeds the router
while fresh; without one the router goes by the gateway's own in-flight counts. The lifecycle state keeps warm and
draining workers out of routing even before the API shows the change. In static mode a replica is routable only
once a probe succeeded (so a worker started later is picked up without a restart)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from infleet.policy.routing import WorkerReading
from infleet.runtimes import DEFAULT_ENGINE, RUNTIMES, MetricNames, Runtime
from infleet_gateway.replicas import EndpointTable, Replica

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ParsedWorkerPage:
    """One probe's reading; a series the page does not carry is None (unknown), never 0."""

    waiting: float | None
    running: float | None
    kv_usage: float | None
    state: str | None  # the lifecycle state whose gauge is 1, if the page has one


ANSWERED = ParsedWorkerPage(waiting=None, running=None, kv_usage=None, state=None)  # a health path's 200


_warned_engines: set[str] = set()


def adapter_for(engine: str) -> Runtime:
    """The runtime a replica runs; an engine this gateway does not know is probed as the default's (logged once per
    engine: the probe runs for every replica every interval)."""
    adapter = RUNTIMES.get(engine)
    if adapter is None:
        if engine not in _warned_engines:
            _warned_engines.add(engine)
            log.warning("unknown runtime engine %r: probed as %s", engine, DEFAULT_ENGINE)
        return RUNTIMES[DEFAULT_ENGINE]
    return adapter


def probe_path(adapter: Runtime) -> str:
    return adapter.metrics_path if adapter.metrics is not None else adapter.health_path


def parse_metrics_page(text: str, names: MetricNames) -> ParsedWorkerPage:
    """The series the router needs, read line by line with one runtime's names (cheaper than a full exposition
    parse; the probe runs for every replica every interval). Samples of one name are summed over their labels
    (vLLM labels each by model and engine). Unknown or malformed lines are skipped."""
    wanted = {n for n in (names.waiting, names.running, names.kv_usage, names.kv_usage_fallback) if n}
    values: dict[str, float] = {}
    state: str | None = None
    for line in text.splitlines():
        if not line.startswith(names.marker):
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
        if name == names.lifecycle_state:
            if value == 1.0 and 'state="' in labels:
                state = labels.split('state="', 1)[1].split('"', 1)[0]
        elif name in wanted:
            values[name] = values.get(name, 0.0) + value

    def get(name: str | None) -> float | None:
        return values.get(name) if name else None

    kv = get(names.kv_usage)
    return ParsedWorkerPage(waiting=get(names.waiting), running=get(names.running),
                            kv_usage=kv if kv is not None else get(names.kv_usage_fallback), state=state)


def parse_worker_page(text: str, engine: str = DEFAULT_ENGINE) -> ParsedWorkerPage:
    """A probe's page read for the replica's runtime: its metric names, or, for a runtime without a metrics page,
    just "it answered" (no readings)."""
    names = adapter_for(engine).metrics
    return ANSWERED if names is None else parse_metrics_page(text, names)


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

    async def probe(self, url: str, engine: str = DEFAULT_ENGINE) -> ParsedWorkerPage | None:
        adapter = adapter_for(engine)
        try:
            async with self.session.get(url + probe_path(adapter), timeout=self.timeout) as resp:
                if resp.status != 200:
                    return None
                if adapter.metrics is None:
                    return ANSWERED  # the body (a health page) says nothing more
                return parse_metrics_page(await resp.text(), adapter.metrics)
        except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
            return None

    async def probe_all(self) -> None:
        pairs = self.table.all_replicas()
        pages = await asyncio.gather(*(self.probe(r.spec.url, r.spec.engine) for _, r in pairs))
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
